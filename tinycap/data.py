"""The captioned-video dataset: rendered synthetic clips (default) or real MSR-VTT / VATEX annotations.

Both paths write the same index, `annotations.json`:

    {"videos":    [{"video_id", "split", "path", ...}],     # split in train / val / test / novel
     "sentences": [{"video_id", "caption"}]}

`path` is relative to the folder of annotations.json (synthetic clips) or absolute (real data).

Synthetic videos ("synth"): one or two objects (6 shapes x 6 colours x 3 sizes) over a flat, gradient
or textured background with mild per-frame noise, doing one of ACTIONS over the clip. Each action
needs several frames to tell (a single frame shows a shape, never where it is going). Captions come
from a small grammar with synonyms and several sentence patterns; every clip gets
`captions_per_video` distinct ones. Each video record also carries
`action`, `order_dependent` (true when playing the clip backwards gives another caption:
left/right, up/down, grow/shrink, fade in/out, approach/separate, colour change direction),
`objects` ([{colour, shape, size}], plus `end_colour` for change_colour) and `background`.

The `novel` split holds (colour, shape, action) combinations that never occur in train/val/test:
a triple is held out when (colour index + shape index + action index) % 6 == 0, so every
colour x shape, colour x action and shape x action pair still occurs in train, only the triple is new.
A novel clip has all of its objects' triples held out; a train/val/test clip has none.

Everything is a function of `seed`: scenes and captions are drawn in order from one generator,
each clip's pixels (texture, noise) from its own generator, so worker scheduling cannot change a byte.
"""

import collections
import dataclasses
import json
import logging
import math
import multiprocessing
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from tinycap.errors import TinyCapError
from tinycap.io import atomic_path, read_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "novel")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif", ".m4v")


@dataclasses.dataclass
class DataParams:
    source: Literal["synth", "msrvtt", "vatex"]  # synth renders clips; msrvtt/vatex index real ones
    annotations: Any  # real data: one JSON path, or {split: path}; ignored (null) for synth
    videos_dir: str | None  # real data: folder with <video_id>.<ext> files
    videos_per_split: dict  # synth: {train: n, val: n, test: n, novel: n}
    size: int  # synth: frame side in pixels (even: yuv420p)
    fps: int  # synth: frames per second
    duration_s: float  # synth: clip length in seconds
    captions_per_video: int  # synth: distinct reference captions per clip (>= 5)


# ---------------------------------------------------------------------------------------------
# Scene vocabulary

COLOURS = {  # name -> RGB
    "red": (225, 40, 40),
    "green": (40, 195, 70),
    "blue": (50, 100, 240),
    "yellow": (245, 215, 40),
    "purple": (160, 70, 215),
    "orange": (250, 135, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES = {"small": 0.085, "medium": 0.12, "large": 0.165}  # radius as a fraction of the frame side
BACKGROUNDS = ("plain", "gradient", "textured")

# action -> (number of objects, order_dependent)
ACTIONS = {
    "move_left": (1, True),
    "move_right": (1, True),
    "move_up": (1, True),
    "move_down": (1, True),
    "grow": (1, True),
    "shrink": (1, True),
    "rotate": (1, False),
    "bounce": (1, False),
    "fade_in": (1, True),
    "fade_out": (1, True),
    "change_colour": (1, True),
    "approach": (2, True),
    "separate": (2, True),
    "pass": (2, False),
}
NOVEL_MODULUS = 6


def is_novel(colour, shape, action):
    """True for the (colour, shape, action) triples held out of train/val/test for the novel split."""
    i = list(COLOURS).index(colour) + SHAPES.index(shape) + list(ACTIONS).index(action)
    return i % NOVEL_MODULUS == 0


def attribute_set(scene):
    """A scene's full attribute set: action, background, and each object's colour (end colour), shape, size."""
    objects = sorted((o["colour"], o.get("end_colour", ""), o["shape"], o["size"]) for o in scene["objects"])
    return (scene["action"], scene["background"], *objects)


def object_triples(video):
    """The (colour, shape, action) triples of a synthetic video record (one per object)."""
    return [(o["colour"], o["shape"], video["action"]) for o in video["objects"]]


# ---------------------------------------------------------------------------------------------
# Scene sampling


def _sample_object(rng, action, used=()):
    shapes = [s for s in SHAPES if not (action == "rotate" and s == "circle")]  # a spinning circle looks still
    colours = [c for c in COLOURS if c not in used]
    return {
        "colour": str(rng.choice(colours)),
        "shape": str(rng.choice(shapes)),
        "size": str(rng.choice(list(SIZES))),
    }


def sample_scene(rng, split):
    """Draw one scene (action, objects, background); its (colour, shape, action) triples fit `split`.

    The action is drawn uniformly first, then objects until they pass the novelty rule, so every split
    holds every action about equally often.
    """
    want_novel = split == "novel"
    action = str(rng.choice(list(ACTIONS)))
    n_objects, order_dependent = ACTIONS[action]
    while True:
        objects = []
        for _ in range(n_objects):  # two objects never share a colour, so captions can tell them apart
            objects.append(_sample_object(rng, action, used={o["colour"] for o in objects}))
        novel = [is_novel(o["colour"], o["shape"], action) for o in objects]
        if (want_novel and all(novel)) or (not want_novel and not any(novel)):
            break
    if action == "change_colour":
        objects[0]["end_colour"] = str(rng.choice([c for c in COLOURS if c != objects[0]["colour"]]))
    return {
        "action": action,
        "order_dependent": order_dependent,
        "objects": objects,
        "background": str(rng.choice(BACKGROUNDS)),
    }


# ---------------------------------------------------------------------------------------------
# Caption grammar: lower-case words only, 5-14 words per caption

SHAPE_WORDS = {
    "circle": ["circle", "ball", "disc", "round dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle"],
    "diamond": ["diamond", "rhombus"],
    "star": ["star"],
    "cross": ["cross", "plus sign"],
}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "medium": [""], "large": ["large", "big"]}
BACKGROUND_WORDS = {
    "plain": ["a plain background", "a flat background", "a dark background"],
    "gradient": ["a gradient background", "a shaded background"],
    "textured": ["a textured background", "a patterned background"],
}
MOVERS = [("moves", "moving"), ("slides", "sliding"), ("travels", "traveling"), ("glides", "gliding")]
MOVERS_PLURAL = [("move", "moving"), ("slide", "sliding"), ("travel", "traveling"), ("glide", "gliding")]
DIRECTIONS = {
    "move_left": ["to the left", "leftward", "left", "from right to left", "toward the left side"],
    "move_right": ["to the right", "rightward", "right", "from left to right", "toward the right side"],
    "move_up": ["up", "upward", "toward the top", "from bottom to top"],
    "move_down": ["down", "downward", "toward the bottom", "from top to bottom"],
}
# single-object verb phrases: (third person, gerund); {c} = end colour of change_colour
VERBS = {
    "move_up": [("rises", "rising"), ("floats up", "floating up"), ("rises to the top", "rising to the top")],
    "move_down": [("falls", "falling"), ("drops down", "dropping down"), ("sinks to the bottom", "sinking to the bottom")],
    "grow": [
        ("grows", "growing"),
        ("gets bigger", "getting bigger"),
        ("grows larger", "growing larger"),
        ("expands", "expanding"),
        ("becomes larger", "becoming larger"),
        ("increases in size", "increasing in size"),
    ],
    "shrink": [
        ("shrinks", "shrinking"),
        ("gets smaller", "getting smaller"),
        ("becomes smaller", "becoming smaller"),
        ("contracts", "contracting"),
        ("decreases in size", "decreasing in size"),
        ("shrinks down", "shrinking down"),
    ],
    "rotate": [
        ("rotates", "rotating"),
        ("spins", "spinning"),
        ("turns around", "turning around"),
        ("rotates in place", "rotating in place"),
        ("spins around", "spinning around"),
    ],
    "bounce": [
        ("bounces", "bouncing"),
        ("bounces up and down", "bouncing up and down"),
        ("hops", "hopping"),
        ("jumps up and down", "jumping up and down"),
        ("keeps bouncing", "bouncing"),
    ],
    "fade_in": [
        ("fades in", "fading in"),
        ("slowly appears", "slowly appearing"),
        ("gradually appears", "gradually appearing"),
        ("becomes visible", "becoming visible"),
    ],
    "fade_out": [
        ("fades out", "fading out"),
        ("slowly disappears", "slowly disappearing"),
        ("gradually vanishes", "gradually vanishing"),
        ("fades away", "fading away"),
    ],
    "change_colour": [
        ("turns {c}", "turning {c}"),
        ("becomes {c}", "becoming {c}"),
        ("changes colour to {c}", "changing colour to {c}"),
        ("changes to {c}", "changing to {c}"),
    ],
}
# two-object verb phrases: (plural, gerund)
VERBS_PAIR = {
    "approach": [
        ("move toward each other", "moving toward each other"),
        ("approach each other", "approaching each other"),
        ("come together", "coming together"),
        ("get closer", "getting closer"),
        ("move closer together", "moving closer together"),
    ],
    "separate": [
        ("move apart", "moving apart"),
        ("move away from each other", "moving away from each other"),
        ("separate", "separating"),
        ("drift apart", "drifting apart"),
        ("get farther apart", "getting farther apart"),
    ],
    "pass": [
        ("pass each other", "passing each other"),
        ("cross paths", "crossing paths"),
        ("move past each other", "moving past each other"),
        ("swap sides", "swapping sides"),
    ],
}


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng, obj, det="a", with_size=True, with_colour=True):
    words = [det]
    if with_size:
        words.append(_pick(rng, SIZE_WORDS[obj["size"]]))
    if with_colour:
        words.append(obj["colour"])
    words.append(_pick(rng, SHAPE_WORDS[obj["shape"]]))
    words = [w for w in words if w]
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def _verb_phrase(rng, scene):
    """(finite, gerund) verb phrase for a single-object action."""
    action = scene["action"]
    options = list(VERBS.get(action, []))
    if action in DIRECTIONS:
        direction = _pick(rng, DIRECTIONS[action])
        across = _pick(rng, ["", "", " across the frame", " across the screen"]) if action in ("move_left", "move_right") else ""
        options += [(f"{v} {direction}{across}", f"{g} {direction}{across}") for v, g in MOVERS]
    finite, gerund = _pick(rng, options)
    if action == "change_colour":
        end = scene["objects"][0]["end_colour"]
        finite, gerund = finite.format(c=end), gerund.format(c=end)
    return finite, gerund


def caption(rng, scene):
    """One caption for `scene` from the grammar (several sentence patterns, synonyms, optional parts)."""
    objects, action = scene["objects"], scene["action"]
    size_ok = action not in ("grow", "shrink")  # the size changes: no size adjective
    pattern = int(rng.integers(6))
    det = "a" if pattern == 4 else _pick(rng, ["a", "a", "the"])  # "there is a ...", never "there is the ..."
    if len(objects) == 1:
        obj = objects[0]
        np_ = _noun_phrase(rng, obj, det, with_size=size_ok and rng.random() < 0.6)
        if action == "change_colour" and rng.random() < 0.35:  # "a square changes from red to blue"
            np_ = _noun_phrase(rng, obj, det, with_size=False, with_colour=False)
            finite = f"changes from {obj['colour']} to {obj['end_colour']}"
            gerund = f"changing from {obj['colour']} to {obj['end_colour']}"
        else:
            finite, gerund = _verb_phrase(rng, scene)
        subject, verb_is = np_, "is"
    else:
        a = _noun_phrase(rng, objects[0], det, with_size=rng.random() < 0.3)
        b = _noun_phrase(rng, objects[1], det, with_size=rng.random() < 0.3)
        finite, gerund = _pick(rng, VERBS_PAIR[action])
        subject, verb_is = f"{a} and {b}", "are"
    background = _pick(rng, BACKGROUND_WORDS[scene["background"]])
    where = _pick(rng, ["on", "over", "against"]) + " " + background
    if pattern == 0:
        words = f"{subject} {finite}"
    elif pattern == 1:
        words = f"{subject} {finite} {where}"
    elif pattern == 2:
        words = f"{subject} {verb_is} {gerund}"
    elif pattern == 3:
        words = f"{where} {subject} {finite}"
    elif pattern == 4:
        words = f"there {verb_is} {subject} {gerund}"
    else:
        words = f"{_pick(rng, ['we see', 'the video shows', 'you can see'])} {subject} {gerund}"
    return re.sub(r"\s+", " ", words).strip()


def captions_for(rng, scene, count, min_words=5, max_words=14):
    """`count` distinct captions of `min_words`..`max_words` words (deterministic given `rng`)."""
    out = []
    for _ in range(200 * count):
        c = caption(rng, scene)
        if min_words <= len(c.split()) <= max_words and c not in out:
            out.append(c)
            if len(out) == count:
                return out
    raise TinyCapError("data.captions_per_video", f"the grammar cannot write {count} distinct captions for {scene['action']}")


# ---------------------------------------------------------------------------------------------
# Rendering


def _polygon(shape, radius, angle):
    """Vertices (unit-centred, radius-scaled, rotated) of a shape; None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":  # half side 0.85 r
        pts = [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
        pts = [(1.1 * x, 1.1 * y + 0.15) for x, y in pts]
    elif shape == "diamond":  # a rhombus, taller than wide: never a rotated square
        pts = [(0.0, -1.15), (0.62, 0.0), (0.0, 1.15), (-0.62, 0.0)]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -np.pi / 2 + k * np.pi / 5
            r = 1.15 if k % 2 == 0 else 0.48
            pts.append((r * math.cos(a), r * math.sin(a)))
    elif shape == "cross":
        w, arm = 0.36, 1.0
        pts = [
            (-w, -arm),
            (w, -arm),
            (w, -w),
            (arm, -w),
            (arm, w),
            (w, w),
            (w, arm),
            (-w, arm),
            (-w, w),
            (-arm, w),
            (-arm, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(shape)
    c, s = math.cos(angle), math.sin(angle)
    return [(radius * (x * c - y * s), radius * (x * s + y * c)) for x, y in pts]


SUPERSAMPLE = 4


def _coverage(shape, cx, cy, radius, angle, size):
    """Anti-aliased coverage mask (size, size) float32 in [0, 1] of one shape."""
    big = size * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    s = SUPERSAMPLE
    if shape == "circle":
        draw.ellipse([(cx - radius) * s, (cy - radius) * s, (cx + radius) * s, (cy + radius) * s], fill=255)
    else:
        draw.polygon([((cx + x) * s, (cy + y) * s) for x, y in _polygon(shape, radius, angle)], fill=255)
    img = img.resize((size, size), Image.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _background(rng, kind, size):
    """(size, size, 3) float32 background: muted, dark to mid tones so every object colour stands out."""

    def tone():
        base = rng.uniform(25, 110)
        return np.clip(base + rng.uniform(-20, 20, 3), 0, 255)

    if kind == "plain":
        return np.broadcast_to(tone(), (size, size, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    if kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a)
        t = (t - t.min()) / (t.max() - t.min())
        return ((1 - t)[..., None] * tone() + t[..., None] * tone()).astype(np.float32)
    # textured: stripes or checks, or smooth blotches, at low contrast
    pattern = rng.integers(3)
    if pattern == 0:
        period = rng.uniform(0.08, 0.2)
        a = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * ((xx * math.cos(a) + yy * math.sin(a)) / period)))
    elif pattern == 1:
        period = rng.uniform(0.1, 0.25)
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    else:
        coarse = rng.random((6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32) / 255
    c0 = tone()
    c1 = np.clip(c0 + rng.uniform(-35, 35, 3), 0, 255)
    return ((1 - t)[..., None] * c0 + t[..., None] * c1).astype(np.float32)


def _smoothstep(u):
    return u * u * (3 - 2 * u)


def _trajectories(rng, scene, size):
    """Per object, a function u in [0, 1] -> (cx, cy, radius, angle, alpha, rgb) in pixels."""
    action = scene["action"]
    objs = scene["objects"]
    jitter = lambda rgb: np.clip(np.array(rgb, np.float32) + rng.uniform(-12, 12, 3), 0, 255)
    rgbs = [jitter(COLOURS[o["colour"]]) for o in objs]
    radii = [SIZES[o["size"]] * size for o in objs]
    angle0 = [rng.uniform(-0.25, 0.25) for _ in objs]  # small tilt: a single frame never shows a motion
    tracks = []
    if len(objs) == 1:
        r, rgb, ang = radii[0], rgbs[0], angle0[0]
        margin = r * 1.2 / size
        cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        fixed = (cx * size, cy * size)
        if action in ("move_left", "move_right", "move_up", "move_down"):
            # traverse most of the frame (at least ~50 %, margins included) from a varied start
            lo, hi = margin, 1 - margin
            start = rng.uniform(lo, lo + 0.06)
            end = rng.uniform(hi - 0.06, hi)
            if action in ("move_left", "move_up"):
                start, end = 1 - start, 1 - end
            other = rng.uniform(0.25, 0.75)
            horizontal = action in ("move_left", "move_right")

            def f(u, start=start, end=end, other=other):
                p = (start + (end - start) * u) * size
                return (p, other * size) if horizontal else (other * size, p)

            tracks.append(lambda u: (*f(u), r, ang, 1.0, rgb))
        elif action in ("grow", "shrink"):
            r_small, r_big = 0.45 * r, 1.55 * r
            if action == "shrink":
                r_small, r_big = r_big, r_small
            big = max(r_small, r_big) * 1.1 / size
            c = (rng.uniform(big, 1 - big) * size, rng.uniform(big, 1 - big) * size)
            tracks.append(lambda u: (*c, r_small + (r_big - r_small) * u, ang, 1.0, rgb))
        elif action == "rotate":
            total = rng.choice([-1, 1]) * rng.uniform(np.pi / 2, 5 * np.pi / 6)
            tracks.append(lambda u: (*fixed, r, ang + total * u, 1.0, rgb))
        elif action == "bounce":
            height = rng.uniform(0.3, 0.4) * size
            base = (1 - margin - rng.uniform(0, 0.08)) * size
            x = cx * size  # two hops: at the 5 segment centres the object is up, higher, down, higher, up
            tracks.append(lambda u: (x, base - height * abs(math.sin(2 * np.pi * u)), r, ang, 1.0, rgb))
        elif action in ("fade_in", "fade_out"):
            tracks.append(lambda u: (*fixed, r, ang, u if action == "fade_in" else 1 - u, rgb))
        elif action == "change_colour":
            end_rgb = jitter(COLOURS[objs[0]["end_colour"]])
            switch = rng.uniform(0.4, 0.6)

            def colour_at(u):
                t = _smoothstep(float(np.clip((u - switch) / 0.2 + 0.5, 0, 1)))
                return (1 - t) * rgb + t * end_rgb

            tracks.append(lambda u: (*fixed, r, ang, 1.0, colour_at(u)))
        else:
            raise ValueError(action)
        return tracks
    # two objects, moving horizontally (with an optional slant); object 0 starts on the left
    ys = rng.uniform(0.3, 0.7, 2) * size
    if action == "pass":  # different rows so they slide past each other
        mid = rng.uniform(0.35, 0.65)
        gap = rng.uniform(0.2, 0.3)
        ys = np.array([mid - gap / 2, mid + gap / 2])[rng.permutation(2)] * size
    m = [radii[k] * 1.2 / size for k in range(2)]
    far = (rng.uniform(m[0], m[0] + 0.05), 1 - rng.uniform(m[1], m[1] + 0.05))
    if action == "pass":
        x0 = (far[0], far[1])
        x1 = (1 - rng.uniform(m[0], m[0] + 0.08), rng.uniform(m[1], m[1] + 0.08))
    else:
        near_gap = (radii[0] + radii[1]) / size + rng.uniform(0.0, 0.04)  # close to touching
        centre = rng.uniform(0.45, 0.55)
        near = (centre - near_gap / 2, centre + near_gap / 2)
        x0, x1 = (far, near) if action == "approach" else (near, far)
    for k in range(2):
        a, b, y, r, ang, rgb = x0[k], x1[k], ys[k], radii[k], angle0[k], rgbs[k]
        tracks.append(lambda u, a=a, b=b, y=y, r=r, ang=ang, rgb=rgb: ((a + (b - a) * u) * size, y, r, ang, 1.0, rgb))
    return tracks


def render_frames(scene, seed, size, n_frames):
    """(n_frames, size, size, 3) uint8 frames of `scene`; pixels depend only on (scene, seed)."""
    rng = np.random.default_rng(seed)
    background = _background(rng, scene["background"], size)
    tracks = _trajectories(rng, scene, size)
    noise_sigma = rng.uniform(2.0, 5.0)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for i in range(n_frames):
        u = i / (n_frames - 1)
        img = background.copy()
        for obj, track in zip(scene["objects"], tracks):
            cx, cy, r, ang, alpha, rgb = track(u)
            cov = _coverage(obj["shape"], cx, cy, r, ang, size)[..., None] * alpha
            img = img * (1 - cov) + np.asarray(rgb, np.float32) * cov
        img += rng.standard_normal(img.shape, dtype=np.float32) * noise_sigma
        frames[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames


def write_mp4(path, frames, fps):
    """Encode (T, H, W, 3) uint8 frames as H.264 yuv420p MP4, byte-identical from run to run.

    Single-threaded, explicit timestamps, and x264's macroblock-tree ratecontrol off: with mbtree on,
    this libx264 gives a different bitstream for the same frames now and then (seen on 5 to 9
    of 14 short clips encoded 6 to 8 times each, depending on what the process had allocated before).
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "26", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0:aq-mode=0"}
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _render_job(job):
    path, scene, seed, size, n_frames, fps = job
    write_mp4(path, render_frames(scene, seed, size, n_frames), fps)
    return path


def synth_annotations(cfg, seed):
    """The synthetic dataset's records (videos with scenes, sentences) and per-clip pixel seeds."""
    for split in cfg.videos_per_split:
        if split not in SPLITS:
            raise TinyCapError("params.yaml: data.videos_per_split", f"unknown split '{split}'; expected {', '.join(SPLITS)}")
    if cfg.size < 16 or cfg.size % 2:
        raise TinyCapError("params.yaml: data.size", f"must be an even number >= 16 (yuv420p), got {cfg.size}")
    n_frames = round(cfg.fps * cfg.duration_s)
    if n_frames < 2:
        raise TinyCapError("params.yaml: data", f"fps x duration_s gives {n_frames} frames; need at least 2")
    if cfg.captions_per_video < 1:
        raise TinyCapError("params.yaml: data.captions_per_video", "must be at least 1")
    rng = np.random.default_rng(seed)
    videos, sentences, pixel_seeds = [], [], []
    n = 0
    train_sets = set()  # train is drawn first: no test clip repeats a train clip's full attribute set
    for split in SPLITS:
        for _ in range(int(cfg.videos_per_split.get(split, 0))):
            scene = sample_scene(rng, split)
            while split == "test" and attribute_set(scene) in train_sets:
                scene = sample_scene(rng, split)
            if split == "train":
                train_sets.add(attribute_set(scene))
            video_id = f"synth{n:05d}"
            videos.append(
                {
                    "video_id": video_id,
                    "split": split,
                    "path": f"clips/{video_id}.mp4",
                    "fps": cfg.fps,
                    "num_frames": n_frames,
                    "width": cfg.size,
                    "height": cfg.size,
                    **scene,
                }
            )
            sentences += [{"video_id": video_id, "caption": c} for c in captions_for(rng, scene, cfg.captions_per_video)]
            pixel_seeds.append([seed, n])
            n += 1
    if not videos:
        raise TinyCapError("params.yaml: data.videos_per_split", "no videos requested")
    return {"videos": videos, "sentences": sentences}, pixel_seeds


def render_synth(cfg, seed, out_dir, workers=2):
    """Render the synthetic dataset into `out_dir` (clips/ + annotations.json). Returns the index."""
    out_dir = Path(out_dir)
    index, pixel_seeds = synth_annotations(cfg, seed)
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(out_dir / v["path"]), {k: v[k] for k in ("action", "objects", "background")}, s, cfg.size, v["num_frames"], cfg.fps)
        for v, s in zip(index["videos"], pixel_seeds)
    ]
    bar = dict(total=len(jobs), desc="synth_videos", unit="clip", mininterval=1.0)
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(_render_job, jobs, chunksize=8), **bar):
                pass
    else:
        for job in tqdm(jobs, **bar):
            _render_job(job)
    _write_index(out_dir / "annotations.json", index)
    return index


# ---------------------------------------------------------------------------------------------
# Real annotations: MSR-VTT and VATEX

MSRVTT_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _annotation_files(cfg):
    """[(path, split or None)] from data.annotations: one path, or a {split: path} mapping."""
    ann = cfg.annotations
    if ann is None or ann == "":
        raise TinyCapError("params.yaml: data.annotations", f"data.source {cfg.source} needs an annotation file")
    if isinstance(ann, str):
        return [(Path(ann), None)]
    if isinstance(ann, dict):
        for split in ann:
            if split not in SPLITS:
                raise TinyCapError("params.yaml: data.annotations", f"unknown split '{split}'; expected {', '.join(SPLITS)}")
        return [(Path(p), s) for s, p in ann.items()]
    raise TinyCapError("params.yaml: data.annotations", "expected a path or a {split: path} mapping")


def _caption_text(value, path, video_id):
    if not isinstance(value, str) or not value.strip():
        raise TinyCapError(path, f"video {video_id}: caption must be a non-empty string, got {value!r}")
    return " ".join(value.split())


def parse_msrvtt(path, split=None):
    """MSR-VTT train_val_videodatainfo.json style -> ([(video_id, split)], {video_id: [captions]})."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) or not isinstance(data.get("sentences"), list):
        raise TinyCapError(path, 'not an MSR-VTT annotation file (expected {"videos": [...], "sentences": [...]})')
    videos, captions = [], {}
    for k, v in enumerate(data["videos"]):
        if not isinstance(v, dict) or not isinstance(v.get("video_id"), str):
            raise TinyCapError(path, f"videos[{k}] has no string video_id")
        vid = v["video_id"]
        if vid in captions:
            raise TinyCapError(path, f"video {vid} is listed twice")
        s = split
        if s is None:
            if v.get("split") not in MSRVTT_SPLITS:
                raise TinyCapError(path, f"video {vid}: unknown split {v.get('split')!r}; expected train, validate or test")
            s = MSRVTT_SPLITS[v["split"]]
        videos.append((vid, s))
        captions[vid] = []
    for k, s in enumerate(data["sentences"]):
        if not isinstance(s, dict) or not isinstance(s.get("video_id"), str):
            raise TinyCapError(path, f"sentences[{k}] has no string video_id")
        if s["video_id"] not in captions:
            raise TinyCapError(path, f"sentences[{k}] names video {s['video_id']}, which is not in videos")
        captions[s["video_id"]].append(_caption_text(s.get("caption"), path, s["video_id"]))
    return videos, captions


def _vatex_split_from_name(path):
    name = Path(path).name.lower()
    for key, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if key in name:
            return split
    raise TinyCapError(path, "cannot tell the split from the file name (train/val/test); give data.annotations as {split: path}")


def parse_vatex(path, split=None):
    """VATEX [{"videoID", "enCap": [...]}] -> ([(video_id, split)], {video_id: [captions]}).

    VATEX ships one file per split; the split comes from the {split: path} mapping or the file name.
    """
    split = split or _vatex_split_from_name(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise TinyCapError(path, 'not a VATEX annotation file (expected a list of {"videoID", "enCap"})')
    videos, captions = [], {}
    for k, v in enumerate(data):
        if not isinstance(v, dict) or not isinstance(v.get("videoID"), str):
            raise TinyCapError(path, f"entry {k} has no string videoID")
        vid = v["videoID"]
        if vid in captions:
            raise TinyCapError(path, f"video {vid} is listed twice")
        caps = v.get("enCap")
        if not isinstance(caps, list):
            raise TinyCapError(path, f"video {vid} has no English captions (enCap)")
        videos.append((vid, split))
        captions[vid] = [_caption_text(c, path, vid) for c in caps]
    return videos, captions


def index_real(cfg, out_dir):
    """Validate real annotations + videos_dir and write `out_dir`/annotations.json (absolute paths).

    Videos whose file is missing from videos_dir are left out and listed in missing.json.
    """
    if not cfg.videos_dir:
        raise TinyCapError("params.yaml: data.videos_dir", f"data.source {cfg.source} needs the folder of video files")
    videos_dir = Path(cfg.videos_dir)
    if not videos_dir.is_dir():
        raise TinyCapError(videos_dir, "video folder not found")
    files = {}
    for p in sorted(videos_dir.rglob("*")):
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
            files.setdefault(p.stem, p.resolve())
    parse = parse_msrvtt if cfg.source == "msrvtt" else parse_vatex
    index = {"videos": [], "sentences": []}
    missing, seen = [], set()
    for path, split in _annotation_files(cfg):
        videos, captions = parse(path, split)
        if not videos:
            raise TinyCapError(path, "lists no videos")
        for vid, s in videos:
            if not captions[vid]:
                raise TinyCapError(path, f"video {vid} has no captions")
            if vid in seen:
                raise TinyCapError(path, f"video {vid} also appears in another annotation file")
            seen.add(vid)
            if vid not in files:
                missing.append({"video_id": vid, "split": s, "annotations": str(path)})
                continue
            index["videos"].append({"video_id": vid, "split": s, "path": str(files[vid])})
            index["sentences"] += [{"video_id": vid, "caption": c} for c in captions[vid]]
    if missing:
        shown = ", ".join(m["video_id"] for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        log.warning(
            "%d of %d annotated videos have no file in %s (listed in missing.json): %s",
            len(missing),
            len(seen),
            videos_dir,
            shown,
        )
    if not index["videos"]:
        raise TinyCapError(videos_dir, f"none of the {len(seen)} annotated videos has a file here")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_index(out_dir / "annotations.json", index)
    (out_dir / "missing.json").write_text(_dumps(missing))
    return index


# ---------------------------------------------------------------------------------------------


def _dumps(obj):
    return json.dumps(obj, indent=1) + "\n"


def _write_index(path, index):
    Path(path).write_text(_dumps(index))


def build_dataset(cfg, seed, out_dir, workers=2):
    """The `synth_videos` stage: render (synth) or index (msrvtt/vatex) into `out_dir`, atomically.
    Returns the index and its summary (metrics/data.json)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if cfg.source == "synth":
            index = render_synth(cfg, seed, tmp, workers)
        else:
            index = index_real(cfg, tmp)
    return index, summary(index)


def summary(index):
    """Clips and captions per split; on the embedded data also the distinct full attribute sets per
    split and how many of them also occur in train (test: 0 by construction)."""
    captions = collections.Counter(s["video_id"] for s in index["sentences"])
    out = {"source_clips": len(index["videos"]), "splits": {}}
    synthetic = all("action" in v and "objects" in v for v in index["videos"])
    sets = {}
    for v in index["videos"]:
        split = out["splits"].setdefault(v["split"], {"clips": 0, "captions": 0})
        split["clips"] += 1
        split["captions"] += captions[v["video_id"]]
        if synthetic:
            sets.setdefault(v["split"], set()).add(attribute_set(v))
    for name, split_sets in sets.items():
        out["splits"][name]["attribute_sets"] = len(split_sets)
        if name != "train":
            out["splits"][name]["attribute_sets_in_train"] = len(split_sets & sets.get("train", set()))
    if synthetic:
        out["method"] = (
            "attribute set = action, background and each object's colour, end colour, shape and size; "
            "test clips are redrawn until their set is not a train clip's"
        )
    return out
