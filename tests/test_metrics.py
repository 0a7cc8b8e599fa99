"""pycocoevalcap wiring on hand-checked captions: score, per-clip CIDEr and the paired-bootstrap drop."""

import os

import pytest

from tinycap import metrics
from tinycap.errors import TinyCapError


def test_exact_captions_score_the_maximum():
    refs = {"a": ["a cat sits on the mat"], "b": ["a dog runs in the park"]}
    s = metrics.score({"a": "A cat sits on the mat.", "b": "a dog runs in the park"}, refs)
    assert s["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert s["ROUGE-L"] == pytest.approx(1.0)
    assert s["CIDEr"] == pytest.approx(10.0, abs=1e-3)  # CIDEr-D: 10 x cosine, averaged over references
    assert s["METEOR"] > 0.9


def test_pipelined_meteor_equals_pycocoevalcap():
    # the SCORE requests sent ahead of the answers (metrics._meteor_score) against pycocoevalcap's own
    # one-at-a-time compute_score, on one JVM: every clip's score and the corpus score to the last bit
    words = "a the red blue green circle square ball moves jumps left right slowly fast on over".split()
    refs = {f"v{i}": [" ".join(words[(i + j) % len(words)] for j in range(k, k + 6)) for k in range(3)] for i in range(40)}
    preds = {f"v{i}": " ".join(words[(3 * i + j) % len(words)] for j in range(5)) for i in range(40)}
    gts, res = metrics._tokenized(preds, refs)
    meteor = metrics._meteor(os.getpid())
    assert metrics._meteor_score(meteor, gts, res) == meteor.compute_score(gts, res)


def test_bleu_and_rouge_by_hand():
    # hypothesis "a cat sits on the mat" vs reference "a cat sits on a mat" (same length: no brevity penalty)
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 -> BLEU-4 = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4)
    # longest common subsequence "a cat sits on mat": 5 of 6 words both ways -> ROUGE-L = 5/6
    s = metrics.score({"x": "a cat sits on the mat"}, {"x": ["a cat sits on a mat"]}, metrics=("BLEU-4", "ROUGE-L"))
    assert s == pytest.approx({"BLEU-4": (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, "ROUGE-L": 5 / 6}, abs=1e-6)
    wrong = metrics.score({"x": "zebra", "y": "dog"}, {"x": ["a cat sits"], "y": ["a dog"]}, metrics=("CIDEr",))
    assert wrong["CIDEr"] < 5.0
    assert metrics.score({"x": "", "y": "!"}, {"x": ["a cat"], "y": ["a dog"]}, metrics=("CIDEr", "ROUGE-L")) == {
        "CIDEr": 0.0,
        "ROUGE-L": 0.0,
    }


def test_score_bad_input_is_one_line(monkeypatch):
    with pytest.raises(TinyCapError, match="no predictions"):
        metrics.score({}, {"a": ["x"]})
    with pytest.raises(TinyCapError, match="1 prediction id.*no references"):
        metrics.score({"b": "x"}, {"a": ["x"]})
    with pytest.raises(TinyCapError, match="no usable reference captions"):
        metrics.score({"a": "x"}, {"a": ["", " "]})
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(TinyCapError, match="^java: not found on PATH.*METEOR need Java") as e:
        metrics.score({"a": "x"}, {"a": ["x"]})
    assert "\n" not in str(e.value)


def test_per_clip_cider_and_paired_drop():
    refs = {
        "a": ["a red circle moves left", "the red ball slides left"],
        "b": ["a blue square grows", "the blue box gets bigger"],
        "c": ["a green star spins", "the green star rotates"],
    }
    before = {"a": "a red circle moves left", "b": "a blue square grows", "c": "a green star spins"}
    after = {**before, "c": "a green star"}
    per = metrics.cider_per_clip(before, refs)
    assert sum(per.values()) / 3 == pytest.approx(metrics.score(before, refs, metrics=("CIDEr",))["CIDEr"])
    drop, (low, high) = metrics.paired_drop(per, metrics.cider_per_clip(after, refs))
    assert per["c"] > metrics.cider_per_clip(after, refs)["c"]
    assert drop == pytest.approx(1 - sum(metrics.cider_per_clip(after, refs).values()) / sum(per.values()))
    assert 0 < drop and low <= drop <= high and low >= 0.0  # only clip c changed, for the worse
    assert metrics.paired_drop(per, per) == (0.0, [0.0, 0.0])
