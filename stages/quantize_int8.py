"""quantize_int8: TensorFlow mirror of MicroCap, full-integer PTQ, quality through the TFLM runtime.

Reads params `pooling`, `num_frames`, `guide.max_len`, `microcap.embed_dim`, `microcap.hidden`,
`microcap.temporal_filter`, `microcap.temporal_mlp` (the architecture the checkpoint must have) and `quantize:`; reads data/microcap/microcap.pt,
data/embeddings/clip.h5, data/guide/vocab.json; writes data/int8/ (microcap_{pooler,decoder}_{fp32,int8}.tflite,
quant.json, captions_tflm.json) and metrics/quantize.json.
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
    with atomic_path("data/int8") as out:
        metrics = quantize.quantize("data/microcap/microcap.pt", "data/embeddings/clip.h5", "data/guide/vocab.json",
                                    out, cfg, expect)  # fmt: skip
    write_json("metrics/quantize.json", metrics)


if __name__ == "__main__":
    stage.run(main)
