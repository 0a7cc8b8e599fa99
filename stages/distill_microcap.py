"""distill_microcap: train the MicroCap student from the guide (CE + alpha KL + beta attention alignment).

Reads params `seed`, `pooling`, `guide.max_len`, `microcap:` and `compute.nproc` (> 1: as that many torchrun
ranks, tinycap.distributed); reads data/embeddings, data/pooled (the attention pooler's initial weights),
data/guide; writes data/microcap/microcap.pt, metrics/microcap.json (params counts, val CIDEr, ablation
no_kd / kl / kl_attn) and curves in dvclive/distill_microcap.
"""

from tinycap import compute, distributed, guide, microcap, params, stage
from tinycap.io import write_json


def main():
    p = params.load()
    if distributed.relaunch(params.section(p, "compute", compute.ComputeParams).nproc):
        return  # compute.nproc > 1: this script ran again as that many torchrun ranks, which trained and wrote
    cfg = params.section(p, "microcap", microcap.MicroCapParams)
    max_len = params.section(p, "guide", guide.GuideParams).max_len
    with distributed.process_group():  # a torchrun rank joins the others; a plain process: nothing
        metrics = microcap.distill("data/embeddings/clip.h5", "data/pooled", "data/guide", "data/microcap", cfg,
                                   pooling=p["pooling"], max_len=max_len, seed=p["seed"],
                                   live_dir="dvclive/distill_microcap")  # fmt: skip
        if distributed.is_main():
            write_json("metrics/microcap.json", metrics)


if __name__ == "__main__":
    stage.run(main)
