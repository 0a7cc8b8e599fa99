"""CIDEr-D on token-id sequences, fast enough to be a training reward (self-critical training).

Same definition as pycocoevalcap's Cider (Vedantam et al. 2015, the CIDEr-D variant), computed
from ids instead of strings:
  vec_n(s)[g] = count of n-gram g in s * (log(#documents) - log(max(1, df(g))))   n = 1..4
  sim_n(c, r) = sum_g min(vec_n(c)[g], vec_n(r)[g]) * vec_n(r)[g] / (|vec_n(c)| |vec_n(r)|)
                * exp(-(len(c) - len(r))^2 / (2 sigma^2))
  CIDEr-D(c, refs) = 10 * mean_n mean_{r in refs} sim_n(c, r)
df(g) counts the documents (one per clip: the union of its references) holding g. pycocoevalcap
takes df from the clips being scored; a reward takes it from the training references.
Every reference's vectors and every (candidate, references) score are computed once and kept: a
self-critical epoch samples the same short captions for a clip again and again.
"""

import math
from collections import Counter

N = 4
SIGMA = 6.0


def ngrams(tokens):
    """Counter of the 1..N-grams of a token sequence (tuples)."""
    tokens = tuple(tokens)
    return Counter(tokens[i : i + n] for n in range(1, N + 1) for i in range(len(tokens) - n + 1))


class CiderD:
    """Document frequencies from `documents`, a list (one entry per clip) of reference token lists."""

    def __init__(self, documents):
        if not documents:
            raise ValueError("CIDEr-D needs at least one reference document")
        self.df = Counter(g for refs in documents for g in set().union(*(ngrams(r) for r in refs)))
        self.log_docs = math.log(float(len(documents)))
        self._idf = {}  # n-gram -> log(#documents) - log(max(1, df))
        self._refs = {}  # references (tuple of tuples) -> their vectors
        self._scores = {}  # (candidate, references) -> CIDEr-D

    def _vector(self, tokens):
        """tf-idf vectors per n (dicts), their norms, and the length (words) of a sequence (a tuple)."""
        vec = []
        for n in range(1, N + 1):
            counts = {}
            for i in range(len(tokens) - n + 1):
                g = tokens[i : i + n]
                counts[g] = counts.get(g, 0) + 1
            vn = {}
            for g, count in counts.items():
                idf = self._idf.get(g)
                if idf is None:
                    idf = self._idf[g] = self.log_docs - math.log(max(1.0, self.df.get(g, 0.0)))
                vn[g] = count * idf
            vec.append(vn)
        norms = [math.sqrt(sum(v * v for v in vn.values())) for vn in vec]
        return vec, norms, len(tokens)

    def score(self, candidate, refs):
        """CIDEr-D of one candidate token list against its clip's reference token lists."""
        candidate, refs = tuple(candidate), tuple(tuple(r) for r in refs)
        key = (candidate, refs)
        if key not in self._scores:
            if refs not in self._refs:
                self._refs[refs] = [self._vector(r) for r in refs]
            self._scores[key] = self._score(self._vector(candidate), self._refs[refs])
        return self._scores[key]

    @staticmethod
    def _score(cand, ref_vectors):
        vec_c, norm_c, len_c = cand
        total = 0.0
        for vec_r, norm_r, len_r in ref_vectors:
            penalty = math.exp(-((len_c - len_r) ** 2) / (2 * SIGMA**2))
            for n in range(N):
                if norm_c[n] and norm_r[n]:
                    vr = vec_r[n]
                    dot = sum(min(v, vr[g]) * vr[g] for g, v in vec_c[n].items() if g in vr)
                    total += dot / (norm_c[n] * norm_r[n]) * penalty
        return 10.0 * total / (N * len(ref_vectors))
