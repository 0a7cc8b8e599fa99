"""Text<->video retrieval metrics (MSR-VTT protocol with several captions per video).

t2v: every caption ranks all videos of its split; its rank is that of its own video.
v2t: every video ranks all captions of its split; its rank is that of its best-ranked caption.
Rank = 1 + number of other candidates scoring at least as high (ties count against the query,
so a collapsed model cannot score well). R@K in percent, MdR = median rank.
"""

import numpy as np


def _normalise(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ranks_t2v(video_emb, text_emb, caption_video):
    """video_emb (V, D), text_emb (C, D), caption_video (C,) row in video_emb -> ranks (C,)."""
    sim = _normalise(text_emb) @ _normalise(video_emb).T  # (C, V)
    own = sim[np.arange(len(sim)), caption_video]  # (C,)
    return (sim >= own[:, None]).sum(1)  # own video included: 1 + others scoring >= it


def summary(ranks, prefix):
    ranks = np.asarray(ranks)
    out = {f"{prefix}_R@{k}": round(100.0 * float((ranks <= k).mean()), 2) for k in (1, 5, 10)}
    out[f"{prefix}_MdR"] = float(np.median(ranks))
    return out


def split_metrics(video_emb, text_emb, caption_video, videos, caption_mask=None):
    """Retrieval among `videos` (row indices) and their captions.

    caption_mask (C,) bool restricts the query captions (and the videos queried in v2t) to a
    subset, e.g. one action category; candidates are still every video / caption of the split.
    """
    videos = np.asarray(videos)
    caption_video = np.asarray(caption_video)
    row = np.full(len(video_emb), -1)
    row[videos] = np.arange(len(videos))
    in_split = row[caption_video] >= 0  # (C,)
    caps = np.flatnonzero(in_split)
    cv = row[caption_video[caps]]  # caption -> row within the split
    query = np.ones(len(caps), bool) if caption_mask is None else np.asarray(caption_mask)[caps]
    if not query.any():
        return {"n_videos": 0, "n_captions": 0}
    t2v = ranks_t2v(video_emb[videos], text_emb[caps][query], cv[query])
    v2t = ranks_v2t(video_emb[videos], text_emb[caps], cv, np.unique(cv[query]))
    return {
        **summary(t2v, "t2v"),
        **summary(v2t, "v2t"),
        "n_videos": int(len(np.unique(cv[query]))),
        "n_captions": int(query.sum()),
    }


def ranks_v2t(video_emb, text_emb, caption_video, query_videos):
    """video_emb (V, D), text_emb (C, D), caption_video (C,) -> ranks (Q,) of each query video's
    best-ranked own caption among all C captions."""
    sim = _normalise(video_emb[query_videos]) @ _normalise(text_emb).T  # (Q, C)
    ranks = []
    for q, v in enumerate(query_videos):
        is_own = caption_video == v
        best = sim[q, is_own].max()
        ranks.append(1 + int((sim[q, ~is_own] >= best).sum()))
    return np.array(ranks)
