"""data/embeddings/clip.h5: the one reader of its schema, and the row helpers every trainer uses.

clip.h5 holds `frame_emb` float32 (V, T, D) L2-normalised, optional `grid_emb` (V, T, G, D),
`video_id` (V,), `split` (V,), caption texts `caption` (C,) with `caption_video` (C,) rows into V,
their CLIP text embeddings `text_emb` (C, D), and on the embedded data `action` / `order_dependent`
per video. Nothing here knows a model: guide, microcap, pool, quantize and evaluate all stand on it.
"""

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from tinycap.errors import TinyCapError
from tinycap.vocab import PAD, words


@dataclass
class Embeddings:
    frame_emb: np.ndarray  # (V, T, D) float32, L2-normalised
    grid_emb: np.ndarray | None  # (V, T, G, D) or None
    video_id: list  # (V,) str
    split: np.ndarray  # (V,) str
    caption: list  # (C,) str
    caption_video: np.ndarray  # (C,) int, row into V
    text_emb: np.ndarray | None  # (C, D) float32 caption embeddings (read with need_text only)
    action: np.ndarray | None  # (V,) str, embedded data only
    order_dependent: np.ndarray | None  # (V,) bool, embedded data only
    logit_scale: float  # CLIP's learned softmax temperature (1 / 0.07 when the file has none)

    def videos(self, split, where="clip.h5"):
        """Row indices of the videos of `split`; an empty split is an error."""
        rows = np.flatnonzero(self.split == split)
        if len(rows) == 0:
            raise TinyCapError(where, f"empty split '{split}' (splits present: {', '.join(sorted(set(self.split)))})")
        return rows

    def references(self, rows):
        """{video_id: [captions]} for the given video rows."""
        refs = {self.video_id[r]: [] for r in rows}
        for text, v in zip(self.caption, self.caption_video):
            vid = self.video_id[v]
            if vid in refs:
                refs[vid].append(text)
        return refs


def _strings(ds):
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]]


def load_embeddings(path, need_text=False):
    """clip.h5 -> Embeddings, shapes checked; `need_text`: text_emb must be there (and finite)."""
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found (run clip_embed first)")
    need = ["frame_emb", "video_id", "split", "caption", "caption_video"] + (["text_emb"] if need_text else [])
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in need if k not in f]
            if missing:
                raise TinyCapError(path, f"missing dataset(s) {', '.join(missing)}")
            emb = Embeddings(
                frame_emb=f["frame_emb"][()].astype(np.float32),
                grid_emb=f["grid_emb"][()].astype(np.float32) if "grid_emb" in f else None,
                video_id=_strings(f["video_id"]),
                split=np.array(_strings(f["split"])),
                caption=_strings(f["caption"]),
                caption_video=f["caption_video"][()].astype(np.int64),
                text_emb=f["text_emb"][()].astype(np.float32) if need_text else None,
                action=np.array(_strings(f["action"])) if "action" in f else None,
                order_dependent=f["order_dependent"][()].astype(bool) if "order_dependent" in f else None,
                logit_scale=float(f.attrs.get("logit_scale", 1 / 0.07)),
            )
    except OSError as e:
        raise TinyCapError(path, f"not a readable HDF5 file ({e})") from None
    fe, cv = emb.frame_emb, emb.caption_video
    V = fe.shape[0]
    if fe.ndim != 3 or len(emb.video_id) != V or len(emb.split) != V:
        raise TinyCapError(path, f"frame_emb must be [V,T,D] with video_id/split of length V, got {fe.shape}")
    if len(emb.caption) != len(cv) or (len(cv) and (cv.min() < 0 or cv.max() >= V)):
        raise TinyCapError(path, "caption/caption_video lengths differ or caption_video points outside [0, V)")
    if need_text:
        te = emb.text_emb
        if te.ndim != 2 or te.shape[1] != fe.shape[2] or len(te) != len(cv):
            raise TinyCapError(path, f"frame_emb {fe.shape} and text_emb {te.shape} must be [V,T,D] and [C,D]")
        if not np.isfinite(fe).all() or not np.isfinite(te).all():
            raise TinyCapError(path, "embeddings contain NaN or inf")
    return emb


def encode_captions(vocab, captions, max_len):
    """list of str -> (C, max_len) int64 token ids padded with <pad>."""
    out = np.full((len(captions), max_len), PAD, dtype=np.int64)
    for i, c in enumerate(captions):
        ids = vocab.encode(c, max_len)
        out[i, : len(ids)] = ids
    return out


def caption_rows(emb, rows, vocab, where):
    """Caption indices whose video is in `rows` and that contain at least one known word."""
    keep = np.isin(emb.caption_video, rows)
    idx = [i for i in np.flatnonzero(keep) if any(w in vocab.index for w in words(emb.caption[i]))]
    if not idx:
        raise TinyCapError(where, "no usable captions for these videos (none with a word in the vocabulary)")
    return np.array(idx)


def batches(n, batch_size, gen):
    """Shuffled index batches over range(n), drawn from the torch generator `gen`."""
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]
