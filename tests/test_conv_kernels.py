"""Image-encoder kernels (firmware/runtime/tc_conv.c, tc_conv_cortexm.c) against TFLM, bit for bit.

Host: random int8 graphs made by TF's converter (full-integer quantisation, one model per seed
holding several independent ops on one input: CONV_2D 1x1 and KxK, DEPTHWISE_CONV_2D, MEAN over
axes (1, 2), AVERAGE_POOL_2D), run in TFLM (tflite_micro.runtime); each op's parameters from
tinycap.conv_prepare, its kernel run by the host harness firmware/host/conv_main.c; every output
byte must be equal.
Cortex-M7: the DSP fast paths of CONV_2D and DEPTHWISE_CONV_2D against the portable references on
the emulated M7 (QEMU mps2-an500, firmware/m7/conv_check.c), random shapes and parameters, 0 bytes
different; instructions per MAC printed with -s (exact counts from the QEMU plugin).
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinycap import conv_prepare as P
from tinycap import m7, tflite, toolchain
from tinycap.int8 import tflm_run

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "firmware" / "runtime"
HOST_CFLAGS = toolchain.HOST_CFLAGS
M7_ARCH = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed (Debian package gcc)")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    exe = tmp_path_factory.mktemp("conv") / "conv_main"
    srcs = [ROOT / "firmware" / "host" / "conv_main.c"] + [
        RUNTIME / f for f in ("tc_conv.c", "tc_conv_cortexm.c", "tc_kernels.c")
    ]
    subprocess.run(["gcc", *HOST_CFLAGS, f"-I{RUNTIME}", *map(str, srcs), "-o", str(exe)], check=True)
    return exe


def _model(seed):
    """One int8 model: input (B, H, W, C) -> several independent ops, random shapes and settings."""
    import tensorflow as tf

    R = np.random.default_rng(seed)
    b = 2 if seed % 4 == 3 else 1
    h, w, c = (int(v) for v in R.integers(3, 12, 3))
    c = int(R.choice([1, 3, 5, 6, 7, 13])) if seed % 2 else c
    lo = float(R.uniform(-3, 0))
    hi = lo + float(R.uniform(0.5, 6))

    def conv(k, cout, stride, pad, act):
        wgt = tf.constant(R.normal(0, 1 / np.sqrt(k * k * c), (k, k, c, cout)).astype(np.float32))
        bias = tf.constant(R.normal(0, 0.5, cout).astype(np.float32))
        return lambda x: act(tf.nn.conv2d(x, wgt, stride, pad) + bias)

    def dwconv(k, stride, pad, act):
        wgt = tf.constant(R.normal(0, 1 / k, (k, k, c, 1)).astype(np.float32))
        bias = tf.constant(R.normal(0, 0.5, c).astype(np.float32))
        return lambda x: act(tf.nn.depthwise_conv2d(x, wgt, [1, stride, stride, 1], pad) + bias)

    acts = [tf.identity, tf.nn.relu, tf.nn.relu6]
    pick = lambda seq: seq[int(R.integers(len(seq)))]  # noqa: E731
    ops = [
        conv(1, int(R.integers(1, 40)), 1, "VALID", pick(acts)),  # pointwise
        conv(3, int(R.integers(1, 24)), int(R.integers(1, 3)), pick(["SAME", "VALID"]), pick(acts)),
        conv(int(R.choice([1, 3])), int(R.integers(1, 12)), 2, pick(["SAME", "VALID"]), pick(acts)),
        dwconv(3, int(R.integers(1, 3)), pick(["SAME", "VALID"]), pick(acts)),
        lambda x: tf.reduce_mean(x, axis=[1, 2], keepdims=True),
    ]
    if min(h, w) >= 3:
        k, s, pad = int(R.choice([2, 3])), int(R.integers(1, 3)), pick(["SAME", "VALID"])
        ops.append(lambda x: tf.nn.avg_pool2d(x, k, s, pad))

    @tf.function(input_signature=[tf.TensorSpec((b, h, w, c), tf.float32)])
    def f(x):
        return [op(x) for op in ops]

    def rep():
        for _ in range(20):
            yield [R.uniform(lo, hi, (b, h, w, c)).astype(np.float32)]

    conv_ = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv_.optimizations = [tf.lite.Optimize.DEFAULT]
    conv_.representative_dataset = rep
    conv_.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv_.inference_input_type = tf.int8
    conv_.inference_output_type = tf.int8
    return conv_.convert()


@needs_gcc
@pytest.mark.parametrize("seed", range(10))
def test_kernels_bit_exact_with_tflm(harness, seed):
    model = _model(seed)
    g = tflite.load_graph(model, f"seed{seed}")
    kernel_ops = [op for op in g.ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "AVERAGE_POOL_2D")]
    # every graph output comes straight from one kernel op (no QUANTIZE in between)
    assert sorted(op.outputs[0] for op in kernel_ops) == sorted(g.outputs), [op.name for op in g.ops]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN"} <= {op.name for op in kernel_ops}
    R = np.random.default_rng(100 + seed)
    x_t = g.tensors[g.inputs[0]]
    for trial in range(3):
        x = R.integers(-128, 128, x_t.shape).astype(np.int8)
        refs = tflm_run(model, [x], n_outputs=len(g.outputs))
        for op in kernel_ops:
            k = P.prepare(g, op)
            out = subprocess.run([str(harness)], input=k.pack() + x.tobytes(), capture_output=True, check=True).stdout
            ref = np.asarray(refs[g.outputs.index(op.outputs[0])]).astype(np.int8).ravel()
            got = np.frombuffer(out, np.int8)
            assert got.shape == ref.shape, (op.name, k)
            diff = np.flatnonzero(got != ref)
            assert diff.size == 0, f"seed {seed} trial {trial} {op.name} {k}: {diff.size} of {ref.size} bytes differ"


def _handmade(seed):
    """A single-op graph written directly (tinycap.tflite.build_model) with random quantisation
    the converter never produces: fused activations that really clamp (RELU / RELU6 / RELU_N1_TO_1
    with a wide output range), multipliers > 1 (shift > 0), per-tensor weight scales, no bias."""
    R = np.random.default_rng(1000 + seed)
    depthwise = seed % 2 == 1
    b, h, w, c = int(R.integers(1, 3)), *(int(v) for v in R.integers(1, 10, 2)), int(R.integers(1, 20))
    k = int(R.choice([1, 3])) if not depthwise else int(R.choice([3, 5]))
    stride, pad = int(R.integers(1, 3)), int(R.integers(0, 2))
    cout = c if depthwise else int(R.integers(1, 30))
    oh, ow = P.output_size(pad, h, k, stride), P.output_size(pad, w, k, stride)
    if min(oh, ow) < 1:
        oh, ow, pad = P.output_size(P.SAME, h, k, stride), P.output_size(P.SAME, w, k, stride), P.SAME
    taps = k * k * (1 if depthwise else c)
    act = [1, 3, 2, 0][seed % 4]
    # the output step from the activation's range (RELU6: 6.0 over 60..200 steps), the weight scales
    # so that accumulators (std ~ sqrt(taps) * 74 * 73 integer units) span ~30..120 output steps;
    # every 4th seed (RELU) a multiplier > 1 (shift > 0), most outputs then saturate
    s_in = float(R.uniform(0.01, 0.1))
    s_out = {
        0: float(R.uniform(0.005, 0.2)),
        1: float(R.uniform(0.005, 0.2)),
        3: 6 / R.uniform(60, 200),
        2: 1 / R.uniform(40, 120),
    }[act]
    target = s_out * R.uniform(30, 120)
    ws = target / (s_in * np.sqrt(taps) * 5400) * (R.uniform(0.7, 1.3, cout) if seed % 3 else 1.0)
    if seed % 4 == 0:
        ws = s_out / s_in * R.uniform(1.1, 3, cout)  # per channel multiplier > 1
    wshape = (1, k, k, cout) if depthwise else (cout, k, k, c)
    t = [
        dict(shape=(b, h, w, c), dtype="int8", scale=s_in, zp=int(R.integers(-60, 60))),
        dict(
            shape=wshape,
            dtype="int8",
            data=R.integers(-127, 128, wshape).astype(np.int8),
            scale=ws,
            zp=np.zeros(np.size(ws), int),
            qdim=3 if depthwise else 0,
        ),
        dict(
            shape=(cout,),
            dtype="int32",
            data=R.integers(-3000, 3000, cout).astype(np.int32),
            scale=s_in * np.asarray(ws),
            zp=np.zeros(np.size(ws), int),
        ),
        dict(shape=(b, oh, ow, cout), dtype="int8", scale=s_out, zp=int(R.integers(-50, 50))),
    ]
    inputs = [0, 1, -1] if seed % 5 == 0 and not depthwise else [0, 1, 2]  # TFLM crashes on a depthwise without bias
    if depthwise:
        opts = tflite.options(
            "DepthwiseConv2DOptions",
            padding=pad,
            strideW=stride,
            strideH=stride,
            depthMultiplier=1,
            fusedActivationFunction=act,
            dilationWFactor=1,
            dilationHFactor=1,
        )
        op = ("DEPTHWISE_CONV_2D", inputs, [3], opts)
    else:
        opts = tflite.options(
            "Conv2DOptions",
            padding=pad,
            strideW=stride,
            strideH=stride,
            fusedActivationFunction=act,
            dilationWFactor=1,
            dilationHFactor=1,
        )
        op = ("CONV_2D", inputs, [3], opts)
    return tflite.build_model(t, [op], [0], [3])


@needs_gcc
@pytest.mark.parametrize("seed", range(12))
def test_handmade_quantisation_bit_exact_with_tflm(harness, seed):
    model = _handmade(seed)
    g = tflite.load_graph(model, f"handmade{seed}")
    k = P.prepare(g, g.ops[0])
    R = np.random.default_rng(seed)
    for _ in range(4):
        x = R.integers(-128, 128, g.tensors[0].shape).astype(np.int8)
        ref = np.asarray(tflm_run(model, [x])[0]).astype(np.int8).ravel()
        out = subprocess.run([str(harness)], input=k.pack() + x.tobytes(), capture_output=True, check=True).stdout
        diff = np.flatnonzero(np.frombuffer(out, np.int8) != ref)
        assert diff.size == 0, f"{g.ops[0].name} {k}: {diff.size} of {ref.size} bytes differ"


def test_padding_matches_tflm_rules():
    # ComputeOutSize / ComputePaddingWithOffset for a few hand-checked cases
    assert P.output_size(P.SAME, 7, 3, 2) == 4 and P.padding_offset(2, 7, 3, 4) == 1
    assert P.output_size(P.SAME, 8, 3, 2) == 4 and P.padding_offset(2, 8, 3, 4) == 0  # total 1: all bottom
    assert P.output_size(P.VALID, 8, 3, 2) == 3 and P.padding_offset(2, 8, 3, 3) == 0
    assert P.output_size(P.SAME, 5, 1, 1) == 5 and P.padding_offset(1, 5, 1, 5) == 0


# ------------------------------------------------------------------------------ Cortex-M7 (QEMU)


@pytest.fixture(scope="module")
def m7_run(tmp_path_factory):
    """firmware/m7/conv_check.c + the conv kernels for the M7, run under QEMU with the counter."""
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")

    tmp = tmp_path_factory.mktemp("conv_m7")
    fw = ROOT / "firmware" / "m7"
    srcs = [
        fw / "startup.c",
        fw / "semihost.c",
        fw / "marker.c",
        fw / "conv_check.c",
        RUNTIME / "tc_conv.c",
        RUNTIME / "tc_conv_cortexm.c",
    ]
    elf = tmp / "conv_check.elf"
    subprocess.run(
        [
            "arm-none-eabi-gcc",
            *M7_ARCH,
            "-O2",
            "-g",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffunction-sections",
            "-fdata-sections",
            f"-I{fw}",
            f"-I{RUNTIME}",
            *map(str, srcs),
            "--specs=nano.specs",
            "-nostartfiles",
            "-Wl,--gc-sections",
            f"-L{fw}",
            "-T",
            "qemu_mps2_an500.ld",
            "-o",
            str(elf),
        ],
        check=True,
    )
    plugin = toolchain.build_plugin(tmp / "plugin")
    (tmp / "run").mkdir()
    r = m7.run_elf(elf, tmp / "run", plugin, timeout_s=120)  # raises unless the exit status (failed cases) is 0
    segments = [m7.segment_by_symbol(s, r["blocks"], r["symbols"]) for s in r["segments"]]
    return r["stdout"], segments


def instructions_per_mac(stdout, segments):
    """{bench index: (macs, conv ref, conv dsp, dw macs, depthwise ref, depthwise dsp)}: instructions
    per MAC of the benchmark shapes (segments: 4 tc_mark pairs per shape, see conv_check.c)."""
    import re

    out = {}
    for m in re.finditer(r"^bench (\d+) macs (\d+) dw_macs (\d+)$", stdout, re.M):
        i, macs, dw = (int(v) for v in m.groups())
        ref, dsp, dwr, dwd = (sum(segments[1 + 2 * (4 * i + j)].values()) for j in range(4))
        out[i] = (macs, ref / macs, dsp / macs, dw, dwr / dw, dwd / dw)
    return out


def test_cortex_m7_fast_conv_equals_reference_under_qemu(m7_run):
    import re

    stdout, segments = m7_run
    cases = [(int(a), int(b)) for a, b in re.findall(r"^case (\d+) macs \d+ diff (\d+)$", stdout, re.M)]
    dwcases = [(int(a), int(b)) for a, b in re.findall(r"^dwcase (\d+) macs \d+ diff (\d+)$", stdout, re.M)]
    assert len(cases) >= 30 and len(dwcases) >= 30, stdout  # 4 benchmark shapes + the random ones that fit
    assert all(d == 0 for _, d in cases + dwcases), stdout
    assert sum(1000 <= i < 2000 for i, _ in dwcases) >= 20, stdout  # tc_k_depthwise3_dsp's random 3x3 cases
    assert (2000, 0) in cases and (2000, 0) in dwcases, stdout  # right shifts of 15..31 (not the fast route below -22)
    assert (2001, 0) in cases and (2001, 0) in dwcases, stdout  # the fast route's bounds, right shifts 2 and 22
    ipm = instructions_per_mac(stdout, segments)
    assert len(ipm) == 4
    for i, (macs, ref, dsp, dw, dwr, dwd) in ipm.items():
        print(
            f"bench {i}: CONV_2D {macs} MACs ref {ref:.2f} dsp {dsp:.2f} instr/MAC; "
            f"DEPTHWISE_CONV_2D 3x3 {dw} MACs ref {dwr:.2f} dsp {dwd:.2f}"
        )
        assert dsp < ref
        assert dwd < dwr


@needs_gcc
def test_fast_requantisation_equals_tflm(tmp_path):
    exe = tmp_path / "requant_check"
    subprocess.run(
        ["gcc", *HOST_CFLAGS, f"-I{RUNTIME}", str(ROOT / "firmware" / "host" / "requant_check.c"), "-o", str(exe)], check=True
    )
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "bad 0", r.stdout


def test_unsupported_convolutions_fail_naming_the_op():
    from tinycap.errors import TinyCapError

    def graph(op_name, opts, wshape, cout):
        t = [
            dict(shape=(1, 6, 6, 4), dtype="int8", scale=0.05, zp=0),
            dict(shape=wshape, dtype="int8", data=np.ones(wshape, np.int8), scale=0.01, zp=0),
            dict(shape=(cout,), dtype="int32", data=np.zeros(cout, np.int32), scale=0.0005, zp=0),
            dict(shape=(1, 6, 6, cout), dtype="int8", scale=0.1, zp=0),
        ]
        return tflite.load_graph(tflite.build_model(t, [(op_name, [0, 1, 2], [3], opts)], [0], [3]), "g.tflite")

    dilated = tflite.options("Conv2DOptions", padding=P.SAME, strideW=1, strideH=1, dilationWFactor=2, dilationHFactor=2)
    g = graph("CONV_2D", dilated, (3, 3, 3, 4), 3)
    with pytest.raises(TinyCapError, match=r"op #0 CONV_2D.*dilation"):
        P.prepare(g, g.ops[0])
    multiplier2 = tflite.options(
        "DepthwiseConv2DOptions", padding=P.SAME, strideW=1, strideH=1, depthMultiplier=2, dilationWFactor=1, dilationHFactor=1
    )
    g = graph("DEPTHWISE_CONV_2D", multiplier2, (1, 3, 3, 8), 8)
    with pytest.raises(TinyCapError, match=r"op #0 DEPTHWISE_CONV_2D.*depth_multiplier"):
        P.prepare(g, g.ops[0])


def _kernel(kind, weights, bias, shift, **geometry):
    """A P.ConvKernel of a small op (the fields cortexm_words reads), quantised as the converter does."""
    out_c = len(bias)
    g = dict(batches=1, in_h=1, in_w=1, in_c=4, out_h=1, out_w=1, out_c=out_c, k_h=1, k_w=1, stride_h=1, stride_w=1)
    g.update(pad_h=0, pad_w=0, in_offset=128, out_offset=-128, act_min=-128, act_max=127)
    g.update(geometry)
    return P.ConvKernel(
        kind,
        **g,
        weights=np.asarray(weights, np.int8),
        bias=np.asarray(bias, np.int32),
        mult=np.full(out_c, 1 << 30, np.int32),
        shift=np.asarray(shift, np.int32),
    )


def test_cortexm_words_golden_conv_layout():
    """A channel pair's words: {2 bias x 2, (mult, 2^(s-1), 2^(32-s)) x 2, out_c, out_offset}, then per 4 taps the
    doubled weights as int16 pairs (w0, w2), (w1, w3) of each channel; an odd last channel pairs with itself."""
    w = [[[[1, 2, 3, 4]]], [[[5, 6, 7, 8]]], [[[-1, -2, -3, -4]]]]  # OHWI (3, 1, 1, 4)
    k = _kernel(P.KIND_CONV, w, [10, 20, 30], [-2, -3, -22])
    words = P.cortexm_words(k).astype(np.int64)

    def pair(lo, hi):
        return (lo & 0xFFFF) | (hi << 16)

    head0 = [20, 40, 1 << 30, 2, 1 << 30, 1 << 30, 4, 1 << 29, 3, -128]
    body0 = [pair(2, 6), pair(4, 8), pair(10, 14), pair(12, 16)]
    head1 = [60, 60, 1 << 30, 1 << 21, 1 << 10, 1 << 30, 1 << 21, 1 << 10, 3, -128]
    body1 = [pair(-2, -6), pair(-4, -8)] * 2
    expect = np.asarray(head0 + body0 + head1 + body1, np.int64).astype(np.uint32).view(np.int32)
    assert words.tolist() == expect.tolist()
    assert P.cortexm_words(_kernel(P.KIND_CONV, w, [10, 20, 30], [-1, -3, -22])) is None  # s = 1
    assert P.cortexm_words(_kernel(P.KIND_CONV, w, [10, 20, 30], [-2, -3, -23])) is None  # s = 23


def test_cortexm_words_golden_depthwise_layout():
    """A 3x3 depthwise channel's words: the doubled (w0, w1), (w1, w2) of kernel rows 0..2, 2 bias + in_offset *
    sum(2 w), then (mult, 2^(s-1), 2^(32-s)); only where out_w % 4 == 0 (tc_k_dw3_rows)."""
    w = np.arange(-9, 9, dtype=np.int8).reshape(1, 3, 3, 2)  # 1HWC, 2 channels
    geometry = dict(in_h=4, in_w=4, in_c=2, out_h=4, out_w=4, k_h=3, k_w=3, pad_h=1, pad_w=1)
    k = _kernel(P.KIND_DEPTHWISE, w, [7, -7], [-5, -6], **geometry)
    words = P.cortexm_words(k).astype(np.int64).reshape(2, 10)
    c = 1
    taps = 2 * w[0, :, :, c].astype(np.int64)
    rows = [((a & 0xFFFF) | (b << 16)) & 0xFFFFFFFF for t in taps for a, b in ((t[0], t[1]), (t[1], t[2]))]
    assert [x & 0xFFFFFFFF for x in words[c, :6]] == rows  # W01, W12 of kernel rows 0, 1, 2
    assert words[c, 6] == 2 * -7 + 128 * taps.sum()
    assert words[c, 7:].tolist() == [1 << 30, 1 << 5, 1 << 26]
    assert P.cortexm_words(_kernel(P.KIND_DEPTHWISE, w, [7, -7], [-5, -6], **{**geometry, "out_w": 6})) is None
