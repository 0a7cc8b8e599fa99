"""sample_frames: `num_frames` RGB frames per clip of data/videos/annotations.json.

Reads params `num_frames` and `frames:`; writes data/frames/ (frames.h5 + failures.json) atomically.
"""

from tinycap import frames, params, stage

ANNOTATIONS = "data/videos/annotations.json"
OUT_DIR = "data/frames"


def main():
    p = params.load()
    cfg = params.section(p, "frames", frames.FramesParams)
    frames.sample_frames(ANNOTATIONS, OUT_DIR, p["num_frames"], cfg.size, cfg.max_failure_ratio, cfg.workers)


if __name__ == "__main__":
    stage.run(main)
