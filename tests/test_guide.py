"""The guide: data checks, decoding rules, resumable training, and that it learns (overfits a few clips)."""

import h5py
import numpy as np
import pytest
import torch

from tinycap import embeddings, guide
from tinycap.errors import TinyCapError
from tinycap.vocab import EOS, Vocab


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is several times faster than two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


COLOURS = ["red", "blue", "green"]
ACTIONS = {"moves left": True, "moves right": True, "spins": False}


def make_embeddings(path, per_split=None, dim=32, frames=5, captions=2, seed=0):
    """A tiny clip.h5: frame embeddings that encode a colour and an action over time, and captions
    naming both ("moves left" and "moves right" are the same frames in reverse order)."""
    per_split = per_split or {"train": 18, "val": 6, "test": 6, "novel": 3}
    rng = np.random.default_rng(seed)
    colour_vec = rng.normal(size=(len(COLOURS), dim))
    motion = rng.normal(size=(frames, dim))
    spin = rng.normal(size=dim)
    emb, vids, splits, caps, cap_video, attrs = [], [], [], [], [], []
    for split, n in per_split.items():
        for i in range(n):
            c, a = i % len(COLOURS), (i // len(COLOURS)) % len(ACTIONS)
            action = list(ACTIONS)[a]
            traj = {0: motion, 1: motion[::-1], 2: np.tile(spin, (frames, 1))}[a]
            x = colour_vec[c] + traj + 0.05 * rng.normal(size=(frames, dim))
            emb.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
            vids.append(f"{split}{i:03d}")
            splits.append(split)
            attrs.append({"video_id": vids[-1], "split": split, "action": action, "order_dependent": ACTIONS[action]})
            for k in range(captions):
                caps.append([f"a {COLOURS[c]} ball {action}", f"the {COLOURS[c]} ball {action} slowly"][k % 2])
                cap_video.append(len(vids) - 1)
    with h5py.File(path, "w") as f:
        f["frame_emb"] = np.stack(emb).astype(np.float32)
        f["video_id"] = np.array(vids, dtype="S")
        f["split"] = np.array(splits, dtype="S")
        f["caption"] = np.array(caps, dtype="S")
        f["caption_video"] = np.array(cap_video, dtype=np.int32)
        f["text_emb"] = np.zeros((len(caps), dim), np.float32)
    return {"videos": attrs, "sentences": [{"video_id": vids[v], "caption": c} for c, v in zip(caps, cap_video)]}


def small_params(**kw):
    p = dict(vocab_size=100, max_len=10, d_model=32, layers=1, heads=2, dropout=0.0, epochs=2, batch_size=16,
             lr=0.01, label_smoothing=0.1, beam=2)  # fmt: skip
    p.update(kw)
    return guide.GuideParams(**p)


class ConstHead(torch.nn.Module):
    """Output head that always prefers one token."""

    def __init__(self, vocab_size, token):
        super().__init__()
        self.vocab_size, self.token = vocab_size, token

    def forward(self, x):
        out = torch.zeros(*x.shape[:-1], self.vocab_size)
        out[..., self.token] = 10.0
        return out


@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_stops_at_eos_and_respects_max_len(beam):
    model = guide.Guide(guide.GuideConfig(vocab_size=20, dim=8, num_frames=4, d_model=16, layers=1, heads=2, max_len=7)).eval()
    x = torch.randn(3, 4, 8)
    model.head = ConstHead(20, 5)
    assert model.beam_search(x, beam=beam) == [[5] * 6] * 3  # max_len 7 = <bos> + 6 tokens
    model.head = ConstHead(20, EOS)
    assert model.beam_search(x, beam=beam) == [[]] * 3


def test_incremental_step_gives_the_logits_of_the_full_prefix():
    """beam_search runs step() (cached keys/values, the newest token alone): the same logits as decode()."""
    cfg = guide.GuideConfig(vocab_size=20, dim=8, num_frames=4, grid=3, d_model=16, layers=2, heads=2, max_len=7)
    model = guide.Guide(cfg).eval()
    mem = model.memory(torch.randn(3, 4, 3, 8))
    tokens = torch.randint(1, 20, (3, 6))
    full, _ = model.decode(mem, tokens)  # (3, 6, 20)
    mem_kvs, caches = [blk.cross_attn.memory_kv(mem) for blk in model.blocks], [None, None]
    for pos in range(6):
        logits, caches = model.step(tokens[:, pos], pos, mem_kvs, caches)
        assert torch.allclose(logits, full[:, pos], atol=1e-5), pos
    assert caches[0][0].shape == (3, 2, 6, 8)  # (B, h, L, hd)


def test_grid_memory_attention_sums_to_one_per_frame():
    cfg = guide.GuideConfig(vocab_size=20, dim=8, num_frames=4, grid=3, d_model=16, layers=2, heads=2, max_len=7)
    model = guide.Guide(cfg).eval()
    tokens = torch.randint(4, 20, (2, 5))
    logits, att = model.soft_targets(torch.randn(2, 4, 3, 8), tokens, tokens > 0)
    assert logits.shape == (2, 5, 20) and att.shape == (2, 4)
    assert torch.allclose(att.sum(-1), torch.ones(2), atol=1e-5)


def test_guide_overfits_a_handful_of_clips(tmp_path):
    # val = the train clips themselves: a training loop that learns reproduces their captions
    make_embeddings(tmp_path / "clip.h5", {"train": 6, "val": 0}, captions=1)
    with h5py.File(tmp_path / "clip.h5", "a") as f:  # val: copies of the train clips
        for k in ("frame_emb", "video_id", "split"):
            data = f[k][()]
            if k == "video_id":
                data = np.concatenate([data, np.array([b"v" + v for v in data])])
            elif k == "split":
                data = np.concatenate([data, np.array([b"val"] * len(data))])
            else:
                data = np.concatenate([data, data])
            del f[k]
            f[k] = data
        cap, cv = f["caption"][()], f["caption_video"][()]
        del f["caption"], f["caption_video"]
        f["caption"], f["caption_video"] = np.concatenate([cap, cap]), np.concatenate([cv, cv + 6]).astype(np.int32)
    m = guide.train(
        tmp_path / "clip.h5", tmp_path / "guide", small_params(epochs=60, batch_size=6, lr=0.005, label_smoothing=0.0)
    )
    assert m["val"]["greedy"]["CIDEr"] > 9.0, m["val"]  # perfect captions score 10 on this set
    assert (tmp_path / "guide" / "vocab.json").is_file()
    model = guide.load(tmp_path / "guide" / "guide.pt", Vocab.load(tmp_path / "guide" / "vocab.json"))
    assert model.num_params() == m["params_count"]


def test_training_resumes_after_interruption(tmp_path, monkeypatch):
    make_embeddings(tmp_path / "clip.h5")
    resume = tmp_path / "resume" / "guide.pt"
    calls = {"n": 0}
    real = guide.evaluate_loss

    def interrupt_in_epoch_two(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(guide, "evaluate_loss", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        guide.train(tmp_path / "clip.h5", tmp_path / "guide", small_params(), resume_path=resume)
    assert resume.is_file() and not (tmp_path / "guide").exists()
    assert torch.load(resume, weights_only=False)["state"]["epoch"] == 1
    monkeypatch.setattr(guide, "evaluate_loss", real)
    m = guide.train(tmp_path / "clip.h5", tmp_path / "guide", small_params(), resume_path=resume)
    assert m["epochs"] == 2 and not resume.exists()
    assert (tmp_path / "guide" / "guide.pt").is_file()


def test_bad_inputs_give_one_line(tmp_path):
    with pytest.raises(TinyCapError, match="file not found"):
        embeddings.load_embeddings(tmp_path / "missing.h5")
    make_embeddings(tmp_path / "clip.h5", {"train": 6, "test": 3})
    with pytest.raises(TinyCapError, match="empty split 'val'"):
        guide.train(tmp_path / "clip.h5", tmp_path / "g", small_params())
    emb = embeddings.load_embeddings(tmp_path / "clip.h5")
    with pytest.raises(TinyCapError, match="no usable captions"):
        embeddings.caption_rows(emb, emb.videos("test"), Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "zebra"]), "clip.h5")
    with h5py.File(tmp_path / "clip.h5", "a") as f:
        del f["caption"]
    with pytest.raises(TinyCapError, match="missing dataset.*caption") as e:
        embeddings.load_embeddings(tmp_path / "clip.h5")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "g").exists()
