"""MicroCap: the student small enough for a Cortex-M7.

temporal pooler (tinycap.pool) -> pooled (B, D), weights (B, T)
c = pooled + sum_t F_t * x_t   temporal filter F (T, D), zero at start (microcap.temporal_filter):
                               per-dimension frame weights, so c can carry how each feature changes
                               over the clip (last minus first frame...), which a weighted average
                               of frames cannot; T*D parameters
  + W2 tanh(W1 x_flat + b1) + b2
                               temporal MLP over all T frames at once (microcap.temporal_mlp = width K,
                               W2 zero at start): a nonlinear read-out of how the clip changes, which
                               names the action where any linear function of the frames cannot
                               (action probe on val+test: per-dimension filter 49 %, any linear map of
                               the flattened frames 57 %, MLP of width 64 71 %)
h0 = tanh(init_h(c))
GRU written out by hand (no nn.GRU) so the TensorFlow mirror in tinycap/quantize.py is a 1:1 copy:
    gx = x_proj(cat(embed(tok), c))          # gate order r, z, n
    gh = h_proj(h)
    r = sigmoid(gx_r + gh_r); z = sigmoid(gx_z + gh_z); n = tanh(gx_n + r * gh_n)
    h_new = (1 - z) * n + z * h
    logits = out(h_new)
Distillation (`distill`, the distill_microcap stage): CE on the references + alpha * KL to the guide's
soft targets + beta * alignment of the pooling weights to the guide's attention over frames
(tinycap/losses.py); optionally the guide's own beam captions join the references (sequence-level KD).
Then self-critical training (`scst_finetune`): the distilled student samples captions and is pushed
toward those whose CIDEr-D beats its other samples' (the metric greedy captions are scored with).

Greedy decoding starts from <bos>, stops at <eos>, and runs at most max_len - 1 steps
(max_len counts BOS and EOS, like guide.max_len), so a caption has at most max_len - 2 words.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from tinycap import checkpoint, distributed
from tinycap import guide as guide_mod
from tinycap.cider import CiderD
from tinycap.embeddings import batches, caption_rows, encode_captions, load_embeddings
from tinycap.errors import TinyCapError
from tinycap.io import atomic_path
from tinycap.losses import attention_alignment, kd_kl
from tinycap.metrics import score
from tinycap.parallel import in_forked_process
from tinycap.pool import AttentionPool, build_pooler, load_pooler
from tinycap.vocab import BOS, EOS, PAD, Vocab

log = logging.getLogger(__name__)


@dataclass
class MicroCapConfig:
    vocab_size: int = 1000  # ids from data/guide/vocab.json (specials <pad>=0 <bos>=1 <eos>=2 <unk>=3)
    dim: int = 256  # CLIP embedding size D of the frame embeddings
    num_frames: int = 5  # T frames per clip (the pooler's position embeddings)
    pooling: str = "attention"  # mean | attention
    embed_dim: int = 96  # token embedding size
    hidden: int = 192  # GRU hidden size H
    max_len: int = 16  # tokens per caption, BOS and EOS included
    temporal_filter: bool = False  # c = pooled + sum_t F_t * x_t (checkpoints from before it have none)
    temporal_mlp: int = 0  # width K of the MLP over the flattened frames added to c (0: none)

    @property
    def max_steps(self):
        """Decoder steps greedy decoding runs at most (tokens after <bos>, <eos> included)."""
        return self.max_len - 1


class TemporalMLP(nn.Module):
    """frames (B, T, D) -> W2 tanh(W1 flatten(frames) + b1) + b2 (B, D); W2, b2 zero at start, so
    training starts from the pooler (and filter) alone."""

    def __init__(self, num_frames, dim, width):
        super().__init__()
        self.inp = nn.Linear(num_frames * dim, width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, frames):
        return self.out(torch.tanh(self.inp(frames.flatten(1))))  # (B, T*D) -> (B, K) -> (B, D)


class MicroCap(nn.Module):
    def __init__(self, cfg: MicroCapConfig):
        super().__init__()
        self.cfg = cfg
        self.pooler = build_pooler(cfg.pooling, cfg.dim, cfg.num_frames)
        self.temporal_filter = nn.Parameter(torch.zeros(cfg.num_frames, cfg.dim)) if cfg.temporal_filter else None  # (T, D)
        self.temporal_mlp = TemporalMLP(cfg.num_frames, cfg.dim, cfg.temporal_mlp) if cfg.temporal_mlp else None
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
        if self.temporal_filter is not None:
            c = c + (self.temporal_filter * frames).sum(1)  # (B, D)
        if self.temporal_mlp is not None:
            c = c + self.temporal_mlp(frames)  # (B, D)
        h0 = torch.tanh(self.init_h(c))  # (B, H)
        return c, h0, weights

    def gru(self, gx, h):
        """GRU cell given the input gates gx = x_proj(cat(embed(tok), c)) (B, 3H) and h (B, H) -> h_new."""
        gh = self.h_proj(h)  # (B, 3H)
        gx_r, gx_z, gx_n = gx.chunk(3, dim=-1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(gx_r + gh_r)
        z = torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
        return (1 - z) * n + z * h  # (B, H)

    def step(self, tok, h, c):
        """One decoder step: tok (B,), h (B, H), c (B, D) -> logits (B, V), h_new (B, H)."""
        h_new = self.gru(self.x_proj(torch.cat([self.embed(tok), c], dim=-1)), h)
        return self.out(h_new), h_new

    def unroll(self, c, h, tokens):
        """Teacher forcing from context c (B, D) and h0 (B, H) over tokens (B, L) -> logits (B, L, V).
        Same math as calling step() L times; the input gates of all steps are one matmul."""
        L = tokens.shape[1]
        gx = self.x_proj(torch.cat([self.embed(tokens), c[:, None].expand(-1, L, -1)], dim=-1))  # (B, L, 3H)
        hs = []
        for i in range(L):
            h = self.gru(gx[:, i], h)
            hs.append(h)
        return self.out(torch.stack(hs, dim=1))  # (B, L, V)

    def forward(self, frames, tokens, targets=None):
        """Teacher forcing. frames (B, T, D), tokens (B, L) inputs starting with <bos>,
        targets (B, L) next tokens with <pad> ignored -> logits (B, L, V), loss or None."""
        c, h, _ = self.encode(frames)
        logits = self.unroll(c, h, tokens)
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
            toks, ended = tok.tolist(), done.tolist()
            for b in range(B):
                if not ended[b] and toks[b] != EOS:
                    out[b].append(toks[b])
            done |= tok == EOS
            if done.all():
                break
        return out


def load(path, vocab=None):
    """Load data/microcap/microcap.pt; with `vocab`, refuse a checkpoint built on another vocabulary."""
    return checkpoint.load(path, MicroCapConfig, MicroCap, "MicroCap", vocab)[0]


# ----------------------------------------------------------------------------------------------
# params.yaml `microcap:` section and distillation


@dataclass
class MicroCapParams:
    embed_dim: int
    hidden: int
    temporal_filter: bool  # context = pooled + sum_t F_t * x_t with learned per-dimension frame weights F (T, D)
    temporal_mlp: int  # width K of the MLP over the T flattened frames added to the context (0: none)
    epochs: int
    batch_size: int
    lr: float
    alpha: float  # weight of the KL to the guide's soft targets at temperature tau
    beta: float  # weight of the attention alignment (pooling weights vs guide cross-attention)
    tau: float
    guide_captions: int  # copies of the guide's beam caption added to each train clip's references (0: off)
    scst_epochs: int  # self-critical fine-tuning of the distilled student with a CIDEr-D reward (0: off)
    scst_lr: float
    scst_samples: int  # captions sampled per clip; each one's baseline is the mean reward of the others
    scst_val_window: int  # the SCST epoch kept ends the window of this many epochs with the best mean val CIDEr
    ablation: bool  # also train no_kd (alpha=beta=0), kl (beta=0), kl_attn (alpha, beta) and report each


def _init_pooler(model, pooled_dir):
    """Attention pooling starts from the `pool` stage's pooler (data/pooled/pooler.pt)."""
    path = Path(pooled_dir) / "pooler.pt"
    pooler = load_pooler(path)
    if not isinstance(pooler, AttentionPool) or (pooler.dim, pooler.num_frames) != (model.cfg.dim, model.cfg.num_frames):
        raise TinyCapError(path, f"holds a {type(pooler).__name__}({pooler.dim}, {pooler.num_frames}); MicroCap needs "
                                 f"AttentionPool({model.cfg.dim}, {model.cfg.num_frames}): rerun pool with pooling=attention")  # fmt: skip
    model.pooler.load_state_dict(pooler.state_dict())


@torch.no_grad()
def guide_targets(guide, memory, video, inputs, batch_size=256):
    """The guide's teacher-forced logits (N, L, V) in fp16 and frame attention (N, T) for every
    caption (inputs (N, L), video (N,) rows into memory)."""
    logits, att = [], []
    for i in tqdm(range(0, len(inputs), batch_size), desc="guide soft targets", leave=False):
        inp = inputs[i : i + batch_size]
        lg, a = guide.soft_targets(memory[video[i : i + batch_size]], inp, inp != PAD)
        logits.append(lg.half())
        att.append(a)
    return torch.cat(logits), torch.cat(att)


def train_student(cfg, p, alpha, beta, data, subset, seed, pooled_dir, val_cider, live=None, desc="microcap"):
    """One student trained with CE + alpha * KL + beta * alignment on the training captions `subset`
    (indices into data); returns the model of the epoch with the best val_cider(model) (greedy captions)."""
    torch.manual_seed(seed)
    model = MicroCap(cfg)
    if cfg.pooling == "attention":
        _init_pooler(model, pooled_dir)
    distributed.broadcast_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.0)
    n = len(subset)
    steps = max(1, p.epochs * math.ceil(n / p.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, t0 = None, None, time.time()
    for epoch in range(p.epochs):
        model.train()
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "attn": 0.0}
        for b in tqdm(list(batches(n, p.batch_size, gen)), desc=f"{desc} epoch {epoch + 1}/{p.epochs}", leave=False):
            b = subset[distributed.shard(b)]  # this rank's captions of the batch
            inp, tgt = data["inputs"][b], data["targets"][b]
            c, h0, weights = model.encode(data["frames"][data["video"][b]])
            logits = model.unroll(c, h0, inp)  # (B, L, V)
            ce = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD)
            kl = kd_kl(logits, data["guide_logits"][b], tgt != PAD, p.tau) if alpha else torch.zeros(())
            attn = attention_alignment(weights, data["guide_att"][b]) if beta else torch.zeros(())
            loss = ce + alpha * kl + beta * attn
            distributed.optimizer_step(model, opt, loss, clip_norm=1.0)
            sched.step()
            for k, v in (("loss", loss), ("ce", ce), ("kl", kl), ("attn", attn)):
                sums[k] += v.item() * len(b)
        sums = dict(zip(sums, distributed.all_sum(*sums.values())))
        val = {"val_CE": _val_ce(model, data), "val_CIDEr": val_cider(model)}
        log.info("%s epoch %d: loss %.4f (ce %.4f kl %.4f attn %.4f), val CE %.4f, val CIDEr %.4f", desc, epoch + 1,
                 sums["loss"] / n, sums["ce"] / n, sums["kl"] / n, sums["attn"] / n, val["val_CE"], val["val_CIDEr"])  # fmt: skip
        if live is not None:
            for k, v in sums.items():
                live.log_metric(f"train/{k}", v / n)
            live.log_metric("val/ce", val["val_CE"])
            live.log_metric("val/CIDEr", val["val_CIDEr"])
            live.next_step()
        if best is None or val["val_CIDEr"] > best["val_CIDEr"]:
            best, best_state = {**val, "epoch": epoch + 1}, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), {**best, "train_seconds": round(time.time() - t0, 1)}


def sample(model, frames, k, gen):
    """k captions per clip sampled from the model's softmax: frames (B, T, D) -> B*k token-id lists
    (clip-major, no <bos>, stop before <eos>) and their summed log-probabilities (B*k,), <eos> included."""
    c, h, _ = model.encode(frames)
    c, h = c.repeat_interleave(k, 0), h.repeat_interleave(k, 0)  # (B*k, D), (B*k, H)
    tok = torch.full((len(c),), BOS, dtype=torch.long)
    alive = torch.ones(len(c), dtype=torch.bool)
    logp, seqs = torch.zeros(len(c)), [[] for _ in range(len(c))]
    for _ in range(model.cfg.max_steps):
        logits, h = model.step(tok, h, c)
        log_probs = F.log_softmax(logits, dim=-1)  # (B*k, V)
        tok = torch.multinomial(log_probs.exp(), 1, generator=gen).squeeze(1)  # (B*k,)
        logp = logp + log_probs.gather(1, tok[:, None]).squeeze(1) * alive
        toks = tok.tolist()
        for j in torch.nonzero(alive & (tok != EOS)).flatten().tolist():
            seqs[j].append(toks[j])
        alive = alive & (tok != EOS)  # not in place: logp's graph holds the old mask
        if not alive.any():
            break
    return seqs, logp


def _check_scst(p):
    if p.scst_epochs and p.scst_samples < 2:
        raise TinyCapError(
            "params.yaml: microcap.scst_samples",
            f"must be at least 2 (the baseline of a sample is the others' mean), got {p.scst_samples}",
        )
    if p.scst_epochs > 0 and p.scst_val_window < 1:
        raise TinyCapError("params.yaml: microcap.scst_val_window", f"must be at least 1, got {p.scst_val_window}")


def scst_finetune(model, p, frames, references, val_cider, seed, live=None):
    """Self-critical sequence training (Rennie et al. 2017) of a trained student: for every train clip
    (`references` {row: [token lists]}) it samples p.scst_samples captions, rewards each with its
    CIDEr-D against the clip's references (document frequencies of the train references), baseline
    = the mean reward of the clip's other samples, and follows the policy gradient of the summed
    log-probabilities. Greedy decoding, the device's, then scores what CIDEr scores.
    Model selection reads val only: val_cider(model) after every epoch, and the epoch kept is the last
    of the p.scst_val_window consecutive epochs with the best mean val CIDEr (150 val clips measure
    CIDEr to about +-0.04, so the best single epoch is mostly the luckiest; a window averages that
    out; 1 = the best single epoch)."""
    _check_scst(p)
    rows = torch.as_tensor(sorted(references))
    reward = CiderD([references[int(r)] for r in rows])
    distributed.broadcast_parameters(model)
    opt = torch.optim.Adam(model.parameters(), lr=p.scst_lr)
    gen = torch.Generator().manual_seed(seed)
    sampling = distributed.own_generator(gen, seed)  # gen itself in one process
    k, t0 = p.scst_samples, time.time()
    history, best, best_state = [], None, None
    for epoch in range(p.scst_epochs):
        model.train()
        total = 0.0
        for b in tqdm(
            list(batches(len(rows), p.batch_size, gen)), desc=f"microcap scst epoch {epoch + 1}/{p.scst_epochs}", leave=False
        ):
            clips = rows[distributed.shard(b)]  # this rank's clips of the batch
            seqs, logp = sample(model, frames[clips], k, sampling)
            r = torch.tensor([reward.score(s, references[int(clips[j // k])]) for j, s in enumerate(seqs)]).view(-1, k)  # (b, k)
            advantage = r - (r.sum(1, keepdim=True) - r) / (k - 1)  # (b, k)
            loss = -(advantage.flatten() * logp).mean()
            distributed.optimizer_step(model, opt, loss, clip_norm=1.0)
            total += r.sum().item()
        (total,) = distributed.all_sum(total)
        history.append(val_cider(model))
        window = history[-p.scst_val_window :]
        if len(window) == p.scst_val_window or epoch + 1 == p.scst_epochs:
            mean = sum(window) / len(window)
            if best is None or mean > best["val_CIDEr_window_mean"]:
                best = {"epoch": epoch + 1, "val_CIDEr": history[-1], "val_CIDEr_window_mean": mean}
                best_state = {name: v.clone() for name, v in model.state_dict().items()}
        log.info(
            "microcap scst epoch %d: sampled captions' CIDEr-D %.4f, val CIDEr %.4f",
            epoch + 1,
            total / (len(rows) * k),
            history[-1],
        )
        if live is not None:
            live.log_metric("scst/reward", total / (len(rows) * k))
            live.log_metric("val/CIDEr", history[-1])
            live.next_step()
    model.load_state_dict(best_state)
    log.info(
        "microcap scst: kept epoch %d (val CIDEr %.4f, mean over its window %.4f)",
        best["epoch"],
        best["val_CIDEr"],
        best["val_CIDEr_window_mean"],
    )
    return model.eval(), {
        **best,
        "val_CIDEr_history": [round(v, 4) for v in history],
        "train_seconds": round(time.time() - t0, 1),
    }


@torch.no_grad()
def _val_ce(model, data, batch_size=512):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data["val_inputs"]), batch_size):
        inp, tgt = data["val_inputs"][i : i + batch_size], data["val_targets"][i : i + batch_size]
        logits, _ = model(data["frames"][data["val_video"][i : i + batch_size]], inp)
        total += F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum").item()
        count += (tgt != PAD).sum().item()
    return total / max(count, 1)


def decode_rows(model, frames, rows, vocab, batch_size=256):
    """Greedy captions {row: str} for the given rows of frames (V, T, D)."""
    out = {}
    for i in range(0, len(rows), batch_size):
        r = rows[i : i + batch_size]
        out.update({int(row): vocab.decode(ids) for row, ids in zip(r, model.greedy(frames[torch.as_tensor(r)]))})
    return out


def distill(emb_path, pooled_dir, guide_dir, out_dir, p: MicroCapParams, pooling, max_len, seed=0, live_dir=None):
    """Train MicroCap from the guide; write out_dir/microcap.pt; return the metrics (val CIDEr, ablation).
    In a torchrun rank (tinycap.distributed) every student trains on each rank's shard of every batch, the
    ablation students after the shipped one (no forked process); rank 0 logs, writes and returns the
    metrics, the other ranks return None."""
    if pooling not in ("mean", "attention"):
        raise TinyCapError("params.yaml: pooling", f"{pooling!r} is not one of mean, attention")
    _check_scst(p)  # before minutes of distillation
    emb = load_embeddings(emb_path)
    vocab = Vocab.load(Path(guide_dir) / "vocab.json")
    guide = guide_mod.load(Path(guide_dir) / "guide.pt", vocab)
    if guide.cfg.max_len != max_len:
        raise TinyCapError(
            Path(guide_dir) / "guide.pt",
            f"trained with max_len {guide.cfg.max_len}, params.yaml guide.max_len is {max_len}; rerun train_guide",
        )
    train_rows, val_rows = emb.videos("train", emb_path), emb.videos("val", emb_path)
    tokens = torch.from_numpy(encode_captions(vocab, emb.caption, max_len))
    cap_video = torch.from_numpy(emb.caption_video)
    frames = torch.from_numpy(emb.frame_emb)  # (V, T, D)
    memory = guide_mod.memory_input(emb)
    data = {"frames": frames}
    for split, rows, prefix in (("train", train_rows, ""), ("val", val_rows, "val_")):
        caps = torch.from_numpy(caption_rows(emb, rows, vocab, f"{emb_path} ({split} split)"))
        inp, tgt = guide_mod.teacher_forcing(tokens[caps])
        data[f"{prefix}inputs"], data[f"{prefix}targets"], data[f"{prefix}video"] = inp, tgt, cap_video[caps]
    n_refs = len(data["inputs"])
    if p.guide_captions:  # sequence-level KD: the guide's own beam captions join the references
        log.info("guide beam captions for %d train clips", len(train_rows))
        beam = guide_mod.decode_rows(guide, memory, train_rows, vocab, beam=guide.beam)
        rows = [r for r in train_rows if beam[int(r)]] * p.guide_captions
        inp, tgt = guide_mod.teacher_forcing(torch.from_numpy(encode_captions(vocab, [beam[int(r)] for r in rows], max_len)))
        data["inputs"], data["targets"] = torch.cat([data["inputs"], inp]), torch.cat([data["targets"], tgt])
        data["video"] = torch.cat([data["video"], torch.as_tensor(rows, dtype=torch.long)])
    log.info("guide soft targets for %d train captions", len(data["inputs"]))
    data["guide_logits"], data["guide_att"] = guide_targets(guide, memory, data["video"], data["inputs"])

    V, T, D = frames.shape
    cfg = MicroCapConfig(
        vocab_size=len(vocab),
        dim=D,
        num_frames=T,
        pooling=pooling,
        embed_dim=p.embed_dim,
        hidden=p.hidden,
        max_len=max_len,
        temporal_filter=p.temporal_filter,
        temporal_mlp=p.temporal_mlp,
    )
    # variant: (alpha, beta, train on the guide's captions too); the shipped model is trained first
    shipped = "kl_attn_seq" if p.guide_captions else "kl_attn"
    variants = {shipped: (p.alpha, p.beta, bool(p.guide_captions))}
    if p.ablation:
        variants.update({"no_kd": (0.0, 0.0, False), "kl": (p.alpha, 0.0, False), "kl_attn": (p.alpha, p.beta, False)})
    refs = emb.references(val_rows)
    live = None
    if live_dir is not None and distributed.is_main():
        from dvclive import Live

        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None)
    results = {}

    def val_cider(model):
        caps = decode_rows(model.eval(), frames, val_rows, vocab)
        return score({emb.video_id[r]: c for r, c in caps.items()}, refs, metrics=("CIDEr",))["CIDEr"]

    def train_variant(name):
        alpha, beta, seq = variants[name]
        subset = torch.arange(len(data["inputs"]) if seq else n_refs)
        model, info = train_student(cfg, p, alpha, beta, data, subset, seed, pooled_dir, val_cider,
                                    live=live if name == shipped else None, desc=f"microcap {name}")  # fmt: skip
        caps = decode_rows(model, frames, val_rows, vocab)
        s = score({emb.video_id[r]: c for r, c in caps.items()}, refs, metrics=("CIDEr", "BLEU-4"))
        log.info("microcap %s (alpha %.2f, beta %.2f, guide captions %s): val CIDEr %.4f", name, alpha, beta, seq, s["CIDEr"])
        return model, {"alpha": alpha, "beta": beta, "guide_captions": p.guide_captions if seq else 0, **s, **info}

    # the ablation variants train in a forked process on the other core while the shipped one trains
    # here, one thread each (also without the ablation, so the shipped model is the same either way);
    # every variant seeds its own RNGs, so each model is the same as trained one after another.
    # Torchrun ranks do not fork (a child would hold no process group): they train the variants after
    # the shipped one, each across the ranks
    torch.set_num_threads(1)
    others = [name for name in variants if name != shipped]
    ablation = (
        in_forked_process(lambda: {name: train_variant(name)[1] for name in others}, "microcap ablation variants")
        if others and not distributed.active()
        else None
    )
    main, results[shipped] = train_variant(shipped)
    if p.scst_epochs:  # the shipped student, fine-tuned on CIDEr-D itself
        train_refs = emb.references(train_rows)
        train_refs = {int(r): [vocab.encode(c, max_len)[1:-1] for c in train_refs[emb.video_id[r]]] for r in train_rows}
        main, info = scst_finetune(main, p, frames, train_refs, val_cider, seed, live=live)
        caps = decode_rows(main, frames, val_rows, vocab)
        s = score({emb.video_id[r]: c for r, c in caps.items()}, refs, metrics=("CIDEr", "BLEU-4"))
        base = results[shipped]
        shipped = f"{shipped}_scst"
        results[shipped] = {**base, **s, "val_CE": _val_ce(main, data), "scst_epochs": p.scst_epochs,
                            "scst": {key: info[key] for key in ("epoch", "val_CIDEr_window_mean", "val_CIDEr_history")},
                            "train_seconds": round(base["train_seconds"] + info["train_seconds"], 1)}  # fmt: skip
        log.info("microcap %s: val CIDEr %.4f, scst epoch %d of %d kept", shipped, s["CIDEr"], info["epoch"], p.scst_epochs)
    if live is not None:
        live.end()
    if ablation is not None:
        ablated = ablation.result()
    elif others:
        ablated = {name: train_variant(name)[1] for name in others}
    if others:
        results = {name: ablated[name] if name in ablated else results[name] for name in variants} | results
    if not distributed.is_main():
        return None  # rank 0 holds the same models: it evaluates and writes

    guide_caps = guide_mod.decode_rows(guide, memory, val_rows, vocab, beam=guide.beam)
    guide_val = score({emb.video_id[r]: c for r, c in guide_caps.items()}, refs, metrics=("CIDEr", "BLEU-4"))
    metrics = {
        "params_count": main.num_params(),
        "guide_params_count": guide.num_params(),
        "param_fraction": round(main.num_params() / guide.num_params(), 4),
        "pooling": pooling,
        "variant": shipped,
        "alpha": p.alpha, "beta": p.beta, "tau": p.tau, "guide_captions": p.guide_captions,
        "scst_epochs": p.scst_epochs, "scst_lr": p.scst_lr, "scst_samples": p.scst_samples,
        "val": {"CIDEr": results[shipped]["CIDEr"], "BLEU-4": results[shipped]["BLEU-4"], "CE": results[shipped]["val_CE"],
                "epoch": results[shipped]["epoch"]},
        "guide_val": {**guide_val, "beam": guide.beam},
        "train_seconds": results[shipped]["train_seconds"],
        "method": "greedy captions on the val split scored with pycocoevalcap (raw CIDEr-D, x100 in papers); "
                  "guide with its beam; each distilled student is the epoch with the best val CIDEr; SCST keeps the "
                  "last epoch of the scst_val_window consecutive epochs with the best mean val CIDEr (test never read)",
    }  # fmt: skip
    if guide_val["CIDEr"] > 0:
        metrics["cider_fraction_of_guide_val"] = round(results[shipped]["CIDEr"] / guide_val["CIDEr"], 4)
    else:
        metrics["notes"] = {"cider_fraction_of_guide_val": "absent: the guide's val CIDEr is 0"}
    if p.ablation:
        metrics["ablation"] = {"split": "val", **results}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        torch.save(checkpoint.checkpoint(main, vocab, variant=shipped, alpha=p.alpha, beta=p.beta, tau=p.tau, guide_captions=p.guide_captions,
                              epochs=p.epochs, scst_epochs=p.scst_epochs), tmp / "microcap.pt")  # fmt: skip
    return metrics
