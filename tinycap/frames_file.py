"""frames.h5, the file sample_frames writes (tinycap.frames), as its readers see it: the header checked once here.
Its own small module so that the stages reading frames.h5 do not depend on the video decoding code."""

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tinycap.errors import TinyCapError


@dataclass(frozen=True)
class FramesHeader:
    """What frames.h5 holds besides the pixels: frames' shape (V, T, S, S, 3) and a video id and split per row."""

    shape: tuple
    video_id: np.ndarray  # (V,) str
    split: np.ndarray  # (V,) str


def read_frames_header(path):
    """frames.h5's header (the file sample_frames writes); one line naming it unless it holds uint8 [V,T,S,S,3]
    RGB frames and V video ids and splits."""
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found (run sample_frames first)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("frames", "video_id", "split") if k not in f]
            if missing:
                raise TinyCapError(path, f"missing dataset(s) {', '.join(missing)}")
            shape, dtype = f["frames"].shape, f["frames"].dtype
            video_id, split = f["video_id"][:].astype(str), f["split"][:].astype(str)
    except OSError as e:
        raise TinyCapError(path, f"not a readable HDF5 file ({e})") from None
    if len(shape) != 5 or shape[-1] != 3 or shape[2] != shape[3] or dtype != np.uint8:
        raise TinyCapError(path, f"frames must be uint8 [V,T,S,S,3] RGB, got {dtype} {list(shape)}")
    if len(video_id) != shape[0] or len(split) != shape[0]:
        raise TinyCapError(path, f"video_id/split have {len(video_id)}/{len(split)} rows, frames {shape[0]}")
    return FramesHeader(tuple(shape), video_id, split)
