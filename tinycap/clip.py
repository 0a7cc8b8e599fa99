"""CLIP on sampled frames: open_clip models, contrastive training on clips, embeddings.

open_clip is the implementation: architectures are its JSON model configs (ours live in
tinycap/model_configs/ and are registered with `open_clip.add_model_config`), built by
`open_clip.create_model`, text goes through its tokenizer and training uses its `ClipLoss`.

Video side of the contrastive loss. One frame cannot show motion, and the captions describe
motion ("slides left", "grows", "fades out"), so per-frame features trained against captions
frame by frame have no reason to keep an object's position, size, opacity or colour over time.
Each training clip is therefore embedded as all its T frames, and
    loss = ClipLoss(mean_t f_t, text) + clip.order_weight * order term
The mean term (open_clip's ClipLoss between the mean of the L2-normalised frame features and one
caption per clip) is the order-free view, what `pooling: mean` sees later. The order term makes
frame order matter: for clips whose annotation says `order_dependent` (moves left/right,
grows/shrinks, fades in/out...), the caption must be closer to a late-weighted pooling of the
frames (weights 0, 1, ..., T-1, normalised) than to the early-weighted one (the same clip played
backwards): cross-entropy over [forward, backwards]. Its gradient is caption . (late - early
frames), so the frame features have to encode where, how big, how opaque and what colour the
object is in each frame, and the text has to say which way it changes - exactly what a temporal
pooler with position embeddings (tinycap.pool.AttentionPool) can then pick up. It costs no extra
forward pass. Data without `order_dependent` attributes (real video) trains without it.

data/clip/ = open_clip_config.json ({"model_cfg", "preprocess_cfg"}, open_clip's local-dir
format) + model.pt (plain dict {"model", "config", "model_name", "pretrained", "epoch", "step", ...}).
"""

import contextlib
import difflib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: pretrained weights come from the local cache

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tinycap import distributed, ray_engine, retrieval  # noqa: E402
from tinycap.errors import TinyCapError  # noqa: E402
from tinycap.frames_file import read_frames_header  # noqa: E402
from tinycap.io import atomic_path, read_json  # noqa: E402
from tinycap.journal import Journal, fingerprint, journalled  # noqa: E402

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
CONFIG_FILE = "open_clip_config.json"
CHECKPOINT_FILE = "model.pt"
open_clip.add_model_config(CONFIG_DIR)


@dataclass
class ClipParams:  # params.yaml `clip:` (clip_train reads the first six, clip_embed the last two)
    model: str = "tinyclip-vit-64"  # open_clip config name: tinycap/model_configs/*.json or any open_clip model
    pretrained: str | None = None  # open_clip pretrained tag (local cache only) or a checkpoint path; null = random init
    epochs: int = 14  # contrastive passes over the train clips; 0 = export the weights as they are
    batch_size: int = 32  # clips per step (all T frames of each, one random caption each)
    lr: float = 0.0005  # AdamW peak learning rate, linear warmup then cosine decay
    order_weight: float = 2.0  # weight of the order term (forward vs backwards, order-dependent clips)
    grid: bool = False  # clip_embed also writes patch-grid embeddings grid_emb [V,T,G,D]
    embed_batch_size: int = 256  # frames per forward pass in clip_embed


@dataclass
class Bundle:
    """A loaded CLIP: what embed_frames / embed_texts need."""

    model: nn.Module  # open_clip CLIP in eval mode
    tokenizer: Callable  # open_clip tokenizer: list[str] -> (N, context_length) int64
    image_size: int  # frames must be image_size x image_size
    mean: tuple  # per-channel normalisation of [0, 1] RGB
    std: tuple
    name: str  # open_clip model name
    source: str  # where it was loaded from (for messages)
    dim: int  # embedding size D


# ----------------------------------------------------------------------------- building models


@contextlib.contextmanager
def _quiet():
    """open_clip logs warnings on the root logger for expected situations (random init, no weights in dir)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def create(name, pretrained=None):
    """open_clip model `name` with weights from a pretrained tag (local cache), a checkpoint path,
    or random init (pretrained=None). Returns (model, model_cfg, preprocess_cfg)."""
    name = name.replace("/", "-")  # open_clip's spelling: ViT-B/32 -> ViT-B-32
    model_cfg = open_clip.get_model_config(name) if ":" not in name else None
    if model_cfg is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see tinycap/model_configs/ or open_clip.list_models()"
        raise TinyCapError("params.yaml: clip.model", f"unknown open_clip model {name!r}{hint}")
    tag = path = None
    if pretrained:
        if open_clip.get_pretrained_cfg(name, pretrained):
            tag = pretrained
            _require_cached(name, tag)
        elif Path(pretrained).is_file():
            path = Path(pretrained)
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise TinyCapError(
                "params.yaml: clip.pretrained",
                f"{pretrained!r} is neither an existing checkpoint file nor an open_clip tag of {name} "
                f"(tags: {', '.join(tags) or 'none'})",
            )
    try:
        with _quiet():
            model = open_clip.create_model(name, pretrained=tag)
    except Exception as e:
        raise TinyCapError(f"clip model {name}" + (f" ({tag})" if tag else ""), _first_line(e)) from None
    if path:
        _load_weights(model, path, name)
    return model, model_cfg, dict(open_clip.get_model_preprocess_cfg(model))


def _first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _require_cached(name, tag):
    """Pretrained weights are only read from the local caches (HF hub cache, ~/.cache/clip)."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if "file" in cfg and Path(cfg["file"]).is_file():
        return
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in (filename.rsplit(".", 1)[0] + ".safetensors", "open_clip_model.safetensors", filename):
            if isinstance(try_to_load_from_cache(repo, candidate), str):
                return
    url = cfg.get("url", "")
    if url and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file():
        return
    raise TinyCapError(
        "params.yaml: clip.pretrained",
        f"weights of {name} '{tag}' are not in the local cache and cannot be downloaded here (no internet); "
        f"put them in the HF cache ({hub or url}) or set clip.pretrained to a checkpoint path",
    )


def _load_weights(model, path, name):
    """Checkpoint file: our plain dict {"model": state_dict, ...} or anything open_clip loads."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TinyCapError(path, f"not a readable checkpoint ({_first_line(e)})") from None
    try:
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            model.load_state_dict(obj["model"])
        else:
            open_clip.load_checkpoint(model, str(path))
    except Exception as e:
        raise TinyCapError(path, f"weights do not fit model {name} ({_first_line(e)})") from None


def load_model(clip_dir):
    """Load data/clip/ (written by clip_train) -> Bundle."""
    clip_dir = Path(clip_dir)
    cfg_path, ckpt_path = clip_dir / CONFIG_FILE, clip_dir / CHECKPOINT_FILE
    conf = read_json(cfg_path)
    if not isinstance(conf.get("model_cfg"), dict):
        raise TinyCapError(cfg_path, "no 'model_cfg' mapping (open_clip local-dir config)")
    try:
        with _quiet():
            model = open_clip.create_model(f"local-dir:{clip_dir}", load_weights=False)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    except Exception as e:
        raise TinyCapError(cfg_path, f"not a valid open_clip model config ({_first_line(e)})") from None
    if not ckpt_path.is_file():
        raise TinyCapError(ckpt_path, "file not found")
    _load_weights(model, ckpt_path, conf.get("name", "in " + CONFIG_FILE))
    model.eval()
    pre = conf.get("preprocess_cfg", {})
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
    return Bundle(model, tokenizer, int(size), mean, std, conf.get("name", ""), str(clip_dir), embed_dim(model, tokenizer))


@torch.inference_mode()
def embed_dim(model, tokenizer):
    """Embedding size D of any open_clip model (one empty caption through the text tower)."""
    return int(model.encode_text(tokenizer([""])).shape[-1])


def save_model(out_dir, model, name, model_cfg, preprocess_cfg, **extra):
    """Write open_clip_config.json + model.pt into out_dir (an existing, fresh directory)."""
    conf = {"name": name, "model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out_dir / CONFIG_FILE).write_text(json.dumps(conf, indent=2) + "\n")
    torch.save({"model": model.state_dict(), "config": model_cfg, "model_name": name, **extra}, out_dir / CHECKPOINT_FILE)


# ----------------------------------------------------------------------------- embedding


def _to_input(frames, mean, std):
    """uint8 (N, S, S, 3) -> normalised float (N, 3, S, S)."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def check_frames(frames, image_size, where="frames"):
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise TinyCapError(where, f"frames must be a uint8 array, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim < 4 or frames.shape[-1] != 3 or frames.shape[-2] != frames.shape[-3]:
        raise TinyCapError(where, f"frames must be [..., S, S, 3] RGB, got shape {frames.shape}")
    if frames.shape[-2] != image_size:
        raise TinyCapError(
            where,
            f"frames are {frames.shape[-2]}x{frames.shape[-2]} px but the CLIP model expects "
            f"{image_size}x{image_size} (set frames.size: {image_size} and rerun sample_frames)",
        )


@torch.inference_mode()
def embed_frames(bundle, frames, batch_size=256, grid=False, progress=False):
    """uint8 (N, S, S, 3) -> L2-normalised float32 (N, D); with grid=True also (N, G, D) patch embeddings."""
    check_frames(frames, bundle.image_size)
    visual = bundle.model.visual
    if grid and not hasattr(visual, "output_tokens"):
        raise TinyCapError("params.yaml: clip.grid", f"model {bundle.name} has no patch tokens (not a ViT)")
    out, out_grid = [], []
    previous = getattr(visual, "output_tokens", False)
    device = next(visual.parameters()).device  # the CPU, or a Ray actor's GPU
    visual.output_tokens = grid
    try:
        for i in tqdm(range(0, len(frames), batch_size), desc="frames", unit="batch", disable=not progress):
            x = _to_input(frames[i : i + batch_size], bundle.mean, bundle.std).to(device)
            if grid:
                pooled, tokens = visual(x)  # (B, D), (B, G, width)
                if visual.proj is not None:
                    tokens = tokens @ visual.proj  # (B, G, D)
                out_grid.append(F.normalize(tokens, dim=-1).cpu().numpy())
            else:
                pooled = visual(x)  # (B, D)
            out.append(F.normalize(pooled, dim=-1).cpu().numpy())
    finally:
        visual.output_tokens = previous
    dim = bundle.dim
    emb = np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
    if grid:
        return emb, (np.concatenate(out_grid).astype(np.float32) if out_grid else np.zeros((0, 0, dim), np.float32))
    return emb


@torch.inference_mode()
def embed_texts(bundle, texts, batch_size=256):
    """list of str -> L2-normalised float32 (N, D)."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = bundle.tokenizer(list(texts[i : i + batch_size]))  # (B, context_length)
        out.append(F.normalize(bundle.model.encode_text(tokens), dim=-1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, bundle.dim), np.float32)


# ----------------------------------------------------------------------------- inputs


def read_clips(frames_path, annotations_path, splits=None, load_frames=True):
    """frames.h5 + annotations.json -> dict(frames (V,T,S,S,3) uint8 or None, shape, video_id, split,
    captions (list per video), action, order_dependent (None when absent)) for the videos of `splits`
    (all when None), in frames.h5 order."""
    frames_path, annotations_path = Path(frames_path), Path(annotations_path)
    ann = read_json(annotations_path)
    if not isinstance(ann, dict) or not isinstance(ann.get("sentences"), list) or not isinstance(ann.get("videos"), list):
        raise TinyCapError(annotations_path, "expected {'videos': [...], 'sentences': [...]}")
    header = read_frames_header(frames_path)
    shape, video_id, split = header.shape, header.video_id, header.split
    rows = np.arange(shape[0]) if splits is None else np.flatnonzero(np.isin(split, list(splits)))
    frames = None
    if load_frames:
        with h5py.File(frames_path, "r") as f:
            frames = f["frames"][rows]  # rows ascending: h5py fancy indexing
    video_id, split = video_id[rows], split[rows]
    index = {v: i for i, v in enumerate(video_id)}
    meta = {v.get("video_id"): v for v in ann["videos"] if isinstance(v, dict)}
    unknown = [v for v in video_id if v not in meta]
    if unknown:
        raise TinyCapError(frames_path, f"{len(unknown)} video(s) not in {annotations_path} (e.g. {unknown[0]})")
    captions = [[] for _ in video_id]
    for s in ann["sentences"]:
        i = index.get(s.get("video_id")) if isinstance(s, dict) else None
        if i is not None and isinstance(s.get("caption"), str) and s["caption"].strip():
            captions[i].append(s["caption"].strip())
    has_attrs = all("action" in meta[v] and "order_dependent" in meta[v] for v in video_id)
    return {
        "frames": frames,
        "shape": shape,
        "video_id": video_id,
        "split": split,
        "captions": captions,
        "action": np.array([str(meta[v]["action"]) for v in video_id]) if has_attrs else None,
        "order_dependent": np.array([bool(meta[v]["order_dependent"]) for v in video_id]) if has_attrs else None,
    }


# ----------------------------------------------------------------------------- training


def _encode_clips(model, frames, mean, std):
    """uint8 (B, T, S, S, 3) -> L2-normalised frame features (B, T, D)."""
    B, T = frames.shape[:2]
    x = _to_input(frames.reshape(B * T, *frames.shape[2:]), mean, std)  # (B*T, 3, S, S)
    return F.normalize(model.encode_image(x), dim=-1).view(B, T, -1)


def _video_losses(feats, text, scale, loss_fn, order_dependent=None, order_weight=1.0):
    """feats (B, T, D) normalised, text (B, D) normalised, order_dependent (B,) bool or None
    -> (loss, {"mean": ClipLoss of the mean-pooled clips, "order": forward-vs-backwards CE})."""
    parts = {"mean": loss_fn(F.normalize(feats.mean(1), dim=-1), text, scale)}
    loss = parts["mean"]
    if order_dependent is not None and order_dependent.any():
        od = torch.as_tensor(order_dependent)
        T = feats.shape[1]
        late = torch.arange(T, dtype=feats.dtype) / (T * (T - 1) / 2)  # (T,) sums to 1, weights the end
        f, t = feats[od], text[od]  # (n, T, D), (n, D)
        forward = F.normalize((late[:, None] * f).sum(1), dim=-1)  # (n, D)
        backwards = F.normalize((late.flip(0)[:, None] * f).sum(1), dim=-1)  # (n, D) = played backwards
        logits = scale * torch.stack([(t * forward).sum(-1), (t * backwards).sum(-1)], dim=1)  # (n, 2)
        parts["order"] = F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long))
        loss = loss + order_weight * parts["order"]
    return loss, parts


@torch.inference_mode()
def video_features(model, frames, mean, std, batch_clips=64):
    """uint8 (V, T, S, S, 3) -> (mean-pooled (V, D) normalised, frame features (V, T, D)) numpy."""
    pooled, feats = [], []
    for i in range(0, len(frames), batch_clips):
        f = _encode_clips(model, frames[i : i + batch_clips], mean, std)  # (B, T, D)
        pooled.append(F.normalize(f.mean(1), dim=-1).numpy())
        feats.append(f.numpy())
    return np.concatenate(pooled), np.concatenate(feats)


def val_retrieval(model, clips, rows, mean, std, tokenizer):
    """Text<->video retrieval on the clips in `rows` with mean-pooled frame features; plus, on
    order-dependent clips, how often a caption prefers the late-weighted over the early-weighted pooling."""
    was_training = model.training
    model.eval()
    caps = [(c, j) for j, r in enumerate(rows) for c in clips["captions"][r]]
    with torch.inference_mode():
        text = F.normalize(model.encode_text(tokenizer([c for c, _ in caps])), dim=-1).numpy()
    cv = np.array([j for _, j in caps])
    pooled, feats = video_features(model, clips["frames"][rows], mean, std)
    out = retrieval.split_metrics(pooled, text, cv, np.arange(len(rows)))
    if clips["order_dependent"] is not None:
        od = clips["order_dependent"][rows][cv]  # (C,)
        T = feats.shape[1]
        late = np.arange(T) / (T * (T - 1) / 2)
        diff = np.einsum("t,ctd->cd", late - late[::-1], feats[cv[od]])  # (n, D) late minus early
        out["order_dependent_forward_%"] = round(100.0 * float(((text[od] * diff).sum(1) > 0).mean()), 2) if od.any() else None
    model.train(was_training)
    return out


def _lr_at(step, total, peak):
    warmup = max(1, min(50, total // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _fingerprint(cfg, seed, clips):
    h = hashlib.sha256(json.dumps([asdict(cfg), seed, list(clips["video_id"]), clips["captions"]]).encode())
    return h.hexdigest()


def train(frames_path, annotations_path, out_dir, cfg: ClipParams, seed=0, live_dir=None, resume_path=None):
    """The `clip_train` stage: build/load the model, train it contrastively on the train clips, write
    out_dir (open_clip config + model.pt) atomically; return the metrics. After each epoch the full
    training state goes to `resume_path`; a rerun with the same params and data resumes from it.
    In a torchrun rank (tinycap.distributed) each rank encodes its shard of every batch and the contrastive
    loss is computed on the whole gathered batch; rank 0 logs, writes and returns the metrics, the other
    ranks return None."""
    out_dir = Path(out_dir)
    clips = read_clips(frames_path, annotations_path, splits=("train", "val"))
    torch.manual_seed(seed)
    model, model_cfg, pre = create(cfg.model, cfg.pretrained)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    check_frames(clips["frames"][:1], size, where=str(frames_path))
    tokenizer = open_clip.get_tokenizer(cfg.model)
    mean, std = pre["mean"], pre["std"]
    dim = embed_dim(model, tokenizer)
    train_rows = np.array([i for i in np.flatnonzero(clips["split"] == "train") if clips["captions"][i]])
    val_rows = np.array([i for i in np.flatnonzero(clips["split"] == "val") if clips["captions"][i]])
    if cfg.epochs > 0 and not len(train_rows):
        raise TinyCapError(frames_path, "no train clips with captions")

    step, epoch0, train_seconds, cpu_seconds = 0, 0, 0.0, 0.0
    fingerprint = _fingerprint(ClipParams(**{**asdict(cfg), "grid": False, "embed_batch_size": 0}), seed, clips)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        foreach=True,  # torch's CPU default is a per-tensor loop: same values, the step a third faster (7.7 M params)
    )
    resume = Path(resume_path) if resume_path else None
    if cfg.epochs > 0 and resume and resume.is_file():
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, epoch0 = state["step"], state["epoch"]
            train_seconds, cpu_seconds = state["train_seconds"], state["cpu_seconds"]
            log.info("resuming from %s at epoch %d", resume, epoch0)
        else:
            log.info("ignoring %s: it was written with other params or data", resume)
    distributed.broadcast_parameters(model)

    live = None
    if live_dir and cfg.epochs > 0 and distributed.is_main():
        from dvclive import Live

        live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None, resume=epoch0 > 0)
    loss_fn = ClipLoss()
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size) if len(train_rows) else 0
    total = steps_per_epoch * cfg.epochs
    model.train()
    bar = tqdm(total=total, initial=step, desc="clip_train", unit="step", disable=total == 0 or not distributed.is_main())
    for epoch in range(epoch0, cfg.epochs):
        t0, c0 = time.time(), time.process_time()
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)  # per epoch: resuming replays the same order
        order = train_rows[torch.randperm(len(train_rows), generator=gen).numpy()]
        for i in range(steps_per_epoch):
            rows = np.sort(order[i * cfg.batch_size : (i + 1) * cfg.batch_size])
            caps = [clips["captions"][r][int(torch.randint(len(clips["captions"][r]), (1,), generator=gen))] for r in rows]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.lr)
            mine = distributed.shard(rows)  # this rank's clips of the batch: all of them in one process
            feats = distributed.gather(_encode_clips(model, clips["frames"][mine], mean, std), len(rows))  # (B, T, D)
            text = F.normalize(model.encode_text(tokenizer(distributed.shard(caps))), dim=-1)  # (b, D) this rank's
            text = distributed.gather(text, len(rows))  # (B, D)
            od = clips["order_dependent"][rows] if clips["order_dependent"] is not None else None
            loss, parts = _video_losses(feats, text, model.logit_scale.exp(), loss_fn, od, cfg.order_weight)
            distributed.optimizer_step(model, opt, loss)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if live:
                live.log_metric("train/loss", loss.item())
                for name, value in parts.items():
                    live.log_metric(f"train/loss_{name}", value.item())
                live.log_metric("train/lr", opt.param_groups[0]["lr"])
                live.next_step()
        train_seconds += time.time() - t0
        cpu_seconds += time.process_time() - c0
        if live and len(val_rows):
            val = val_retrieval(model, clips, val_rows, mean, std, tokenizer)
            live.log_metric("val/t2v_R@1", val["t2v_R@1"])
            if val.get("order_dependent_forward_%") is not None:
                live.log_metric("val/order_dependent_forward_%", val["order_dependent_forward_%"])
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "epoch": epoch + 1,
            "train_seconds": train_seconds,
            "cpu_seconds": cpu_seconds,
            "fingerprint": fingerprint,
        }
        if resume and distributed.is_main():
            with atomic_path(resume) as tmp:
                torch.save(state, tmp)
    bar.close()
    if live:
        live.end()
    if not distributed.is_main():
        return None  # rank 0 holds the same model: it evaluates and writes

    metrics = {"model": cfg.model, "pretrained": cfg.pretrained, "epochs": cfg.epochs}
    if len(val_rows):
        metrics["val"] = val_retrieval(model, clips, val_rows, mean, std, tokenizer)
    else:
        metrics["val"] = {"t2v_R@1": None, "t2v_R@5": None, "v2t_R@1": None}
    metrics.update(
        {
            "params_count": sum(p.numel() for p in model.parameters()),
            "params_count_image": sum(p.numel() for p in model.visual.parameters()),
            "embed_dim": dim,
            "image_size": int(size),
            "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1),
            "train_clips": int(len(train_rows)),
            "steps": step,
            "chance_t2v_R@1": round(100.0 / max(1, len(val_rows)), 2),
            "method": "val retrieval among the val clips: cosine of L2-normalised caption embeddings and the mean of "
            "L2-normalised frame embeddings; R@K in %, MdR = median rank; order_dependent_forward_%: share of "
            "the val captions of order-dependent clips closer to the late-weighted than to the early-weighted "
            "pooling of their clip's frames (50 = blind to order); train_seconds = wall time of the training loop "
            f"with {torch.get_num_threads()} torch threads (train_cpu_seconds: CPU time of all threads; on a "
            "shared machine wall time overstates the cost)",
        }
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_model(tmp, model, cfg.model, model_cfg, pre, pretrained=cfg.pretrained, epoch=cfg.epochs, step=step, seed=seed)
    if resume:
        resume.unlink(missing_ok=True)
    return metrics


# ----------------------------------------------------------------------------- the clip_embed stage


def embed(clip_dir, frames_path, annotations_path, out_path, grid=False, batch_size=256, engine="local", workers=0,
          resume_dir=None):  # fmt: skip
    """The `clip_embed` stage: every video's frame embeddings and every caption's text embedding -> clip.h5.

    engine "ray" (compute.engine) embeds the frames in Ray Data actors (`workers` of them, 0: one per cluster
    CPU; one GPU each where the cluster has GPUs), the same chunks of videos as here, written in the same order.
    With `resume_dir`, each embedded chunk is kept there (a journal.Journal) until clip.h5 is written, so a killed
    run embeds only the chunks it had not finished.
    """
    bundle = load_model(clip_dir)
    clips = read_clips(frames_path, annotations_path, load_frames=False)
    V, T, S = clips["shape"][:3]
    if S != bundle.image_size:
        raise TinyCapError(
            frames_path,
            f"frames are {S}x{S} px but the CLIP model in {clip_dir} expects "
            f"{bundle.image_size}x{bundle.image_size} (set frames.size: {bundle.image_size})",
        )
    captions = [c for caps in clips["captions"] for c in caps]
    caption_video = np.array([i for i, caps in enumerate(clips["captions"]) for _ in caps], dtype=np.int32)
    t0 = time.time()
    videos_per_batch = max(1, batch_size // T)
    starts = range(0, V, videos_per_batch)
    with atomic_path(out_path, suffix=".h5") as tmp, h5py.File(tmp, "w") as out, contextlib.ExitStack() as stack:
        D = bundle.dim
        frame_emb = out.create_dataset("frame_emb", (V, T, D), dtype="f4")
        grid_emb = None
        journal = None
        if resume_dir is not None:
            config = {"clip": fingerprint(clip_dir), "frames": fingerprint(frames_path), "grid": grid, "batch_size": batch_size}
            journal = Journal(resume_dir, config)
        held = journal.keys() if journal else set()
        todo = [a for a in starts if _chunk_key(a) not in held]
        if engine == "ray" and todo:
            stack.enter_context(ray_engine.session(workers))
            computed = _ray_chunks(clip_dir, frames_path, todo, videos_per_batch, batch_size, grid, workers)
            stack.enter_context(contextlib.closing(computed))  # before the session ends, also on an error
        else:
            computed = _local_chunks(bundle, frames_path, todo, videos_per_batch, batch_size, grid)
        parts = journalled(journal, held, map(_chunk_key, starts), computed)
        for part in tqdm(parts, total=len(starts), desc="clip_embed", unit="batch"):
            a, emb, g = part["start"], part["frame_emb"], part.get("grid_emb")  # (b, T, D), (b, T, G, D)
            if grid:
                if grid_emb is None:
                    grid_emb = out.create_dataset("grid_emb", (V, T, g.shape[2], D), dtype="f4")
                grid_emb[a : a + len(emb)] = g
            frame_emb[a : a + len(emb)] = emb
        frame_seconds = time.time() - t0
        out["video_id"] = clips["video_id"].astype("S")
        out["split"] = clips["split"].astype("S")
        out["text_emb"] = embed_texts(bundle, captions, batch_size)
        out["caption"] = np.array(captions, dtype=h5py.string_dtype())
        out["caption_video"] = caption_video
        if clips["action"] is not None:
            out["action"] = clips["action"].astype("S")
            out["order_dependent"] = clips["order_dependent"]
        out.attrs["model"] = bundle.name
        out.attrs["logit_scale"] = bundle.model.logit_scale.exp().item()
    if journal:
        journal.remove()
    log.info(
        "embedded %d frames in %.1f s (%.0f frames/s), %d captions",
        V * T,
        frame_seconds,
        V * T / max(frame_seconds, 1e-9),
        len(captions),
    )
    return {"frames": V * T, "frame_seconds": frame_seconds, "captions": len(captions)}


def _chunk_key(start):
    return f"videos {start}"


def embed_chunk(bundle, frames, a, videos, batch_size, grid):
    """Videos a .. a+videos of an open frames dataset [V,T,S,S,3] -> frame embeddings (b, T, D) and, with
    grid, patch embeddings (b, T, G, D) (else None). Both engines embed these same chunks."""
    chunk = frames[a : a + videos]  # (b, T, S, S, 3)
    b, T, S = chunk.shape[:3]
    if grid:
        emb, g = embed_frames(bundle, chunk.reshape(-1, S, S, 3), batch_size, grid=True)
        return emb.reshape(b, T, -1), g.reshape(b, T, g.shape[1], -1)
    return embed_frames(bundle, chunk.reshape(-1, S, S, 3), batch_size).reshape(b, T, -1), None


def _chunk(a, emb, g):
    """A chunk's embeddings as a journal part: start a, frame_emb (b, T, D), with grid also grid_emb (b, T, G, D)."""
    return {"key": _chunk_key(a), "start": int(a), "frame_emb": emb, **({"grid_emb": g} if g is not None else {})}


def _local_chunks(bundle, frames_path, starts, videos, batch_size, grid):
    """_chunk() of each chunk start, embedded in this process."""
    with h5py.File(frames_path, "r") as f:
        for a in starts:
            yield _chunk(a, *embed_chunk(bundle, f["frames"], a, videos, batch_size, grid))


def _ray_chunks(clip_dir, frames_path, starts, videos, batch_size, grid, workers):
    """_local_chunks' results in the same order, embedded by ChunkEmbedder actors on the Ray cluster.

    On CPU each actor runs this process's torch thread count and asks Ray for as many CPUs: the thread count
    changes float rounding, so with equal counts the embeddings are the local engine's bit for bit."""
    gpus = ray_engine.cluster_gpus()
    threads = torch.get_num_threads()
    fit = gpus or max(1, ray_engine.cluster_cpus() // threads)  # actors the cluster holds at once
    actors = max(1, min(workers or fit, fit, len(starts)))
    rows = [{"index": i, "start": a} for i, a in enumerate(starts)]
    kwargs = dict(clip_dir=str(Path(clip_dir).resolve()), frames_path=str(Path(frames_path).resolve()), videos=videos,
                  batch_size=batch_size, grid=grid, threads=threads, cuda=bool(gpus))  # fmt: skip
    resources = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_gpus": 0, "num_cpus": threads}
    for row in ray_engine.map_rows_actor(rows, ChunkEmbedder, 1, actors, constructor_kwargs=kwargs, **resources):
        yield _chunk(row["start"], row["frame_emb"], row["grid_emb"] if grid else None)


class ChunkEmbedder:
    """A Ray actor: the CLIP model loaded once; each row {index, start} -> that chunk's embeddings (embed_chunk).

    `threads` torch threads (the driver's; Ray reserves that many CPUs for the actor), the model on the GPU when
    the actor has one. On CPU the embeddings equal the local engine's bit for bit (tests/test_ray_engine.py); on
    a GPU other kernels run, so they are not expected to (not measured: no GPU here).
    """

    def __init__(self, clip_dir, frames_path, videos, batch_size, grid, threads, cuda):
        torch.set_num_threads(threads)
        self.bundle = load_model(clip_dir)
        if cuda:
            self.bundle.model.to("cuda")
        self.file = h5py.File(frames_path, "r")
        self.videos, self.batch_size, self.grid = videos, batch_size, grid

    def __call__(self, batch):  # one row: Ray's batch_size is 1, the chunk is the batch
        emb, g = embed_chunk(self.bundle, self.file["frames"], int(batch["start"][0]), self.videos, self.batch_size, self.grid)
        out = {"index": batch["index"], "start": batch["start"], "frame_emb": emb[None]}  # (1, b, T, D)
        if g is not None:
            out["grid_emb"] = g[None]  # (1, b, T, G, D)
        return out
