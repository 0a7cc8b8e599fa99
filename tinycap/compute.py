"""Where the heavy stages run: params section `compute`.

`workers` is how many decoding processes sample_frames starts (0: one per CPU core); it changes no output.
The Ray Data engine for sample_frames/clip_embed and torchrun for the training stages (issue 16) are not on
main yet: they will add their settings here.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ComputeParams:
    workers: int = 0  # decoding workers; 0 = one per CPU core
