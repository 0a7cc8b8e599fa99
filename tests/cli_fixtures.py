"""Real, tiny pipeline artifacts for the `tinycap` command's tests (tests/test_cli.py, tests/test_serve.py).

`build_artifacts(root)` runs the real stage scripts (synth_videos ... quantize_int8, no DVC) in `root`
with params.yaml merged with tests/params_tiny.yaml and CLI_PARAMS, so root/data/ holds what
`dvc repro` would write, at toy scale: data/clip, data/guide, data/microcap, data/int8.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tinycap import params as params_mod

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["synth_videos", "sample_frames", "clip_train", "clip_embed", "pool", "train_guide", "distill_microcap", "quantize_int8"]
# on top of tests/params_tiny.yaml: a few more decoder epochs so greedy captions are not empty
CLI_PARAMS = {
    "data": {"videos_per_split": {"train": 32, "val": 8, "test": 8, "novel": 4}},
    "guide": {"epochs": 3},
    "microcap": {"epochs": 4},
}


def env():
    # one PyTorch thread: tiny models, and 2 threads on a busy 2-core machine were 10x slower
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH")) if p)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    return e


def build_artifacts(root):
    """Run the stages into root/data; returns root/data. Raises RuntimeError with the stage's output tail.

    quantize_int8 is the only optional stage: when it fails, root/int8_failed.txt holds its error
    line and the int8 tests skip with it (the other models need nothing from it)."""
    root = Path(root)
    params = params_mod.load(ROOT / "params.yaml")
    params = params_mod.merge(params, yaml.safe_load((ROOT / "tests" / "params_tiny.yaml").read_text()))
    params = params_mod.merge(params, CLI_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "metrics").mkdir(exist_ok=True)
    seconds = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=root, env=env(),
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).splitlines()
            if stage == "quantize_int8":
                (root / "int8_failed.txt").write_text(f"stage quantize_int8 failed: {lines[-1] if lines else proc.returncode}\n")
                break
            tail = "\n".join(lines[-30:])
            raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}):\n{tail}")
        seconds[stage] = round(time.perf_counter() - t0, 1)
    (root / "stage_seconds.json").write_text(json.dumps(seconds) + "\n")
    return root / "data"


_BUILT = {}


def artifacts(tmp_path_factory):
    """root/data built once per test session (shared by the test modules that ask for it).

    TINYCAP_TEST_DATA=path/to/data uses finished pipeline outputs instead (e.g. data/ after `dvc repro`)."""
    given = os.environ.get("TINYCAP_TEST_DATA")
    if given:
        return Path(given).resolve()
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = build_artifacts(tmp_path_factory.mktemp("cli_artifacts"))
    return _BUILT[key]


def int8_missing(data):
    """Why the int8 model is not in `data` (the quantize_int8 stage's error), or None when it is."""
    failed = Path(data).parent / "int8_failed.txt"
    if failed.is_file():
        return failed.read_text().strip()
    if not (Path(data) / "int8" / "quant.json").is_file():
        return f"{data}/int8 has no quant.json"
    return None
