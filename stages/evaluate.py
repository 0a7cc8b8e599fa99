"""evaluate: captions of every model variant (guide, MicroCap fp32, MicroCap int8 on TFLM when present)
on the evaluation splits, scored with pycocoevalcap.

Reads params `evaluate:`; writes data/eval/ (predictions.json, report.html) and metrics/eval.json.
"""

from tinycap import evaluate, params, stage
from tinycap.io import write_json


def main():
    p = params.load()
    cfg = params.section(p, "evaluate", evaluate.EvaluateParams)
    metrics = evaluate.evaluate("data/embeddings/clip.h5", "data/videos/annotations.json", "data/frames/frames.h5",
                                "data/guide", "data/microcap", "data/int8", "data/eval", cfg)  # fmt: skip
    write_json("metrics/eval.json", metrics)


if __name__ == "__main__":
    stage.run(main)
