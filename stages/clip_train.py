"""clip_train: train (or fine-tune, or just export) the CLIP model on the train clips.

Reads params `seed` and `clip:` (model, pretrained, epochs, batch_size, lr); reads data/frames/frames.h5 and
data/videos/annotations.json; writes data/clip/ (open_clip_config.json + model.pt), metrics/clip.json and
training curves in dvclive/clip_train. An interrupted run resumes from data/.resume/clip_train.pt when params
and data are unchanged.
"""

from tinycap import clip, params, stage
from tinycap.io import write_json


def main():
    p = params.load()
    cfg = params.section(p, "clip", clip.ClipParams)
    metrics = clip.train("data/frames/frames.h5", "data/videos/annotations.json", "data/clip", cfg,
                         seed=p["seed"], live_dir="dvclive/clip_train",
                         resume_path="data/.resume/clip_train.pt")  # fmt: skip
    write_json("metrics/clip.json", metrics)


if __name__ == "__main__":
    stage.run(main)
