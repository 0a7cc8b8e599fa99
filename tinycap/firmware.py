"""build_tflm: the whole device path as C sources for the firmware runtime in firmware/runtime/.

Reads MicroCap's two int8 TFLite graphs of data/int8/ (pooler, decoder step), quant.json, the vocabulary
and the int8 frame encoder (data/encoder/encoder_int8.tflite), and writes generated C (data/firmware/gen/,
never hand-edited):
  tc_graphs.c/.h  one function per graph (tinycap.codegen), one activation arena shared by all three
  tc_model.c/.h   the glue tinycap.c calls (encode, pool, step), the requant table from the encoder's
                  output to MicroCap's frame input, the vocabulary strings, TC_NUM_FRAMES / TC_DIM /
                  TC_FRAME_SIZE / TC_MAX_LEN / TC_VOCAB_SIZE.
An op the runtime lacks fails the build naming the op; an encoder whose D is not MicroCap's is refused.
It also builds the host binary (gcc, tinycap.toolchain), checks it on every test/novel clip's camera
frames against the TFLM reference of the device path (quantize_int8's device_tflm.npz), exports a TFLM
application of MicroCap (firmware/tflm_app) and builds the Cortex-M7 ELFs.
"""

import concurrent.futures
import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np

from tinycap.codegen import Codegen, conv_scratch_bytes
from tinycap.encoder import read_frames
from tinycap.errors import TinyCapError
from tinycap.frames_file import read_frames_header
from tinycap.int8 import DeviceDecoder, quantize_frames, read_reference, requant_table, same_quantisation, tflm_reference
from tinycap.io import read_json
from tinycap.tflite import io_details
from tinycap.toolchain import FIRMWARE_DIR, RUNTIME_DIR, build_elfs, build_host, run_host
from tinycap.vocab import Vocab

log = logging.getLogger(__name__)

TFLM_APP_DIR = FIRMWARE_DIR / "tflm_app"


@dataclasses.dataclass
class FirmwareParams:
    parity_splits: list[str] = dataclasses.field(default_factory=lambda: ["test", "novel"])  # every clip of
    # these splits is captioned by the host build and by TFLM; any token difference fails the build


# ---------------------------------------------------------------------------------------------
# the MicroCap model: two graphs + decode-loop glue + vocabulary

POOLER_FILE, DECODER_FILE = "microcap_pooler_int8.tflite", "microcap_decoder_int8.tflite"
POOLER_IO = {"inputs": ["frames"], "outputs": ["h0", "context"]}  # + "weights" (attention pooling)
DECODER_IO = {"inputs": ["token", "h", "context"], "outputs": ["logits", "h_new"]}


def _io(quant, key, where):
    """quant.json's inputs/outputs of model `key`, checked to hold the names the loop needs."""
    try:
        entry = quant["models"][key]
        ios = {kind: [d["name"] for d in entry[kind]] for kind in ("inputs", "outputs")}
    except (KeyError, TypeError):
        raise TinyCapError(where, f"no models.{key} inputs/outputs with names") from None
    need = POOLER_IO if key.startswith("pooler") else DECODER_IO
    for kind in ("inputs", "outputs"):
        missing = [n for n in need[kind] if n not in ios[kind]]
        if missing:
            raise TinyCapError(where, f"models.{key}.{kind} lacks {', '.join(missing)}")
    return entry


def _check_io(graph, entry, where):
    """The .tflite graph's I/O (order, shape, type, quantisation) must be what quant.json says."""
    for kind, idx in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        if len(idx) != len(entry[kind]):
            raise TinyCapError(where, f"{len(idx)} {kind} in the graph, {len(entry[kind])} in quant.json")
        for i, d in zip(idx, entry[kind]):
            t = graph.tensors[i]
            if (
                list(t.shape) != list(d["shape"])
                or t.dtype != d["dtype"]
                or (t.dtype == "int8" and (abs(float(t.s) - d["scale"]) > 1e-12 * abs(d["scale"]) or t.zp != d["zero_point"]))
            ):
                raise TinyCapError(where, f"{kind[:-1]} {d['name']} differs from quant.json ({t.dtype}{list(t.shape)})")


def _c_string(s):
    out = []
    for ch in s.encode("utf-8"):
        c = chr(ch)
        out.append(c if 32 <= ch < 127 and c not in '"\\?' else f"\\{ch:03o}")
    return '"' + "".join(out) + '"'


def _encoder_io(encoder_path, dim):
    """The int8 encoder's input (int8 pixel - 128, [1, S, S, 3], scale 1, zero point 0) and output ([1, D])
    descriptions; D must be MicroCap's frame size `dim`."""
    data = encoder_path.read_bytes() if encoder_path.is_file() else None
    if data is None:
        raise TinyCapError(encoder_path, "file not found (run distill_encoder with encoder.int8: true)")
    io = io_details(data)
    if len(io["inputs"]) != 1 or len(io["outputs"]) != 1:
        raise TinyCapError(encoder_path, "the encoder graph must have one input (pixels) and one output (embedding)")
    (inp,), (out,) = io["inputs"], io["outputs"]
    shape = inp["shape"]
    if inp["dtype"] != "int8" or (inp["scale"], inp["zero_point"]) != (1.0, 0) or len(shape) != 4 or shape[3] != 3:
        raise TinyCapError(encoder_path, f"input must be int8 pixel - 128 [1,S,S,3] (scale 1, zero point 0), got {inp}")
    if shape[1] != shape[2]:
        raise TinyCapError(encoder_path, f"input frames must be square, got {shape[1]}x{shape[2]}")
    if out["dtype"] != "int8" or len(out["shape"]) != 2:
        raise TinyCapError(encoder_path, f"output must be an int8 [1, D] embedding, got {out}")
    if out["shape"][1] != dim:
        raise TinyCapError(
            encoder_path, f"embeds to D = {out['shape'][1]}, MicroCap's frames have D = {dim}: retrain one of them"
        )
    return data, inp, out


def generate(int8_dir, vocab_path, out_dir, encoder_path=None):
    """data/int8 + vocab.json (+ the int8 encoder) -> C sources in out_dir (tc_graphs.c/.h, tc_model.c/.h).
    With encoder_path the firmware takes camera frames (tc_push_frame / tc_caption): the encoder graph,
    MicroCap's requantisation table and the frame geometry are generated too; without it, only int8 frame
    embeddings (tc_caption_embeddings). Returns a summary dict (sizes, ops, shapes)."""
    int8_dir, out_dir = Path(int8_dir), Path(out_dir)
    quant_path = int8_dir / "quant.json"
    quant = read_json(quant_path)
    vocab = Vocab.load(vocab_path)
    entries = {"pooler": _io(quant, "pooler_int8", quant_path), "decoder": _io(quant, "decoder_int8", quant_path)}
    for key in ("max_steps", "bos", "eos"):
        if not isinstance(quant.get(key), int):
            raise TinyCapError(quant_path, f"missing integer '{key}'")
    cg = Codegen()
    graphs = {}
    for name, fname in (("pooler", POOLER_FILE), ("decoder", DECODER_FILE)):
        path = int8_dir / fname
        if not path.is_file():
            raise TinyCapError(path, "file not found (run quantize_int8)")
        graphs[name] = cg.add(name, path.read_bytes(), path)
        _check_io(graphs[name], entries[name], path)
    pin = {d["name"]: d for d in entries["pooler"]["inputs"]}
    pout = {d["name"]: d for d in entries["pooler"]["outputs"]}
    din = {d["name"]: d for d in entries["decoder"]["inputs"]}
    dout = {d["name"]: d for d in entries["decoder"]["outputs"]}
    # the loop copies int8 tensors between graphs unchanged: their quantisation must agree
    for a, b, what in (
        (pout["h0"], din["h"], "pooler h0 / decoder h"),
        (dout["h_new"], din["h"], "decoder h_new / h"),
        (pout["context"], din["context"], "pooler context / decoder context"),
    ):
        if a["shape"] != b["shape"] or not same_quantisation(a, b):
            raise TinyCapError(quant_path, f"{what}: quantisation or shape differs; the device loop copies them unchanged")
    _, T, D = pin["frames"]["shape"]
    H = din["h"]["shape"][-1]
    C = din["context"]["shape"][-1]
    V = dout["logits"]["shape"][-1]
    if V != len(vocab):
        raise TinyCapError(quant_path, f"logits have {V} entries, {vocab_path} has {len(vocab)} tokens")
    if din["token"]["dtype"] != "int32" or any(
        d["dtype"] != "int8" for d in (pin["frames"], din["h"], din["context"], dout["logits"])
    ):
        raise TinyCapError(quant_path, "expected int32 token and int8 frames/h/context/logits")
    encoder = None
    if encoder_path is not None:
        encoder_path = Path(encoder_path)
        data, enc_in, enc_out = _encoder_io(encoder_path, D)
        cg.add("encoder", data, encoder_path)  # one arena: the encoder and MicroCap's graphs never run at once
        encoder = {
            "size": enc_in["shape"][1],
            "table": requant_table(enc_out, pin["frames"]["scale"], pin["frames"]["zero_point"]),
        }
    cg.write(out_dir)

    def order(entry, kind, exprs):
        return ", ".join(exprs.get(d["name"], "0") for d in entry[kind])

    pool_out = {"h0": "h0", "context": "context", "weights": "tc_pool_weights"}
    step_in = {"token": "&token", "h": "h", "context": "context"}
    step_out = {"logits": "logits", "h_new": "h_new"}
    extra = [d for d in entries["pooler"]["outputs"] if d["name"] not in pool_out]
    if extra:
        raise TinyCapError(quant_path, f"unexpected pooler output {extra[0]['name']}")
    weights = pout.get("weights")
    words = list(vocab.tokens)
    text_bytes = sum(len(w.encode("utf-8")) + 1 for w in words)
    encoder_hdr = encoder_decl = encoder_src = ""
    if encoder is not None:
        S = encoder["size"]
        encoder_hdr = (
            f"#define TC_FRAME_SIZE {S} /* camera frames: TC_FRAME_SIZE x TC_FRAME_SIZE uint8 RGB, row-major (H, W, 3) */\n"
            f"#define TC_FRAME_BYTES {S * S * 3}\n"
        )
        encoder_decl = (
            "/* one frame, int8 q = pixel - 128 (S, S, 3) -> the encoder's int8 embedding (D): the encoder graph */\n"
            "void tc_model_encode(const int8_t *pixels_q, int8_t *embedding);\n"
            "/* MicroCap's int8 frame input for encoder output q: tc_requant_table[q + 128] (dequantise, requantise) */\n"
            "extern const int8_t tc_requant_table[256];\n"
        )
        rows = [", ".join(str(int(v)) for v in encoder["table"][i : i + 16]) for i in range(0, 256, 16)]
        encoder_src = (
            "void tc_model_encode(const int8_t *pixels_q, int8_t *embedding) {\n"
            "  const void *in[1] = {pixels_q};\n  void *out[1] = {embedding};\n  tc_encoder_run(in, out);\n}\n\n"
            "const int8_t tc_requant_table[256] = {\n  " + ",\n  ".join(rows) + "\n};\n"
        )
    hdr = f"""/* Generated by tinycap/firmware.py from {int8_dir.name}/ and {Path(vocab_path).name} — do not edit. */
#ifndef TC_MODEL_H
#define TC_MODEL_H
#include <stdint.h>

#define TC_NUM_FRAMES {T}
#define TC_DIM {D}
#define TC_HIDDEN {H}
#define TC_CONTEXT {C}
#define TC_VOCAB_SIZE {V}
#define TC_MAX_LEN {quant["max_steps"]} /* decoder steps at most = tokens at most (EOS not written) */
#define TC_BOS {quant["bos"]}
#define TC_EOS {quant["eos"]}
#define TC_FRAMES_SCALE {float(np.float32(pin["frames"]["scale"])).hex()}f
#define TC_FRAMES_ZERO_POINT {pin["frames"]["zero_point"]}
#define TC_LOGITS_SCALE {float(np.float32(dout["logits"]["scale"])).hex()}f
#define TC_LOGITS_ZERO_POINT {dout["logits"]["zero_point"]}
#define TC_LOGITS_OFFSET {float(np.float32(quant["logits_window"]["float_range"][0])).hex()}f /* float logit = (q - zero point) * scale + offset; q = -128: at or below offset */
#define TC_HAS_ENCODER {int(encoder is not None)} /* 1: camera frames in (tc_push_frame), the encoder graph is generated */
{encoder_hdr}
/* frames (T, D) int8 -> h0 (H), context (C): the pooler graph */
void tc_model_pool(const int8_t *frames, int8_t *h0, int8_t *context);
/* one decoder step: token, h (H), context (C) -> logits (V), h_new (H) */
void tc_model_step(int32_t token, const int8_t *h, const int8_t *context, int8_t *logits, int8_t *h_new);
/* vocabulary in flash: the word of each token id */
extern const char *const tc_vocab[TC_VOCAB_SIZE];
{encoder_decl}#endif
"""
    src = f"""/* Generated by tinycap/firmware.py — do not edit. */
#include "tc_graphs.h"
#include "tc_model.h"

{f"static int8_t tc_pool_weights[{int(np.prod(weights['shape']))}]; /* pooling weights: computed, unused by the loop */" if weights else ""}

void tc_model_pool(const int8_t *frames, int8_t *h0, int8_t *context) {{
  const void *in[1] = {{frames}};
  void *out[{len(entries["pooler"]["outputs"])}] = {{{order(entries["pooler"], "outputs", pool_out)}}};
  tc_pooler_run(in, out);
}}

void tc_model_step(int32_t token, const int8_t *h, const int8_t *context, int8_t *logits, int8_t *h_new) {{
  const void *in[3] = {{{order(entries["decoder"], "inputs", step_in)}}};
  void *out[2] = {{{order(entries["decoder"], "outputs", step_out)}}};
  tc_decoder_run(in, out);
}}

const char *const tc_vocab[TC_VOCAB_SIZE] = {{
  {("," + chr(10) + "  ").join(_c_string(w) for w in words)}
}};

{encoder_src}"""
    (out_dir / "tc_model.h").write_text(hdr)
    (out_dir / "tc_model.c").write_text(src)
    vocab_bytes = text_bytes + 4 * len(words)  # words + one 32-bit pointer each on the M7
    return {
        "shapes": {
            "num_frames": T,
            "dim": D,
            "hidden": H,
            "context": C,
            "vocab_size": V,
            "max_len": quant["max_steps"],
            **({"frame_size": encoder["size"]} if encoder else {}),
        },
        "ops": sorted(cg.ops_used),
        "weight_bytes": cg.weight_bytes,
        "vocab_bytes": vocab_bytes,
        "arena_bytes": cg.arena_bytes,
        "fc_scratch_bytes": cg.fc_max_k4 * 2,
        "conv_scratch_bytes": conv_scratch_bytes(cg),
        "loop_buffer_bytes": 2 * H + C + V + (int(np.prod(weights["shape"])) if weights else 0),
        # tinycap.c with an encoder: the T x D int8 MicroCap input and the frame being encoded (q = pixel - 128)
        "frame_buffer_bytes": T * D + encoder["size"] ** 2 * 3 if encoder else 0,
        "requant_table_bytes": 256 if encoder else 0,
    }


# ---------------------------------------------------------------------------------------------
# parity against TFLM


def parity(host_bin, int8_dir, frame_emb):
    """Host build vs TFLM on float frame embeddings (N, T, D) (MicroCap alone, tc_caption_embeddings):
    identical token sequences, and the histogram of |logit difference| (LSB) over the steps both ran."""
    ref_tokens, ref_logits, cap = tflm_reference(int8_dir, frame_emb)
    clips = quantize_frames(np.asarray(frame_emb, np.float32), cap.frame_scale, cap.frame_zero_point)
    host_tokens, host_logits = run_host(host_bin, clips, logits=True)
    return compare(host_tokens, host_logits, ref_tokens, ref_logits, cap.max_steps)


def compare(tokens, logits, ref_tokens, ref_logits, max_steps):
    """A build's token ids and int8 logits (steps, V) per clip vs the reference's: identical sequences, and
    the histogram of |logit difference| (LSB) over the steps both ran."""
    hist = {}
    mismatches = []
    for i, (a, b, la, lb) in enumerate(zip(tokens, ref_tokens, logits, ref_logits)):
        if a != b or len(la) != len(lb):
            mismatches.append(i)
        n = min(len(la), len(lb))
        d = np.abs(la[:n].astype(int) - lb[:n].astype(int)).ravel()
        for v, c in zip(*np.unique(d, return_counts=True)):
            hist[int(v)] = hist.get(int(v), 0) + int(c)
    total = sum(hist.values())
    return {
        "clips": len(ref_tokens),
        "token_sequences_identical": len(ref_tokens) - len(mismatches),
        "mismatched_clips": mismatches,
        "logit_abs_diff_histogram": {str(k): v for k, v in sorted(hist.items())},
        "logits_compared": total,
        "max_logit_abs_diff": max(hist) if hist else 0,
        "mean_tokens": float(np.mean([len(t) for t in ref_tokens])) if ref_tokens else 0.0,
        "hit_max_len": int(sum(len(t) == max_steps for t in ref_tokens)),
    }


def device_clips(frames_path, reference_path, splits, size):
    """The clips of `splits` the device path is checked on: (video ids, uint8 camera frames (N, T, size, size, 3)
    as tinycap.encoder.read_frames resizes them, reference token ids, reference int8 logits (steps, V)) from
    frames.h5 and the TFLM reference of the whole device path (quantize_int8's device_tflm.npz)."""
    header = read_frames_header(frames_path)
    vids, split = header.video_id, header.split
    rows = np.flatnonzero(np.isin(split, splits))
    if len(rows) == 0:
        raise TinyCapError(frames_path, f"no clips in splits {', '.join(splits)} for the parity check")
    ref = read_reference(reference_path)
    missing = [v for v in vids[rows] if v not in ref]
    if missing:
        raise TinyCapError(
            reference_path, f"no reference for {len(missing)} clip(s) of {frames_path} (first {missing[0]}): rerun quantize_int8"
        )
    frames = read_frames(frames_path, rows, size)
    ids = [str(v) for v in vids[rows]]
    return ids, frames, [ref[v][0] for v in ids], [ref[v][1] for v in ids]


# ---------------------------------------------------------------------------------------------
# exported TFLM application (firmware/tflm_app + generated model sources)

_RESOLVER_NAMES = {"BATCH_MATMUL": "BatchMatMul", "SPLIT_V": "SplitV"}


def _resolver_method(op):
    return "Add" + _RESOLVER_NAMES.get(op, "".join(w.capitalize() for w in op.split("_")))


def _cc_bytes(name, data, align=16):
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    return f"alignas({align}) const unsigned char {name}[] = {{\n  " + ",\n  ".join(rows) + "\n};\n"


def export_tflm_app(int8_dir, vocab_path, sample_clip, out_dir):
    """firmware/tflm_app templates + generated model_data.cc/.h, model_settings.h, op_resolver.h."""
    int8_dir, out_dir = Path(int8_dir), Path(out_dir)
    quant = read_json(int8_dir / "quant.json")
    vocab = Vocab.load(vocab_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("main.cc", "Makefile", "README.md"):
        shutil.copy2(TFLM_APP_DIR / name, out_dir / name)
    entries = {k: quant["models"][f"{k}_int8"] for k in ("pooler", "decoder")}
    pos = {k: {kind: {d["name"]: i for i, d in enumerate(entries[k][kind])} for kind in ("inputs", "outputs")} for k in entries}
    ops = sorted(set(entries["pooler"]["ops"]) | set(entries["decoder"]["ops"]))
    data = {k: (int8_dir / entries[k]["file"]).read_bytes() for k in entries}
    clip = np.asarray(sample_clip, np.int8).ravel()
    words = ",\n  ".join(_c_string(w) for w in vocab.tokens)
    (out_dir / "model_data.h").write_text(
        "// Generated by tinycap/firmware.py — do not edit.\n#ifndef TINYCAP_MODEL_DATA_H_\n#define TINYCAP_MODEL_DATA_H_\n"
        "#include <cstdint>\n\nextern const unsigned char g_pooler_model[];\nextern const unsigned char g_decoder_model[];\n"
        "extern const int8_t g_sample_clip[];\nextern const char* const kVocab[];\n\n#endif\n"
    )
    (out_dir / "model_data.cc").write_text(
        "// Generated by tinycap/firmware.py from data/int8 and data/guide/vocab.json — do not edit.\n"
        '#include "model_data.h"\n\n'
        + _cc_bytes("g_pooler_model", data["pooler"])
        + "\n"
        + _cc_bytes("g_decoder_model", data["decoder"])
        + "\n"
        + "// a test clip, int8 frame embeddings quantised with the pooler's input parameters\n"
        + f"const int8_t g_sample_clip[] = {{{', '.join(map(str, clip))}}};\n\n"
        + f"const char* const kVocab[] = {{\n  {words}\n}};\n"
    )
    _, T, D = entries["pooler"]["inputs"][0]["shape"]
    H = next(d for d in entries["decoder"]["inputs"] if d["name"] == "h")["shape"][-1]
    C = next(d for d in entries["decoder"]["inputs"] if d["name"] == "context")["shape"][-1]
    consts = {
        "kNumFrames": T,
        "kDim": D,
        "kHidden": H,
        "kContext": C,
        "kVocabSize": len(vocab),
        "kMaxSteps": quant["max_steps"],
        "kBos": quant["bos"],
        "kEos": quant["eos"],
        "kPoolerArenaBytes": entries["pooler"]["arena_bytes"],
        "kDecoderArenaBytes": entries["decoder"]["arena_bytes"],
        "kPoolerFrames": pos["pooler"]["inputs"]["frames"],
        "kPoolerH0": pos["pooler"]["outputs"]["h0"],
        "kPoolerContext": pos["pooler"]["outputs"]["context"],
        "kDecoderToken": pos["decoder"]["inputs"]["token"],
        "kDecoderH": pos["decoder"]["inputs"]["h"],
        "kDecoderContext": pos["decoder"]["inputs"]["context"],
        "kDecoderLogits": pos["decoder"]["outputs"]["logits"],
        "kDecoderHNew": pos["decoder"]["outputs"]["h_new"],
    }
    (out_dir / "model_settings.h").write_text(
        "// Generated by tinycap/firmware.py — do not edit.\n#ifndef TINYCAP_MODEL_SETTINGS_H_\n#define TINYCAP_MODEL_SETTINGS_H_\n\n"
        "// arenas: quant.json arena_bytes, the smallest arena the host TFLM runtime allocates and invokes each graph with\n"
        + "".join(f"constexpr int {k} = {v};\n" for k, v in consts.items())
        + "\n#endif\n"
    )
    adds = "".join(f"  TF_LITE_ENSURE_STATUS(resolver.{_resolver_method(op)}());\n" for op in ops)
    (out_dir / "op_resolver.h").write_text(
        "// Generated by tinycap/firmware.py — do not edit. Only the ops of the two TinyCap graphs:\n"
        f"// {' '.join(ops)}\n#ifndef TINYCAP_OP_RESOLVER_H_\n#define TINYCAP_OP_RESOLVER_H_\n\n"
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
        f"constexpr int kNumOps = {len(ops)};\nusing TinyCapOpResolver = tflite::MicroMutableOpResolver<kNumOps>;\n\n"
        f"inline TfLiteStatus RegisterTinyCapOps(TinyCapOpResolver& resolver) {{\n{adds}  return kTfLiteOk;\n}}\n\n#endif\n"
    )
    return {"ops": ops, "arena_bytes": consts["kPoolerArenaBytes"] + consts["kDecoderArenaBytes"], "built": False}


# ---------------------------------------------------------------------------------------------
# the build_tflm stage


def build(int8_dir, vocab_path, encoder_path, frames_path, reference_path, out_dir, cfg):
    """data/int8 + data/encoder -> out_dir (gen/, host/tc_host, tflm_app/, elf/); returns metrics/firmware.json.

    Parity: every clip of cfg.parity_splits goes through the host build as camera frames (tc_push_frame x T,
    tc_caption): its token ids and every decoder step's int8 logits must equal the TFLM reference of the
    whole device path (reference_path, quantize_int8's device_tflm.npz), else the build fails (a mismatch is
    a bug, not a figure)."""
    out_dir = Path(out_dir)
    log.info("generating C sources from %s and %s", int8_dir, encoder_path)
    info = generate(int8_dir, vocab_path, out_dir / "gen", encoder_path)
    host = build_host(out_dir / "gen", out_dir / "host" / "tc_host")
    vids, frames, ref_tokens, ref_logits = device_clips(
        frames_path, reference_path, cfg.parity_splits, info["shapes"]["frame_size"]
    )
    log.info("parity host build vs TFLM on %d clips (%s), camera frames in", len(vids), ", ".join(cfg.parity_splits))
    tokens, logits = run_host_parallel(host, frames)
    max_steps = info["shapes"]["max_len"]
    report = compare(tokens, logits, ref_tokens, ref_logits, max_steps)
    bad = report["clips"] - report["token_sequences_identical"]
    if bad:
        first = vids[report["mismatched_clips"][0]]
        raise TinyCapError(
            host, f"host build and TFLM disagree on {bad} of {report['clips']} clips (first: {first}): a firmware bug"
        )
    if report["max_logit_abs_diff"] > 0:
        raise TinyCapError(
            host, f"logits differ from TFLM by up to {report['max_logit_abs_diff']} LSB (bit-exact required): a firmware bug"
        )
    device = DeviceDecoder(encoder_path, int8_dir)
    sample = device.table[device.embed(frames[0]).astype(np.int16) + 128]  # (T, D) MicroCap's int8 input
    app = export_tflm_app(int8_dir, vocab_path, sample, out_dir / "tflm_app")
    log.info("firmware ELFs (QEMU mps2-an500, STM32H743)")
    elf_sizes = build_elfs(out_dir / "gen", RUNTIME_DIR, out_dir / "elf", sample_clip=frames[0])
    static_bytes = sum(info[k] for k in ("arena_bytes", "fc_scratch_bytes", "conv_scratch_bytes", "loop_buffer_bytes"))
    static_bytes += info["frame_buffer_bytes"]
    return {
        "ops": info["ops"],
        "shapes": info["shapes"],
        "weight_bytes": {
            "value": info["weight_bytes"],
            "method": "generated const arrays (weights, biases, quantisation parameters, lookup tables) of the encoder, "
            "pooler and decoder graphs in gen/tc_graphs.c",
        },
        "vocab_bytes": {
            "value": info["vocab_bytes"],
            "method": "generated: word strings + a 32-bit pointer per word (Cortex-M7)",
        },
        "static_buffer_bytes": {
            "value": static_bytes,
            "method": "generated: one activation arena planned by lifetime, shared by the encoder, pooler and decoder "
            f"graphs ({info['arena_bytes']}) + FC input scratch ({info['fc_scratch_bytes']}) + convolution scratch (im2col "
            f"columns, depthwise planes: {info['conv_scratch_bytes']}) + decode-loop "
            f"buffers h, h_new, context, logits, pooling weights ({info['loop_buffer_bytes']}) + T x D int8 "
            f"MicroCap input and the frame being encoded ({info['frame_buffer_bytes']}); no heap",
        },
        "elf_sizes": elf_sizes,
        "parity": {
            **{k: v for k, v in report.items() if k != "mismatched_clips"},
            "splits": list(cfg.parity_splits),
            "method": "host build (gcc, portable C kernels) on camera frames (tc_push_frame x T, tc_caption) vs the "
            "TFLM reference of the whole device path (data/int8/device_tflm.npz, tinycap.int8.DeviceDecoder); token "
            "ids and the int8 logits of every decoder step compared, 0 LSB allowed",
        },
        "tflm_app": {**app, "method": "exported sources only: TFLM C++ is not installable here, not compiled"},
    }


def run_host_parallel(host_bin, frames, workers=2):
    """run_host(logits=True) on uint8 clips (N, T, S, S, 3), split over `workers` processes (one per core)."""
    parts = np.array_split(np.arange(len(frames)), workers)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda idx: run_host(host_bin, frames[idx], logits=True), [p for p in parts if len(p)]))
    return [t for r in results for t in r[0]], [x for r in results for x in r[1]]
