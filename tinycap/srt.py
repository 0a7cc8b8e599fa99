"""Subtitles for long videos: sliding windows, merging repeated captions, SRT text.

A window of `length_s` seconds starts every `stride_s` seconds; each window is captioned from
`num_frames` frames spread evenly inside it. A window's cue is shown from its start until the next
window starts (or until its own end when windows leave gaps), so cues never overlap and their
times increase. Consecutive cues with the same caption are merged into one.
"""

import re
from dataclasses import dataclass

from tinycap.errors import TinyCapError


@dataclass
class Cue:
    start_s: float
    end_s: float
    caption: str


def windows(duration_s, length_s, stride_s):
    """Window (start, end) pairs covering [0, duration_s]; the last one is clipped to the end."""
    if length_s <= 0 or stride_s <= 0:
        raise TinyCapError("--window/--stride", "must be positive")
    if duration_s <= 0:
        raise TinyCapError("video", "has no duration")
    out = []
    start = 0.0
    while True:
        end = min(start + length_s, duration_s)
        out.append((start, end))
        if start + length_s >= duration_s:
            break
        start += stride_s
        if start >= duration_s:
            break
    return out


def frame_times(start_s, end_s, num_frames):
    """Centres of `num_frames` equal slices of [start_s, end_s] (the sampler's convention)."""
    step = (end_s - start_s) / num_frames
    return [start_s + (i + 0.5) * step for i in range(num_frames)]


def cues_from_windows(spans, captions):
    """One cue per window, shown until the next window starts; consecutive repeats merged."""
    cues = []
    for i, ((start, end), caption) in enumerate(zip(spans, captions)):
        shown_until = min(spans[i + 1][0], end) if i + 1 < len(spans) else end
        if cues and cues[-1].caption == caption and abs(cues[-1].end_s - start) < 1e-6:
            cues[-1].end_s = shown_until
        else:
            cues.append(Cue(start, shown_until, caption))
    return cues


def timestamp(seconds):
    """SRT time 'HH:MM:SS,mmm'."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def format_srt(cues):
    blocks = [f"{i}\n{timestamp(c.start_s)} --> {timestamp(c.end_s)}\n{c.caption}\n" for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


_TIME = r"(\d{2,}):(\d{2}):(\d{2}),(\d{3})"
_ARROW = re.compile(rf"^{_TIME} --> {_TIME}$")


def parse_srt(text, where="srt"):
    """Parse SRT text back into cues; raises TinyCapError on anything malformed."""
    cues = []
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    for n, block in enumerate(blocks, 1):
        lines = block.splitlines()
        if len(lines) < 3 or lines[0].strip() != str(n):
            raise TinyCapError(where, f"cue {n}: expected index line '{n}', times and text")
        m = _ARROW.match(lines[1].strip())
        if not m:
            raise TinyCapError(where, f"cue {n}: bad time line {lines[1]!r}")
        g = [int(x) for x in m.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append(Cue(start, end, "\n".join(lines[2:])))
    return cues
