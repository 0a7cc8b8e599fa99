"""`tinycap serve`, started for real on a loopback port, hit with real HTTP requests."""

import concurrent.futures
import os
import socket
import subprocess
import sys
import time

import cli_fixtures
import httpx
import numpy as np
import pytest
from PIL import Image

from tinycap.vocab import Vocab

LIMIT_MB = 0.25  # upload limit of the test server: 262144 bytes


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data, tmp_dir, *args):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp_dir = tmp_dir
        cmd = [
            sys.executable,
            "-m",
            "tinycap.cli",
            "serve",
            "--port",
            str(self.port),
            "--data",
            str(data),
            "--tmp-dir",
            str(tmp_dir),
            "--max-upload-mb",
            str(LIMIT_MB),
            *args,
        ]
        self.proc = subprocess.Popen(cmd, env=cli_fixtures.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait(self, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        pytest.fail("server did not come up")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers(pipeline_data, tmp_path_factory):
    data = pipeline_data
    tmp = tmp_path_factory.mktemp("uploads")
    main = Server(data, tmp / "main", "--timeout", "120")
    hasty = Server(data, tmp / "hasty", "--timeout", "0.01")  # every request runs out of time
    try:
        yield main.wait(), hasty.wait(), data
    finally:
        main.stop()
        hasty.stop()


@pytest.fixture(scope="module")
def files(servers, tmp_path_factory):
    _, _, data = servers
    d = tmp_path_factory.mktemp("uploads_src")
    clips = sorted((data / "videos" / "clips").glob("*.mp4"))[:2]
    img = d / "still.png"
    Image.fromarray((np.indices((64, 48)).sum(0)[..., None] * [3, 1, 2] % 256).astype(np.uint8)).save(img)
    return {
        "a.mp4": (clips[0].read_bytes(), "video/mp4"),
        "b.mp4": (clips[1].read_bytes(), "video/mp4"),
        "still.png": (img.read_bytes(), "image/png"),
    }


def post(url, name, body, ctype, **kw):
    return httpx.post(url + "/caption", files={"file": (name, body, ctype)}, timeout=120, **kw)


def test_health_and_openapi(servers):
    main, _, _ = servers
    health = httpx.get(main.url + "/healthz").json()
    assert health["status"] == "ok" and health["model"] == "microcap" and health["num_frames"] == 5
    spec = httpx.get(main.url + "/openapi.json").json()
    body = spec["paths"]["/caption"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert "swagger" in httpx.get(main.url + "/docs").text.lower()


def test_caption_video_and_image(servers, files):
    main, _, data = servers
    words = set(Vocab.load(data / "guide" / "vocab.json").tokens)
    for name, (body, ctype) in files.items():
        r = post(main.url, name, body, ctype)
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["caption"] and set(res["caption"].split()) <= words
        assert res["model"] == "microcap" and res["filename"] == name
        assert res["kind"] == ("image" if name.endswith(".png") else "video")
        assert {"upload", "frames", "clip", "caption", "request"} <= set(res["timings_ms"])
        assert len(res["attention"]) == 5


def test_limits_and_bad_uploads(servers):
    main, _, _ = servers
    limit = int(LIMIT_MB * 1024 * 1024)
    r = post(main.url, "big.mp4", os.urandom(limit + 100_000), "video/mp4")  # Content-Length says it: refused at once
    assert r.status_code == 413 and str(limit) in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        boundary = b"XbOuNdArY"
        yield (
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
        )
        for _ in range(8):
            yield os.urandom(50_000)
        yield b"\r\n--" + boundary + b"--\r\n"

    r = httpx.post(main.url + "/caption", content=chunks(), headers={"content-type": "multipart/form-data; boundary=XbOuNdArY"})
    assert r.status_code == 413

    r = post(main.url, "notes.txt", b"just some words\n", "text/plain")
    assert r.status_code == 415 and "unsupported media type (text/plain" in r.json()["detail"]
    r = post(main.url, "clip.mp4", b"this is text pretending to be a video\n", "video/mp4")
    assert r.status_code == 422 and r.json()["detail"] == "clip.mp4: not a video file (looks like text)"
    r = post(main.url, "photo.jpg", os.urandom(5000), "image/jpeg")
    assert r.status_code == 422 and r.json()["detail"] == "photo.jpg: not an image file"
    r = httpx.post(main.url + "/caption", files={"other": ("x.mp4", b"abc", "video/mp4")})
    assert r.status_code == 422 and "no 'file' field" in r.json()["detail"]
    r = httpx.post(main.url + "/caption", json={"file": "x"})
    assert r.status_code == 415


def test_timeout(servers, files):
    _, hasty, _ = servers
    body, ctype = files["a.mp4"]
    r = post(hasty.url, "a.mp4", body, ctype)
    assert r.status_code == 504 and "limit of 0.01 s" in r.json()["detail"]


def test_concurrent_requests_share_the_model(servers, files):
    main, _, _ = servers
    expected = {name: post(main.url, name, body, ctype).json()["caption"] for name, (body, ctype) in files.items()}
    names = [list(files)[i % len(files)] for i in range(24)]

    def one(name):
        body, ctype = files[name]
        r = post(main.url, name, body, ctype)
        return name, r.status_code, r.json().get("caption")

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, names))
    assert all(code == 200 for _, code, _ in results), results
    assert all(caption == expected[name] for name, _, caption in results)


def test_no_upload_left_behind(servers):
    main, hasty, _ = servers
    time.sleep(0.5)  # a timed-out request's worker may still be finishing
    for server in (main, hasty):
        assert list(server.tmp_dir.iterdir()) == []
