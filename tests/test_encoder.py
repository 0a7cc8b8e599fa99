"""distill_encoder on tiny fixtures: MAC/param golden values, learning a synthetic teacher, the stage's
outputs and checkpoint round trip, refusals, the PyTorch/TF mirror parity and the int8 graph in TFLM."""

import os

import h5py
import numpy as np
import pytest
import torch

from tinycap import encoder
from tinycap.embeddings import load_embeddings
from tinycap.errors import TinyCapError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
T, D = 2, 8
TINY = dict(
    input_size=32, stem=4, blocks=[[8, 2], [8, 1]], epochs=6, batch_size=16, lr=0.01, calibration_frames=32, tflm_frames=24
)


def synthetic(rng, n, size):
    """n frames (n, size, size, 3) uint8: a square of random colour and side on a dark noisy background,
    and the teacher (n, D): a fixed random map of (colour, side) - something a small CNN can learn."""
    frames = rng.integers(0, 40, size=(n, size, size, 3)).astype(np.uint8)
    attrs = np.zeros((n, 4))
    for i in range(n):
        colour = rng.integers(60, 256, size=3)
        side = int(rng.integers(size // 4, size // 2 + 1))
        y, x = rng.integers(0, size - side + 1, size=2)
        frames[i, y : y + side, x : x + side] = colour
        attrs[i] = [*(colour / 255 - 0.5), side / size - 0.3]
    W = np.random.default_rng(123).normal(size=(4, D))
    teacher = np.tanh(attrs @ W * 2) + 0.3
    return frames, (teacher / np.linalg.norm(teacher, axis=1, keepdims=True)).astype(np.float32)


def make_data(root, size=32, per_split=(24, 8, 8), channels=3, dim=D, seed=0):
    """frames.h5 (V, T, size, size, channels) and clip.h5 (frame_emb (V, T, dim), two captions per video)."""
    rng = np.random.default_rng(seed)
    V = sum(per_split)
    frames, teacher = synthetic(rng, V * T, size)
    frames = frames.reshape(V, T, size, size, 3)
    if channels != 3:
        frames = np.concatenate([frames, frames[..., :1]], -1)[..., :channels]
    teacher = teacher.reshape(V, T, D)
    if dim != D:
        teacher = np.concatenate([teacher, teacher], -1)[..., :dim]
    split = [s for s, n in zip(("train", "val", "test"), per_split) for _ in range(n)]
    vid = [f"v{i}" for i in range(V)]
    text = teacher.mean(1)[np.repeat(np.arange(V), 2)] + rng.normal(size=(2 * V, dim)) * 0.05
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "frames.h5", "w") as f:
        f["frames"] = frames
        f["video_id"] = np.array(vid, dtype="S")
        f["split"] = np.array(split, dtype="S")
    with h5py.File(root / "clip.h5", "w") as f:
        f["frame_emb"] = teacher
        f["video_id"] = np.array(vid, dtype="S")
        f["split"] = np.array(split, dtype="S")
        f["caption"] = np.array([f"caption {c}" for c in range(2 * V)], dtype="S")
        f["caption_video"] = np.repeat(np.arange(V), 2).astype(np.int32)
        f["text_emb"] = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)
    return root / "frames.h5", root / "clip.h5"


def hooked_macs(model, size):
    """MACs measured from a forward pass (output elements x inputs per output), independent of count_macs."""
    total = []

    def conv_hook(m, inp, out):
        total.append(out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    def linear_hook(m, inp, out):
        total.append(out[0].numel() * m.in_features)

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear_hook)
    model(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    return sum(total)


def test_macs_params_and_shapes_golden():
    # by hand: input 8 -> stem 3x3 s2, 3->4 at 4x4: 4*4*4*3*9 = 1728; depthwise s2 on 4 ch at 2x2: 2*2*4*9 = 144;
    # pointwise 4->8 at 2x2: 2*2*4*8 = 128; linear 8->5: 40.  Total 2040.
    cfg = encoder.EncoderConfig(input_size=8, stem=4, blocks=[[8, 2]], dim=5)
    model = encoder.Encoder(cfg).eval()
    assert encoder.count_macs(cfg) == 2040
    # weights 108 + 36 + 32 + 40, BN gamma/beta 2*(4+4+8), head bias 5; folded: BN -> one bias per channel
    assert sum(p.numel() for p in model.parameters()) == 253
    assert encoder.count_params_folded(cfg) == 237
    assert hooked_macs(model, 8) == 2040
    out = model(torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8))
    assert out.shape == (3, 5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # odd, non-64 input sizes: TF SAME output sides ceil(n / stride), formula = measured
    odd = encoder.EncoderConfig(input_size=37, stem=6, blocks=[[12, 2], [12, 1], [20, 2]], dim=7)
    assert [s[-1] for s in encoder.layer_shapes(odd)] == [19, 10, 10, 10, 10, 5, 5, 1]
    assert encoder.count_macs(odd) == hooked_macs(encoder.Encoder(odd).eval(), 37)
    assert encoder.Encoder(odd)(torch.zeros(2, 37, 37, 3)).shape == (2, 7)


def test_student_learns_a_synthetic_teacher():
    rng = np.random.default_rng(1)
    frames, teacher = synthetic(rng, 96, 24)
    torch.manual_seed(0)
    model = encoder.Encoder(encoder.EncoderConfig(input_size=24, stem=8, blocks=[[16, 2], [16, 1]], dim=D))
    p = encoder.EncoderParams(**{**TINY, "epochs": 30, "stem": 8, "contrastive_weight": 0.0})
    fit = encoder.train(model, frames[:64], teacher[:64], frames[64:], teacher[64:], p)
    best = max(fit["val_cosine_per_epoch"])
    assert fit["val_cosine_per_epoch"][fit["best_epoch"] - 1] == best
    assert best > fit["start_val_cosine"] + 0.5 and best > 0.8, (fit["start_val_cosine"], fit["val_cosine_per_epoch"])
    held_out = (encoder.embed_pixels(model, frames[64:]) * teacher[64:]).sum(1).mean()
    assert abs(held_out - best) < 1e-5  # the kept weights are the best epoch's


def test_translation_keeps_orientation_and_content():
    ramp = np.tile(np.arange(0, 240, 10, dtype=np.uint8)[None, :, None], (24, 1, 3))  # brighter to the right
    pixels = torch.from_numpy(np.stack([ramp] * 8))
    gen = torch.Generator().manual_seed(0)
    assert encoder.translate(pixels, 0, gen) is pixels
    moved = encoder.translate(pixels, 2, gen)
    assert moved.shape == pixels.shape and not torch.equal(moved.to(torch.uint8), pixels)
    # each frame is the ramp shifted by at most 2 px (edges repeated): still increasing left to right, never flipped
    assert (moved[:, :, 1:] - moved[:, :, :-1] >= 0).all()
    assert ((moved.float() - pixels.float()).abs() <= 20).all()


def test_stage_outputs_round_trip_and_int8(tmp_path):
    """frames 32 px, student input 24 px (resized in the stage); the int8 graph through TFLM."""
    frames, clip = make_data(tmp_path / "in", size=32)
    p = encoder.EncoderParams(**{**TINY, "input_size": 24})
    metrics = encoder.run(frames, clip, tmp_path / "encoder", p, frames_size=32)
    out = tmp_path / "encoder"
    assert sorted(x.name for x in out.iterdir()) == ["encoder.pt", "encoder_int8.tflite", "student_emb.h5"]
    cfg = encoder.EncoderConfig(input_size=24, stem=4, blocks=[[8, 2], [8, 1]], dim=D)
    assert metrics["macs_per_frame"] == encoder.count_macs(cfg) and metrics["input_size"] == 24
    assert metrics["val"]["cosine_to_teacher"] > metrics["start_val_cosine"]
    for split in ("val", "test"):
        assert {"t2v_R@1", "t2v_R@5"} <= set(metrics[split]["student"]) and "t2v_R@1" in metrics[split]["clip"]
        assert "order_dependent_forward_%" not in metrics[split]["student"]  # the fixture has no order attributes
    # student_emb.h5 reads like clip.h5, and the checkpoint rebuilds a model giving the same embeddings
    student = load_embeddings(out / "student_emb.h5", need_text=True)
    assert student.frame_emb.shape == (40, T, D) and student.video_id[0] == "v0" and student.split[-1] == "test"
    np.testing.assert_allclose(np.linalg.norm(student.frame_emb, axis=-1), 1, rtol=1e-5)
    model = encoder.load_encoder(out / "encoder.pt")
    assert model.cfg == cfg
    with h5py.File(frames) as f:
        pix = encoder.resize_frames(f["frames"][30], 24)
    np.testing.assert_allclose(encoder.embed_pixels(model, pix), student.frame_emb[30], atol=1e-5)
    ckpt = torch.load(out / "encoder.pt", weights_only=True)
    assert {"model", "config", "step", "epoch"} <= set(ckpt) and ckpt["step"] > 0
    # int8: integer end to end, ops TFLM has, input = pixel - 128 exactly, close to the float student
    q = metrics["int8"]
    assert not set(q["ops"]) & {"QUANTIZE", "DEQUANTIZE"}, q["ops"]
    assert set(q["ops"]) <= {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "L2_NORMALIZATION"}, q["ops"]
    assert q["input_quantization"]["dtype"] == "int8" and q["output_quantization"]["dtype"] == "int8"
    assert (q["input_quantization"]["scale"], q["input_quantization"]["zero_point"]) == (1.0, 0)
    assert q["float_parity_max_abs"] < 1e-5
    # Threshold: int8 output of a unit vector at scale 1/128 rounds each of D=8 elements by <= 1/256 (cos loss
    # < 1e-3); activations carry ~1/255 of their range per layer over 5 layers, a few % relative error at
    # most, cos = 1 - err^2/2 >= 0.99. A wrong layout, scale or zero point gives cosines near 0.
    assert q["tflm_cosine_to_float_student"] > 0.97 and q["tflm_min_cosine_to_float_student"] > 0.9, q
    assert q["int8_bytes"] == (out / "encoder_int8.tflite").stat().st_size


def test_read_frames_picks_scattered_rows_in_order(tmp_path):
    frames, _ = make_data(tmp_path, size=16, per_split=(4, 2, 2))
    with h5py.File(frames) as f:
        every = f["frames"][()]
    rows = np.array([0, 2, 3, 4, 7])
    got = encoder.read_frames(frames, rows, 16, chunk=2)
    np.testing.assert_array_equal(got, every[rows])
    assert encoder.read_frames(frames, rows, 8).shape == (5, T, 8, 8, 3)


def test_forward_preference_reads_frame_order():
    """Two clips whose frames move along +e0 / -e0; captions point along +e0 / -e0: all forward (100 %);
    the same clips played backwards: none (0 %); a clip not marked order-dependent is not counted."""
    ramp = np.linspace(-1, 1, 5)[:, None] * np.eye(4)[0]  # (T, D)
    frames = np.stack([ramp + np.eye(4)[1], -ramp + np.eye(4)[1], ramp]).astype(np.float32)  # (3, 5, 4)

    class Emb:
        caption_video = np.array([0, 1, 2])
        text_emb = np.array([np.eye(4)[0], -np.eye(4)[0], -np.eye(4)[0]], np.float32)
        order_dependent = np.array([True, True, False])

    assert encoder.forward_preference(frames, Emb, np.arange(3)) == 100.0
    assert encoder.forward_preference(frames[:, ::-1], Emb, np.arange(3)) == 0.0
    assert encoder.forward_preference(frames, Emb, np.array([2])) is None


def test_dimension_mismatch_and_bad_frames_are_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder, "train", lambda *a, **k: pytest.fail("trained on bad input"))
    frames, clip = make_data(tmp_path / "ok", per_split=(4, 2, 2))
    out = tmp_path / "encoder"
    with pytest.raises(TinyCapError) as e:
        encoder.run(frames, clip, out, encoder.EncoderParams(**{**TINY, "dim": 12}), frames_size=32)
    assert str(e.value).startswith("params.yaml: encoder.dim: 12 but the teacher embeddings in ")
    assert "D = 8" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TinyCapError, match=r"frames\.h5: frames are 32x32 px but params frames.size is 64"):
        encoder.run(frames, clip, out, encoder.EncoderParams(**{**TINY, "input_size": 32}), frames_size=64)
    rgba, clip4 = make_data(tmp_path / "rgba", per_split=(4, 2, 2), channels=4)
    with pytest.raises(
        TinyCapError, match=r"rgba/frames\.h5: frames must be uint8 \[V,T,S,S,3\] RGB, got uint8 \[8, 2, 32, 32, 4\]"
    ):
        encoder.run(rgba, clip4, out, encoder.EncoderParams(**TINY), frames_size=32)
    _, other = make_data(tmp_path / "other", per_split=(5, 2, 2))
    with pytest.raises(TinyCapError, match=r"frames\.h5: videos/frames \[8, 2\] do not match the teacher embeddings \[9, 2\]"):
        encoder.run(frames, other, out, encoder.EncoderParams(**TINY), frames_size=32)
    with pytest.raises(TinyCapError, match="params.yaml: encoder.input_size: 48 is larger than frames.size 32"):
        encoder.run(frames, clip, out, encoder.EncoderParams(**{**TINY, "input_size": 48}), frames_size=32)
    with pytest.raises(
        TinyCapError, match=r"params.yaml: encoder: blocks must be \[channels > 0, stride 1\|2\] pairs, got \[16, 3\]"
    ):
        encoder.run(frames, clip, out, encoder.EncoderParams(**{**TINY, "blocks": [[8, 1], [16, 3]]}), frames_size=32)
    assert not out.exists() and not list(tmp_path.glob(".encoder*"))


def with_trained_batchnorm(model):
    """`model` with BatchNorm statistics as after training (varied per channel), drawn from torch's RNG."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def test_tf_mirror_float_parity_odd_size_and_folded_batchnorm():
    cfg = encoder.EncoderConfig(input_size=37, stem=6, blocks=[[12, 2], [12, 1], [20, 2]], dim=7)
    torch.manual_seed(0)
    model = with_trained_batchnorm(encoder.Encoder(cfg).eval())  # so folding is exercised
    pixels = synthetic(np.random.default_rng(0), 4, 37)[0]
    q = encoder.pixels_to_q(pixels).astype(np.float32)
    mirror = encoder.TFEncoder(model)
    # the last feature map (5x5 here, every padding and stride on an odd side on the way): it varies
    # strongly over positions, so a wrong layout, padding or folded constant cannot pass
    with torch.no_grad():
        torch_maps = model.features(((torch.from_numpy(pixels).float() - 128) / 255).permute(0, 3, 1, 2))
    torch_maps = torch_maps.permute(0, 2, 3, 1).numpy()  # (B, 5, 5, 20)
    tf_maps = mirror.features(q).numpy()
    assert tf_maps.shape == torch_maps.shape == (4, 5, 5, 20)
    assert torch_maps.std(axis=(1, 2)).mean() > 1e-3  # 100x the tolerance below
    assert np.abs(tf_maps - torch_maps).max() < 1e-5
    np.testing.assert_allclose(mirror(q).numpy(), encoder.embed_pixels(model, pixels), atol=1e-5)
