"""tinycap.parallel: a forked child's value, its error as one line, and the thread counts around it."""

import os

import pytest
import torch

from tinycap.errors import TinyCapError
from tinycap.parallel import in_forked_process


def test_value_errors_and_threads():
    torch.set_num_threads(2)
    big = torch.arange(1000.0)  # read by the child without pickling
    child = in_forked_process(lambda: (float(big.sum()), torch.get_num_threads()), "sum")
    assert torch.get_num_threads() == 1  # the parent leaves the second core to the child
    assert child.result() == (499500.0, 1) and torch.get_num_threads() == 2

    def fail():
        raise TinyCapError("x.h5", "broken")

    with pytest.raises(TinyCapError, match="^work: failed in a forked process: TinyCapError: x.h5: broken$"):
        in_forked_process(fail, "work").result()
    with pytest.raises(TinyCapError, match=r"^work: failed in a forked process: the process died \(exit code 3\)$"):
        in_forked_process(lambda: os._exit(3), "work").result()
    assert torch.get_num_threads() == 2
