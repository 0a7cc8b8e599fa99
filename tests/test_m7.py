"""Cortex-M7 side: exact instruction counter, ELF sizes, QEMU runs of the firmware harness."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from tinycap import firmware, m7, tflite, toolchain
from tinycap.errors import TinyCapError
from tinycap.int8 import quantize_frames, tflm_reference

needs_toolchain = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("arm-none-eabi-gcc", "qemu-system-arm", "llvm-mca")),
    reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm, llvm",
)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    return m7.run_calibration(out, calib_n=1000), out


@needs_toolchain
def test_counter_is_exact_on_the_calibration_loop(calib, tmp_path):
    (segments, stdout), _ = calib
    # segments: 0 boot, 1 the hand-written loop, 2 empty, 3 the C dot product, 4 printing + exit
    assert len(segments) == 5
    assert segments[1]["tc_calib_loop"] == 2 * 1000 + 1
    assert set(segments[2]) == {"tc_mark", "main"} and sum(segments[2].values()) <= 4
    # a second length: the count follows 2n + 1 exactly, not approximately
    segments_b, _ = m7.run_calibration(tmp_path, calib_n=54321)
    assert segments_b[1]["tc_calib_loop"] == 2 * 54321 + 1
    # the C workload ran and computed the right thing (its count is what the compiler emitted)
    i = np.arange(256)
    a = ((i * 7 - 100) & 0xFF).astype(np.uint8).view(np.int8).astype(np.int64)
    b = ((50 - i * 3) & 0xFF).astype(np.uint8).view(np.int8).astype(np.int64)
    assert f"dot {int(a @ b) & 0xFFFFFFFF}" in stdout
    assert segments[3]["tc_calib_dot"] > 256  # at least one instruction per element
    assert "stack_peak_bytes" in stdout


SIZE_A = """\
tinycap_stm32h743.elf  :
section            size        addr
.isr_vector          64   134217728
.text             12000   134217792
.rodata          300000   134229792
.ARM.exidx            8   134529792
.data                16   536870912
.bss               9000   536870928
.stack            16384   536879928
.debug_info        5126           0
.comment             38           0
Total             34706
"""


def test_size_parsing():
    sections = toolchain.parse_size_sysv(SIZE_A)
    assert sections[".text"] == 12000 and ".debug_info" in sections and "Total" not in sections
    s = toolchain.sizes_from_sections(sections)
    assert s["text"] == 12064 and s["rodata"] == 300008 and s["data"] == 16 and s["bss"] == 9000
    assert s["flash_bytes"] == 12064 + 300008 + 16
    assert s["static_ram_bytes"] == 16 + 9000 and s["stack_reserved"] == 16384


@needs_toolchain
def test_elf_sizes_agree_with_berkeley_size(calib):
    _, out = calib
    elf = out / toolchain.CALIB_ELF
    s = toolchain.elf_sizes(elf)
    text, data, bss = map(
        int,
        subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True)
        .stdout.splitlines()[1]
        .split()[:3],
    )
    assert s["flash_bytes"] == text + data
    assert s["static_ram_bytes"] + s["stack_reserved"] == data + bss


# A model with known behaviour, to test the firmware harness (main.c): input file protocol, output
# lines, per-caption segments and the counter inside a kernel. tc_k_spin runs exactly 2k + 1
# instructions, k = (uint8)frames[0] + 1; tokens are 4 + frames[t * TC_DIM] % 8 for t < frames[1] % 4;
# decoder step s (s = 0 .. n, the last one the <eos> step) has logits v -> (int8)(frames[2] + 7 s + 29 v).
FIXTURE_H = """\
#define TC_NUM_FRAMES 3
#define TC_DIM 8
#define TC_MAX_LEN 4
#define TC_VOCAB_SIZE 12
"""
FIXTURE_C = r"""
#include "tinycap.h"
__attribute__((naked, noinline)) void tc_k_spin(__attribute__((unused)) uint32_t k)
{
    __asm__ volatile("1: subs r0, r0, #1\n bne 1b\n bx lr\n");
}
static const char *const words[TC_VOCAB_SIZE] = {"<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "c", "d", "e", "f", "g", "h"};
static int8_t logits[TC_VOCAB_SIZE];
static tc_step_fn step_cb;
static void *step_user;
void tc_set_step_callback(tc_step_fn fn, void *user) { step_cb = fn; step_user = user; }
int tc_caption_embeddings(const int8_t *frames, uint16_t *tokens)
{
    tc_k_spin((uint32_t)(uint8_t)frames[0] + 1u);
    int n = ((uint8_t)frames[1]) % 4;
    for (int s = 0; s <= n; s++) {
        for (int v = 0; v < TC_VOCAB_SIZE; v++)
            logits[v] = (int8_t)(uint8_t)((uint8_t)frames[2] + 7 * s + 29 * v);
        if (step_cb)
            step_cb(s, logits, step_user);
    }
    for (int t = 0; t < n; t++)
        tokens[t] = (uint16_t)(4 + ((uint8_t)frames[t * TC_DIM]) % 8);
    return n;
}
const char *tc_token_text(uint16_t id) { return id < TC_VOCAB_SIZE ? words[id] : "<unk>"; }
"""


def _fixture_logits(clip):
    """The fixture model's logits of one clip (uint8 view): (steps, TC_VOCAB_SIZE) int8."""
    s, v = np.arange(clip[1] % 4 + 1)[:, None], np.arange(12)[None, :]
    return ((int(clip[2]) + 7 * s + 29 * v) % 256).astype(np.uint8).view(np.int8)


@pytest.fixture(scope="module")
def fixture_fw(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixture")
    gen, rt = root / "gen", root / "runtime"
    gen.mkdir()
    rt.mkdir()
    (gen / "tc_model.h").write_text(FIXTURE_H)
    (rt / "tinycap.h").write_text((toolchain.FIRMWARE_DIR / "runtime" / "tinycap.h").read_text())
    (rt / "fixture.c").write_text(FIXTURE_C)
    sample = np.arange(24, dtype=np.int8).reshape(3, 8)
    sizes = toolchain.build_elfs(gen, rt, root / "fw", sample_clip=sample)
    return root, sizes


@needs_toolchain
def test_qemu_run_prints_tokens_captions_and_counts(fixture_fw):
    root, sizes = fixture_fw
    assert sizes["stm32h743"]["flash_bytes"] > 0 and sizes["qemu"]["static_ram_bytes"] > 0
    rng = np.random.default_rng(0)
    clips = rng.integers(-128, 128, (5, 24)).astype(np.int8)
    clips[0, 1] = 0  # an empty caption
    plugin = toolchain.build_plugin(root / "plugin")
    r = m7.run_qemu(root / "fw" / toolchain.QEMU_ELF, clips, root / "run", plugin, timeout_s=60)
    assert r["exit_status"] == 0 and r["dwt_unavailable"]
    words = "abcdefgh"
    for i, clip in enumerate(clips.view(np.uint8)):
        n = clip[1] % 4
        expect = [4 + clip[t * 8] % 8 for t in range(n)]
        assert r["tokens"][i] == expect
        assert r["captions"][i] == " ".join(words[t - 4] for t in expect)
        counts = m7.segment_by_symbol(r["segments"][2 * i + 1], r["blocks"], r["symbols"])
        assert counts["tc_k_spin"] == 2 * (int(clip[0]) + 1) + 1
    assert 0 < r["stack_peak_bytes"] < r["stack_size_bytes"]
    assert r["logits"] is None and " logits " not in r["stdout"]


def _caption_counts(r, i):
    c = m7.segment_by_symbol(r["segments"][2 * i + 1], r["blocks"], r["symbols"])
    return {k: v for k, v in c.items() if k not in m7.HARNESS_SYMBOLS}


@needs_toolchain
def test_qemu_logits_are_printed_and_their_printing_is_not_counted(fixture_fw):
    """-l: every decoder step's logits come back exactly; the step callback printing them is harness
    code (left out of the count): only tc_caption_embeddings's own call of the callback differs."""
    root, _ = fixture_fw
    clips = np.random.default_rng(2).integers(-128, 128, (4, 24)).astype(np.int8)
    clips[:, 1] = [0, 1, 2, 3]
    plugin = toolchain.build_plugin(root / "plugin")
    plain = m7.run_qemu(root / "fw" / toolchain.QEMU_ELF, clips, root / "run_plain", plugin, timeout_s=60)
    r = m7.run_qemu(root / "fw" / toolchain.QEMU_ELF, clips, root / "run_logits", plugin, timeout_s=60, logits=True)
    assert r["tokens"] == plain["tokens"]
    for i, clip in enumerate(clips.view(np.uint8)):
        np.testing.assert_array_equal(r["logits"][i], _fixture_logits(clip))
        with_logits, without = _caption_counts(r, i), _caption_counts(plain, i)
        assert set(with_logits) == set(without)  # no harness symbol leaks into the count
        assert {k: v for k, v in with_logits.items() if k != "tc_caption_embeddings"} == {
            k: v for k, v in without.items() if k != "tc_caption_embeddings"
        }
        assert (
            0 < with_logits["tc_caption_embeddings"] - without["tc_caption_embeddings"] <= 8 * (clip[1] % 4 + 1)
        )  # the call, per step


@needs_toolchain
def test_without_a_clip_file_the_image_captions_its_sample_clip(fixture_fw):
    """The main path a board runs (no file on the semihosting command line): the built-in sample clip,
    through the same input buffer."""
    root, _ = fixture_fw
    r = m7.run_elf(root / "fw" / toolchain.QEMU_ELF, root, toolchain.build_plugin(root / "plugin"), 60, args=["tinycap"])
    sample = np.arange(24, dtype=np.uint8)
    expect = " ".join(str(4 + sample[t * 8] % 8) for t in range(sample[1] % 4))
    assert f"clip 0 tokens {expect}\n" in r["stdout"] and "clip 1 " not in r["stdout"]


@needs_toolchain
def test_both_images_are_the_same_code(fixture_fw):
    """One main path: the STM32H743 image holds the functions and objects of the QEMU image (the one
    measured), byte for byte the same sizes; only the addresses (link map) differ."""
    root, _ = fixture_fw

    def table(elf):
        out = subprocess.run(["arm-none-eabi-nm", "-S", str(elf)], capture_output=True, text=True, check=True).stdout
        return sorted((p[3], p[2], p[1]) for p in (ln.split() for ln in out.splitlines()) if len(p) == 4)

    qemu, stm32 = table(root / "fw" / toolchain.QEMU_ELF), table(root / "fw" / toolchain.STM32_ELF)
    assert qemu == stm32
    names = {name for name, _, _ in qemu}
    assert {"tc_caption_embeddings", "caption_clip", "tc_sample_clip", m7.INPUT_BUFFER} <= names


@needs_toolchain
def test_qemu_bad_input_and_timeout_are_one_line(fixture_fw, tmp_path):
    root, _ = fixture_fw
    plugin = toolchain.build_plugin(root / "plugin")
    with pytest.raises(TinyCapError, match=r"exited with status 3: error: clip file size"):
        m7.run_qemu(root / "fw" / toolchain.QEMU_ELF, np.zeros((1, 23), np.int8), tmp_path, plugin, timeout_s=60)
    elf = toolchain.build_calib(tmp_path / "spin", calib_n=2_000_000_000)
    with pytest.raises(TinyCapError, match=r"^qemu-system-arm: timed out after 1 s") as e:
        m7.run_elf(elf, tmp_path, plugin, timeout_s=1)
    assert "\n" not in str(e.value)


def test_missing_tool_names_the_apt_package(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TinyCapError, match="^qemu-system-arm: not found; install the Debian package qemu-system-arm$"):
        toolchain.require_tools("qemu-system-arm")
    with pytest.raises(TinyCapError, match="gcc-arm-none-eabi$"):
        toolchain.build_elfs("gen", "runtime", "out")


def test_mca_instructions_flatten_it_blocks():
    listing = """\
     1c4:      	subs	r0, #1
     1c6:      	bne	0x1c4 <loop> @ imm = #-6
     1c8:      	itt	ne
     1ca:      	ldrbne	r3, [r1], #1
     1cc:      	addne.w	r0, r0, r3
     1d0:      	bls	0x1c4 <loop>
     1d2:      	.word	0x12345678
     1d6:      	bl	0x1c4 <loop> @ imm = #-22
     1da:      	blx	r7
     1dc:      	bls.w	0x1c4 <loop>
"""
    d = m7.mca_instructions(listing)
    assert d[0x1D6] == "b tc_target" and d[0x1DA] == "bx r7"  # calls as branches: llvm-mca charges a call 100 cycles
    assert d[0x1DC] == "bls.w tc_target"
    assert d[0x1C6] == "bne tc_target"
    assert d[0x1C8] == "nop" and d[0x1CA] == "ldrb r3, [r1], #1" and d[0x1CC] == "add.w r0, r0, r3"
    assert d[0x1D0] == "bls tc_target"  # outside the IT block a condition stays
    assert 0x1D2 not in d


@needs_toolchain
def test_llvm_mca_cycles_for_the_calibration_loop(calib):
    _, out = calib
    elf = out / toolchain.CALIB_ELF
    loop = m7.SymbolMap(m7.symbols(elf)).address("tc_calib_loop")
    cycles = m7.block_cycles(elf, [(loop, loop + 2)])
    assert 1.0 <= cycles[(loop, loop + 2)] <= 4.0  # subs + bne: LLVM models 3 cycles (flag dependency)


@needs_toolchain
def test_llvm_mca_charges_a_call_as_a_branch(calib):
    """A block that ends in a call costs what its branch costs, not llvm-mca's 100-cycle call latency."""
    _, out = calib
    elf = out / toolchain.CALIB_ELF
    text = toolchain.run_tool(["llvm-objdump", "-d", "--no-show-raw-insn", str(elf)], elf)
    calls = [int(a, 16) for a in re.findall(r"^\s*([0-9a-f]+):\s+bl\s", text, re.M)]
    assert calls
    cycles = m7.block_cycles(elf, [(calls[0],)])
    assert cycles[(calls[0],)] <= 4.0


def _step_graph(path, V=7, H=5, E=3):
    """A decoder-step-shaped float graph: GATHER (V, E) -> FC (E + H -> H) -> TANH -> FC (H -> V)."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    emb = tf.constant(rng.random((V, E), np.float32))
    w1 = tf.constant(rng.random((E + H, H), np.float32))
    w2, b2 = tf.constant(rng.random((H, V), np.float32)), tf.constant(rng.random(V, np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1], tf.int32), tf.TensorSpec([1, H], tf.float32)])
    def step(tok, h):
        h2 = tf.tanh(tf.matmul(tf.concat([tf.gather(emb, tok), h], -1), w1))
        return tf.matmul(h2, w2) + b2

    conv = tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], step)
    path.write_bytes(conv.convert())
    return path


def test_macs_and_vocab_rows_from_tflite_shapes(tmp_path):
    path = _step_graph(tmp_path / "step.tflite")
    assert tflite.graph_macs(path) == {"FULLY_CONNECTED": 8 * 5 + 5 * 7}
    # per vocabulary entry: 5 MACs; float32 weight row (5 x 4 B) + bias (4 B) + embedding row (3 x 4 B)
    assert tflite.vocab_rows(path, 7) == {"macs": 5, "const_bytes": 20 + 4 + 12, "act_bytes": 4}


def test_scale_to_vocab_is_linear_in_the_added_rows():
    metrics = {
        "instructions": {"value": 1_000_000.0},
        "cycles": {"value": 1_200_000.0},
        "latency_ms": {"value": 2.5},
        "energy_mj": {"value": 1.221},
        "flash_bytes": {"value": 100_000},
        "ram_bytes": {"value": 20_000},
        "macs": 900_000.0,
        "decoder_steps": 10.0,
        "instr_per_mac": 1.1,
        "fc_instr_per_mac": 1.0,
        "clock_hz": 480_000_000,
    }
    rows = {"macs": 192, "const_bytes": 192 + 96 + 4, "act_bytes": 1}
    s = m7.scale_to_vocab(metrics, rows, 1000, 5000, word_bytes=10.0, argmax_instr_per_entry=3.0)
    assert s["method"] == "modelled" and s["vocab_size"] == 5000
    assert s["macs"] == 900_000 + 10 * 4000 * 192
    assert s["instructions"] == 1_000_000 + 10 * 4000 * (192 * 1.0 + 3.0)
    assert s["cycles"] == pytest.approx(s["instructions"] * 1.2)
    assert s["latency_ms"] == pytest.approx(s["cycles"] / 480_000)
    assert s["energy_mj"] == pytest.approx(s["latency_ms"] * 1.221 / 2.5)
    assert s["flash_bytes"] == 100_000 + 4000 * (292 + 10) and s["ram_bytes"] == 20_000 + 4000


@needs_toolchain
def test_measure_writes_every_figure_with_its_method(fixture_fw, tmp_path):
    root, _ = fixture_fw
    clips = np.random.default_rng(1).integers(-128, 128, (3, 24)).astype(np.int8)
    clips[:, 1] = [1, 2, 3]  # 1, 2 and 3 tokens (max 4: every caption stopped at <eos>)
    u = clips.view(np.uint8)
    truth = [[4 + u[i, t * 8] % 8 for t in range(u[i, 1] % 4)] for i in range(3)]
    wrong = [truth[0], truth[1], truth[2][:-1]]
    logits = [_fixture_logits(c) for c in u]
    off_by_one = [x.copy() for x in logits]
    off_by_one[1][1, 5] += 1  # one logit of clip 1, 1 LSB
    params = m7.M7Params(timeout_s=60)
    metrics, rows = m7.measure(
        root / "fw" / toolchain.QEMU_ELF,
        root / "fw" / toolchain.STM32_ELF,
        clips,
        macs_pooler={"FULLY_CONNECTED": 100},
        macs_step={"FULLY_CONNECTED": 50},
        max_steps=4,
        params=params,
        workdir=tmp_path,
        reference_tokens={"tflm": wrong},
        reference_logits={"tflm": off_by_one, "host": logits},
    )
    for key, method in [
        ("instructions", "emulated-exact"),
        ("cycles", "modelled"),
        ("latency_ms", "modelled"),
        ("energy_mj", "modelled"),
        ("flash_bytes", "emulated-exact"),
        ("ram_bytes", "emulated-exact"),
    ]:
        assert metrics[key]["method"] == method and metrics[key]["value"] > 0
    spin = [2 * (int(u[i, 0]) + 1) + 1 for i in range(3)]
    assert metrics["instructions"]["min"] > min(spin)  # the kernel plus tc_caption's own code
    assert {"op": "tc_k_spin", "instructions": round(sum(spin) / 3, 1)} in rows
    assert [r["instructions"] for r in rows] == sorted((r["instructions"] for r in rows), reverse=True)
    assert metrics["decoder_steps"] == 3.0 and metrics["macs"] == 100 + 3 * 50  # steps: tokens + the <eos> step
    tflm, host = metrics["parity"]["tflm"], metrics["parity"]["host"]
    assert metrics["parity_mismatches"] == 2 and tflm["token_mismatched_clips"] == [2] and tflm["first"][0]["clip"] == 2
    assert tflm["logit_mismatched_clips"] == [1] and tflm["max_logit_abs_diff"] == 1
    assert tflm["first_logits"][0] == {
        "clip": 1,
        "step": 1,
        "logit": 5,
        "m7": int(logits[1][1, 5]),
        "tflm": int(off_by_one[1][1, 5]),
    }
    assert host["count"] == 0 and host["max_logit_abs_diff"] == 0 and host["logits_compared"] == 12 * (2 + 3 + 4)
    assert metrics["latency_ms"]["value"] == pytest.approx(metrics["cycles"]["value"] / 480e3)
    assert metrics["energy_mj"]["value"] == pytest.approx(metrics["latency_ms"]["value"] * 0.148 * 3.3)
    sizes = toolchain.elf_sizes(root / "fw" / toolchain.STM32_ELF)
    assert metrics["ram_bytes"]["value"] == sizes["static_ram_bytes"] + metrics["stack_peak_bytes"]
    # the input buffer (T int8 frame embeddings) is in the STM32H743 image's bss, so in RAM
    assert metrics["ram_breakdown"]["input_buffer_in_bss"] == 3 * 8 <= metrics["ram_breakdown"]["bss"]
    with pytest.raises(
        TinyCapError, match=r"^benchmark_m7: 2 clip\(s\) differ .* first vs tflm: clip 2, m7 \[.*metrics/m7.json not written$"
    ):
        m7.check_parity(metrics)


def test_input_buffer_outside_bss_or_missing_is_an_error(monkeypatch):
    nm = {
        "a.elf": "20000100 00000018 D tc_input_frames\n",
        "b.elf": "20000100 00000018 B other\n",
        "c.elf": "20000100 00000018 B tc_input_frames\n",
    }
    monkeypatch.setattr(m7, "require_tools", lambda *names: None)
    monkeypatch.setattr(m7, "run_tool", lambda cmd, where: nm[cmd[-1]])
    with pytest.raises(TinyCapError, match="not in .bss"):
        m7.input_buffer_bytes("a.elf")
    with pytest.raises(TinyCapError, match="no input buffer"):
        m7.input_buffer_bytes("b.elf")
    assert m7.input_buffer_bytes("c.elf") == 24


def test_benchmark_m7_writes_nothing_when_parity_fails(monkeypatch, tmp_path):
    """Parity is checked before anything is written: one line naming the mismatch, no metrics files."""
    import importlib.util

    from tinycap import params as params_mod

    spec = importlib.util.spec_from_file_location("benchmark_m7", toolchain.FIRMWARE_DIR.parent / "stages" / "benchmark_m7.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    metrics = {
        "parity_mismatches": 1,
        "parity": {
            "tflm": {"count": 0, "first": []},
            "host": {"count": 1, "first": [], "first_logits": [{"clip": "v7", "step": 3, "logit": 41, "m7": -5, "host": -6}]},
        },
    }
    monkeypatch.setattr(params_mod, "load", lambda *a, **k: {})
    monkeypatch.setattr(params_mod, "section", lambda params, name, cls: cls())
    monkeypatch.setattr(m7, "benchmark", lambda *a, **k: (metrics, [{"op": "tc_k_add", "instructions": 1.0}]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics" / "plots").mkdir(parents=True)
    with pytest.raises(
        TinyCapError,
        match=r"^benchmark_m7: 1 clip\(s\) differ .* vs host: clip v7, step 3, logit 41, m7 -5, host -6; metrics/m7.json not written$",
    ):
        stage.main()
    assert list((tmp_path / "metrics").rglob("*.json")) == []
    metrics.update(
        parity_mismatches=0,
        instructions={"value": 1.0, "method": "emulated-exact"},
        latency_ms={"value": 1.0},
        flash_bytes={"value": 1},
        ram_bytes={"value": 1},
    )
    metrics["parity"]["host"]["count"] = 0
    stage.main()  # parity holds: both files written
    assert sorted(p.name for p in (tmp_path / "metrics").rglob("*.json")) == ["m7.json", "m7_ops.json"]


@needs_toolchain
def test_build_error_is_one_line(tmp_path):
    gen, rt = tmp_path / "gen", tmp_path / "runtime"
    gen.mkdir()
    rt.mkdir()
    (gen / "tc_model.h").write_text(FIXTURE_H)
    (rt / "tinycap.h").write_text((toolchain.FIRMWARE_DIR / "runtime" / "tinycap.h").read_text())
    (rt / "broken.c").write_text("int tc_caption(void) { return undefined_name; }\n")
    with pytest.raises(TinyCapError, match=r"^firmware build \(QEMU mps2-an500\): exit status 2: .*broken.c:1:.*error") as e:
        toolchain.build_elfs(gen, rt, tmp_path / "fw")
    assert "\n" not in str(e.value)


@needs_toolchain
def test_qemu_captions_of_the_tiny_model_match_tflm_and_host(tmp_path):
    """The real runtime + generated sources of the firmware fixture (tests/fixtures/firmware) on the
    emulated M7, its Cortex-M fast kernels included: same tokens and every decoder step's int8 logits
    as the TFLM runtime and the host build (0 LSB), exit status 0."""
    src = toolchain.FIRMWARE_DIR.parent / "tests" / "fixtures" / "firmware" / "attention"
    frames = np.load(src / "clips.npy")
    firmware.generate(src, src / "vocab.json", tmp_path / "gen")
    sizes = toolchain.build_elfs(tmp_path / "gen", toolchain.FIRMWARE_DIR / "runtime", tmp_path / "fw")
    assert 0 < sizes["stm32h743"]["flash_bytes"] < 64 * 1024
    tflm_tokens, tflm_logits, tflm = tflm_reference(src, frames)
    clips = quantize_frames(frames, tflm.frame_scale, tflm.frame_zero_point)
    host, host_logits = toolchain.run_host(toolchain.build_host(tmp_path / "gen", tmp_path / "host"), clips, logits=True)
    r = m7.run_qemu(
        tmp_path / "fw" / toolchain.QEMU_ELF,
        clips.reshape(len(clips), -1),
        tmp_path / "run",
        toolchain.build_plugin(tmp_path / "plugin"),
        timeout_s=60,
        logits=True,
    )
    assert r["exit_status"] == 0
    assert r["tokens"] == tflm_tokens == host
    for ref in (tflm_logits, host_logits):
        report = m7.compare_logits(r["logits"], ref, "ref", lambda i: i)
        assert report["logit_mismatched_clips"] == [] and report["max_logit_abs_diff"] == 0
        assert report["logits_compared"] == sum(x.size for x in ref) > 0
    words = json.loads((src / "vocab.json").read_text())["tokens"]
    assert r["captions"] == [" ".join(words[t] for t in toks) for toks in r["tokens"]]
    per_caption = [m7.segment_by_symbol(r["segments"][2 * i + 1], r["blocks"], r["symbols"]) for i in range(len(clips))]
    assert all(c["tc_k_fully_connected"] > 0 and c["tc_caption_embeddings"] > 0 for c in per_caption)
    # the Cortex-M fast path (tc_kernels_cortexm.c) replaced the portable FULLY_CONNECTED
    assert all(c["tc_k_fully_connected_groups"] > 0 for c in per_caption)


@needs_toolchain
def test_elfs_do_not_depend_on_where_they_are_built(fixture_fw, tmp_path):
    """build_tflm builds in a randomly named temporary folder: neither the ELFs (debug info) nor the link
    maps may record it, so the same sources give the same bytes."""
    root, _ = fixture_fw
    other = tmp_path / "elsewhere"
    for d in ("gen", "runtime"):
        shutil.copytree(root / d, other / d)
    toolchain.build_elfs(other / "gen", other / "runtime", other / "fw", sample_clip=np.arange(24, dtype=np.int8).reshape(3, 8))
    for name in (toolchain.QEMU_ELF, toolchain.STM32_ELF, toolchain.QEMU_ELF + ".map", toolchain.STM32_ELF + ".map"):
        a, b = (root / "fw" / name).read_bytes(), (other / "fw" / name).read_bytes()
        assert str(root).encode() not in a and str(other).encode() not in b
        assert a == b, name
    assert sorted(p.name for p in (other / "fw").iterdir() if p.is_dir()) == []  # the objects are gone


def test_flash_lines_count_constants_once_or_per_pass(tmp_path):
    """The flash model reads each op's constants once per invocation while they fit the reusable D-cache,
    else once per pass of the kernel over them (CONV_2D: one pass per chunk of 64 output pixel pairs)."""
    tf = pytest.importorskip("tensorflow")
    w = tf.constant(np.random.default_rng(0).random((3, 3, 4, 16), np.float32))  # HWIO
    b = tf.constant(np.ones(16, np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 4], tf.float32)])
    def conv(x):
        return tf.nn.conv2d(x, w, 1, "SAME") + b

    path = tmp_path / "conv.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([conv.get_concrete_function()], conv).convert())
    assert [op.name for op in tflite.read_graph(path).ops] == ["CONV_2D"]
    # float weights 16 x 3 x 3 x 4 x 4 B + bias 16 x 4 B + multiplier and shift 16 x 8 B = 2496 B = 78 lines
    assert m7.flash_lines(path, reuse_bytes=8192) == 78
    assert m7.CONV2D_CHUNK_PAIRS == 64
    assert m7.flash_lines(path, reuse_bytes=1024) == 78 * 2  # 256 output pixels: 128 pairs, 2 chunks of 64


def test_tiny_pipeline_benchmarks_the_whole_device_path(tiny_project):
    """The tiny `dvc repro` runs camera frames through the encoder, pooler and decoder on the emulated M7:
    every frame counted, tokens and logits equal to the TFLM device-path reference."""
    m = json.loads((tiny_project / "metrics" / "m7.json").read_text())
    fw = json.loads((tiny_project / "metrics" / "firmware.json").read_text())
    assert m["parity_mismatches"] == 0 and m["frames_per_clip"] == 5 and m["clips"] == fw["parity"]["clips"] > 0
    assert m["frame_instructions"]["method"] == "emulated-exact" and m["frame_instructions"]["min"] > 0
    assert m["instructions"]["value"] == pytest.approx(5 * m["frame_instructions"]["value"] + m["decode_instructions"]["value"])
    assert m["conv_instr_per_mac"] > 0 and m["depthwise_instr_per_mac"] > 0 and m["cycles"]["flash_stall_value"] > 0
    assert fw["parity"]["max_logit_abs_diff"] == 0 and "CONV_2D" in fw["ops"]
