"""sample_frames: `num_frames` RGB frames per clip of data/videos/annotations.json.

Reads params `num_frames`, `frames:` and `compute.workers`; writes data/frames/ (frames.h5 + failures.json)
atomically.
"""

from tinycap import compute, frames, params, stage

ANNOTATIONS = "data/videos/annotations.json"
OUT_DIR = "data/frames"


def main():
    p = params.load()
    cfg = params.section(p, "frames", frames.FramesParams)
    workers = params.section(p, "compute", compute.ComputeParams).workers
    frames.sample_frames(ANNOTATIONS, OUT_DIR, p["num_frames"], cfg.size, cfg.max_failure_ratio, workers)


if __name__ == "__main__":
    stage.run(main)
