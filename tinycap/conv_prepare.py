"""Prepare side of the image-encoder kernels (firmware/runtime/tc_conv.h): the integer parameters of
CONV_2D, DEPTHWISE_CONV_2D, AVERAGE_POOL_2D and MEAN (global average pooling) computed from a .tflite
op exactly as TFLM's Prepare computes them (kernels/conv_common.cc, depthwise_conv_common.cc,
pooling_common.cc, reduce_common.cc; padding.h; kernel_util.cc PopulateConvolutionQuantizationParams).

Supported: int8 activations, int8 weights quantised per channel or per tensor (zero point 0),
optional int32 bias, fused NONE / RELU / RELU6 / RELU_N1_TO_1, padding SAME / VALID, any stride,
dilation 1 only, depthwise depth_multiplier 1 only (output channels == input channels). Anything
else raises TinyCapError naming the op.

tinycap.codegen lowers CONV_2D / DEPTHWISE_CONV_2D into the generated graph code with conv_kernel();
`pack()` serialises the parameters for the host harness (firmware/host/conv_main.c) the tests drive;
`cortexm_words()` packs, at build time, what the Cortex-M fast route would compute on every call (doubled
int16 weights in its order, folded biases, requantisation words: tc_conv_params.packed).
"""

import dataclasses
import struct

import numpy as np

from tinycap.errors import TinyCapError

# The fixed-point Prepare helpers; they are moving to tinycap.fixedpoint: change this one import then.
from tinycap.fixedpoint import activation_range, quantize_multiplier

KIND_CONV, KIND_DEPTHWISE, KIND_MEAN, KIND_AVERAGE_POOL = 1, 2, 3, 4
SAME, VALID = 0, 1  # tflite Padding enum


def output_size(padding, in_size, filter_size, stride):
    """TFLM ComputeOutSize (dilation 1)."""
    if padding == SAME:
        return (in_size + stride - 1) // stride
    return (in_size + stride - filter_size) // stride


def padding_offset(stride, in_size, filter_size, out_size):
    """TFLM ComputePaddingWithOffset (dilation 1): the top / left padding (the odd pixel goes to the
    bottom / right, TFLM's `offset`, which the kernels never need)."""
    total = max((out_size - 1) * stride + filter_size - in_size, 0)
    return total // 2


def _pos(n):
    return int(n)


CONV2D_CHUNK_PAIRS = 64  # TC_CONV2D_CHUNK_PAIRS (tc_conv.h)


def conv2d_scratch_bytes(k_h, k_w, in_c, pixels):
    """TC_CONV2D_SCRATCH_BYTES (tc_conv.h) of a CONV_2D with `pixels` = out_h * out_w: the int16 im2col columns
    and int32 accumulators of a chunk of output pixel pairs, one channel pair's unpacked weights and one column's
    bytes before widening, on the Cortex-M path."""
    k4 = (k_h * k_w * in_c + 3) & ~3
    chunk = min((pixels + 1) // 2, CONV2D_CHUNK_PAIRS)
    return chunk * (4 * k4 + 16) + 5 * k4


def depthwise_scratch_bytes(out_h, out_w, stride_h, stride_w):
    """TC_DEPTHWISE_SCRATCH_BYTES (tc_conv.h): 4 channels' int16 planes of the Cortex-M 3x3 depthwise path."""
    return 8 * ((out_h - 1) * stride_h + 3) * (((out_w - 1) * stride_w + 5) & ~1)


@dataclasses.dataclass
class ConvKernel:
    """tc_conv_params (+ the kind and the arrays it points to)."""

    kind: int  # KIND_CONV | KIND_DEPTHWISE
    batches: int
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    in_offset: int  # -input zero point
    out_offset: int  # output zero point
    act_min: int
    act_max: int
    weights: np.ndarray  # int8, OHWI (conv) or 1HWC (depthwise)
    bias: np.ndarray | None  # int32 [out_c]
    mult: np.ndarray  # int32 [out_c]
    shift: np.ndarray  # int32 [out_c]

    @property
    def scratch(self):
        """(bytes, C expression) of the scratch the op's Cortex-M path takes: TC_CONV2D_SCRATCH_BYTES or
        TC_DEPTHWISE_SCRATCH_BYTES with this op's arguments (tc_conv.h)."""
        if self.kind == KIND_CONV:
            args = (self.k_h, self.k_w, self.in_c, self.out_h * self.out_w)
            return conv2d_scratch_bytes(*args), f"TC_CONV2D_SCRATCH_BYTES({', '.join(map(str, args))})"
        args = (self.out_h, self.out_w, self.stride_h, self.stride_w)
        return depthwise_scratch_bytes(*args), f"TC_DEPTHWISE_SCRATCH_BYTES({', '.join(map(str, args))})"

    @property
    def macs(self):
        per_out = self.k_h * self.k_w * (self.in_c if self.kind == KIND_CONV else 1)
        return self.batches * self.out_h * self.out_w * self.out_c * per_out

    def pack(self):
        head = [
            self.kind,
            self.batches,
            self.in_h,
            self.in_w,
            self.in_c,
            self.out_h,
            self.out_w,
            self.out_c,
            self.k_h,
            self.k_w,
            self.stride_h,
            self.stride_w,
            self.pad_h,
            self.pad_w,
            self.in_offset,
            self.out_offset,
            self.act_min,
            self.act_max,
            int(self.bias is not None),
        ]
        parts = [struct.pack(f"<{len(head)}i", *head), np.ascontiguousarray(self.weights, np.int8).tobytes()]
        if self.bias is not None:
            parts.append(np.ascontiguousarray(self.bias, "<i4").tobytes())
        parts += [np.ascontiguousarray(self.mult, "<i4").tobytes(), np.ascontiguousarray(self.shift, "<i4").tobytes()]
        return b"".join(parts)


@dataclasses.dataclass
class MeanKernel:
    """tc_mean_params (tc_kernels.h) on the (outer, axis, inner) view of a MEAN over contiguous axes."""

    outer: int
    axis: int
    inner: int
    in_zp: int
    mult: int
    shift: int
    out_zp: int

    def pack(self):
        return struct.pack("<9i", KIND_MEAN, 1, self.outer, self.axis, self.inner, self.in_zp, self.mult, self.shift, self.out_zp)


@dataclasses.dataclass
class PoolKernel:
    """tc_pool_params (AVERAGE_POOL_2D)."""

    batches: int
    in_h: int
    in_w: int
    c: int
    out_h: int
    out_w: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    act_min: int
    act_max: int

    def pack(self):
        f = dataclasses.astuple(self)
        return struct.pack("<15i", KIND_AVERAGE_POOL, *f)


def _spatial(x, y, k_h, k_w, opts, where):
    """Output size and top/left padding as TFLM computes them; the graph's output shape must agree."""
    if getattr(opts, "dilationHFactor", 1) not in (0, 1) or getattr(opts, "dilationWFactor", 1) not in (0, 1):
        raise TinyCapError(where, "dilation > 1 is not supported by the firmware runtime")
    if opts.padding not in (SAME, VALID):
        raise TinyCapError(where, f"padding {opts.padding} is not SAME or VALID")
    n, in_h, in_w, _ = x.shape
    out_h = output_size(opts.padding, in_h, k_h, opts.strideH)
    out_w = output_size(opts.padding, in_w, k_w, opts.strideW)
    if tuple(y.shape[:3]) != (n, out_h, out_w):
        raise TinyCapError(where, f"output shape {y.shape} differs from TFLM's ({n}, {out_h}, {out_w}, ...)")
    return (out_h, out_w, padding_offset(opts.strideH, in_h, k_h, out_h), padding_offset(opts.strideW, in_w, k_w, out_w))


def conv_kernel(graph, op):
    """CONV_2D / DEPTHWISE_CONV_2D op of a tinycap.firmware.Graph -> ConvKernel."""
    where = f"{graph.path}: op #{op.index} {op.name}"
    x, w, y = (graph.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    b = graph.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    if x.dtype != "int8" or w.dtype != "int8" or y.dtype != "int8" or (b is not None and b.dtype != "int32"):
        raise TinyCapError(where, "only int8 activations and weights with int32 bias are supported")
    if w.data is None or (b is not None and b.data is None) or len(x.shape) != 4 or len(w.shape) != 4:
        raise TinyCapError(where, "needs 4-D NHWC input and constant weights / bias")
    if np.any(w.zero_point != 0):
        raise TinyCapError(where, "weights must be symmetric (zero point 0), as TFLM requires for int8")
    opts = op.options
    if op.name == "CONV_2D":
        kind, out_c, k_h, k_w, w_in = KIND_CONV, w.shape[0], w.shape[1], w.shape[2], w.shape[3]
        if w_in != x.shape[3]:
            raise TinyCapError(where, "grouped convolution (filter depth != input depth) is not supported")
    elif op.name == "DEPTHWISE_CONV_2D":
        kind, k_h, k_w, out_c = KIND_DEPTHWISE, w.shape[1], w.shape[2], w.shape[3]
        if out_c != x.shape[3] or getattr(opts, "depthMultiplier", 1) not in (0, 1):
            raise TinyCapError(where, "depth_multiplier must be 1 (output channels == input channels)")
    else:
        raise TinyCapError(where, "not a convolution")
    if y.shape[3] != out_c:
        raise TinyCapError(where, f"output depth {y.shape[3]} != {out_c} filters")
    out_h, out_w, pad_h, pad_w = _spatial(x, y, k_h, k_w, opts, where)
    # PopulateConvolutionQuantizationParams: per channel, double(input_scale) * double(filter_scale[c])
    # / double(output_scale), each scale a float32; a per-tensor scale is used for every channel.
    ws = np.asarray(w.scale, np.float32)
    if ws.size not in (1, out_c):
        raise TinyCapError(where, f"{ws.size} weight scales for {out_c} channels")
    ws = np.broadcast_to(ws, (out_c,))
    mults, shifts = zip(*(quantize_multiplier(float(x.s) * float(s) / float(y.s)) for s in ws))
    act = getattr(opts, "fusedActivationFunction", 0)
    act_min, act_max = activation_range(act, y.s, y.zp, where)
    return ConvKernel(
        kind,
        _pos(x.shape[0]),
        _pos(x.shape[1]),
        _pos(x.shape[2]),
        _pos(x.shape[3]),
        out_h,
        out_w,
        _pos(out_c),
        _pos(k_h),
        _pos(k_w),
        opts.strideH,
        opts.strideW,
        pad_h,
        pad_w,
        -x.zp,
        y.zp,
        act_min,
        act_max,
        np.asarray(w.data, np.int8),
        None if b is None else np.asarray(b.data, np.int32),
        np.asarray(mults, np.int32),
        np.asarray(shifts, np.int32),
    )


FAST_RIGHT_SHIFTS = (2, 22)  # requant_fast's right shifts (TC_FAST_MAX_RIGHT_SHIFT, rq_words; tc_conv_cortexm.c)


def fast_route(k: ConvKernel):
    """requant_fast() of tc_conv_cortexm.c: the Cortex-M kernels' fast requantisation applies (every accumulator
    below 2^30, right shifts 2..22, multipliers >= 0, no clamp inside the int8 range)."""
    taps = k.k_h * k.k_w * (k.in_c if k.kind == KIND_CONV else 1)
    bias = int(np.abs(k.bias.astype(np.int64)).max()) if k.bias is not None and k.bias.size else 0
    lo, hi = FAST_RIGHT_SHIFTS
    return (
        k.act_min == -128
        and k.act_max == 127
        and bool(np.all((-k.shift >= lo) & (-k.shift <= hi) & (k.mult >= 0)))
        and taps * 128 * 255 + bias < 1 << 30
    )


def _rq_words(k, c):
    """rq_words(): {mult, 2^(s - 1), 2^(32 - s)} of channel c, as int32."""
    s = int(-k.shift[c])
    return [int(k.mult[c]), 1 << (s - 1), np.int64(1 << (32 - s)).astype(np.int32)]


def _halves(lo, hi):
    """Words of two int16 (lo in the low half), as int32."""
    return ((np.asarray(lo, np.int64) & 0xFFFF) | (np.asarray(hi, np.int64) << 16)).astype(np.uint32).view(np.int32)


def cortexm_words(k: ConvKernel):
    """The words the Cortex-M fast route would otherwise compute on every call, packed at build time (the
    tc_conv_params `packed` array), or None where the op does not take that route.

    CONV_2D: per channel pair (c, c + 1; the last channel twice when out_c is odd) 10 words, {2 bias_c,
    2 bias_c+1, rq_words(c), rq_words(c + 1), out_c, out_offset}, then the pair's doubled weights as int16 in
    the columns' order (unpack_weights: per 4 taps (w0, w2), (w1, w3) of c, then of c + 1; 0 past k).
    DEPTHWISE_CONV_2D 3x3 (stride_w 1 or 2, out_w % 4 == 0: tc_k_dw3_rows): per channel 10 words, the doubled
    (w0, w1), (w1, w2) of kernel rows 0..2, 2 bias + in_offset * sum(2 w) (int32, wrapping as the C does) and
    rq_words(c)."""
    if not fast_route(k):
        return None
    bias = np.zeros(k.out_c, np.int64) if k.bias is None else k.bias.astype(np.int64)
    if k.kind == KIND_CONV:
        taps = k.k_h * k.k_w * k.in_c
        k4 = (taps + 3) & ~3
        w = np.zeros((k.out_c, k4), np.int64)
        w[:, :taps] = 2 * k.weights.reshape(k.out_c, taps).astype(np.int64)
        groups = w.reshape(k.out_c, k4 // 4, 4)
        words = []
        for c in range(0, k.out_c, 2):
            c1 = min(c + 1, k.out_c - 1)
            head = [2 * bias[c], 2 * bias[c1], *_rq_words(k, c), *_rq_words(k, c1), k.out_c, k.out_offset]
            pair = np.stack([groups[c], groups[c1]], 1)  # (k4 / 4, 2 channels, 4 taps)
            body = _halves(pair[..., [0, 1]], pair[..., [2, 3]]).reshape(-1)  # (w0, w2), (w1, w3) per channel
            words += [np.asarray(head, np.int64).astype(np.int32), body]
        return np.concatenate(words)
    if (k.k_h, k.k_w) != (3, 3) or k.stride_w not in (1, 2) or k.out_w % 4:
        return None
    w = 2 * k.weights.reshape(3, 3, k.out_c).astype(np.int64)  # (ky, kx, c)
    sum_w = w.sum((0, 1))
    bias2 = ((2 * bias + k.in_offset * sum_w) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    words = []
    for c in range(k.out_c):
        rows = [x for ky in range(3) for x in (_halves(w[ky, 0, c], w[ky, 1, c]), _halves(w[ky, 1, c], w[ky, 2, c]))]
        words.append(np.asarray([*rows, bias2[c], *_rq_words(k, c)], np.int64).astype(np.int32))
    return np.concatenate(words)


def average_pool_kernel(graph, op):
    """AVERAGE_POOL_2D -> PoolKernel (TFLM requires equal input / output quantisation: no rescale)."""
    where = f"{graph.path}: op #{op.index} {op.name}"
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if x.dtype != "int8" or y.dtype != "int8" or len(x.shape) != 4:
        raise TinyCapError(where, "only int8 NHWC is supported")
    if x.zp != y.zp or x.s != y.s:
        raise TinyCapError(where, "input and output quantisation differ (TFLM requires them equal)")
    opts = op.options
    out_h, out_w, pad_h, pad_w = _spatial(x, y, opts.filterHeight, opts.filterWidth, opts, where)
    act_min, act_max = activation_range(opts.fusedActivationFunction, y.s, y.zp, where)
    return PoolKernel(
        _pos(x.shape[0]),
        _pos(x.shape[1]),
        _pos(x.shape[2]),
        _pos(x.shape[3]),
        out_h,
        out_w,
        opts.filterHeight,
        opts.filterWidth,
        opts.strideH,
        opts.strideW,
        pad_h,
        pad_w,
        act_min,
        act_max,
    )


def mean_kernel(graph, op):
    """MEAN over contiguous axes (e.g. (1, 2) of NHWC: global average pooling), or SUM over one axis
    -> MeanKernel for tc_k_mean on the (outer, axis, inner) view. TFLM's int8 MEAN over several axes:
    one integer sum per output, minus input_zp * count, one MultiplyByQuantizedMultiplier with 1/count
    folded into the multiplier (reference_ops::QuantizedMeanOrSum) - the same as over one axis of
    length count; SUM has no 1/count."""
    where = f"{graph.path}: op #{op.index} {op.name}"
    x, ax, y = (graph.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if x.dtype != "int8" or y.dtype != "int8" or ax.data is None:
        raise TinyCapError(where, "only int8 with constant axes is supported")
    axes = sorted({int(v) % len(x.shape) for v in np.atleast_1d(ax.data)})
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise TinyCapError(where, f"axes {axes} are not contiguous")
    if op.name != "MEAN" and len(axes) != 1:
        raise TinyCapError(where, "only a single axis is supported")
    count = int(np.prod([x.shape[a] for a in axes]))
    m, sh = quantize_multiplier(float(x.s) / float(y.s))
    if op.name == "MEAN":
        fold = min(count.bit_length() - 1, 32, 31 + sh)  # 63 - CountLeadingZeros(count), clamped as TFLM
        m, sh = (m << fold) // count, sh - fold
    return MeanKernel(int(np.prod(x.shape[: axes[0]])), count, int(np.prod(x.shape[axes[-1] + 1 :])), x.zp, m, sh, y.zp)


def prepare(graph, op):
    """The kernel parameters of one supported op."""
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return conv_kernel(graph, op)
    if op.name == "AVERAGE_POOL_2D":
        return average_pool_kernel(graph, op)
    if op.name == "MEAN":
        return mean_kernel(graph, op)
    raise TinyCapError(f"{graph.path}: op #{op.index} {op.name}", "no image-encoder kernel for this op")
