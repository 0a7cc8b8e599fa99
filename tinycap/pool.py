"""Temporal pooling of T frame embeddings into one video embedding, and the `pool` stage.

MeanPool       pooled = mean_t x_t
AttentionPool  scores = ((x + pos_emb) @ query) / sqrt(D); weights = softmax_T(scores);
               pooled = sum_t weights_t * x_t
Both: forward(x (B, T, D)) -> (pooled (B, D) unnormalised, weights (B, T) summing to 1).

AttentionPool has T*D + D parameters (a single learned query and temporal position embeddings),
small enough for the microcontroller. `pos_emb @ query` is a learned per-position bias on the
scores, so it can weight the end (or start) of a clip: unlike the mean, the pooled vector then
tells "moves left" from "moves right", grow from shrink, fade in from fade out. The `pool` stage
trains it contrastively against the frozen CLIP caption embeddings (CLIP4Clip-style, open_clip's
ClipLoss) and measures text<->video retrieval per action category against the mean baseline.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from tinycap import retrieval
from tinycap.embeddings import load_embeddings
from tinycap.errors import TinyCapError
from tinycap.io import atomic_path

log = logging.getLogger(__name__)

POOLINGS = ("mean", "attention")


@dataclass
class PoolParams:  # params.yaml `pool:` (the pooling kind is the top-level `pooling` key)
    epochs: int = 30  # passes over the train videos (attention only; mean has nothing to learn)
    batch_size: int = 64  # videos per contrastive batch (one random caption each)
    lr: float = 0.03  # AdamW learning rate of the pooler and the logit scale


class MeanPool(nn.Module):
    def __init__(self, dim, num_frames):
        super().__init__()
        self.dim, self.num_frames = dim, num_frames

    def forward(self, x):  # x (B, T, D)
        weights = torch.full(x.shape[:2], 1.0 / x.shape[1], dtype=x.dtype, device=x.device)  # (B, T)
        return (weights.unsqueeze(-1) * x).sum(1), weights  # (B, D), (B, T)


class AttentionPool(nn.Module):
    def __init__(self, dim, num_frames):
        super().__init__()
        self.dim, self.num_frames = dim, num_frames
        self.pos_emb = nn.Parameter(torch.randn(num_frames, dim) * 0.02)  # (T, D) temporal positions
        self.query = nn.Parameter(torch.zeros(dim))  # (D,) zero query: starts as the mean

    def forward(self, x):  # x (B, T, D)
        scores = ((x + self.pos_emb) @ self.query) / math.sqrt(self.dim)  # (B, T)
        weights = scores.softmax(dim=-1)  # (B, T)
        return (weights.unsqueeze(-1) * x).sum(1), weights  # (B, D), (B, T)


def build_pooler(kind, dim, num_frames):
    if kind == "mean":
        return MeanPool(dim, num_frames)
    if kind == "attention":
        return AttentionPool(dim, num_frames)
    raise TinyCapError("pooling", f"unknown pooling {kind!r}; expected one of {', '.join(POOLINGS)}")


def pooler_checkpoint(pooler, **extra):
    """Plain-dict checkpoint of a pooler (data/pooled/pooler.pt)."""
    kind = "attention" if isinstance(pooler, AttentionPool) else "mean"
    config = {"kind": kind, "dim": pooler.dim, "num_frames": pooler.num_frames}
    return {"model": pooler.state_dict(), "config": config, **extra}


def load_pooler(path):
    """Rebuild the pooler saved by the `pool` stage (data/pooled/pooler.pt)."""
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ckpt["config"]
        pooler = build_pooler(cfg["kind"], cfg["dim"], cfg["num_frames"])
        pooler.load_state_dict(ckpt["model"])
    except TinyCapError:
        raise
    except Exception as e:  # unreadable file, wrong keys or shapes
        raise TinyCapError(path, f"not a pooler checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return pooler


# ----------------------------------------------------------------------------- the `pool` stage


def run(emb_path, out_dir, pooling, cfg: PoolParams, seed=0, live_dir=None):
    """The `pool` stage: pool every video, write out_dir/{pooled.h5, pooler.pt}; return the metrics."""
    if pooling not in POOLINGS:
        raise TinyCapError("params.yaml: pooling", f"{pooling!r} is not one of {', '.join(POOLINGS)}")
    emb = load_embeddings(emb_path, need_text=True)
    V, T, D = emb.frame_emb.shape
    if not (emb.split == "train").any():
        raise TinyCapError(emb_path, "no train videos to fit the pooler on")
    torch.manual_seed(seed)
    pooler = build_pooler(pooling, D, T)
    t0 = time.time()
    if pooling == "attention":
        train_pooler(pooler, emb, cfg, seed, live_dir)
    train_seconds = time.time() - t0
    video_emb, weights = pool_all(pooler, emb.frame_emb)
    backwards_emb, _ = pool_all(pooler, emb.frame_emb[:, ::-1].copy())

    metrics = {"pooling": pooling, **evaluate(video_emb, emb, backwards_emb)}
    metrics["mean_weights_per_frame"] = [round(float(w), 4) for w in weights.mean(0)]
    metrics["pooler_params"] = sum(p.numel() for p in pooler.parameters())
    metrics["train_seconds"] = round(train_seconds, 1)
    if pooling != "mean":  # the training-free baseline on the same embeddings, for comparison
        mean_emb, _ = pool_all(MeanPool(D, T), emb.frame_emb)
        metrics["mean_baseline"] = evaluate(mean_emb, emb, mean_emb)
    metrics["method"] = (
        "text->video (t2v) and video->text (v2t) retrieval within each split: cosine similarity of "
        "L2-normalised pooled video embeddings and CLIP caption embeddings; R@K in %, MdR = median rank; "
        "order_dependent / per_action: t2v over the test captions of those videos against all test videos; "
        "forward_over_backwards_%: share of those captions closer to their clip than to the same clip played "
        "backwards (50 = blind to frame order)"
    )

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with h5py.File(tmp / "pooled.h5", "w") as f:
            f["video_emb"] = video_emb  # (V, D) unnormalised, as the pooler returns it
            f["weights"] = weights  # (V, T)
            f["video_id"] = np.array(emb.video_id).astype("S")
            f["split"] = emb.split.astype("S")
            f.attrs["pooling"] = pooling
        torch.save(pooler_checkpoint(pooler, seed=seed), tmp / "pooler.pt")
    log.info("pooling=%s val t2v R@1 %.1f test t2v R@1 %.1f", pooling, metrics["val"]["t2v_R@1"], metrics["test"]["t2v_R@1"])
    return metrics


@torch.inference_mode()
def pool_all(pooler, frame_emb):
    pooler.eval()
    pooled, weights = pooler(torch.from_numpy(frame_emb))
    return pooled.numpy().astype(np.float32), weights.numpy().astype(np.float32)


def train_pooler(pooler, emb, cfg: PoolParams, seed, live_dir=None):
    """CLIP4Clip-style: symmetric InfoNCE (open_clip ClipLoss) between pooled train videos and one
    random caption per video, the caption embeddings frozen; learned logit scale. When the data
    marks videos `order_dependent`, the same clip played backwards is also a hard negative for their
    captions (cross-entropy over [clip, reversed clip]), as in clip_train."""
    from open_clip.loss import ClipLoss

    train = np.flatnonzero(emb.split == "train")
    frames = torch.from_numpy(emb.frame_emb)  # (V, T, D)
    text = torch.from_numpy(emb.text_emb)  # (C, D)
    caps = [[] for _ in range(len(frames))]
    for c, v in enumerate(emb.caption_video):
        caps[v].append(c)
    train = np.array([v for v in train if caps[v]])
    order_dep = torch.from_numpy(emb.order_dependent) if emb.order_dependent is not None else None
    logit_scale = nn.Parameter(torch.tensor(math.log(emb.logit_scale)))
    opt = torch.optim.AdamW([*pooler.parameters(), logit_scale], lr=cfg.lr, weight_decay=0.0)
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    live = _live(live_dir)
    pooler.train()
    for _ in tqdm(range(cfg.epochs), desc="pool", unit="epoch"):
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        for i in range(steps_per_epoch):
            vids = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            pick = [caps[v][int(torch.randint(len(caps[v]), (1,), generator=gen))] for v in vids]
            pooled = F.normalize(pooler(frames[vids])[0], dim=-1)  # (B, D)
            scale = logit_scale.exp().clamp(max=100)
            loss = loss_fn(pooled, text[pick], scale)
            od = order_dep[vids] if order_dep is not None else None
            if od is not None and od.any():
                backwards = F.normalize(pooler(frames[vids[od]].flip(1))[0], dim=-1)  # (n, D)
                t = text[pick][od]
                logits = scale * torch.stack([(t * pooled[od]).sum(-1), (t * backwards).sum(-1)], dim=1)  # (n, 2)
                loss = loss + F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if live:
                live.log_metric("train/loss", float(loss))
                live.next_step()
        if live:
            video_emb, _ = pool_all(pooler, emb.frame_emb)
            pooler.train()
            val = _split_retrieval(video_emb, emb, "val")
            if val:
                live.log_metric("val/t2v_R@1", val["t2v_R@1"], plot=True)
    if live:
        live.end()


def _live(live_dir):
    if not live_dir:
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)


def _split_retrieval(video_emb, emb, split, caption_mask=None):
    vids = np.flatnonzero(emb.split == split)
    if not len(vids):
        return None
    return retrieval.split_metrics(video_emb, emb.text_emb, emb.caption_video, vids, caption_mask)


def forward_preference(video_emb, backwards_emb, text_emb, caption_video, captions):
    """% of `captions` closer to their clip than to the same clip played backwards (ties count half)."""
    if not len(captions):
        return None
    t = text_emb[captions]
    v = video_emb[caption_video[captions]]
    b = backwards_emb[caption_video[captions]]
    fwd = (t * v).sum(1) / np.linalg.norm(v, axis=1)
    bwd = (t * b).sum(1) / np.linalg.norm(b, axis=1)
    return round(100.0 * float(((fwd > bwd) + 0.5 * (fwd == bwd)).mean()), 2)


def evaluate(video_emb, emb, backwards_emb):
    """Retrieval on val, test (and novel), and per action category (test) when the data has them.
    backwards_emb: the pooled embeddings of the clips played backwards (frame order reversed)."""
    out = {split: _split_retrieval(video_emb, emb, split) for split in ("val", "test")}
    if (emb.split == "novel").any():  # unseen attribute combinations (embedded data)
        out["novel"] = _split_retrieval(video_emb, emb, "novel")
    action, order_dep, cv = emb.action, emb.order_dependent, emb.caption_video
    if order_dep is not None:
        od = order_dep[cv]
        out["order_dependent"] = _split_retrieval(video_emb, emb, "test", od)
        test_od = np.flatnonzero(od & (emb.split[cv] == "test"))
        out["order_dependent"]["forward_over_backwards_%"] = forward_preference(
            video_emb, backwards_emb, emb.text_emb, cv, test_od
        )
        out["order_independent"] = _split_retrieval(video_emb, emb, "test", ~od)
    else:  # real data: no attributes to break down by
        out["order_dependent"] = {"t2v_R@1": None}
    if action is not None:
        out["per_action"] = {}
        for a in sorted(set(action)):
            m = _split_retrieval(video_emb, emb, "test", action[cv] == a)
            if m and m["n_captions"]:
                m["order_dependent"] = bool(order_dep[action == a][0]) if order_dep is not None else None
                caps = np.flatnonzero((action[cv] == a) & (emb.split[cv] == "test"))
                m["forward_over_backwards_%"] = forward_preference(video_emb, backwards_emb, emb.text_emb, cv, caps)
                out["per_action"][a] = m
    return out
