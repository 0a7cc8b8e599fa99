"""The `evaluate` stage: every model variant on test and novel, scored with tinycap.metrics (pycocoevalcap).
On the synthetic data each clip has one action, so evaluate also reports how often a caption names
it (`action_named`, see action_classifier): the slot CIDEr averages over with the colours and shapes.
"""

import base64
import html
import io
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from tinycap import guide as guide_mod
from tinycap import microcap as microcap_mod
from tinycap.embeddings import load_embeddings
from tinycap.errors import TinyCapError
from tinycap.io import atomic_path, read_json, write_json
from tinycap.metrics import SPICE_NOTE, score
from tinycap.parallel import in_forked_process
from tinycap.vocab import Vocab

log = logging.getLogger(__name__)

VARIANTS = ("guide", "guide_greedy", "microcap_fp32", "microcap_int8_tflm", "device_int8")
# the int8 variants quantize_int8 decodes in TFLM: variant -> its captions file in data/int8
INT8_CAPTIONS = {"microcap_int8_tflm": "captions_tflm.json", "device_int8": "captions_device.json"}
BEAM_BATCH = 256  # clips per beam-search batch
BEAM_SHARE = 0.7  # of each split's beam search done in the forked child (the parent also decodes greedily)


# ----------------------------------------------------------------------------------------------
# the evaluate stage


@dataclass
class EvaluateParams:
    splits: list  # splits to decode and score, e.g. [test, novel]
    report_clips: int  # clips shown in data/eval/report.html


def load_int8_captions(path):
    """data/int8/captions_{tflm,device}.json ({split: {video_id: caption}}, written by quantize_int8)
    -> {video_id: caption}, or None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    data = read_json(path)
    ok = isinstance(data, dict) and all(
        isinstance(v, dict) and all(isinstance(c, str) for c in v.values()) for v in data.values()
    )
    if not ok:
        raise TinyCapError(path, "expected {split: {video_id: caption}}")
    return {vid: cap for split in data.values() for vid, cap in split.items()}


def order_dependent_ids(annotations_path):
    """video ids of order-dependent clips (synthetic data), or None when the annotations lack the attribute."""
    path = Path(annotations_path)
    if not path.is_file():
        return None
    videos = read_json(path).get("videos", [])
    if not videos or any("order_dependent" not in v for v in videos):
        return None
    return {v["video_id"] for v in videos if v["order_dependent"]}


def action_classifier(annotations_path):
    """(classify(caption) -> action, {video_id: action}) for annotations with an action per video
    (synthetic data), else None. Naive Bayes over the words of each action's train references: a
    caption goes to the action maximising the sum over its known words of log P(word | action) -
    log P(word) (word presence, add-0.1 smoothing). A heuristic of the caption grammar: evaluate
    reports its accuracy on the references (`action_named_references`) as the ceiling."""
    path = Path(annotations_path)
    if not path.is_file():
        return None
    ann = read_json(path)
    videos = {v["video_id"]: v for v in ann.get("videos", [])}
    if not videos or any("action" not in v for v in videos.values()):
        return None
    words = lambda caption: set(re.findall(r"[a-z]+", caption.lower()))  # noqa: E731
    per_action, total, n = defaultdict(Counter), Counter(), Counter()
    for sentence in ann.get("sentences", []):
        v = videos.get(sentence["video_id"])
        if v is not None and v.get("split") == "train":
            w = words(sentence["caption"])
            per_action[v["action"]].update(w)
            total.update(w)
            n[v["action"]] += 1
    if not n:
        return None
    actions, count = sorted(n), sum(n.values())

    def classify(caption):
        known = [w for w in words(caption) if total[w]]
        return max(
            actions,
            key=lambda a: sum(
                math.log((per_action[a][w] + 0.1) / (n[a] + 1)) - math.log((total[w] + 0.1) / (count + 1)) for w in known
            ),
        )

    return classify, {vid: v["action"] for vid, v in videos.items()}


def _jpeg_b64(frame, size=72):
    from PIL import Image

    img = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(path, clips, frames_path, notes):
    """HTML report: per clip the frames, MicroCap's pooling weight on each frame, predictions vs references."""
    frames = {}
    frames_path = Path(frames_path)
    if frames_path.is_file():
        with h5py.File(frames_path, "r") as f:
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["video_id"][()]]
            row = {v: i for i, v in enumerate(ids)}
            for c in clips:
                if c["video_id"] in row:
                    frames[c["video_id"]] = f["frames"][row[c["video_id"]]]
    else:
        notes["report_frames"] = f"{frames_path} not found: report shows no frames"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>TinyVideoCap evaluation</title><style>",
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td{padding:2px 6px;vertical-align:top}",
        ".clip{border-bottom:1px solid #ccc;padding:1em 0}.bar{background:#36c;height:6px}.w{font-size:11px;color:#555}",
        "</style></head><body><h1>TinyVideoCap: sample clips</h1>",
        "<p>Frames as sampled for CLIP; under each frame MicroCap's temporal pooling weight (mean pooling: 1/T; a "
        "MicroCap with a temporal filter also weighs each feature of each frame on its own, not shown). "
        "Captions: guide (beam search; guide_greedy: greedy), MicroCap fp32 (greedy), MicroCap int8 on TFLM when available.</p>",
    ]
    for c in clips:
        parts.append(f"<div class='clip'><h3>{html.escape(c['video_id'])} ({html.escape(c['split'])})</h3><table><tr>")
        imgs = frames.get(c["video_id"])
        weights = c.get("weights") or []
        for t in range(len(imgs) if imgs is not None else len(weights)):
            w = weights[t] if t < len(weights) else None
            cell = f"<img src='data:image/jpeg;base64,{_jpeg_b64(imgs[t])}'>" if imgs is not None else ""
            if w is not None:
                cell += f"<div class='bar' style='width:{72 * w:.0f}px'></div><div class='w'>w={w:.3f}</div>"
            parts.append(f"<td>{cell}</td>")
        parts.append("</tr></table><table>")
        for variant in VARIANTS:
            if variant in c["predictions"]:
                parts.append(f"<tr><td><b>{variant}</b></td><td>{html.escape(c['predictions'][variant])}</td></tr>")
        for r in c["references"]:
            parts.append(f"<tr><td class='w'>reference</td><td class='w'>{html.escape(r)}</td></tr>")
        parts.append("</table></div>")
    if notes:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in notes.items()) + "</ul>"
        )
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts))


def evaluate(emb_path, annotations_path, frames_path, guide_dir, microcap_dir, int8_dir, out_dir, p: EvaluateParams):
    """Decode every available variant on p.splits, score, write out_dir/{predictions.json,report.html} + metrics."""
    emb = load_embeddings(emb_path)
    vocab = Vocab.load(Path(guide_dir) / "vocab.json")
    notes = {"SPICE": SPICE_NOTE}
    guide = guide_mod.load(Path(guide_dir) / "guide.pt", vocab)
    student = microcap_mod.load(Path(microcap_dir) / "microcap.pt", vocab)
    int8 = {}
    for variant, name in INT8_CAPTIONS.items():
        int8[variant] = load_int8_captions(Path(int8_dir) / name)
        if int8[variant] is None:
            notes[variant] = f"{Path(int8_dir) / name} not found (quantize_int8 not run, or quantize.device off)"
    order_dep = order_dependent_ids(annotations_path)
    if order_dep is None:
        notes["order_dependent"] = f"{annotations_path} has no order_dependent attribute per video: subset not scored"
    actions = action_classifier(annotations_path)
    if actions is None:
        notes["action_named"] = f"{annotations_path} has no action per video (or no train captions): not scored"
    classify, action = actions or (None, None)
    frames = torch.from_numpy(emb.frame_emb)
    memory = guide_mod.memory_input(emb)

    # Both cores decode: the child the first BEAM_SHARE of every split's clips with the guide's beam
    # search (the slowest decoder), the parent the rest of the beam search and the greedy decoders. The
    # cut falls on a decode_rows batch boundary, so every batch is the one a single process decodes.
    split_rows = {split: emb.videos(split, emb_path) for split in p.splits}
    cut = {split: BEAM_BATCH * int(BEAM_SHARE * len(r) // BEAM_BATCH) for split, r in split_rows.items()}

    def beam_search(part):
        return {split: guide_mod.decode_rows(guide, memory, part(split), vocab, beam=guide.beam, batch_size=BEAM_BATCH)
                for split in p.splits}  # fmt: skip

    child = in_forked_process(lambda: beam_search(lambda split: split_rows[split][: cut[split]]), "evaluate: guide beam search")
    beam = beam_search(lambda split: split_rows[split][cut[split] :])
    greedy = {}
    for split in p.splits:
        greedy[split] = {"microcap_fp32": microcap_mod.decode_rows(student, frames, split_rows[split], vocab)}
        if guide.beam > 1:  # the guide decoded like MicroCap (greedy): the like-for-like comparison
            greedy[split]["guide_greedy"] = guide_mod.decode_rows(guide, memory, split_rows[split], vocab, beam=1)
    first = child.result()
    beam = {split: {**first[split], **beam[split]} for split in p.splits}

    preds, refs = {}, {}
    for split in p.splits:
        refs[split] = emb.references(split_rows[split])
        decoded = {"guide": beam[split], **greedy[split]}
        preds[split] = {variant: {emb.video_id[r]: c for r, c in caps.items()} for variant, caps in decoded.items()}
        for variant, captions in int8.items():
            if captions is None:
                continue
            have = {v: captions[v] for v in refs[split] if v in captions}
            if len(have) == len(refs[split]):
                preds[split][variant] = have
            else:
                notes[f"{variant}.{split}"] = (
                    f"{INT8_CAPTIONS[variant]} covers {len(have)} of {len(refs[split])} {split} clips: not scored"
                )

    def score_all(jobs):
        """{(split, variant): scores} of the given jobs, and the notes on metrics that could not be computed."""
        entries, job_notes = {}, {}
        for split, variant in jobs:
            pred = preds[split][variant]
            s = score(pred, refs[split], notes=job_notes)
            log.info("%s %s: %s", variant, split, {k: round(v, 4) for k, v in s.items()})
            entry = entries[split, variant] = {**s, "clips": len(pred)}
            if order_dep is not None:
                sub = [v for v in pred if v in order_dep]
                if sub:
                    entry["order_dependent"] = {
                        **score({v: pred[v] for v in sub}, refs[split], notes=job_notes),
                        "clips": len(sub),
                    }
            if actions is not None:
                entry["action_named"] = round(float(np.mean([classify(c) == action[v] for v, c in pred.items()])), 4)
        return entries, job_notes

    # half of the scoring (pycocoevalcap, METEOR's JVM) on the other core
    jobs = [(split, variant) for split in p.splits for variant in preds[split]]
    other_half = in_forked_process(lambda: score_all(jobs[1::2]), "evaluate: scoring")
    entries, job_notes = score_all(jobs[0::2])
    more, more_notes = other_half.result()
    entries.update(more)
    notes.update({**job_notes, **more_notes})
    metrics, predictions, clips = {}, {}, []
    for split, variant in jobs:
        metrics.setdefault(variant, {})[split] = entries[split, variant]
    for split in p.splits:
        rows, refs_split, preds_split = split_rows[split], refs[split], preds[split]
        with torch.no_grad():
            weights = student.encode(frames[torch.as_tensor(rows)])[2].numpy()  # (N, T)
        if actions is not None:
            named = [classify(r) == action[v] for v in refs_split for r in refs_split[v]]
            metrics.setdefault("action_named_references", {})[split] = round(float(np.mean(named)), 4)
        predictions[split] = {
            emb.video_id[r]: {
                "references": refs_split[emb.video_id[r]],
                **{variant: pred[emb.video_id[r]] for variant, pred in preds_split.items()},
                "microcap_weights": [round(float(w), 4) for w in weights[i]],
            }
            for i, r in enumerate(rows)
        }
        n_report = p.report_clips // len(p.splits) + (1 if p.splits.index(split) < p.report_clips % len(p.splits) else 0)
        for i in np.linspace(0, len(rows) - 1, num=min(n_report, len(rows))).round().astype(int):
            vid = emb.video_id[rows[i]]
            clips.append({"video_id": vid, "split": split, "references": refs_split[vid], "weights": predictions[split][vid]["microcap_weights"],
                          "predictions": {k: v[vid] for k, v in preds_split.items()}})  # fmt: skip
    for variant in VARIANTS:
        if variant not in metrics:
            notes.setdefault(
                variant, "the guide decodes greedily (guide.beam 1): see guide" if variant == "guide_greedy" else "not scored"
            )
    # each student's CIDEr as a fraction of its reference: the guide's (beam, greedy); the device path's, of the host int8 path's
    students = ("microcap_fp32", "microcap_int8_tflm", "device_int8")
    for teacher, variants in (("guide", students), ("guide_greedy", students), ("microcap_int8_tflm", ("device_int8",))):
        if teacher not in metrics:
            continue
        for variant in variants:
            for split, s in metrics.get(variant, {}).items():
                key = f"cider_fraction_of_{teacher}"
                g = metrics[teacher].get(split, {}).get("CIDEr")
                if g is None:  # the reference was not scored on this split (a note says why)
                    continue
                if g > 0:
                    metrics.setdefault(key, {}).setdefault(variant, {})[split] = round(s["CIDEr"] / g, 4)
                else:
                    notes[f"{key}.{variant}.{split}"] = f"absent: the {teacher} CIDEr is 0"
    metrics["notes"] = notes
    metrics["method"] = ("pycocoevalcap (PTBTokenizer; BLEU-4, METEOR 1.5, ROUGE-L, CIDEr-D raw 0-10 scale, x100 in papers); "
                         "guide: beam search (guide_greedy: the same guide, greedy), MicroCap fp32: greedy (PyTorch), "
                         "int8: TFLM captions from quantize_int8 (microcap_int8_tflm: int8 MicroCap on CLIP's frame "
                         "embeddings; device_int8: the whole device path, camera frames -> int8 encoder -> int8 "
                         "MicroCap); action_named: share of clips whose caption "
                         "names the clip's action (tinycap.evaluate.action_classifier; its accuracy on the "
                         "references: action_named_references)")  # fmt: skip
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "predictions.json", predictions)
        write_report(tmp / "report.html", clips, frames_path, dict(notes))
    return metrics
