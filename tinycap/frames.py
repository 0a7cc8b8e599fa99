"""Frame sampling: decode videos with PyAV into square RGB frames at uniform timestamps.

A clip of duration D is cut into `num_frames` equal segments and the frame *shown* at each
segment centre is taken (the last frame whose timestamp is <= the centre), so a clip with
fewer frames than requested repeats frames instead of failing. Frames are reached by
seeking to the nearest keyframe where the container has an index (or the gap is long), so a
long file is never decoded from the start. Each frame is resized so its shorter side (after
the sample aspect ratio) is `size`, centre-cropped to `size` x `size` and turned/mirrored as
the display matrix says (phone videos); any pixel format (10-bit, grayscale, palette, odd sizes) comes out
uint8 RGB.

Public API: `sample_video`, `frames_at`, `probe`, `load_image` for single inputs and
`sample_frames` for the stage (one HDF5 file + failures.json).
"""

import bisect
import contextlib
import logging
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from tinycap import ray_engine
from tinycap.errors import TinyCapError
from tinycap.io import atomic_path, read_json, write_json
from tinycap.journal import Journal, fingerprint, journalled

log = logging.getLogger(__name__)

SEEK_GAP_S = 2  # without a keyframe index, seek only when the next wanted frame is this far ahead
THREADED_PIXELS = 640 * 360  # frames this large are decoded with ffmpeg's own threads
_SIGNATURES = [  # (offset, bytes, name): containers we recognise, to tell "truncated" from "not a video"
    (4, b"ftyp", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (8, b"AVI ", "AVI"),
    (0, b"GIF8", "GIF"),
]


@dataclass
class FramesParams:
    size: int = 64  # shorter side resized to this, centre-cropped to size x size (224 for real CLIP)
    max_failure_ratio: float = 0.05  # the stage fails when more than this share of the videos fail


# ----------------------------------------------------------------------------- public API


def sample_video(path, num_frames, size):
    """`num_frames` frames at the segment centres of the clip.

    Returns frames uint8 (T, S, S, 3) and timestamps_s float32 (T,) of the frames taken
    (seconds from the start of the stream; repeated when the clip has fewer frames than T).
    Raises TinyCapError(path, reason) for anything that is not a readable video.
    """
    _check_sizes(num_frames, size)
    with _Video(path) as video:
        duration = video.duration()
        # segment centres (2i+1) / 2T * D, exact in the stream's time base
        centres = [Fraction(2 * i + 1, 2 * num_frames) * duration for i in range(num_frames)]
        targets = [video.start + int(c / video.tb) for c in centres]
        return video.read(targets, size)


def frames_at(path, times_s, size):
    """Frames shown at the given times (seconds from the start), uint8 (N, S, S, 3), in the given order.

    Seeks to each time (nearest keyframe before it) when that is cheaper than decoding on,
    so memory and work stay bounded for long files. Times must lie within the clip.
    """
    _check_sizes(1, size)
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)
    with _Video(path) as video:
        duration = float(video.duration())
        bad = times[(times < 0) | (times > duration) | ~np.isfinite(times)]
        if bad.size:
            raise TinyCapError(path, f"time {bad[0]:.3f} s is outside the clip (0 .. {duration:.3f} s)")
        order = np.argsort(times, kind="stable")
        # the frame shown at t: floor in the time base, t read as its decimal digits (0.3 stays 3/10)
        targets = [video.start + math.floor(Fraction(repr(float(t))) / video.tb) for t in times[order]]
        frames, _ = video.read(targets, size)
    out = np.empty_like(frames)
    out[order] = frames
    return out


def probe(path):
    """Duration of the video stream in seconds (float), without decoding frames."""
    with _Video(path) as video:
        return float(video.duration())


def load_image(path, size):
    """A still image as uint8 (S, S, 3): EXIF orientation applied, shorter side resized, centre-cropped."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey (PNG/TIFF): keep the top 8 bits
                arr = np.asarray(im, dtype=np.int64)
                im = Image.fromarray(np.clip(arr >> 8 if arr.max() > 255 else arr, 0, 255).astype(np.uint8))
            im = im.convert("RGB")
            w, h = im.size
            nw, nh = _scaled_size(w, h, size)
            im = im.resize((nw, nh), Image.BILINEAR)
            arr = np.asarray(im)
    except UnidentifiedImageError:
        raise TinyCapError(path, "not an image file") from None
    except OSError as e:
        raise TinyCapError(path, f"unreadable image ({e})") from None
    return _centre_crop(arr, size)


def sample_frames(annotations_path, out_dir, num_frames, size, max_failure_ratio, workers=1, engine="local",
                  resume_dir=None):  # fmt: skip
    """The sample_frames stage: every video of annotations.json -> out_dir/frames.h5 + failures.json.

    frames.h5: frames uint8 [V,T,S,S,3], video_id [V] (str), split [V] (str), timestamps_s float32 [V,T]
    (attrs num_frames, size), in annotation order; videos that fail are left out and listed in
    failures.json as {video_id, path, reason}. Raises TinyCapError (and writes nothing) as soon as
    more than `max_failure_ratio` of the videos have failed. `workers` decoding processes
    (0: one per CPU core); engine "ray" decodes in Ray Data tasks instead (compute.engine; tinycap.ray_engine),
    same files byte for byte. With `resume_dir`, every RESUME_VIDEOS decoded videos are kept there (a
    journal.Journal) until the files are written, so a killed run decodes only what it had not finished.
    Returns a summary dict (videos, failures, frames, seconds, resumed: videos taken from resume_dir).
    """
    _check_sizes(num_frames, size)
    if not 0 <= max_failure_ratio <= 1:
        raise TinyCapError("frames.max_failure_ratio", f"must lie in 0..1, got {max_failure_ratio!r}")
    annotations_path = Path(annotations_path)
    videos = _read_video_list(annotations_path)
    n = len(videos)
    allowed = int(max_failure_ratio * n)  # "more than max_failure_ratio" fails
    journal = None
    if resume_dir is not None:
        inputs = fingerprint(annotations_path, *(v["file"] for v in videos))
        journal = Journal(resume_dir, {"inputs": inputs, "num_frames": num_frames, "size": size})
    held = journal.keys() if journal else set()
    starts = range(0, n, RESUME_VIDEOS)
    todo = [a for a in starts if _part_key(a) not in held]
    jobs = [(videos[i]["file"], num_frames, size) for a in todo for i in range(a, min(a + RESUME_VIDEOS, n))]
    failures, ids, splits = [], [], []
    t0 = time.perf_counter()
    with atomic_path(out_dir) as tmp, contextlib.ExitStack() as stack:
        tmp.mkdir()
        if engine == "ray" and jobs:
            stack.enter_context(ray_engine.session(workers))
            workers = min(workers or ray_engine.cluster_cpus(), len(jobs))
            # closed before the session ends, also when too many failures stop the loop early
            decoded = stack.enter_context(contextlib.closing(_ray_results([job[0] for job in jobs], num_frames, size, workers)))
        elif (workers := max(1, min(workers or os.cpu_count() or 1, len(jobs)))) > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            decoded = pool.imap(_sample_job, jobs, chunksize=8)
        else:
            decoded = map(_sample_job, jobs)
        parts = journalled(journal, held, map(_part_key, starts), _parts(decoded, todo, n, num_frames, size))
        results = (
            (None, None, reason) if reason else (clip, ts, None)
            for part in parts
            for clip, ts, reason in zip(part["frames"], part["timestamps_s"], part["reasons"])
        )
        with h5py.File(tmp / "frames.h5", "w") as f:
            # one chunk per video; gzip level 1 keeps synthetic clips at about a quarter of their raw size
            frames = f.create_dataset(
                "frames",
                (n, num_frames, size, size, 3),
                np.uint8,
                maxshape=(None, num_frames, size, size, 3),
                chunks=(1, num_frames, size, size, 3),
                compression="gzip",
                compression_opts=1,
            )
            stamps = f.create_dataset("timestamps_s", (n, num_frames), np.float32, maxshape=(None, num_frames))
            progress = tqdm(results, total=n, desc="sample_frames", unit="video", mininterval=1.0)
            for v, (clip, ts, reason) in zip(videos, progress):
                if reason is not None:
                    log.warning("skipped %s: %s", v["file"], reason)
                    failures.append({"video_id": v["video_id"], "path": str(v["file"]), "reason": reason})
                    if len(failures) > allowed:
                        raise TinyCapError(annotations_path, _too_many(failures, n, max_failure_ratio))
                    continue
                frames[len(ids)] = clip
                stamps[len(ids)] = ts
                ids.append(v["video_id"])
                splits.append(v["split"])
            frames.resize(len(ids), axis=0)
            stamps.resize(len(ids), axis=0)
            f.create_dataset("video_id", data=ids, dtype=h5py.string_dtype())
            f.create_dataset("split", data=splits, dtype=h5py.string_dtype())
            f.attrs.update(num_frames=num_frames, size=size)
        write_json(tmp / "failures.json", failures)
    if journal:
        journal.remove()
    seconds = time.perf_counter() - t0
    summary = {"videos": len(ids), "failures": len(failures), "frames": len(ids) * num_frames, "seconds": seconds,
               "resumed": n - len(jobs)}  # fmt: skip
    log.info(
        "sampled %d frames from %d videos in %.1f s with %d %s worker(s) (%.0f frames/s); %d failed",
        summary["frames"],
        len(ids),
        seconds,
        workers,
        engine,
        summary["frames"] / max(seconds, 1e-9),
        len(failures),
    )
    return summary


RESUME_VIDEOS = 64  # videos per journal part: the most a killed run decodes again


def _part_key(start):
    return f"videos {start}"


def _parts(decoded, starts, n, num_frames, size):
    """The decoded videos of parts `starts` in order -> one part (journal entry) per RESUME_VIDEOS videos."""
    for a in starts:
        count = min(a + RESUME_VIDEOS, n) - a
        frames, stamps, reasons = _pack((next(decoded) for _ in range(count)), count, num_frames, size)
        yield {"key": _part_key(a), "frames": frames, "timestamps_s": stamps, "reasons": reasons}


def _pack(results, count, num_frames, size):
    """`count` (frames, timestamps, reason) results -> frames (B, T, S, S, 3), timestamps_s (B, T) and reasons
    [B]: zeros and the reason for a failed video, "" for one that decoded."""
    frames = np.zeros((count, num_frames, size, size, 3), np.uint8)  # (B, T, S, S, 3)
    stamps = np.zeros((count, num_frames), np.float32)  # (B, T)
    reasons = []
    for i, (clip, ts, reason) in enumerate(results):
        if reason is None:
            frames[i], stamps[i] = clip, ts
        reasons.append(reason or "")
    return frames, stamps, reasons


def _sample_job(job):
    """sample_video for a worker: (frames, timestamps, None) or (None, None, reason)."""
    try:
        return *sample_video(*job), None
    except TinyCapError as e:
        return None, None, e.reason


RAY_BATCH_VIDEOS = 8  # videos per Ray Data batch (the local pool's chunksize)


def _ray_results(files, num_frames, size, workers):
    """_sample_job's results in file order, decoded in Ray Data map_batches tasks by `workers` tasks at a time."""
    rows = [{"index": i, "path": str(path)} for i, path in enumerate(files)]
    kwargs = {"num_frames": num_frames, "size": size}
    for row in ray_engine.map_rows(rows, _sample_batch, RAY_BATCH_VIDEOS, workers, fn_kwargs=kwargs):
        reason = str(row["reason"])
        yield (None, None, reason) if reason else (row["frames"], row["timestamps_s"], None)


def _sample_batch(batch, num_frames, size):
    """A Ray Data batch {index, path} -> {index, frames, timestamps_s, reason}: _sample_job per video, a
    failed video gets zero frames and its reason (one bad file never fails the task)."""
    results = (_sample_job((Path(str(path)), num_frames, size)) for path in batch["path"])
    frames, stamps, reasons = _pack(results, len(batch["index"]), num_frames, size)
    return {"index": batch["index"], "frames": frames, "timestamps_s": stamps, "reason": np.array(reasons, dtype=object)}


# ----------------------------------------------------------------------------- decoding


class _Video:
    """One open video stream that returns the frames shown at given timestamps."""

    def __init__(self, path):
        self.path = Path(path)
        self._head = _check_file(self.path)
        self._open()
        s = self.stream
        self.tb = s.time_base
        self.start = s.start_time if s.start_time is not None else 0  # pts of time 0
        rate = s.average_rate or s.guessed_rate
        self.step = max(1, round(1 / (rate * self.tb))) if rate else None  # nominal frame duration (tb units)
        # keyframe timestamps from the container index (MP4/MOV samples, Matroska cues, AVI idx1)
        self.keyframes = sorted(e.timestamp for e in s.index_entries if e.is_keyframe)
        self.seekable = True
        self.reformatter = VideoReformatter()

    def _open(self):
        try:
            self.container = av.open(str(self.path), metadata_errors="ignore")
        except av.FFmpegError as e:
            raise TinyCapError(self.path, _open_failure(self._head, e)) from None
        videos = [s for s in self.container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            audio = bool(self.container.streams.audio)
            self.container.close()
            raise TinyCapError(self.path, "no video stream (audio only)" if audio else "no video stream")
        self.stream = videos[0]
        ctx = self.stream.codec_context
        if (ctx.width or 0) * (ctx.height or 0) >= THREADED_PIXELS:  # small frames decode fastest on one thread
            ctx.thread_type = "AUTO"
        self._restart()

    def _restart(self):
        """Forget decoded frames; decoding goes on from the demuxer's current position."""
        self._frames = self.container.decode(self.stream)
        self._prev = None  # (pts, frame): the frame shown at the latest target
        self._next = None  # (pts, frame): decoded, not yet consumed
        self._last_pts = None

    def close(self):
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def duration(self):
        """Duration in seconds (Fraction), from where the packets really end.

        The header's figure (stream, Matroska tag or container) says where to look; a scan of
        the last packets (no decoding) gives the end, which also corrects MP4 headers that
        understate variable-frame-rate clips and catches files cut short.
        """
        s = self.stream
        header, own = None, True  # own: the figure is this stream's, not the whole container's
        if s.duration:
            header = s.duration * self.tb
        elif (tag := s.metadata.get("DURATION", "")).count(":") == 2:  # Matroska/WebM: 00:00:02.000000000
            h, m, sec = tag.split(":")
            header = int(h) * 3600 + int(m) * 60 + Fraction(sec)
        elif self.container.duration:
            header, own = Fraction(self.container.duration, av.time_base), False
        if header is None:
            return self._packets_end(seek_to=None)
        end = self._packets_end(seek_to=self.start + int(header / self.tb))
        if end is None:
            return header
        step_s = (self.step or 0) * self.tb
        if own and end < header - max(2 * step_s, header / 20):
            raise TinyCapError(self.path, f"truncated: video data ends at {float(end):.2f} s, header says {float(header):.2f} s")
        return end

    def _packets_end(self, seek_to):
        """Seconds from the start to the end of the last packet, reading packets from `seek_to`
        (pts; None: from here) to the end without decoding; then rewind to the first frame.
        None when the container cannot seek or no packet has a timestamp."""
        end = None
        try:
            if seek_to is not None:
                self.container.seek(seek_to, stream=self.stream, backward=True)
            for packet in self.container.demux(self.stream):
                if packet.pts is not None:
                    packet_end = packet.pts + (packet.duration or self.step or 0)
                    end = packet_end if end is None else max(end, packet_end)
        except av.FFmpegError:
            pass  # cut short or not seekable: what was read so far (maybe nothing) stands
        self._rewind()
        return None if end is None else max(0, end - self.start) * self.tb

    def _rewind(self):
        """Back to the first frame: a seek where the container has an index, else reopen."""
        if self.keyframes:
            try:
                self.container.seek(self.keyframes[0], stream=self.stream, backward=True)
                self._restart()
                return
            except av.FFmpegError:
                pass
        self.container.close()
        self._open()

    def read(self, targets, size):
        """Frames shown at sorted pts `targets` -> (uint8 (N,S,S,3), float32 (N,) seconds)."""
        out = np.empty((len(targets), size, size, 3), np.uint8)
        times = np.empty(len(targets), np.float32)
        done = None  # (pts, array) of the frame converted last: repeats are not converted twice
        for i, target in enumerate(targets):
            if self._should_seek(target):
                self._seek(target)
            pts, frame = self._advance(target)
            if done is None or done[0] != pts:
                done = (pts, self._to_rgb(frame, size))
            out[i] = done[1]
            times[i] = float((pts - self.start) * self.tb)
        return out, times

    def _position(self):
        """pts of the latest decoded frame, or None before the first one."""
        latest = self._next or self._prev
        return latest[0] if latest else None

    def _should_seek(self, target):
        if not self.seekable:
            return False
        pos = self._position()
        if len(self.keyframes) > 1:
            i = bisect.bisect_right(self.keyframes, target) - 1
            if i < 0:
                return False
            return self.keyframes[i] > (pos if pos is not None else self.keyframes[0])
        gap = SEEK_GAP_S / self.tb
        return target - (pos if pos is not None else self.start) > gap

    def _seek(self, target):
        """Jump to the keyframe before `target`; back off when the landing frame is after it."""
        before = self._position()
        back = Fraction(1) / self.tb  # 1 s in tb units
        at = target
        for _ in range(4):
            try:
                self.container.seek(max(at, self.start), stream=self.stream, backward=True)
            except av.FFmpegError:
                self.seekable = False
                break
            self._restart()
            first = self._peek()
            if first is not None and (first[0] <= target or at <= self.start):
                if before is not None and first[0] <= before:  # landed behind where we were: seeking does not pay here
                    self.seekable = False
                return
            at, back = int(target - back), back * 4
        # seeking did not land on a frame before the target: decode forward from the start instead
        self.seekable = False
        self.container.close()
        self._open()

    def _peek(self):
        if self._next is None:
            try:
                frame = next(self._frames)
            except StopIteration:
                return None
            except av.FFmpegError as e:
                at = float(((self._last_pts or self.start) - self.start) * self.tb)
                reason = f"corrupt or truncated video data after {at:.2f} s ({e.strerror or e})"
                raise TinyCapError(self.path, reason) from None
            pts = frame.pts
            if pts is None:  # no timestamp from the container: one nominal frame after the last
                pts = self.start if self._last_pts is None else self._last_pts + (self.step or 1)
            self._last_pts = pts
            self._next = (pts, frame)
        return self._next

    def _advance(self, target):
        """Decode on to the last frame with pts <= target (the first frame if the clip starts later)."""
        while True:
            nxt = self._peek()
            if nxt is None:
                break
            if nxt[0] > target and self._prev is not None:
                return self._prev
            self._prev, self._next = nxt, None
            if nxt[0] > target:
                return self._prev
        # end of stream: the last frame is shown at `target` only if the data really reaches it
        if self._prev is None:
            raise TinyCapError(self.path, "no decodable video frames (corrupt or truncated)")
        pts, frame = self._prev
        shown = frame.duration or self.step or 0
        if target >= pts + 2 * shown + 1:
            end = float((pts + shown - self.start) * self.tb)
            want = float((target - self.start) * self.tb)
            raise TinyCapError(self.path, f"truncated: video data ends at {end:.2f} s, header says at least {want:.2f} s")
        return self._prev

    def _to_rgb(self, frame, size):
        """Resize the shorter (display) side to `size`, centre-crop, turn/mirror as the display matrix says."""
        sar = self.stream.sample_aspect_ratio
        width = frame.width * sar if sar and sar > 0 else frame.width
        nw, nh = _scaled_size(width, frame.height, size)
        rgb = self.reformatter.reformat(
            frame,
            width=nw,
            height=nh,
            format="rgb24",
            interpolation=Interpolation.BILINEAR,
            src_color_range=frame.color_range,
            threads=1,
        )
        return _display_orientation(_centre_crop(rgb.to_ndarray(), size), frame)


# ----------------------------------------------------------------------------- helpers


def _check_sizes(num_frames, size):
    for name, value in (("num_frames", num_frames), ("size", size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise TinyCapError(name, f"must be a positive integer, got {value!r}")


def _check_file(path):
    """Reasons a path cannot be a video before ffmpeg sees it; returns its first bytes."""
    if not path.exists():
        raise TinyCapError(path, "file not found")
    if not path.is_file():
        raise TinyCapError(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise TinyCapError(path, f"cannot read file ({e.strerror})") from None
    if not head:
        raise TinyCapError(path, "empty file (0 bytes)")
    return head


def _open_failure(head, error):
    """One-line reason for a file ffmpeg cannot open, from its first bytes."""
    detail = error.strerror or str(error)
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return f"truncated or corrupt {name} file ({detail})"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return "not a video file (looks like text)"
        except UnicodeDecodeError:
            pass
    return f"not a video file ({detail})"


def _display_orientation(arr, frame):
    """Apply the frame's display matrix (phone rotation, mirroring) to a square crop, as ffmpeg's autorotate.

    The matrix maps centred coded coordinates to display ones: x' = a x + c y, y' = b x + d y.
    Quarter turns and mirrors are exact; other angles are rounded to the nearest quarter turn.
    """
    side = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if side is None:
        return arr
    m = np.frombuffer(bytes(side), "<i4")[[0, 1, 3, 4]] / 65536.0
    a, b, c, d = np.round(m / max(np.abs(m).max(), 1e-9)).astype(int)
    if b == c == 0 and abs(a) == abs(d) == 1:
        out = arr[::d, ::a]
    elif a == d == 0 and abs(b) == abs(c) == 1:
        out = arr.transpose(1, 0, 2)[::b, ::c]
    else:
        out = np.rot90(arr, round(frame.rotation / 90) % 4)  # counter-clockwise quarter turns
    return np.ascontiguousarray(out)


def _scaled_size(width, height, size):
    """(w, h) with the shorter side equal to `size`, keeping the aspect ratio."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _centre_crop(arr, size):
    h, w = arr.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return arr[y : y + size, x : x + size]


def _read_video_list(annotations_path):
    """videos[{video_id, split, path}] with each path resolved against the annotations' folder."""
    ann = read_json(annotations_path)
    videos = ann.get("videos") if isinstance(ann, dict) else None
    if not isinstance(videos, list) or not videos:
        raise TinyCapError(annotations_path, "no 'videos' list")
    out = []
    for i, v in enumerate(videos):
        missing = [k for k in ("video_id", "split", "path") if not isinstance(v, dict) or k not in v]
        if missing:
            raise TinyCapError(annotations_path, f"videos[{i}]: missing key(s) {', '.join(missing)}")
        out.append({"video_id": str(v["video_id"]), "split": str(v["split"]), "file": annotations_path.parent / v["path"]})
    return out


def _too_many(failures, n, max_failure_ratio):
    first = failures[0]
    return (
        f"{len(failures)} of {n} videos failed, more than frames.max_failure_ratio={max_failure_ratio} "
        f"(first: {first['path']}: {first['reason']})"
    )
