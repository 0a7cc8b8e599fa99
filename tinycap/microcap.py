"""MicroCap: the student small enough for a Cortex-M7.

temporal pooler (tinycap.pool) -> context c (B, D)
h0 = tanh(init_h(c))
GRU written out by hand (no nn.GRU) so the TensorFlow mirror in tinycap/quantize.py is a 1:1 copy:
    gx = x_proj(cat(embed(tok), c))          # gate order r, z, n
    gh = h_proj(h)
    r = sigmoid(gx_r + gh_r); z = sigmoid(gx_z + gh_z); n = tanh(gx_n + r * gh_n)
    h_new = (1 - z) * n + z * h
    logits = out(h_new)
Greedy decoding starts from <bos>, stops at <eos>, and runs at most max_len - 1 steps
(max_len counts BOS and EOS, like guide.max_len), so a caption has at most max_len - 2 words.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinycap.errors import TinyCapError
from tinycap.pool import build_pooler
from tinycap.vocab import BOS, EOS, PAD


@dataclass
class MicroCapConfig:
    vocab_size: int = 1000  # ids from data/guide/vocab.json (specials <pad>=0 <bos>=1 <eos>=2 <unk>=3)
    dim: int = 256  # CLIP embedding size D of the frame embeddings
    num_frames: int = 5  # T frames per clip (the pooler's position embeddings)
    pooling: str = "attention"  # mean | attention
    embed_dim: int = 96  # token embedding size
    hidden: int = 192  # GRU hidden size H
    max_len: int = 16  # tokens per caption, BOS and EOS included

    @property
    def max_steps(self):
        """Decoder steps greedy decoding runs at most (tokens after <bos>, <eos> included)."""
        return self.max_len - 1


class MicroCap(nn.Module):
    def __init__(self, cfg: MicroCapConfig):
        super().__init__()
        self.cfg = cfg
        self.pooler = build_pooler(cfg.pooling, cfg.dim, cfg.num_frames)
        self.init_h = nn.Linear(cfg.dim, cfg.hidden)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.x_proj = nn.Linear(cfg.embed_dim + cfg.dim, 3 * cfg.hidden)
        self.h_proj = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def encode(self, frames):
        """frames (B, T, D) -> context c (B, D), h0 (B, H), pooling weights (B, T)."""
        c, weights = self.pooler(frames)  # (B, D), (B, T)
        h0 = torch.tanh(self.init_h(c))  # (B, H)
        return c, h0, weights

    def step(self, tok, h, c):
        """One decoder step: tok (B,), h (B, H), c (B, D) -> logits (B, V), h_new (B, H)."""
        gx = self.x_proj(torch.cat([self.embed(tok), c], dim=-1))  # (B, 3H)
        gh = self.h_proj(h)  # (B, 3H)
        gx_r, gx_z, gx_n = gx.chunk(3, dim=-1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(gx_r + gh_r)
        z = torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
        h_new = (1 - z) * n + z * h  # (B, H)
        return self.out(h_new), h_new

    def forward(self, frames, tokens, targets=None):
        """Teacher forcing. frames (B, T, D), tokens (B, L) inputs starting with <bos>,
        targets (B, L) next tokens with <pad> ignored -> logits (B, L, V), loss or None."""
        c, h, _ = self.encode(frames)
        logits = []
        for i in range(tokens.shape[1]):
            step_logits, h = self.step(tokens[:, i], h, c)
            logits.append(step_logits)
        logits = torch.stack(logits, dim=1)  # (B, L, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD)
        return logits, loss

    @torch.no_grad()
    def greedy(self, frames, max_steps=None):
        """frames (B, T, D) -> list of B token-id lists (no <bos>, stops before <eos>)."""
        max_steps = self.cfg.max_steps if max_steps is None else max_steps
        c, h, _ = self.encode(frames)
        B = frames.shape[0]
        tok = torch.full((B,), BOS, dtype=torch.long, device=frames.device)
        done = torch.zeros(B, dtype=torch.bool, device=frames.device)
        out = [[] for _ in range(B)]
        for _ in range(max_steps):
            logits, h = self.step(tok, h, c)
            tok = logits.argmax(dim=-1)  # (B,)
            for b in range(B):
                if not done[b] and tok[b].item() != EOS:
                    out[b].append(tok[b].item())
            done |= tok == EOS
            if done.all():
                break
        return out


def checkpoint(model, vocab, **extra):
    """Plain-dict checkpoint; `vocab` (tinycap.vocab.Vocab) is fingerprinted to catch mismatches."""
    return {"model": model.state_dict(), "config": asdict(model.cfg), "vocab_sha": vocab.sha, **extra}


def load(path, vocab=None):
    """Load data/microcap/microcap.pt; with `vocab`, refuse a checkpoint built on another vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    try:
        cfg = MicroCapConfig(**ckpt["config"])
    except (KeyError, TypeError) as e:
        raise TinyCapError(path, f"not a MicroCap checkpoint ({e})") from None
    if vocab is not None:
        vocab.check(ckpt.get("vocab_sha"), cfg.vocab_size, path)
    model = MicroCap(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval()
