"""CLIP stages on a tiny hand-made clip set: training, export, resume, embedding, bad input."""

import json

import h5py
import numpy as np
import pytest
import torch

from tinycap import clip
from tinycap.errors import TinyCapError

T = 3
TINY = dict(epochs=1, batch_size=4, lr=0.001)


def make_clips(root, size=64, n=(8, 4, 2), seed=0):
    """frames.h5 + annotations.json in the contract schema: a coloured square moving left or right."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    frames, videos, sentences = [], [], []
    for split, count in zip(("train", "val", "test"), n):
        for i in range(count):
            vid = f"{split}{i}"
            colour = rng.integers(0, 256, 3)
            right = bool(i % 2)
            clip_frames = np.zeros((T, size, size, 3), np.uint8) + rng.integers(0, 60, 3).astype(np.uint8)
            for t in range(T):
                x = int((t if right else T - 1 - t) * (size - 16) / (T - 1))
                clip_frames[t, 24:40, x : x + 16] = colour
            frames.append(clip_frames)
            videos.append(
                {
                    "video_id": vid,
                    "split": split,
                    "path": f"{vid}.mp4",
                    "action": "move_right" if right else "move_left",
                    "order_dependent": True,
                }
            )
            for k in range(2):
                sentences.append({"video_id": vid, "caption": f"a square {k} moves {'right' if right else 'left'}"})
    with h5py.File(root / "frames.h5", "w") as f:
        f["frames"] = np.stack(frames)
        f["video_id"] = np.array([v["video_id"] for v in videos], dtype="S")
        f["split"] = np.array([v["split"] for v in videos], dtype="S")
        f["timestamps_s"] = np.zeros((len(videos), T), np.float32)
    (root / "annotations.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    return root / "frames.h5", root / "annotations.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    frames, ann = make_clips(root)
    metrics = clip.train(frames, ann, root / "clip", clip.ClipParams(**TINY), seed=0)
    clip.embed(root / "clip", frames, ann, root / "emb" / "clip.h5", grid=True, batch_size=8)
    return root, frames, ann, metrics


def test_train_writes_model_and_metrics(trained):
    root, _, _, metrics = trained
    assert (root / "clip" / "open_clip_config.json").is_file() and (root / "clip" / "model.pt").is_file()
    for key in ("t2v_R@1", "t2v_R@5", "v2t_R@1", "t2v_MdR"):
        assert key in metrics["val"]
    assert metrics["params_count"] > 1e6 and metrics["train_seconds"] >= 0
    ckpt = torch.load(root / "clip" / "model.pt", weights_only=True)
    assert {"model", "config", "model_name", "step"} <= set(ckpt) and ckpt["step"] == 2


def test_embeddings_shapes_and_normalisation(trained):
    root = trained[0]
    with h5py.File(root / "emb" / "clip.h5") as f:
        fe, te, ge = f["frame_emb"][:], f["text_emb"][:], f["grid_emb"][:]
        assert fe.shape == (14, T, 128) and te.shape == (28, 128)
        assert ge.shape == (14, T, 16, 128)  # 64 px / patch 16 -> 4x4 grid
        np.testing.assert_allclose(np.linalg.norm(fe, axis=-1), 1, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(te, axis=-1), 1, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(ge, axis=-1), 1, rtol=1e-5)
        cv = f["caption_video"][:]
        assert cv.dtype == np.int32 and cv.tolist() == [i for i in range(14) for _ in range(2)]
        assert f["caption"][0].decode() == "a square 0 moves left"
        assert f["video_id"][0] == b"train0" and f["split"][-1] == b"test"
        assert f["action"][1] == b"move_right" and f["order_dependent"][:].all()


def test_public_api_matches_the_stage(trained):
    root, frames, _, _ = trained
    bundle = clip.load_model(root / "clip")
    with h5py.File(frames) as f:
        video = f["frames"][2]
    emb = clip.embed_frames(bundle, video)
    text = clip.embed_texts(bundle, ["a square 0 moves left"])
    with h5py.File(root / "emb" / "clip.h5") as f:
        np.testing.assert_allclose(emb, f["frame_emb"][2], atol=1e-5)
        np.testing.assert_allclose(text[0], f["text_emb"][0], atol=1e-5)
    assert emb.dtype == np.float32 and text.shape == (1, 128)


def test_same_seed_same_weights(trained, tmp_path):
    root, frames, ann, _ = trained
    clip.train(frames, ann, tmp_path / "clip", clip.ClipParams(**TINY), seed=0)
    a = torch.load(root / "clip" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "clip" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_interruption_gives_the_same_weights(trained, tmp_path, monkeypatch):
    _, frames, ann, _ = trained
    cfg = clip.ClipParams(**{**TINY, "epochs": 2})
    clip.train(frames, ann, tmp_path / "full", cfg, seed=0, resume_path=tmp_path / "full.resume.pt")
    assert not (tmp_path / "full.resume.pt").exists()

    lr_at = clip._lr_at

    def interrupt_in_epoch_2(step, total, peak):
        if step == 2:  # first step of the second epoch (2 steps per epoch)
            raise KeyboardInterrupt
        return lr_at(step, total, peak)

    monkeypatch.setattr(clip, "_lr_at", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        clip.train(frames, ann, tmp_path / "resumed", cfg, seed=0, resume_path=tmp_path / "r.pt")
    assert (tmp_path / "r.pt").is_file() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(clip, "_lr_at", lr_at)
    clip.train(frames, ann, tmp_path / "resumed", cfg, seed=0, resume_path=tmp_path / "r.pt")
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert b["step"] == a["step"] == 4
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-6) for k in a["model"])


def test_checkpoint_path_route_and_export(trained, tmp_path):
    root, frames, ann, _ = trained
    torch.manual_seed(123)
    model, _, _ = clip.create("tinyclip-vit-64")
    for name, obj in [("plain.pt", {"model": model.state_dict(), "step": 0}), ("open_clip.pt", model.state_dict())]:
        torch.save(obj, tmp_path / name)
        cfg = clip.ClipParams(**{**TINY, "epochs": 0, "pretrained": str(tmp_path / name)})
        metrics = clip.train(frames, ann, tmp_path / f"out_{name}", cfg, seed=0)
        assert metrics["train_seconds"] == 0
        loaded = clip.load_model(tmp_path / f"out_{name}").model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_bad_model_and_pretrained_give_one_line(trained, tmp_path):
    _, frames, ann, _ = trained
    with pytest.raises(
        TinyCapError, match=r"clip\.model: unknown open_clip model 'tinyclip-vit-46'; did you mean tinyclip-vit-64"
    ):
        clip.create("tinyclip-vit-46")
    with pytest.raises(
        TinyCapError,
        match=r"clip\.pretrained: 'nope' is neither an existing checkpoint file nor an open_clip tag of ViT-B-32 \(tags: openai",
    ):
        clip.create("ViT-B-32", "nope")
    with pytest.raises(TinyCapError, match="not in the local cache and cannot be downloaded here") as e:
        clip.create("ViT-B-32", "laion2b_s34b_b79k")
    assert "\n" not in str(e.value)
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(TinyCapError, match="corrupt.pt: not a readable checkpoint"):
        clip.create("tinyclip-vit-64", str(tmp_path / "corrupt.pt"))
    torch.save({"model": {"visual.proj": torch.zeros(3, 3)}}, tmp_path / "wrong.pt")
    with pytest.raises(TinyCapError, match="wrong.pt: weights do not fit model tinyclip-vit-64"):
        clip.train(frames, ann, tmp_path / "out", clip.ClipParams(**{**TINY, "pretrained": str(tmp_path / "wrong.pt")}))
    assert not (tmp_path / "out").exists()


def test_corrupt_clip_dir_names_the_file(trained, tmp_path):
    import shutil

    root = trained[0]
    shutil.copytree(root / "clip", tmp_path / "clip")
    (tmp_path / "clip" / "model.pt").write_bytes(b"truncated")
    with pytest.raises(TinyCapError, match=r"clip/model\.pt: not a readable checkpoint"):
        clip.load_model(tmp_path / "clip")
    (tmp_path / "clip" / "open_clip_config.json").write_text("{}")
    with pytest.raises(TinyCapError, match=r"open_clip_config\.json: no 'model_cfg'"):
        clip.load_model(tmp_path / "clip")


def test_frames_of_another_size_are_refused(trained, tmp_path):
    root = trained[0]
    frames, ann = make_clips(tmp_path / "small", size=32)
    with pytest.raises(TinyCapError, match=r"frames\.h5: frames are 32x32 px but the CLIP model expects 64x64"):
        clip.train(frames, ann, tmp_path / "clip", clip.ClipParams(**TINY))
    with pytest.raises(TinyCapError, match=r"frames\.h5: frames are 32x32 px but the CLIP model in .* expects 64x64"):
        clip.embed(root / "clip", frames, ann, tmp_path / "emb" / "clip.h5")
    assert not (tmp_path / "clip").exists() and not (tmp_path / "emb" / "clip.h5").exists()
    bundle = clip.load_model(root / "clip")
    with pytest.raises(TinyCapError, match="frames must be a uint8 array"):
        clip.embed_frames(bundle, np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(TinyCapError, match=r"frames must be \[\.\.\., S, S, 3\] RGB"):
        clip.embed_frames(bundle, np.zeros((2, 64, 48, 3), np.uint8))


def test_frames_and_annotations_mismatch(tmp_path):
    frames, ann = make_clips(tmp_path / "d", n=(2, 1, 1))
    data = json.loads(ann.read_text())
    data["videos"] = data["videos"][1:]
    ann.write_text(json.dumps(data))
    with pytest.raises(TinyCapError, match=r"frames\.h5: 1 video\(s\) not in .*annotations\.json \(e\.g\. train0\)"):
        clip.read_clips(frames, ann)
    with h5py.File(frames, "a") as f:
        del f["frames"]
        f["frames"] = np.zeros((4, T, 64, 64), np.uint8)
    with pytest.raises(TinyCapError, match=r"frames\.h5: frames must be uint8 \[V,T,S,S,3\]"):
        clip.read_clips(frames, ann)


def test_embed_resumes_from_its_journal(trained, tmp_path, monkeypatch):
    """Interrupted at the fourth chunk (2 videos each), the rerun embeds only chunks 4.. and writes the
    clip.h5 of an uninterrupted run; the journal is gone once clip.h5 is written."""
    root, frames, ann, _ = trained
    embed_chunk, starts = clip.embed_chunk, []

    def interrupted_at_video_6(bundle, f, a, *args):
        if a == 6:
            raise KeyboardInterrupt
        starts.append(a)
        return embed_chunk(bundle, f, a, *args)

    monkeypatch.setattr(clip, "embed_chunk", interrupted_at_video_6)
    out, journal = tmp_path / "clip.h5", tmp_path / "resume"
    with pytest.raises(KeyboardInterrupt):
        clip.embed(root / "clip", frames, ann, out, grid=True, batch_size=8, resume_dir=journal)
    assert starts == [0, 2, 4] and not out.exists() and len(list(journal.glob("*.npz"))) == 3

    starts.clear()
    monkeypatch.setattr(clip, "embed_chunk", lambda bundle, f, a, *args: starts.append(a) or embed_chunk(bundle, f, a, *args))
    clip.embed(root / "clip", frames, ann, out, grid=True, batch_size=8, resume_dir=journal)
    assert starts == [6, 8, 10, 12] and not journal.exists()
    with h5py.File(out) as a, h5py.File(root / "emb" / "clip.h5") as b:
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k][()], b[k][()])
