"""pycocoevalcap wiring on hand-checked captions, and the evaluate stage end to end on tiny models."""

import json

import h5py
import numpy as np
import pytest
import torch

from test_guide import make_embeddings, one_thread, small_params  # noqa: F401 (one_thread: autouse fixture)
from test_microcap import distill_params
from tinycap import evaluate, guide, microcap
from tinycap.errors import TinyCapError
from tinycap.pool import AttentionPool, pooler_checkpoint


def test_exact_captions_score_the_maximum():
    refs = {"a": ["a cat sits on the mat"], "b": ["a dog runs in the park"]}
    s = evaluate.score({"a": "A cat sits on the mat.", "b": "a dog runs in the park"}, refs)
    assert s["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert s["ROUGE-L"] == pytest.approx(1.0)
    assert s["CIDEr"] == pytest.approx(10.0, abs=1e-3)  # CIDEr-D: 10 x cosine, averaged over references
    assert s["METEOR"] > 0.9


def test_bleu_and_rouge_by_hand():
    # hypothesis "a cat sits on the mat" vs reference "a cat sits on a mat" (same length: no brevity penalty)
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 -> BLEU-4 = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4)
    # longest common subsequence "a cat sits on mat": 5 of 6 words both ways -> ROUGE-L = 5/6
    s = evaluate.score({"x": "a cat sits on the mat"}, {"x": ["a cat sits on a mat"]}, metrics=("BLEU-4", "ROUGE-L"))
    assert s == pytest.approx({"BLEU-4": (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, "ROUGE-L": 5 / 6}, abs=1e-6)
    wrong = evaluate.score({"x": "zebra", "y": "dog"}, {"x": ["a cat sits"], "y": ["a dog"]}, metrics=("CIDEr",))
    assert wrong["CIDEr"] < 5.0
    assert evaluate.score({"x": "", "y": "!"}, {"x": ["a cat"], "y": ["a dog"]}, metrics=("CIDEr", "ROUGE-L")) == {"CIDEr": 0.0, "ROUGE-L": 0.0}


def test_score_bad_input_is_one_line(monkeypatch):
    with pytest.raises(TinyCapError, match="no predictions"):
        evaluate.score({}, {"a": ["x"]})
    with pytest.raises(TinyCapError, match="1 prediction id.*no references"):
        evaluate.score({"b": "x"}, {"a": ["x"]})
    with pytest.raises(TinyCapError, match="no usable reference captions"):
        evaluate.score({"a": "x"}, {"a": ["", " "]})
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: None)
    with pytest.raises(TinyCapError, match="^java: not found on PATH.*METEOR need Java") as e:
        evaluate.score({"a": "x"}, {"a": ["x"]})
    assert "\n" not in str(e.value)


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
    guide.train(d / "clip.h5", d / "guide", d / "guide.json", small_params(epochs=2))
    (d / "pooled").mkdir()
    torch.save(pooler_checkpoint(AttentionPool(32, 5)), d / "pooled" / "pooler.pt")
    microcap.distill(d / "clip.h5", d / "pooled", d / "guide", d / "microcap", d / "microcap.json", distill_params(), "attention", 10)
    (d / "int8").mkdir()
    test_ids = [v.decode() for v, s in zip(vids, splits) if s == b"test"]
    (d / "int8" / "captions_tflm.json").write_text(json.dumps({"test": {v: "a red ball spins" for v in test_ids}}))
    return d


def run_evaluate(d, out="eval", **kw):
    p = evaluate.EvaluateParams(**{"splits": ["test", "novel"], "report_clips": 3, **kw})
    return evaluate.evaluate(d / "clip.h5", d / "annotations.json", d / "frames.h5", d / "guide", d / "microcap",
                             d / "int8", d / out, d / f"{out}.json", p)  # fmt: skip


def test_evaluate_writes_metrics_predictions_and_report(project):
    d = project
    m = run_evaluate(d)
    assert json.loads((d / "eval.json").read_text()) == m
    for variant in ("guide", "guide_greedy", "microcap_fp32"):  # the guide decodes with beam 2 here
        for split in ("test", "novel"):
            assert set(evaluate.METRICS) <= set(m[variant][split])
            assert m[variant][split]["order_dependent"]["clips"] > 0
            assert 0.0 <= m[variant][split]["action_named"] <= 1.0
    assert set(m["action_named_references"]) == {"test", "novel"}
    assert set(evaluate.METRICS) <= set(m["microcap_int8_tflm"]["test"]) and "novel" not in m["microcap_int8_tflm"]
    assert "covers 0 of 3 novel clips" in m["notes"]["microcap_int8_tflm.novel"] and "SPICE" in m["notes"]
    for teacher in ("guide", "guide_greedy"):
        fraction = m[f"cider_fraction_of_{teacher}"]["microcap_fp32"]["test"]
        assert fraction == round(m["microcap_fp32"]["test"]["CIDEr"] / m[teacher]["test"]["CIDEr"], 4)
    preds = json.loads((d / "eval" / "predictions.json").read_text())
    clip = preds["test"]["test000"]
    assert clip["references"] and {"guide", "microcap_fp32", "microcap_int8_tflm"} <= set(clip)
    assert sum(clip["microcap_weights"]) == pytest.approx(1.0, abs=1e-3)
    report = (d / "eval" / "report.html").read_text()
    assert report.count("<div class='clip'>") == 3 and report.count("data:image/jpeg;base64,") == 15 and "w=0." in report


def test_evaluate_without_int8_or_order_attribute_notes_the_reason(project, tmp_path):
    d = project
    (d / "annotations.json").write_text(json.dumps({"videos": [{"video_id": "x"}], "sentences": []}))
    (d / "int8" / "captions_tflm.json").rename(d / "int8" / "moved.json")
    m = run_evaluate(d, out="eval2", splits=["test"], report_clips=1)
    assert "microcap_int8_tflm" not in {k for k in m if k != "notes"} and "not found" in m["notes"]["microcap_int8_tflm"]
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


def test_per_clip_cider_and_paired_drop():
    refs = {"a": ["a red circle moves left", "the red ball slides left"], "b": ["a blue square grows", "the blue box gets bigger"],
            "c": ["a green star spins", "the green star rotates"]}
    before = {"a": "a red circle moves left", "b": "a blue square grows", "c": "a green star spins"}
    after = {**before, "c": "a green star"}
    per = evaluate.cider_per_clip(before, refs)
    assert sum(per.values()) / 3 == pytest.approx(evaluate.score(before, refs, metrics=("CIDEr",))["CIDEr"])
    drop, (low, high) = evaluate.paired_drop(per, evaluate.cider_per_clip(after, refs))
    assert per["c"] > evaluate.cider_per_clip(after, refs)["c"]
    assert drop == pytest.approx(1 - sum(evaluate.cider_per_clip(after, refs).values()) / sum(per.values()))
    assert 0 < drop and low <= drop <= high and low >= 0.0  # only clip c changed, for the worse
    assert evaluate.paired_drop(per, per) == (0.0, [0.0, 0.0])
