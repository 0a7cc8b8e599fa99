"""synth_videos: render the embedded captioned-video dataset, or index real MSR-VTT / VATEX annotations.

Reads params `seed` and `data:`; writes data/videos/ (annotations.json + clips/ for synth) and
metrics/data.json (clips, captions and distinct attribute sets per split).
"""

import logging
import os
import time

from tinycap import data, params, stage
from tinycap.io import write_json

OUT_DIR = "data/videos"


def main():
    p = params.load()
    cfg = params.section(p, "data", data.DataParams)
    start = time.perf_counter()
    index, summary = data.build_dataset(cfg, p["seed"], OUT_DIR, workers=min(2, os.cpu_count() or 1))
    write_json("metrics/data.json", summary)
    logging.getLogger("synth_videos").info(
        "%s: %d videos, %d captions in %s (%.1f s)",
        cfg.source,
        len(index["videos"]),
        len(index["sentences"]),
        OUT_DIR,
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    stage.run(main)
