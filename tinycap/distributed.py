"""Training on several processes: params `compute.nproc` for clip_train, train_guide and distill_microcap.

The stage script calls `relaunch(nproc)` first. With nproc > 1, in a process that is not yet a torchrun
rank (LOCAL_RANK / WORLD_SIZE unset), it runs the same script again as
    python -m torch.distributed.run --standalone --nproc_per_node=<nproc> stages/<stage>.py
and returns True once every rank has exited 0, so dvc.yaml's `cmd` stays `python stages/<stage>.py`.
Each rank then trains inside `process_group()` (backend gloo) as data parallel training does:
  * the ranks start from the same parameters (same seed; `broadcast_parameters` makes sure);
  * every batch is split into contiguous shards, one per rank (`shard`; the shards in rank order are the
    batch; a batch smaller than the number of ranks is not split: every rank takes all of it);
  * after each backward the gradients are averaged over the ranks (`average_gradients`: one all-reduce,
    then / world size: what DDP's reducer does; done here because clip and microcap train through
    encode/unroll methods, and DDP only averages the gradients of its wrapper's forward());
so every rank takes the same optimiser steps and holds the same model. A rank's own random draws (SCST's
sampled captions) come from `own_generator`, so the generator that orders the batches stays alike on all ranks. Where a loss is not a mean over
samples (CLIP's contrastive loss), `gather` collects every rank's rows with their gradients and each rank
computes the loss of the whole batch: the averaged gradient is then the one-process gradient. Token-mean
losses (guide, MicroCap) on shards are averaged as shard means: close to, not equal to, one process.
Rank 0 alone logs (dvclive), writes checkpoints, models and metrics; the other ranks return from training
without writing and wait at the group's closing barrier. A rank that fails makes torchrun stop the others
and exit non-zero, and the stage fails with one line.

nproc 1 (the default) runs none of this: no process group; `shard` and `gather` return their input and
`average_gradients`, `broadcast_parameters`, `all_sum` do nothing, so training is a plain process's,
models byte for byte. NCCL is not used: the training loops keep their tensors on the CPU (also on a CUDA
machine), and NCCL all-reduces CUDA tensors only.
"""

import contextlib
import logging
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd

from tinycap.errors import TinyCapError

log = logging.getLogger(__name__)


def is_rank():
    """True in a process that torchrun started (it sets LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(nproc):
    """With nproc > 1 outside torchrun: run this script as nproc torchrun ranks, True when all succeeded
    (a failure is one TinyCapError line). False with nproc 1 or inside a rank: the caller trains itself."""
    if nproc < 1:
        raise TinyCapError("params.yaml: compute.nproc", f"must be at least 1, got {nproc}")
    if nproc == 1 or is_rank():
        return False
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *sys.argv]
    log.info("%d ranks: %s", nproc, " ".join(cmd))
    status = subprocess.run(cmd).returncode
    if status != 0:
        raise TinyCapError(sys.argv[0], f"torchrun with {nproc} ranks exited {status} (the failing rank's error is above)")
    return True


@contextlib.contextmanager
def process_group():
    """Inside a torchrun rank: the gloo process group for the block, closed with a barrier (rank 0 has
    written its outputs when every rank leaves); ranks other than 0 log warnings only (they hold the same
    model, their progress lines would repeat rank 0's). Outside torchrun: nothing."""
    if not is_rank():
        yield
        return
    dist.init_process_group("gloo")
    if dist.get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def active():
    """True while a process group is open (a torchrun rank inside process_group())."""
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    """True in the one process that logs and writes: rank 0, or the only process."""
    return rank() == 0


def _bounds(n, r, w):
    """Rows [start, end) of rank r's shard of n rows over w ranks (sizes differ by at most one)."""
    return r * n // w, (r + 1) * n // w


def shard(batch):
    """This rank's contiguous shard of a batch (anything sliceable); the whole batch with one process, or
    when the batch has fewer rows than there are ranks (the average of equal gradients is that gradient)."""
    n, w = len(batch), world_size()
    if w == 1 or n < w:
        return batch
    start, end = _bounds(n, rank(), w)
    return batch[start:end]


def gather(x, n):
    """x: this rank's shard (b, ...) of a batch of n rows -> the whole batch (n, ...) in row order, with
    gradients flowing back to every rank's shard. x itself with one process or an unsplit batch."""
    w = world_size()
    if w == 1 or len(x) == n:
        return x
    bounds = [_bounds(n, r, w) for r in range(w)]
    size = max(end - start for start, end in bounds)
    padded = torch.cat([x, x.new_zeros(size - len(x), *x.shape[1:])])  # (size, ...): all_gather needs equal shapes
    parts = dist_autograd.all_gather(padded)  # w x (size, ...)
    return torch.cat([part[: end - start] for part, (start, end) in zip(parts, bounds)])


def own_generator(gen, seed):
    """The generator for this rank's own random draws (SCST's sampled captions): `gen` itself in one process;
    in a rank a generator seeded by (seed, rank), so that `gen`, which orders the batches, takes the same
    draws on every rank and the shards of a batch stay one batch."""
    if not active():
        return gen
    return torch.Generator().manual_seed(seed * 1000 + 1 + rank())


def broadcast_parameters(model):
    """Every rank takes rank 0's parameters and buffers (what DDP does when it wraps a model)."""
    if not active():
        return
    for value in model.state_dict().values():
        dist.broadcast(value, 0)


def average_gradients(model):
    """After backward: each parameter's gradient becomes its mean over the ranks (one all-reduce)."""
    if not active():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of sizes,)
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def optimizer_step(model, opt, loss, clip_norm=None):
    """One training step, alike on every rank: loss.backward(), the gradients averaged over the ranks
    (average_gradients), their norm clipped to `clip_norm` when given, opt.step()."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(model)
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()


def all_sum(*values):
    """Numbers summed over the ranks (per-epoch loss totals); the numbers themselves with one process."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return tuple(total.tolist())
