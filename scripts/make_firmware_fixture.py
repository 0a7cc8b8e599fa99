"""Regenerate tests/fixtures/firmware/: tiny int8 MicroCap graphs for tests/test_firmware.py.

A randomly initialised MicroCap (tiny dims) goes through tinycap.quantize's own mirror, converter
and calibration code, so the fixture has the ops and quantisation of the real data/int8 graphs;
one folder per pooling (attention, mean), laid out like data/int8 + data/guide/vocab.json, plus
clips.npy (float32 frame embeddings to caption). Usage: python scripts/make_firmware_fixture.py
"""

import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinycap import microcap, quantize  # noqa: E402
from tinycap.int8 import DECODER, POOLER, check_shared_quant, measure_arena  # noqa: E402
from tinycap.io import write_json  # noqa: E402
from tinycap.tflite import io_details, model_ops  # noqa: E402
from tinycap.vocab import SPECIALS, Vocab  # noqa: E402


def make(pooling, out_dir, seed=0):
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # vocab 42: the logits FC has a partial group of rows (42 = 4 * 10 + 2), run by the M7 code too
    cfg = microcap.MicroCapConfig(
        vocab_size=42,
        dim=24,
        num_frames=4,
        pooling=pooling,
        embed_dim=8,
        hidden=12,
        max_len=9,
        temporal_filter=True,
        temporal_mlp=8,
    )
    model = microcap.MicroCap(cfg).eval()
    with torch.no_grad():  # larger output weights: varied, confident logits
        model.out.weight.mul_(4.0)
        model.h_proj.weight.mul_(2.0)
        model.temporal_filter.copy_(torch.randn(cfg.num_frames, cfg.dim) * 0.3)  # per-dimension frame weights, both signs
        model.temporal_mlp.out.weight.normal_(0.0, 0.3)  # the MLP's read-out starts at zero in training
        if pooling == "attention":  # scores of a few units, position-dependent, like a trained pooler
            model.pooler.query.copy_(torch.randn(cfg.dim) * 3.0)
            model.pooler.pos_emb.copy_(torch.randn(cfg.num_frames, cfg.dim) * 0.3)
    frames = rng.normal(size=(48, cfg.num_frames, cfg.dim)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    with torch.no_grad():  # an <eos> bias with which about half the clips stop early, half run to max length
        base = model.out.bias[2].item()

        def at_max(bias):
            model.out.bias[2] = base + bias
            return np.mean([len(c) == cfg.max_steps for c in model.greedy(torch.as_tensor(frames[32:]))])

        model.out.bias[2] = base + min(np.linspace(0.0, 1.0, 41), key=lambda b: abs(at_max(b) - 0.5))
    vocab = Vocab(SPECIALS + [f"w{i}" for i in range(cfg.vocab_size - len(SPECIALS))])
    seqs = [[1] + list(rng.integers(4, cfg.vocab_size, 6)) + [2] for _ in range(32)]
    mirror, rep = quantize.calibrate(model, frames[:32], seqs, frames[:32], quantize.QuantizeParams())  # as quantize()
    out_dir.mkdir(parents=True, exist_ok=True)
    quant = {
        "max_steps": cfg.max_steps,
        "bos": 1,
        "eos": 2,
        "h_quant": {"scale": quantize.H_QUANT[0], "zero_point": 0},
        "logits_window": {"float_range": list(mirror.ranges["logits"])},
        "models": {},
    }
    for name in (POOLER, DECODER):
        data = quantize.convert(mirror, name, rep[name])
        path = out_dir / quantize.model_file(name, "int8")
        path.write_bytes(data)
        arena, report = measure_arena(path, 1 if name == POOLER else 3)
        quant["models"][f"{name}_int8"] = {
            "file": path.name,
            "bytes": len(data),
            "ops": model_ops(data),
            "arena_bytes": arena,
            **io_details(data),
            "allocation_report": report,
        }
        print(name, pooling, quant["models"][f"{name}_int8"]["ops"], arena)
    check_shared_quant(quant, out_dir)  # the loop copies h and the context unchanged
    write_json(out_dir / "quant.json", quant)
    vocab.save(out_dir / "vocab.json")
    np.save(out_dir / "clips.npy", frames[32:])


if __name__ == "__main__":
    dst = ROOT / "tests" / "fixtures" / "firmware"
    shutil.rmtree(dst, ignore_errors=True)
    for i, pooling in enumerate(("attention", "mean")):
        make(pooling, dst / pooling, seed=i)
