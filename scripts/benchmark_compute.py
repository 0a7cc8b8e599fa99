"""Throughput of sample_frames + clip_embed: naive baseline vs the local engine vs Ray (compute.engine) -> metrics/compute.json.

Not a DVC stage and not a test: a measurement the user runs on an idle machine, in one go:

    python scripts/benchmark_compute.py --workers 2

1. The three ways on two workloads (same frames out, counted as sampled frames V x num_frames per second of
   wall time, frame embeddings only, captions not included):
   - synthetic: the first `--videos` clips of the embedded default (64 px, tinyclip-vit-64);
   - msrvtt_like: `--msrvtt-clips` clips written here like MSR-VTT's (320x240, 15 s, 30 fps, H.264), 224 px
     frames, ViT-B-32 (what a real run embeds with).
   The ways:
   - naive: decode every frame of each clip with PyAV, keep the frames at the segment centres, embed them one
     frame at a time (one process, `--workers` torch threads);
   - local: frames.sample_frames with `--workers` processes + clip.embed (engine local, `--workers` torch threads);
   - ray: the same two functions with engine ray on a local Ray cluster of `--workers` CPUs: `--workers` decoding
     tasks at a time and `--workers` CLIP actors of one torch thread (cluster start-up timed apart; starting the
     actors and loading the model in each is inside its time, the local engine's model load is not).
   Models have random weights (speed does not depend on the weights).
2. Per-core rates for a paper estimate, each measured on one core (one torch thread, one process):
   decoding num_frames frames at 224 px from the MSR-VTT-sized clips, and ViT-B-32 at 224 px.
3. Hours for MSR-VTT (10 k clips) and WebVid-10M (10 M clips) at num_frames frames per clip: measured per-core
   rates x an assumed core count. GPU hours only with --gpu-frames-per-s (a rate you bring: none is assumed here).
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# torch before anything that could load TensorFlow (tests/conftest.py); the benchmark loads no TensorFlow
import av  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402

from tinycap import clip, frames, params, ray_engine  # noqa: E402
from tinycap.io import write_json  # noqa: E402

MODEL = "tinyclip-vit-64"
DATASETS = {"msrvtt": 10_000, "webvid10m": 10_000_000}  # clips: MSR-VTT 10 k, WebVid-10M ~10 M (issue 16)
CORES = [2, 64]  # this machine; one assumed 64-core node


def subset(annotations, n, out_dir):
    """The first n videos of annotations.json (paths made absolute) + their captions -> out_dir/annotations.json."""
    ann = json.loads(Path(annotations).read_text())
    videos = ann["videos"][:n]
    for v in videos:
        v["path"] = str((Path(annotations).parent / v["path"]).resolve())
    keep = {v["video_id"] for v in videos}
    sentences = [s for s in ann["sentences"] if s["video_id"] in keep]
    out = out_dir / "annotations.json"
    out.write_text(json.dumps({"videos": videos, "sentences": sentences}))
    return out, [Path(v["path"]) for v in videos]


def naive(paths, bundle, num_frames, size):
    """Decode every frame, keep those shown at the segment centres, embed them one at a time.
    Returns (decode seconds, embed seconds)."""
    decode_s = embed_s = 0.0
    for path in paths:
        t0 = time.perf_counter()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoded = [(f.pts, f) for f in container.decode(stream)]
            duration = decoded[-1][0] + decoded[1][0] - decoded[0][0]  # pts units, last frame shown one step
            shown = []
            for i in range(num_frames):
                centre = Fraction(2 * i + 1, 2 * num_frames) * duration
                frame = [f for pts, f in decoded if pts <= centre][-1]
                shown.append(frame.to_ndarray(width=size, height=size, format="rgb24")[None])  # (1, S, S, 3)
        t1 = time.perf_counter()
        for rgb in shown:
            clip.embed_frames(bundle, rgb, 1)
        decode_s, embed_s = decode_s + t1 - t0, embed_s + time.perf_counter() - t1
    return decode_s, embed_s


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_msrvtt_like_clip(path, seconds=15, fps=30, width=320, height=240):
    """A smooth moving gradient, H.264 yuv420p: decodes like a real clip of that size (not like noise)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[0:height, 0:width]
        for i in range(seconds * fps):
            img = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def per_core_rates(paths, num_frames):
    """Frames/s on one core: sampling num_frames at 224 px from the MSR-VTT-sized clips; ViT-B-32 at 224 px."""
    torch.set_num_threads(1)
    decode_s = timed(lambda: [frames.sample_video(p, num_frames, 224) for p in paths])
    model = open_clip.create_model("ViT-B-32").eval()  # random weights: the rate is what counts
    x = torch.randn(32, 3, 224, 224)
    with torch.inference_mode():
        model.encode_image(x[:4])  # warm-up
        vit_s = timed(lambda: model.encode_image(x))
    return {
        "method": "measured here, one process, one torch thread",
        "decode_224_frames_per_s": len(paths) * num_frames / decode_s,
        "decode_clip": "the msrvtt_like clips (320x240, 15 s, 30 fps, H.264 yuv420p; assumed typical)",
        "vit_b_32_224_frames_per_s": len(x) / vit_s,
        "vit_b_32": "open_clip ViT-B-32, random weights, batch 32, 224 px",
    }


def estimate(rates, num_frames, gpu_frames_per_s):
    """Hours = clips x num_frames / rate; decode and embed one after the other on each core."""
    per_core = 1 / (1 / rates["decode_224_frames_per_s"] + 1 / rates["vit_b_32_224_frames_per_s"])
    out = {
        "method": (
            "paper estimate: measured per-core rates (per_core) x assumed core counts; clip counts assumed "
            f"(MSR-VTT 10 k, WebVid-10M 10 M), {num_frames} frames per clip, perfect scaling assumed"
        ),
        "per_core_frames_per_s": per_core,
    }
    for name, clips in DATASETS.items():
        n = clips * num_frames
        row = {"clips": clips, "frames": n}
        row.update({f"hours_on_{c}_cores": n / (per_core * c) / 3600 for c in CORES})
        if gpu_frames_per_s:  # the user's figure: decode on the CPUs of a 64-core node, embed on the GPUs
            for g in (1, 8):
                rate = min(g * gpu_frames_per_s, 64 * rates["decode_224_frames_per_s"])
                row[f"hours_on_{g}_gpus_64_cores"] = n / rate / 3600
        out[name] = row
    if gpu_frames_per_s:
        out["gpu_frames_per_s"] = {"value": gpu_frames_per_s, "method": "given with --gpu-frames-per-s (not measured here)"}
    return out


def table(result):
    """The README's markdown table of the runs."""
    lines = ["| workload | way | workers | sample s | embed s | total s | frames/s |", "|---|---|---|---|---|---|---|"]
    for workload, w in result["workloads"].items():
        for name, run in w["runs"].items():
            lines.append(
                f"| {workload} ({w['videos']} clips) | {name} | {run['workers']} | {run['sample_seconds']:.1f} | "
                f"{run['embed_seconds']:.1f} | {run['seconds']:.1f} | {run['frames_per_s']:.0f} |"
            )
    return "\n".join(lines)


def three_ways(ann, paths, clip_dir, T, size, workers, tmp, batch_size):
    """naive, local and ray on the same clips -> {way: {seconds, workers, frames_per_s}}, Ray's start-up seconds.
    local: `workers` decoding processes, `workers` torch threads; ray: `workers` decoding tasks and `workers` CLIP
    actors of one torch thread each (the Ray engine gives each actor the driver's thread count)."""
    bundle = clip.load_model(clip_dir)
    torch.set_num_threads(workers)
    clip.embed_frames(bundle, np.zeros((1, size, size, 3), np.uint8), 1)  # warm-up: torch's first call is no part of the rate
    decode_s, embed_s = naive(paths, bundle, T, size)
    runs = {"naive": {"seconds": decode_s + embed_s, "sample_seconds": decode_s, "embed_seconds": embed_s}}
    for engine in ("local", "ray"):
        with contextlib.ExitStack() as stack:
            if engine == "ray":  # one session for both stages, its start-up timed apart
                t0 = time.perf_counter()
                stack.enter_context(ray_engine.session(workers))
                startup = time.perf_counter() - t0
                torch.set_num_threads(1)
            s = frames.sample_frames(ann, tmp / engine / "frames", T, size, 1.0, workers, engine)
            e = clip.embed(clip_dir, tmp / engine / "frames/frames.h5", ann, tmp / engine / "clip.h5", engine=engine,
                           workers=workers, batch_size=batch_size)  # fmt: skip
        runs[engine] = {
            "seconds": s["seconds"] + e["frame_seconds"],
            "sample_seconds": s["seconds"],
            "embed_seconds": e["frame_seconds"],
        }
    torch.set_num_threads(workers)
    for name, run in runs.items():
        run.update(workers=1 if name == "naive" else workers, frames_per_s=len(paths) * T / run["seconds"])
    runs["naive"]["torch_threads"] = workers
    return runs, startup


def save_random_clip(out_dir, model):
    torch.manual_seed(0)
    net, model_cfg, preprocess_cfg = clip.create(model)
    out_dir.mkdir(parents=True)
    clip.save_model(out_dir, net, model, model_cfg, preprocess_cfg)
    return out_dir


def msrvtt_like(tmp, n):
    """n MSR-VTT-sized clips + their annotations.json (one caption each) in tmp."""
    paths = [tmp / f"msrvtt_like{i}.mp4" for i in range(n)]
    for p in paths:
        write_msrvtt_like_clip(p)
    videos = [{"video_id": p.stem, "split": "test", "path": str(p)} for p in paths]
    ann = tmp / "annotations.json"
    ann.write_text(json.dumps({"videos": videos, "sentences": [{"video_id": p.stem, "caption": "a clip"} for p in paths]}))
    return ann, paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotations", default="data/videos/annotations.json")
    ap.add_argument("--videos", type=int, default=1920, help="first N clips of the embedded default")
    ap.add_argument("--msrvtt-clips", type=int, default=48, help="MSR-VTT-sized clips written for the second workload")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpu-frames-per-s", type=float, default=None, help="ViT-B-32 frames/s of one GPU, if you have a figure")
    ap.add_argument("--out", default="metrics/compute.json")
    args = ap.parse_args()
    p = params.load(ROOT / "params.yaml")
    T, size = p["num_frames"], params.section(p, "frames", frames.FramesParams).size
    load = os.getloadavg()[0]
    workloads, startups = {}, []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "synthetic").mkdir()
        ann, paths = subset(args.annotations, args.videos, tmp / "synthetic")
        model = save_random_clip(tmp / "synthetic" / "clip", MODEL)
        runs, startup = three_ways(ann, paths, model, T, size, args.workers, tmp / "synthetic", 256)
        workloads["synthetic"] = {"videos": len(paths), "size": size, "model": f"{MODEL}, random weights", "embed_batch_size": 256,
                                  "runs": runs}  # fmt: skip
        startups.append(startup)
        (tmp / "msrvtt_like").mkdir()
        ann, paths = msrvtt_like(tmp / "msrvtt_like", args.msrvtt_clips)
        model = save_random_clip(tmp / "msrvtt_like" / "clip", "ViT-B-32")
        # 40 frames = 8 clips a chunk: 6 chunks for the 2 actors
        runs, startup = three_ways(ann, paths, model, T, 224, args.workers, tmp / "msrvtt_like", 40)
        workloads["msrvtt_like"] = {
            "videos": len(paths),
            "size": 224,
            "model": "ViT-B-32, random weights",
            "embed_batch_size": 40,
            "clips": "written here: 320x240, 15 s, 30 fps, H.264 yuv420p (MSR-VTT-sized; assumed typical)",
            "runs": runs,
        }
        startups.append(startup)
        rates = per_core_rates(paths[:3], T)
    result = {
        "method": "measured by scripts/benchmark_compute.py (wall time); see its docstring for what each run does",
        "machine": {"cpus": os.cpu_count(), "load_1min_at_start": load},
        "frames_per_video": T,
        "workloads": workloads,
        "ray_startup_seconds": startups,
        "per_core": rates,
        "estimate": estimate(rates, T, args.gpu_frames_per_s),
    }
    write_json(ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out), result)
    print(table(result))
    print(json.dumps(result["estimate"], indent=2))


if __name__ == "__main__":
    main()
