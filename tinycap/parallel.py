"""The second core: run one function in a forked child while the parent goes on.

On the 2-core machines this project targets, a stage's independent pieces of work (the ablation
students next to the shipped one, the guide's beam search next to the other decoders) run side by
side. While a child runs, parent and child use one torch thread each (no oversubscription: OpenMP
spin-waiting on a busy core is many times slower); the parent's thread count comes back with the
result. Nothing is pickled but the return value: the child reads the parent's tensors copy-on-write.
"""

import multiprocessing

import torch

from tinycap.errors import TinyCapError


class Forked:
    """A running child; result() waits for the value its function returns."""

    def __init__(self, process, pipe, what, parent_threads):
        self.process, self.pipe, self.what, self.parent_threads = process, pipe, what, parent_threads

    def result(self):
        """The child's return value; its exception, or its death, is raised here as one line."""
        try:
            status, value = self.pipe.recv()
        except EOFError:
            self.process.join()
            status, value = "error", f"the process died (exit code {self.process.exitcode})"
        self.process.join()
        torch.set_num_threads(self.parent_threads)
        if status == "error":
            raise TinyCapError(self.what, f"failed in a forked process: {value}")
        return value


def in_forked_process(fn, what):
    """Start fn() in a forked child; `what` names the work in an error."""
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)

    def run():
        torch.set_num_threads(1)
        try:
            sender.send(("ok", fn()))
        except Exception as e:  # sent as text: an exception may not unpickle in the parent
            sender.send(("error", f"{type(e).__name__}: {e}"))

    parent_threads = torch.get_num_threads()
    process = ctx.Process(target=run, daemon=True)
    process.start()
    sender.close()
    torch.set_num_threads(1)
    return Forked(process, receiver, what, parent_threads)
