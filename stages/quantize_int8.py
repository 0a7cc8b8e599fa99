"""quantize_int8: TensorFlow mirror of MicroCap, full-integer PTQ, quality through the TFLM runtime.

Reads params `pooling`, `num_frames`, `guide.max_len`, `microcap.embed_dim`, `microcap.hidden`,
`microcap.temporal_filter`, `microcap.temporal_mlp` (the architecture the checkpoint must have), `frames.size` and
`quantize:`; reads data/microcap/microcap.pt, data/embeddings/clip.h5, data/guide/vocab.json and, for the whole
device path (`quantize.device`), data/encoder/encoder_int8.tflite + data/frames/frames.h5; writes data/int8/
(microcap_{pooler,decoder}_{fp32,int8}.tflite, quant.json, captions_tflm.json, captions_device.json,
device_tflm.npz) and metrics/quantize.json.
"""

from tinycap import params, quantize, stage
from tinycap.io import atomic_path, write_json


def main():
    p = params.load()
    cfg = params.section(p, "quantize", quantize.QuantizeParams)
    expect = {
        "pooling": p["pooling"],
        "num_frames": p["num_frames"],
        "max_len": p["guide"]["max_len"],
        "embed_dim": p["microcap"]["embed_dim"],
        "hidden": p["microcap"]["hidden"],
        "temporal_filter": p["microcap"]["temporal_filter"],
        "temporal_mlp": p["microcap"]["temporal_mlp"],
    }
    device = None
    if cfg.device:
        device = {
            "encoder": "data/encoder/encoder_int8.tflite",
            "frames": "data/frames/frames.h5",
            "frames_size": p["frames"]["size"],
        }
    with atomic_path("data/int8") as out:
        metrics = quantize.quantize("data/microcap/microcap.pt", "data/embeddings/clip.h5", "data/guide/vocab.json",
                                    out, cfg, expect, device)  # fmt: skip
    write_json("metrics/quantize.json", metrics)


if __name__ == "__main__":
    stage.run(main)
