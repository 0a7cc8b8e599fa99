"""Bulk CLIP embeddings for a tree of videos (`tinycap embed`) and text search over a video's frames.

embed_videos: every video under the given folders/files -> `num_frames` frame embeddings each,
written as one HDF5 file (default), one .npy per video plus index.json, or one JSON file.
Work is resumable: each finished video is kept in `<out>.partial/` until the run completes, and a
finished output is read back, so a rerun (after a crash, or with more videos) embeds only what is
new or changed (size or mtime). Bad files are reported and skipped; the output is written
atomically at the end and holds the videos that worked plus the failure list.

Output schema (h5): frame_emb float32 [V,T,D] (L2-normalised), video_emb float32 [V,D] (normalised
mean of the frames), timestamps_s float32 [V,T], video_id [V] (str), path [V] (str),
size [V] int64, mtime_ns [V] int64; attrs config (JSON), failures (JSON list of {path, reason}).
npy: <out>/<name>.npy frame_emb [T,D] per video + <out>/index.json {config, videos[...], failures}.
json: {config, videos: [{video_id, path, timestamps_s, frame_emb, video_emb, size, mtime_ns}], failures}.
"""

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from tinycap import frames as frames_mod
from tinycap.errors import TinyCapError
from tinycap.io import atomic_path
from tinycap.journal import Journal, fingerprint

log = logging.getLogger(__name__)

FORMATS = ("h5", "npy", "json")
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp", ".gif"}


# ----------------------------------------------------------------------------------------------
# finding videos


def find_videos(inputs):
    """Folders are searched recursively for video file extensions; files are taken as given.

    Returns (videos [(video_id, path)], missing [{path, reason}]); video_id is the path relative
    to the folder it was found in (the file name for a file given directly), made unique.
    """
    videos, missing, seen, files = [], [], set(), set()
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(
                p
                for p in given.rglob("*")
                if p.suffix.lower() in VIDEO_EXTS
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
            )
            pairs = [(p.relative_to(given).as_posix(), p) for p in found]
        elif given.exists() or given.is_symlink():
            pairs = [(given.name, given)]
        else:
            missing.append({"path": str(given), "reason": "file not found"})
            continue
        for vid, path in pairs:
            if _key(path) in files:  # the same file reached twice (a folder and a file in it)
                continue
            files.add(_key(path))
            unique, n = vid, 1
            while unique in seen:
                n += 1
                unique = f"{vid}~{n}"
            seen.add(unique)
            videos.append((unique, path))
    return videos, missing


def _fingerprint(path):
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def _key(path):
    return str(Path(path).resolve())


# ----------------------------------------------------------------------------------------------
# output formats


def _npy_name(video_id):
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)[:80]
    return f"{safe}.{hashlib.sha1(video_id.encode()).hexdigest()[:8]}.npy"


def _video_emb(frame_emb):
    v = frame_emb.mean(0)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def write_output(out, fmt, config, entries, failures):
    """Write all entries (sorted by video_id) atomically in `fmt`."""
    entries = sorted(entries, key=lambda e: e["video_id"])
    meta_keys = ("video_id", "path", "key", "size", "mtime_ns")
    with atomic_path(out, suffix=".json" if fmt == "json" else None) as tmp:
        if fmt == "h5":
            with h5py.File(tmp, "w") as f:
                f.create_dataset("frame_emb", data=np.stack([e["frame_emb"] for e in entries]).astype(np.float32))
                f.create_dataset("video_emb", data=np.stack([_video_emb(e["frame_emb"]) for e in entries]).astype(np.float32))
                f.create_dataset("timestamps_s", data=np.stack([e["timestamps_s"] for e in entries]).astype(np.float32))
                for k in ("video_id", "path", "key"):
                    f.create_dataset(k, data=[e[k] for e in entries], dtype=h5py.string_dtype())
                for k in ("size", "mtime_ns"):
                    f.create_dataset(k, data=np.array([e[k] for e in entries], np.int64))
                f.attrs["config"] = json.dumps(config)
                f.attrs["failures"] = json.dumps(failures)
        elif fmt == "npy":
            tmp.mkdir()
            index = []
            for e in entries:
                name = _npy_name(e["video_id"])
                np.save(tmp / name, e["frame_emb"].astype(np.float32))
                index.append(
                    {**{k: e[k] for k in meta_keys}, "file": name, "timestamps_s": [float(t) for t in e["timestamps_s"]]}
                )
            (tmp / "index.json").write_text(
                json.dumps({"config": config, "videos": index, "failures": failures}, indent=1) + "\n"
            )
        else:
            videos = [
                {
                    **{k: e[k] for k in meta_keys},
                    "timestamps_s": [float(t) for t in e["timestamps_s"]],
                    "frame_emb": e["frame_emb"].astype(np.float32).tolist(),
                    "video_emb": _video_emb(e["frame_emb"]).astype(np.float32).tolist(),
                }
                for e in entries
            ]
            tmp.write_text(json.dumps({"config": config, "videos": videos, "failures": failures}) + "\n")


def read_output(out, fmt):
    """(config, {key: entry}) of a finished output, or (None, {}) when there is none."""
    out = Path(out)
    if not out.exists():
        return None, {}
    try:
        if fmt == "h5":
            with h5py.File(out, "r") as f:
                config = json.loads(f.attrs["config"])
                strs = {k: [s.decode() if isinstance(s, bytes) else s for s in f[k][:]] for k in ("video_id", "path", "key")}
                fe, ts, size, mtime = f["frame_emb"][:], f["timestamps_s"][:], f["size"][:], f["mtime_ns"][:]
            rows = [
                {
                    "video_id": strs["video_id"][i],
                    "path": strs["path"][i],
                    "key": strs["key"][i],
                    "size": int(size[i]),
                    "mtime_ns": int(mtime[i]),
                    "frame_emb": fe[i],
                    "timestamps_s": ts[i],
                }
                for i in range(len(fe))
            ]
        else:
            index = json.loads((out / "index.json" if fmt == "npy" else out).read_text())
            config, rows = index["config"], []
            for v in index["videos"]:
                fe = np.load(out / v["file"]) if fmt == "npy" else np.asarray(v["frame_emb"], np.float32)
                rows.append(
                    {k: v[k] for k in ("video_id", "path", "key", "size", "mtime_ns")}
                    | {"frame_emb": fe, "timestamps_s": np.asarray(v["timestamps_s"], np.float32)}
                )
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise TinyCapError(
            out, f"exists but is not a {fmt} embeddings output ({type(e).__name__}); move it away or pick another --out"
        ) from None
    return config, {r["key"]: r for r in rows}


# ----------------------------------------------------------------------------------------------
# the job


def embed_videos(inputs, out, encoder, num_frames, fmt="h5", batch_frames=64, progress=True):
    """Embed every video found in `inputs` into `out`; returns the summary dict.

    encoder: tinycap.captioner.Encoder (CLIP). Videos already embedded with the same settings
    (in a finished `out` or in `<out>.partial/`) and unchanged on disk are not embedded again.
    """
    if fmt not in FORMATS:
        raise TinyCapError("--format", f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if num_frames < 1:
        raise TinyCapError("--num-frames", f"must be >= 1, got {num_frames}")
    t0 = time.perf_counter()
    out = Path(out)
    config = {
        "clip": fingerprint(encoder.clip_dir),
        "num_frames": int(num_frames),
        "frame_size": int(encoder.frame_size),
        "dim": int(encoder.dim),
    }
    videos, failures = find_videos(inputs)
    old_config, done = read_output(out, fmt)
    if old_config is not None and old_config != config:
        log.info("%s was made with other settings; embedding everything again", out)
        done = {}
    parts = Journal(str(out) + ".partial", config)  # one part per finished video
    done.update(parts.load())

    entries, todo = [], []
    for vid, path in videos:
        key = _key(path)
        try:
            size, mtime = _fingerprint(path)
        except OSError as e:
            failures.append({"path": str(path), "reason": e.strerror or str(e)})
            continue
        prev = done.get(key)
        if prev is not None and (prev["size"], prev["mtime_ns"]) == (size, mtime):
            entries.append({**prev, "video_id": vid, "path": str(path)})
        else:
            todo.append({"video_id": vid, "path": str(path), "key": key, "size": size, "mtime_ns": mtime})
    skipped = len(entries)

    pending, pending_frames = [], []  # decoded, not yet embedded

    def flush():
        if not pending:
            return
        emb = encoder.frames(np.concatenate(pending_frames))  # (n*T, D)
        for i, e in enumerate(pending):
            e["frame_emb"] = emb[i * num_frames : (i + 1) * num_frames]
            parts.add(e)
            entries.append(e)
        pending.clear()
        pending_frames.clear()

    bar = tqdm(todo, desc="embed", unit="video", disable=not progress, mininterval=0.5)
    for e in bar:
        try:
            clip_frames, times = frames_mod.sample_video(e["path"], num_frames, encoder.frame_size)
        except TinyCapError as err:
            failures.append({"path": e["path"], "reason": err.reason})
            bar.set_postfix(failed=len(failures))
            continue
        except Exception as err:  # a decoder failure frames.py did not foresee: report it, keep going
            failures.append({"path": e["path"], "reason": f"cannot decode ({type(err).__name__}: {err})"})
            bar.set_postfix(failed=len(failures))
            continue
        pending.append({**e, "timestamps_s": np.asarray(times, np.float32)})
        pending_frames.append(clip_frames)
        if len(pending) * num_frames >= batch_frames:
            flush()
    flush()
    bar.close()

    processed = len(entries) - skipped
    if entries:
        write_output(out, fmt, config, entries, failures)
        parts.remove()
    seconds = time.perf_counter() - t0
    return {
        "out": str(out),
        "format": fmt,
        "videos": len(entries),
        "processed": processed,
        "skipped": skipped,
        "failed": len(failures),
        "failures": failures,
        "seconds": round(seconds, 3),
        "videos_per_s": round(processed / seconds, 3) if seconds > 0 else None,
    }


# ----------------------------------------------------------------------------------------------
# search


def check_search(query, num_frames, top_k):
    if not query.strip():
        raise TinyCapError("query", "is empty")
    if top_k < 1 or top_k > num_frames:
        raise TinyCapError("--top-k", f"must be between 1 and --num-frames ({num_frames}), got {top_k}")


def search_video(encoder, path, query, num_frames, top_k):
    """Rank `num_frames` uniformly sampled frames of a video by CLIP similarity to `query`.

    Returns the top_k as [{rank, time_s, score}] (score: cosine similarity), best first.
    """
    check_search(query, num_frames, top_k)
    frames, times = frames_mod.sample_video(path, num_frames, encoder.frame_size)
    scores = encoder.frames(frames) @ encoder.texts([query])[0]  # (N,)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"rank": r + 1, "time_s": float(times[i]), "score": float(scores[i])} for r, i in enumerate(order)]


def save_frames(path, hits, out_dir, size):
    """Write the frames of `hits` into out_dir as PNG images named <rank>_<time>s.png, each atomically."""
    from PIL import Image

    images = frames_mod.frames_at(path, [h["time_s"] for h in hits], size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for h, img in zip(hits, images):
        target = out_dir / f"{h['rank']:02d}_{h['time_s']:.3f}s.png"
        with atomic_path(target, suffix=".png") as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        h["image"] = str(target)
    return hits
