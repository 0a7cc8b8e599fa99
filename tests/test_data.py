"""synth_videos: the rendered dataset (determinism, novel split, captions, real MP4s) and real annotation indexing."""

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from tinycap import data, params
from tinycap.errors import TinyCapError

FIXTURES = Path(__file__).parent / "fixtures" / "annotations"
ROOT = Path(__file__).parent.parent


def synth_cfg(**kw):
    base = dict(
        source="synth",
        annotations=None,
        videos_dir=None,
        videos_per_split={"train": 6, "val": 2, "test": 2, "novel": 4},
        size=64,
        fps=5,
        duration_s=1.0,
        captions_per_video=5,
    )
    return data.DataParams(**{**base, **kw})


def real_cfg(source, annotations, videos_dir):
    return dataclasses.replace(synth_cfg(), source=source, annotations=annotations, videos_dir=str(videos_dir))


def decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream.codec_context.name, stream.codec_context.pix_fmt


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The tiny dataset rendered twice: once with 2 worker processes, once in-process."""
    a = tmp_path_factory.mktemp("a") / "videos"
    b = tmp_path_factory.mktemp("b") / "videos"
    data.build_dataset(synth_cfg(), 7, a, workers=2)
    data.build_dataset(synth_cfg(), 7, b, workers=1)
    return a, b


def test_same_seed_gives_identical_annotations_and_frames(rendered):
    a, b = rendered
    ann_a = json.loads((a / "annotations.json").read_text())
    assert ann_a == json.loads((b / "annotations.json").read_text())
    for v in ann_a["videos"]:
        assert (a / v["path"]).read_bytes() == (b / v["path"]).read_bytes()
        assert np.array_equal(decode(a / v["path"])[0], decode(b / v["path"])[0])


def test_other_seed_gives_other_dataset():
    first, _ = data.synth_annotations(synth_cfg(), 7)
    other, _ = data.synth_annotations(synth_cfg(), 8)
    assert first["sentences"] != other["sentences"]


def test_clips_are_h264_mp4_with_expected_frames(rendered):
    a, _ = rendered
    ann = json.loads((a / "annotations.json").read_text())
    assert sorted(p.name for p in (a / "clips").iterdir()) == sorted(Path(v["path"]).name for v in ann["videos"])
    frames, codec, pix_fmt = decode(a / ann["videos"][0]["path"])
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # not a blank clip


def test_annotation_records(rendered):
    a, _ = rendered
    ann = json.loads((a / "annotations.json").read_text())
    assert [v["split"] for v in ann["videos"]] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2 + ["novel"] * 4
    assert len({v["video_id"] for v in ann["videos"]}) == 14
    for v in ann["videos"]:
        assert not Path(v["path"]).is_absolute() and (a / v["path"]).is_file()
        assert v["order_dependent"] == data.ACTIONS[v["action"]][1]
        assert len(v["objects"]) == data.ACTIONS[v["action"]][0]
        for o in v["objects"]:
            assert o["colour"] in data.COLOURS and o["shape"] in data.SHAPES and o["size"] in data.SIZES
    assert {
        v: data.ACTIONS[v][1] for v in ["move_left", "grow", "fade_in", "approach", "change_colour", "rotate", "bounce", "pass"]
    } == {
        "move_left": True,
        "grow": True,
        "fade_in": True,
        "approach": True,
        "change_colour": True,
        "rotate": False,
        "bounce": False,
        "pass": False,
    }


def test_novel_split_combinations_never_in_train():
    cfg = synth_cfg(videos_per_split={"train": 1500, "val": 100, "test": 100, "novel": 300})
    index, _ = data.synth_annotations(cfg, 0)
    triples = {s: set() for s in data.SPLITS}
    for v in index["videos"]:
        triples[v["split"]].update(data.object_triples(v))
    assert triples["novel"] and not triples["novel"] & (triples["train"] | triples["val"] | triples["test"])
    # compositional: each novel triple's colour x shape, colour x action and shape x action pairs all occur in train
    train_pairs = {(k, t[i], t[j]) for t in triples["train"] for k, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)])}
    for t in triples["novel"]:
        assert all((k, t[i], t[j]) in train_pairs for k, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)])), t
    assert {v["action"] for v in index["videos"] if v["split"] == "novel"} == set(data.ACTIONS)


def test_no_test_clip_repeats_a_train_attribute_set():
    cfg = synth_cfg(videos_per_split={"train": 1500, "val": 100, "test": 400, "novel": 50})
    index, _ = data.synth_annotations(cfg, 0)
    sets = {s: [data.attribute_set(v) for v in index["videos"] if v["split"] == s] for s in data.SPLITS}
    assert not set(sets["test"]) & set(sets["train"])
    assert set(sets["val"]) & set(sets["train"])  # val is drawn freely: 1500 train clips do cover some of it
    # train and val are drawn before test: the same records whatever test asks for
    fewer, _ = data.synth_annotations(synth_cfg(videos_per_split={"train": 1500, "val": 100, "test": 0, "novel": 0}), 0)
    assert fewer["videos"] == index["videos"][:1600]
    summary = data.summary(index)
    assert summary["splits"]["test"] == {
        "clips": 400,
        "captions": 2000,
        "attribute_sets": len(set(sets["test"])),
        "attribute_sets_in_train": 0,
    }
    assert summary["splits"]["val"]["attribute_sets_in_train"] == len(set(sets["val"]) & set(sets["train"])) > 0
    assert data.attribute_set(
        {"action": "grow", "background": "plain", "objects": [{"colour": "red", "shape": "star", "size": "small"}]}
    ) == ("grow", "plain", ("red", "", "star", "small"))


def grammar_vocabulary():
    phrases = [w for ws in data.SHAPE_WORDS.values() for w in ws] + [w for ws in data.SIZE_WORDS.values() for w in ws]
    phrases += [w for ws in data.BACKGROUND_WORDS.values() for w in ws] + [w for ws in data.DIRECTIONS.values() for w in ws]
    phrases += [w for pair in data.MOVERS + data.MOVERS_PLURAL for w in pair]
    phrases += [w for vs in list(data.VERBS.values()) + list(data.VERBS_PAIR.values()) for pair in vs for w in pair]
    phrases += list(data.COLOURS) + [
        "a an the and is are there on over against across frame screen",
        "we see the video shows you can changes changing from to",
    ]
    return {w for p in phrases for w in p.replace("{c}", "").split()}


def test_captions_follow_the_grammar():
    cfg = synth_cfg(videos_per_split={"train": 300, "val": 0, "test": 0, "novel": 50}, captions_per_video=6)
    index, _ = data.synth_annotations(cfg, 3)
    vocab = grammar_vocabulary()
    assert 100 <= len(vocab) <= 200
    by_video = {}
    for s in index["sentences"]:
        by_video.setdefault(s["video_id"], []).append(s["caption"])
    used = set()
    for v in index["videos"]:
        caps = by_video[v["video_id"]]
        assert len(caps) == 6 and len(set(caps)) == 6
        for c in caps:
            words = c.split()
            used.update(words)
            assert 5 <= len(words) <= 14 and c == c.lower() and set(words) <= vocab, c
            for o in v["objects"]:  # every caption names each object's colour and shape
                assert o["colour"] in words, c
                assert any(f" {w} " in f" {c} " for w in data.SHAPE_WORDS[o["shape"]]), c
            if v["action"] == "change_colour":
                assert v["objects"][0]["end_colour"] in words, c
            for article, nxt in zip(words, words[1:]):
                assert (article != "a" or nxt[0] not in "aeiou") and (article != "an" or nxt[0] in "aeiou"), c
    assert len(used) >= 120  # the grammar's synonyms are actually used


def test_motion_spans_the_frame_at_five_sampled_frames():
    """At the 5 segment-centre frames (u = 0.1 ... 0.9) a moving object crosses a large part of the frame."""
    size, u = 96, np.linspace(0.1, 0.9, 5)
    rng = np.random.default_rng(0)
    for action, axis, sign in [("move_left", 0, -1), ("move_right", 0, 1), ("move_up", 1, -1), ("move_down", 1, 1)]:
        for size_name in data.SIZES:
            scene = {"action": action, "background": "plain", "objects": [{"colour": "red", "shape": "star", "size": size_name}]}
            track = data._trajectories(rng, scene, size)[0]
            pos = np.array([track(x)[axis] for x in u])
            assert np.all(sign * np.diff(pos) > 0) and abs(pos[-1] - pos[0]) > 0.35 * size, (action, size_name, pos)
    for action in ["approach", "separate"]:
        objs = [{"colour": "red", "shape": "circle", "size": "large"}, {"colour": "blue", "shape": "square", "size": "small"}]
        tracks = data._trajectories(rng, {"action": action, "background": "plain", "objects": objs}, size)
        gap = np.array([abs(tracks[1](x)[0] - tracks[0](x)[0]) for x in u])
        assert np.all((np.diff(gap) < 0) == (action == "approach")) and abs(gap[-1] - gap[0]) > 0.25 * size


def test_params_data_sections_parse():
    p = params.load(ROOT / "params.yaml")
    cfg = params.section(p, "data", data.DataParams)
    assert cfg.source == "synth" and cfg.captions_per_video >= 5 and cfg.size % 2 == 0
    tiny = params.merge(p, yaml.safe_load((ROOT / "tests" / "params_tiny.yaml").read_text()))
    params.section(tiny, "data", data.DataParams)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(size=66 + 1), "data.size: must be an even number"),
        (dict(size=8), "data.size: must be an even number >= 16"),
        (dict(videos_per_split={"train": 1, "holdout": 1}), "unknown split 'holdout'"),
        (dict(videos_per_split={"train": 0}), "no videos requested"),
    ],
)
def test_bad_synth_params(change, message):
    with pytest.raises(TinyCapError, match=message):
        data.synth_annotations(synth_cfg(**change), 0)


# --- real annotations -------------------------------------------------------------------------


def video_files(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # indexing only checks that the file is there
    return folder


def test_msrvtt_fixture(tmp_path):
    videos = video_files(tmp_path / "mp4", ["video0.mp4", "video1.mp4", "video2.mp4", "video7010.mp4"])
    ann = {"train": str(FIXTURES / "msrvtt_train_val_videodatainfo.json")}
    cfg = real_cfg("msrvtt", str(FIXTURES / "msrvtt_train_val_videodatainfo.json"), videos)
    out = tmp_path / "out"
    index, _ = data.build_dataset(cfg, 0, out)
    assert index == json.loads((out / "annotations.json").read_text())
    assert [(v["video_id"], v["split"]) for v in index["videos"]] == [("video0", "train"), ("video1", "train"), ("video2", "val")]
    assert all(Path(v["path"]).is_absolute() and Path(v["path"]).is_file() for v in index["videos"])
    caps = [s["caption"] for s in index["sentences"]]
    assert len(caps) == 7 and "a person is cooking noodles in a pan" in caps
    missing = json.loads((out / "missing.json").read_text())
    assert [m["video_id"] for m in missing] == ["video3"]
    # the test file as its own split through the {split: path} mapping
    ann["test"] = str(FIXTURES / "msrvtt_test_videodatainfo.json")
    index, _ = data.build_dataset(real_cfg("msrvtt", ann, videos), 0, out)
    assert [(v["video_id"], v["split"]) for v in index["videos"]] == [
        ("video0", "train"),
        ("video1", "train"),
        ("video2", "train"),
        ("video7010", "test"),
    ]  # the mapping's split wins


def test_vatex_fixture(tmp_path):
    ids = ["Ptf_2VRj-V0_000122_000132", "-2q8K5rAXDA_000010_000020", "xYz0123abcd_000005_000015"]
    videos = video_files(tmp_path / "vids", [f"{ids[0]}.mp4", f"{ids[1]}.webm"])
    video_files(videos / "sub", [f"{ids[2]}.mkv"])
    files = [str(FIXTURES / "vatex_training_v1.0.json"), str(FIXTURES / "vatex_validation_v1.0.json")]
    index, _ = data.build_dataset(real_cfg("vatex", {"train": files[0], "val": files[1]}, videos), 0, tmp_path / "a")
    assert [(v["video_id"], v["split"]) for v in index["videos"]] == [(ids[0], "train"), (ids[1], "train"), (ids[2], "val")]
    assert index["videos"][2]["path"].endswith(f"sub/{ids[2]}.mkv")
    assert len(index["sentences"]) == 6 and index["sentences"][0]["caption"] == "A man is playing a guitar on a stage."
    # one file: the split comes from its name
    index, _ = data.build_dataset(real_cfg("vatex", files[1], videos), 0, tmp_path / "b")
    assert [(v["video_id"], v["split"]) for v in index["videos"]] == [(ids[2], "val")]


def write(path, text):
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return str(path)


MSRVTT_OK_VIDEO = {"video_id": "video0", "split": "train"}


@pytest.mark.parametrize(
    "source, name, content, message",
    [
        ("msrvtt", "gone.json", None, "file not found"),
        ("msrvtt", "bad.json", '{"videos": [', "not valid JSON"),
        ("msrvtt", "list.json", [], "not an MSR-VTT annotation file"),
        ("msrvtt", "nocap.json", {"videos": [MSRVTT_OK_VIDEO], "sentences": []}, "video video0 has no captions"),
        (
            "msrvtt",
            "empty.json",
            {"videos": [MSRVTT_OK_VIDEO], "sentences": [{"video_id": "video0", "caption": " "}]},
            "caption must be a non-empty string",
        ),
        ("msrvtt", "split.json", {"videos": [{"video_id": "video0", "split": "dev"}], "sentences": []}, "unknown split 'dev'"),
        (
            "msrvtt",
            "orphan.json",
            {"videos": [MSRVTT_OK_VIDEO], "sentences": [{"video_id": "video9", "caption": "x"}]},
            "names video video9, which is not in videos",
        ),
        ("vatex", "vatex_train.json", {"videoID": "a"}, "not a VATEX annotation file"),
        ("vatex", "vatex_test.json", [{"videoID": "a", "chCap": ["一"]}], "video a has no English captions"),
        ("vatex", "vatex_val.json", [{"videoID": "a", "enCap": []}], "video a has no captions"),
        ("vatex", "vatex_public.json", [{"videoID": "a", "enCap": ["x"]}], "cannot tell the split from the file name"),
    ],
)
def test_bad_annotation_files(tmp_path, source, name, content, message):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    videos = video_files(tmp_path / "videos", ["video0.mp4", "a.mp4"])
    out = tmp_path / "out"
    with pytest.raises(TinyCapError, match=message) as e:
        data.build_dataset(real_cfg(source, str(path), videos), 0, out)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_bad_real_params(tmp_path):
    videos = video_files(tmp_path / "videos", [])
    ann = str(FIXTURES / "msrvtt_train_val_videodatainfo.json")
    with pytest.raises(TinyCapError, match="unknown split 'holdout'"):
        data.build_dataset(real_cfg("msrvtt", {"holdout": ann}, videos), 0, tmp_path / "out")
    with pytest.raises(TinyCapError, match="needs an annotation file"):
        data.build_dataset(real_cfg("msrvtt", None, videos), 0, tmp_path / "out")
    with pytest.raises(TinyCapError, match="video folder not found"):
        data.build_dataset(real_cfg("vatex", ann, tmp_path / "nowhere"), 0, tmp_path / "out")
    with pytest.raises(TinyCapError, match=f"{videos}: none of the 4 annotated videos has a file here"):
        data.build_dataset(real_cfg("msrvtt", ann, videos), 0, tmp_path / "out")
