"""The int8 runtime on the host: the data/int8 graphs run the way the firmware runs them.

  quantize_frames()   float frame embeddings -> int8, bit-exact with the firmware's input step
  quant.json          same_quantisation() / check_shared_quant(): the tensors the device loop copies
                      between graphs carry one quantisation
  GraphRunner         one .tflite graph in tflite_micro.runtime (TFLM, the device's kernels) or
                      tf.lite, inputs and outputs by name
  Int8Decoder         greedy decoding of the pooler + decoder graphs, the firmware's loop
                      (TflmDecoder: int8 in TFLM, what quantize, build_tflm and benchmark_m7 compare with)
  DeviceDecoder       the whole device path in TFLM: uint8 camera frames -> the int8 encoder frame by
                      frame -> MicroCap's frame quantisation (requant_table) -> TflmDecoder
  beam_search()       the one beam search over a step function (tinycap.captioner uses it)
  tflm_run()          one TFLM invocation of a small graph (the code generator's lookup tables)
  measure_arena()     the smallest TFLM arena a graph runs with, bisected in subprocesses

TensorFlow and tflite_micro are imported where a graph is run, so importing this module is cheap.
"""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from tinycap.errors import TinyCapError
from tinycap.io import read_json
from tinycap.tflite import io_details
from tinycap.vocab import BOS, EOS

POOLER, DECODER = "pooler", "decoder"
ARENA_SLACK = 64  # bytes added to the measured arena when the host runtime decodes (buffer alignment varies)


def tflite_interpreter(model_bytes):
    """tf.lite.Interpreter of .tflite bytes (the reference int8 runtime next to TFLM), not yet allocated."""
    import tensorflow as tf

    with (
        warnings.catch_warnings()
    ):  # tf.lite.Interpreter warns it moves to ai_edge_litert, also under pytest (which resets filters)
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter(model_content=model_bytes)


def tflm_run(model_bytes, inputs, n_outputs=1, arena_size=256 * 1024):
    """Run TFLM (tflite_micro.runtime.Interpreter) once; returns the list of outputs."""
    from tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_size)
    for i, x in enumerate(inputs):
        interp.set_input(x, i)
    interp.invoke()
    return [interp.get_output(i) for i in range(n_outputs)]


def quantize_frames(frame_emb, scale, zero_point):
    """Float frame embeddings -> int8, as the firmware does it:
    q = clamp(roundf(x / scale) + zero_point, -128, 127), float32 division, roundf = half away from zero."""
    x = np.asarray(frame_emb, np.float32) / np.float32(scale)
    r = np.rint(x)
    halves = np.abs(x - np.trunc(x)) == np.float32(0.5)
    r = np.where(halves, np.trunc(x) + np.sign(x), r)
    return np.clip(r + zero_point, -128, 127).astype(np.int8)


def same_quantisation(a, b):
    """Two int8 tensors {scale, zero_point} the device loop copies between graphs unchanged.

    The converter derives each graph's scale from the same calibrated range, in float32 or float64
    depending on the path: equal up to rounding, which changes no int8 value."""
    return a["zero_point"] == b["zero_point"] and abs(a["scale"] - b["scale"]) <= 1e-6 * max(a["scale"], b["scale"])


def check_shared_quant(quant, where):
    """The int8 tensors the device loop copies between graphs must carry the same quantisation (up to float rounding)."""
    models = quant["models"]

    def q(model, kind, name):
        return next(d for d in models[model][kind] if d["name"] == name)

    pairs = [
        (("pooler_int8", "outputs", "h0"), ("decoder_int8", "inputs", "h")),
        (("decoder_int8", "outputs", "h_new"), ("decoder_int8", "inputs", "h")),
        (("pooler_int8", "outputs", "context"), ("decoder_int8", "inputs", "context")),
    ]
    for a, b in pairs:
        qa, qb = q(*a), q(*b)
        if not same_quantisation(qa, qb):
            raise TinyCapError(
                where,
                f"quantisation of {a[0]}.{a[2]} ({qa['scale']}, {qa['zero_point']}) differs from "
                f"{b[0]}.{b[2]} ({qb['scale']}, {qb['zero_point']})",
            )


# ----------------------------------------------------------------------------------------------
# Running the graphs: TFLM (the device's kernels) or tf.lite, int8 or float


class GraphRunner:
    """One .tflite graph behind a runtime; inputs and outputs by name."""

    def __init__(self, model_bytes, io, runtime, arena_bytes=None):
        self.io = io
        self.in_pos = {d["name"]: i for i, d in enumerate(io["inputs"])}
        self.out_pos = {d["name"]: i for i, d in enumerate(io["outputs"])}
        if runtime == "tflm":
            from tflite_micro import runtime as tflm

            self.it = tflm.Interpreter.from_bytes(model_bytes, arena_size=arena_bytes)
            self._set, self._get = self.it.set_input, self.it.get_output
        else:
            self.it = tflite_interpreter(model_bytes)
            self.it.allocate_tensors()
            ins = [d["index"] for d in self.it.get_input_details()]
            outs = [d["index"] for d in self.it.get_output_details()]
            self._set = lambda x, i: self.it.set_tensor(ins[i], x)
            self._get = lambda i: self.it.get_tensor(outs[i])

    def __call__(self, **inputs):
        for name, x in inputs.items():
            self._set(np.ascontiguousarray(x), self.in_pos[name])
        self.it.invoke()
        return {name: np.array(self._get(i)) for name, i in self.out_pos.items()}


class Int8Decoder:
    """Greedy decoding of the data/int8 graphs from Python, the loop the firmware runs:
    quantise frames, run the pooler once, then decoder steps from <bos> until <eos> or max_steps,
    feeding h_new and the context back unchanged (identical quantisation, see quant.json).
    runtime: "tflm" (tflite_micro.runtime, the device's kernels) or "tflite"; precision int8 or fp32."""

    def __init__(self, int8_dir, runtime="tflm", precision="int8"):
        int8_dir = Path(int8_dir)
        self.quant = read_json(int8_dir / "quant.json")
        self.precision = precision
        self.max_steps = self.quant["max_steps"]
        self.graphs = {}
        for name in (POOLER, DECODER):
            entry = self.quant["models"][f"{name}_{precision}"]
            path = int8_dir / entry["file"]
            if not path.is_file():
                raise TinyCapError(path, "file not found")
            # the measured arena plus slack for a differently aligned buffer start
            arena = entry["arena_bytes"] + ARENA_SLACK if runtime == "tflm" else None
            self.graphs[name] = GraphRunner(path.read_bytes(), entry, runtime, arena)
        frames_io = self.graphs[POOLER].io["inputs"][0]
        self.frame_scale, self.frame_zero_point = frames_io["scale"], frames_io["zero_point"]

    def encode(self, frame_emb):
        """frame_emb (T, D) float -> pooler outputs (int8 or float arrays, batch 1)."""
        frames = np.asarray(frame_emb, np.float32)[None]
        if self.precision == "int8":
            frames = quantize_frames(frames, self.frame_scale, self.frame_zero_point)
        return self.graphs[POOLER](frames=frames)

    def caption(self, frame_emb):
        """frame_emb (T, D) -> token ids (no <bos>, stops before <eos>)."""
        return self.caption_with_logits(frame_emb)[0]

    def caption_with_logits(self, frame_emb):
        """frame_emb (T, D) -> (token ids, the logits of every step (S, V), <eos> step included)."""
        return self._decode(self.encode(frame_emb))

    def caption_from_int8(self, frames_q):
        """Already quantised int8 frames (T, D) -> caption_with_logits()'s result (int8 graphs only)."""
        return self._decode(self.graphs[POOLER](frames=np.asarray(frames_q, np.int8)[None]))

    def _decode(self, enc):
        h, context, tok, out, logits = enc["h0"], enc["context"], BOS, [], []
        for _ in range(self.max_steps):
            res = self.graphs[DECODER](token=np.array([tok], np.int32), h=h, context=context)
            h = res["h_new"]
            logits.append(res["logits"][0])
            tok = int(np.argmax(res["logits"][0]))  # first maximum on ties, like the firmware's loop
            if tok == EOS:
                break
            out.append(tok)
        return out, np.stack(logits)


class TflmDecoder(Int8Decoder):
    """The int8 graphs in the TFLM runtime: `TflmDecoder("data/int8").caption(frame_emb)`."""

    def __init__(self, int8_dir):
        super().__init__(int8_dir, runtime="tflm", precision="int8")


def pixels_to_q(pixels):
    """uint8 pixels -> the int8 encoder's input q = pixel - 128 (what the camera's XOR 0x80 gives)."""
    return (np.asarray(pixels).astype(np.int16) - 128).astype(np.int8)


def requant_table(encoder_out, frame_scale, frame_zero_point):
    """int8 (256,): MicroCap's int8 frame input for each int8 encoder output -128..127. The same numbers
    as dequantising ((q - zero_point) * scale, float32) and quantize_frames(): a table on the device."""
    q = np.arange(-128, 128, dtype=np.float32)
    x = (q - np.float32(encoder_out["zero_point"])) * np.float32(encoder_out["scale"])
    return quantize_frames(x, frame_scale, frame_zero_point)


class DeviceDecoder:
    """The device path in TFLM, what the firmware's tc_push_frame()/tc_caption() reproduce:
    uint8 frames (T, S, S, 3) -> int8 encoder graph per frame -> int8 embeddings (T, D) -> requant_table
    -> the pooler + decoder loop of TflmDecoder."""

    def __init__(self, encoder_path, int8_dir, arena_bytes=512 * 1024):
        encoder_path = Path(encoder_path)
        if not encoder_path.is_file():
            raise TinyCapError(encoder_path, "file not found (run distill_encoder with encoder.int8: true)")
        data = encoder_path.read_bytes()
        io = io_details(data)
        (inp,), (out,) = io["inputs"], io["outputs"]
        if inp["dtype"] != "int8" or (inp["scale"], inp["zero_point"]) != (1.0, 0) or len(inp["shape"]) != 4:
            raise TinyCapError(encoder_path, f"input must be int8 pixel - 128 [1,S,S,3] (scale 1, zero point 0), got {inp}")
        self.encoder = GraphRunner(data, io, "tflm", arena_bytes)
        self.decoder = TflmDecoder(int8_dir)
        self.size = inp["shape"][1]
        self.dim = out["shape"][-1]
        if self.dim != self.decoder.graphs[POOLER].io["inputs"][0]["shape"][-1]:
            raise TinyCapError(
                encoder_path,
                f"embeds to D = {self.dim}, MicroCap ({int8_dir}) reads {self.decoder.graphs[POOLER].io['inputs'][0]['shape']}",
            )
        self.table = requant_table(out, self.decoder.frame_scale, self.decoder.frame_zero_point)
        self.in_name, self.out_name = inp["name"], out["name"]

    def embed(self, frames):
        """uint8 (T, S, S, 3) -> the encoder's int8 output (T, D)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.size, self.size, 3) or frames.dtype != np.uint8:
            raise TinyCapError(
                "device frames", f"need uint8 [T,{self.size},{self.size},3] RGB, got {frames.dtype} {list(frames.shape)}"
            )
        return np.stack([self.encoder(**{self.in_name: q[None]})[self.out_name][0] for q in pixels_to_q(frames)])

    def caption_with_logits(self, frames):
        """uint8 frames (T, S, S, 3) -> (token ids, int8 logits (S, V)), as Int8Decoder.caption_with_logits."""
        return self.decoder.caption_from_int8(self.table[self.embed(frames).astype(np.int16) + 128])

    def caption(self, frames):
        return self.caption_with_logits(frames)[0]


def device_reference(decoder, frames):
    """What the device must reproduce from camera frames: the DeviceDecoder's token ids and int8 logits (S, V)
    for every clip of frames uint8 (N, T, S, S, 3)."""
    tokens, logits = zip(*(decoder.caption_with_logits(clip) for clip in frames)) if len(frames) else ((), ())
    return list(tokens), [x.astype(np.int8) for x in logits]


def write_reference(path, video_ids, tokens, logits):
    """A reference run as .npz: per clip its token ids and int8 logits (steps, V), ragged rows concatenated."""
    steps = np.cumsum([0] + [len(x) for x in logits])
    n_tok = np.cumsum([0] + [len(t) for t in tokens])
    with open(path, "wb") as f:
        np.savez(
            f,
            video_id=np.array(video_ids, dtype=str),
            tokens=np.array([t for ts in tokens for t in ts], np.int32),
            token_offsets=n_tok,
            logits=np.concatenate(logits) if logits else np.zeros((0, 0), np.int8),
            logit_offsets=steps,
        )


def read_reference(path):
    """write_reference()'s file -> {video_id: (token ids, int8 logits (steps, V))}."""
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found (run quantize_int8)")
    with np.load(path) as z:
        t, to, x, xo = z["tokens"], z["token_offsets"], z["logits"], z["logit_offsets"]
        return {str(v): (t[to[i] : to[i + 1]].tolist(), x[xo[i] : xo[i + 1]]) for i, v in enumerate(z["video_id"])}


def tflm_reference(int8_dir, frame_emb):
    """What the device must reproduce: TFLM's token ids and int8 logits (S, V) for every clip of
    frame_emb (N, T, D) float, and the decoder (its frame quantisation)."""
    decoder = TflmDecoder(int8_dir)
    tokens, logits = zip(*(decoder.caption_with_logits(clip) for clip in frame_emb)) if len(frame_emb) else ((), ())
    return list(tokens), [x.astype(np.int16) for x in logits], decoder


def beam_search(step, state, beam, max_steps):
    """Keep the `beam` best partial captions by total log-probability; the winner is the best
    finished caption by log-probability per token (<eos> counted), as the guide's beam search ranks."""
    live = [(0.0, [], state)]  # (log-prob, tokens, state)
    finished = []
    for _ in range(max_steps):
        cands = []
        for score, tokens, st in live:
            logits, new_st = step(tokens[-1] if tokens else BOS, st)
            logp = _log_softmax(logits.astype(np.float64))
            for tok in np.argsort(-logp, kind="stable")[:beam]:
                cands.append((score + logp[tok], tokens + [int(tok)], new_st))
        cands.sort(key=lambda c: -c[0])
        live = []
        for score, tokens, st in cands[:beam]:
            (finished if tokens[-1] == EOS else live).append((score, tokens, st))
        if not live:
            break
    finished += live  # ran out of steps: unfinished hypotheses compete too
    score, tokens, _ = max(finished, key=lambda c: c[0] / len(c[1]))
    return [t for t in tokens if t != EOS]


def _log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


# ----------------------------------------------------------------------------------------------
# TFLM arena, measured in a subprocess (a too-small arena segfaults the process)


_ARENA_PROBE = """
import sys, numpy as np
from tflite_micro import runtime
data = open(sys.argv[1], "rb").read()
n_inputs, lo, hi, step = map(int, sys.argv[2:])

def run(arena):
    it = runtime.Interpreter.from_bytes(data, arena_size=arena)
    for i in range(n_inputs):
        d = it.get_input_details(i)
        it.set_input(np.zeros(d["shape"], d["dtype"]), i)
    it.invoke()
    return it

while hi - lo > 1:  # invariant: lo * step fails, hi * step works
    mid = (lo + hi) // 2
    print("try", mid, flush=True)
    try:
        run(mid * step)
        hi = mid
        print("ok", mid, flush=True)
    except RuntimeError:
        lo = mid
        print("fail", mid, flush=True)
print("result", hi, flush=True)
it = run(hi * step)
sys.stderr.flush()
it.print_allocations()
"""


def measure_arena(model_path, n_inputs, step=16):
    """Smallest tensor arena (bytes, multiple of `step`) with which the TFLM runtime allocates and
    invokes the model, bisected in a subprocess (a too-small arena may crash the process: the probe
    then restarts above the size that crashed). x86-64 host build, so an upper bound for a 32-bit
    target. Also returns the RecordingMicroAllocator report print_allocations() writes to fd 2."""
    lo, hi = 0, -(-max(1 << 20, 10 * Path(model_path).stat().st_size) // step)
    for _ in range(32):
        res = subprocess.run(
            [sys.executable, "-c", _ARENA_PROBE, str(model_path), str(n_inputs), str(lo), str(hi), str(step)],
            capture_output=True,
            text=True,
        )
        lines = [line.split() for line in res.stdout.splitlines()]
        for word, n in lines:
            if word == "ok":
                hi = int(n)
            elif word == "fail":
                lo = int(n)
        if res.returncode == 0 and lines and lines[-1][0] == "result":
            report = [line for line in res.stderr.splitlines() if "RecordingMicroAllocator" in line]
            return hi * step, report
        if lines and lines[-1][0] == "try":  # crashed while trying this size: too small
            lo = int(lines[-1][1])
            continue
        how = f"killed by signal {-res.returncode}" if res.returncode < 0 else f"exit {res.returncode}"
        tail = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise TinyCapError(model_path, f"TFLM could not run the model ({how}: {tail})")
    raise TinyCapError(model_path, "TFLM arena probe kept crashing")
