"""The image encoder through the project's own C runtime (issue 14), bit for bit against TFLM.

A tiny encoder (tinycap.encoder: 16x16 and 13x13 inputs, stem + two depthwise-separable blocks, BatchNorm with
non-trivial statistics, untrained) is converted to a full-integer .tflite as the pipeline does
(encoder.convert_int8: CONV_2D, DEPTHWISE_CONV_2D, MEAN over axes (1, 2), FULLY_CONNECTED,
L2_NORMALIZATION); tinycap.codegen turns it into C, firmware/host/graph_main.c runs it, and every
output byte must equal TFLM's (tflite_micro.runtime) on random frames. L2_NORMALIZATION alone:
random single-op graphs (shapes, zero points, rows of zero / tiny / huge sums of squares).
"""

import os
import shutil
import subprocess

import numpy as np
import pytest
from test_encoder import with_trained_batchnorm
from test_firmware import graph_binary

from tinycap import codegen, encoder, tflite
from tinycap.errors import TinyCapError
from tinycap.int8 import tflm_run

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed (Debian package gcc)")

ENCODER_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "L2_NORMALIZATION"}


def _run(exe, name, *xs):
    out = subprocess.run([str(exe), name], input=b"".join(x.tobytes() for x in xs), capture_output=True, check=True)
    return np.frombuffer(out.stdout, np.int8)


@pytest.fixture(scope="module", params=[16, 13])  # 13: odd sides, SAME padding with the odd pixel bottom / right
def encoder_build(request, tmp_path_factory):
    import torch

    cfg = encoder.EncoderConfig(input_size=request.param, stem=8, blocks=[[12, 2], [16, 1]], dim=8)
    torch.manual_seed(0)
    model = with_trained_batchnorm(encoder.Encoder(cfg).eval())  # folding gives varied per-channel scales
    calibration = np.random.default_rng(0).integers(0, 256, (16, cfg.input_size, cfg.input_size, 3)).astype(np.uint8)
    data, _ = encoder.convert_int8(encoder.TFEncoder(model), calibration)
    features, _ = encoder.convert_int8(_FeatureMirror(model), calibration)
    tmp = tmp_path_factory.mktemp("encoder_codegen")
    models = {"encoder": data, "features": features}  # one generated source: shared arena and conv scratch
    graphs, exe = graph_binary(models, tmp)
    return cfg, models, graphs["encoder"], exe, tmp / "gen"


class _FeatureMirror(encoder.TFEncoder):
    """The encoder up to its last feature map (B, S', S', C): every CONV_2D / DEPTHWISE_CONV_2D output
    byte compared, not only the 8-byte embedding (which an untrained encoder barely varies)."""

    def __call__(self, q):
        return self.features(q)


def test_encoder_graph_has_the_real_encoders_ops(encoder_build):
    _, _, graph, _, gen = encoder_build
    assert {op.name for op in graph.ops} == ENCODER_OPS
    code = (gen / "tc_graphs.c").read_text()
    assert "tc_k_conv2d(" in code and "tc_k_depthwise_conv2d(" in code and "tc_k_l2_normalization(" in code
    assert "tc_conv_scratch" in code and "malloc" not in code
    assert "#define TC_CONV_SCRATCH_BYTES " in (gen / "tc_graphs.h").read_text()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["encoder", "features"])
def test_encoder_generated_c_bit_exact_with_tflm(encoder_build, name, seed):
    cfg, graphs, _, exe, _ = encoder_build
    R = np.random.default_rng(100 + seed)
    outs = set()
    for i in range(3):
        pixels = R.integers(0, 256, (cfg.input_size, cfg.input_size, 3)).astype(np.uint8)
        if i == 1:  # dark, low-contrast frame: small activations, ReLU6 clamps at 0
            pixels = (pixels // 16).astype(np.uint8)
        if i == 2:  # a bright block in one corner: saturating activations, a different embedding
            pixels[: cfg.input_size // 2, : cfg.input_size // 2] = 230
        q = encoder.pixels_to_q(pixels)[None]
        ref = np.asarray(tflm_run(graphs[name], [q], arena_size=encoder.arena_bound(cfg))[0], np.int8).ravel()
        np.testing.assert_array_equal(_run(exe, name, q), ref, err_msg=f"{name} seed {seed} frame {i}")
        outs.add(ref.tobytes())
    if name == "features":
        assert len(outs) == 3 and ref.size == 16 * (-(-cfg.input_size // 4)) ** 2  # the maps depend on the frame


def _l2_cases():
    """name -> (model, input shape): random single-op int8 L2_NORMALIZATION graphs."""
    R = np.random.default_rng(7)
    cases = {}
    for i, shape in enumerate([(1, 8), (3, 37), (2, 4, 16), (1, 128), (5, 1), (1, 40000)]):
        t = [
            dict(shape=shape, dtype="int8", scale=float(R.uniform(0.005, 0.2)), zp=int(R.integers(-40, 40))),
            dict(shape=shape, dtype="int8", scale=1 / 128, zp=0),
        ]
        opts = tflite.options("L2NormOptions", fusedActivationFunction=0)
        cases[f"l2_{i}"] = (tflite.build_model(t, [("L2_NORMALIZATION", [0], [1], opts)], [0], [1]), shape, t[0]["zp"])
    return cases


@pytest.fixture(scope="module")
def l2_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("l2")
    cases = _l2_cases()
    return cases, graph_binary({name: model for name, (model, _, _) in cases.items()}, tmp)[1]


def test_l2_normalization_kernel_bit_exact_with_tflm(l2_build):
    cases, exe = l2_build
    R = np.random.default_rng(3)
    checked = 0
    for name, (model, shape, zp) in cases.items():
        for trial in range(5):
            x = R.integers(-128, 128, shape)
            rows = x.reshape(-1, shape[-1])
            if trial == 1:  # sums of squares 0 and 1 (TFLM's special case), 2 (multiplier shifted left)
                rows[0] = zp
                if len(rows) > 1:
                    rows[1], rows[1, 0] = zp, np.clip(zp + 1, -128, 127)
            if trial == 2:  # tiny values around the zero point
                rows[:] = np.clip(zp + R.integers(-2, 3, rows.shape), -128, 127)
            if trial == 3:  # the extremes: largest sums of squares (40000 of them: input >= 2^29)
                rows[:] = np.where(R.random(rows.shape) < 0.5, -128, 127)
            x = rows.reshape(shape).astype(np.int8)
            ref = np.asarray(tflm_run(model, [x])[0], np.int8).ravel()
            np.testing.assert_array_equal(_run(exe, name, x), ref, err_msg=f"{name} trial {trial}")
            checked += x.size
    assert checked > 90000


def test_l2_normalization_needs_tflm_output_quantisation():
    t = [dict(shape=(1, 8), dtype="int8", scale=0.1, zp=0), dict(shape=(1, 8), dtype="int8", scale=1 / 256, zp=0)]
    model = tflite.build_model(t, [("L2_NORMALIZATION", [0], [1], tflite.options("L2NormOptions"))], [0], [1])
    with pytest.raises(TinyCapError, match="scale 1/128"):
        codegen.Codegen().add("g", model, "l2.tflite")


def test_pipeline_encoder_generated_c_equals_tflm_on_val_frames(pipeline_data, tmp_path):
    """The encoder the pipeline trained (data/encoder/encoder_int8.tflite) through the code generator:
    the host build gives TFLM's bytes on real val frames, resized as distill_encoder resizes them."""
    from tinycap.embeddings import load_embeddings

    model = (pipeline_data / "encoder" / "encoder_int8.tflite").read_bytes()
    graph = tflite.load_graph(model, "encoder_int8.tflite")
    size = graph.tensors[graph.inputs[0]].shape[1]  # (1, S, S, 3)
    exe = graph_binary({"encoder": model}, tmp_path)[1]
    rows = load_embeddings(pipeline_data / "embeddings" / "clip.h5").videos("val")[:8]
    pixels = encoder.read_frames(pipeline_data / "frames" / "frames.h5", rows, size).reshape(-1, size, size, 3)
    assert len(pixels) >= 8
    for frame in pixels:
        q = encoder.pixels_to_q(frame[None])  # (1, S, S, 3) int8
        np.testing.assert_array_equal(_run(exe, "encoder", q), np.asarray(tflm_run(model, [q])[0]).astype(np.int8).ravel())
