"""Temporal poolers, retrieval metrics and the `pool` stage on synthetic embeddings."""

import h5py
import numpy as np
import pytest
import torch

from tinycap import pool, retrieval
from tinycap.errors import TinyCapError


def test_weights_sum_to_one_and_shapes():
    x = torch.randn(4, 5, 16)
    for kind in pool.POOLINGS:
        p = pool.build_pooler(kind, 16, 5)
        if kind == "attention":
            torch.nn.init.normal_(p.query, std=3.0)
        pooled, w = p(x)
        assert pooled.shape == (4, 16) and w.shape == (4, 5)
        torch.testing.assert_close(w.sum(1), torch.ones(4))
        torch.testing.assert_close(pooled, (w.unsqueeze(-1) * x).sum(1))


def test_attention_starts_as_mean_and_responds_to_frame_order():
    x = torch.randn(3, 5, 8)
    att, mean = pool.AttentionPool(8, 5), pool.MeanPool(8, 5)
    torch.testing.assert_close(att(x)[0], mean(x)[0])  # zero query: uniform weights
    with torch.no_grad():
        att.query.copy_(torch.randn(8) * 3)
        att.pos_emb.copy_(torch.randn(5, 8))
    reversed_x = x.flip(1)
    assert not torch.allclose(att(x)[0], att(reversed_x)[0], atol=1e-4)
    torch.testing.assert_close(mean(x)[0], mean(reversed_x)[0])
    # the position embeddings alone (identical frames) already weight positions differently
    same = x[:, :1].expand(3, 5, 8)
    w = att(same)[1]
    assert not torch.allclose(w, torch.full_like(w, 0.2), atol=1e-3)


def test_unknown_pooling_is_an_error():
    with pytest.raises(TinyCapError, match="unknown pooling 'max'"):
        pool.build_pooler("max", 8, 5)


def test_retrieval_golden_values():
    video = np.eye(3)
    text = np.array([[1, 0, 0], [0, 1, 0], [0.9, 0.1, 0], [0, 0, 1.0]])  # caption 2 belongs to video 1
    cv = np.array([0, 1, 1, 2])
    assert retrieval.ranks_t2v(video, text, cv).tolist() == [1, 1, 2, 1]
    assert retrieval.ranks_v2t(video, text, cv, np.arange(3)).tolist() == [1, 1, 1]
    m = retrieval.split_metrics(video, text, cv, np.arange(3))
    assert m["t2v_R@1"] == 75.0 and m["t2v_R@5"] == 100.0 and m["t2v_MdR"] == 1.0 and m["n_captions"] == 4
    sub = retrieval.split_metrics(video, text, cv, np.arange(3), caption_mask=np.array([0, 0, 1, 0], bool))
    assert sub["t2v_R@1"] == 0.0 and sub["n_captions"] == 1 and sub["n_videos"] == 1


def test_retrieval_ties_count_against_the_query():
    video = np.ones((4, 3))  # a collapsed model: every video embedding equal
    text = np.eye(3)[[0, 1, 2, 0]]
    cv = np.arange(4)
    assert retrieval.ranks_t2v(video, text, cv).tolist() == [4, 4, 4, 4]
    assert retrieval.split_metrics(video, text, cv, np.arange(4))["t2v_R@1"] == 0.0
    assert retrieval.ranks_v2t(video, text, cv, np.arange(4)).tolist() == [4, 4, 4, 4]


def synthetic_embeddings(path, T=5, D=12, per_split=(60, 21, 21), seed=0):
    """Embeddings where the direction of an 'action' is only visible in the frame order.

    Videos come in triples sharing one content vector: moves +, moves -, static. Frame t =
    content + sign * (2t/(T-1) - 1) * u (u: a shared motion axis), so the two moving videos of a
    triple have the same mean frame; captions = content + sign * u.
    """
    rng = np.random.default_rng(seed)
    u = np.zeros(D)
    u[0] = 1.0
    ramp = (2 * np.arange(T) / (T - 1) - 1)[:, None]  # (T, 1)
    frame_emb, text_emb, cv, split, action, od = [], [], [], [], [], []
    for name, n in zip(("train", "val", "test"), per_split):
        for i in range(n):
            if i % 3 == 0:
                content = rng.normal(size=D) * 0.5
                content[0] = 0
            sign = (1.0, -1.0, 0.0)[i % 3]
            f = content[None] + sign * ramp * u[None] + rng.normal(size=(T, D)) * 0.01
            frame_emb.append(f / np.linalg.norm(f, axis=1, keepdims=True))
            for _ in range(2):
                t = content + sign * u + rng.normal(size=D) * 0.01
                text_emb.append(t / np.linalg.norm(t))
                cv.append(len(frame_emb) - 1)
            split.append(name)
            action.append(("move_plus", "move_minus", "static")[i % 3])
            od.append(i % 3 < 2)
    with h5py.File(path, "w") as f:
        f["frame_emb"] = np.array(frame_emb, np.float32)
        f["text_emb"] = np.array(text_emb, np.float32)
        f["caption_video"] = np.array(cv, np.int32)
        f["caption"] = np.array([f"caption {c}" for c in range(len(cv))], dtype="S")
        f["video_id"] = np.array([f"v{i}" for i in range(len(split))], dtype="S")
        f["split"] = np.array(split, dtype="S")
        f["action"] = np.array(action, dtype="S")
        f["order_dependent"] = np.array(od)
        f.attrs["logit_scale"] = 20.0
    return path


def test_pool_stage_attention_beats_mean_on_order_dependent(tmp_path):
    emb = synthetic_embeddings(tmp_path / "clip.h5")
    metrics = pool.run(emb, tmp_path / "pooled", "attention", pool.PoolParams(epochs=40, batch_size=32, lr=0.05))
    assert {"pooling", "val", "test", "order_dependent", "per_action", "mean_baseline"} <= set(metrics)
    assert metrics["pooling"] == "attention"
    od, od_mean = metrics["order_dependent"]["t2v_R@1"], metrics["mean_baseline"]["order_dependent"]["t2v_R@1"]
    assert od > od_mean + 10, (od, od_mean)
    assert set(metrics["per_action"]) == {"move_plus", "move_minus", "static"}
    with h5py.File(tmp_path / "pooled" / "pooled.h5") as f:
        assert f["video_emb"].shape == (102, 12) and f["weights"].shape == (102, 5)
        np.testing.assert_allclose(f["weights"][:].sum(1), 1, rtol=1e-5)
    pooler = pool.load_pooler(tmp_path / "pooled" / "pooler.pt")
    assert isinstance(pooler, pool.AttentionPool) and pooler.pos_emb.shape == (5, 12)


def test_pool_stage_mean(tmp_path):
    emb = synthetic_embeddings(tmp_path / "clip.h5", per_split=(9, 6, 6))
    metrics = pool.run(emb, tmp_path / "pooled", "mean", pool.PoolParams())
    assert metrics["pooling"] == "mean" and "mean_baseline" not in metrics
    assert metrics["pooler_params"] == 0
    assert isinstance(pool.load_pooler(tmp_path / "pooled" / "pooler.pt"), pool.MeanPool)


def test_bad_embeddings_name_the_file_and_write_nothing(tmp_path):
    bad = tmp_path / "clip.h5"
    with h5py.File(bad, "w") as f:
        f["frame_emb"] = np.zeros((4, 5, 8), np.float32)
        f["text_emb"] = np.zeros((3, 6), np.float32)  # D mismatch
        f["caption_video"] = np.zeros(3, np.int32)
        f["caption"] = np.array([b"x", b"y", b"z"])
        f["video_id"] = np.array([b"a", b"b", b"c", b"d"])
        f["split"] = np.array([b"train"] * 4)
    with pytest.raises(TinyCapError, match=r"clip\.h5: frame_emb .* must be \[V,T,D\] and \[C,D\]"):
        pool.run(bad, tmp_path / "pooled", "attention", pool.PoolParams())
    assert not (tmp_path / "pooled").exists()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(TinyCapError, match="junk.h5: not a readable HDF5 file"):
        pool.run(tmp_path / "junk.h5", tmp_path / "pooled", "mean", pool.PoolParams())
    torch.save({"config": {"kind": "attention", "dim": 4, "num_frames": 5}, "model": {}}, tmp_path / "p.pt")
    with pytest.raises(TinyCapError, match="p.pt: not a pooler checkpoint"):
        pool.load_pooler(tmp_path / "p.pt")
