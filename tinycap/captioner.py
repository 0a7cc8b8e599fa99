"""Captions from the pipeline's artifacts: CLIP frame embeddings -> pooling -> a caption decoder.

One `Captioner` loads everything once (CLIP from data/clip, the vocabulary from data/guide/vocab.json,
and one of the three caption models) and is shared by the CLI and the HTTP service:

  guide     data/guide/guide.pt          transformer teacher, cross-attention over the frames
  microcap  data/microcap/microcap.pt    the student (temporal pooler + GRU), PyTorch fp32
  int8      data/int8/*_int8.tflite      the student's int8 graphs run by TFLM (the device's kernels)

Decoding: greedy by default (each model's own greedy loop, the one `evaluate` scores), beam search
with `beam > 1`, or sampling at `temperature > 0`. Video decoding needs no lock; CLIP and the caption
model each sit behind their own lock, so concurrent callers (server threads) share one loaded copy
safely while one request's frames are embedded as another's caption is decoded.
"""

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinycap import frames as frames_mod
from tinycap import srt
from tinycap.errors import TinyCapError
from tinycap.int8 import TflmDecoder, beam_search
from tinycap.vocab import BOS, EOS, PAD, Vocab

MODELS = ("guide", "microcap", "int8")
DEFAULT_MODEL = "microcap"


@dataclass
class DecodeOptions:
    beam: int = 1  # hypotheses kept by beam search (1 = greedy)
    temperature: float = 0.0  # > 0: sample each token from softmax(logits / temperature) instead
    seed: int = 0  # seeds sampling

    def check(self):
        if self.beam < 1:
            raise TinyCapError("--beam", f"must be >= 1, got {self.beam}")
        if self.temperature < 0:
            raise TinyCapError("--temperature", f"must be >= 0, got {self.temperature}")
        if self.temperature > 0 and self.beam > 1:
            raise TinyCapError("--temperature", "sampling and beam search exclude each other; use one")


class Encoder:
    """The pipeline's CLIP (data/clip): frames and texts -> L2-normalised embeddings, thread-safe.

    Concurrent `frames()` calls are batched: the first caller to find CLIP idle embeds every request
    queued by then in one forward pass (up to `max_batch` frames) and hands each caller its rows, so
    under load the server pays CLIP's per-call overhead once per batch instead of once per request.
    """

    def __init__(self, clip_dir, max_batch=256):
        from tinycap import clip  # imported here so `tinycap --help` stays fast

        self._clip = clip
        self.clip_dir = Path(clip_dir)
        self.bundle = clip.load_model(self.clip_dir)
        self.frame_size = self.bundle.image_size
        self.dim = self.bundle.dim
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._queue = []  # _Job's waiting to be embedded
        self._busy = False

    def _embed(self, frames, grid):
        if grid:
            return np.asarray(self._clip.embed_frames(self.bundle, frames, grid=True)[1], np.float32)
        return np.asarray(self._clip.embed_frames(self.bundle, frames), np.float32)

    def frames(self, frames, grid=False):
        """uint8 frames (N, S, S, 3) -> (N, D) float32, or the patch-grid embeddings (N, G, D) with grid=True."""
        me = _Job(frames, grid)
        with self._cv:
            self._queue.append(me)
            while not me.done and self._busy:
                self._cv.wait()
            if me.done:  # another caller embedded it
                return me.outcome()
            # lead: embed this request and the others of the same kind queued by now, up to max_batch frames
            self._queue.remove(me)
            batch, size = [me], len(frames)
            for job in list(self._queue):
                if job.grid == grid and size + len(job.frames) <= self.max_batch:
                    batch.append(job)
                    size += len(job.frames)
                    self._queue.remove(job)
            self._busy = True
        try:
            self._run(batch, grid)
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return me.outcome()

    def _run(self, batch, grid):
        try:
            emb = self._embed(np.concatenate([job.frames for job in batch]), grid)
            start = 0
            for job in batch:
                job.result = emb[start : start + len(job.frames)]
                start += len(job.frames)
        except Exception:
            for job in batch:  # one bad input must not fail the others: embed each on its own
                try:
                    job.result = self._embed(job.frames, grid)
                except Exception as e:
                    job.error = e
        for job in batch:
            job.done = True

    def texts(self, texts):
        """list of str -> (N, D) float32."""
        with self._cv:
            while self._busy:
                self._cv.wait()
            self._busy = True
        try:
            return np.asarray(self._clip.embed_texts(self.bundle, list(texts)), np.float32)
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()


class _Job:
    """One caller's frames waiting in Encoder's queue."""

    __slots__ = ("frames", "grid", "result", "error", "done")

    def __init__(self, frames, grid):
        self.frames, self.grid = frames, grid
        self.result = self.error = None
        self.done = False

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class Captioner:
    """Loads CLIP, the vocabulary and one caption model from `data_dir`; captions videos and images.

    pooling: None keeps the checkpoint's pooling; "mean" on an attention checkpoint swaps in the
    parameter-free mean pooler (an ablation); anything else the model was not trained with is an error.
    num_frames: None keeps the model's T; another T only works with mean pooling and no temporal filter
    (neither has weights per frame).
    """

    def __init__(self, data_dir="data", model=DEFAULT_MODEL, pooling=None, num_frames=None, decode=None):
        data_dir = Path(data_dir)
        if model not in MODELS:
            raise TinyCapError("--model", f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
        if model == "guide" and pooling is not None:  # checked before anything heavy is loaded
            raise TinyCapError("--pooling", "the guide attends over all frames (cross-attention); --pooling is for microcap/int8")
        self.decode_opts = decode or DecodeOptions()
        self.decode_opts.check()
        self.model_name = model
        self.grid = False
        self.vocab = Vocab.load(data_dir / "guide" / "vocab.json")
        self.encoder = Encoder(data_dir / "clip")
        self.frame_size = self.encoder.frame_size
        loader = {"guide": self._load_guide, "microcap": self._load_microcap, "int8": self._load_int8}[model]
        try:
            self.model_path, trained_frames, self.pooling = loader(data_dir, pooling)
        except TinyCapError:
            raise
        except Exception as e:  # a corrupt or foreign checkpoint: one line, not a traceback
            where = data_dir / ("int8" if model == "int8" else model)
            raise TinyCapError(
                where, f"cannot load the {model} model: corrupt or not a tinycap checkpoint ({type(e).__name__})"
            ) from None
        self.num_frames = trained_frames if num_frames is None else int(num_frames)
        if self.num_frames < 1:
            raise TinyCapError("--num-frames", f"must be >= 1, got {num_frames}")
        if self.num_frames != trained_frames:
            if not (model == "microcap" and self.pooling == "mean"):
                raise TinyCapError(
                    "--num-frames",
                    f"{self.model_path} was trained on {trained_frames} frames; another count needs --model microcap --pooling mean",
                )
            if self.model.temporal_filter is not None or self.model.temporal_mlp is not None:
                raise TinyCapError(
                    "--num-frames",
                    f"{self.model_path} has a temporal filter or MLP for {trained_frames} frames; "
                    "another count needs a model without them",
                )
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.decode_opts.seed)

    # ------------------------------------------------------------------------------ loading

    def _load_guide(self, data_dir, _pooling):
        import torch

        from tinycap import guide

        path = data_dir / "guide" / "guide.pt"
        self.model = guide.load(path, self.vocab)
        cfg = self.model.cfg
        self.grid = bool(cfg.grid)  # this guide reads patch-grid embeddings (T, G, D)
        self._check_dim(cfg.dim, path)
        self._torch = torch
        return path, cfg.num_frames, "cross-attention"

    def _load_microcap(self, data_dir, pooling):
        import torch

        from tinycap import microcap
        from tinycap.pool import MeanPool

        path = data_dir / "microcap" / "microcap.pt"
        self.model = microcap.load(path, self.vocab)
        cfg = self.model.cfg
        self._check_dim(cfg.dim, path)
        self._torch = torch
        if pooling is None or pooling == cfg.pooling:
            return path, cfg.num_frames, cfg.pooling
        if pooling == "mean":
            self.model.pooler = MeanPool(cfg.dim, cfg.num_frames)
            return path, cfg.num_frames, "mean"
        raise TinyCapError("--pooling", f"{path} was trained with {cfg.pooling} pooling; retrain with pooling={pooling} for it")

    def _load_int8(self, data_dir, pooling):
        int8_dir = data_dir / "int8"
        self.model = TflmDecoder(int8_dir)
        decoder = self.model.graphs["decoder"]
        vocab_size = decoder.io["outputs"][decoder.out_pos["logits"]]["shape"][-1]
        if vocab_size != len(self.vocab):
            raise TinyCapError(int8_dir, f"the decoder graph has {vocab_size} tokens, vocab.json has {len(self.vocab)}")
        pooler = self.model.graphs["pooler"]
        _, frames, dim = pooler.io["inputs"][0]["shape"]
        self._check_dim(dim, int8_dir)
        kind = "attention" if "weights" in pooler.out_pos else "mean"
        if pooling not in (None, kind):
            raise TinyCapError("--pooling", f"{int8_dir} holds the int8 graphs of a {kind} pooler, which cannot change")
        return int8_dir / "quant.json", frames, kind

    def _check_dim(self, dim, where):
        if dim != self.encoder.dim:
            raise TinyCapError(where, f"expects {dim}-d frame embeddings, {self.encoder.clip_dir} gives {self.encoder.dim}-d")

    # ------------------------------------------------------------------------------ inputs

    def embed(self, frames):
        """uint8 frames (N, S, S, 3) -> L2-normalised CLIP embeddings (N, D), or (N, G, D) for a grid guide."""
        return self.encoder.frames(frames, grid=self.grid)

    def caption_video(self, path):
        """One caption for a whole video from `num_frames` frames at the segment centres."""
        t0 = time.perf_counter()
        frames, times = frames_mod.sample_video(path, self.num_frames, self.frame_size)
        t1 = time.perf_counter()
        emb = self.embed(frames)
        t2 = time.perf_counter()
        out = self.caption_embeddings(emb)
        t3 = time.perf_counter()
        return self._result(path, "video", out, [float(t) for t in times], (t1 - t0, t2 - t1, t3 - t2, t3 - t0))

    def caption_image(self, path):
        """A still image as a one-frame clip: its embedding repeated for every frame position."""
        t0 = time.perf_counter()
        frame = frames_mod.load_image(path, self.frame_size)
        t1 = time.perf_counter()
        emb = np.repeat(self.embed(frame[None]), self.num_frames, axis=0)  # (T, D)
        t2 = time.perf_counter()
        out = self.caption_embeddings(emb)
        t3 = time.perf_counter()
        return self._result(path, "image", out, [0.0] * self.num_frames, (t1 - t0, t2 - t1, t3 - t2, t3 - t0))

    def _result(self, path, kind, out, times, seconds):
        decode_s, clip_s, caption_s, total_s = seconds
        return {
            "path": str(path),
            "kind": kind,
            "caption": out["caption"],
            "tokens": out["tokens"],
            "model": self.model_name,
            "pooling": self.pooling,
            "num_frames": self.num_frames,
            "frame_times_s": times,
            "attention": out["attention"],
            "timings_ms": {
                "frames": round(decode_s * 1e3, 2),
                "clip": round(clip_s * 1e3, 2),
                "caption": round(caption_s * 1e3, 2),
                "total": round(total_s * 1e3, 2),
            },
        }

    def caption_windows(self, path, window_s, stride_s, chunk=32, progress=None):
        """Slide a window over a long video and caption each: yields (start_s, end_s, result) in order.

        Frames are read only at each window's `num_frames` sample times (the reader seeks), `chunk`
        windows at a time, so work and memory stay bounded whatever the length. progress(n) is
        called after each chunk with the number of windows done in it.
        """
        duration = frames_mod.probe(path)
        spans = srt.windows(duration, window_s, stride_s)
        T = self.num_frames
        for i in range(0, len(spans), chunk):
            part = spans[i : i + chunk]
            times = [t for start, end in part for t in srt.frame_times(start, end, T)]
            emb = self.embed(frames_mod.frames_at(path, times, self.frame_size))  # (n*T, D)
            for j, (start, end) in enumerate(part):
                out = self.caption_embeddings(emb[j * T : (j + 1) * T])
                yield (
                    start,
                    end,
                    {"caption": out["caption"], "attention": out["attention"], "frame_times_s": times[j * T : (j + 1) * T]},
                )
            if progress:
                progress(len(part))

    # ------------------------------------------------------------------------------ decoding

    def caption_embeddings(self, emb):
        """Frame embeddings (T, D) (or (T, G, D) for a grid guide) -> {"caption", "tokens", "attention" (T weights)}."""
        emb = np.asarray(emb, np.float32)
        if emb.shape[0] != self.num_frames:
            raise TinyCapError("frames", f"got {emb.shape[0]} frame embeddings, the model takes {self.num_frames}")
        with self._lock:
            if self.model_name == "int8":
                tokens, attention = self._decode_int8(emb)
            else:
                with self._torch.inference_mode():
                    x = self._torch.from_numpy(emb)[None]  # (1, T, D) or (1, T, G, D)
                    tokens, attention = self._decode_guide(x) if self.model_name == "guide" else self._decode_microcap(x)
        return {
            "caption": self.vocab.decode(tokens),
            "tokens": [int(t) for t in tokens],
            "attention": [round(float(w), 6) for w in attention],
        }

    def _decode_microcap(self, x):
        torch = self._torch
        c, h, weights = self.model.encode(x)  # (1, D), (1, H), (1, T)
        opts = self.decode_opts
        if opts.beam == 1 and opts.temperature == 0:
            tokens = self.model.greedy(x)[0]
        else:

            def step(tok, h):
                logits, h_new = self.model.step(torch.tensor([tok]), h, c)
                return logits[0].numpy(), h_new

            tokens = self._search(step, h, self.model.cfg.max_steps)
        return tokens, weights[0].numpy()

    def _decode_guide(self, x):
        torch = self._torch
        opts = self.decode_opts
        mem = self.model.memory(x)  # (1, T, d)
        max_steps = self.model.cfg.max_len - 1
        if opts.temperature == 0:
            tokens = self.model.beam_search(x, beam=opts.beam)[0]
        else:

            def step(tok, seq):
                seq = seq + [tok]
                logits, _ = self.model.decode(mem, torch.tensor([seq]))
                return logits[0, -1].numpy(), seq

            tokens = self._search(step, [], max_steps)
        # the guide's attention over frames while it wrote this caption: mean over heads, layers, steps
        _, att = self.model.decode(mem, torch.tensor([[BOS] + tokens]))  # (1, L, T)
        return tokens, att[0].mean(0).numpy()

    def _decode_int8(self, emb):
        opts = self.decode_opts
        enc = self.model.encode(emb)
        pooler = self.model.graphs["pooler"]
        if "weights" in enc:
            attention = _dequantize(enc["weights"][0], pooler.io["outputs"][pooler.out_pos["weights"]])
        else:
            attention = np.full(self.num_frames, 1.0 / self.num_frames)
        if opts.beam == 1 and opts.temperature == 0:
            return self.model.caption(emb), attention
        decoder = self.model.graphs["decoder"]
        logits_io = decoder.io["outputs"][decoder.out_pos["logits"]]
        context = enc["context"]

        def step(tok, h):
            res = decoder(token=np.array([tok], np.int32), h=h, context=context)
            return _window_logits(res["logits"][0], logits_io), res["h_new"]

        return self._search(step, enc["h0"], self.model.max_steps), attention

    def _search(self, step, state, max_steps):
        """Beam search or sampling over step(token, state) -> (logits (V,), new state); ids without <eos>."""
        opts = self.decode_opts
        if opts.temperature > 0:
            tokens, tok = [], BOS
            for _ in range(max_steps):
                logits, state = step(tok, state)
                logits = logits.astype(np.float64)
                logits[[PAD, BOS]] = -np.inf  # never valid outputs
                p = _softmax(logits / opts.temperature)
                tok = int(self._rng.choice(len(p), p=p))
                if tok == EOS:
                    break
                tokens.append(tok)
            return tokens
        return beam_search(step, state, opts.beam, max_steps)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _window_logits(q, io):
    """int8 logits (V,) of the decoder graph -> float for beam search and sampling. The int8 logits
    cover only a window at the top (quant.json logits_window); the tokens clipped to its floor are
    below it, not at it, so they get -inf (all of them at the floor: nothing to rank, kept as is)."""
    logits = _dequantize(q, io)
    floor = np.asarray(q) == np.iinfo(np.int8).min
    if floor.any() and not floor.all():
        logits[floor] = -np.inf
    return logits


def _dequantize(q, io):
    """int8 graph output -> float with its (scale, zero point); float outputs pass through."""
    q = np.asarray(q)
    if q.dtype == np.int8 and io.get("scale"):
        return (q.astype(np.float32) - io["zero_point"]) * io["scale"]
    return q.astype(np.float32)
