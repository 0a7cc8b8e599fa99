"""quantize_int8: MicroCap rebuilt in TensorFlow, full-integer PTQ, and quality through real TFLM.

The device runs two graphs (batch 1), both mirrors of tinycap.microcap.MicroCap:

  pooler   frames int8 (1, T, D) -> h0 (1, H), context (1, 3H), weights (1, T) [attention only]
             c = sum_t (w_t + F_t) * x_t: attention weights w plus the temporal filter F
                 (mean pool: w = 1/T, no weights output; without the filter: MEAN)
             c += W2 tanh(W1 reshape(frames, (1, T*D)) + b1) + b2   the temporal MLP, when there is one
             h0 = tanh(init_h(c));  context = c @ W_xc^T + b_x   (the constant part of x_proj)
  decoder  token int32 (1,), h (1, H), context (1, 3H) -> logits (1, V), h_new (1, H)
             (int8 logits: the window [lo, hi] of the float ones minus lo, see pinned_ranges)
             gx = gather(embed, token) @ W_xe^T + context;  gh = h_proj(h)
             r, z = sigmoid(gx_rz + gh_rz);  n = tanh(gx_n + r * gh_n);  h_new = n + z * (h - n)

The int8 tensors the device loop passes from one graph to the next carry identical quantisation,
so it copies them without requantising (checked at export, recorded in quant.json):
  h0, h, h_new   scale 1/128, zero point 0 (TANH's fixed output parameters): fake-quant ops pin them
                 on the outputs h0 and h_new; the input h gets them from calibration data whose range
                 is made exactly [-1, 127/128] (pin_h_range).
  context        the range of the decoder's calibration contexts (every train clip's first step
                 included), pinned with a fake-quant op on the pooler's context output.
(A fake-quant op on a graph *input* does not work: the converter then calibrates the tensor after
it separately and inserts QUANTIZE/DEQUANTIZE, which the export refuses.)

The float mirror is checked against PyTorch on real inputs; the int8 graphs are calibrated on real
training clips and on real decoder states (teacher-forced reference captions and the float model's
own greedy decoding), then decoded greedily in the TFLM runtime (the kernels the device runs;
tinycap.int8). Every quantisation choice (pinned ranges, logits window, context band, MLP clip) is
made and checked on train and val clips only; test and novel clips give the CIDEr drop of record.
"""

import dataclasses
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinycap import microcap
from tinycap.embeddings import load_embeddings
from tinycap.encoder import check_frames_file, read_frames
from tinycap.errors import TinyCapError
from tinycap.int8 import (
    DECODER,
    POOLER,
    DeviceDecoder,
    Int8Decoder,
    check_shared_quant,
    device_reference,
    measure_arena,
    write_reference,
)
from tinycap.io import atomic_path, write_json
from tinycap.metrics import cider_per_clip, paired_drop
from tinycap.parallel import in_forked_process
from tinycap.tflite import io_details, model_ops
from tinycap.vocab import BOS, EOS
from tinycap.vocab import load as load_vocab

log = logging.getLogger(__name__)
# tf.lite.Interpreter (also used inside the converter) warns it moves to ai_edge_litert; it is the
# reference int8 runtime here all the same
warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")

DEVICE_REFERENCE = "device_tflm.npz"  # the device path's TFLM tokens + int8 logits (test and novel clips)
# Share of the device-path clips run in a forked child: the parent runs the rest after its three host decoders
# (measured here per clip: device path 10.4 ms, TFLM + tf.lite int8 + tf.lite fp32 decoders 2.3 ms together).
DEVICE_SHARE = 0.6
DEVICE_CAPTIONS = "captions_device.json"
H_QUANT = (1.0 / 128.0, 0)  # int8 (scale, zero point) of h0, h and h_new: TFLite's fixed TANH output params
H_RANGE = (-1.0, 127.0 / 128.0)  # the float range that (scale, zero point) covers, as fake-quant min/max

# Builtin ops the tflite-micro runtime registers (the Register_* kernels of tflite_micro's _runtime.so,
# tflite-micro 0.dev20261023). SELECT (what a Keras Embedding brings) is not among them.
TFLM_OPS = frozenset(
    "ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND "
    "BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CIRCULAR_BUFFER CONCATENATION CONV_2D COS CUMSUM "
    "DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DETECTION_POSTPROCESS DIV DYNAMIC_UPDATE_SLICE ELU "
    "EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER "
    "GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL "
    "LOG LOGICAL_AND LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM "
    "MIRROR_PAD MUL NEG NOT_EQUAL PACK PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_ALL REDUCE_MAX "
    "REDUCE_MIN RELU RELU6 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT "
    "SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE "
    "SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV "
    "UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE".split()
)


@dataclass
class QuantizeParams:
    calibration_clips: int = 300  # train clips whose frames and decoder states calibrate the int8 ranges
    logits_margin: float = 2.0  # the int8 logits window starts this far below the lowest winning logit of calibration
    context_percentile: float = 99.99  # the int8 context covers this percentile band of the calibration contexts
    device: bool = True  # also run the whole device path (frames -> int8 encoder -> int8 MicroCap) in TFLM


def model_file(name, precision):
    """data/int8 file name of a graph: microcap_{pooler,decoder}_{fp32,int8}.tflite."""
    return f"microcap_{name}_{precision}.tflite"


# ----------------------------------------------------------------------------------------------
# TensorFlow mirror


class TFMicroCap:
    """The two device graphs of a MicroCap, weights copied from the PyTorch module.

    `pooler(frames)` and `step(token, h, context)` accept any batch (float parity checks);
    `concrete(name, fake_quant)` gives the batch-1 tf.function that is converted to .tflite.
    """

    def __init__(self, model, ranges=None):
        import tensorflow as tf

        self.cfg = model.cfg
        sd = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
        D, H, E = self.cfg.dim, self.cfg.hidden, self.cfg.embed_dim
        f32 = lambda a: tf.constant(np.asarray(a, np.float32))  # noqa: E731
        self.attention = self.cfg.pooling == "attention"
        if self.attention:
            # ((x + pos) @ q) / sqrt(D) = x @ (q / sqrt(D)) + (pos @ q) / sqrt(D): one FC and one ADD
            q = sd["pooler.query"] / math.sqrt(D)  # (D,)
            self.q = f32(q[:, None])  # (D, 1)
            self.pos_bias = f32((sd["pooler.pos_emb"] @ q)[None, :])  # (1, T)
        # c = sum_t w_t * x_t + sum_t F_t * x_t = sum_t (w_t + F_t) * x_t: the temporal filter F (T, D)
        # joins the pooling weights before the one MUL + SUM (mean pooling: a constant 1/T + F)
        self.temporal_filter = f32(sd["temporal_filter"][None]) if self.cfg.temporal_filter else None  # (1, T, D)
        if self.cfg.temporal_mlp:
            self.w_mlp_in = f32(sd["temporal_mlp.inp.weight"].T)  # (T*D, K)
            self.b_mlp_in = f32(sd["temporal_mlp.inp.bias"])  # (K,)
            self.w_mlp_out = f32(sd["temporal_mlp.out.weight"].T)  # (K, D)
            self.b_mlp_out = f32(sd["temporal_mlp.out.bias"])  # (D,)
        self.w_init = f32(sd["init_h.weight"].T)  # (D, H)
        self.b_init = f32(sd["init_h.bias"])  # (H,)
        self.w_xc = f32(sd["x_proj.weight"][:, E:].T)  # (D, 3H)  context part of x_proj
        self.b_x = f32(sd["x_proj.bias"])  # (3H,)
        self.embed = f32(sd["embed.weight"])  # (V, E)
        # one FC per gate (r, z, n) instead of one 3H-wide FC and a SPLIT: each gate's output gets its
        # own int8 scale (the 3H-wide h_proj output needed ~0.09 per step, 12 steps of error in h_new)
        gate = lambda w, g: w[g * H : (g + 1) * H]  # noqa: E731
        self.w_xe = [f32(gate(sd["x_proj.weight"], g)[:, :E].T) for g in range(3)]  # 3 x (E, H) token part
        self.w_h = [f32(gate(sd["h_proj.weight"], g).T) for g in range(3)]  # 3 x (H, H)
        self.b_h = [f32(gate(sd["h_proj.bias"], g)) for g in range(3)]  # 3 x (H,)
        self.w_out = f32(sd["out.weight"].T)  # (H, V)
        self.b_out = f32(sd["out.bias"])  # (V,)
        # float ranges pinned with fake-quant ops in the int8 graphs: h0/h_new (H_RANGE), context, and
        # the gate pre-activations (calibrated, clipped where LOGISTIC/TANH saturate in int8)
        self.ranges = dict(ranges or {}, h0=H_RANGE, h_new=H_RANGE)
        self.tap = None  # callable(x, name) -> x seeing every named tensor of float runs (caption_sensitivity)

    # the math, shared by the float checks and the exported graphs
    def pooler(self, frames, fake_quant=False, preactivations=False):
        """frames (B, T, D) -> dict h0 (B, H), context (B, 3H)[, weights (B, T)]
        (and the temporal MLP's pre-activation mlp_pre (B, K) with `preactivations`)."""
        import tensorflow as tf

        q = lambda x, name: self._tensor(x, name, fake_quant)  # noqa: E731
        out = {}
        frames = q(frames, "frames")
        if self.attention:
            scores = q(tf.squeeze(tf.matmul(frames, self.q), -1) + self.pos_bias, "scores")  # (B, T)
            weights = q(tf.nn.softmax(scores, axis=-1), "weights")  # (B, T)
            out["weights"] = weights
            w = tf.expand_dims(weights, -1)  # (B, T, 1)
            if self.temporal_filter is not None:
                w = q(w + self.temporal_filter, "weights+filter")  # (B, T, D)
            # MUL + SUM: an int8 BATCH_MATMUL here lost ~8 quantisation steps (measured in tf.lite)
            c = tf.reduce_sum(q(w * frames, "weighted frames"), axis=1)  # (B, D)
        elif self.temporal_filter is not None:
            c = tf.reduce_sum(q((self.temporal_filter + 1.0 / self.cfg.num_frames) * frames, "weighted frames"), axis=1)  # (B, D)
        else:
            c = tf.reduce_mean(frames, axis=1)  # (B, D)
        c = q(c, "pooled")
        if self.cfg.temporal_mlp:
            flat = tf.reshape(frames, (-1, self.cfg.num_frames * self.cfg.dim))  # (B, T*D)
            pre = tf.matmul(flat, self.w_mlp_in) + self.b_mlp_in  # (B, K)
            if preactivations:
                out["mlp_pre"] = pre
            hidden = q(tf.tanh(q(pre, "mlp_pre")), "mlp_hidden")  # (B, K)
            c = q(c + q(tf.matmul(hidden, self.w_mlp_out) + self.b_mlp_out, "mlp_out"), "pooled+mlp")  # (B, D)
        out["h0"] = q(tf.tanh(q(tf.matmul(c, self.w_init) + self.b_init, "h0_pre")), "h0")  # (B, H)
        out["context"] = q(tf.matmul(c, self.w_xc) + self.b_x, "context")  # (B, 3H)
        return out

    def step(self, token, h, context, fake_quant=False, preactivations=False):
        """token (B,) int32, h (B, H), context (B, 3H) -> dict logits (B, V), h_new (B, H)
        (and the gate pre-activations r_pre, z_pre, n_pre with `preactivations`)."""
        import tensorflow as tf

        q = lambda x, name: self._tensor(x, name, fake_quant)  # noqa: E731
        e = q(tf.gather(self.embed, token), "embedding")  # (B, E): a plain GATHER (a Keras Embedding would bring SELECT)
        ctx = tf.split(context, 3, axis=-1)  # 3 x (B, H)
        gx = [q(tf.matmul(e, self.w_xe[g]) + ctx[g], f"gx_{'rzn'[g]}") for g in range(3)]  # input gates, 3 x (B, H)
        gh = [q(tf.matmul(h, self.w_h[g]) + self.b_h[g], f"gh_{'rzn'[g]}") for g in range(3)]  # hidden gates, 3 x (B, H)
        pre = {"r_pre": gx[0] + gh[0], "z_pre": gx[1] + gh[1]}
        r = q(tf.sigmoid(q(pre["r_pre"], "r_pre")), "r")
        z = q(tf.sigmoid(q(pre["z_pre"], "z_pre")), "z")
        pre["n_pre"] = gx[2] + q(r * gh[2], "r*gh_n")
        n = q(tf.tanh(q(pre["n_pre"], "n_pre")), "n")
        h_new = q(n + q(z * q(h - n, "h-n"), "z*(h-n)"), "h_new")  # = (1 - z) * n + z * h, one op fewer
        if fake_quant and "logits" in self.ranges:
            # greedy decoding reads only the top logit: int8 covers the window [lo, hi] of the float logits,
            # moved to [0, hi - lo] through the bias (argmax unchanged) so int8's zero can sit at its bottom
            lo, hi = self.ranges["logits"]
            logits = tf.quantization.fake_quant_with_min_max_args(
                tf.matmul(h_new, self.w_out) + (self.b_out - lo), min=0.0, max=hi - lo, num_bits=8)  # fmt: skip
        else:
            logits = q(tf.matmul(h_new, self.w_out) + self.b_out, "logits")  # (B, V)
        return {"logits": logits, "h_new": h_new, **(pre if preactivations else {})}

    def _tensor(self, x, name, fake_quant):
        """Every named int8 tensor of the two graphs passes here: pinned in the exported ones, seen by
        self.tap in float runs."""
        if fake_quant:
            return self._pin(x, name)
        return x if self.tap is None else self.tap(x, name)

    def _pin(self, x, name):
        """Fake-quant `x` to its pinned range: the converter gives the tensor exactly these params."""
        import tensorflow as tf

        if name not in self.ranges:
            return x
        lo, hi = self.ranges[name]
        return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8)

    def concrete(self, name, fake_quant):
        """Batch-1 concrete function of graph `name` (POOLER or DECODER) for the converter."""
        import tensorflow as tf

        cfg = self.cfg
        if name == POOLER:
            spec = [tf.TensorSpec((1, cfg.num_frames, cfg.dim), tf.float32, name="frames")]
            fn = tf.function(lambda frames: self.pooler(frames, fake_quant), input_signature=spec)
        else:
            spec = [
                tf.TensorSpec((1,), tf.int32, name="token"),
                tf.TensorSpec((1, cfg.hidden), tf.float32, name="h"),
                tf.TensorSpec((1, 3 * cfg.hidden), tf.float32, name="context"),
            ]
            fn = tf.function(lambda token, h, context: self.step(token, h, context, fake_quant), input_signature=spec)
        return fn.get_concrete_function()

    def greedy(self, frames, max_steps):
        """Float greedy decoding, batched: frames (B, T, D) -> list of B token-id lists."""
        enc = self.pooler(np.asarray(frames, np.float32))
        h, context = enc["h0"], enc["context"]
        tok = np.full(len(frames), BOS, np.int32)
        out, done = [[] for _ in frames], np.zeros(len(frames), bool)
        for _ in range(max_steps):
            res = self.step(tok, h, context)
            h, tok = res["h_new"], np.argmax(res["logits"].numpy(), axis=-1).astype(np.int32)
            for b in np.flatnonzero(~done & (tok != EOS)):
                out[b].append(int(tok[b]))
            done |= tok == EOS
            if done.all():
                break
        return out


# ----------------------------------------------------------------------------------------------
# Conversion


def convert(mirror, name, representative=None):
    """.tflite bytes of graph `name`: float32, or full-integer int8 when `representative` is given
    (a list of input dicts; int8 weights per channel, int8 activations and I/O, token stays int32)."""
    import tensorflow as tf

    int8 = representative is not None
    fn = mirror.concrete(name, fake_quant=int8)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], tf.Module())
    if int8:
        if not representative:
            raise TinyCapError(f"{name} calibration", "representative dataset is empty")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: iter(representative)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def check_tflm_ops(ops, where):
    """Raise (one line) unless every op is one TFLM supports."""
    missing = sorted(set(ops) - TFLM_OPS)
    if missing:
        raise TinyCapError(where, f"op(s) {', '.join(missing)} not supported by TFLM")


# ----------------------------------------------------------------------------------------------
# Data, calibration and the stage


def load_clips(path):
    """clip.h5 -> frame_emb (V, T, D), video_id [V], split [V], references {video_id: [captions]}."""
    emb = load_embeddings(path)
    refs = {}
    for caption, v in zip(emb.caption, emb.caption_video):
        refs.setdefault(emb.video_id[int(v)], []).append(caption)
    return emb.frame_emb, np.array(emb.video_id), np.array(emb.split), refs


def check_architecture(model, expect, frames, vocab, where):
    """One line if the checkpoint's config disagrees with params / the data it is quantised for."""
    cfg = dataclasses.asdict(model.cfg)
    want = dict(expect, dim=frames.shape[2], vocab_size=len(vocab))
    if frames.shape[1] != cfg["num_frames"]:
        want["num_frames"] = frames.shape[1]
    bad = [f"{k}={cfg[k]} (expected {v})" for k, v in want.items() if cfg.get(k) != v]
    if bad:
        raise TinyCapError(where, f"architecture mismatch with params/data: checkpoint has {', '.join(bad)}")


def pick_calibration(splits, n):
    """Indices of `n` train clips spread evenly over the train split (deterministic)."""
    train = np.flatnonzero(splits == "train")
    if n <= 0 or len(train) == 0:
        raise TinyCapError("quantize.calibration_clips", f"no calibration clips ({n} asked, {len(train)} train clips)")
    return train[np.linspace(0, len(train) - 1, min(n, len(train))).round().astype(int)]


def decoder_states(model, frames, token_seqs):
    """Real decoder inputs: for each clip, the states of teacher-forced decoding of `token_seqs`
    (a reference caption, <bos> first) and of the float model's own greedy decoding.
    Returns a list of {"token", "h", "context"} batch-1 float32 dicts."""
    import torch

    m = model.cfg
    E = m.embed_dim
    with torch.no_grad():
        x = torch.as_tensor(frames)
        c, h0, _ = model.encode(x)
        context = c @ model.x_proj.weight[:, E:].T + model.x_proj.bias  # (B, 3H)
        samples = []

        def add(rows, tok, h):
            """One sample per clip in `rows` (indices into the batch): its token, its state, its context."""
            for b in rows:
                samples.append(
                    {
                        "token": np.array([tok[b]], np.int32),
                        "h": h[b : b + 1].numpy().astype(np.float32),
                        "context": context[b : b + 1].numpy().astype(np.float32),
                    }
                )

        # teacher forcing on a reference caption (all positions but the final <eos>)
        L = max(len(s) for s in token_seqs)
        toks = torch.full((len(token_seqs), L), EOS, dtype=torch.long)
        for i, s in enumerate(token_seqs):
            toks[i, : len(s)] = torch.as_tensor(s)
        h = h0
        for t in range(L - 1):
            live = [i for i, s in enumerate(token_seqs) if t < len(s) - 1]
            add(live, toks[:, t].tolist(), h)
            _, h = model.step(toks[:, t], h, c)
        # the float model's own greedy decoding
        h, tok = h0, torch.full((len(frames),), BOS, dtype=torch.long)
        live = torch.ones(len(frames), dtype=torch.bool)
        for _ in range(m.max_steps):
            idx = torch.nonzero(live).flatten()
            if len(idx) == 0:
                break
            add(idx.tolist(), tok.tolist(), h)
            logits, h = model.step(tok, h, c)
            tok = logits.argmax(-1)
            live &= tok != EOS
    return samples


def bos_states(model, frames):
    """The first decoder step (<bos>, h0, context) of every clip in `frames`: cheap, and it makes the
    calibrated context range span every train clip."""
    import torch

    E = model.cfg.embed_dim
    with torch.no_grad():
        c, h0, _ = model.encode(torch.as_tensor(frames))
        context = c @ model.x_proj.weight[:, E:].T + model.x_proj.bias
    tok = np.array([BOS], np.int32)
    return [{"token": tok, "h": h0[b : b + 1].numpy(), "context": context[b : b + 1].numpy()} for b in range(len(frames))]


def pin_h_range(states):
    """Make the calibrated range of the decoder's h input exactly H_RANGE, so the converter gives
    it the quantisation (1/128, 0) that the fake-quant ops pin on h0 and h_new: h is clipped to
    H_RANGE (what int8 h holds anyway) and one state is added, a copy of the first with its first
    two h elements at the ends of the range."""
    lo, hi = H_RANGE
    out = [dict(s, h=np.clip(s["h"], lo, hi).astype(np.float32)) for s in states]
    extra = dict(out[0], h=out[0]["h"].copy())
    extra["h"][0, :2] = lo, hi
    return out + [extra]


# |x| beyond which int8 LOGISTIC (output step 1/256) and TANH (1/128) outputs no longer change
SATURATION = {"r_pre": 6.0, "z_pre": 6.0, "n_pre": 3.2, "mlp_pre": 3.2}


def pinned_ranges(mirror, frames, states, params):
    """Float ranges pinned in the int8 graphs, from the calibration clips `frames` and the
    representative decoder states:
    context = the central `params.context_percentile` band of the states' values (calibrate() clips
    the states to it, so the converter calibrates the decoder's context input on exactly this range
    and the pooler's pinned context output gets the same params; the few outliers beyond it had
    stretched the int8 step of all the rest: 95.1 % of captions identical to float with the full
    range, 97.1 % with 99.99 %, context alone, on the default);
    r_pre, z_pre, n_pre, mlp_pre = their range clipped at SATURATION (a narrower, finer int8 scale where
    the activation still changes; beyond it the int8 output is saturated anyway; mlp_pre: 94.9 % ->
    97.1 % of captions identical, alone);
    logits = from `logits_margin` below the lowest winning logit to the highest logit: greedy decoding
    compares only the top, and int8 steps over the full range (~0.06 on the default) flipped near ties
    (captions identical to float: 94 % with the full range, 97 % with the window, logits alone)."""
    if not 50.0 < params.context_percentile <= 100.0:
        raise TinyCapError("params.yaml: quantize.context_percentile", f"must be in (50, 100], got {params.context_percentile}")
    batch = {k: np.concatenate([s[k] for s in states]) for k in ("token", "h", "context")}
    pre = {**mirror.step(batch["token"], batch["h"], batch["context"], preactivations=True),
           **mirror.pooler(frames, preactivations=True)}  # fmt: skip
    band = np.percentile(batch["context"], [100.0 - params.context_percentile, params.context_percentile])
    lo, hi = (float(np.float32(v)) for v in band)  # float32: the clipped states' exact min and max
    ranges = {"context": (lo, hi)}
    if not lo < 0 < hi:  # int8 needs 0 inside; widening it would break the equality with the input's params
        raise TinyCapError("calibration context", f"range [{lo:.4g}, {hi:.4g}] does not contain 0")
    for name, bound in SATURATION.items():
        if name not in pre:  # mlp_pre: only with a temporal MLP
            continue
        x = pre[name].numpy()
        ranges[name] = (max(min(float(x.min()), 0.0), -bound), min(max(float(x.max()), 0.0), bound))
    logits = pre["logits"].numpy()  # (N, V)
    ranges["logits"] = (max(float(logits.max(-1).min()) - params.logits_margin, float(logits.min())), float(logits.max()))
    return ranges


def calibrate(model, frames, token_seqs, train_frames, params):
    """The int8-ready mirror and the representative datasets {POOLER: [...], DECODER: [...]}: the
    pooler sees the calibration clips `frames` (N, T, D); the decoder their teacher-forced and greedy
    states (`token_seqs`, one reference per clip) plus the first step of every clip in `train_frames`,
    contexts clipped to the pinned context range. `params`: QuantizeParams."""
    states = pin_h_range(decoder_states(model, frames, token_seqs) + bos_states(model, train_frames))
    ranges = pinned_ranges(TFMicroCap(model), frames, states, params)
    for s in states:
        s["context"] = np.clip(s["context"], *ranges["context"])
    return TFMicroCap(model, ranges), {POOLER: [{"frames": frames[i : i + 1]} for i in range(len(frames))], DECODER: states}


def float_parity(model, mirror, frames):
    """Max abs difference PyTorch vs TF mirror on real clips (pooler outputs, and every decoder step
    along PyTorch's greedy path), how many greedy captions are token-identical, and the lowest
    winning logit of those captions (the int8 logits window must start below it)."""
    import torch

    E = model.cfg.embed_dim
    diff = {"h0": 0.0, "context": 0.0, "weights": 0.0, "logits": 0.0, "h_new": 0.0}
    with torch.no_grad():
        x = torch.as_tensor(frames)
        c, h, w = model.encode(x)
        ref = {"h0": h, "context": c @ model.x_proj.weight[:, E:].T + model.x_proj.bias, "weights": w}
        got = mirror.pooler(frames)
        for k in got:
            diff[k] = float(np.abs(got[k].numpy() - ref[k].numpy()).max())
        tok = torch.full((len(frames),), BOS, dtype=torch.long)
        live, lowest_win = torch.ones(len(frames), dtype=torch.bool), math.inf
        for _ in range(model.cfg.max_steps):
            res = mirror.step(tok.numpy().astype(np.int32), h.numpy(), ref["context"].numpy())
            logits, h = model.step(tok, h, c)
            diff["logits"] = max(diff["logits"], float(np.abs(res["logits"].numpy() - logits.numpy()).max()))
            diff["h_new"] = max(diff["h_new"], float(np.abs(res["h_new"].numpy() - h.numpy()).max()))
            if live.any():
                lowest_win = min(lowest_win, logits.max(-1).values[live].min().item())
            tok = logits.argmax(-1)
            live &= tok != EOS
        torch_caps = float_greedy(model, frames)
    tf_caps = mirror.greedy(frames, model.cfg.max_steps)
    same = sum(a == b for a, b in zip(torch_caps, tf_caps))
    if "weights" not in mirror.pooler(frames[:1]):
        diff.pop("weights")
    return {"max_abs_diff": diff, "tokens_identical": same, "clips": len(frames), "lowest_winning_logit": lowest_win}, torch_caps


def float_greedy(model, frames):
    """PyTorch greedy captions of `frames` (N, T, D) -> list of token-id lists: the fp32 reference."""
    import torch

    with torch.no_grad():
        return model.greedy(torch.as_tensor(frames))


def token_agreement(a, b):
    """Fraction of positions (EOS included, over the longer sequence) where two greedy decodings agree."""
    agree = total = 0
    for x, y in zip(a, b):
        x, y = list(x) + [-1], list(y) + [-1]  # -1 marks <eos>
        n = max(len(x), len(y))
        agree += sum(1 for i in range(min(len(x), len(y))) if x[i] == y[i])
        total += n
    return agree / total if total else 1.0


def quantize(microcap_path, embeddings_path, vocab_path, out_dir, params, expect, device=None):
    """Mirror, convert, calibrate and evaluate; writes the data/int8 files into `out_dir` (which the
    caller publishes atomically) and returns the metrics dict (metrics/quantize.json).
    `expect`: the architecture params say the checkpoint has (pooling, num_frames, embed_dim,
    hidden, max_len, temporal_filter, temporal_mlp). `device`: {"encoder": encoder_int8.tflite,
    "frames": frames.h5, "frames_size": frames.size} to also run the whole device path (device_path())."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = load_vocab(vocab_path)
    model = microcap.load(microcap_path, vocab)
    frames, vids, splits, refs = load_clips(embeddings_path)
    check_architecture(model, expect, frames, vocab, microcap_path)

    # calibration data: real train clips, real decoder states
    cal = pick_calibration(splits, params.calibration_clips)
    seqs = [vocab.encode(refs[vids[i]][0], model.cfg.max_len) if vids[i] in refs else [vocab.index["<bos>"]] for i in cal]
    mirror, representative = calibrate(model, frames[cal], seqs, frames[splits == "train"], params)
    log.info("calibration: %d clips, %d decoder states, pinned ranges %s", len(cal), len(representative[DECODER]), mirror.ranges)

    # the quantisation choices are checked on val clips: test and novel are only scored, below
    val = np.flatnonzero(splits == "val")
    if len(val) == 0:
        raise TinyCapError(embeddings_path, "no val clips to check the float mirror and the int8 logits window on")
    parity, _ = float_parity(model, mirror, frames[val])
    log.info("float parity PyTorch vs TF mirror on %d val clips: %s", len(val), parity)
    if parity["tokens_identical"] < parity["clips"]:
        raise TinyCapError(microcap_path, f"TF mirror differs from PyTorch: {parity}")
    if parity["lowest_winning_logit"] <= mirror.ranges["logits"][0]:  # that step's int8 argmax would be token 0
        raise TinyCapError("params.yaml: quantize.logits_margin", f"a winning logit of the val captions "
                           f"({parity['lowest_winning_logit']:.3f}) is below the int8 logits window ({mirror.ranges['logits'][0]:.3f}); "
                           f"raise it above {params.logits_margin}")  # fmt: skip

    eval_idx = {s: np.flatnonzero(splits == s) for s in ("test", "novel") if (splits == s).any()}
    if not eval_idx:
        raise TinyCapError(embeddings_path, "no test or novel clips to evaluate on")
    all_eval = np.concatenate(list(eval_idx.values()))
    torch_caps = dict(zip(all_eval.tolist(), float_greedy(model, frames[all_eval])))

    quant = {
        "max_steps": model.cfg.max_steps,
        "bos": vocab.index["<bos>"],
        "eos": vocab.index["<eos>"],
        "h_quant": {
            "scale": H_QUANT[0],
            "zero_point": H_QUANT[1],
            "note": "pooler h0, decoder h and h_new share these params, and the pooler's context output "
            "has the decoder's context input params: the loop copies int8 h0 / h_new into h and the "
            "int8 context into the decoder unchanged, no requantisation",
        },
        "frames_quantization": "q = clamp(roundf(x / scale) + zero_point, -128, 127), float32, roundf half away from zero",
        "argmax": "first index of the maximum int8 logit",
        "logits_window": {
            "float_range": list(mirror.ranges["logits"]),
            "note": "int8 logits = float logits minus the window's low end, clipped to the window: argmax (greedy) "
            "is unchanged; beam search and sampling on int8 logits rank the tokens at the floor last "
            "(tinycap.captioner._window_logits)",
        },
        "decode_loop": "quantise frames; pooler once; token=<bos>, h=h0; up to max_steps decoder steps: "
        "token = argmax(logits), stop at <eos> (not emitted), h = h_new",
        "arena_method": "smallest arena (16-byte steps) with which tflite_micro.runtime.Interpreter allocates and "
        "invokes the model, bisected in subprocesses (x86-64 host build: an upper bound for 32-bit targets); "
        "allocation_report = its print_allocations() output",
        "models": {},
    }
    for name in (POOLER, DECODER):
        for precision in ("fp32", "int8"):
            key = f"{name}_{precision}"
            data = convert(mirror, name, representative[name] if precision == "int8" else None)
            ops = model_ops(data)
            check_tflm_ops(ops, model_file(name, precision))
            if precision == "int8" and {"QUANTIZE", "DEQUANTIZE"} & set(ops):
                raise TinyCapError(model_file(name, precision), "not fully int8: the converter inserted (DE)QUANTIZE ops")
            path = out_dir / model_file(name, precision)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            io = io_details(data)
            arena, report = measure_arena(path, len(io["inputs"]))
            quant["models"][key] = {
                "file": path.name,
                "bytes": len(data),
                "ops": ops,
                "arena_bytes": arena,
                **io,
                "allocation_report": report,
            }
            log.info("%s: %d bytes, arena %d bytes, ops %s", path.name, len(data), arena, " ".join(ops))
    check_shared_quant(quant, out_dir)
    write_json(out_dir / "quant.json", quant)

    # the device path (camera frames -> int8 encoder -> int8 MicroCap) in TFLM: the first DEVICE_SHARE of the
    # clips on the second core, the rest here after the host decoders below
    on_device = None
    if device is not None:
        pixels, encoder = device_frames(device, embeddings_path, vids[all_eval])
        cut = int(DEVICE_SHARE * len(pixels))
        on_device = in_forked_process(
            lambda: device_path(encoder, out_dir, pixels[:cut]), "quantize_int8: the device path in TFLM"
        )

    # quality: TFLM int8 vs tf.lite int8 vs float
    runners = {
        "tflm_int8": Int8Decoder(out_dir, "tflm", "int8"),
        "tflite_int8": Int8Decoder(out_dir, "tflite", "int8"),
        "tflite_fp32": Int8Decoder(out_dir, "tflite", "fp32"),
    }
    from tqdm import tqdm

    caps = {k: {} for k in runners}
    for i in tqdm(all_eval, desc="greedy decoding (TFLM, tf.lite)", file=sys.stderr):
        for k, r in runners.items():
            caps[k][int(i)] = r.caption(frames[i])
    captions_tflm, cider, per_clip = {}, {}, {}
    for split, idx in eval_idx.items():
        ref = {vids[i]: refs.get(vids[i], []) for i in idx}
        fp32 = {vids[i]: vocab.decode(torch_caps[i]) for i in idx}
        int8 = {vids[i]: vocab.decode(caps["tflm_int8"][i]) for i in idx}
        captions_tflm[split] = int8
        per_clip[split] = {k: cider_per_clip(p, ref) for k, p in (("fp32", fp32), ("int8_tflm", int8))}
        cider[split] = _drop(per_clip[split])
        cider[split]["captions_changed"] = sum(fp32[v] != int8[v] for v in fp32)
    if len(per_clip) > 1:  # every evaluated clip at once: the tightest interval (each split keeps its own CIDEr IDF)
        cider["+".join(per_clip)] = _drop(
            {k: {v: c for s in per_clip.values() for v, c in s[k].items()} for k in ("fp32", "int8_tflm")}
        )
    write_json(out_dir / "captions_tflm.json", captions_tflm)
    if on_device is not None:
        rest = device_path(encoder, out_dir, pixels[cut:])
        first = on_device.result()
        tokens, logits = first[0] + rest[0], first[1] + rest[1]
        with atomic_path(out_dir / DEVICE_REFERENCE) as tmp:
            write_reference(tmp, list(vids[all_eval]), tokens, logits)
        device_tokens = dict(zip(all_eval.tolist(), tokens))
        captions_device = {split: {vids[i]: vocab.decode(device_tokens[i]) for i in idx} for split, idx in eval_idx.items()}
        write_json(out_dir / DEVICE_CAPTIONS, captions_device)
        device_cider = {}
        for split, idx in eval_idx.items():
            ref = {vids[i]: refs.get(vids[i], []) for i in idx}
            dev = {"int8_tflm": per_clip[split]["int8_tflm"], "device_int8": cider_per_clip(captions_device[split], ref)}
            device_cider[split] = _drop(dev, base="int8_tflm", new="device_int8")
            if device_cider[split]["rel_drop"] is not None:
                device_cider[split]["fraction"] = 1.0 - device_cider[split]["rel_drop"]
            device_cider[split]["captions_changed"] = sum(captions_tflm[split][v] != captions_device[split][v] for v in ref)

    order = all_eval.tolist()
    seq = {k: [caps[k][i] for i in order] for k in caps}
    torch_seq = [torch_caps[i] for i in order]
    head = "test" if "test" in cider else next(iter(cider))
    models = quant["models"]
    metrics = {
        "fp32_bytes": models["pooler_fp32"]["bytes"] + models["decoder_fp32"]["bytes"],
        "int8_bytes": models["pooler_int8"]["bytes"] + models["decoder_int8"]["bytes"],
        "ops": {k: v["ops"] for k, v in models.items() if k.endswith("int8")},
        "arena_bytes": models["pooler_int8"]["arena_bytes"] + models["decoder_int8"]["arena_bytes"],
        "arena_bytes_per_model": {k: v["arena_bytes"] for k, v in models.items()},
        "cider_split": head,
        "cider_fp32": cider[head]["fp32"],
        "cider_int8_tflm": cider[head]["int8_tflm"],
        "cider_rel_drop": cider[head]["rel_drop"],
        "cider": cider,
        "token_agreement_tflm_vs_tflite": token_agreement(seq["tflm_int8"], seq["tflite_int8"]),
        "token_agreement_tflm_vs_fp32": token_agreement(seq["tflm_int8"], torch_seq),
        "captions_identical_tflm_vs_fp32": sum(a == b for a, b in zip(seq["tflm_int8"], torch_seq)) / len(order),
        "captions_identical_fp32_tflite_vs_torch": sum(a == b for a, b in zip(seq["tflite_fp32"], torch_seq)) / len(order),
        "float_parity": {**parity, "split": "val"},
        "calibration": {"clips": len(cal), "decoder_states": len(representative[DECODER]), "pinned_ranges": mirror.ranges},
        "clips": {s: len(i) for s, i in eval_idx.items()},
        "method": "CIDEr (pycocoevalcap scale, raw, mean of per-clip CIDEr-D = score()'s CIDEr) of greedy captions on "
        "the cider_split clips: fp32 = PyTorch MicroCap, int8 = data/int8 graphs in tflite_micro.runtime (TFLM "
        "kernels); rel_drop_ci95 = 95 % paired-bootstrap interval of the drop over clips (2000 resamples); "
        "test+novel = both splits' clips together (per-clip CIDEr-D with each split's IDF). "
        "token_agreement = equal tokens / positions of the longer decoding (<eos> counted), over "
        "test+novel. float_parity = PyTorch vs the TF mirror on the val clips, where the int8 logits window is "
        "also checked (quantisation choices are made on train+val only). arena_bytes = pooler_int8 + decoder_int8 "
        "arenas (both interpreters resident), each the smallest arena TFLM runs the model with (host build; see quant.json arena_method)",
    }
    if on_device is not None:
        metrics["device"] = {
            "cider": device_cider,
            "encoder": str(device["encoder"]),
            "method": "device_int8 = the whole device path in tflite_micro.runtime (tinycap.int8.DeviceDecoder): "
            "frames.h5 frames resized to the encoder's input (tinycap.encoder.read_frames), the int8 encoder "
            "graph frame by frame, its int8 embeddings mapped to MicroCap's int8 frame input by a 256-entry table "
            "(dequantise, quantize_frames), then the int8 pooler + decoder greedily; compared with int8_tflm "
            "(the same int8 MicroCap on CLIP's frame embeddings): per-clip CIDEr-D, rel_drop with its 95 % "
            "paired-bootstrap interval, fraction = device / host. Tokens and int8 logits of every clip: "
            f"{DEVICE_REFERENCE} (the firmware's parity reference)",
        }
    if metrics["cider_rel_drop"] is None:
        metrics["notes"] = [f"fp32 CIDEr on {head} is 0: the relative drop is undefined"]
    log.info("caption sensitivity to int8 rounding, tensor by tensor (float mirror)")
    metrics["caption_sensitivity"] = {
        "method": "greedy captions of the val clips (a diagnostic for quantisation choices: never test/novel) by "
        "the float mirror with one named activation rounded to int8 over its calibrated or pinned range (fake "
        "quant), as a share of clips whose caption stays identical; all pooler / all decoder / all = every "
        "activation of that graph / of both rounded; weights stay float (tinycap.quantize.caption_sensitivity)",
        "clips": len(val),
        "captions_identical": caption_sensitivity(mirror, representative, frames[val], model.cfg.max_steps),
    }
    return metrics


def device_frames(device, embeddings_path, video_ids):
    """The encoder's uint8 input frames (N, T, S, S, 3) of the clips `video_ids` (in clip.h5's order);
    one line when the encoder graph is missing or frames.h5 does not hold clip.h5's videos."""
    encoder = Path(device["encoder"])
    if not encoder.is_file():
        raise TinyCapError(encoder, "file not found (run distill_encoder with encoder.int8: true)")
    size = io_details(encoder.read_bytes())["inputs"][0]["shape"][1]  # (1, S, S, 3)
    emb = load_embeddings(embeddings_path)
    check_frames_file(device["frames"], device["frames_size"], emb)
    rows = np.flatnonzero(np.isin(np.array(emb.video_id), video_ids))
    return read_frames(device["frames"], rows, size), encoder


def device_path(encoder_path, int8_dir, pixels):
    """The whole device path in TFLM on uint8 frames (N, T, S, S, 3) -> (token ids, int8 logits (steps, V)) of
    every clip: what quantize() writes to int8_dir/device_tflm.npz, the firmware's parity reference."""
    return device_reference(DeviceDecoder(encoder_path, int8_dir), pixels)


def _drop(per_clip, base="fp32", new="int8_tflm"):
    """{base: {clip: CIDEr}, new: {...}} -> mean CIDEr of each, the relative drop from base to new and its
    95 % paired-bootstrap interval (None where base scores 0: the drop is undefined)."""
    out = {k: float(np.mean(list(v.values()))) for k, v in per_clip.items()}
    out["rel_drop"] = None
    if out[base] > 0:
        out["rel_drop"], out["rel_drop_ci95"] = paired_drop(per_clip[base], per_clip[new])
    return out


def caption_sensitivity(mirror, representative, frames, max_steps):
    """Which int8 tensor costs captions: greedy float captions of `frames` with one named tensor at a
    time rounded to int8 over its range (fake quant; calibrated min/max on the representative data, or
    the pinned range) -> {tensor: share of clips whose caption stays identical to float}, worst first,
    and every tensor of the pooler, of the decoder, and of both ("all") rounded at once. Activations
    only: weights stay float."""
    import tensorflow as tf

    seen = {}

    def record(x, name):
        v = np.asarray(x)
        lo, hi = seen.get(name, (0.0, 0.0))  # int8 ranges contain 0
        seen[name] = (min(lo, float(v.min())), max(hi, float(v.max())))
        return x

    mirror.tap = record
    mirror.pooler(np.concatenate([r["frames"] for r in representative[POOLER]]))
    groups = {f"all {POOLER}": set(seen)}
    batch = {k: np.concatenate([r[k] for r in representative[DECODER]]) for k in ("token", "h", "context")}
    mirror.step(batch["token"], batch["h"], batch["context"])
    groups[f"all {DECODER}"] = set(seen) - groups[f"all {POOLER}"]
    groups["all"] = set(seen)
    ranges = {**seen, **{k: v for k, v in mirror.ranges.items() if k in seen}}

    def rounding(names):
        def tap(x, name):
            if name not in names:
                return x
            lo, hi = ranges[name]
            if name == "logits" and "logits" in mirror.ranges:  # the exported window, moved to [0, hi - lo]
                return tf.quantization.fake_quant_with_min_max_args(x - lo, min=0.0, max=hi - lo, num_bits=8) + lo
            return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8)

        return tap

    try:
        mirror.tap = None
        ref = mirror.greedy(frames, max_steps)
        out = {}
        for name in [*ranges, *groups]:
            mirror.tap = rounding(groups.get(name, {name}))
            got = mirror.greedy(frames, max_steps)
            out[name] = round(float(np.mean([a == b for a, b in zip(ref, got)])), 4)
    finally:
        mirror.tap = None
    return dict(sorted(out.items(), key=lambda kv: kv[1]))
