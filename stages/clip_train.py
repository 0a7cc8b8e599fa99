"""clip_train: train (or fine-tune, or just export) the CLIP model on the train clips.

Reads params `seed`, `clip:` (model, pretrained, epochs, batch_size, lr) and `compute.nproc` (> 1: as that many
torchrun ranks, tinycap.distributed); reads data/frames/frames.h5 and data/videos/annotations.json; writes
data/clip/ (open_clip_config.json + model.pt), metrics/clip.json and training curves in dvclive/clip_train. An
interrupted run resumes from data/.resume/clip_train.pt when params and data are unchanged.
"""

from tinycap import clip, compute, distributed, params, stage
from tinycap.io import write_json


def main():
    p = params.load()
    if distributed.relaunch(params.section(p, "compute", compute.ComputeParams).nproc):
        return  # compute.nproc > 1: this script ran again as that many torchrun ranks, which trained and wrote
    cfg = params.section(p, "clip", clip.ClipParams)
    with distributed.process_group():  # a torchrun rank joins the others; a plain process: nothing
        metrics = clip.train("data/frames/frames.h5", "data/videos/annotations.json", "data/clip", cfg,
                             seed=p["seed"], live_dir="dvclive/clip_train",
                             resume_path="data/.resume/clip_train.pt")  # fmt: skip
        if distributed.is_main():
            write_json("metrics/clip.json", metrics)


if __name__ == "__main__":
    stage.run(main)
