"""Shared fixtures. `tiny_project` runs the real pipeline once per test session (dvc repro on a
copy of the project with tests/params_tiny.yaml merged in); tests read its artifacts."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Before any test loads TensorFlow: torch's first optimizer imports triton through torch._dynamo, and
# that import segfaults once TensorFlow is loaded in the process (test_quantize after test_firmware).
import torch._dynamo  # noqa: F401
import yaml

from tinycap import params as params_mod

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", "pyproject.toml", ".gitignore"]
PROJECT_DIRS = ["stages", "tinycap", "firmware"]


def project_env(path):
    # one torch thread: toy models, and two threads on a loaded 2-core machine spin-wait
    env = dict(os.environ, DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1", PYTHONPATH=str(path))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run(cmd, cwd, check=True, timeout=1200):
    """Run a command in the copied project; on failure show the end of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return proc


def copy_project(dst, override=None):
    """Copy the project into `dst` as a fresh git repo, params.yaml merged with `override`."""
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    (dst / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", dst / ".dvc" / "config")
    (dst / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    params = params_mod.load(ROOT / "params.yaml")
    if override:
        params = params_mod.merge(params, override)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dst / "metrics").mkdir(exist_ok=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(["git", "init", "-q"], dst)
    run(git + ["add", "-A"], dst)
    run(git + ["commit", "-qm", "tiny project"], dst)
    return dst


TINY_PARAMS = yaml.safe_load((ROOT / "tests" / "params_tiny.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """A copy of the project on which `dvc repro` has run with the tiny params."""
    dst = copy_project(tmp_path_factory.mktemp("project"), TINY_PARAMS)
    proc = run(["dvc", "repro"], dst)
    (dst / "repro.log").write_text(proc.stdout + proc.stderr)
    return dst


@pytest.fixture(scope="session")
def pipeline_data(request):
    """data/ of the tiny pipeline (the models the `tinycap` command loads).

    TINYCAP_TEST_DATA=path/to/data uses finished pipeline outputs instead (e.g. data/ after `make run`)."""
    given = os.environ.get("TINYCAP_TEST_DATA")
    if given:
        return Path(given).resolve()
    return request.getfixturevalue("tiny_project") / "data"


# Test files whose every test must run in CI: the firmware and Cortex-M7 paths (CI installs every tool,
# scripts/setup.sh; a skip there means an untested C runtime, M7 build or QEMU measurement).
CI_MUST_RUN_FILES = frozenset({"test_m7.py", "test_firmware.py", "test_conv_kernels.py"})
CI_MUST_RUN_MARK = "toolchain"  # tests elsewhere that need the ARM toolchain / QEMU carry @pytest.mark.toolchain


def pytest_configure(config):
    config.addinivalue_line("markers", f"{CI_MUST_RUN_MARK}: needs arm-none-eabi-gcc / qemu-system-arm (never skipped in CI)")


def _skip_reason(report):
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI set, a skip of a firmware/M7 test (any reason) or of a test skipped for a missing tool
    ("not installed") is a failure naming the test and the reason."""
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    must_run = item.path.name in CI_MUST_RUN_FILES or item.get_closest_marker(CI_MUST_RUN_MARK) is not None
    if must_run or "not installed" in reason:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} was skipped in CI ({report.when}): {reason}"
