"""The one word-level vocabulary (data/guide/vocab.json) shared by guide, MicroCap and the firmware.

vocab.json = {"tokens": [word for id 0, 1, ...], "specials": {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}}
Words: lower-cased runs of letters, digits and apostrophes; the most frequent train words fill
the size cap (ties broken alphabetically, so the build is deterministic).
"""

import collections
import hashlib
import json
import re
from pathlib import Path

from tinycap.errors import TinyCapError
from tinycap.io import read_json, write_json

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_WORD = re.compile(r"[a-z0-9']+")


def words(caption):
    return _WORD.findall(caption.lower())


class Vocab:
    def __init__(self, tokens):
        self.tokens = list(tokens)
        if self.tokens[: len(SPECIALS)] != SPECIALS:
            raise TinyCapError("vocab", f"the first tokens must be {SPECIALS}")
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self):
        return len(self.tokens)

    @property
    def sha(self):
        """Fingerprint stored in every checkpoint to catch a vocabulary/checkpoint mismatch."""
        return hashlib.sha256(json.dumps(self.tokens).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, captions, size):
        """Most frequent words of `captions` (train split), at most `size` tokens with the specials."""
        if size <= len(SPECIALS):
            raise TinyCapError("guide.vocab_size", f"must exceed the {len(SPECIALS)} special tokens")
        counts = collections.Counter(w for c in captions for w in words(c))
        if not counts:
            raise TinyCapError("vocab", "no usable captions (no words in the train captions)")
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(SPECIALS + ranked[: size - len(SPECIALS)])

    def encode(self, caption, max_len):
        """caption -> [<bos>, word ids..., <eos>], at most max_len ids (words truncated)."""
        ids = [self.index.get(w, UNK) for w in words(caption)][: max_len - 2]
        return [BOS] + ids + [EOS]

    def decode(self, ids):
        """Token ids -> caption; stops at <eos>, drops <pad>/<bos>."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else "<unk>")
        return " ".join(out)

    def save(self, path):
        write_json(path, {"tokens": self.tokens, "specials": {t: i for i, t in enumerate(SPECIALS)}})

    @classmethod
    def load(cls, path):
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise TinyCapError(path, "not a vocabulary (expected {'tokens': [...]})")
        try:
            return cls(data["tokens"])
        except TinyCapError as e:
            raise TinyCapError(path, e.reason) from None

    def check(self, sha, vocab_size, where):
        """Raise unless a checkpoint (at `where`) was built on this vocabulary."""
        if vocab_size != len(self) or (sha is not None and sha != self.sha):
            raise TinyCapError(
                where,
                f"vocabulary mismatch: checkpoint has {vocab_size} tokens (sha {sha}), "
                f"vocab.json has {len(self)} (sha {self.sha}); retrain or use the matching vocab.json",
            )


def load(path):
    return Vocab.load(Path(path))
