"""`tinycap serve`: the captioner behind HTTP (FastAPI on uvicorn).

  POST /caption   multipart/form-data with a field `file` (a video or an image) -> JSON caption, model, timings
  GET  /healthz   liveness and which model is loaded
  GET  /docs      OpenAPI page (schema at /openapi.json)

The upload is streamed straight from the socket into a temporary file (never held in memory) and
the file is removed when the request ends, whatever happens. Limits: uploads larger than
`max_upload_bytes` get 413 (at once when Content-Length says so, otherwise as soon as the stream
passes the limit); a type that is neither video nor image gets 415; a file that does not decode
gets 422 with the reason; a request still running after `timeout_s` gets 504 (its worker thread
finishes in the background; the upload is removed either way). The models are loaded once; requests
run in worker threads, `Captioner` guards CLIP and the caption model with locks and batches the CLIP
work of concurrent requests into one forward pass.
"""

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from tinycap.embed import VIDEO_EXTS
from tinycap.errors import TinyCapError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
FORM_SLACK = 64 * 1024  # bytes of multipart framing and small fields allowed on top of the file
UPLOAD_PREFIX = "tinycap-upload-"


class HTTPError(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


def media_kind(content_type, filename):
    """'video' or 'image' from the part's Content-Type, else from the file name; 415 otherwise."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    ext = Path(filename or "").suffix.lower()
    if ctype == "image/gif" or ext == ".gif":  # animated: decoded as a video
        return "video"
    if ctype.startswith("video/"):
        return "video"
    if ctype.startswith("image/"):
        return "image"
    if ctype in ("", "application/octet-stream"):
        if ext in VIDEO_EXTS:
            return "video"
        if ext in IMAGE_EXTS:
            return "image"
    shown = ctype or "no content type"
    raise HTTPError(
        415,
        f"unsupported media type ({shown}, file name {filename!r}): send a video "
        f"({', '.join(sorted(VIDEO_EXTS))}) or an image ({', '.join(sorted(IMAGE_EXTS))})",
    )


class _Upload:
    """Streams the `file` part of a multipart body into a temporary file, enforcing the size limit."""

    def __init__(self, boundary, max_bytes, tmp_dir):
        self.max_bytes, self.tmp_dir = max_bytes, tmp_dir
        self.path = self.filename = self.content_type = None
        self.size = 0
        self._fh = None
        self._in_file = False
        self._headers, self._field, self._value = {}, b"", b""
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
                "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
            },
        )

    def _add(self, name, data):
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self):
        self._headers = {}

    def _header_end(self):
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field, self._value = b"", b""

    def _headers_finished(self):
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._in_file = name == "file" and self.path is None
        if self._in_file:
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace")
            self.content_type = self._headers.get("content-type")
            suffix = Path(self.filename).suffix.lower()
            suffix = suffix if suffix.isascii() and suffix[1:].isalnum() else ""
            fd, path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=suffix, dir=self.tmp_dir)
            self.path = Path(path)
            self._fh = os.fdopen(fd, "wb")

    def _data(self, data, start, end):
        if self._in_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise HTTPError(413, f"upload larger than the limit of {self.max_bytes} bytes")
            self._fh.write(data[start:end])

    def _part_end(self):
        if self._in_file:
            self._fh.close()
            self._in_file = False

    async def receive(self, request):
        async for chunk in request.stream():
            self.parser.write(chunk)
        self.parser.finalize()
        if self.path is None:
            raise HTTPError(422, "no 'file' field in the multipart form")
        if self._fh and not self._fh.closed:
            raise HTTPError(422, "multipart body ended inside the file")

    def remove(self):
        if self._fh is not None:
            self._fh.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a video (mp4, webm, avi, ...) or an image (png, jpg, ...)",
                        }
                    },
                }
            }
        },
    },
    "responses": {
        "413": {"description": "upload larger than the limit"},
        "415": {"description": "not multipart, or the file is neither a video nor an image"},
        "422": {"description": "the file does not decode (reason given), or no 'file' field"},
        "504": {"description": "the request took longer than the server's timeout"},
    },
}


def create_app(captioner, max_upload_bytes=64 * 1024 * 1024, timeout_s=60.0, tmp_dir=None):
    """The FastAPI app around one loaded `tinycap.captioner.Captioner`."""
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="TinyVideoCap", description="Video and image captioning with the TinyVideoCap models.", version="0.1.0")
    started = time.time()
    stats = {"served": 0}

    def caption_file(kind, path):
        if kind == "image":
            return captioner.caption_image(path)
        return captioner.caption_video(path)

    @app.get("/healthz")
    def healthz():
        return {
            "status": "ok",
            "model": captioner.model_name,
            "pooling": captioner.pooling,
            "num_frames": captioner.num_frames,
            "uptime_s": round(time.time() - started, 1),
            "captions_served": stats["served"],
        }

    @app.post("/caption", openapi_extra=_FORM_SCHEMA, summary="Caption an uploaded video or image")
    async def caption(request: Request):
        t0 = time.perf_counter()
        upload = None
        try:
            async with asyncio.timeout(timeout_s):
                ctype, params = parse_options_header(request.headers.get("content-type", ""))
                if ctype != b"multipart/form-data" or not params.get(b"boundary"):
                    raise HTTPError(415, "expected a multipart/form-data body with a 'file' field")
                length = request.headers.get("content-length")
                if length and length.isdigit() and int(length) > max_upload_bytes + FORM_SLACK:
                    raise HTTPError(413, f"upload of {int(length)} bytes is larger than the limit of {max_upload_bytes} bytes")
                upload = _Upload(params[b"boundary"], max_upload_bytes, tmp_dir)
                await upload.receive(request)
                kind = media_kind(upload.content_type, upload.filename)
                t1 = time.perf_counter()
                try:
                    result = await run_in_threadpool(caption_file, kind, upload.path)
                except TinyCapError as e:
                    raise HTTPError(422, f"{upload.filename or 'upload'}: {e.reason}") from None
        except TimeoutError:
            return JSONResponse({"detail": f"request took longer than the limit of {timeout_s:g} s"}, status_code=504)
        except HTTPError as e:
            return JSONResponse({"detail": e.reason}, status_code=e.status)
        except ClientDisconnect:
            return JSONResponse({"detail": "client disconnected"}, status_code=400)
        finally:
            if upload is not None:
                upload.remove()
        stats["served"] += 1
        result["filename"] = upload.filename
        result.pop("path", None)
        result["timings_ms"]["upload"] = round((t1 - t0) * 1e3, 2)
        result["timings_ms"]["request"] = round((time.perf_counter() - t0) * 1e3, 2)
        return result

    return app


def run(app, host="127.0.0.1", port=8000):
    import uvicorn

    print(f"tinycap serve: http://{host}:{port} (docs at /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
