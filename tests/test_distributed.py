"""compute.nproc: the train_guide stage as 2 torchrun ranks (gloo, CPU) against one process, what rank 0
alone writes, a failing rank failing the stage, and nproc 1 opening no process group."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import ROOT
from test_guide import make_embeddings, small_params

from tinycap import distributed, guide
from tinycap import params as params_mod
from tinycap.errors import TinyCapError

GUIDE = dict(vars(small_params(epochs=4, batch_size=12, lr=0.005)))  # 36 train captions: 3 steps an epoch


def stage_dir(path, nproc, embeddings=True):
    """A working directory for stages/train_guide.py: params.yaml (the project's, tiny guide, nproc) and
    data/embeddings/clip.h5 (test_guide's tiny set)."""
    path.mkdir(exist_ok=True)
    params = params_mod.merge(params_mod.load(ROOT / "params.yaml"), {"compute": {"nproc": nproc}, "guide": GUIDE})
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if embeddings:
        (path / "data" / "embeddings").mkdir(parents=True)
        make_embeddings(path / "data" / "embeddings" / "clip.h5")
    return path


def train_guide(path):
    """Run the stage script in `path` as dvc would (this checkout's tinycap, one torch thread per process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for name in ("LOCAL_RANK", "WORLD_SIZE"):  # not a torchrun rank: the script decides
        env.pop(name, None)
    script = str(ROOT / "stages" / "train_guide.py")
    return subprocess.run([sys.executable, script], cwd=path, env=env, capture_output=True, text=True, timeout=600)


def files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def test_two_ranks_train_the_guide_like_one_process_and_rank_0_alone_writes(tmp_path):
    one, two = stage_dir(tmp_path / "one", 1), stage_dir(tmp_path / "two", 2)
    proc1, proc2 = train_guide(one), train_guide(two)
    assert proc1.returncode == 0, proc1.stderr[-3000:]
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in proc2.stderr
    assert "torch.distributed.run" not in proc1.stderr
    m1, m2 = (json.loads((d / "metrics" / "guide.json").read_text()) for d in (one, two))
    # same vocabulary and model shape; each step averages two shard-mean gradients instead of one batch mean
    assert m2["vocab_size"] == m1["vocab_size"] and m2["params_count"] == m1["params_count"]
    assert m2["val"]["CE"] == pytest.approx(m1["val"]["CE"], rel=0.01), (m1["val"], m2["val"])
    curves1, curves2 = (json.loads((d / "dvclive" / "train_guide" / "metrics.json").read_text()) for d in (one, two))
    assert curves2["step"] == curves1["step"] == 3  # one dvclive step per epoch, logged once
    assert curves2["train"]["loss"] == pytest.approx(curves1["train"]["loss"], rel=0.01), (curves1, curves2)
    # rank 0 wrote each output once, atomically: no temporary files, no resume state left
    for d in (one, two):
        written = [f for f in files(d) if not f.startswith(("dvclive/", "data/embeddings/")) and f != "params.yaml"]
        assert written == ["data/guide/guide.pt", "data/guide/vocab.json", "metrics/guide.json"], written
    model = guide.load(two / "data" / "guide" / "guide.pt")
    assert model.num_params() == m2["params_count"]


def test_a_failing_rank_fails_the_stage_in_one_line(tmp_path):
    proc = train_guide(stage_dir(tmp_path, 2, embeddings=False))  # every rank: clip.h5 not found
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {ROOT / 'stages' / 'train_guide.py'}: torchrun with 2 ranks exited 1 (the failing rank's error is above)"
    )
    assert "data/embeddings/clip.h5: file not found" in proc.stderr
    assert not (tmp_path / "data" / "guide").exists() and not (tmp_path / "metrics").exists()


def test_nproc_1_opens_no_process_group(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.relaunch(1) is False
    with pytest.raises(TinyCapError, match=r"^params.yaml: compute.nproc: must be at least 1, got 0$"):
        distributed.relaunch(0)
    with distributed.process_group():
        assert not dist.is_initialized() and distributed.world_size() == 1 and distributed.is_main()
        batch, x = torch.arange(6), torch.ones(6, 2, requires_grad=True)
        assert distributed.shard(batch) is batch and distributed.gather(x, 6) is x
        model = torch.nn.Linear(2, 1)
        model(x).sum().backward()
        grad = model.weight.grad.clone()
        distributed.average_gradients(model)
        assert torch.equal(model.weight.grad, grad)
        assert distributed.all_sum(1.5, 3) == (1.5, 3)
    assert not dist.is_initialized()


def _gather_rank(rank, world, init, out):
    """One of `world` gloo ranks: the gradient of a loss that couples every row of a batch of 5 (like CLIP's
    contrastive loss), from gathered shards and averaged over the ranks, next to the whole batch's gradient."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model, x = torch.nn.Linear(3, 4), torch.randn(5, 3)

    def loss_of(feats):  # (5, 4) -> softmax cross-entropy of every row against all rows
        return torch.nn.functional.cross_entropy(feats @ feats.T, torch.arange(len(feats)))

    loss = loss_of(distributed.gather(model(distributed.shard(x)), len(x)))
    loss.backward()
    distributed.average_gradients(model)
    ranked = model.weight.grad.clone()
    model.zero_grad()
    dist.destroy_process_group()
    whole = loss_of(model(x))
    whole.backward()
    torch.save({"loss": (loss.item(), whole.item()), "grad": (ranked, model.weight.grad)}, f"{out}.{rank}")


def test_gathered_shards_give_the_whole_batch_loss_and_gradient(tmp_path):
    mp.spawn(_gather_rank, args=(2, f"file://{tmp_path / 'init'}", tmp_path / "rank"), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank.{rank}", weights_only=True)
        assert got["loss"][0] == pytest.approx(got["loss"][1], rel=1e-6)
        torch.testing.assert_close(got["grad"][0], got["grad"][1], rtol=1e-5, atol=1e-7)


def test_shards_cover_the_batch_in_rank_order():
    for n in (1, 2, 5, 12, 13):
        for w in (2, 3, 4):
            bounds = [distributed._bounds(n, r, w) for r in range(w)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1
