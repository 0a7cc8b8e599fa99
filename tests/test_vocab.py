"""The one vocabulary: specials, deterministic build, encode/decode, file round trip, mismatch errors."""

import pytest

from tinycap.errors import TinyCapError
from tinycap.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab


def test_build_ranks_words_by_count_then_alphabet_and_caps_size():
    v = Vocab.build(["a red ball", "A blue ball!", "a ball spins"], size=7)
    assert v.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert v.tokens[4:] == ["a", "ball", "blue"]  # a=3, ball=3, then blue/red/spins=1 alphabetically
    assert Vocab.build(["a red ball", "A blue ball!", "a ball spins"], size=7).sha == v.sha


def test_encode_decode_round_trip_unknown_and_truncation():
    v = Vocab.build(["a red ball moves left"], size=50)
    ids = v.encode("A red ball moves left.", max_len=16)
    assert ids[0] == BOS and ids[-1] == EOS and v.decode(ids) == "a red ball moves left"
    assert v.encode("a green ball", 16)[2] == UNK
    assert len(v.encode("a red ball moves left", max_len=4)) == 4  # <bos> a red <eos>
    assert v.decode([v.index["a"], EOS, v.index["red"]]) == "a"  # stops at <eos>
    assert v.decode([PAD, BOS, v.index["ball"]]) == "ball"


def test_file_round_trip_and_bad_files(tmp_path):
    v = Vocab.build(["a red ball"], size=10)
    v.save(tmp_path / "vocab.json")
    w = Vocab.load(tmp_path / "vocab.json")
    assert w.tokens == v.tokens and w.sha == v.sha
    (tmp_path / "bad.json").write_text('{"tokens": ["a", "b"]}')
    with pytest.raises(TinyCapError, match=r"bad.json: the first tokens must be"):
        Vocab.load(tmp_path / "bad.json")
    with pytest.raises(TinyCapError, match="file not found"):
        Vocab.load(tmp_path / "missing.json")


def test_mismatch_and_empty_captions_are_one_line_errors():
    v = Vocab(SPECIALS + ["a", "ball"])
    v.check(v.sha, len(v), "ckpt.pt")
    with pytest.raises(TinyCapError, match=r"ckpt.pt: vocabulary mismatch: checkpoint has 9 tokens") as e:
        v.check("0123", 9, "ckpt.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(TinyCapError, match="no usable captions"):
        Vocab.build(["", "!!", "..."], size=10)
