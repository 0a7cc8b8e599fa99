"""compute.engine: ray on a local 2-CPU Ray cluster: sample_frames and clip_embed write the local engine's files
byte for byte (same datasets, same order, same failures.json), a corrupt video is reported with the local
engine's reason and is not fatal, too many failures fail the stage the same way.

One Ray session for the whole module (started once: Ray's start-up is most of this file's time).
"""

import json
import os

import h5py
import numpy as np
import pytest
import ray
import torch
from test_frames import make_dataset  # 4 readable clips + bad ones (tests/video_fixtures.py)

from tinycap import clip, frames, ray_engine
from tinycap.errors import TinyCapError

SIZE = 64  # the tiny CLIP's input size
T = 5


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(**ray_engine.local_cluster_options(2))
    yield
    ray.shutdown()


def h5_contents(path):
    """{dataset: (dtype, bytes)} and the file's attrs: what 'the same file' means here."""
    with h5py.File(path) as f:
        data = {k: (f[k].dtype.str, f[k].shape, f[k][()].tobytes() if f[k].dtype.kind != "O" else list(f[k][()])) for k in f}
        return data, dict(f.attrs)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """The same videos (4 readable, 1 corrupt) sampled by both engines."""
    root = tmp_path_factory.mktemp("ray")
    ann = make_dataset(root / "videos", bad=1)
    for engine in ("local", "ray"):
        frames.sample_frames(ann, root / engine, T, SIZE, max_failure_ratio=0.2, workers=2, engine=engine)
    return root, ann


def test_sample_frames_writes_the_local_engines_files(sampled):
    root, _ = sampled
    local, on_ray = h5_contents(root / "local/frames.h5"), h5_contents(root / "ray/frames.h5")
    assert list(local[0]) == ["frames", "split", "timestamps_s", "video_id"]
    assert local == on_ray
    assert (root / "ray/failures.json").read_text() == (root / "local/failures.json").read_text()
    assert json.loads((root / "ray/failures.json").read_text()) == [
        {"video_id": "bad0", "path": str(root / "videos/clips/bad0.mp4"), "reason": "not a video file (looks like text)"}
    ]


def test_too_many_failures_fail_the_ray_engine_as_the_local_one(tmp_path):
    ann = make_dataset(tmp_path / "videos", bad=2)
    errors = []
    for engine in ("local", "ray"):
        with pytest.raises(TinyCapError) as err:
            frames.sample_frames(ann, tmp_path / engine, T, SIZE, max_failure_ratio=0.25, workers=2, engine=engine)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "2 of 6 videos failed" in errors[0]
    assert os.listdir(tmp_path) == ["videos"]  # nothing half-written, no temp left


def test_clip_embed_writes_the_local_engines_embeddings(sampled):
    root, ann = sampled
    data = json.loads(ann.read_text())
    data["sentences"] = [
        {"video_id": v["video_id"], "caption": f"clip {v['video_id']} number {k}"} for v in data["videos"] for k in (1, 2)
    ]
    ann.write_text(json.dumps(data))
    torch.manual_seed(0)
    model, model_cfg, preprocess_cfg = clip.create("tinyclip-vit-64")  # random weights: equality is the point
    (root / "clip").mkdir()
    clip.save_model(root / "clip", model, "tinyclip-vit-64", model_cfg, preprocess_cfg)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):  # 1 thread: 2 actors of 1 CPU on the 2-CPU cluster; 2 threads: 1 actor of 2 CPUs
            torch.set_num_threads(n)
            outs = {}
            for engine in ("local", "ray"):
                # batch_size 10 = 2 videos of 5 frames a chunk
                clip.embed(root / "clip", root / "local/frames.h5", ann, root / engine / f"clip{n}.h5", grid=True,
                           batch_size=10, engine=engine, workers=2)  # fmt: skip
                outs[engine] = h5_contents(root / engine / f"clip{n}.h5")
            assert set(outs["local"][0]) >= {"frame_emb", "grid_emb", "text_emb", "video_id", "split", "caption", "caption_video"}
            assert outs["local"] == outs["ray"]  # bit for bit: same chunks, same torch thread count
    finally:
        torch.set_num_threads(threads)
    with h5py.File(root / "ray/clip2.h5") as f:
        assert f["frame_emb"].shape[:2] == (4, T) and np.all(np.abs(f["frame_emb"][()]).sum(-1) > 0)


def test_workers_import_this_checkout_of_tinycap():
    """Ray's worker processes run the tinycap beside these tests (a worktree or a clone), not another install."""
    where = ray.get(ray.remote(lambda: frames.__file__).remote())
    assert where == frames.__file__


def test_a_task_whose_worker_dies_is_retried(tmp_path):
    """One failing task does not kill the run: Ray runs the dead worker's batch again elsewhere."""

    def crash_once(batch, marker):  # nested: shipped to the workers by value (they cannot import tests/)
        """The worker process dies (os._exit) the first time it sees row 2."""
        if 2 in batch["index"] and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return {"index": batch["index"], "twice": 2 * batch["index"]}

    rows = [{"index": i} for i in range(6)]
    out = list(ray_engine.map_rows(rows, crash_once, 1, 2, fn_kwargs={"marker": str(tmp_path / "crashed")}))
    assert (tmp_path / "crashed").exists()  # the worker did die
    assert [int(r["index"]) for r in out] == list(range(6)) and [int(r["twice"]) for r in out] == [0, 2, 4, 6, 8, 10]
