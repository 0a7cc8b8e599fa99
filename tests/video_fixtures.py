"""Fixture videos written with PyAV, whose frames say which frame they are.

Frame i is split into a left and a right half of flat grey levels that encode i in base 16
(`index_frame`), so a test reads the index back from a decoded, resized frame with
`frame_index` (codecs keep flat areas within a few levels). `write_video` picks the
container from the file extension and can write variable frame rates, display rotation,
any codec/pixel format PyAV encodes, and keyframe spacing.
"""

from fractions import Fraction

import av
import numpy as np

LEVELS = 16  # grey levels per half: 8, 24, ..., 248; indices up to 255


def index_frame(i, width, height):
    """RGB frame whose left half has grey 8 + 16*(i // 16) and right half 8 + 16*(i % 16)."""
    if not 0 <= i < LEVELS * LEVELS:
        raise ValueError(f"frame index {i} does not fit in two base-{LEVELS} digits")
    img = np.empty((height, width, 3), np.uint8)
    img[:, : width // 2] = 8 + 16 * (i // LEVELS)
    img[:, width // 2 :] = 8 + 16 * (i % LEVELS)
    return img


def frame_index(img):
    """Read back the index of an `index_frame` from the centre rows of each half."""
    h, w = img.shape[:2]
    rows = img[h // 4 : 3 * h // 4].astype(np.float64)
    left = rows[:, w // 8 : 3 * w // 8].mean()
    right = rows[:, 5 * w // 8 : 7 * w // 8].mean()
    digit = lambda level: int(np.clip(round((level - 8) / 16), 0, LEVELS - 1))
    return digit(left) * LEVELS + digit(right)


def quadrant_frame(i, width, height):
    """Black frame with a red top-left quadrant (for rotation checks)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2, : width // 2] = (255, 0, 0)
    return img


def write_video(
    path,
    n=20,
    fps=10,
    size=(64, 48),
    codec="libx264",
    pix_fmt="yuv420p",
    times=None,
    rotation=0,
    mirror=False,
    gop=None,
    sar=None,
    frame_fn=index_frame,
    options=None,
    container_options=None,
):
    """Encode `n` frames of `frame_fn(i, width, height)` into `path` and return `path`.

    times: optional presentation times in seconds (variable frame rate), one per frame.
    rotation: display-matrix rotation, counter-clockwise degrees (what a phone writes);
    mirror: the display matrix also mirrors left-right after the rotation (a selfie camera).
    sar: sample (pixel) aspect ratio, e.g. Fraction(2, 1) for pixels twice as wide as tall.
    gop: keyframe interval in frames. options: codec options; container_options: muxer options.
    """
    width, height = size
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=dict(options or {}))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pix_fmt.startswith("gray"):  # swscale makes full-range grey: say so in the stream
            stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if sar:
            stream.codec_context.sample_aspect_ratio = sar
        if gop:
            stream.codec_context.gop_size = gop
        if rotation or mirror:
            stream.set_display_rotation(rotation, hflip=mirror)
        for i in range(n):
            rgb = frame_fn(i, width, height)
            if pix_fmt == "pal8":  # GIF-style palette image
                frame = av.VideoFrame.from_ndarray(_palette_image(rgb), format="pal8")
            else:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if pix_fmt != "rgb24":
                    frame = frame.reformat(format=pix_fmt)
            if times is not None:
                frame.pts = round(times[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _palette_image(rgb):
    """(indices uint8 (H, W), palette uint8 (256, 4) ARGB) for an image of at most 256 colours."""
    colours, idx = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255
    palette[: len(colours), 1:] = colours
    return idx.reshape(rgb.shape[:2]).astype(np.uint8), palette


def write_audio(path, seconds=1.0, rate=16000):
    """An audio-only file (AAC in MP4/M4A, MP2 elsewhere) of a quiet sine."""
    codec = "aac" if str(path).endswith((".mp4", ".m4a", ".mov")) else "mp2"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = 1024
        t = np.arange(int(seconds * rate)) / rate
        wave = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(wave), samples):
            chunk = wave[start : start + samples]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
