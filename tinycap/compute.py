"""Where the heavy stages run: params section `compute`.

`engine` picks what runs sample_frames and clip_embed (this machine's processes, or Ray Data on the cluster
that RAY_ADDRESS names); `workers` is how many decoding/embedding workers either engine starts;
`nproc` is how many torchrun processes train clip_train, train_guide and distill_microcap. No setting
changes an output: the engines write the same files, and nproc 1 trains exactly as a plain python run.
"""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ComputeParams:
    engine: Literal["local", "ray"] = "local"  # sample_frames + clip_embed: local processes | Ray Data
    workers: int = 0  # decoding/embedding workers; 0 = one per CPU core
    nproc: int = 1  # torchrun processes per training stage (DDP); 1 = a plain single process
