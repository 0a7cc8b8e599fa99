"""tinycap.cider.CiderD (the self-critical reward) against pycocoevalcap's Cider, and by hand."""

import math
import random

import pytest
from pycocoevalcap.cider.cider import Cider

from tinycap.cider import CiderD

WORDS = "a the red blue square circle moves left right up down grows shrinks fades in out".split()


def test_equals_pycocoevalcap_cider_per_clip():
    rng = random.Random(0)
    gts = {i: [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(rng.randint(1, 5))] for i in range(40)}
    res = {i: [" ".join(rng.choices(WORDS, k=rng.randint(0, 14)))] for i in range(40)}
    res[0] = [gts[0][0]]  # one exact match
    _, theirs = Cider().compute_score(gts, res)
    reward = CiderD([[r.split() for r in gts[i]] for i in gts])  # df from the scored clips, as pycocoevalcap
    mine = [reward.score(res[i][0].split(), [r.split() for r in gts[i]]) for i in gts]
    assert mine == pytest.approx(list(theirs), abs=1e-12)


def test_by_hand_one_word():
    # two documents {x}, {y}: idf(x) = log 2 - log 1; candidate "x" vs reference "x" -> cosine 1 for
    # n = 1, no 2..4-grams -> 10 * (1 + 0 + 0 + 0) / 4 = 2.5; "y" vs "x" -> 0; "x x" vs "x": the count
    # clipped to the reference's, min(2, 1) * 1 / (2 * 1) = 1/2, length penalty exp(-1 / 72)
    c = CiderD([[["x"]], [["y"]]])
    assert c.score(["x"], [["x"]]) == pytest.approx(2.5)
    assert c.score(["y"], [["x"]]) == 0.0
    assert c.score(["x", "x"], [["x"]]) == pytest.approx(1.25 * math.exp(-1 / 72))
    assert c.score([], [["x"]]) == 0.0


def test_needs_documents():
    with pytest.raises(ValueError, match="at least one reference"):
        CiderD([])


def test_a_repeated_score_is_the_same_value():
    """Scores are kept per (candidate, references): a second call, or tuples for lists, gives the same float."""
    rng = random.Random(1)
    refs = [[rng.choice(WORDS) for _ in range(6)] for _ in range(3)]
    reward = CiderD([refs, [["x", "y"]]])
    first = reward.score(refs[0][:4], refs)
    assert reward.score(tuple(refs[0][:4]), [tuple(r) for r in refs]) == first > 0
    assert CiderD([refs, [["x", "y"]]]).score(refs[0][:4], refs) == first
