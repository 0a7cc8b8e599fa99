"""build_tflm: the C runtime against TFLM (tflite_micro.runtime), kernel by kernel and end to end.

Kernels: single-op int8 models with random shapes, data and quantisation parameters, compiled
into one host binary (firmware/host/graph_main.c) and compared bit for bit with TFLM.
End to end: tiny int8 MicroCap graphs (tests/fixtures/firmware, made by
scripts/make_firmware_fixture.py through tinycap.quantize) and, when the pipeline has run,
the real data/int8 graphs: token sequences identical, logits bit-exact (0 LSB).
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinycap import codegen, fixedpoint, m7, tflite, toolchain
from tinycap import firmware as F
from tinycap.embeddings import load_embeddings
from tinycap.errors import TinyCapError
from tinycap.int8 import quantize_frames, tflm_run

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "firmware"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed (Debian package gcc)")


# ------------------------------------------------------------------------------ kernel cases


def _cases(seed=0):
    """name -> (model bytes, input tensor specs, number of outputs): random single-op int8 models."""
    R = np.random.default_rng(seed)

    def qt(shape, scale=None, zp=None):
        return dict(
            shape=shape,
            dtype="int8",
            scale=R.uniform(0.005, 0.2) if scale is None else scale,
            zp=int(R.integers(-30, 30)) if zp is None else zp,
        )

    cases = {}

    def case(name, tensors, ops, ins, outs):
        cases[name] = (tflite.build_model(tensors, ops, ins, outs), [tensors[i] for i in ins], len(outs))

    for i in range(8):  # FULLY_CONNECTED: per-tensor and per-channel, every fused activation, batches
        k, n, b = int(R.integers(1, 90)), int(R.integers(1, 45)), int(R.integers(1, 4))
        ws = R.uniform(0.001, 0.02, n) if i % 2 else float(R.uniform(0.001, 0.02))
        s_in = float(R.uniform(0.005, 0.1))
        t = [
            qt((b, k), scale=s_in),
            dict(
                shape=(n, k),
                dtype="int8",
                data=R.integers(-127, 128, (n, k)).astype(np.int8),
                scale=ws,
                zp=np.zeros(np.size(ws), int),
            ),
            dict(
                shape=(n,),
                dtype="int32",
                data=R.integers(-5000, 5000, n).astype(np.int32),
                scale=s_in * np.asarray(ws),
                zp=np.zeros(np.size(ws), int),
            ),
            qt((b, n), scale=float(R.uniform(0.05, 1.0))),
        ]
        bias = [0, 1, 2] if i != 6 else [0, 1, -1]  # one without bias
        opts = tflite.options("FullyConnectedOptions", fusedActivationFunction=[0, 1, 3, 2][i % 4])
        case(f"fully_connected_{i}", t, [("FULLY_CONNECTED", bias, [3], opts)], [0], [3])
    shapes = [
        ((1, 37), (1, 37)),
        ((2, 5, 7), (2, 5, 7)),
        ((1, 5, 8), (5, 8)),
        ((3, 4), (1, 4)),
        ((1, 6), (1, 1)),
        ((1, 200), (1, 200)),
        ((2, 96), (2, 96)),
    ]  # the last two: long, table path (ADD_TABLE_MIN)
    for i, (sa, sb) in enumerate(shapes):  # elementwise with broadcasting and fused activations
        for op, kind in (("ADD", "AddOptions"), ("SUB", "SubOptions"), ("MUL", "MulOptions")):
            out = tuple(np.broadcast_shapes(sa, sb))
            opts = tflite.options(kind, fusedActivationFunction=[0, 1, 0, 3, 0, 0, 1][i])
            case(f"{op.lower()}_{i}", [qt(sa), qt(sb), qt(out)], [(op, [0, 1], [2], opts)], [0, 1], [2])
    for i, shape in enumerate([(1, 40), (2, 5), (1, 4)]):
        t = [qt(shape, scale=float(R.uniform(0.01, 0.4))), qt(shape, scale=1 / 256, zp=-128)]
        case(f"softmax_{i}", t, [("SOFTMAX", [0], [1], tflite.options("SoftmaxOptions", beta=1.0))], [0], [1])
    for i, (B, M, K, N, ax, ay) in enumerate([(1, 1, 4, 24, 0, 0), (2, 3, 5, 4, 1, 0), (1, 1, 7, 9, 0, 1), (1, 2, 3, 2, 1, 1)]):
        la, lb = ((B, K, M) if ax else (B, M, K)), ((B, N, K) if ay else (B, K, N))
        t = [qt(la), qt(lb), qt((B, M, N), scale=float(R.uniform(0.01, 0.5)))]
        opts = tflite.options("BatchMatMulOptions", adjX=bool(ax), adjY=bool(ay))
        case(f"batch_matmul_{i}", t, [("BATCH_MATMUL", [0, 1], [2], opts)], [0, 1], [2])
    for i in range(3):
        s_in, z_in = float(R.uniform(0.01, 0.1)), int(R.integers(-20, 20))
        out = qt((1, 16), scale=s_in, zp=z_in) if i == 0 else qt((1, 16))
        t = [qt((1, 5, 16), scale=s_in, zp=z_in), dict(shape=(1,), dtype="int32", data=np.array([1], np.int32)), out]
        case(f"mean_{i}", t, [("MEAN", [0, 1], [2], tflite.options("ReducerOptions", keepDims=False))], [0], [2])
        t = [
            qt((1, 5, 16)),
            dict(shape=(1,), dtype="int32", data=np.array([1], np.int32)),
            qt((1, 16), scale=float(R.uniform(0.05, 0.5))),
        ]
        case(f"sum_{i}", t, [("SUM", [0, 1], [2], tflite.options("ReducerOptions", keepDims=False))], [0], [2])
    for op, scale, zp in (("LOGISTIC", 1 / 256, -128), ("TANH", 1 / 128, 0)):
        t = [qt((1, 300), scale=float(R.uniform(0.01, 0.1))), qt((1, 300), scale=scale, zp=zp)]
        case(op.lower(), t, [(op, [0], [1], None)], [0], [1])
    case("quantize", [qt((1, 30)), qt((1, 30))], [("QUANTIZE", [0], [1], None)], [0], [1])
    t = [qt((1, 30)), dict(shape=(1, 30), dtype="float32"), qt((1, 30))]
    case("dequantize_quantize", t, [("DEQUANTIZE", [0], [1], None), ("QUANTIZE", [1], [2], None)], [0], [2])
    table = R.integers(-128, 128, (10, 6)).astype(np.int8)
    t = [
        dict(shape=(10, 6), dtype="int8", data=table, scale=0.1, zp=3),
        dict(shape=(1,), dtype="int32", rows=10),
        qt((1, 6), 0.1, 3),
    ]
    case("gather", t, [("GATHER", [0, 1], [2], tflite.options("GatherOptions", axis=0))], [1], [2])
    t = [qt((1, 5), 0.05, 2), qt((1, 7), 0.05, 2), qt((1, 12), 0.05, 2)]
    case("concatenation", t, [("CONCATENATION", [0, 1], [2], tflite.options("ConcatenationOptions", axis=1))], [0, 1], [2])
    t = [qt((1, 12), 0.05, 2), dict(shape=(), dtype="int32", data=np.array(1, np.int32))] + [
        qt((1, 4), 0.05, 2) for _ in range(3)
    ]
    case("split", t, [("SPLIT", [1, 0], [2, 3, 4], tflite.options("SplitOptions", numSplits=3))], [0], [2, 3, 4])
    t = [
        qt((1, 2, 12), 0.05, 2),
        dict(shape=(3,), dtype="int32", data=np.array([0, 0, 4], np.int32)),
        dict(shape=(3,), dtype="int32", data=np.array([1, 2, 9], np.int32)),
        dict(shape=(3,), dtype="int32", data=np.ones(3, np.int32)),
        qt((1, 2, 5), 0.05, 2),
    ]
    case("strided_slice", t, [("STRIDED_SLICE", [0, 1, 2, 3], [4], tflite.options("StridedSliceOptions"))], [0], [4])
    return cases


@pytest.fixture(scope="module")
def kernel_build(tmp_path_factory):
    """All kernel cases in one generated source and one host binary."""
    tmp = tmp_path_factory.mktemp("kernels")
    cases = _cases()
    return cases, graph_binary({name: model for name, (model, _, _) in cases.items()}, tmp)[1]


def graph_binary(models, out_dir):
    """Every .tflite of `models` ({name: bytes}) generated into one source (out_dir/gen) and built with
    firmware/host/graph_main.c -> ({name: tinycap.tflite.Graph}, the host binary)."""
    cg = codegen.Codegen()
    graphs = {name: cg.add(name, model, name) for name, model in models.items()}
    cg.write(out_dir / "gen")
    return graphs, toolchain.build_host(out_dir / "gen", out_dir / "tc_graph", main="graph_main.c")


@pytest.mark.parametrize(
    "family",
    [
        "fully_connected",
        "add",
        "sub",
        "mul",
        "softmax",
        "batch_matmul",
        "mean",
        "sum",
        "logistic",
        "tanh",
        "quantize",
        "dequantize_quantize",
        "gather",
        "concatenation",
        "split",
        "strided_slice",
    ],
)
def test_kernel_bit_exact_with_tflm(kernel_build, family):
    cases, exe = kernel_build
    R = np.random.default_rng(1)
    names = [n for n in cases if n == family or n.rsplit("_", 1)[0] == family]
    assert names
    for name in names:
        model, ins, n_out = cases[name]
        for _ in range(4):
            xs = [
                R.integers(0, t.get("rows", 10), t["shape"]).astype(np.int32)
                if t["dtype"] == "int32"
                else R.integers(-128, 128, t["shape"]).astype(np.int8)
                for t in ins
            ]
            ref = np.concatenate([r.astype(np.int8).ravel() for r in tflm_run(model, xs, n_outputs=n_out)])
            out = subprocess.run(
                [str(exe), name], input=b"".join(x.tobytes() for x in xs), capture_output=True, check=True
            ).stdout
            np.testing.assert_array_equal(np.frombuffer(out, np.int8), ref, err_msg=name)


def test_quantize_multiplier_matches_tflm_rules():
    assert fixedpoint.quantize_multiplier(0.5) == (1 << 30, 0)
    assert fixedpoint.quantize_multiplier(1.0) == (1 << 30, 1)
    assert fixedpoint.quantize_multiplier(0.0) == (0, 0)
    m, s = fixedpoint.quantize_multiplier(0.1234)
    assert abs(m * 2.0 ** (s - 31) - 0.1234) < 1e-9


# ------------------------------------------------------------------------------ bad input


def test_unsupported_op_fails_at_build_naming_it(tmp_path):
    t = [dict(shape=(1, 4), dtype="int8", scale=0.1, zp=0), dict(shape=(1, 4), dtype="int8", scale=0.1, zp=0)]
    model = tflite.build_model(t, [("EXP", [0], [1], None)], [0], [1])
    with pytest.raises(TinyCapError, match=r"op EXP .*not supported by the firmware runtime"):
        codegen.Codegen().add("g", model, "bad.tflite")
    with pytest.raises(TinyCapError, match="not a .tflite"):
        tflite.load_graph(b"not a flatbuffer at all", "junk.tflite")


def test_mismatched_loop_quantisation_is_rejected(tmp_path):
    src = FIXTURES / "attention"
    for f in src.iterdir():
        shutil.copy2(f, tmp_path / f.name)
    quant = json.loads((tmp_path / "quant.json").read_text())
    for d in quant["models"]["decoder_int8"]["inputs"]:
        if d["name"] == "h":
            d["scale"] *= 2
    (tmp_path / "quant.json").write_text(json.dumps(quant))
    with pytest.raises(TinyCapError, match="differs from quant.json|quantisation or shape differs"):
        F.generate(tmp_path, tmp_path / "vocab.json", tmp_path / "gen")


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module", params=["attention", "mean"])
def fixture_build(request, tmp_path_factory):
    src = FIXTURES / request.param
    out = tmp_path_factory.mktemp(f"fw_{request.param}")
    info = F.generate(src, src / "vocab.json", out / "gen")
    exe = toolchain.build_host(out / "gen", out / "tc_host")
    return src, info, exe


def test_host_build_matches_tflm_on_fixture(fixture_build):
    src, info, exe = fixture_build
    report = F.parity(exe, src, np.load(src / "clips.npy"))
    assert report["token_sequences_identical"] == report["clips"] == 16
    assert report["max_logit_abs_diff"] == 0 and report["logit_abs_diff_histogram"] == {"0": report["logits_compared"]}
    assert report["logits_compared"] > 0
    assert 0 < report["hit_max_len"] < report["clips"]  # both early <eos> and max-length captions occur


def test_max_length_and_out_of_range_ids_are_defined(fixture_build):
    src, info, exe = fixture_build
    max_len = info["shapes"]["max_len"]
    quant = json.loads((src / "quant.json").read_text())
    frames = quant["models"]["pooler_int8"]["inputs"][0]
    clips = quantize_frames(np.load(src / "clips.npy"), frames["scale"], frames["zero_point"])
    tokens, _ = toolchain.run_host(exe, clips)
    assert max(len(t) for t in tokens) == max_len  # stops at max_len, never beyond
    assert all(2 not in t for t in tokens)  # <eos> is not written
    vocab = json.loads((src / "vocab.json").read_text())["tokens"]
    text = lambda i: subprocess.run([str(exe), "-t", str(i)], capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    assert text(5) == vocab[5]
    assert text(len(vocab)) == "<unk>" and text(65535) == "<unk>" and text(-3) == "<unk>"
    bad = subprocess.run([str(exe)], input=b"\x00" * 7, capture_output=True)
    assert bad.returncode == 1 and b"inside a clip" in bad.stderr


def test_generated_sources_are_static_and_sized(fixture_build):
    src, info, exe = fixture_build
    gen = exe.parent / "gen"
    code = (gen / "tc_graphs.c").read_text() + (gen / "tc_model.c").read_text()
    assert "malloc" not in code and "static const int8_t" in code
    assert info["weight_bytes"] > 0 and info["arena_bytes"] > 0
    header = (gen / "tc_model.h").read_text()
    for name in ("TC_NUM_FRAMES", "TC_DIM", "TC_MAX_LEN", "TC_VOCAB_SIZE"):
        assert f"#define {name} " in header


def test_tflm_app_export(tmp_path):
    src = FIXTURES / "attention"
    quant = json.loads((src / "quant.json").read_text())
    res = F.export_tflm_app(src, src / "vocab.json", np.zeros((4, 24), np.int8), tmp_path)
    ops = sorted(set(quant["models"]["pooler_int8"]["ops"]) | set(quant["models"]["decoder_int8"]["ops"]))
    assert res["ops"] == ops and res["built"] is False
    resolver = (tmp_path / "op_resolver.h").read_text()
    assert resolver.count("resolver.Add") == len(ops) and "AddFullyConnected()" in resolver
    settings = (tmp_path / "model_settings.h").read_text()
    assert f"kPoolerArenaBytes = {quant['models']['pooler_int8']['arena_bytes']};" in settings
    main = (tmp_path / "main.cc").read_text()
    assert "void setup()" in main and "void loop()" in main and "alignas(16)" in main
    assert "TFLM_ROOT" in (tmp_path / "Makefile").read_text()
    if shutil.which("g++"):
        subprocess.run(["g++", "-fsyntax-only", "-std=c++17", "-I", str(tmp_path), str(tmp_path / "model_data.cc")], check=True)


def test_host_build_matches_tflm_on_real_clips(pipeline_data, tmp_path):
    data = pipeline_data
    info = F.generate(data / "int8", data / "guide" / "vocab.json", tmp_path / "gen")
    exe = toolchain.build_host(tmp_path / "gen", tmp_path / "tc_host")
    emb = load_embeddings(data / "embeddings" / "clip.h5")
    frames, splits = emb.frame_emb, emb.split
    picked = np.flatnonzero(np.isin(splits, ["test", "novel"]))[:40]
    report = F.parity(exe, data / "int8", frames[picked])
    assert report["token_sequences_identical"] == report["clips"], report
    assert report["max_logit_abs_diff"] == 0, report
    assert info["shapes"]["vocab_size"] > 4


def _tiny_encoder(size, dim, frames):
    """An untrained int8 encoder (tinycap.encoder, BatchNorm statistics as after training) of `size` px frames
    embedding to `dim`, calibrated on uint8 frames (N, size, size, 3) as distill_encoder does."""
    import torch
    from test_encoder import with_trained_batchnorm

    from tinycap import encoder

    cfg = encoder.EncoderConfig(input_size=size, stem=8, blocks=[[12, 2], [16, 1]], dim=dim)
    torch.manual_seed(0)
    model = with_trained_batchnorm(encoder.Encoder(cfg).eval())
    return encoder.convert_int8(encoder.TFEncoder(model), frames)[0]


@pytest.fixture(scope="module")
def device_inputs(tmp_path_factory):
    """The attention fixture's MicroCap (T = 4, D = 24) behind a tiny int8 encoder of 16 px frames: frames.h5
    of 12 clips (test / novel) and the TFLM reference of the whole device path (DeviceDecoder, written with
    write_reference as quantize_int8 writes data/int8/device_tflm.npz)."""
    import h5py

    from tinycap.int8 import DeviceDecoder, device_reference, write_reference

    src = FIXTURES / "attention"
    tmp = tmp_path_factory.mktemp("device")
    R = np.random.default_rng(3)
    # smooth random scenes (a bright square on a coloured background), so embeddings and captions vary
    frames = np.empty((12, 4, 16, 16, 3), np.uint8)
    for clip in frames:
        clip[:] = R.integers(0, 256, 3)
        for t in range(4):
            y, x = R.integers(0, 12, 2)
            clip[t, y : y + 5, x : x + 5] = R.integers(0, 256, 3)
        clip += R.integers(0, 16, clip.shape).astype(np.uint8)
    enc = tmp / "encoder_int8.tflite"
    enc.write_bytes(_tiny_encoder(16, 24, frames.reshape(-1, 16, 16, 3)))
    ids = [f"v{i}" for i in range(len(frames))]
    with h5py.File(tmp / "frames.h5", "w") as f:
        f["frames"] = frames
        f["video_id"] = np.array(ids, dtype="S")
        f["split"] = np.array(["test", "novel", "train"] * 4, dtype="S")  # the train clips are not checked
    tokens, logits = device_reference(DeviceDecoder(enc, src), frames)
    write_reference(tmp / "device_tflm.npz", ids, tokens, logits)
    return src, enc, tmp / "frames.h5", tmp / "device_tflm.npz", frames, tokens, logits


@pytest.fixture(scope="module")
def stage_build(device_inputs, tmp_path_factory):
    """tinycap.firmware.build() (the build_tflm stage) on the device fixture."""
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed (Debian package gcc-arm-none-eabi)")
    src, enc, frames_h5, ref, *_ = device_inputs
    out = tmp_path_factory.mktemp("stage") / "firmware"
    metrics = F.build(src, src / "vocab.json", enc, frames_h5, ref, out, F.FirmwareParams())
    return out, metrics


def test_stage_build_metrics(stage_build, device_inputs):
    out, metrics = stage_build
    assert metrics["parity"]["clips"] == 8 == metrics["parity"]["token_sequences_identical"]  # test + novel clips
    assert metrics["parity"]["max_logit_abs_diff"] == 0 and metrics["parity"]["logits_compared"] > 8 * 12
    assert metrics["shapes"]["frame_size"] == 16 and "CONV_2D" in metrics["ops"] and "GATHER" in metrics["ops"]
    assert metrics["weight_bytes"]["value"] > 0 and metrics["static_buffer_bytes"]["value"] > 4 * 24 + 16 * 16 * 3
    for image in ("qemu", "stm32h743"):
        assert metrics["elf_sizes"][image]["flash_bytes"] > metrics["weight_bytes"]["value"]
    for path in ("gen/tc_graphs.c", "gen/tc_model.h", "host/tc_host", "tflm_app/main.cc", "elf/tinycap_qemu.elf"):
        assert (out / path).is_file(), path
    header = (out / "gen" / "tc_model.h").read_text()
    assert "#define TC_HAS_ENCODER 1" in header and "#define TC_FRAME_BYTES 768" in header
    # the encoder's graph shares the one arena with MicroCap's: a single static arena in the generated code
    assert (out / "gen" / "tc_graphs.c").read_text().count("static int8_t tc_arena[") == 1


def test_streaming_equals_one_shot_and_the_tflm_reference(stage_build, device_inputs):
    """tc_push_frame x T + tc_caption and tc_caption_frames give the same tokens and logits, TFLM's."""
    out, _ = stage_build
    *_, frames, tokens, logits = device_inputs
    exe = out / "host" / "tc_host"
    streamed, streamed_logits = toolchain.run_host(exe, frames, logits=True)
    one_shot, one_shot_logits = toolchain.run_host(exe, frames, logits=True, one_shot=True)
    assert streamed == one_shot == [list(t) for t in tokens]
    assert len({x.tobytes() for x in logits}) > len(frames) // 2  # the logits vary with the frames: they reach the decoder
    for a, b, ref in zip(streamed_logits, one_shot_logits, logits):
        np.testing.assert_array_equal(a, ref)
        np.testing.assert_array_equal(b, ref)


def test_frame_count_other_than_t_is_an_error_code(stage_build, device_inputs):
    """T - 1 frames: tc_caption returns TC_ERR_FRAME_COUNT (-1) and writes nothing (the host binary checks the
    canary bytes around the tokens buffer and exits 1 on any change); T + 1 frames: the extra push is refused
    (-1) and the caption is that of the first T frames, so nothing was written past the T x D input buffer."""
    out, _ = stage_build
    *_, frames, tokens, _ = device_inputs
    exe = out / "host" / "tc_host"
    short, _ = toolchain.run_host(exe, frames[:, :3])
    assert short == [-1] * len(frames)
    assert toolchain.run_host(exe, frames[:2, :1])[0] == [-1, -1]
    extra = np.concatenate([frames, frames[:, :1] ^ 0xFF], axis=1)  # a fifth, different frame
    p = subprocess.run([str(exe), "-n", "5"], input=extra.tobytes(), capture_output=True, check=True)
    assert p.stdout.decode().count("P 4 -1\n") == len(frames)
    assert toolchain.run_host(exe, extra)[0] == [list(t) for t in tokens]


def test_wrong_frames_are_one_line(stage_build, device_inputs):
    out, _ = stage_build
    *_, frames, _, _ = device_inputs
    exe = out / "host" / "tc_host"
    four_channels = np.concatenate([frames, frames[..., :1]], axis=-1)
    with pytest.raises(TinyCapError, match=r"frames are 16x16x4, the encoder takes 16x16x3 uint8 RGB$"):
        toolchain.run_host(exe, four_channels)
    with pytest.raises(TinyCapError, match=r"frames are 8x8x3, the encoder takes 16x16x3 uint8 RGB$"):
        toolchain.run_host(exe, frames[:, :, :8, :8])
    with pytest.raises(TinyCapError, match=r"clips must be int8 \(N, T, D\) or uint8 \(N, T, S, S, 3\), got float32"):
        toolchain.run_host(exe, frames.astype(np.float32))


def test_encoder_of_another_dimension_is_refused(device_inputs, tmp_path):
    src, *_, frames, _, _ = device_inputs
    enc = tmp_path / "encoder_int8.tflite"
    enc.write_bytes(_tiny_encoder(16, 8, frames.reshape(-1, 16, 16, 3)))
    with pytest.raises(TinyCapError, match=r"encoder_int8.tflite: embeds to D = 8, MicroCap's frames have D = 24"):
        F.generate(src, src / "vocab.json", tmp_path / "gen", enc)
    assert not (tmp_path / "gen").exists()


def test_cortex_m7_build_matches_the_reference_under_qemu(stage_build, device_inputs):
    """The M7 image (DSP paths: conv, depthwise, FC) on camera frames: T counted tc_push_frame calls and a
    tc_caption per clip, the same tokens and int8 logits at every decoder step as the TFLM reference."""
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed (Debian package qemu-system-arm)")
    out, _ = stage_build
    *_, frames, tokens, logits = device_inputs
    plugin = toolchain.build_plugin(out.parent / "plugin")
    elf = out / "elf" / "tinycap_qemu.elf"
    res = m7.run_qemu(elf, frames.reshape(len(frames), -1), out.parent / "qemu", plugin, logits=True, calls_per_clip=5)
    assert res["tokens"] == [list(t) for t in tokens]
    for a, b in zip(res["logits"], logits):
        np.testing.assert_array_equal(a, b)
    syms = res["symbols"]
    for i in range(len(frames)):  # every push runs the encoder's convolutions, the caption the decoder
        for j in range(5):
            names = m7.segment_by_symbol(res["segments"][1 + 2 * (5 * i + j)], res["blocks"], syms)
            assert ("tc_push_frame" in names and "tc_k_depthwise3_dsp" in names) == (j < 4), (i, j)
            assert ("tc_k_argmax" in names) == (j == 4), (i, j)


def test_frames_file_of_another_channel_count_is_one_line(device_inputs, tmp_path):
    import h5py

    *_, frames, _, _ = device_inputs
    with h5py.File(tmp_path / "frames.h5", "w") as f:
        f["frames"] = np.concatenate([frames, frames[..., :1]], axis=-1)
        f["video_id"] = np.array([f"v{i}" for i in range(len(frames))], dtype="S")
        f["split"] = np.array(["test"] * len(frames), dtype="S")
    with pytest.raises(TinyCapError, match=r"frames.h5: frames must be uint8 \[V,T,S,S,3\] RGB, got uint8 \[12, 4, 16, 16, 4\]$"):
        F.device_clips(tmp_path / "frames.h5", tmp_path / "none.npz", ["test"], 16)
