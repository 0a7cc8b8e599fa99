"""quantize_int8 on a tiny, briefly trained MicroCap: weight-transfer parity, the int8 op set,
a golden round trip through TFLM, TFLM greedy vs float greedy, and the bad-input lines."""

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tinycap import checkpoint, microcap, quantize, tflite
from tinycap.errors import TinyCapError
from tinycap.int8 import DECODER, POOLER, TflmDecoder, same_quantisation, tflite_interpreter
from tinycap.vocab import Vocab

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
GOLDEN = Path(__file__).parent / "golden" / "quantize_tiny.json"
T, D = 4, 32
ARCH = dict(pooling="attention", num_frames=T, embed_dim=12, hidden=24, max_len=8, temporal_filter=True, temporal_mlp=8)
SUBJECTS = ["a man", "a woman", "a dog", "a cat"]
ACTIONS = ["runs left", "jumps up", "sits down"]


def tiny_artifacts(root, seed=0, steps=100):
    """Synthetic clip.h5 (each clip = subject x action, frames = noisy prototype directions, L2-
    normalised), vocab.json and a MicroCap trained `steps` Adam steps on it: a fixed-seed tiny model
    whose greedy captions are confident enough to be meaningful."""
    rng = np.random.default_rng(seed)
    val_rng = np.random.default_rng(seed + 1)  # val clips draw their own numbers: the other clips and the model stay as they were
    torch.manual_seed(seed)
    protos = rng.normal(size=(len(SUBJECTS) + len(ACTIONS), D))
    rows, caps, cap_video, vids, splits = [], [], [], [], []
    for split, n in [("train", 48), ("val", 12), ("test", 12), ("novel", 12)]:
        r = val_rng if split == "val" else rng
        for i in range(n):
            s, a = r.integers(len(SUBJECTS)), r.integers(len(ACTIONS))
            x = protos[s] + protos[len(SUBJECTS) + a] + 0.6 * r.normal(size=(T, D))
            rows.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
            vids.append(f"{split}{i}")
            splits.append(split)
            for c in (f"{SUBJECTS[s]} {ACTIONS[a]}", f"{SUBJECTS[s]} {ACTIONS[a]} quickly"):
                caps.append(c)
                cap_video.append(len(vids) - 1)
    frames = np.stack(rows).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "clip.h5", "w") as f:
        f["frame_emb"] = frames
        f["video_id"] = np.array(vids, dtype="S")
        f["split"] = np.array(splits, dtype="S")
        f["caption"] = np.array(caps, dtype="S")
        f["caption_video"] = np.array(cap_video, np.int32)
        f["text_emb"] = np.zeros((len(caps), D), np.float32)
    vocab = Vocab.build([c for c, v in zip(caps, cap_video) if splits[v] == "train"], 40)
    vocab.save(root / "vocab.json")
    cfg = microcap.MicroCapConfig(vocab_size=len(vocab), dim=D, **ARCH)
    model = microcap.MicroCap(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # train on the first caption of each clip only: two captions per clip would leave the model a
    # coin flip between them (a near-tie that int8 rounding decides either way)
    train = [(i, v) for i, v in enumerate(cap_video) if splits[v] == "train" and i % 2 == 0]
    for _ in range(steps):
        batch = [train[j] for j in rng.integers(len(train), size=32)]
        ids = [vocab.encode(caps[i], cfg.max_len) for i, _ in batch]
        L = max(map(len, ids))
        tok = torch.zeros(len(ids), L, dtype=torch.long)
        for k, s in enumerate(ids):
            tok[k, : len(s)] = torch.tensor(s)
        x = torch.as_tensor(frames[[v for _, v in batch]])
        _, loss = model(x, tok[:, :-1], tok[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(checkpoint.checkpoint(model.eval(), vocab, step=steps), root / "microcap.pt")
    return root


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only fight over the CI's cores
    try:
        return tiny_artifacts(tmp_path_factory.mktemp("tiny"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def int8(artifacts):
    """The whole quantize() on the tiny artifacts: data/int8 equivalent + metrics."""
    out = artifacts / "int8"
    metrics = quantize.quantize(
        artifacts / "microcap.pt",
        artifacts / "clip.h5",
        artifacts / "vocab.json",
        out,
        quantize.QuantizeParams(calibration_clips=16),
        ARCH,
    )
    return out, metrics


def test_weight_transfer_parity(artifacts):
    model = microcap.load(artifacts / "microcap.pt")
    frames, *_ = quantize.load_clips(artifacts / "clip.h5")
    parity, _ = quantize.float_parity(model, quantize.TFMicroCap(model), frames)
    assert parity["tokens_identical"] == parity["clips"]
    assert max(parity["max_abs_diff"].values()) < 1e-4, parity


def test_mean_pooling_mirror(artifacts):
    """pooling: mean without a temporal filter has nothing learned in the pooler and no weights output:
    parity and an int8 pooler graph with MEAN."""
    torch.manual_seed(1)
    frames, *_ = quantize.load_clips(artifacts / "clip.h5")
    cfg = microcap.MicroCapConfig(vocab_size=16, dim=D, **dict(ARCH, pooling="mean", temporal_filter=False, temporal_mlp=0))
    model = microcap.MicroCap(cfg).eval()
    mirror = quantize.TFMicroCap(model, {"context": (-1.0, 1.0)})
    parity, _ = quantize.float_parity(model, mirror, frames[:8])
    assert parity["tokens_identical"] == parity["clips"] and "weights" not in parity["max_abs_diff"]
    data = quantize.convert(mirror, POOLER, [{"frames": frames[i : i + 1]} for i in range(8)])
    assert "MEAN" in tflite.model_ops(data) and set(tflite.model_ops(data)) <= quantize.TFLM_OPS
    assert sorted(d["name"] for d in tflite.io_details(data)["outputs"]) == ["context", "h0"]


@pytest.mark.parametrize("pooling, temporal_mlp", [("attention", 0), ("mean", 0), ("attention", 8), ("mean", 8)])
def test_temporal_filter_and_mlp_mirror(artifacts, pooling, temporal_mlp):
    """The temporal filter joins the pooling weights in the mirror, the temporal MLP is RESHAPE + FC +
    TANH + FC + ADD: float parity with PyTorch, and an int8 pooler graph of TFLM ops whose context
    differs from the float one by a few int8 steps."""
    torch.manual_seed(2)
    frames, *_ = quantize.load_clips(artifacts / "clip.h5")
    cfg = microcap.MicroCapConfig(
        vocab_size=16, dim=D, **dict(ARCH, pooling=pooling, temporal_filter=True, temporal_mlp=temporal_mlp)
    )
    model = microcap.MicroCap(cfg).eval()
    with torch.no_grad():
        model.temporal_filter.copy_(torch.randn(T, D) * 0.5)
        if temporal_mlp:
            model.temporal_mlp.out.weight.normal_(0.0, 0.5)
        c_filter = model.encode(torch.as_tensor(frames[:8]))[0]
        c_pooled = model.pooler(torch.as_tensor(frames[:8]))[0]
    assert (c_filter - c_pooled).abs().max() > 0.1  # the filter (and MLP) change the context
    mirror = quantize.TFMicroCap(model, {"context": (-2.0, 2.0)})
    parity, _ = quantize.float_parity(model, mirror, frames[:8])
    assert parity["tokens_identical"] == parity["clips"] and max(parity["max_abs_diff"].values()) < 1e-4, parity
    data = quantize.convert(mirror, POOLER, [{"frames": frames[i : i + 1]} for i in range(8)])
    ops = tflite.model_ops(data)
    assert set(ops) <= quantize.TFLM_OPS and "MEAN" not in ops and {"MUL", "SUM"} <= set(ops), ops
    fcs = [op for op in tflite.load_graph(data, "pooler").ops if op.name == "FULLY_CONNECTED"]
    assert len(fcs) == 2 + (pooling == "attention") + 2 * bool(temporal_mlp)  # init_h, context, [scores], [MLP in, out]
    it = tflite_interpreter(data)
    it.allocate_tensors()
    (inp,), outs = it.get_input_details(), {d["name"]: d for d in tflite.io_details(data)["outputs"]}
    ctx_out = next(d for d in it.get_output_details() if d["shape"][-1] == 3 * ARCH["hidden"])
    s_in, z_in = inp["quantization"]
    x = np.clip(np.round(frames[:1] / s_in) + z_in, -128, 127).astype(np.int8)
    it.set_tensor(inp["index"], x)
    it.invoke()
    s_out, z_out = ctx_out["quantization"]
    ctx = (it.get_tensor(ctx_out["index"]).astype(np.float32) - z_out) * s_out
    want = mirror.pooler(frames[:1])["context"].numpy()
    assert np.abs(ctx - want).max() <= 4 * s_out, (np.abs(ctx - want).max(), s_out)
    assert sorted(outs) == (["context", "h0", "weights"] if pooling == "attention" else ["context", "h0"])


def test_outputs_and_op_set(int8):
    out, metrics = int8
    for name in ("pooler", "decoder"):
        for precision in ("fp32", "int8"):
            assert (out / quantize.model_file(name, precision)).is_file()
    quant = json.loads((out / "quant.json").read_text())
    for key, model in quant["models"].items():
        assert set(model["ops"]) <= quantize.TFLM_OPS, key
        assert model["arena_bytes"] > 0
    dec = quant["models"]["decoder_int8"]
    assert "GATHER" in dec["ops"] and "SELECT" not in dec["ops"]
    dtypes = {d["name"]: d["dtype"] for d in dec["inputs"] + dec["outputs"]}
    assert dtypes == {"token": "int32", "h": "int8", "context": "int8", "logits": "int8", "h_new": "int8"}
    h = [d for d in dec["inputs"] + dec["outputs"] if d["name"] in ("h", "h_new")]
    assert all((d["scale"], d["zero_point"]) == quantize.H_QUANT for d in h)
    assert metrics["int8_bytes"] < metrics["fp32_bytes"]
    assert set(json.loads((out / "captions_tflm.json").read_text())) == {"test", "novel"}
    for key, model in quant["models"].items():  # the flatbuffer reader gives what tf.lite's interpreter reads
        data = (out / model["file"]).read_bytes()
        assert tflite.io_details(data) == interpreter_io(data) == {k: model[k] for k in ("inputs", "outputs")}, key
        assert tflite.model_ops(data) == sorted({op["op_name"] for op in tflite_interpreter(data)._get_ops_details()}), key


def interpreter_io(data):
    """Graph inputs/outputs as tf.lite.Interpreter reports them, in io_details()'s schema."""
    it = tflite_interpreter(data)
    sig = it._get_full_signature_list()["serving_default"]
    names = {idx: n for kind in ("inputs", "outputs") for n, idx in sig[kind].items()}

    def describe(d):
        scale, zp = d["quantization"]
        return {
            "name": names[d["index"]],
            "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zp),
        }

    return {"inputs": [describe(d) for d in it.get_input_details()], "outputs": [describe(d) for d in it.get_output_details()]}


def test_quantisation_choices_are_checked_on_val_only(int8):
    """The float-parity / logits-window check and caption_sensitivity read val clips, never test/novel."""
    _, m = int8
    assert m["float_parity"]["split"] == "val" and m["float_parity"]["clips"] == 12
    assert m["float_parity"]["tokens_identical"] == 12
    assert m["caption_sensitivity"]["clips"] == 12 and "val clips" in m["caption_sensitivity"]["method"]


def test_cider_drop_per_split_and_over_both(int8):
    """Each split's drop is 1 - int8 / fp32 of its mean CIDEr; test+novel pools both splits' clips."""
    _, m = int8
    c = m["cider"]
    assert set(c) == {"test", "novel", "test+novel"}
    for split in ("test", "novel"):
        assert c[split]["rel_drop"] == pytest.approx(1 - c[split]["int8_tflm"] / c[split]["fp32"])
        low, high = c[split]["rel_drop_ci95"]
        assert low <= round(c[split]["rel_drop"], 4) <= high
    n = m["clips"]
    both = {k: (c["test"][k] * n["test"] + c["novel"][k] * n["novel"]) / (n["test"] + n["novel"]) for k in ("fp32", "int8_tflm")}
    assert c["test+novel"]["fp32"] == pytest.approx(both["fp32"])
    assert c["test+novel"]["rel_drop"] == pytest.approx(1 - both["int8_tflm"] / both["fp32"])
    assert m["cider_rel_drop"] == c["test"]["rel_drop"]


def test_drop_is_undefined_when_fp32_scores_zero():
    assert quantize._drop({"fp32": {"a": 1.0, "b": 0.5}, "int8_tflm": {"a": 0.9, "b": 0.5}})["rel_drop"] == pytest.approx(
        0.1 / 1.5
    )
    assert quantize._drop({"fp32": {"a": 0.0}, "int8_tflm": {"a": 0.2}}) == {"fp32": 0.0, "int8_tflm": 0.2, "rel_drop": None}


def test_unsupported_op_is_one_line():
    with pytest.raises(TinyCapError, match=r"^m.tflite: op\(s\) SELECT not supported by TFLM$"):
        quantize.check_tflm_ops(["GATHER", "SELECT"], "m.tflite")


def test_tflm_greedy_matches_float(int8):
    """Int8 rounding may flip a near-tie argmax now and then; on this confident tiny model at
    least 90 % of the 24 test+novel captions must equal the float model's, and TFLM must agree
    with tf.lite on >= 95 % of tokens (they differ only by +-1 LSB on FULLY_CONNECTED)."""
    _, m = int8
    assert m["captions_identical_tflm_vs_fp32"] >= 0.9, m
    assert m["token_agreement_tflm_vs_tflite"] >= 0.95, m
    assert m["float_parity"]["tokens_identical"] == m["float_parity"]["clips"]


def test_logits_window_keeps_greedy_and_refines_the_int8_step(int8, artifacts):
    """The int8 logits cover [lo, hi] of the float logits (lo below every winning logit of the
    calibration states), moved to [0, hi - lo]: finer steps than the full range, same argmax."""
    out, m = int8
    quant = json.loads((out / "quant.json").read_text())
    lo, hi = quant["logits_window"]["float_range"]
    logits = next(d for d in quant["models"]["decoder_int8"]["outputs"] if d["name"] == "logits")
    assert logits["zero_point"] == -128 and logits["scale"] == pytest.approx((hi - lo) / 255, rel=1e-3)
    model = microcap.load(artifacts / "microcap.pt")
    frames, *_ = quantize.load_clips(artifacts / "clip.h5")
    with torch.no_grad():
        c, h, _ = model.encode(torch.as_tensor(frames))
        full = model.step(torch.full((len(frames),), 1), h, c)[0]
    assert lo > full.min().item() and (hi - lo) < (full.max() - full.min()).item()
    assert full.max(-1).values.min().item() > lo  # every clip's first winning logit is inside the window


def test_calibration_pins_a_context_band_and_the_mlp_saturation(artifacts):
    """context: the central percentile band of the calibration contexts, the decoder's states clipped
    to it, so both graphs still give the context one quantisation; mlp_pre: clipped where int8 TANH
    saturates. A percentile outside (50, 100] is one line."""
    model = microcap.load(artifacts / "microcap.pt")
    frames, vids, splits, refs = quantize.load_clips(artifacts / "clip.h5")
    train = np.flatnonzero(splits == "train")[:16]
    seqs = [[1, 5, 2]] * len(train)
    full, rep_full = quantize.calibrate(
        model, frames[train], seqs, frames[train], quantize.QuantizeParams(context_percentile=100.0)
    )
    band, rep = quantize.calibrate(model, frames[train], seqs, frames[train], quantize.QuantizeParams(context_percentile=99.0))
    raw = np.concatenate([s["context"] for s in rep_full[DECODER]])
    assert full.ranges["context"] == (raw.min(), raw.max())
    lo, hi = band.ranges["context"]
    assert raw.min() < lo < 0 < hi < raw.max()
    clipped = np.concatenate([s["context"] for s in rep[DECODER]])
    assert (clipped.min(), clipped.max()) == (lo, hi)
    assert -3.2 <= band.ranges["mlp_pre"][0] < 0 < band.ranges["mlp_pre"][1] <= 3.2
    io = {name: tflite.io_details(quantize.convert(band, name, rep[name])) for name in (POOLER, DECODER)}
    ctx_out = next(d for d in io[POOLER]["outputs"] if d["name"] == "context")
    ctx_in = next(d for d in io[DECODER]["inputs"] if d["name"] == "context")
    assert same_quantisation(ctx_out, ctx_in) and ctx_out["scale"] == pytest.approx((hi - lo) / 255, rel=1e-3)
    with pytest.raises(TinyCapError, match=r"^params.yaml: quantize.context_percentile: must be in \(50, 100\], got 40.0$"):
        quantize.calibrate(model, frames[train], seqs, frames[train], quantize.QuantizeParams(context_percentile=40.0))


def test_caption_sensitivity_finds_a_lossy_tensor(artifacts):
    """One tensor rounded at a time: harmless ranges keep the float captions; a logits window above
    every logit (all clip to its floor, argmax = token 0) is found as the tensor that breaks them."""
    model = microcap.load(artifacts / "microcap.pt")
    frames, vids, splits, refs = quantize.load_clips(artifacts / "clip.h5")
    train = np.flatnonzero(splits == "train")[:8]
    seqs = [[1, 5, 2]] * len(train)
    mirror, rep = quantize.calibrate(model, frames[train], seqs, frames[train], quantize.QuantizeParams())
    good = quantize.caption_sensitivity(mirror, rep, frames[-12:], model.cfg.max_steps)
    assert {"frames", "context", "h_new", "logits", "r*gh_n", "all pooler", "all decoder", "all"} <= set(good)
    assert good["h_new"] >= 0.9 and good["all"] <= 1.0
    mirror.ranges["logits"] = (50.0, 60.0)
    bad = quantize.caption_sensitivity(mirror, rep, frames[-12:], model.cfg.max_steps)
    assert bad["logits"] == bad["all decoder"] == bad["all"] == 0.0
    assert list(bad)[0] in ("logits", "all decoder", "all")
    assert bad["h_new"] == good["h_new"] and bad["all pooler"] == good["all pooler"]  # logits: a decoder tensor


def test_golden_round_trip_through_tflm(int8, artifacts):
    """Known inputs through the TFLM int8 graphs against tests/golden/quantize_tiny.json (written
    once by `python tests/test_quantize.py --golden` from this fixed-seed tiny model)."""
    golden = json.loads(GOLDEN.read_text())
    got = golden_outputs(int8[0], artifacts)
    assert got["tokens"] == golden["tokens"]
    for key in ("h0", "context", "logits", "h_new"):
        # TFLM's int8 kernels are deterministic; 1 LSB leaves room for a rounding change in a new converter
        assert np.abs(np.array(got[key]) - np.array(golden[key])).max() <= 1, key


def golden_outputs(int8_dir, artifacts, clips=3):
    frames, *_ = quantize.load_clips(artifacts / "clip.h5")
    cap = TflmDecoder(int8_dir)
    out = {"tokens": [], "h0": [], "context": [], "logits": [], "h_new": []}
    for x in frames[-clips:]:
        enc = cap.encode(x)
        step = cap.graphs["decoder"](token=np.array([1], np.int32), h=enc["h0"], context=enc["context"])
        out["h0"].append(enc["h0"].tolist())
        out["context"].append(enc["context"].tolist())
        out["logits"].append(step["logits"].tolist())
        out["h_new"].append(step["h_new"].tolist())
        out["tokens"].append(cap.caption(x))
    return out


def test_bad_inputs(artifacts, tmp_path):
    args = (artifacts / "microcap.pt", artifacts / "clip.h5", artifacts / "vocab.json", tmp_path / "int8")
    with pytest.raises(TinyCapError, match=r"microcap.pt: architecture mismatch .*hidden=24 \(expected 32\)"):
        quantize.quantize(*args, quantize.QuantizeParams(16), dict(ARCH, hidden=32))
    with pytest.raises(TinyCapError, match="no calibration clips"):
        quantize.quantize(*args, quantize.QuantizeParams(0), ARCH)
    with pytest.raises(
        TinyCapError, match=r"quantize.logits_margin: a winning logit of the val captions .* is below the int8 logits window"
    ):
        quantize.quantize(*args, quantize.QuantizeParams(16, logits_margin=-100.0), ARCH)
    assert not list(tmp_path.glob("int8/*.tflite"))
    model = microcap.load(artifacts / "microcap.pt")
    with pytest.raises(TinyCapError, match="representative dataset is empty"):
        quantize.convert(quantize.TFMicroCap(model, {"context": (-1.0, 1.0)}), DECODER, [])


if __name__ == "__main__":
    import sys
    import tempfile

    if "--golden" in sys.argv:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            root = tiny_artifacts(Path(tmp))
            quantize.quantize(
                root / "microcap.pt",
                root / "clip.h5",
                root / "vocab.json",
                root / "int8",
                quantize.QuantizeParams(calibration_clips=16),
                ARCH,
            )
            GOLDEN.parent.mkdir(exist_ok=True)
            GOLDEN.write_text(json.dumps(golden_outputs(root / "int8", root)) + "\n")
            print(f"wrote {GOLDEN}")
