"""train_guide: build the vocabulary from the train captions and train the transformer guide.

Reads params `seed`, `guide:` and `compute.nproc` (> 1: as that many torchrun ranks, tinycap.distributed);
reads data/embeddings/clip.h5; writes data/guide/ (vocab.json, guide.pt), metrics/guide.json and training
curves in dvclive/train_guide. An interrupted run resumes from data/.resume/train_guide.pt when params and
data are unchanged.
"""

from tinycap import compute, distributed, guide, params, stage
from tinycap.io import write_json


def main():
    p = params.load()
    if distributed.relaunch(params.section(p, "compute", compute.ComputeParams).nproc):
        return  # compute.nproc > 1: this script ran again as that many torchrun ranks, which trained and wrote
    cfg = params.section(p, "guide", guide.GuideParams)
    with distributed.process_group():  # a torchrun rank joins the others; a plain process: nothing
        metrics = guide.train("data/embeddings/clip.h5", "data/guide", cfg, seed=p["seed"],
                              live_dir="dvclive/train_guide", resume_path="data/.resume/train_guide.pt")  # fmt: skip
        if distributed.is_main():
            write_json("metrics/guide.json", metrics)


if __name__ == "__main__":
    stage.run(main)
