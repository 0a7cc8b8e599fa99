"""The evaluate stage end to end on tiny models, and its annotation readers."""

import json

import h5py
import numpy as np
import pytest
import torch
from test_guide import make_embeddings, one_thread, small_params  # noqa: F401 (one_thread: autouse fixture)
from test_microcap import distill_params

from tinycap import evaluate, guide, metrics, microcap
from tinycap.errors import TinyCapError
from tinycap.pool import AttentionPool, pooler_checkpoint


def test_int8_captions_file(tmp_path):
    assert evaluate.load_int8_captions(tmp_path / "none.json") is None
    (tmp_path / "c.json").write_text(json.dumps({"test": {"v1": "a ball"}, "novel": {"v2": "a cube"}}))
    assert evaluate.load_int8_captions(tmp_path / "c.json") == {"v1": "a ball", "v2": "a cube"}
    (tmp_path / "bad.json").write_text(json.dumps({"v1": "a ball"}))
    with pytest.raises(TinyCapError, match="bad.json: expected"):
        evaluate.load_int8_captions(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The artifacts `evaluate` reads, from tiny real models."""
    d = tmp_path_factory.mktemp("eval")
    ann = make_embeddings(d / "clip.h5")
    (d / "annotations.json").write_text(json.dumps(ann))
    with h5py.File(d / "clip.h5", "r") as f:
        vids, splits = f["video_id"][()], f["split"][()]
    with h5py.File(d / "frames.h5", "w") as f:
        f["frames"] = np.random.default_rng(0).integers(0, 255, (len(vids), 5, 16, 16, 3), dtype=np.uint8)
        f["video_id"], f["split"] = vids, splits
    guide.train(d / "clip.h5", d / "guide", small_params(epochs=2))
    (d / "pooled").mkdir()
    torch.save(pooler_checkpoint(AttentionPool(32, 5)), d / "pooled" / "pooler.pt")
    microcap.distill(d / "clip.h5", d / "pooled", d / "guide", d / "microcap", distill_params(), "attention", 10)
    (d / "int8").mkdir()
    test_ids = [v.decode() for v, s in zip(vids, splits) if s == b"test"]
    (d / "int8" / "captions_tflm.json").write_text(json.dumps({"test": {v: "a red ball spins" for v in test_ids}}))
    device = {"test": {v: "a blue cube grows" for v in test_ids}, "novel": {}}
    (d / "int8" / "captions_device.json").write_text(json.dumps(device))
    return d


def run_evaluate(d, out="eval", **kw):
    p = evaluate.EvaluateParams(**{"splits": ["test", "novel"], "report_clips": 3, **kw})
    return evaluate.evaluate(d / "clip.h5", d / "annotations.json", d / "frames.h5", d / "guide", d / "microcap",
                             d / "int8", d / out, p)  # fmt: skip


def test_evaluate_writes_metrics_predictions_and_report(project):
    d = project
    m = run_evaluate(d)
    for variant in ("guide", "guide_greedy", "microcap_fp32"):  # the guide decodes with beam 2 here
        for split in ("test", "novel"):
            assert set(metrics.METRICS) <= set(m[variant][split])
            assert m[variant][split]["order_dependent"]["clips"] > 0
            assert 0.0 <= m[variant][split]["action_named"] <= 1.0
    assert set(m["action_named_references"]) == {"test", "novel"}
    assert set(metrics.METRICS) <= set(m["microcap_int8_tflm"]["test"]) and "novel" not in m["microcap_int8_tflm"]
    assert "covers 0 of 3 novel clips" in m["notes"]["microcap_int8_tflm.novel"] and "SPICE" in m["notes"]
    assert set(metrics.METRICS) <= set(m["device_int8"]["test"]) and "covers 0 of 3" in m["notes"]["device_int8.novel"]
    device_vs_host = m["device_int8"]["test"]["CIDEr"] / m["microcap_int8_tflm"]["test"]["CIDEr"]
    assert m["cider_fraction_of_microcap_int8_tflm"]["device_int8"]["test"] == round(device_vs_host, 4)
    for teacher in ("guide", "guide_greedy"):
        fraction = m[f"cider_fraction_of_{teacher}"]["microcap_fp32"]["test"]
        assert fraction == round(m["microcap_fp32"]["test"]["CIDEr"] / m[teacher]["test"]["CIDEr"], 4)
    preds = json.loads((d / "eval" / "predictions.json").read_text())
    clip = preds["test"]["test000"]
    assert clip["references"] and {"guide", "microcap_fp32", "microcap_int8_tflm", "device_int8"} <= set(clip)
    assert clip["device_int8"] == "a blue cube grows"
    assert sum(clip["microcap_weights"]) == pytest.approx(1.0, abs=1e-3)
    report = (d / "eval" / "report.html").read_text()
    assert report.count("<div class='clip'>") == 3 and report.count("data:image/jpeg;base64,") == 15 and "w=0." in report


def test_evaluate_without_int8_or_order_attribute_notes_the_reason(project, tmp_path):
    d = project
    (d / "annotations.json").write_text(json.dumps({"videos": [{"video_id": "x"}], "sentences": []}))
    for name in ("captions_tflm.json", "captions_device.json"):
        (d / "int8" / name).rename(d / "int8" / f"moved_{name}")
    m = run_evaluate(d, out="eval2", splits=["test"], report_clips=1)
    for variant in ("microcap_int8_tflm", "device_int8"):
        assert variant not in {k for k in m if k != "notes"} and "not found" in m["notes"][variant]
    assert "order_dependent" not in m["guide"]["test"] and "order_dependent" in m["notes"]
    assert "action_named" not in m["guide"]["test"] and "no action per video" in m["notes"]["action_named"]
    with pytest.raises(TinyCapError, match="empty split 'train2'"):
        run_evaluate(d, out="eval3", splits=["train2"])
    assert not (d / "eval3").exists() and not (d / "eval3.json").exists()


def test_action_classifier_names_the_action_a_caption_describes(tmp_path):
    ann = {
        "videos": [{"video_id": f"v{i}", "split": "train", "action": a} for i, a in enumerate(["grow", "shrink", "grow", "spin"])]
        + [{"video_id": "t0", "split": "test", "action": "shrink"}],
        "sentences": [
            {"video_id": "v0", "caption": "a red circle grows bigger"},
            {"video_id": "v1", "caption": "a blue square shrinks"},
            {"video_id": "v1", "caption": "the blue square gets smaller"},
            {"video_id": "v2", "caption": "a green star grows"},
            {"video_id": "v3", "caption": "a red square spins around"},
            {"video_id": "t0", "caption": "a star grows"},  # not train: never fitted on
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(ann))
    classify, action = evaluate.action_classifier(tmp_path / "a.json")
    assert action["t0"] == "shrink"
    assert classify("The square gets SMALLER.") == "shrink"  # case and punctuation do not matter
    assert classify("the circle grows") == "grow" and classify("a green square spins") == "spin"
    ann["videos"][0].pop("action")
    (tmp_path / "b.json").write_text(json.dumps(ann))
    assert evaluate.action_classifier(tmp_path / "b.json") is None and evaluate.action_classifier(tmp_path / "none.json") is None
