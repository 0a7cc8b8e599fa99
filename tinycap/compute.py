"""Where the heavy stages run: params section `compute`.

`workers` is how many decoding processes sample_frames starts (0: one per CPU core); it changes no output.
`nproc` is how many torchrun processes train clip_train, train_guide and distill_microcap (tinycap.distributed:
each rank trains on its shard of every batch, gradients averaged over the ranks, rank 0 writes). nproc 1 is a
plain single process: no process group, the models byte for byte those of a run without this setting. More
ranks change the float rounding (and, for the guide and MicroCap, average shard losses), so their models
differ slightly; distill_microcap then trains its ablation students after the shipped one, each across the
ranks, instead of in a forked process beside it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ComputeParams:
    workers: int = 0  # decoding workers; 0 = one per CPU core
    nproc: int = 1  # torchrun processes per training stage; 1 = a plain single process
