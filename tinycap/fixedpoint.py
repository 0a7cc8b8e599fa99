"""TFLM's fixed-point arithmetic in Python, on Python ints, named as in TFLM (snake_case).

The Prepare() side of the int8 kernels: quantize_multiplier() turns a real scale into the int32
multiplier and shift the C kernels use, activation_range() clamps a fused activation, and
multiply_by_quantized_multiplier() (with its two halves) reproduces the kernels' requantisation
bit for bit (the code generator precomputes ADD's input terms with it).
"""

import math

import numpy as np

from tinycap.errors import TinyCapError


def _round(x):
    """TfLiteRound / std::round: half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(d):
    """QuantizeMultiplier(double) -> (int32 multiplier, shift)."""
    if d == 0.0:
        return 0, 0
    q, shift = math.frexp(d)
    qf = _round(q * (1 << 31))
    if qf == (1 << 31):
        qf //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return qf, shift


def saturating_rounding_doubling_high_mul(a, b):
    """SaturatingRoundingDoublingHighMul (gemmlowp) of two int32 values."""
    if a == b == -(1 << 31):
        return (1 << 31) - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = abs(ab + nudge) >> 31  # C division truncates toward zero
    return q if ab + nudge >= 0 else -q


def rounding_divide_by_power_of_two(x, e):
    """RoundingDivideByPOT (gemmlowp): x / 2**e, rounded half away from zero."""
    mask = (1 << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x, mult, shift):
    """MultiplyByQuantizedMultiplier, TFLM's default (double rounding), on Python ints (int32 range)."""
    left, right = max(shift, 0), max(-shift, 0)
    v = (x << left) & 0xFFFFFFFF
    v = v - (1 << 32) if v >= 1 << 31 else v
    return rounding_divide_by_power_of_two(saturating_rounding_doubling_high_mul(v, mult), right)


def activation_range(act, scale, zp, where):
    """CalculateActivationRangeQuantized for int8."""

    def q(f):
        return zp + _round(float(np.float32(f) / np.float32(scale)))

    lo, hi = -128, 127
    if act == 0:
        return lo, hi
    if act == 1:  # RELU
        return max(lo, q(0.0)), hi
    if act == 3:  # RELU6
        return max(lo, q(0.0)), min(hi, q(6.0))
    if act == 2:  # RELU_N1_TO_1
        return max(lo, q(-1.0)), min(hi, q(1.0))
    raise TinyCapError(where, f"fused activation {act} not supported by the firmware runtime")
