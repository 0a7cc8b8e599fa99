"""The `tinycap` command: caption videos and images, subtitles, bulk embeddings, frame search, HTTP service.

Every sub-command reads the pipeline's artifacts under --data (default: data/, what `dvc repro`
writes) and needs nothing else. Bad input ends with one line "error: <input>: <reason>" and a
non-zero exit status; outputs are written atomically (never half-written).
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tinycap.errors import TinyCapError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# argument parsing


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _float_from_zero(strict):
    """argparse type: a float > 0 (strict) or >= 0; NaN is refused either way."""
    op = ">" if strict else ">="

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > 0 if strict else value >= 0):
            raise argparse.ArgumentTypeError(f"must be {op} 0, got {text}")
        return value

    return parse


_positive_float = _float_from_zero(strict=True)
_non_negative_float = _float_from_zero(strict=False)


def _data_arg(p):
    p.add_argument("--data", default="data", metavar="DIR", help="pipeline artifacts folder (default: %(default)s)")


def _model_args(p):
    from tinycap.captioner import DEFAULT_MODEL, MODELS

    _data_arg(p)
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        choices=MODELS,
        default=DEFAULT_MODEL,
        help="guide: transformer teacher; microcap: the student (fp32); int8: the student's int8 graphs in TFLM "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--pooling",
        choices=("mean", "attention"),
        help="temporal pooling (microcap/int8; default: the checkpoint's; mean on an attention checkpoint is an ablation)",
    )
    g.add_argument(
        "--num-frames",
        type=_positive_int,
        metavar="T",
        help="frames per clip (default: what the model was trained on; other values need --pooling mean)",
    )
    dec = g.add_mutually_exclusive_group()
    dec.add_argument(
        "--beam", type=_positive_int, default=1, metavar="K", help="beam search with K hypotheses (default: 1 = greedy)"
    )
    dec.add_argument("--greedy", action="store_const", const=1, dest="beam", help="greedy decoding (the default)")
    g.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.0,
        help="sample tokens from softmax(logits / T) instead of taking the best (default: 0 = deterministic)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for --temperature sampling (default: %(default)s)")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end with one line too (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = _Parser(
        prog="tinycap",
        description="Caption videos with the TinyVideoCap models, write subtitles, embed and search videos, serve over HTTP.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="PyTorch CPU threads (default: %(default)s: the models are small, and one thread was 10-15x "
        "faster than two on a busy 2-core machine)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "caption",
        help="caption videos (or write subtitles for a long one)",
        description="Caption each VIDEO from --num-frames frames at the centres of equal segments. "
        "With --srt/--json-segments: slide a window over one long video, caption each window, "
        "merge consecutive identical captions.",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    _model_args(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per video (JSON Lines): caption, tokens, timings, attention weight per frame",
    )
    s = p.add_argument_group("subtitles (one VIDEO)")
    s.add_argument("--srt", metavar="OUT.srt", help="write SRT subtitles of sliding-window captions")
    s.add_argument("--json-segments", metavar="OUT.json", help="write the merged segments and every window as JSON")
    s.add_argument("--window", type=_positive_float, default=5.0, metavar="SECONDS", help="window length (default: %(default)s)")
    s.add_argument(
        "--stride", type=_positive_float, metavar="SECONDS", help="step between window starts (default: the window length)"
    )
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("image", help="caption still images", description="Caption each IMAGE as a one-frame clip.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per image (JSON Lines)")
    p.set_defaults(func=cmd_image)

    from tinycap.embed import FORMATS

    p = sub.add_parser(
        "embed",
        help="bulk CLIP embeddings of a folder tree of videos",
        description="Embed every video under the given folders (recursively) and files. Keeps going past bad "
        "files; a rerun resumes, embedding only videos not done yet (or changed). Prints a JSON summary; "
        "exit status 1 when any video failed.",
    )
    p.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE")
    p.add_argument("--out", required=True, metavar="PATH", help="output: .h5 file (h5), folder (npy) or .json file (json)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="h5",
        help="h5: one HDF5 file; npy: one .npy per video + index.json; json: one JSON file (default: %(default)s)",
    )
    p.add_argument("--num-frames", type=_positive_int, default=5, metavar="T", help="frames per video (default: %(default)s)")
    p.add_argument(
        "--batch-frames", type=_positive_int, default=64, metavar="N", help="frames per CLIP batch (default: %(default)s)"
    )
    _data_arg(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "search",
        help="find the frames of a video that match a text query",
        description="Rank --num-frames uniformly sampled frames of VIDEO by CLIP text-image similarity to QUERY.",
    )
    p.add_argument("video", metavar="VIDEO")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="results to show (default: %(default)s)")
    p.add_argument("--num-frames", type=_positive_int, default=32, metavar="N", help="frames sampled (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="save the top frames here as PNG images")
    p.add_argument(
        "--image-size", type=_positive_int, default=256, metavar="PX", help="side of the saved images (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _data_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "serve",
        help="HTTP captioning service (FastAPI)",
        description="POST /caption (multipart field 'file': a video or an image) -> JSON; GET /healthz; "
        "OpenAPI page at /docs. The model is loaded once and shared by all requests.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--max-upload-mb", type=_positive_float, default=64.0, metavar="MB", help="larger uploads get 413 (default: %(default)s)"
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="per-request limit, then 504 (default: %(default)s)",
    )
    p.add_argument("--tmp-dir", metavar="DIR", help="where uploads are streamed to (default: the system temp folder)")
    _model_args(p)
    p.set_defaults(func=cmd_serve)
    return parser


# ----------------------------------------------------------------------------------------------
# sub-commands


def _captioner(args):
    from tinycap.captioner import Captioner, DecodeOptions

    decode = DecodeOptions(beam=args.beam, temperature=args.temperature, seed=args.seed)
    return Captioner(args.data, model=args.model, pooling=args.pooling, num_frames=args.num_frames, decode=decode)


def _caption_each(args, paths, fn):
    """Caption inputs one by one; a bad one is reported on stderr and the rest go on. Returns the exit status."""
    from tqdm import tqdm

    status = 0
    many = len(paths) > 1
    for path in tqdm(paths, desc="caption", unit="file", disable=not many, mininterval=0.5, file=sys.stderr):
        try:
            res = fn(path)
        except TinyCapError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)  # on its own line, not glued to the progress bar
            status = 1
            continue
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"{path}\t{res['caption']}" if many else res["caption"], flush=True)
    return status


def cmd_caption(args):
    if args.srt or args.json_segments:
        if len(args.videos) != 1:
            raise TinyCapError("--srt/--json-segments", f"take one VIDEO, got {len(args.videos)}")
        return _subtitles(args, args.videos[0])
    if args.stride is not None:
        raise TinyCapError("--stride", "only applies with --srt or --json-segments")
    return _caption_each(args, args.videos, _captioner(args).caption_video)


def _subtitles(args, video):
    from tqdm import tqdm

    from tinycap import frames, srt
    from tinycap.io import atomic_path, write_json

    stride = args.stride or args.window
    t0 = time.perf_counter()
    duration = frames.probe(video)  # a bad input fails before the models load
    captioner = _captioner(args)
    total = len(srt.windows(duration, args.window, stride))
    spans, captions, windows = [], [], []
    with tqdm(total=total, desc="subtitles", unit="window", mininterval=0.5, file=sys.stderr) as bar:
        for start, end, res in captioner.caption_windows(video, args.window, stride, progress=bar.update):
            spans.append((start, end))
            captions.append(res["caption"])
            windows.append({"start_s": round(start, 3), "end_s": round(end, 3), **res})
    cues = srt.cues_from_windows(spans, captions)
    seconds = time.perf_counter() - t0
    if args.srt:
        with atomic_path(args.srt, suffix=".srt") as tmp:
            tmp.write_text(srt.format_srt(cues))
    if args.json_segments:
        write_json(
            args.json_segments,
            {
                "path": str(video),
                "model": captioner.model_name,
                "pooling": captioner.pooling,
                "num_frames": captioner.num_frames,
                "duration_s": round(duration, 3),
                "window_s": args.window,
                "stride_s": stride,
                "seconds": round(seconds, 3),
                "segments": [{"start_s": round(c.start_s, 3), "end_s": round(c.end_s, 3), "caption": c.caption} for c in cues],
                "windows": windows,
            },
        )
    print(
        f"{video}: {len(cues)} segments from {total} windows over {duration:.1f} s of video in {seconds:.1f} s", file=sys.stderr
    )
    return 0


def cmd_image(args):
    return _caption_each(args, args.images, _captioner(args).caption_image)


def cmd_embed(args):
    from tinycap.captioner import Encoder
    from tinycap.embed import embed_videos

    encoder = Encoder(Path(args.data) / "clip")
    summary = embed_videos(args.inputs, args.out, encoder, args.num_frames, fmt=args.format, batch_frames=args.batch_frames)
    for f in summary["failures"]:
        print(f"error: {f['path']}: {f['reason']}", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    if not summary["videos"]:
        raise TinyCapError(args.out, "not written: no video could be embedded")
    return 1 if summary["failed"] else 0


def cmd_search(args):
    from tinycap.captioner import Encoder
    from tinycap.embed import check_search, save_frames, search_video

    check_search(args.query, args.num_frames, args.top_k)  # before the model loads
    encoder = Encoder(Path(args.data) / "clip")
    hits = search_video(encoder, args.video, args.query, args.num_frames, args.top_k)
    if args.out:
        save_frames(args.video, hits, args.out, args.image_size)
    if args.json:
        print(json.dumps({"video": args.video, "query": args.query, "results": hits}, indent=1))
    else:
        for h in hits:
            extra = f"\t{h['image']}" if "image" in h else ""
            print(f"{h['rank']}\t{h['time_s']:.3f}s\t{h['score']:.4f}{extra}")
    return 0


def cmd_serve(args):
    from tinycap import serve

    captioner = _captioner(args)
    app = serve.create_app(
        captioner, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), timeout_s=args.timeout, tmp_dir=args.tmp_dir
    )
    serve.run(app, args.host, args.port)
    return 0


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # read when torch loads, which happens after this
        os.environ[var] = str(args.threads)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        status = args.func(args)
    except TinyCapError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        resume = " (the same command resumes where it stopped)" if args.command == "embed" else ""
        print(f"error: interrupted{resume}", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
