"""distill_encoder: a small CNN student of the pipeline's CLIP image tower, for the microcontroller.

The device should embed raw camera frames itself instead of receiving CLIP embeddings from a host.
The student is MobileNetV1 / MCUNet-style:

    pixels uint8 (B, S, S, 3), NHWC as the camera delivers them
    x = (pixels - 128) / 255                     fixed normalisation, part of the model (no params)
    stem      conv 3x3, stride 2, C0 channels, BatchNorm, ReLU6
    blocks    per [C, s]: depthwise 3x3 stride s + BN + ReLU6, pointwise 1x1 -> C + BN + ReLU6
    pool      global average over H, W                                     (B, C_last)
    head      linear C_last -> D, then L2-normalised                       (B, D)

Padding is TensorFlow's SAME (stride 2 on an even side pads one pixel after, none before), done
explicitly here so the TF mirror needs no PAD op. The normalisation is (p - 128) / 255 rather than
p / 255 - 0.5 (they differ by 0.5/255) so that the int8 graph's input is q = p - 128 = p XOR 0x80
with scale 1 and zero point 0, and zero padding in the normalised domain is q = 0 exactly: the 1/255
folds into the stem's weights. BatchNorm is folded into the convolutions for export.

MACs per frame (multiply-accumulates, with TF SAME output side n_out = ceil(n_in / stride)):
    conv k x k, C_in -> C_out:  n_out^2 * C_out * C_in * k^2
    depthwise k x k on C:       n_out^2 * C * k^2
    pointwise C_in -> C_out:    n_out^2 * C_in * C_out
    linear C -> D:              C * D
(biases, ReLU6, the average pool and the L2 norm are not MACs and are left out).

Training: every train frame against its CLIP frame embedding (data/embeddings/clip.h5 `frame_emb`,
the teacher), loss = mean(1 - cos(student, teacher)) + contrastive_weight * InfoNCE over the batch
(student frame i must be closer to teacher frame i than to the other teacher frames of the batch,
both directions, temperature fixed). The epoch kept is the one with the best mean val cosine.
Augmentation: none by default, optionally small random translations (`encoder.shift` pixels, edge
pixels repeated); never flips or crops that move the object far: the teacher embeds an object's
position and the captions' actions (moves left / right) are read from how it changes over frames,
so a flipped frame would need a different target.

Input size: `encoder.input_size` may be smaller than `frames.size`; frames are then resized here
(bilinear with antialiasing, rounded back to uint8) and the device graph takes input_size pixels: a
camera delivers that size directly (sensor binning / ISP scaler).

int8: the student is rebuilt in TensorFlow with its trained (folded) weights, checked against
PyTorch in float, converted full-integer (int8 weights per channel, int8 activations, int8 input
q = p - 128, int8 output after L2_NORMALIZATION) with train frames as representative data, and run
through the TFLM runtime (tflite_micro.runtime, the device's kernels) on val frames.
"""

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tinycap import checkpoint, retrieval
from tinycap.embeddings import load_embeddings
from tinycap.errors import TinyCapError
from tinycap.frames_file import read_frames_header
from tinycap.int8 import pixels_to_q
from tinycap.io import atomic_path

log = logging.getLogger(__name__)
# tf.lite.Interpreter (also used inside the converter) warns it moves to ai_edge_litert; it is the
# reference int8 runtime here all the same
warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")

CHECKPOINT_FILE = "encoder.pt"
EMBEDDINGS_FILE = "student_emb.h5"
TFLITE_FILE = "encoder_int8.tflite"
FORBIDDEN_OPS = ("QUANTIZE", "DEQUANTIZE")  # the graph must be integer from the pixels to the embedding


@dataclass
class EncoderParams:  # params.yaml `encoder:` (distill_encoder)
    input_size: int = 32  # side of the student's input, <= frames.size (smaller: frames resized in the stage)
    stem: int = 24  # channels of the stride-2 3x3 stem conv
    blocks: list[list[int]] = field(default_factory=lambda: [[48, 1], [64, 2], [64, 1], [128, 2], [128, 1]])  # [channels, stride]
    dim: int | None = None  # embedding size; null = the teacher's D (clip.h5 frame_emb), any other value must equal it
    epochs: int = 15  # passes over all train frames; the epoch with the best val cosine is kept
    batch_size: int = 64  # frames per step
    lr: float = 0.004  # AdamW peak, linear warmup then cosine decay
    weight_decay: float = 0.0001
    contrastive_weight: float = 0.0  # weight of the in-batch InfoNCE against the teacher embeddings (0: cosine only)
    temperature: float = 0.05  # InfoNCE temperature
    shift: int = 0  # augmentation: random translation of up to this many pixels (0: none)
    int8: bool = True  # also export encoder_int8.tflite and check it in TFLM
    calibration_frames: int = 300  # train frames (spread over the split) calibrating the int8 ranges
    tflm_frames: int = 250  # val frames run through TFLM for the int8 figures


@dataclass
class EncoderConfig:  # the architecture saved in the checkpoint
    input_size: int = 64
    stem: int = 16
    blocks: list = field(default_factory=lambda: [[32, 1], [48, 2], [48, 1], [96, 2], [96, 1]])
    dim: int = 128
    stem_stride: int = 2


# ----------------------------------------------------------------------------- the model


def same_padding(n, k, s):
    """TF SAME padding of one side of length n: (before, after, n_out)."""
    n_out = -(-n // s)
    total = max((n_out - 1) * s + k - n, 0)
    return total // 2, total - total // 2, n_out


class ConvBNReLU(nn.Module):
    """k x k conv (groups = channels for depthwise), TF SAME padding, BatchNorm, ReLU6."""

    def __init__(self, c_in, c_out, k, stride, depthwise=False):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = nn.Conv2d(c_in, c_out, k, stride, 0, groups=c_in if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):  # x (B, C, H, W)
        top, bottom, _ = same_padding(x.shape[2], self.k, self.stride)
        left, right, _ = same_padding(x.shape[3], self.k, self.stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.relu6(self.bn(self.conv(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        layers = [ConvBNReLU(3, cfg.stem, 3, cfg.stem_stride)]
        c = cfg.stem
        for out, stride in cfg.blocks:
            layers += [ConvBNReLU(c, c, 3, stride, depthwise=True), ConvBNReLU(c, out, 1, 1)]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, cfg.dim)

    def forward(self, pixels):
        """pixels (B, S, S, 3) uint8 (or float pixel values 0..255) -> L2-normalised (B, D)."""
        x = (pixels.float() - 128.0) / 255.0  # (B, S, S, 3), the model's fixed normalisation
        x = self.features(x.permute(0, 3, 1, 2))  # (B, C, S', S')
        return F.normalize(self.head(x.mean((2, 3))), dim=-1)  # (B, D)


def check_config(cfg, where="encoder config"):
    bad = [
        b
        for b in cfg.blocks
        if not (
            isinstance(b, (list, tuple))
            and len(b) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in b)
            and b[0] > 0
            and b[1] in (1, 2)
        )
    ]
    if bad:
        raise TinyCapError(where, f"blocks must be [channels > 0, stride 1|2] pairs, got {bad[0]!r}")
    for name in ("input_size", "stem", "dim", "stem_stride"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value <= 0:
            raise TinyCapError(where, f"{name} must be a positive int, got {value!r}")


def layer_shapes(cfg):
    """Per layer: (kind, k, stride, c_in, c_out, n_out) with kind conv | depthwise | pointwise | linear."""
    n, out = cfg.input_size, []
    n = same_padding(n, 3, cfg.stem_stride)[2]
    out.append(("conv", 3, cfg.stem_stride, 3, cfg.stem, n))
    c = cfg.stem
    for channels, stride in cfg.blocks:
        n = same_padding(n, 3, stride)[2]
        out.append(("depthwise", 3, stride, c, c, n))
        out.append(("pointwise", 1, 1, c, channels, n))
        c = channels
    out.append(("linear", 1, 1, c, cfg.dim, 1))
    return out


def count_macs(cfg):
    """Multiply-accumulates per frame (formula in the module docstring)."""
    total = 0
    for kind, k, _, c_in, c_out, n in layer_shapes(cfg):
        if kind == "conv":
            total += n * n * c_out * c_in * k * k
        elif kind == "depthwise":
            total += n * n * c_in * k * k
        elif kind == "pointwise":
            total += n * n * c_in * c_out
        else:
            total += c_in * c_out
    return total


def count_params_folded(cfg):
    """Weights + biases on the device (BatchNorm folded into conv biases)."""
    total = 0
    for kind, k, _, c_in, c_out, _ in layer_shapes(cfg):
        weights = c_in * k * k if kind == "depthwise" else c_in * c_out * k * k
        total += weights + c_out
    return total


def encoder_checkpoint(model, **extra):
    return {"model": model.state_dict(), "config": asdict(model.cfg), **extra}


def load_encoder(path):
    """Rebuild the student saved by distill_encoder (data/encoder/encoder.pt), in eval mode."""
    return checkpoint.load(path, EncoderConfig, Encoder, "student encoder")[0]


# ----------------------------------------------------------------------------- frames


def resize_frames(frames, size):
    """uint8 (N, S, S, 3) -> uint8 (N, size, size, 3): bilinear with antialiasing, rounded (identity when S == size)."""
    if frames.shape[1] == size:
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def check_frames_file(path, frames_size, emb):
    """One line naming frames.h5 unless it is a valid frames file (read_frames_header) with S = frames.size and the
    videos of clip.h5."""
    header = read_frames_header(path)
    shape, video_id = header.shape, list(header.video_id)
    if shape[2] != frames_size or shape[3] != frames_size:
        raise TinyCapError(
            path, f"frames are {shape[2]}x{shape[3]} px but params frames.size is {frames_size} (rerun sample_frames)"
        )
    if list(shape[:2]) != list(emb.frame_emb.shape[:2]) or video_id != list(emb.video_id):
        raise TinyCapError(
            path,
            f"videos/frames {list(shape[:2])} do not match the teacher embeddings "
            f"{list(emb.frame_emb.shape[:2])} (rerun clip_embed)",
        )
    return shape


def read_frames(path, rows, size, chunk=256):
    """uint8 (len(rows), T, size, size, 3): the frames of video `rows` (sorted indices), resized to `size`."""
    rows = np.asarray(rows)
    out = []
    with h5py.File(path, "r") as f:
        ds = f["frames"]
        T = ds.shape[1]
        runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []  # consecutive rows
        for run in runs:
            for a in range(0, len(run), chunk):
                block = ds[run[a] : run[a] + len(run[a : a + chunk])]  # (b, T, S, S, 3): one contiguous read
                small = resize_frames(block.reshape(-1, *block.shape[2:]), size)
                out.append(small.reshape(len(block), T, size, size, 3))
    return np.concatenate(out) if out else np.zeros((0, 0, size, size, 3), np.uint8)


def spread(rows, n):
    """n items of `rows` spread evenly (deterministic)."""
    rows = np.asarray(rows)
    if n >= len(rows):
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]


# ----------------------------------------------------------------------------- training


def distill_loss(student, teacher, contrastive_weight, temperature):
    """student, teacher (B, D) L2-normalised -> mean(1 - cos) + w * symmetric InfoNCE(student, teacher)."""
    loss = (1 - (student * teacher).sum(-1)).mean()
    if contrastive_weight > 0 and len(student) > 1:
        logits = student @ teacher.T / temperature  # (B, B)
        labels = torch.arange(len(student))
        loss = loss + contrastive_weight * 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    return loss


def translate(pixels, shift, gen):
    """Random translation of each frame by up to `shift` pixels (edges repeated). pixels (B, S, S, 3) uint8."""
    if shift <= 0:
        return pixels
    B, S = pixels.shape[:2]
    padded = F.pad(pixels.permute(0, 3, 1, 2).float(), (shift, shift, shift, shift), mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, B), generator=gen)
    out = torch.stack([padded[b, :, dy[b] : dy[b] + S, dx[b] : dx[b] + S] for b in range(B)])
    return out.permute(0, 2, 3, 1)


@torch.inference_mode()
def embed_pixels(model, pixels, batch_size=256):
    """uint8 (N, S, S, 3) -> float32 (N, D) L2-normalised, eval mode."""
    was = model.training
    model.eval()
    out = [
        model(torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch_size]))).numpy()
        for i in range(0, len(pixels), batch_size)
    ]
    model.train(was)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.cfg.dim), np.float32)


def _lr_at(step, total, peak):
    warmup = max(1, min(100, total // 20))
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(model, pixels, targets, val_pixels, val_targets, p: EncoderParams, seed=0):
    """Fit `model` to the teacher: pixels uint8 (N, S, S, 3), targets (N, D). Keeps the epoch with the best
    mean val cosine. Returns a dict (best_epoch, val_cosine per epoch, steps, train_seconds, start_val_cosine)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(pixels), torch.from_numpy(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = math.ceil(len(x) / p.batch_size)
    total = steps_per_epoch * p.epochs
    start = float((embed_pixels(model, val_pixels) * val_targets).sum(1).mean()) if len(val_pixels) else None
    history, best, best_state, step = [], -math.inf, None, 0
    t0 = time.time()
    for epoch in range(p.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * p.batch_size : (i + 1) * p.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two frames
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, p.lr)
            loss = distill_loss(model(translate(x[idx], p.shift, gen)), y[idx], p.contrastive_weight, p.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        val = float((embed_pixels(model, val_pixels) * val_targets).sum(1).mean()) if len(val_pixels) else -float(epoch)
        history.append(round(val, 5))
        log.info(
            "epoch %d loss %.4f val cosine %.4f (%.0f s)",
            epoch + 1,
            np.mean(losses) if losses else float("nan"),
            val,
            time.time() - t0,
        )
        if val > best:
            best, best_epoch = val, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_seconds = time.time() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "best_epoch": best_epoch if best_state is not None else 0,
        "val_cosine_per_epoch": history,
        "steps": step,
        "train_seconds": train_seconds,
        "start_val_cosine": start,
    }


# ----------------------------------------------------------------------------- TensorFlow mirror and int8


def folded_layers(model):
    """[(kind, weight in TF layout, bias, stride)] with BatchNorm folded in and the 1/255 of the
    normalisation folded into the stem (its input is q = pixel - 128). Head last: ("linear", (C, D), (D,), 1)."""
    out = []
    for i, layer in enumerate(model.features):
        w = layer.conv.weight.detach().double()  # (O, I/groups, k, k)
        bn = layer.bn
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (O,)
        bias = bn.bias.detach().double() - bn.running_mean.double() * scale
        w = w * scale[:, None, None, None]
        if i == 0:
            w = w / 255.0
        if layer.conv.groups > 1:
            out.append(("depthwise", w.permute(2, 3, 0, 1).numpy(), bias.numpy(), layer.stride))  # (k, k, C, 1)
        else:
            out.append(("conv", w.permute(2, 3, 1, 0).numpy(), bias.numpy(), layer.stride))  # (k, k, I, O)
    out.append(("linear", model.head.weight.detach().double().T.numpy(), model.head.bias.detach().double().numpy(), 1))
    return out


class TFEncoder:
    """The student in TensorFlow ops, input q = pixel - 128 as float (B, S, S, 3) -> L2-normalised (B, D)."""

    def __init__(self, model):
        import tensorflow as tf

        self.tf = tf
        self.size = model.cfg.input_size
        self.layers = [
            (kind, tf.constant(w.astype(np.float32)), tf.constant(b.astype(np.float32)), s)
            for kind, w, b, s in folded_layers(model)
        ]

    def features(self, q):
        """q (B, S, S, 3) -> the last block's feature map (B, S', S', C)."""
        tf = self.tf
        x = q
        for kind, w, b, s in self.layers[:-1]:
            if kind == "conv":
                x = tf.nn.relu6(tf.nn.conv2d(x, w, strides=s, padding="SAME") + b)
            else:
                x = tf.nn.relu6(tf.nn.depthwise_conv2d(x, w, strides=[1, s, s, 1], padding="SAME") + b)
        return x

    def __call__(self, q):
        _, w, b, _ = self.layers[-1]
        x = self.tf.reduce_mean(self.features(q), axis=[1, 2])  # (B, C)
        return self.tf.math.l2_normalize(self.tf.matmul(x, w) + b, axis=-1)  # (B, D)

    def concrete(self):
        tf = self.tf
        spec = tf.TensorSpec([1, self.size, self.size, 3], tf.float32, name="pixels")
        # autograph=False: plain Python loops only; AutoGraph would re-read this file's source at trace time
        return tf.function(lambda pixels: {"embedding": self(pixels)}, autograph=False).get_concrete_function(spec)


def convert_int8(mirror, calibration):
    """Full-integer .tflite bytes: int8 input q = pixel - 128, int8 output; calibration uint8 (N, S, S, 3).
    Returns (bytes, pinned): pinned when the calibration frames lacked pixel 0 or 255 and two pixels of the
    first frame were set to them, so the input keeps scale 1 and zero point 0."""
    import tensorflow as tf

    q = pixels_to_q(calibration).astype(np.float32)
    pinned = bool(q.min() > -128 or q.max() < 127)
    if pinned:  # pin the input range to the full pixel range (scale 1, zero point 0)
        q[0, 0, 0, 0], q[0, 0, 1, 0] = -128.0, 127.0
    conv = tf.lite.TFLiteConverter.from_concrete_functions([mirror.concrete()], tf.Module())
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ({"pixels": q[i : i + 1]} for i in range(len(q)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with warnings.catch_warnings():  # the filter above, also under pytest (which resets filters)
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        return conv.convert(), pinned


def _tflite_interpreter(data):
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter(model_content=data)


def graph_info(data):
    """ops (sorted builtin names) and input/output (scale, zero_point, dtype) of a .tflite model."""
    it = _tflite_interpreter(data)
    ops = sorted({op["op_name"] for op in it._get_ops_details()})
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    io = {
        name: {
            "scale": float(d["quantization"][0]),
            "zero_point": int(d["quantization"][1]),
            "dtype": np.dtype(d["dtype"]).name,
            "shape": [int(s) for s in d["shape"]],
        }
        for name, d in (("input", inp), ("output", out))
    }
    return ops, io


def arena_bound(cfg):
    """A generous TFLM arena for the host run: 4x the largest in+out activation pair plus 64 KiB."""
    n, c, biggest = cfg.input_size, 3, 0
    for _, _, _, _, c_out, n_out in layer_shapes(cfg):
        biggest = max(biggest, n * n * c + n_out * n_out * c_out)
        n, c = n_out, c_out
    return 4 * biggest + (64 << 10)


def run_tflm(data, pixels, cfg):
    """The int8 graph in the TFLM runtime, frame by frame: uint8 (N, S, S, 3) -> dequantised float (N, D)."""
    from tflite_micro import runtime

    _, io = graph_info(data)
    it = runtime.Interpreter.from_bytes(data, arena_size=arena_bound(cfg))
    scale, zp = io["output"]["scale"], io["output"]["zero_point"]
    out = []
    for q in pixels_to_q(pixels):
        it.set_input(q[None], 0)
        it.invoke()
        y = np.array(it.get_output(0), np.float32)
        if y.shape != (1, cfg.dim):
            raise TinyCapError(
                "encoder int8 graph",
                f"TFLM output has shape {list(y.shape)}, expected [1, {cfg.dim}] (tf.lite reads {io['output']['shape']})",
            )
        out.append((y[0] - zp) * scale)
    return np.stack(out) if out else np.zeros((0, cfg.dim), np.float32)


def cosine(a, b):
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def export_int8(model, calibration, val_pixels, val_teacher):
    """Mirror parity, conversion, op check and TFLM run. Returns (tflite bytes, metrics dict)."""
    mirror = TFEncoder(model)
    probe = val_pixels[:16]
    torch_emb = embed_pixels(model, probe)
    tf_emb = mirror(pixels_to_q(probe).astype(np.float32)).numpy()
    parity = float(np.abs(torch_emb - tf_emb).max()) if len(probe) else None
    if parity is not None and parity > 1e-3:
        raise TinyCapError("encoder TF mirror", f"float parity with PyTorch failed: max |diff| {parity:.2e} > 1e-3")
    data, pinned = convert_int8(mirror, calibration)
    ops, io = graph_info(data)
    inside = sorted(set(ops) & set(FORBIDDEN_OPS))
    if inside:
        raise TinyCapError("encoder int8 graph", f"contains {', '.join(inside)}: not integer end to end")
    t0 = time.time()
    tflm = run_tflm(data, val_pixels, model.cfg)
    tflm_seconds = time.time() - t0
    student = embed_pixels(model, val_pixels)
    return data, {
        "int8_bytes": len(data),
        "ops": ops,
        "input_quantization": io["input"],
        "input_range_pinned": pinned,
        "output_quantization": io["output"],
        "float_parity_max_abs": parity,
        "tflm_frames": len(val_pixels),
        "tflm_cosine_to_float_student": round(float(cosine(tflm, student).mean()), 5),
        "tflm_min_cosine_to_float_student": round(float(cosine(tflm, student).min()), 5),
        "tflm_cosine_to_teacher": round(float(cosine(tflm, val_teacher).mean()), 5),
        "float_cosine_to_teacher_same_frames": round(float(cosine(student, val_teacher).mean()), 5),
        "tflm_host_ms_per_frame": round(1000 * tflm_seconds / max(1, len(val_pixels)), 2),
    }


# ----------------------------------------------------------------------------- the distill_encoder stage


def resolve_config(p: EncoderParams, teacher_dim, frames_size, emb_path):
    """EncoderConfig from params and the teacher; one line when they disagree."""
    if p.dim is not None and p.dim != teacher_dim:
        raise TinyCapError(
            "params.yaml: encoder.dim",
            f"{p.dim} but the teacher embeddings in {emb_path} have D = {teacher_dim} (set encoder.dim: null or {teacher_dim})",
        )
    if p.input_size > frames_size:
        raise TinyCapError(
            "params.yaml: encoder.input_size",
            f"{p.input_size} is larger than frames.size {frames_size} (the student only downsizes)",
        )
    for name in ("epochs", "batch_size", "calibration_frames", "tflm_frames"):
        if getattr(p, name) < (0 if name == "epochs" else 1):
            raise TinyCapError(f"params.yaml: encoder.{name}", f"must be positive, got {getattr(p, name)}")
    cfg = EncoderConfig(input_size=p.input_size, stem=p.stem, blocks=[list(b) for b in p.blocks], dim=teacher_dim)
    check_config(cfg, "params.yaml: encoder")
    return cfg


def run(frames_path, emb_path, out_dir, p: EncoderParams, frames_size, seed=0):
    """The `distill_encoder` stage: train the student, write out_dir/{encoder.pt, student_emb.h5,
    encoder_int8.tflite} atomically; return the metrics."""
    emb = load_embeddings(emb_path, need_text=True)
    V, T, D = emb.frame_emb.shape
    cfg = resolve_config(p, D, frames_size, emb_path)
    check_frames_file(frames_path, frames_size, emb)
    train_rows, val_rows = emb.videos("train", emb_path), emb.videos("val", emb_path)
    torch.manual_seed(seed)
    model = Encoder(cfg)

    S = cfg.input_size
    train_pix = read_frames(frames_path, train_rows, S).reshape(-1, S, S, 3)
    val_pix = read_frames(frames_path, val_rows, S).reshape(-1, S, S, 3)
    train_t = emb.frame_emb[train_rows].reshape(-1, D)
    val_t = emb.frame_emb[val_rows].reshape(-1, D)
    log.info(
        "student: %d params, %d MACs/frame, %d train / %d val frames of %dx%d",
        sum(x.numel() for x in model.parameters()),
        count_macs(cfg),
        len(train_pix),
        len(val_pix),
        S,
        S,
    )
    fit = train(model, train_pix, train_t, val_pix, val_t, p, seed)

    student = np.zeros((V, T, D), np.float32)  # every clip, read in chunks (224 px frames do not fit at once)
    for a in range(0, V, 512):
        rows = np.arange(a, min(V, a + 512))
        student[rows] = embed_pixels(model, read_frames(frames_path, rows, S).reshape(-1, S, S, 3)).reshape(-1, T, D)

    metrics = {
        "params_count": sum(x.numel() for x in model.parameters()),
        "params_count_folded": count_params_folded(cfg),
        "macs_per_frame": count_macs(cfg),
        "input_size": S,
        "frames_size": frames_size,
        "embed_dim": D,
        "architecture": asdict(cfg),
        "train_frames": len(train_pix),
        "epochs": p.epochs,
        "best_epoch": fit["best_epoch"],
        "val_cosine_per_epoch": fit["val_cosine_per_epoch"],
        "start_val_cosine": fit["start_val_cosine"],
        "train_seconds": round(fit["train_seconds"], 1),
    }
    for split in ("val", "test", "novel"):
        rows = np.flatnonzero(emb.split == split)
        if not len(rows):
            continue
        cos = cosine(student[rows], emb.frame_emb[rows])
        entry = {"cosine_to_teacher": round(float(cos.mean()), 5)}
        for name, frames in (("student", student), ("clip", emb.frame_emb)):
            r = retrieval.split_metrics(frames.mean(1), emb.text_emb, emb.caption_video, rows)
            entry[name] = {k: r[k] for k in ("t2v_R@1", "t2v_R@5", "n_videos", "n_captions")}
            if emb.order_dependent is not None:
                entry[name]["order_dependent_forward_%"] = forward_preference(frames, emb, rows)
        metrics[split] = entry

    tflite = None
    if p.int8:
        calibration = train_pix[spread(np.arange(len(train_pix)), p.calibration_frames)]
        pick = spread(np.arange(len(val_pix)), p.tflm_frames)
        tflite, int8_metrics = export_int8(model, calibration, val_pix[pick], val_t[pick])
        metrics["int8"] = int8_metrics
    metrics["method"] = {
        "params_count": "trainable PyTorch parameters (BatchNorm gamma/beta included); params_count_folded: "
        "weights + biases of the exported graph after folding BatchNorm",
        "macs_per_frame": "counted from the architecture: conv n_out^2*C_out*C_in*k^2, depthwise n_out^2*C*k^2, "
        "pointwise n_out^2*C_in*C_out, linear C*D (TF SAME, n_out = ceil(n_in/stride)); pooling, "
        "biases, activations and the L2 norm not counted",
        "cosine_to_teacher": "mean over every frame of the split of cos(student frame embedding, CLIP frame_emb)",
        "retrieval": "text->video within the split: CLIP caption text_emb against the mean of the L2-normalised "
        "frame embeddings of each clip, student vs CLIP's own (tinycap.retrieval, R@K in %); "
        "order_dependent_forward_%: share of the captions of order-dependent clips closer to the "
        "late-weighted (weights 0..T-1) than to the early-weighted pooling of the clip's frames (50 = blind "
        "to frame order, as in metrics/clip.json)",
        "epoch": "the epoch with the best mean val cosine is kept (test never used for selection)",
        "train_seconds": f"wall time of the training loop with {torch.get_num_threads()} torch thread(s), "
        "excluding reading frames and the int8 export",
        "int8": "folded student rebuilt in TF (float parity: max |diff| of embeddings vs PyTorch on 16 val frames), "
        "full-integer PTQ calibrated on calibration_frames train frames spread over the split, int8 input = "
        "pixel - 128 (scale 1, zero point 0), run frame by frame in tflite_micro.runtime on tflm_frames val "
        "frames spread over the split; cosines of its dequantised output to the float student and CLIP",
    }

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        torch.save(
            encoder_checkpoint(
                model,
                step=fit["steps"],
                epoch=fit["best_epoch"],
                seed=seed,
                val_cosine=metrics.get("val", {}).get("cosine_to_teacher"),
            ),
            tmp / CHECKPOINT_FILE,
        )
        write_student_embeddings(tmp / EMBEDDINGS_FILE, student, emb_path)
        if tflite is not None:
            (tmp / TFLITE_FILE).write_bytes(tflite)
    log.info("student val cosine %s, MACs/frame %d", metrics.get("val", {}).get("cosine_to_teacher"), metrics["macs_per_frame"])
    return metrics


def forward_preference(frames, emb, rows):
    """% of the captions of order-dependent clips in `rows` closer to the late-weighted than to the early-weighted
    pooling of their clip's frames (clip_train's order measure; 50 = frame embeddings blind to order)."""
    T = frames.shape[1]
    caps = np.flatnonzero(np.isin(emb.caption_video, rows) & emb.order_dependent[emb.caption_video])
    if T < 2 or not len(caps):
        return None
    late = np.arange(T) / (T * (T - 1) / 2)  # (T,) sums to 1, weights the end
    diff = np.einsum("t,ctd->cd", late - late[::-1], frames[emb.caption_video[caps]])  # (n, D) late minus early
    return round(100.0 * float(((emb.text_emb[caps] * diff).sum(1) > 0).mean()), 2)


def write_student_embeddings(path, student, emb_path):
    """student_emb.h5: clip.h5's schema with the student's frame_emb; captions, CLIP's text_emb and
    the per-video attributes copied, so tinycap.embeddings.load_embeddings reads it like clip.h5."""
    with h5py.File(emb_path, "r") as src, h5py.File(path, "w") as f:
        f["frame_emb"] = student
        for key in ("video_id", "split", "caption", "caption_video", "text_emb", "action", "order_dependent"):
            if key in src:
                src.copy(src[key], f, key)
        for key, value in src.attrs.items():
            f.attrs[key] = value
        f.attrs["model"] = "distill_encoder student"
