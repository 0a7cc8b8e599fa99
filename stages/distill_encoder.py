"""distill_encoder: a small CNN student of the CLIP image tower, so the device can embed camera frames.

Reads params `seed`, `frames.size` and `encoder:`; reads data/frames/frames.h5 and data/embeddings/clip.h5 (the
teacher's frame_emb); writes data/encoder/ (encoder.pt, student_emb.h5 with the student's frame_emb [V,T,D] in
clip.h5's schema, encoder_int8.tflite) and metrics/encoder.json.
"""

from tinycap import encoder, params, stage
from tinycap.io import write_json


def main():
    p = params.load()
    cfg = params.section(p, "encoder", encoder.EncoderParams)
    metrics = encoder.run("data/frames/frames.h5", "data/embeddings/clip.h5", "data/encoder", cfg,
                          frames_size=p["frames"]["size"], seed=p["seed"])  # fmt: skip
    write_json("metrics/encoder.json", metrics)


if __name__ == "__main__":
    stage.run(main)
