"""The guide (teacher): a transformer decoder cross-attending over CLIP frame tokens.

memory: frame embeddings (B, T, D) -- or patch-grid embeddings (B, T, G, D) when clip.h5 has them --
projected to d_model, plus a learned temporal position embedding per frame (and one per grid cell).
decoder: pre-LN blocks of causal self-attention, cross-attention over the memory, MLP; tied output head.
The cross-attention weights, summed over the grid cells of a frame and averaged over heads and layers,
are the guide's attention over frames that MicroCap's pooler is aligned to.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from tinycap import checkpoint, distributed
from tinycap.embeddings import batches, caption_rows, encode_captions, load_embeddings
from tinycap.errors import TinyCapError
from tinycap.io import atomic_path
from tinycap.metrics import score
from tinycap.vocab import BOS, EOS, PAD, Vocab

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# params.yaml `guide:` section


@dataclass
class GuideParams:
    vocab_size: int  # cap on the vocabulary (special tokens included)
    max_len: int  # tokens per caption, BOS and EOS included
    d_model: int
    layers: int
    heads: int
    dropout: float
    epochs: int
    batch_size: int
    lr: float
    label_smoothing: float
    beam: int  # beam width used by `evaluate` for the guide (1 = greedy)


# ----------------------------------------------------------------------------------------------
# model


@dataclass
class GuideConfig:
    vocab_size: int = 1000
    dim: int = 256  # CLIP embedding size D
    num_frames: int = 5  # T
    grid: int = 0  # G patch tokens per frame (0: one token per frame)
    d_model: int = 256
    layers: int = 3
    heads: int = 4
    max_len: int = 16  # tokens per caption, BOS and EOS included
    dropout: float = 0.1


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x):  # (B, L, d)
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, hd) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))

    def step(self, x, cache):
        """The newest position only: x (B, 1, d), cache = keys, values (B, h, L, hd) of the earlier
        positions or None -> y (B, 1, d), the cache with this position appended (eval mode)."""
        B, _, d = x.shape
        q, k, v = self.qkv(x).view(B, 1, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, 1, hd) each
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, h, L+1, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # the last query sees every position: no mask
        return self.proj(y.transpose(1, 2).reshape(B, 1, d)), (k, v)


class CrossAttention(nn.Module):
    """Written out so the attention weights over the memory tokens can be returned."""

    def __init__(self, cfg):
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def memory_kv(self, mem):
        """mem (B, M, d) -> keys, values (B, h, M, hd): fixed while a caption is decoded."""
        B, M, d = mem.shape
        return self.kv(mem).view(B, M, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x, mem, kv=None):  # x (B, L, d), mem (B, M, d); kv: memory_kv(mem) when computed already
        B, L, d = x.shape
        hd = d // self.heads
        q = self.q(x).view(B, L, self.heads, hd).transpose(1, 2)  # (B, h, L, hd)
        k, v = self.memory_kv(mem) if kv is None else kv  # (B, h, M, hd) each
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)  # (B, h, L, M)
        y = self.drop(att) @ v  # (B, h, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, d)), att


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = CrossAttention(cfg)
        self.ln3 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout)
        )

    def forward(self, x, mem):
        x = x + self.self_attn(self.ln1(x))
        y, att = self.cross_attn(self.ln2(x), mem)
        x = x + y
        x = x + self.mlp(self.ln3(x))
        return x, att

    def step(self, x, mem_kv, cache):
        """x (B, 1, d) at the newest position, mem_kv = cross_attn.memory_kv(mem), cache as in
        SelfAttention.step -> x (B, 1, d), the new cache."""
        y, cache = self.self_attn.step(self.ln1(x), cache)
        x = x + y
        x = x + self.cross_attn(self.ln2(x), None, mem_kv)[0]
        return x + self.mlp(self.ln3(x)), cache


class Guide(nn.Module):
    def __init__(self, cfg: GuideConfig):
        super().__init__()
        if cfg.d_model % cfg.heads:
            raise TinyCapError("guide", f"d_model {cfg.d_model} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.dim, cfg.d_model)
        self.frame_pos = nn.Parameter(torch.zeros(cfg.num_frames, cfg.d_model))  # temporal position
        self.grid_pos = nn.Parameter(torch.zeros(max(cfg.grid, 1), cfg.d_model))  # cell position (unused if grid=0)
        self.ln_mem = nn.LayerNorm(cfg.d_model)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.max_len, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init)
        for p in (self.frame_pos, self.grid_pos, self.pos_emb):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def memory(self, frames):
        """frames (B, T, D) or grid (B, T, G, D) -> memory tokens (B, T*G, d)."""
        x = self.in_proj(frames)
        if x.ndim == 4:  # (B, T, G, d)
            x = x + self.frame_pos[None, :, None] + self.grid_pos[None, None]
            return self.ln_mem(x.flatten(1, 2))
        return self.ln_mem(x + self.frame_pos)  # (B, T, d)

    def decode(self, mem, tokens):
        """mem (B, M, d), tokens (B, L) -> logits (B, L, V), cross-attention over frames (B, L, T)."""
        L = tokens.shape[1]
        x = self.drop(self.tok_emb(tokens) + self.pos_emb[:L])  # (B, L, d)
        atts = []
        for block in self.blocks:
            x, att = block(x, mem)
            atts.append(att.mean(1))  # (B, L, M), mean over heads
        att = torch.stack(atts).mean(0)  # mean over layers
        if self.cfg.grid:
            att = att.unflatten(-1, (self.cfg.num_frames, self.cfg.grid)).sum(-1)  # (B, L, T)
        return self.head(self.ln_f(x)), att

    def step(self, tok, pos, mem_kvs, caches):
        """Incremental decoding (eval mode): the logits decode() gives at position pos, computed for that
        position alone. tok (B,) the token at pos, mem_kvs one memory_kv per block, caches one
        self-attention cache per block (None at pos 0) -> logits (B, V), the new caches."""
        x = self.tok_emb(tok)[:, None] + self.pos_emb[pos]  # (B, 1, d)
        new = []
        for block, kv, cache in zip(self.blocks, mem_kvs, caches):
            x, cache = block.step(x, kv, cache)
            new.append(cache)
        return self.head(self.ln_f(x[:, 0])), new

    def forward(self, frames, tokens, targets=None, label_smoothing=0.0):
        """frames (B, T, D) or (B, T, G, D), tokens (B, L) -> logits (B, L, V), loss (CE, <pad> ignored)."""
        logits, _ = self.decode(self.memory(frames), tokens)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD, label_smoothing=label_smoothing)
        return logits, loss

    @torch.no_grad()
    def soft_targets(self, frames, tokens, mask):
        """Teacher-forced logits (B, L, V) and attention over frames (B, T), averaged over
        heads, layers and the non-pad steps given by mask (B, L)."""
        logits, att = self.decode(self.memory(frames), tokens)
        m = mask.float().unsqueeze(-1)  # (B, L, 1)
        frame_att = (att * m).sum(1) / m.sum(1).clamp(min=1)  # (B, T)
        return logits, frame_att

    @torch.no_grad()
    def greedy(self, frames, max_steps=None):
        """frames -> list of B token-id lists (no <bos>, stops before <eos>)."""
        return self.beam_search(frames, beam=1, max_steps=max_steps)

    @torch.no_grad()
    def beam_search(self, frames, beam=3, max_steps=None):
        """Beam search (beam=1 is greedy); hypotheses ranked by log-probability / length. Each step runs
        the newest token alone (step(): the memory's keys/values once per caption, the earlier tokens'
        self-attention keys/values cached), the same logits as decode() over the whole prefix."""
        max_steps = self.cfg.max_len - 1 if max_steps is None else max_steps
        mem = self.memory(frames)  # (B, M, d)
        B = mem.shape[0]
        mem_kvs = [
            tuple(t.repeat_interleave(beam, 0) for t in blk.cross_attn.memory_kv(mem)) for blk in self.blocks
        ]  # (B*k, h, M, hd)
        caches = [None] * len(self.blocks)
        tok = torch.full((B * beam,), BOS, dtype=torch.long, device=mem.device)
        seqs = tok[:, None]  # (B*k, 1)
        scores = torch.zeros(B, beam, device=mem.device)
        scores[:, 1:] = -float("inf")  # start from a single live hypothesis per clip
        finished = torch.zeros(B * beam, dtype=torch.bool, device=mem.device)
        lengths = torch.zeros(B * beam, device=mem.device)
        V = self.cfg.vocab_size
        for pos in range(max_steps):
            logits, caches = self.step(tok, pos, mem_kvs, caches)
            logp = torch.log_softmax(logits, dim=-1)  # (B*k, V)
            # a finished hypothesis only continues with <pad> at no cost
            logp[finished] = -float("inf")
            logp[finished, PAD] = 0.0
            cand = (scores.view(-1, 1) + logp).view(B, beam * V)
            scores, idx = cand.topk(beam, dim=-1)  # (B, k)
            src = (idx // V + torch.arange(B, device=mem.device)[:, None] * beam).flatten()
            tok = (idx % V).flatten()
            seqs = torch.cat([seqs[src], tok[:, None]], dim=1)
            caches = [(k[src], v[src]) for k, v in caches]
            was_finished = finished[src]
            lengths = lengths[src] + (~was_finished).float()
            finished = was_finished | (tok == EOS)
            if finished.all():
                break
        best = (scores.view(-1) / lengths.clamp(min=1)).view(B, beam).argmax(-1)  # (B,)
        out = []
        for b in range(B):
            ids = []
            for t in seqs[b * beam + best[b], 1:].tolist():
                if t in (EOS, PAD):
                    break
                ids.append(t)
            out.append(ids)
        return out


# ----------------------------------------------------------------------------------------------
# checkpoints


def load(path, vocab=None):
    """Load data/guide/guide.pt; with `vocab`, refuse a checkpoint built on another vocabulary."""
    model, ckpt = checkpoint.load(path, GuideConfig, Guide, "guide", vocab)
    model.beam = int(ckpt.get("beam", 1))
    return model


# ----------------------------------------------------------------------------------------------
# training


def teacher_forcing(tokens):
    """(N, max_len) padded ids -> inputs (N, max_len-1), targets (N, max_len-1)."""
    inp = tokens[:, :-1].clone()
    inp[inp == EOS] = PAD  # <eos> is never an input
    return inp, tokens[:, 1:]


def decode_rows(model, frames, rows, vocab, beam=1, batch_size=256):
    """Captions {row: str} for frame rows with greedy (beam=1) or beam search."""
    model.eval()
    out = {}
    for i in range(0, len(rows), batch_size):
        r = rows[i : i + batch_size]
        x = frames[torch.as_tensor(r)]
        ids = model.greedy(x) if beam == 1 else model.beam_search(x, beam=beam)
        out.update({int(row): vocab.decode(seq) for row, seq in zip(r, ids)})
    return out


def memory_input(emb):
    """The guide's memory input: grid tokens when clip.h5 has them, else per-frame tokens."""
    return torch.from_numpy(emb.grid_emb if emb.grid_emb is not None else emb.frame_emb)


def train(emb_path, out_dir, p: GuideParams, seed=0, live_dir=None, resume_path=None):
    """Build the vocabulary, train the guide, write out_dir/{vocab.json,guide.pt}; return the metrics.
    In a torchrun rank (tinycap.distributed) each rank trains on its shard of every batch; rank 0 logs,
    writes and returns the metrics, the other ranks return None."""
    torch.manual_seed(seed)
    emb = load_embeddings(emb_path)
    train_rows, val_rows = emb.videos("train", emb_path), emb.videos("val", emb_path)
    vocab = Vocab.build([emb.caption[i] for i in np.flatnonzero(np.isin(emb.caption_video, train_rows))], p.vocab_size)
    cap_train = caption_rows(emb, train_rows, vocab, f"{emb_path} (train)")
    cap_val = caption_rows(emb, val_rows, vocab, f"{emb_path} (val)")
    tokens = torch.from_numpy(encode_captions(vocab, emb.caption, p.max_len))
    cap_video = torch.from_numpy(emb.caption_video)
    frames = memory_input(emb)
    V, T = emb.frame_emb.shape[:2]
    cfg = GuideConfig(
        vocab_size=len(vocab), dim=emb.frame_emb.shape[2], num_frames=T,
        grid=0 if emb.grid_emb is None else emb.grid_emb.shape[2],
        d_model=p.d_model, layers=p.layers, heads=p.heads, max_len=p.max_len, dropout=p.dropout,
    )  # fmt: skip
    model = Guide(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(cap_train) / p.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=max(1, p.epochs * steps_per_epoch), pct_start=0.1)
    log.info("guide: %d params, vocab %d, %d train / %d val captions, %s memory", model.num_params(), len(vocab),
             len(cap_train), len(cap_val), f"grid {cfg.grid}" if cfg.grid else "frame")  # fmt: skip

    state = {"epoch": 0, "best_val": float("inf"), "best_model": None, "history": [], "seconds": 0.0}
    fingerprint = {"params": asdict(p), "seed": seed, "config": asdict(cfg), "vocab_sha": vocab.sha}
    if resume_path is not None and Path(resume_path).is_file():
        saved = torch.load(resume_path, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            torch.set_rng_state(saved["rng"])
            state = saved["state"]
            log.info("resuming from %s at epoch %d", resume_path, state["epoch"])
        else:
            log.info("ignoring %s: it was written with other params or data", resume_path)
    distributed.broadcast_parameters(model)

    live = None
    if live_dir is not None and distributed.is_main():
        from dvclive import Live

        live = Live(str(live_dir), resume=state["epoch"] > 0, save_dvc_exp=False, dvcyaml=None)
    gen = torch.Generator().manual_seed(seed + state["epoch"])
    val_inp, val_tgt = teacher_forcing(tokens[cap_val])
    val_frames = frames[cap_video[cap_val]]
    for epoch in range(state["epoch"], p.epochs):
        t0 = time.time()
        model.train()
        total, n = 0.0, 0
        for b in tqdm(list(batches(len(cap_train), p.batch_size, gen)), desc=f"guide epoch {epoch + 1}/{p.epochs}", leave=False):
            idx = torch.from_numpy(cap_train)[distributed.shard(b)]  # this rank's captions of the batch
            inp, tgt = teacher_forcing(tokens[idx])
            _, loss = model(frames[cap_video[idx]], inp, tgt, label_smoothing=p.label_smoothing)
            distributed.optimizer_step(model, opt, loss, clip_norm=1.0)
            sched.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        total, n = distributed.all_sum(total, n)
        val_loss = evaluate_loss(model, val_frames, val_inp, val_tgt)
        state["seconds"] += time.time() - t0
        state["history"].append({"epoch": epoch + 1, "train_loss": total / n, "val_loss": val_loss})
        if val_loss < state["best_val"]:
            state["best_val"] = val_loss
            state["best_model"] = {k: v.clone() for k, v in model.state_dict().items()}
        state["epoch"] = epoch + 1
        log.info("epoch %d: train loss %.4f, val CE %.4f", epoch + 1, total / n, val_loss)
        if live is not None:
            live.log_metric("train/loss", total / n)
            live.log_metric("val/ce", val_loss)
            live.next_step()
        if resume_path is not None and distributed.is_main():
            Path(resume_path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(resume_path) as tmp:
                torch.save({"fingerprint": fingerprint, "model": model.state_dict(), "opt": opt.state_dict(),
                            "sched": sched.state_dict(), "rng": torch.get_rng_state(), "state": state}, tmp)  # fmt: skip
    if live is not None:
        live.end()
    if not distributed.is_main():
        return None  # rank 0 holds the same model: it evaluates and writes

    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    model.eval()
    refs = emb.references(val_rows)
    metrics = {"params_count": model.num_params(), "vocab_size": len(vocab), "train_seconds": round(state["seconds"], 1),
               "epochs": p.epochs, "val": {"CE": state["best_val"]}}  # fmt: skip
    for name, beam in (("greedy", 1), ("beam", p.beam)):
        caps = decode_rows(model, frames, val_rows, vocab, beam=beam)
        s = score({emb.video_id[r]: c for r, c in caps.items()}, refs, metrics=("CIDEr", "BLEU-4"))
        metrics["val"][name] = {k: s[k] for k in ("CIDEr", "BLEU-4") if k in s}
        metrics["val"][name]["beam"] = beam
    metrics["method"] = "pycocoevalcap on the val split; CIDEr is the raw CIDEr-D value (x100 in papers)"
    log.info("guide val: %s", metrics["val"])

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        vocab.save(tmp / "vocab.json")
        torch.save(checkpoint.checkpoint(model, vocab, beam=p.beam, step=state["epoch"] * steps_per_epoch, epochs=state["epoch"]),
                   tmp / "guide.pt")  # fmt: skip
    if resume_path is not None and Path(resume_path).is_file():
        Path(resume_path).unlink()
    return metrics


@torch.no_grad()
def evaluate_loss(model, frames, inp, tgt, batch_size=512):
    """Mean token cross-entropy (no label smoothing) under teacher forcing."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(inp), batch_size):
        logits, _ = model(frames[i : i + batch_size], inp[i : i + batch_size])
        t = tgt[i : i + batch_size]
        total += F.cross_entropy(logits.flatten(0, 1), t.flatten(), ignore_index=PAD, reduction="sum").item()
        count += (t != PAD).sum().item()
    return total / max(count, 1)
