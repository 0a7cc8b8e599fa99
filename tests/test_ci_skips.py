"""tests/conftest.py in CI: a skipped firmware/M7 test fails, naming the test and the skip reason.

Runs pytest in a subprocess on a throw-away tests/ folder holding a copy of the project's conftest."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SKIPS = """
import pytest


def test_skip_in_call():
    pytest.skip("qemu-system-arm is missing")


@pytest.mark.skipif(True, reason="needs gcc-arm-none-eabi")
def test_skipif_mark():
    pass


@pytest.fixture
def toolchain():
    pytest.skip("fixture could not build the ELF")


def test_skip_in_fixture(toolchain):
    pass


@pytest.mark.xfail(reason="a known failure, not a skip")
def test_xfail():
    assert False


def test_passes():
    pass
"""

ELSEWHERE = """
import pytest


def test_ordinary_skip():
    pytest.skip("nothing to do here")


@pytest.mark.toolchain
def test_marked_skip():
    pytest.skip("llvm-mca is missing")
"""


def _pytest(tmp_path, ci):
    tests = tmp_path / "tests"
    tests.mkdir(exist_ok=True)
    for name in ("conftest.py", "params_tiny.yaml"):
        shutil.copy2(ROOT / "tests" / name, tests / name)
    (tests / "test_m7.py").write_text(SKIPS)
    (tests / "test_firmware.py").write_text(SKIPS)
    (tests / "test_other.py").write_text(ELSEWHERE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    env.update(PYTHONPATH=str(ROOT), **({"CI": "true"} if ci else {}))
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = p.stdout.strip().splitlines()[-1]
    found = re.findall(r"(\d+) (passed|failed|skipped|xfailed|errors?)\b", summary)
    counts = {("error" if k.startswith("error") else k): int(n) for n, k in found}
    return p, counts


def test_ci_fails_every_skip_of_a_firmware_or_m7_test(tmp_path):
    p, counts = _pytest(tmp_path, ci=True)
    assert p.returncode == 1, p.stdout
    # 3 skips in each of test_m7.py / test_firmware.py + the toolchain-marked one (a skip in setup reports as
    # an error); xfail and the ordinary skip elsewhere stay
    assert counts == {"failed": 3, "error": 4, "passed": 2, "skipped": 1, "xfailed": 2}, p.stdout
    for f in ("test_m7.py", "test_firmware.py"):
        assert f"{f}::test_skip_in_call was skipped in CI (call): qemu-system-arm is missing" in p.stdout
        assert f"{f}::test_skipif_mark was skipped in CI (setup): needs gcc-arm-none-eabi" in p.stdout
        assert f"{f}::test_skip_in_fixture was skipped in CI (setup): fixture could not build the ELF" in p.stdout
    assert "test_other.py::test_marked_skip was skipped in CI (call): llvm-mca is missing" in p.stdout
    assert "SKIPPED [1] tests/test_other.py:6: nothing to do here" in p.stdout


def test_without_ci_the_skips_stay_skips(tmp_path):
    p, counts = _pytest(tmp_path, ci=False)
    assert p.returncode == 0, p.stdout
    assert counts == {"passed": 2, "skipped": 8, "xfailed": 2}, p.stdout
