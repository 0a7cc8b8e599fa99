"""Frame sampling on fixture videos whose frames encode their own index (tests/video_fixtures.py):
which frames are taken, their timestamps and shape, for each container, pixel format, size,
rotation and frame-rate case; one-line reasons for bad inputs; the stage's HDF5 output,
failure ratio and atomicity."""

import json
import os
import re
from fractions import Fraction

import h5py
import numpy as np
import pytest
from PIL import Image
from video_fixtures import frame_index, quadrant_frame, write_audio, write_video

from tinycap import frames as F
from tinycap.errors import TinyCapError

S = 32
CENTRES = [0.2, 0.6, 1.0, 1.4, 1.8]  # segment centres of a 2 s clip cut in 5
CENTRE_FRAMES = [2, 6, 10, 14, 18]  # frames shown then at 10 fps


def indices(clip):
    return [frame_index(f) for f in clip]


def check_uniform(path, num_frames=5):
    clip, ts = F.sample_video(path, num_frames, S)
    assert clip.shape == (num_frames, S, S, 3) and clip.dtype == np.uint8
    assert ts.dtype == np.float32 and ts.shape == (num_frames,)
    np.testing.assert_allclose(ts, CENTRES, atol=1e-6)
    assert indices(clip) == CENTRE_FRAMES
    assert F.probe(path) == pytest.approx(2.0)
    return clip


@pytest.mark.parametrize(
    "name,codec,pix_fmt",
    [
        ("h264.mp4", "libx264", "yuv420p"),
        ("h264.mkv", "libx264", "yuv420p"),
        ("vp9.webm", "libvpx-vp9", "yuv420p"),
        ("vp8.webm", "libvpx", "yuv420p"),
        ("mpeg4.avi", "mpeg4", "yuv420p"),
        ("mjpeg.avi", "mjpeg", "yuvj420p"),
        ("h264.mov", "libx264", "yuv420p"),
        ("anim.gif", "gif", "pal8"),
    ],
)
def test_containers(tmp_path, name, codec, pix_fmt):
    check_uniform(write_video(tmp_path / name, n=20, fps=10, codec=codec, pix_fmt=pix_fmt))


@pytest.mark.parametrize(
    "name,codec,pix_fmt",
    [
        ("10bit.mp4", "libx264", "yuv420p10le"),
        ("10bit444.mkv", "libx264", "yuv444p10le"),
        ("hevc10.mkv", "libx265", "yuv420p10le"),
        ("prores.mov", "prores_ks", "yuv422p10le"),
        ("nv12.mp4", "libx264", "nv12"),
        ("rgb.mkv", "libx264rgb", "rgb24"),
        ("bgr0.mkv", "ffv1", "bgr0"),
        ("alpha.webm", "libvpx-vp9", "yuva420p"),
        ("yuv410.mkv", "ffv1", "yuv410p"),
        ("gray16.mkv", "ffv1", "gray16le"),
    ],
)
def test_pixel_formats(tmp_path, name, codec, pix_fmt):
    quiet = {"x265-params": "log-level=error"} if codec == "libx265" else None
    check_uniform(write_video(tmp_path / name, n=20, codec=codec, pix_fmt=pix_fmt, options=quiet))


@pytest.mark.parametrize("name,codec", [("gray.mp4", "libx264"), ("gray.mkv", "ffv1"), ("gray.gif", "gif")])
def test_grayscale_gives_three_equal_channels(tmp_path, name, codec):
    clip = check_uniform(write_video(tmp_path / name, codec=codec, pix_fmt="gray"))
    assert (clip[..., 0] == clip[..., 1]).all() and (clip[..., 1] == clip[..., 2]).all()


@pytest.mark.parametrize(
    "size,codec,pix_fmt",
    [
        ((97, 55), "libx264", "yuv444p"),  # odd both ways, landscape
        ((55, 97), "ffv1", "yuv420p"),  # odd, portrait, chroma-subsampled
        ((8, 6), "libx264", "yuv444p"),  # far smaller than S: upscaled
        ((2, 2), "ffv1", "bgr0"),
        ((1920, 1080), "libx264", "yuv420p"),
        ((4096, 2160), "mjpeg", "yuvj420p"),
    ],
)
def test_frame_sizes(tmp_path, size, codec, pix_fmt):
    n = 20 if size[0] * size[1] < 1e6 else 3
    path = write_video(
        tmp_path / "clip.mkv",
        n=n,
        size=size,
        codec=codec,
        pix_fmt=pix_fmt,
        options={"preset": "ultrafast"} if codec == "libx264" else None,
    )
    clip, ts = F.sample_video(path, 5, S)
    assert clip.shape == (5, S, S, 3)
    expected = [(2 * i + 1) * n // 10 for i in range(5)]  # frame shown at centre (2i+1)/10 of n frames
    if size != (2, 2):  # a 2x2 frame cannot hold the two-halves index pattern
        assert indices(clip) == expected


@pytest.mark.parametrize("codec,pix_fmt", [("ffv1", "yuv444p"), ("libx264", "yuv420p")])
def test_anamorphic_pixels_use_the_display_aspect(tmp_path, codec, pix_fmt):
    """A 64x64 coded frame with 2:1 pixels is 128x64 on screen: resized to 64x32 -> crop keeps the middle."""
    path = write_video(
        tmp_path / "wide.mkv", n=2, size=(64, 64), codec=codec, pix_fmt=pix_fmt, sar=Fraction(2, 1), frame_fn=quadrant_frame
    )
    clip, _ = F.sample_video(path, 1, S)
    # on screen the red quadrant spans x 0..64 of 128, y 0..32 of 64; the centre crop keeps x 32..96
    red = clip[0, :, :, 0] > 128
    assert red[:14, :14].all() and not red[:14, 18:].any() and not red[18:].any()


@pytest.mark.parametrize(
    "name,codec", [("vfr.mp4", "libx264"), ("vfr.mkv", "libx264"), ("vfr.webm", "libvpx-vp9"), ("vfr.gif", "gif")]
)
def test_variable_frame_rate(tmp_path, name, codec):
    times = [0, 0.1, 0.15, 0.2, 0.9, 1.0, 1.7, 1.75]  # the last frame lasts one nominal frame (0.1 s)
    path = write_video(tmp_path / name, n=len(times), times=times, codec=codec, pix_fmt="pal8" if codec == "gif" else "yuv420p")
    duration = F.probe(path)
    assert duration == pytest.approx(1.85)
    clip, ts = F.sample_video(path, 5, S)
    centres = (np.arange(5) + 0.5) * duration / 5
    shown = [max(i for i, t in enumerate(times) if t <= c + 1e-9) for c in centres]
    assert indices(clip) == shown == [2, 3, 4, 5, 5]
    np.testing.assert_allclose(ts, [times[i] for i in shown], atol=1e-3)


@pytest.mark.parametrize("n,expected", [(2, [0, 0, 1, 1, 1]), (1, [0] * 5), (3, [0, 0, 1, 2, 2])])
def test_repeats_frames_when_clip_is_short(tmp_path, n, expected):
    clip, ts = F.sample_video(write_video(tmp_path / "short.mp4", n=n), 5, S)
    assert indices(clip) == expected
    np.testing.assert_allclose(ts, np.array(expected) / 10, atol=1e-6)


@pytest.mark.parametrize(
    "rotation,mirror,red_at",
    [
        (0, False, (8, 8)),
        (90, False, (24, 8)),
        (180, False, (24, 24)),
        (-90, False, (8, 24)),
        (0, True, (8, 24)),
        (90, True, (24, 24)),
        (180, True, (24, 8)),
        (-90, True, (8, 8)),
    ],
)
def test_rotation_metadata_is_applied(tmp_path, rotation, mirror, red_at):
    """Red top-left quadrant; the display matrix turns it counter-clockwise, then mirrors it left-right
    (all eight cases agree with the ffmpeg 5.1 command line's autorotate)."""
    path = write_video(tmp_path / "rot.mp4", n=3, size=(64, 48), rotation=rotation, mirror=mirror, frame_fn=quadrant_frame)
    clip, _ = F.sample_video(path, 1, S)
    red = {(y, x) for y in (8, 24) for x in (8, 24) if clip[0, y, x, 0] > 200 and clip[0, y, x, 1] < 60}
    assert red == {red_at}


def test_long_video_is_read_by_seeking(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", n=250, size=(32, 32), gop=10)  # 25 s, a keyframe each second
    decoded = []
    peek = F._Video._peek

    def counting_peek(self):
        if self._next is None:
            decoded.append(1)
        return peek(self)

    monkeypatch.setattr(F._Video, "_peek", counting_peek)
    clip, ts = F.sample_video(path, 5, S)
    assert indices(clip) == [25, 75, 125, 175, 225]
    np.testing.assert_allclose(ts, [2.5, 7.5, 12.5, 17.5, 22.5], atol=1e-6)
    assert len(decoded) < 60  # not the 250 of a full decode
    decoded.clear()
    picked = F.frames_at(path, [24.9, 0.0, 12.35, 3.0, 3.05], S)  # any order, repeats allowed
    assert indices(picked) == [249, 0, 123, 30, 30]
    assert len(decoded) < 60


@pytest.mark.parametrize(
    "name,codec,pix_fmt",
    [
        ("coarse.avi", "mpeg4", "yuv420p"),
        ("coarse.gif", "gif", "pal8"),
        ("coarse.ts", "mpeg2video", "yuv420p"),
        ("coarse.webm", "libvpx", "yuv420p"),
    ],
)
def test_frames_at_takes_the_frame_shown_at_each_time(tmp_path, name, codec, pix_fmt):
    """Containers with coarse time bases (AVI 1/10 s, GIF 1/100 s) or no index (MPEG-TS): never rounded up."""
    path = write_video(tmp_path / name, n=100, size=(32, 32), gop=12, codec=codec, pix_fmt=pix_fmt)
    times = [6.265, 0.3, 4.79, 9.99, 0.0, 6.2, 0.35]
    assert indices(F.frames_at(path, times, S)) == [62, 3, 47, 99, 0, 62, 3]


def test_frames_at_rejects_times_outside_the_clip(tmp_path):
    path = write_video(tmp_path / "a.mp4", n=20)
    with pytest.raises(TinyCapError, match=r"time 2\.500 s is outside the clip \(0 \.\. 2\.000 s\)"):
        F.frames_at(path, [0.5, 2.5], S)


def truncated(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def put(path, data):
    path.write_bytes(data)
    return path


BAD_INPUTS = {  # case: (make the file in a folder, the reason as a regular expression)
    "zero-byte": (lambda d: put(d / "empty.mp4", b""), r"empty file \(0 bytes\)"),
    "text renamed .mp4": (lambda d: put(d / "notes.mp4", b"just some notes\n"), r"not a video file \(looks like text\)"),
    "random bytes": (
        lambda d: put(d / "noise.mkv", bytes(range(256)) * 8),
        r"not a video file \(Invalid data found when processing input\)",
    ),
    "truncated mp4, index at the end": (
        lambda d: truncated(write_video(d / "cut.mp4", n=40)),
        r"truncated or corrupt MP4/MOV file \(Invalid data found when processing input\)",
    ),
    "truncated mp4, faststart": (
        lambda d: truncated(write_video(d / "cut.mp4", n=40, container_options={"movflags": "faststart"})),
        r"truncated: video data ends at [01]\.\d\d s, header says 4\.00 s",
    ),
    "truncated webm": (
        lambda d: truncated(write_video(d / "cut.webm", n=40, codec="libvpx-vp9")),
        r"truncated: video data ends at [0-3]\.\d\d s, header says 4\.00 s",
    ),
    "truncated avi": (
        lambda d: truncated(write_video(d / "cut.avi", n=40, codec="mjpeg", pix_fmt="yuvj420p")),
        r"truncated: video data ends at [0-3]\.\d\d s, header says [1-4]\.\d\d s",
    ),
    "truncated mkv": (
        lambda d: truncated(write_video(d / "cut.mkv", n=40)),
        r"no decodable video frames \(corrupt or truncated\)",
    ),
    "audio-only mp4": (lambda d: write_audio(d / "speech.mp4"), r"no video stream \(audio only\)"),
    "audio-only wav": (lambda d: write_audio(d / "speech.wav"), r"no video stream \(audio only\)"),
    "missing path": (lambda d: d / "nowhere.mp4", "file not found"),
    "directory": (lambda d: d, "not a regular file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_give_one_line_reasons(tmp_path, case):
    make, reason = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(TinyCapError) as err:
        F.sample_video(path, 5, S)
    assert re.fullmatch(reason, err.value.reason), err.value.reason
    assert str(err.value) == f"{path}: {err.value.reason}" and "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write_video(tmp_path / "locked.mp4", n=2)
    path.chmod(0)
    with pytest.raises(TinyCapError, match="cannot read file \\(Permission denied\\)"):
        F.sample_video(path, 5, S)


def test_load_image_applies_exif_orientation_and_converts_grey(tmp_path):
    img = Image.fromarray(quadrant_frame(0, 64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation 6: shown turned 90 degrees clockwise
    img.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    out = F.load_image(tmp_path / "photo.jpg", S)
    assert out.shape == (S, S, 3) and out.dtype == np.uint8
    assert out[8, 24, 0] > 200 and out[8, 8, 0] < 60  # top-left quadrant now at the top right
    Image.fromarray(np.full((10, 30), 40000, np.uint16)).save(tmp_path / "grey16.png")
    grey = F.load_image(tmp_path / "grey16.png", S)
    assert grey.shape == (S, S, 3) and (grey == 40000 >> 8).all()
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(TinyCapError, match="notes.png: not an image file"):
        F.load_image(tmp_path / "notes.png", S)


def make_dataset(root, bad=1):
    """annotations.json with 4 readable clips (relative and absolute paths) and `bad` broken ones."""
    (root / "clips").mkdir(parents=True)
    videos = []
    clips = [("a.mp4", "libx264"), ("b.webm", "libvpx-vp9"), ("c.avi", "mpeg4"), ("d.mov", "libx264")]
    for i, (name, codec) in enumerate(clips):
        write_video(root / "clips" / name, n=20, codec=codec)
        path = str(root / "clips" / name) if i == 3 else f"clips/{name}"
        videos.append({"video_id": f"v{i}", "split": ["train", "val", "test", "novel"][i], "path": path})
    for j in range(bad):
        (root / "clips" / f"bad{j}.mp4").write_text("not a video")
        videos.append({"video_id": f"bad{j}", "split": "train", "path": f"clips/bad{j}.mp4"})
    (root / "annotations.json").write_text(json.dumps({"videos": videos, "sentences": []}))
    return root / "annotations.json"


@pytest.mark.parametrize("workers", [1, 2])
def test_stage_writes_hdf5_and_failures(tmp_path, workers):
    ann = make_dataset(tmp_path / "videos", bad=1)
    out = tmp_path / "frames"
    summary = F.sample_frames(ann, out, 5, S, max_failure_ratio=0.2, workers=workers)  # 1 of 5 fails: the limit
    assert summary["videos"] == 4 and summary["failures"] == 1 and summary["frames"] == 20
    with h5py.File(out / "frames.h5") as f:
        assert f["frames"].shape == (4, 5, S, S, 3) and f["frames"].dtype == np.uint8
        assert f["timestamps_s"].dtype == np.float32 and f["timestamps_s"].shape == (4, 5)
        assert list(f["video_id"].asstr()[:]) == ["v0", "v1", "v2", "v3"]
        assert list(f["split"].asstr()[:]) == ["train", "val", "test", "novel"]
        np.testing.assert_allclose(f["timestamps_s"][:], [CENTRES] * 4, atol=1e-6)
        assert [indices(clip) for clip in f["frames"][:]] == [CENTRE_FRAMES] * 4
    failures = json.loads((out / "failures.json").read_text())
    assert failures == [
        {"video_id": "bad0", "path": str(tmp_path / "videos/clips/bad0.mp4"), "reason": "not a video file (looks like text)"}
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_stage_fails_cleanly_over_the_failure_ratio(tmp_path, workers):
    ann = make_dataset(tmp_path / "videos", bad=2)
    out = tmp_path / "frames"
    with pytest.raises(TinyCapError) as err:
        F.sample_frames(ann, out, 5, S, max_failure_ratio=0.25, workers=workers)  # 2 of 6 > 25 %
    assert str(err.value) == (
        f"{ann}: 2 of 6 videos failed, more than frames.max_failure_ratio=0.25 "
        f"(first: {tmp_path / 'videos/clips/bad0.mp4'}: not a video file (looks like text))"
    )
    assert not out.exists() and os.listdir(tmp_path) == ["videos"]  # nothing half-written, no temp left


def test_stage_rejects_bad_annotations(tmp_path):
    (tmp_path / "annotations.json").write_text(json.dumps({"videos": [{"video_id": "a", "path": "a.mp4"}]}))
    with pytest.raises(TinyCapError, match=r"videos\[0\]: missing key\(s\) split"):
        F.sample_frames(tmp_path / "annotations.json", tmp_path / "out", 5, S, 0.1)


def test_a_killed_run_resumes_from_its_journal(tmp_path, monkeypatch):
    """Interrupted after the first part (2 videos), the rerun decodes only the other parts and writes the files
    of an uninterrupted run; the journal is gone once the files are written."""
    ann = make_dataset(tmp_path / "videos", bad=1)
    F.sample_frames(ann, tmp_path / "plain", 5, S, max_failure_ratio=0.2)
    monkeypatch.setattr(F, "RESUME_VIDEOS", 2)
    sample_job, decoded = F._sample_job, []

    def interrupted_at_the_third_video(job):
        if len(decoded) == 2:
            raise KeyboardInterrupt
        decoded.append(job[0].name)
        return sample_job(job)

    monkeypatch.setattr(F, "_sample_job", interrupted_at_the_third_video)
    journal = tmp_path / "resume"
    with pytest.raises(KeyboardInterrupt):
        F.sample_frames(ann, tmp_path / "frames", 5, S, max_failure_ratio=0.2, workers=1, resume_dir=journal)
    assert not (tmp_path / "frames").exists() and len(list(journal.glob("*.npz"))) == 1

    decoded.clear()
    monkeypatch.setattr(F, "_sample_job", lambda job: decoded.append(job[0].name) or sample_job(job))
    summary = F.sample_frames(ann, tmp_path / "frames", 5, S, max_failure_ratio=0.2, workers=1, resume_dir=journal)
    assert decoded == ["c.avi", "d.mov", "bad0.mp4"] and summary["resumed"] == 2
    for name in ("frames.h5", "failures.json"):
        assert (tmp_path / "frames" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    assert not journal.exists()


def test_a_journal_of_other_inputs_is_not_used(tmp_path, monkeypatch):
    ann = make_dataset(tmp_path / "videos", bad=0)
    journal = tmp_path / "resume"
    monkeypatch.setattr(F, "RESUME_VIDEOS", 2)
    sample_job = F._sample_job

    def interrupted(job):
        if job[0].name == "c.avi":
            raise KeyboardInterrupt
        return sample_job(job)

    monkeypatch.setattr(F, "_sample_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        F.sample_frames(ann, tmp_path / "frames", 5, S, max_failure_ratio=0, workers=1, resume_dir=journal)
    monkeypatch.setattr(F, "_sample_job", sample_job)
    summary = F.sample_frames(ann, tmp_path / "frames", 4, S, max_failure_ratio=0, workers=1, resume_dir=journal)
    assert summary["resumed"] == 0 and summary["frames"] == 16  # num_frames changed: everything decoded again
