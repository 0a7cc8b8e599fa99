"""sample_frames: `num_frames` RGB frames per clip of data/videos/annotations.json.

Reads params `num_frames`, `frames:`, `compute.engine` and `compute.workers`; writes data/frames/ (frames.h5 +
failures.json) atomically. An interrupted run resumes from data/.resume/sample_frames/ (decoded parts of 64 videos).
"""

from tinycap import compute, frames, params, stage

ANNOTATIONS = "data/videos/annotations.json"
OUT_DIR = "data/frames"


def main():
    p = params.load()
    cfg = params.section(p, "frames", frames.FramesParams)
    run = params.section(p, "compute", compute.ComputeParams)
    frames.sample_frames(ANNOTATIONS, OUT_DIR, p["num_frames"], cfg.size, cfg.max_failure_ratio, run.workers, run.engine,
                         resume_dir="data/.resume/sample_frames")  # fmt: skip


if __name__ == "__main__":
    stage.run(main)
