"""The Cortex-M7 side: emulated runs, exact instruction counts, cycle/energy model.

The two ELFs from one source (tinycap_qemu.elf for QEMU mps2-an500, tinycap_stm32h743.elf for the
size report and real boards) are built by tinycap.toolchain.build_elfs() in build_tflm.
run_qemu()     captions clips (camera frames, or int8 embeddings for an image without an encoder) on the
               emulated M7 with the instruction-counting plugin (firmware/qemu_plugin) and returns tokens,
               captions, stack high-water mark and the executed-instruction counts of every call, by address.
benchmark()    metrics/m7.json with parity (the M7's tokens and every decoder step's int8 logits, printed by
               the firmware with -l, against the TFLM reference of the device path) and every figure with
               its method:
    emulated-exact  counted on the emulated core (instructions; peak stack), or read from the ELF
                    (flash; data + bss) -- exact for this binary
    modelled        cycles (LLVM's Cortex-M7 scheduling model per executed block, or a CPI, plus the
                    flash wait states of the weights: flash_lines()), and what follows from them:
                    latency at clock_hz, energy = latency x current x supply
    datasheet       the run current (STM32H743 DS12110) the energy model takes
"""

import bisect
import concurrent.futures
import logging
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tinycap import vocab
from tinycap.conv_prepare import CONV2D_CHUNK_PAIRS, conv_kernel, cortexm_words
from tinycap.errors import TinyCapError
from tinycap.firmware import device_clips
from tinycap.io import read_json
from tinycap.tflite import graph_macs, read_graph, vocab_rows
from tinycap.toolchain import (
    QEMU_ELF,
    STM32_ELF,
    build_calib,
    build_plugin,
    elf_sizes,
    model_constants,
    require_tools,
    run_tool,
)

log = logging.getLogger(__name__)

# Functions of firmware/m7/main.c, marker.c and semihost.c that run between two tc_mark() calls: the
# call into tc_caption() and back, and the step callback printing the logits (with -l) and the console
# functions it calls. They are the harness, not the inference, so they are not counted.
HARNESS_SYMBOLS = frozenset(
    {"main", "run", "caption_clip", "tc_mark", "print_step_logits", "out_str", "out_u32", "out_flush", "sh_write0", "sh_call"}
)
# The firmware's input buffer (firmware/m7/main.c): one camera frame (or a clip of int8 embeddings), in .bss.
INPUT_BUFFER = "tc_input_frames"


@dataclass
class M7Params:
    clock_hz: int = 480_000_000  # core clock the latency is quoted at (STM32H743 max, VOS0)
    run_current_a: float = 0.148  # STM32H743 DS12110: run mode 480 MHz VOS0, peripherals off, typical
    supply_v: float = 3.3
    cpi: float = 1.0  # cycles per instruction when cycle_model is "cpi"
    cycle_model: Literal["llvm-mca", "cpi"] = "llvm-mca"  # llvm-mca: per executed block, Cortex-M7 model
    splits: list[str] = field(default_factory=lambda: ["test", "novel"])  # clips captioned under QEMU, every one counted
    qemu_workers: int = 2  # QEMU processes the clips are split over (one per core)
    timeout_s: int = 600  # wall-clock limit of one QEMU run
    flash_wait_states: int = 4  # STM32H743 RM0433: flash wait states at 480 MHz (VOS0)
    flash_clock_hz: int = 240_000_000  # the flash's AXI clock (HCLK, at most 240 MHz)
    dcache_bytes: int = 16384  # Cortex-M7 L1 D-cache of the STM32H743
    scale_vocab_size: int | None = 5000  # also model a MicroCap with this vocabulary (MSR-VTT sized); null: off


# ---------------------------------------------------------------------------------------- symbols


def symbols(elf):
    """Function symbols of an ELF: sorted list of (start, end, name), Thumb bit cleared."""
    require_tools("arm-none-eabi-nm")
    out = []
    for line in run_tool(["arm-none-eabi-nm", "-S", "-n", str(elf)], elf).splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "TtWw":
            start = int(parts[0], 16) & ~1
            out.append((start, start + int(parts[1], 16), parts[3]))
    return out


class SymbolMap:
    def __init__(self, syms):
        self.syms = syms
        self.starts = [s for s, _, _ in syms]

    def __call__(self, addr):
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.syms[i][1]:
            return self.syms[i][2]
        return "?"

    def address(self, name):
        for start, _, n in self.syms:
            if n == name:
                return start
        raise TinyCapError(name, "symbol not found in the ELF")


# ---------------------------------------------------------------------------------------- QEMU


def parse_counts(path):
    """The plugin's output -> (blocks {id: [addr, ...]}, segments [{id: executions}, ...])."""
    blocks, segments = {}, []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "S":
            segments.append({})
        elif parts[0] == "C":
            segments[-1][int(parts[1])] = int(parts[2])
        elif parts[0] == "B":
            blocks[int(parts[1])] = [int(a, 16) for a in parts[3:]]
    return blocks, segments


def run_qemu(elf, clips, workdir, plugin, timeout_s=600, logits=False, calls_per_clip=1):
    """Caption `clips` (N rows of one clip's bytes: int8 [N, T*D] embeddings, or uint8 [N, T*S*S*3] camera
    frames for an image with an encoder) with the QEMU image; returns a dict:
    tokens [[id, ...]], captions [str], stack_peak_bytes, stack_size_bytes, dwt_unavailable, stdout,
    blocks, segments (call j of clip i, between two tc_mark(): segments[1 + 2 * (i * calls_per_clip + j)];
    calls_per_clip: T tc_push_frame() then tc_caption() with an encoder, else 1), symbols (SymbolMap), exit_status,
    logits: with logits=True the int8 logits of every decoder step, one int8 (steps, V) array per clip
    (the firmware's step callback prints them; it is harness code, not counted), else None."""
    require_tools("qemu-system-arm", "arm-none-eabi-nm")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    clips = np.ascontiguousarray(clips)
    clip_file, counts = workdir / "clips.bin", workdir / "counts.txt"
    clip_file.write_bytes(clips.tobytes())
    flags = ["-l"] if logits else []
    result = run_elf(elf, workdir, plugin, timeout_s, args=["tinycap", *flags, str(clip_file.resolve())])
    out = result["stdout"]
    tokens, captions = {}, {}
    for m in re.finditer(r"^clip (\d+) tokens((?: \d+)*)$", out, re.M):
        tokens[int(m.group(1))] = [int(t) for t in m.group(2).split()]
    for m in re.finditer(r"^clip (\d+) caption ?(.*)$", out, re.M):
        captions[int(m.group(1))] = m.group(2)
    n = len(clips)
    if sorted(tokens) != list(range(n)) or sorted(captions) != list(range(n)):
        raise TinyCapError(elf, f"firmware printed results for {len(tokens)} of {n} clips")
    result.update(
        tokens=[tokens[i] for i in range(n)],
        captions=[captions[i] for i in range(n)],
        logits=_parse_logits(out, n, elf) if logits else None,
    )
    expected = 2 * n * calls_per_clip + 1
    if len(result["segments"]) != expected:
        raise TinyCapError(counts, f"expected {expected} segments (2 marks per call), got {len(result['segments'])}")
    return result


def _parse_logits(out, n, elf):
    """'clip i step s logits <hex>' lines -> one int8 (steps, V) array per clip."""
    steps = {i: [] for i in range(n)}
    for m in re.finditer(r"^clip (\d+) step (\d+) logits ([0-9a-f]*)$", out, re.M):
        i, s = int(m.group(1)), int(m.group(2))
        if i not in steps or s != len(steps[i]):
            raise TinyCapError(elf, f"logits of clip {i} step {s} out of order")
        steps[i].append(np.frombuffer(bytes.fromhex(m.group(3)), np.int8))
    if not all(steps.values()) or len({len(v) for rows in steps.values() for v in rows}) != 1:
        raise TinyCapError(elf, "the firmware printed no logits, or logits of different lengths, for some clip")
    return [np.stack(steps[i]) for i in range(n)]


def run_elf(elf, workdir, plugin, timeout_s, args=()):
    """One QEMU run with the counting plugin; raises on a crash, a timeout or a non-zero exit."""
    elf, workdir = Path(elf).resolve(), Path(workdir).resolve()
    for path in (elf, workdir, Path(plugin)):
        if re.search(r"[\s,]", str(path)):  # QEMU option syntax: no commas; the firmware splits at spaces
            raise TinyCapError(path, "path must not contain spaces or commas (QEMU command line)")
    syms = SymbolMap(symbols(elf))
    counts = workdir / "counts.txt"
    semi = "enable=on,target=native" + "".join(f",arg={a}" for a in args)
    cmd = [
        "qemu-system-arm",
        "-M",
        "mps2-an500",
        "-nographic",
        "-monitor",
        "none",
        "-semihosting-config",
        semi,
        "-kernel",
        str(elf),
        "-plugin",
        f"{plugin},out={counts},mark={syms.address('tc_mark'):#x}",
    ]
    console = workdir / "console.txt"
    try:
        # QEMU writes the semihosting console to stderr: both go to one file. Not a pipe: QEMU makes its stdio
        # non-blocking, and a write to a full pipe (this reader slowed by a busy machine) is dropped, lines and all.
        with open(console, "w") as out:
            p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TinyCapError("qemu-system-arm", f"timed out after {timeout_s} s running {elf.name}") from None
    stdout = console.read_text()
    if p.returncode != 0:
        lines = [ln for ln in stdout.splitlines() if ln.strip()]
        why = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "no output")
        raise TinyCapError("qemu-system-arm", f"{elf.name} exited with status {p.returncode}: {why.strip()}")
    blocks, segments = parse_counts(counts)
    m = re.search(r"^stack_peak_bytes (\d+) of (\d+)$", stdout, re.M)
    if not m:
        raise TinyCapError(elf, "the firmware printed no stack_peak_bytes line (stack high-water mark)")
    return {
        "stdout": stdout,
        "exit_status": p.returncode,
        "blocks": blocks,
        "segments": segments,
        "symbols": syms,
        "stack_peak_bytes": int(m.group(1)),
        "stack_size_bytes": int(m.group(2)),
        "dwt_unavailable": "dwt_cycles unavailable" in stdout,
    }


def run_calibration(out_dir, calib_n=1000, timeout_s=60):
    """Build and run the calibration image; returns (segment counts by symbol, stdout)."""
    out_dir = Path(out_dir)
    elf = build_calib(out_dir, calib_n)
    plugin = build_plugin(out_dir)
    r = run_elf(elf, out_dir, plugin, timeout_s)
    by_symbol = [segment_by_symbol(seg, r["blocks"], r["symbols"]) for seg in r["segments"]]
    return by_symbol, r["stdout"]


def segment_by_symbol(segment, blocks, syms):
    """{symbol: executed instructions} of one segment."""
    counts = Counter()
    for bid, n in segment.items():
        for addr in blocks[bid]:
            counts[syms(addr)] += n
    return counts


# ---------------------------------------------------------------------------------------- cycles


_COND = r"(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)"


def mca_instructions(objdump_text):
    """llvm-objdump -d listing -> {address: instruction llvm-mca accepts}.

    llvm-mca rejects IT blocks: an IT instruction becomes a NOP (it takes an issue slot) and the
    instructions it predicates lose their condition (a Cortex-M7 issues them either way).
    Branch and literal targets become a label. Data words (literal pools) are left out.
    A call becomes the branch it is (BL -> B, BLX -> BX): LLVM 14's llvm-mca does not model calls and
    charges each a 100-cycle latency ("call instructions are not correctly modeled"), which made every
    executed call ~98 cycles."""
    dis, predicated = {}, 0
    for m in re.finditer(r"^\s*([0-9a-f]+):\s+(\S.*)$", objdump_text, re.M):
        insn = m.group(2).split("@")[0].strip().replace("\t", " ")
        mnemonic = insn.split()[0]
        if mnemonic.startswith(".") or re.fullmatch(r"[0-9a-f]{2}", mnemonic):
            continue
        if re.fullmatch(r"it[te]{0,3}", mnemonic):
            predicated = len(mnemonic) - 1
            insn = "nop"
        elif predicated:
            predicated -= 1
            insn = re.sub(rf"^(\w+?){_COND}(\.[wn])?(?=\s|$)", r"\1\2", insn)
        insn = re.sub(r"0x[0-9a-f]+ <[^>]*>", "tc_target", insn)
        insn = re.sub(r"^bl(x?)(\.w)?(?=\s)", lambda c: "bx" if c.group(1) else "b", insn)
        dis[int(m.group(1), 16)] = insn
    return dis


def block_cycles(elf, block_addrs):
    """Cycles per execution of each block (tuple of instruction addresses), from LLVM's Cortex-M7
    scheduling model: llvm-mca's steady-state cycles per iteration of the block (100 iterations),
    i.e. a fully pipelined core with zero-wait-state memory (TCM / cache hits), no branch penalty."""
    require_tools("llvm-objdump", "llvm-mca")
    text = run_tool(
        ["llvm-objdump", "-d", "--no-show-raw-insn", "--triple=thumbv7em-none-eabihf", "--mcpu=cortex-m7", str(elf)], elf
    )
    dis = mca_instructions(text)
    blocks = sorted(set(block_addrs))
    lines = [".syntax unified", ".thumb", "tc_target:"]
    for i, addrs in enumerate(blocks):
        lines.append(f"# LLVM-MCA-BEGIN b{i}")
        lines += [dis[a] for a in addrs if a in dis]
        lines.append("# LLVM-MCA-END")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "blocks.s"
        src.write_text("\n".join(lines) + "\n")
        out = run_tool(
            [
                "llvm-mca",
                "-mtriple=thumbv7em-none-eabihf",
                "-mcpu=cortex-m7",
                "-iterations=100",
                "-timeline=false",
                "-resource-pressure=false",
                "-instruction-info=false",
                str(src),
            ],
            "llvm-mca",
        )
    cycles = {}
    for m in re.finditer(r"Code Region - b(\d+)\s+Iterations:\s+(\d+)\s+Instructions:\s+\d+\s+Total Cycles:\s+(\d+)", out):
        cycles[blocks[int(m.group(1))]] = int(m.group(3)) / int(m.group(2))
    if len(cycles) != len(blocks):
        raise TinyCapError("llvm-mca", f"analysed {len(cycles)} of {len(blocks)} blocks")
    return cycles


# ---------------------------------------------------------------------------------------- vocabulary scaling


def scale_to_vocab(metrics, rows, vocab_size, new_vocab_size, word_bytes, argmax_instr_per_entry=0.0):
    """Modelled figures for the same MicroCap with a larger vocabulary (an MSR-VTT-sized one).

    Extrapolated from this run's exact counts: every added vocabulary entry adds, per decoder step,
    rows["macs"] MACs at the measured fully-connected instructions/MAC plus the measured argmax
    instructions per logit; rows["const_bytes"] + word_bytes (the word and its pointer) of flash and
    rows["act_bytes"] of RAM; cycles keep the measured cycles/instruction. Decoder steps (caption
    length) stay as measured."""
    extra = new_vocab_size - vocab_size
    instr = metrics["instructions"]["value"]
    fc_ipm = metrics["fc_instr_per_mac"] or metrics["instr_per_mac"]
    add_instr = metrics["decoder_steps"] * extra * (rows["macs"] * fc_ipm + argmax_instr_per_entry)
    cycles = (instr + add_instr) * metrics["cycles"]["value"] / instr
    latency_ms = cycles / metrics["clock_hz"] * 1e3
    power_w = metrics["energy_mj"]["value"] / metrics["latency_ms"]["value"]
    how = (
        f"extrapolated from vocab {vocab_size} to {new_vocab_size} with this run's FC instructions/MAC "
        f"({fc_ipm:.3f}), argmax instructions/logit ({argmax_instr_per_entry:.2f}) and cycles/instruction; "
        f"per added word {rows['macs']} MACs/step, {rows['const_bytes']} + {word_bytes:.1f} flash bytes, "
        f"{rows['act_bytes']} RAM bytes (from the decoder .tflite shapes)"
    )
    return {
        "vocab_size": new_vocab_size,
        "method": "modelled",
        "how": how,
        "macs": metrics["macs"] + metrics["decoder_steps"] * extra * rows["macs"],
        "instructions": instr + add_instr,
        "cycles": cycles,
        "latency_ms": latency_ms,
        "energy_mj": latency_ms * power_w,
        "flash_bytes": round(metrics["flash_bytes"]["value"] + extra * (rows["const_bytes"] + word_bytes)),
        "ram_bytes": round(metrics["ram_bytes"]["value"] + extra * rows["act_bytes"]),
    }


# ---------------------------------------------------------------------------------------- benchmark


def find_file(firmware_dir, name):
    found = sorted(Path(firmware_dir).rglob(name))
    if len(found) != 1:
        raise TinyCapError(firmware_dir, f"expected one {name}, found {len(found)} (run build_tflm)")
    return found[0]


def find_dir(firmware_dir, name):
    """The folder under firmware_dir holding `name` (e.g. the generated sources' tc_model.h)."""
    return find_file(firmware_dir, name).parent


def benchmark(firmware_dir, int8_dir, encoder_path, frames_path, reference_path, vocab_path, params, workdir):
    """The benchmark_m7 stage: caption every clip of params.splits on the emulated M7 from its camera frames
    (tc_push_frame x T, tc_caption), compare the tokens and every decoder step's int8 logits with the TFLM
    reference of the whole device path (quantize_int8's device_tflm.npz), and return (metrics for
    metrics/m7.json, per-op plot rows for metrics/plots/m7_ops.json); check_parity() says whether they may
    be written."""
    int8_dir = Path(int8_dir)
    elf_qemu, elf_stm32 = find_file(firmware_dir, QEMU_ELF), find_file(firmware_dir, STM32_ELF)
    quant = read_json(int8_dir / "quant.json")
    size = model_constants(find_dir(firmware_dir, "tc_model.h")).get("TC_FRAME_SIZE")
    if size is None:
        raise TinyCapError(firmware_dir, "the firmware has no encoder (TC_FRAME_SIZE): rerun build_tflm")
    vids, frames, ref_tokens, ref_logits = device_clips(frames_path, reference_path, params.splits, size)
    T = frames.shape[1]
    graphs = {
        "encoder": Path(encoder_path),
        "pooler": int8_dir / quant["models"]["pooler_int8"]["file"],
        "decoder_step": int8_dir / quant["models"]["decoder_int8"]["file"],
    }
    metrics, op_rows = measure(
        elf_qemu,
        elf_stm32,
        frames.reshape(len(frames), -1),
        macs_pooler=graph_macs(graphs["pooler"]),
        macs_step=graph_macs(graphs["decoder_step"]),
        max_steps=quant["max_steps"],
        params=params,
        workdir=workdir,
        reference_tokens={"tflm": ref_tokens},
        clip_ids=vids,
        reference_logits={"tflm": ref_logits},
        macs_encoder=graph_macs(graphs["encoder"]),
        frames_per_clip=T,
        flash_lines={name: flash_lines(path, params.dcache_bytes // 2) for name, path in graphs.items()},
    )
    if params.scale_vocab_size:
        logits = [d for d in quant["models"]["decoder_int8"]["outputs"] if d["name"] == "logits"]
        vocab_size = int(logits[0]["shape"][-1])
        words = vocab.load(vocab_path).tokens
        word_bytes = sum(len(w.encode()) + 1 for w in words) / len(words) + 4  # text + NUL + pointer
        argmax = metrics["per_op_instructions"].get("tc_k_argmax", 0.0) / (metrics["decoder_steps"] * vocab_size)
        metrics["scaled_vocab"] = scale_to_vocab(
            metrics, vocab_rows(graphs["decoder_step"], vocab_size), vocab_size, params.scale_vocab_size, word_bytes, argmax
        )
    return metrics, op_rows


# ---------------------------------------------------------------------------------------- flash model

FLASH_LINE_BYTES = 32  # STM32H743 (RM0433): one flash read is a 256-bit line; also the L1 cache line


def flash_lines(tflite_path, reuse_bytes):
    """32-byte flash lines one invocation of a graph reads into the D-cache: every op's constants (weights,
    bias, and the per-channel multiplier + shift the generated code adds; a conv op on the Cortex-M fast route
    reads its build-time packed words instead, conv_prepare.cortexm_words) once; an op whose constants exceed
    reuse_bytes (what of the D-cache is left next to the activations) is re-read on every pass the kernel
    makes over them (CONV_2D: one pass per chunk of CONV2D_CHUNK_PAIRS pairs of output pixels, the Cortex-M
    kernel being weight-stationary over a chunk; FULLY_CONNECTED: one per input row)."""
    g = read_graph(tflite_path)
    lines = 0
    for op in g.ops:
        consts = [g.tensors[i] for i in op.inputs if i >= 0 and g.tensors[i].data is not None]
        nbytes = sum(t.nbytes for t in consts)
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            nbytes += 8 * int(g.tensors[op.outputs[0]].shape[-1])
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and g.tensors[op.inputs[0]].dtype == "int8":
            words = cortexm_words(conv_kernel(g, op))
            nbytes = nbytes if words is None else words.nbytes
        if op.name == "GATHER":  # one row of the table
            table = g.tensors[op.inputs[0]]
            nbytes = table.nbytes // table.shape[0] * g.tensors[op.inputs[1]].size
        passes = 1
        if nbytes > reuse_bytes:
            out = g.tensors[op.outputs[0]].shape
            if op.name == "CONV_2D":  # per image: ceil(ceil(pixels / 2) / chunk) chunks
                pairs = -(-int(np.prod(out[1:-1])) // 2)
                passes = int(out[0]) * -(-pairs // CONV2D_CHUNK_PAIRS)
            elif op.name == "FULLY_CONNECTED":
                passes = int(np.prod(out[:-1]))
        lines += passes * -(-nbytes // FLASH_LINE_BYTES)
    return lines


def input_buffer_bytes(elf):
    """Size of the firmware's input buffer (INPUT_BUFFER), which must be in the ELF's .bss (counted in RAM)."""
    require_tools("arm-none-eabi-nm")
    for line in run_tool(["arm-none-eabi-nm", "-S", str(elf)], elf).splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == INPUT_BUFFER:
            if parts[2] not in "Bb":
                raise TinyCapError(elf, f"{INPUT_BUFFER} is not in .bss (nm type {parts[2]})")
            return int(parts[1], 16)
    raise TinyCapError(elf, f"no input buffer {INPUT_BUFFER} in the image (RAM would leave it out)")


def compare_tokens(tokens, ref, name, clip_name):
    """Token sequences of the M7 vs a reference: {count, token_mismatched_clips, first: [{clip, m7, <name>}, ...]}."""
    bad = [i for i, (a, b) in enumerate(zip(tokens, ref)) if list(a) != list(b)]
    missing = [clip_name(i) for i in range(min(len(ref), len(tokens)), max(len(ref), len(tokens)))]
    return {
        "count": len(bad) + len(missing),
        "token_mismatched_clips": [clip_name(i) for i in bad] + missing,
        "first": [{"clip": clip_name(i), "m7": tokens[i], name: list(ref[i])} for i in bad[:10]],
    }


def compare_logits(logits, ref, name, clip_name):
    """Every int8 logit of every decoder step, M7 vs a reference (0 LSB allowed): clips that differ
    (in a value or in their number of steps), logits compared, largest difference, first differences."""
    bad, first, compared, worst = [], [], 0, 0
    for i, (a, b) in enumerate(zip(logits, ref)):
        a, b = np.asarray(a, np.int16), np.asarray(b, np.int16)
        steps = min(len(a), len(b))
        diff = np.abs(a[:steps] - b[:steps]) if a.shape[1:] == b.shape[1:] else np.full((1, 1), 256)
        compared += diff.size
        worst = max(worst, int(diff.max(initial=0)))
        if len(a) != len(b) or diff.any():
            bad.append(clip_name(i))
            if diff.any() and len(first) < 10:
                s, v = (int(x) for x in np.argwhere(diff)[0])
                first.append({"clip": clip_name(i), "step": s, "logit": v, "m7": int(a[s, v]), name: int(b[s, v])})
            elif len(first) < 10:
                first.append({"clip": clip_name(i), "steps_m7": len(a), f"steps_{name}": len(b)})
    bad += [clip_name(i) for i in range(min(len(ref), len(logits)), max(len(ref), len(logits)))]
    return {"logit_mismatched_clips": bad, "logits_compared": compared, "max_logit_abs_diff": worst, "first_logits": first}


def check_parity(metrics):
    """Raise one line naming the first mismatch when the M7 build's tokens or logits differ from a
    reference (metrics from measure()); benchmark_m7 calls it before writing anything."""
    if not metrics["parity_mismatches"]:
        return
    name, m = next((k, v) for k, v in metrics["parity"].items() if v["count"])
    first = (m.get("first") or m.get("first_logits") or [{}])[0]
    what = ", ".join(f"{k} {v}" for k, v in first.items())
    raise TinyCapError(
        "benchmark_m7",
        f"{metrics['parity_mismatches']} clip(s) differ between the M7 build and "
        f"the references, first vs {name}: {what}; metrics/m7.json not written",
    )


def measure(
    elf_qemu,
    elf_stm32,
    clips,
    macs_pooler,
    macs_step,
    max_steps,
    params,
    workdir,
    reference_tokens=None,
    clip_ids=None,
    reference_logits=None,
    macs_encoder=None,
    frames_per_clip=0,
    flash_lines=None,
):
    """Run every clip under QEMU and build metrics/m7.json (dict) and the per-op plot rows.

    clips: one row of bytes per clip: int8 [N, T*D] embeddings, or with frames_per_clip = T uint8 camera
    frames [N, T*S*S*3] (an image with an encoder: T tc_push_frame() calls then tc_caption(), each counted);
    macs_pooler / macs_step / macs_encoder: {op type: MACs} of the pooler graph, one decoder step, one frame's
    encoder (graph_macs());
    max_steps: decoder steps at most (a caption of max_steps tokens ran max_steps steps, a shorter
    one len + 1: the step that produced <eos>); reference_tokens: {name: [[ids], ...]} to compare with;
    reference_logits: {name: [int8 (steps, V) per clip]}: with it the firmware prints every step's
    logits (run_qemu(logits=True)) and every one is compared, 0 LSB allowed;
    flash_lines: {"encoder", "pooler", "decoder_step": 32-byte flash lines one invocation reads (flash_lines())}:
    with it the cycles include the flash wait states (params.flash_wait_states), else zero-wait memory.
    The clips are split over params.qemu_workers QEMU processes (one per core), every one counted.
    """
    workdir = Path(workdir)
    plugin = build_plugin(workdir / "plugin")
    calls = frames_per_clip + 1 if frames_per_clip else 1
    n = len(clips)
    parts = [idx for idx in np.array_split(np.arange(n), max(1, min(params.qemu_workers, n))) if len(idx)]
    log.info("captioning %d clips on the emulated Cortex-M7 (%d QEMU processes)", n, len(parts))

    def run(k, idx):
        return run_qemu(elf_qemu, clips[idx], workdir / f"run{k}", plugin, params.timeout_s, bool(reference_logits), calls)

    with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
        runs = list(pool.map(run, range(len(parts)), parts))
    tokens = [t for r in runs for t in r["tokens"]]
    logits = [x for r in runs for x in r["logits"]] if reference_logits else None

    # per run: the inference instructions of every block (harness code left out), the calls' segments
    inference = [
        {b: tuple(a for a in addrs if r["symbols"](a) not in HARNESS_SYMBOLS) for b, addrs in r["blocks"].items()} for r in runs
    ]
    call_segments = [
        [[r["segments"][1 + 2 * (i * calls + j)] for j in range(calls)] for i in range(len(r["tokens"]))] for r in runs
    ]
    instr = np.array(
        [
            [sum(c * len(inf[b]) for b, c in seg.items()) for seg in clip]
            for inf, segs in zip(inference, call_segments)
            for clip in segs
        ],
        np.int64,
    )  # (N, calls)
    if params.cycle_model == "llvm-mca":
        used = {inf[b] for inf, segs in zip(inference, call_segments) for clip in segs for seg in clip for b in seg if inf[b]}
        per_block = block_cycles(elf_qemu, used)
        cycles = np.array(
            [
                [sum(c * per_block[inf[b]] for b, c in seg.items() if inf[b]) for seg in clip]
                for inf, segs in zip(inference, call_segments)
                for clip in segs
            ]
        )
        cycle_model = (
            "llvm-mca -mcpu=cortex-m7 (LLVM Cortex-M7 scheduling model): steady-state cycles per "
            "iteration of every executed block x its exact execution count; no branch-misprediction penalty"
        )
    else:
        cycles = instr * params.cpi
        cycle_model = f"instructions x CPI {params.cpi}"

    steps = np.array([len(t) if len(t) >= max_steps else len(t) + 1 for t in tokens])
    macs_encoder = macs_encoder or {}
    frame_macs = sum(macs_encoder.values())
    macs = frames_per_clip * frame_macs + sum(macs_pooler.values()) + steps * sum(macs_step.values())
    stall = np.zeros(n)
    memory_model = "zero-wait-state memory (TCM / cache hits)"
    if flash_lines:
        line_cycles = (params.flash_wait_states + 1) * params.clock_hz / params.flash_clock_hz
        lines = frames_per_clip * flash_lines.get("encoder", 0) + flash_lines["pooler"] + steps * flash_lines["decoder_step"]
        stall = lines * line_cycles
        memory_model = (
            f"weights in flash (STM32H743 RM0433: {params.flash_wait_states} wait states at {params.clock_hz} Hz, flash "
            f"clock {params.flash_clock_hz} Hz, 256-bit line): every 32-byte line of constants an op reads misses the "
            f"{params.dcache_bytes} B D-cache once per invocation and stalls (wait states + 1) x clock / flash clock = "
            f"{line_cycles:g} cycles; an op whose constants exceed half the D-cache misses again on every pass over them "
            "(tinycap.m7.flash_lines); code, activations and stack hit (I-cache, DTCM), no prefetch or overlap credited"
        )

    ops = Counter()  # instructions by function, all calls of all clips
    for inf, segs, r in zip(inference, call_segments, runs):
        executions = Counter()
        for clip in segs:
            for seg in clip:
                executions.update(seg)
        for b, c in executions.items():
            for addr in inf[b]:
                ops[r["symbols"](addr)] += c
    op_rows = [{"op": op, "instructions": round(v / n, 1)} for op, v in ops.most_common()]

    def per_mac(pattern, op_macs):
        ins = sum(v for op, v in ops.items() if re.search(pattern, op)) / n
        return float(ins / op_macs) if op_macs and ins else None

    fc_macs = frames_per_clip * macs_encoder.get("FULLY_CONNECTED", 0) + macs_pooler.get("FULLY_CONNECTED", 0)
    fc_macs = fc_macs + steps.mean() * macs_step.get("FULLY_CONNECTED", 0)
    conv_macs = frames_per_clip * macs_encoder.get("CONV_2D", 0)
    dw_macs = frames_per_clip * macs_encoder.get("DEPTHWISE_CONV_2D", 0)

    per_clip_instr = instr.sum(1)
    per_clip_cycles = cycles.sum(1) + stall
    sizes = elf_sizes(elf_stm32)
    input_buffer = input_buffer_bytes(elf_stm32)
    stack_peak = max(r["stack_peak_bytes"] for r in runs)
    mean_cycles = float(per_clip_cycles.mean())
    latency_s = mean_cycles / params.clock_hz
    power_w = params.run_current_a * params.supply_v
    clip_name = (lambda i: clip_ids[i]) if clip_ids else (lambda i: i)  # noqa: E731
    mismatches = {name: compare_tokens(tokens, ref, name, clip_name) for name, ref in (reference_tokens or {}).items()}
    for name, ref in (reference_logits or {}).items():
        m = mismatches.setdefault(name, {"count": 0, "token_mismatched_clips": [], "first": []})
        m.update(compare_logits(logits, ref, name, clip_name))
        m["count"] = len(set(m["token_mismatched_clips"]) | set(m["logit_mismatched_clips"]))
    counted = "QEMU mps2-an500 TCG plugin (firmware/qemu_plugin), instructions executed inside the call and its callees"
    metrics = {
        "instructions": {
            "value": float(per_clip_instr.mean()),
            "method": "emulated-exact",
            "min": int(per_clip_instr.min()),
            "max": int(per_clip_instr.max()),
            "how": f"{counted}, mean per caption over {n} clips"
            + (f": {frames_per_clip} tc_push_frame() (encoder) + tc_caption() (pool + decode)" if frames_per_clip else "")
            + (
                "; the logits printed for parity: the step callback is left out, tc_caption's call "
                "of it (2 instructions per step) is in"
                if reference_logits
                else ""
            ),
        },
        "cycles": {
            "value": mean_cycles,
            "method": "modelled",
            "model": f"{cycle_model}; memory: {memory_model}",
            "zero_wait_value": float(cycles.sum(1).mean()),
            "flash_stall_value": float(stall.mean()),
        },
        "latency_ms": {"value": latency_s * 1e3, "method": "modelled", "model": f"cycles / clock_hz ({params.clock_hz} Hz)"},
        "energy_mj": {
            "value": latency_s * power_w * 1e3,
            "method": "modelled",
            "model": f"latency x run_current_a ({params.run_current_a} A, datasheet) x supply_v ({params.supply_v} V)",
        },
        "run_current_a": {
            "value": params.run_current_a,
            "method": "datasheet",
            "source": "STM32H743 DS12110, run mode 480 MHz VOS0, all peripherals off, typical",
        },
        "flash_bytes": {
            "value": sizes["flash_bytes"],
            "method": "emulated-exact",
            "how": "text + rodata + data of the STM32H743 ELF (arm-none-eabi-size -A): runtime, generated "
            + ("encoder, " if frames_per_clip else "")
            + "MicroCap graphs, vocabulary, sample clip",
        },
        "ram_bytes": {
            "value": sizes["static_ram_bytes"] + stack_peak,
            "method": "emulated-exact",
            "how": f"data + bss of the STM32H743 ELF (the bss holds the input buffer {INPUT_BUFFER}, "
            f"{input_buffer} B: " + ("one uint8 camera frame" if frames_per_clip else "T int8 frame embeddings") + ", "
            "and every activation buffer) + peak stack (painted stack, high-water mark after all captions under "
            "QEMU; the STM32H743 image is the same code, another link map)",
        },
        "ram_breakdown": {
            "data": sizes["data"],
            "bss": sizes["bss"],
            "input_buffer_in_bss": input_buffer,
            "stack_peak": stack_peak,
        },
        "macs": float(macs.mean()),
        "macs_pooler": macs_pooler,
        "macs_decoder_step": macs_step,
        "decoder_steps": float(steps.mean()),
        "instr_per_mac": float(per_clip_instr.mean() / macs.mean()) if macs.mean() else None,
        "fc_instr_per_mac": per_mac(r"fully_connected|(^|_)fc(_|$)", fc_macs),
        "clock_hz": params.clock_hz,
        "parity_mismatches": sum(m["count"] for m in mismatches.values()),
        "parity": mismatches,
        "clips": n,
        "qemu_processes": len(parts),
        "sizes_stm32h743": sizes,
        "stack_peak_bytes": stack_peak,
        "dwt_cycles": "unavailable under QEMU (DWT CYCCNT reads 0)"
        if all(r["dwt_unavailable"] for r in runs)
        else "read on the device",
        "per_op_instructions": {row["op"]: row["instructions"] for row in op_rows},
    }
    if frames_per_clip:
        enc_instr = instr[:, :frames_per_clip]
        frame_stall = flash_lines.get("encoder", 0) * line_cycles if flash_lines else 0.0
        frame_cycles = float(cycles[:, :frames_per_clip].mean()) + frame_stall
        caption_cycles = float(cycles[:, -1].mean()) + float((stall - frames_per_clip * frame_stall).mean())
        metrics.update(
            {
                "frame_instructions": {
                    "value": float(enc_instr.mean()),
                    "method": "emulated-exact",
                    "min": int(enc_instr.min()),
                    "max": int(enc_instr.max()),
                    "how": f"{counted}: one tc_push_frame() (pixel - 128, the encoder graph, the requant table), mean over "
                    f"{enc_instr.size} frames",
                },
                "frame_cycles": {"value": frame_cycles, "method": "modelled", "model": "as cycles, one tc_push_frame()"},
                "frame_latency_ms": {
                    "value": frame_cycles / params.clock_hz * 1e3,
                    "method": "modelled",
                    "model": f"frame_cycles / clock_hz ({params.clock_hz} Hz)",
                },
                "caption_after_last_frame_ms": {
                    "value": caption_cycles / params.clock_hz * 1e3,
                    "method": "modelled",
                    "model": "cycles of tc_caption() (pool + decode) alone / clock_hz: the wait after the last frame when "
                    "frames are encoded as they arrive",
                },
                "decode_instructions": {
                    "value": float(instr[:, -1].mean()),
                    "method": "emulated-exact",
                    "how": f"{counted}: tc_caption() (pooler + decoder steps), mean per caption",
                },
                "macs_encoder_frame": macs_encoder,
                "conv_instr_per_mac": per_mac(r"^tc_k_conv2d|^im2col", conv_macs),
                "depthwise_instr_per_mac": per_mac(r"^tc_k_depthwise|^tc_k_dw3_|^dw3_", dw_macs),
                "encoder_macs_per_cycle": float(frame_macs / frame_cycles),
                "frames_per_clip": frames_per_clip,
            }
        )
    return metrics, op_rows
