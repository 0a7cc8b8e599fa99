"""The `tinycap` command, run for real in subprocesses on real (tiny) pipeline artifacts.

Artifacts: the tiny pipeline run once per session (conftest.py `pipeline_data`).
Inputs: the synth clips those stages render, videos written by tests/video_fixtures.py and ffmpeg,
images saved from decoded frames, and broken files.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_fixtures
import h5py
import numpy as np
import pytest
from PIL import Image
from video_fixtures import write_video

from tinycap import embed, srt
from tinycap.int8 import beam_search
from tinycap.vocab import Vocab


def tinycap(*args, data=None, check=None, timeout=300):
    """Run `python -m tinycap.cli ARGS` (what the console script runs); returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "tinycap.cli", *map(str, args)]
    if data is not None:
        cmd += ["--data", str(data)]
    proc = subprocess.run(cmd, env=cli_fixtures.env(), capture_output=True, text=True, timeout=timeout)
    if check is not None and proc.returncode != check:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}, expected {check}:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def data(pipeline_data):
    return pipeline_data


@pytest.fixture(scope="session")
def words(data):
    return set(Vocab.load(data / "guide" / "vocab.json").tokens)


@pytest.fixture(scope="session")
def media(data, tmp_path_factory):
    """Videos (two synth clips, one mpeg4 AVI of another size), an image, and broken files."""
    d = tmp_path_factory.mktemp("media")
    clips = sorted((data / "videos" / "clips").glob("*.mp4"))
    out = {"synth": clips[:2], "avi": write_video(d / "other.avi", n=30, fps=15, size=(80, 60), codec="mpeg4")}
    Image.fromarray(_first_frame(clips[0])).save(d / "frame.png")
    out["png"] = d / "frame.png"
    (d / "notes.mp4").write_text("this is text, not a video\n")
    out["text_mp4"] = d / "notes.mp4"
    (d / "garbage.png").write_bytes(os.urandom(2000))
    out["garbage_png"] = d / "garbage.png"
    return out


def _first_frame(path):
    import av

    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def assert_caption(caption, words):
    assert caption.strip(), "empty caption"
    unknown = [w for w in caption.split() if w not in words]
    assert not unknown, f"words not in vocab.json: {unknown}"


# ----------------------------------------------------------------------------------------------


def test_help_of_every_subcommand():
    for sub in ("caption", "image", "embed", "search", "serve"):
        proc = tinycap(sub, "--help", check=0)
        assert proc.stdout.startswith("usage: tinycap " + sub)
    script = Path(sys.executable).parent / "tinycap"  # the console script pyproject.toml declares
    if script.exists():
        proc = subprocess.run([str(script), "--help"], env=cli_fixtures.env(), capture_output=True, text=True, check=True)
        assert all(sub in proc.stdout for sub in ("caption", "image", "embed", "search", "serve"))
    proc = tinycap("caption", "x.mp4", "--beam", "2", "--greedy", check=2)
    assert proc.stderr.splitlines() == [
        "error: tinycap caption: argument --greedy: not allowed with argument --beam (see tinycap caption --help)"
    ]


def test_caption_json_per_video_and_bad_inputs_reported(data, media, words, tmp_path):
    missing = tmp_path / "missing.mp4"
    proc = tinycap("caption", *media["synth"], media["avi"], media["text_mp4"], missing, "--json", data=data, check=1)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in results] == [str(p) for p in [*media["synth"], media["avi"]]]
    for r in results:
        assert_caption(r["caption"], words)
        assert r["model"] == "microcap" and r["num_frames"] == 5 and len(r["frame_times_s"]) == 5
        assert len(r["attention"]) == 5 and abs(sum(r["attention"]) - 1) < 1e-3
        assert set(r["timings_ms"]) == {"frames", "clip", "caption", "total"}
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {media['text_mp4']}: not a video file (looks like text)", f"error: {missing}: file not found"]


@pytest.mark.parametrize(
    "args", [["--model", "int8", "--beam", "2"], ["--model", "guide", "--temperature", "0.8", "--seed", "1"]]
)
def test_caption_other_models_and_decoding(data, media, words, args):
    proc = tinycap("caption", media["synth"][0], *args, data=data, check=0)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert_caption(lines[0], words)


def test_caption_errors_are_one_line(data, media, tmp_path):
    proc = tinycap("caption", media["synth"][0], "--model", "guide", "--pooling", "mean", data=data, check=1)
    assert proc.stderr.strip().splitlines() == [
        "error: --pooling: the guide attends over all frames (cross-attention); --pooling is for microcap/int8"
    ]
    proc = tinycap("caption", media["synth"][0], data=tmp_path, check=1)
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'guide' / 'vocab.json'}: file not found"]
    proc = tinycap("caption", media["synth"][0], "--pooling", "mean", "--num-frames", "8", data=data, check=1)
    model = data / "microcap" / "microcap.pt"
    assert proc.stderr.strip().splitlines() == [
        f"error: --num-frames: {model} has a temporal filter or MLP for 5 frames; another count needs a model without them"
    ]


def test_srt_for_a_long_video(data, words, tmp_path):
    video = tmp_path / "long.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=10",
            "-t",
            "61",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "-pix_fmt",
            "yuv420p",
            str(video),
        ],
        check=True,
    )
    out, seg = tmp_path / "subs" / "long.srt", tmp_path / "long.json"
    tinycap("caption", video, "--srt", out, "--json-segments", seg, "--window", "4", "--stride", "3", data=data, check=0)
    cues = srt.parse_srt(out.read_text(), out)
    assert cues[0].start_s == 0 and abs(cues[-1].end_s - 61) < 0.05
    for a, b in zip(cues, cues[1:]):
        assert a.start_s < a.end_s <= b.start_s and a.caption != b.caption  # monotonic, merged
    for c in cues:
        assert_caption(c.caption, words)
    doc = json.loads(seg.read_text())
    starts = [w["start_s"] for w in doc["windows"]]
    assert starts == [3.0 * i for i in range(20)]  # windows start every 3 s; the one at 57 s reaches the end
    assert all(len(w["frame_times_s"]) == 5 and w["start_s"] <= min(w["frame_times_s"]) for w in doc["windows"])
    assert [s["caption"] for s in doc["segments"]] == [c.caption for c in cues]
    # a bad input writes nothing
    bad = tmp_path / "bad.srt"
    proc = tinycap("caption", tmp_path / "missing.mp4", "--srt", bad, data=data, check=1)
    assert "missing.mp4: file not found" in proc.stderr and not bad.exists()


def test_image_captions(data, media, words):
    proc = tinycap("image", media["png"], media["garbage_png"], "--json", data=data, check=1)
    (res,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert res["kind"] == "image" and res["path"] == str(media["png"])
    assert_caption(res["caption"], words)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {media['garbage_png']}: not an image file"]


def test_embed_reports_bad_files_and_resumes(data, media, tmp_path):
    tree = tmp_path / "videos"
    (tree / "a" / "b").mkdir(parents=True)
    clips = sorted((data / "videos" / "clips").glob("*.mp4"))
    for i, clip in enumerate(clips[:3]):
        (tree / ("a/b" if i else "a") / clip.name).write_bytes(clip.read_bytes())
    (tree / "broken.mp4").write_bytes(clips[3].read_bytes()[:300])
    (tree / "empty.webm").write_bytes(b"")
    (tree / "readme.txt").write_text("not a video, ignored\n")
    out = tmp_path / "emb.h5"

    proc = tinycap("embed", tree, "--out", out, data=data, check=1)
    summary = json.loads(proc.stdout)
    assert (summary["processed"], summary["skipped"], summary["failed"], summary["videos"]) == (3, 0, 2, 3)
    reasons = {Path(f["path"]).name: f["reason"] for f in summary["failures"]}
    assert reasons["empty.webm"] == "empty file (0 bytes)" and "broken.mp4" in reasons
    assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) == 2
    with h5py.File(out) as f:
        emb = f["frame_emb"][:]
        assert emb.shape[:2] == (3, 5)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-4)
        assert sorted(s.decode() for s in f["video_id"][:]) == sorted(
            ["a/" + clips[0].name, "a/b/" + clips[1].name, "a/b/" + clips[2].name]
        )
    assert not Path(str(out) + ".partial").exists()

    # a rerun with one more video embeds only that one
    (tree / "a" / clips[4].name).write_bytes(clips[4].read_bytes())
    summary = json.loads(tinycap("embed", tree, "--out", out, data=data, check=1).stdout)
    assert (summary["processed"], summary["skipped"], summary["videos"]) == (1, 3, 4)


def test_embed_resumes_after_a_crash(data, tmp_path, fmt="npy"):
    """Kill -9 the job once some videos are done; the rerun embeds only the others."""
    clips = sorted((data / "videos" / "clips").glob("*.mp4"))[:12]
    out = tmp_path / ("emb" if fmt == "npy" else "emb.json")
    parts = Path(str(out) + ".partial")
    cmd = [
        sys.executable,
        "-m",
        "tinycap.cli",
        "embed",
        *map(str, clips),
        "--out",
        str(out),
        "--format",
        fmt,
        "--batch-frames",
        "5",
        "--data",
        str(data),
    ]
    job = subprocess.Popen(cmd, env=cli_fixtures.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    finished = lambda: [p for p in parts.glob("*.npz") if not p.name.startswith(".")]  # noqa: E731 (dot: a write in progress)
    while job.poll() is None and not finished() and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = job.poll() is None
    if killed:
        job.send_signal(signal.SIGKILL)
    job.wait()
    if killed:  # nothing half-written at the output path; the finished videos are kept for the rerun
        assert not out.exists()
        done = len(finished())
    else:  # finished before we could kill it: all done
        done = len(clips)
    summary = json.loads(tinycap("embed", *clips, "--out", out, "--format", fmt, data=data, check=0).stdout)
    assert (summary["skipped"], summary["processed"], summary["videos"]) == (done, len(clips) - done, len(clips))
    index = json.loads((out / "index.json" if fmt == "npy" else out).read_text())
    assert len(index["videos"]) == len(clips)
    if fmt == "npy":
        assert np.load(out / index["videos"][0]["file"]).shape[0] == 5
    else:
        assert np.asarray(index["videos"][0]["frame_emb"]).shape[0] == 5


def test_int8_logits_below_the_window_are_ranked_last():
    """Beam search and sampling on int8 logits: the tokens clipped to the window's floor get -inf, so
    they neither win a beam nor carry probability mass; a step with every token at the floor stays finite."""
    from tinycap import captioner

    io = {"scale": 0.05, "zero_point": -128}
    logits = captioner._window_logits(np.array([-128, 7, -128, 100], np.int8), io)
    assert np.isneginf(logits[[0, 2]]).all() and np.allclose(logits[[1, 3]], [6.75, 11.4])
    assert np.isfinite(captioner._window_logits(np.full(4, -128, np.int8), io)).all()
    step = lambda tok, state: (logits, state)  # noqa: E731
    assert beam_search(step, None, beam=3, max_steps=2) == [3, 3]


def test_search_ranks_frames(data, media, tmp_path):
    out = tmp_path / "hits"
    proc = tinycap(
        "search",
        media["avi"],
        "a red circle moves left",
        "--top-k",
        "3",
        "--num-frames",
        "8",
        "--out",
        out,
        "--json",
        data=data,
        check=0,
    )
    hits = json.loads(proc.stdout)["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert all(0 <= h["time_s"] < 2.0 for h in hits)  # 30 frames at 15 fps
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(h["image"]).name for h in hits)
    assert Image.open(hits[0]["image"]).size == (256, 256)
    proc = tinycap("search", media["avi"], "x", "--top-k", "9", "--num-frames", "8", data=data, check=1)
    assert proc.stderr.strip() == "error: --top-k: must be between 1 and --num-frames (8), got 9"


# ----------------------------------------------------------------------------------------------
# library parts that need no model


@pytest.mark.parametrize("fmt", embed.FORMATS)
def test_embed_outputs_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(0)
    entries = [
        {
            "video_id": f"d/v{i}.mp4",
            "path": f"/x/d/v{i}.mp4",
            "key": f"/x/d/v{i}.mp4",
            "size": 10 + i,
            "mtime_ns": 7 * i,
            "frame_emb": rng.normal(size=(3, 4)).astype(np.float32),
            "timestamps_s": np.arange(3, dtype=np.float32),
        }
        for i in range(2)
    ]
    out = tmp_path / ("out" if fmt == "npy" else f"out.{fmt}")
    embed.write_output(out, fmt, {"num_frames": 3}, entries, [{"path": "bad.mp4", "reason": "file not found"}])
    config, back = embed.read_output(out, fmt)
    assert config == {"num_frames": 3} and sorted(back) == ["/x/d/v0.mp4", "/x/d/v1.mp4"]
    for e in entries:
        got = back[e["key"]]
        np.testing.assert_allclose(got["frame_emb"], e["frame_emb"], rtol=1e-6)
        assert (got["video_id"], got["size"], got["mtime_ns"]) == (e["video_id"], e["size"], e["mtime_ns"])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left


def test_embed_refuses_to_overwrite_a_folder_that_is_not_its_output(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(Exception, match="is not a npy embeddings output"):
        embed.read_output(tmp_path / "photos", "npy")


@pytest.mark.parametrize(
    "duration,length,stride,expected",
    [
        (10, 4, 4, [(0, 4), (4, 8), (8, 10)]),
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (10, 2, 4, [(0, 2), (4, 6), (8, 10)]),
        (3, 5, 5, [(0, 3)]),
    ],
)
def test_srt_windows(duration, length, stride, expected):
    assert srt.windows(duration, length, stride) == expected


def test_srt_merges_repeats_and_round_trips():
    spans = [(0, 4), (2, 6), (4, 8), (6, 10)]
    cues = srt.cues_from_windows(spans, ["a dog", "a dog", "a cat", "a cat"])
    assert [(c.start_s, c.end_s, c.caption) for c in cues] == [(0, 4, "a dog"), (4, 10, "a cat")]
    text = srt.format_srt(cues)
    assert text.startswith("1\n00:00:00,000 --> 00:00:04,000\na dog\n\n2\n00:00:04,000 --> 00:00:10,000\na cat\n")
    assert srt.parse_srt(text) == cues
    assert srt.timestamp(3725.5) == "01:02:05,500"
