"""MicroCap: the fixed architecture contract, loss terms, decoding rules, and the distillation stage."""

import dataclasses

import pytest
import torch
from test_guide import make_embeddings, one_thread, small_params  # noqa: F401 (one_thread: autouse fixture)

from tinycap import guide, microcap
from tinycap.errors import TinyCapError
from tinycap.losses import attention_alignment, kd_kl
from tinycap.pool import AttentionPool, pooler_checkpoint
from tinycap.vocab import EOS, Vocab

CFG = microcap.MicroCapConfig(vocab_size=30, dim=16, num_frames=5, pooling="attention", embed_dim=8, hidden=12, max_len=9)


def distill_params(**kw):
    p = dict(
        embed_dim=16,
        hidden=24,
        epochs=2,
        batch_size=16,
        lr=0.01,
        alpha=0.5,
        beta=0.5,
        tau=2.0,
        guide_captions=0,
        ablation=False,
        temporal_filter=True,
        temporal_mlp=8,
        scst_epochs=0,
        scst_lr=0.001,
        scst_samples=3,
        scst_val_window=1,
    )
    p.update(kw)
    return microcap.MicroCapParams(**p)


def test_parameters_follow_the_contract():
    m = microcap.MicroCap(CFG)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "pooler.pos_emb": (5, 16), "pooler.query": (16,),
        "init_h.weight": (12, 16), "init_h.bias": (12,),
        "embed.weight": (30, 8),
        "x_proj.weight": (36, 24), "x_proj.bias": (36,),
        "h_proj.weight": (36, 12), "h_proj.bias": (36,),
        "out.weight": (30, 12), "out.bias": (30,),
    }  # fmt: skip


def test_temporal_filter_adds_per_dimension_frame_weights():
    torch.manual_seed(0)
    plain = microcap.MicroCap(CFG).eval()
    m = microcap.MicroCap(dataclasses.replace(CFG, temporal_filter=True)).eval()
    assert m.num_params() - plain.num_params() == 5 * 16  # F is (T, D)
    m.load_state_dict({**plain.state_dict(), "temporal_filter": torch.zeros(5, 16)})
    x = torch.randn(3, 5, 16)
    assert torch.equal(m.encode(x)[0], plain.encode(x)[0])  # zero at start: the pooler alone
    with torch.no_grad():
        m.temporal_filter[-1], m.temporal_filter[0] = 1.0, -1.0  # last frame minus first
    c, _, w = m.encode(x)
    pooled = (w[..., None] * x).sum(1)
    assert torch.allclose(c, pooled + x[:, -1] - x[:, 0], atol=1e-6)
    assert not torch.allclose(m.encode(x.flip(1))[0] - m.pooler(x.flip(1))[0], c - pooled)  # order now matters


def test_temporal_mlp_is_a_nonlinear_readout_of_all_frames():
    torch.manual_seed(0)
    plain = microcap.MicroCap(CFG).eval()
    m = microcap.MicroCap(dataclasses.replace(CFG, temporal_mlp=6)).eval()
    assert m.num_params() - plain.num_params() == (5 * 16 * 6 + 6) + (6 * 16 + 16)  # W1 (K, T*D), W2 (D, K) + biases
    x = torch.randn(3, 5, 16)
    m.load_state_dict({**m.state_dict(), **plain.state_dict()})
    assert torch.equal(m.encode(x)[0], plain.encode(x)[0])  # W2 = 0 at start: the pooler alone
    with torch.no_grad():
        m.temporal_mlp.out.weight.normal_()
        m.temporal_mlp.out.bias.normal_()
    c, _, w = m.encode(x)
    w1, b1 = m.temporal_mlp.inp.weight, m.temporal_mlp.inp.bias
    w2, b2 = m.temporal_mlp.out.weight, m.temporal_mlp.out.bias
    want = (w[..., None] * x).sum(1) + torch.tanh(x.reshape(3, 80) @ w1.T + b1) @ w2.T + b2  # frames flattened t-major
    assert torch.allclose(c, want, atol=1e-5)
    mlp = c - m.pooler(x)[0]
    assert not torch.allclose(m.encode(2 * x)[0] - m.pooler(2 * x)[0] - b2, 2 * (mlp - b2), atol=1e-3)  # not linear


def test_step_is_the_written_out_gru_and_unroll_matches_steps():
    torch.manual_seed(0)
    m = microcap.MicroCap(CFG).eval()
    x = torch.randn(3, 5, 16)
    c, h0, w = m.encode(x)
    assert torch.allclose(w.sum(-1), torch.ones(3)) and torch.allclose(h0, torch.tanh(m.init_h(c)))
    tok = torch.tensor([1, 4, 7])
    gx = m.x_proj(torch.cat([m.embed(tok), c], -1))
    gh = m.h_proj(h0)
    H = CFG.hidden
    r = torch.sigmoid(gx[:, :H] + gh[:, :H])
    z = torch.sigmoid(gx[:, H : 2 * H] + gh[:, H : 2 * H])
    n = torch.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
    h1 = (1 - z) * n + z * h0
    logits, h_new = m.step(tok, h0, c)
    assert torch.allclose(h_new, h1, atol=1e-6) and torch.allclose(logits, m.out(h1), atol=1e-6)
    tokens = torch.randint(0, 30, (3, 6))
    h, stepped = h0, []
    for i in range(6):
        lg, h = m.step(tokens[:, i], h, c)
        stepped.append(lg)
    assert torch.allclose(m(x, tokens)[0], torch.stack(stepped, 1), atol=1e-5)


def test_greedy_stops_at_eos_and_respects_max_len():
    m = microcap.MicroCap(CFG).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        m.out.weight.zero_()
        m.out.bias.zero_()
        m.out.bias[7] = 5.0
    assert m.greedy(x) == [[7] * 8] * 2  # max_len 9 = <bos> + 8 steps
    assert m.greedy(x, max_steps=3) == [[7] * 3] * 2
    with torch.no_grad():
        m.out.bias[EOS] = 10.0
    assert m.greedy(x) == [[], []]


def test_default_size_is_under_one_million_parameters():
    for dim in (256, 512):
        m = microcap.MicroCap(microcap.MicroCapConfig(vocab_size=1000, dim=dim, embed_dim=96, hidden=192))
        assert m.num_params() < 1_000_000


def test_kl_is_zero_for_identical_distributions_and_positive_otherwise():
    logits = torch.randn(2, 4, 10)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert kd_kl(logits, logits.clone(), mask, tau=2.0).abs() < 1e-6
    assert kd_kl(logits, logits.half(), mask, tau=2.0).abs() < 1e-3  # cached fp16 guide logits
    assert kd_kl(logits, torch.randn(2, 4, 10), mask, tau=2.0) > 0.01
    other = logits.clone()
    other[:, 3] = torch.randn(2, 10)
    mask[:, 3] = False  # masked (pad) steps do not count
    assert kd_kl(logits, other, mask, tau=1.0).abs() < 1e-6


def test_alignment_is_zero_for_identical_attention_and_positive_otherwise():
    a = torch.softmax(torch.randn(3, 5), -1)
    assert attention_alignment(a, a.clone()).abs() < 1e-6
    assert attention_alignment(torch.full((3, 5), 0.2), a) > 0.0
    one_hot = torch.eye(5)[:3]
    assert attention_alignment(one_hot, one_hot).abs() < 1e-6  # zeros are fine


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny guide, a pooler file as the pool stage writes it, and distilled students (with ablation)."""
    d = tmp_path_factory.mktemp("distill")
    make_embeddings(d / "clip.h5")
    guide.train(d / "clip.h5", d / "guide", small_params(epochs=3))
    (d / "pooled").mkdir()
    torch.manual_seed(0)
    torch.save(pooler_checkpoint(AttentionPool(32, 5)), d / "pooled" / "pooler.pt")
    m = microcap.distill(d / "clip.h5", d / "pooled", d / "guide", d / "microcap",
                         distill_params(ablation=True, guide_captions=1, scst_epochs=1), pooling="attention", max_len=10,
                         live_dir=d / "live")  # fmt: skip
    return d, m


def test_distill_writes_checkpoint_metrics_and_ablation(trained):
    d, m = trained
    assert (
        set(m["ablation"]) == {"split", "no_kd", "kl", "kl_attn", "kl_attn_seq", "kl_attn_seq_scst"}
        and m["ablation"]["split"] == "val"
    )
    assert (m["ablation"]["no_kd"]["alpha"], m["ablation"]["kl"]["beta"], m["ablation"]["kl_attn"]["guide_captions"]) == (
        0.0,
        0.0,
        0,
    )
    assert m["variant"] == "kl_attn_seq_scst" and m["val"]["CIDEr"] == m["ablation"]["kl_attn_seq_scst"]["CIDEr"]
    assert m["ablation"]["kl_attn_seq_scst"]["scst_epochs"] == 1 == m["scst_epochs"]
    assert all(0.0 <= m["ablation"][k]["CIDEr"] <= 10.0 for k in ("no_kd", "kl", "kl_attn"))
    model = microcap.load(d / "microcap" / "microcap.pt", Vocab.load(d / "guide" / "vocab.json"))
    assert model.num_params() == m["params_count"] and m["guide_params_count"] > 0
    assert model.cfg.pooling == "attention" and model.cfg.max_len == 10
    assert (d / "live" / "metrics.json").is_file()


def test_sample_log_probs_match_teacher_forcing_and_stop_at_eos():
    torch.manual_seed(0)
    m = microcap.MicroCap(CFG).eval()
    frames = torch.randn(3, 5, 16)
    seqs, logp = microcap.sample(m, frames, 4, torch.Generator().manual_seed(0))
    assert len(seqs) == 12 and all(EOS not in s and len(s) <= CFG.max_steps for s in seqs)
    for j, s in enumerate(seqs):  # log p(caption, then <eos> unless it ran to max_steps) by teacher forcing
        ended = len(s) < CFG.max_steps
        inp = torch.tensor([[1] + s[: CFG.max_steps - 1]])
        tgt = torch.tensor([s + [EOS]] if ended else [s])
        logits, _ = m(frames[j // 4 : j // 4 + 1], inp[:, : tgt.shape[1]])
        ref = torch.log_softmax(logits, -1).gather(2, tgt[..., None]).sum()
        assert logp[j].item() == pytest.approx(ref.item(), abs=1e-4)


def test_scst_raises_the_cider_of_greedy_captions():
    """Self-critical training alone teaches a random student a handful of clips' captions."""
    from tinycap.cider import CiderD

    torch.manual_seed(0)
    m = microcap.MicroCap(CFG)
    frames = torch.randn(8, 5, 16)
    refs = {i: [[4 + i, 20 + i % 4, 28], [4 + i, 20 + i % 4, 29]] for i in range(8)}
    reward = CiderD(list(refs.values()))

    def train_cider(model):  # the "val" CIDEr here is the greedy captions' CIDEr-D on the train clips
        return sum(reward.score(c, refs[i]) for i, c in enumerate(model.greedy(frames))) / len(refs)

    start = train_cider(m)
    p = distill_params(scst_epochs=60, scst_lr=0.03, scst_samples=8, batch_size=8)
    m, info = microcap.scst_finetune(m, p, frames, refs, train_cider, seed=0)
    assert start < 1.0 and info["val_CIDEr"] > start + 2.0 and info["val_CIDEr"] == train_cider(m)  # the kept epoch's model
    with pytest.raises(TinyCapError, match="scst_samples: must be at least 2"):
        microcap.scst_finetune(m, distill_params(scst_epochs=1, scst_samples=1), frames, refs, train_cider, seed=0)
    with pytest.raises(TinyCapError, match="scst_val_window: must be at least 1, got 0"):
        microcap.scst_finetune(m, distill_params(scst_epochs=1, scst_val_window=0), frames, refs, train_cider, seed=0)


@pytest.mark.parametrize("window, kept", [(1, 2), (3, 6), (8, 7)])
def test_scst_keeps_the_epoch_ending_the_best_val_window(window, kept):
    """val CIDEr by epoch 0.1 0.9 0.1 0.6 0.6 0.6 0.2: the best single epoch is 2; the best 3-epoch mean
    ends at 6 (0.6); a window longer than the run is the whole run, ending at its last epoch."""
    torch.manual_seed(0)
    m = microcap.MicroCap(CFG)
    frames = torch.randn(4, 5, 16)
    refs = {i: [[4 + i, 20, 28]] for i in range(4)}
    curve, states = iter([0.1, 0.9, 0.1, 0.6, 0.6, 0.6, 0.2]), []

    def val_cider(model):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(curve)

    p = distill_params(scst_epochs=7, scst_lr=0.01, scst_samples=2, batch_size=4, scst_val_window=window)
    m, info = microcap.scst_finetune(m, p, frames, refs, val_cider, seed=0)
    assert info["epoch"] == kept and info["val_CIDEr_history"] == [0.1, 0.9, 0.1, 0.6, 0.6, 0.6, 0.2]
    assert all(torch.equal(v, states[kept - 1][k]) for k, v in m.state_dict().items())
    assert not all(torch.equal(v, states[-1 if kept < 7 else 0][k]) for k, v in m.state_dict().items())


def test_distill_bad_inputs(trained, tmp_path):
    d, _ = trained
    other = Vocab.build(["something else entirely"], 10)
    with pytest.raises(TinyCapError, match="microcap.pt: vocabulary mismatch"):
        microcap.load(d / "microcap" / "microcap.pt", other)
    args = (d / "clip.h5", d / "pooled", d / "guide", tmp_path / "mc", distill_params())
    with pytest.raises(TinyCapError, match="guide.pt: trained with max_len 10, params.yaml guide.max_len is 12"):
        microcap.distill(*args, pooling="attention", max_len=12)
    with pytest.raises(TinyCapError, match="pooling: 'max' is not one of mean, attention"):
        microcap.distill(*args, pooling="max", max_len=10)
    bad = (*args[:4], distill_params(scst_epochs=1, scst_samples=1))
    with pytest.raises(TinyCapError, match="microcap.scst_samples: must be at least 2"):
        microcap.distill(*bad, pooling="attention", max_len=10)
    with pytest.raises(TinyCapError, match="pooler.pt: file not found"):
        microcap.distill(d / "clip.h5", tmp_path, *args[2:], pooling="attention", max_len=10)
    assert not (tmp_path / "mc").exists()
