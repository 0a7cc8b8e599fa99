"""The whole pipeline through DVC on tiny params: outputs, a clean status, and that
`dvc exp run -S pooling=mean` reruns `pool` and what follows, never the stages before it."""

import json

import h5py
import pytest
from conftest import run

UPSTREAM_OF_POOL = ["synth_videos", "sample_frames", "clip_train", "clip_embed"]
# design.md's metric contract: the keys other tools read (dotted paths)
SCORES = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
REQUIRED_METRICS = {
    "clip": ["val.t2v_R@1", "val.t2v_R@5", "val.v2t_R@1", "params_count", "train_seconds"],
    "pool": ["val.t2v_R@1", "test.t2v_R@1", "order_dependent.t2v_R@1"],
    "encoder": [
        "params_count",
        "macs_per_frame",
        "input_size",
        "train_seconds",
        "val.cosine_to_teacher",
        "test.cosine_to_teacher",
        "val.student.t2v_R@1",
        "val.clip.t2v_R@1",
        "int8.int8_bytes",
        "int8.ops",
        "int8.tflm_cosine_to_float_student",
    ],
    "eval": [
        f"{v}.{s}.{m}"
        for v in ["guide", "microcap_fp32", "microcap_int8_tflm", "device_int8"]
        for s in ["test", "novel"]
        for m in SCORES
    ]
    + ["cider_fraction_of_microcap_int8_tflm.device_int8.test"],
    "microcap": ["params_count", "guide_params_count", "ablation.no_kd.CIDEr", "ablation.kl.CIDEr", "ablation.kl_attn.CIDEr"],
    "quantize": [
        "fp32_bytes",
        "int8_bytes",
        "ops",
        "arena_bytes",
        "cider_fp32",
        "cider_int8_tflm",
        "cider_rel_drop",
        "token_agreement_tflm_vs_tflite",
        "device.cider.test.device_int8",
        "device.cider.test.rel_drop_ci95",
    ],
    "m7": [f"{k}.value" for k in ["instructions", "cycles", "latency_ms", "energy_mj", "flash_bytes", "ram_bytes"]]
    + ["macs", "instr_per_mac", "clock_hz", "parity_mismatches"],
}


def lookup(metrics, dotted):
    for part in dotted.split("."):
        assert isinstance(metrics, dict) and part in metrics, f"missing {dotted}"
        metrics = metrics[part]
    return metrics


DOWNSTREAM_OF_POOL = ["pool", "distill_microcap", "quantize_int8", "build_tflm", "benchmark_m7", "evaluate"]


def test_repro_writes_every_artifact(tiny_project):
    p = tiny_project
    for path in [
        "data/videos/annotations.json",
        "data/frames/frames.h5",
        "data/embeddings/clip.h5",
        "data/pooled/pooled.h5",
        "data/encoder/student_emb.h5",
        "data/encoder/encoder_int8.tflite",
        "data/guide/vocab.json",
        "data/microcap/microcap.pt",
        "data/int8/microcap_decoder_int8.tflite",
        "data/eval/report.html",
    ]:
        assert (p / path).is_file(), path
    with h5py.File(p / "data/embeddings/clip.h5") as f:
        V, T, D = f["frame_emb"].shape
        assert T == 5 and V == f["video_id"].shape[0]
    for name, keys in REQUIRED_METRICS.items():
        metrics = json.loads((p / f"metrics/{name}.json").read_text())
        for key in keys:
            value = lookup(metrics, key)
            if value is None:  # not computable on toy data (e.g. a relative drop from 0): said why, never 0
                assert metrics.get("notes"), (name, key)
                continue
            assert isinstance(value, (int, float, list, dict)) and not isinstance(value, bool), (name, key, value)
    m7 = json.loads((p / "metrics/m7.json").read_text())
    assert m7["parity_mismatches"] == 0
    assert all("method" in m7[k] for k in ["instructions", "cycles", "latency_ms", "energy_mj"])


def test_second_repro_does_nothing_and_status_is_clean(tiny_project):
    again = run(["dvc", "repro"], tiny_project).stdout
    assert "Running stage" not in again
    status = run(["dvc", "status"], tiny_project).stdout
    assert "changed" not in status and "modified" not in status, status


@pytest.mark.slow
def test_exp_run_pooling_mean_skips_upstream(tiny_project):
    run(["git", "-c", "user.name=t", "-c", "user.email=t@l", "add", "-A"], tiny_project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@l", "commit", "-qm", "lock", "--allow-empty"], tiny_project)
    out = run(["dvc", "exp", "run", "-S", "pooling=mean"], tiny_project).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran >= {"pool", "distill_microcap"}, out
    assert not ran & set(UPSTREAM_OF_POOL), ran
    assert ran <= set(DOWNSTREAM_OF_POOL), ran
    pool = json.loads((tiny_project / "metrics/pool.json").read_text())
    assert pool["pooling"] == "mean"
