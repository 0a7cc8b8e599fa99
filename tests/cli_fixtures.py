"""Environment for running the `tinycap` command in subprocesses (tests/test_cli.py, tests/test_serve.py)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env():
    # one PyTorch thread: tiny models, and 2 threads on a busy 2-core machine were 10x slower
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH")) if p)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    return e
