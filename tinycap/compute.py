"""Where the heavy stages run: params section `compute`.

`engine` runs sample_frames' decoding and clip_embed's embedding in this process and its local pool (`local`)
or on Ray Data (`ray`: tinycap.ray_engine; the cluster RAY_ADDRESS names, else a local one started for the
stage). `workers` is how many decoding processes (local) or Ray tasks / CLIP actors (ray) run at once; 0 = one
per CPU core of the machine or the cluster. Neither changes an output.
`nproc` is how many torchrun processes train clip_train, train_guide and distill_microcap (tinycap.distributed:
each rank trains on its shard of every batch, gradients averaged over the ranks, rank 0 writes). nproc 1 is a
plain single process: no process group, the models byte for byte those of a run without this setting. More
ranks change the float rounding (and, for the guide and MicroCap, average shard losses), so their models
differ slightly; distill_microcap then trains its ablation students after the shipped one, each across the
ranks, instead of in a forked process beside it.
"""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ComputeParams:
    engine: Literal["local", "ray"] = "local"  # sample_frames + clip_embed: local processes or Ray Data
    workers: int = 0  # decoding processes / Ray tasks and actors; 0 = one per CPU core
    nproc: int = 1  # torchrun processes per training stage; 1 = a plain single process
