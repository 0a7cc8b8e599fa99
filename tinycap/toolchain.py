"""Host and Cortex-M7 builds and runs of the C firmware, and what the ELFs weigh.

  require_tools() / run_tool()   the external tools, one line naming the Debian package when one is missing
  build_host() / run_host()      gcc: firmware/runtime + generated sources + firmware/host -> a host binary
                                 that captions int8 clips (parity with TFLM, kernel tests)
  build_elfs()                   arm-none-eabi-gcc via firmware/m7/Makefile: the QEMU mps2-an500 and
                                 STM32H743 images from one source (+ build_calib, build_plugin for the counter)
  elf_sizes()                    flash and static RAM of an ELF (arm-none-eabi-size -A)

tinycap.firmware (build_tflm) and tinycap.m7 (benchmark_m7) both stand on this module.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tinycap.errors import TinyCapError

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware"
RUNTIME_DIR = FIRMWARE_DIR / "runtime"
HOST_DIR = FIRMWARE_DIR / "host"
M7_DIR = FIRMWARE_DIR / "m7"
PLUGIN_DIR = FIRMWARE_DIR / "qemu_plugin"
QEMU_ELF = "tinycap_qemu.elf"
STM32_ELF = "tinycap_stm32h743.elf"
CALIB_ELF = "calib_qemu.elf"
HOST_CFLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]

# Debian packages that provide each tool (the one line a user sees when one is missing).
TOOLS = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "arm-none-eabi-nm": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
    "make": "make",
    "gcc": "gcc",
    "llvm-mca": "llvm",
    "llvm-objdump": "llvm",
}


# ---------------------------------------------------------------------------------------- tools


def require_tools(*names):
    for name in names:
        if shutil.which(name) is None:
            raise TinyCapError(name, f"not found; install the Debian package {TOOLS[name]}")
    if "arm-none-eabi-gcc" in names:
        specs = run_tool(["arm-none-eabi-gcc", "-print-file-name=nano.specs"], "arm-none-eabi-gcc").strip()
        if not Path(specs).is_absolute():
            raise TinyCapError("arm-none-eabi-gcc", "newlib-nano not found; install the Debian package libnewlib-arm-none-eabi")


def run_tool(cmd, where, timeout=None, **kw):
    """Run an external tool; its stdout, or one line (the first error line) on failure or timeout."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise TinyCapError(where, f"timed out after {timeout} s: {' '.join(map(str, cmd))}") from None
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        errors = [ln for ln in lines if re.search(r"\berror\b:", ln, re.I)] or lines or ["no output"]
        raise TinyCapError(where, f"exit status {p.returncode}: {errors[0].strip()}")
    return p.stdout


# ---------------------------------------------------------------------------------------- host build


def build_host(gen_dir, out_path, main="host_main.c"):
    """gcc: firmware/runtime + generated sources + firmware/host/<main> -> out_path."""
    require_tools("gcc")
    gen_dir, out_path = Path(gen_dir), Path(out_path)
    # the portable reference kernels only (tc_kernels_cortexm.c is the M7 build's)
    # (tc_conv.c: the image-encoder kernels CONV_2D / DEPTHWISE_CONV_2D the generated code may call)
    kernels = [RUNTIME_DIR / "tc_kernels.c", RUNTIME_DIR / "tc_conv.c"]
    srcs = [HOST_DIR / main, *kernels, RUNTIME_DIR / "tinycap.c", *sorted(gen_dir.glob("*.c"))]
    if main == "graph_main.c":  # graph-only builds (kernel tests) have no tc_model.c
        srcs = [HOST_DIR / main, *kernels, gen_dir / "tc_graphs.c"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", *HOST_CFLAGS, f"-I{RUNTIME_DIR}", f"-I{gen_dir}", *map(str, srcs), "-o", str(out_path)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip()[:300])
        raise TinyCapError(out_path.name, f"host build failed: {first}")
    return out_path


def run_host(host_bin, clips, logits=False, one_shot=False):
    """Caption clips with the host binary -> (tokens per clip, logits per clip or None).

    clips: int8 (N, T, D) frame embeddings (tc_caption_embeddings), or uint8 (N, T, S, S, C) camera frames
    (TC_HAS_ENCODER builds): pushed one at a time and captioned (tc_push_frame / tc_caption), or with
    one_shot by tc_caption_frames; the binary checks S, S, C against the model (one error line). Clips of
    another frame count than T test the firmware's error codes: a clip tc_caption refuses gets the error
    code (an int < 0) instead of its tokens."""
    clips = np.asarray(clips)
    if clips.dtype == np.int8 and clips.ndim == 3:
        flags = ["-e"]
    elif clips.dtype == np.uint8 and clips.ndim == 5:
        flags = ["-s", *map(str, clips.shape[2:]), "-n", str(clips.shape[1])] + (["-o"] if one_shot else [])
    else:
        raise TinyCapError(
            host_bin, f"clips must be int8 (N, T, D) or uint8 (N, T, S, S, 3), got {clips.dtype} {list(clips.shape)}"
        )
    cmd = [str(host_bin), *flags] + (["-l"] if logits else [])
    p = subprocess.run(cmd, input=np.ascontiguousarray(clips).tobytes(), capture_output=True)
    if p.returncode != 0:
        raise TinyCapError(host_bin, f"exit status {p.returncode}: {p.stderr.decode(errors='replace').strip()[:200]}")
    tokens, steps, all_logits = [], [], []
    for line in p.stdout.decode().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "L":
            steps.append(np.array(parts[2:], np.int16))
        elif parts[0] == "T":
            n = int(parts[1])
            tokens.append([int(v) for v in parts[2:]] if n >= 0 else n)
            all_logits.append(np.stack(steps) if steps else np.zeros((0, 0), np.int16))
            steps = []
    if len(tokens) != len(clips):
        raise TinyCapError(host_bin, f"printed {len(tokens)} captions for {len(clips)} clips")
    return tokens, (all_logits if logits else None)


# ---------------------------------------------------------------------------------------- Cortex-M7 build


def model_constants(*dirs):
    """`#define TC_NAME <int>` constants from the headers in `dirs` (generated model + runtime)."""
    consts = {}
    for d in dirs:
        for h in sorted(Path(d).glob("*.h")):
            for m in re.finditer(r"^\s*#define\s+(TC_[A-Z0-9_]+)\s+\(?(-?\d+)[uUlL]*\)?\s*(?:/[*/].*)?$", h.read_text(), re.M):
                consts[m.group(1)] = int(m.group(2))
    return consts


def _make(directory, target, where, **variables):
    """Always a full rebuild (-B): the sources are few, and headers are not make prerequisites."""
    require_tools("make")
    cmd = ["make", "-B", "--no-print-directory", "-C", str(directory), *([target] if target else [])]
    run_tool(cmd + [f"{k}={v}" for k, v in variables.items()], where)


def build_plugin(out_dir):
    """firmware/qemu_plugin -> out_dir/libinsncount.so (host gcc)."""
    require_tools("gcc", "make")
    out_dir = Path(out_dir).resolve()
    _make(PLUGIN_DIR, None, PLUGIN_DIR / "insncount.c", OUT=out_dir)
    return out_dir / "libinsncount.so"


def build_calib(out_dir, calib_n=1000):
    """The calibration image (firmware/m7/calib.c): a loop of exactly 2 * calib_n + 1 instructions."""
    require_tools("arm-none-eabi-gcc", "make")
    out_dir = Path(out_dir).resolve()
    _make(M7_DIR, "calib", M7_DIR / "calib.c", OUT=out_dir, CALIB_N=calib_n)
    return out_dir / CALIB_ELF


def build_elfs(gen_dir, runtime_dir, out_dir, sample_clip=None):
    """Compile firmware/m7 + runtime_dir/*.c + gen_dir/*.c for both link maps into out_dir.

    sample_clip: the clip the STM32H743 image captions on a board: camera frames uint8 (TC_NUM_FRAMES,
    TC_FRAME_SIZE, TC_FRAME_SIZE, 3) when the model has an encoder (TC_FRAME_BYTES defined), else int8
    frame embeddings (TC_NUM_FRAMES, TC_DIM) quantised like the firmware's input; None embeds a clip of
    zero bytes (the image still builds and runs).
    Writes out_dir/tinycap_qemu.elf, out_dir/tinycap_stm32h743.elf (+ .map link maps) and
    out_dir/sample_clip.c. Returns {"qemu": sizes, "stm32h743": sizes} (see elf_sizes()).
    """
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-size", "make")
    gen_dir, runtime_dir, out_dir = (Path(p).resolve() for p in (gen_dir, runtime_dir, out_dir))
    for d in (gen_dir, runtime_dir):
        if not d.is_dir():
            raise TinyCapError(d, "folder not found")
    consts = model_constants(runtime_dir, gen_dir)
    missing = [k for k in ("TC_NUM_FRAMES", "TC_DIM") if k not in consts]
    if missing:
        raise TinyCapError(gen_dir, f"no integer #define for {', '.join(missing)} in the headers")
    T = consts["TC_NUM_FRAMES"]
    if consts.get("TC_HAS_ENCODER"):
        S = consts["TC_FRAME_SIZE"]
        shape, dtype = (T, S, S, 3), np.uint8
    else:
        shape, dtype = (T, consts["TC_DIM"]), np.int8
    sample_clip = np.zeros(shape, dtype) if sample_clip is None else np.asarray(sample_clip)
    if sample_clip.shape != shape or sample_clip.dtype != dtype:
        raise TinyCapError("sample_clip", f"expected {np.dtype(dtype).name} {shape}, got {sample_clip.dtype} {sample_clip.shape}")
    out_dir.mkdir(parents=True, exist_ok=True)
    sample_c = out_dir / "sample_clip.c"
    sample_c.write_text(_sample_clip_source("tc_sample_clip", sample_clip.view(np.uint8).ravel()))
    common = dict(OUT=out_dir, RUNTIME_DIR=runtime_dir, GEN_DIR=gen_dir)
    _make(M7_DIR, "qemu", "firmware build (QEMU mps2-an500)", **common)
    _make(M7_DIR, "stm32", "firmware build (STM32H743)", SAMPLE_CLIP_C=sample_c, **common)
    return {"qemu": elf_sizes(out_dir / QEMU_ELF), "stm32h743": elf_sizes(out_dir / STM32_ELF)}


def _sample_clip_source(name, values):
    rows = [", ".join(str(int(v)) for v in values[i : i + 16]) for i in range(0, len(values), 16)]
    body = ",\n    ".join(rows)
    return (
        "/* Generated by tinycap/toolchain.py (build_elfs): the STM32H743 image's built-in sample clip, as bytes. */\n"
        f"#include <stdint.h>\n\nconst uint8_t {name}[{len(values)}] = {{\n    {body}\n}};\n"
    )


# ---------------------------------------------------------------------------------------- sizes


def parse_size_sysv(text):
    """`arm-none-eabi-size -A` output -> {section: size}."""
    sections = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    return sections


def sizes_from_sections(sections):
    """Flash = text + rodata + data (the .data load image lives in flash); static RAM = data + bss."""
    text = sections.get(".isr_vector", 0) + sections.get(".text", 0)
    rodata = sections.get(".rodata", 0) + sections.get(".ARM.exidx", 0)
    data, bss = sections.get(".data", 0), sections.get(".bss", 0)
    return {
        "text": text,
        "rodata": rodata,
        "data": data,
        "bss": bss,
        "stack_reserved": sections.get(".stack", 0),
        "flash_bytes": text + rodata + data,
        "static_ram_bytes": data + bss,
    }


def elf_sizes(elf):
    require_tools("arm-none-eabi-size")
    return sizes_from_sections(parse_size_sysv(run_tool(["arm-none-eabi-size", "-A", str(elf)], elf)))
