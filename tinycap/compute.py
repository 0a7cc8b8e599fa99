"""Where the heavy stages run: params section `compute`. No setting here changes an output.

`engine` runs sample_frames' decoding and clip_embed's embedding in this process and its local pool (`local`)
or on Ray Data (`ray`: tinycap.ray_engine; the cluster RAY_ADDRESS names, else a local one started for the
stage). `workers` is how many decoding processes (local) or Ray tasks / CLIP actors (ray) run at once; 0 = one
per CPU core of the machine or the cluster.
"""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ComputeParams:
    engine: Literal["local", "ray"] = "local"  # sample_frames + clip_embed: local processes or Ray Data
    workers: int = 0  # decoding processes / Ray tasks and actors; 0 = one per CPU core
