"""The whole device path on the host (tinycap.int8.DeviceDecoder): camera frames -> int8 encoder -> the
requant table -> int8 MicroCap, all in TFLM; what quantize_int8 writes for it (device_tflm.npz, the
firmware's parity reference; captions_device.json, evaluate's device_int8 variant) on the tiny pipeline."""

import json

import numpy as np
import pytest
import torch

from tinycap import encoder
from tinycap.embeddings import load_embeddings
from tinycap.errors import TinyCapError
from tinycap.int8 import DeviceDecoder, TflmDecoder, quantize_frames, read_reference, requant_table, write_reference
from tinycap.vocab import Vocab


@pytest.fixture(scope="module")
def device(pipeline_data):
    data = pipeline_data
    emb = load_embeddings(data / "embeddings" / "clip.h5")
    return data, emb, DeviceDecoder(data / "encoder" / "encoder_int8.tflite", data / "int8")


def test_requant_table_is_dequantise_then_quantize_frames():
    out = {"scale": 1 / 128, "zero_point": 0}
    table = requant_table(out, 0.0029801297932863235, 2)  # the default pipeline's MicroCap frame input
    assert table.dtype == np.int8 and table.shape == (256,)
    assert table[128] == 2 and table[0] == -128 and table[255] == 127  # 0 -> zero point; +-1 saturate
    assert table[128 + 1] == 2 + 3 and table[128 - 1] == 2 - 3  # 1/128 / 0.00298 = 2.62 -> rounds to 3
    assert np.all(np.diff(table.astype(int)) >= 0)  # monotone
    emb_q = np.arange(-128, 128)
    np.testing.assert_array_equal(table, quantize_frames(emb_q / np.float32(128), 0.0029801297932863235, 2))


def test_the_table_path_equals_the_float_path(device):
    """DeviceDecoder (int8 embeddings through the table) = TflmDecoder on the dequantised embeddings."""
    data, emb, dec = device
    rows = emb.videos("test", "clip.h5")[:4]
    frames = encoder.read_frames(data / "frames" / "frames.h5", rows, dec.size)
    float_path = TflmDecoder(data / "int8")
    for clip in frames:
        q = dec.embed(clip)  # (T, D) int8
        assert q.dtype == np.int8 and q.shape == (len(clip), dec.dim)
        tokens, logits = dec.caption_with_logits(clip)
        ref_tokens, ref_logits = float_path.caption_with_logits(q.astype(np.float32) / 128)
        assert tokens == ref_tokens
        np.testing.assert_array_equal(logits, ref_logits)


def test_quantize_writes_the_device_reference_and_captions(device):
    data, emb, dec = device
    ref = read_reference(data / "int8" / "device_tflm.npz")
    captions = json.loads((data / "int8" / "captions_device.json").read_text())
    vocab = Vocab.load(data / "guide" / "vocab.json")
    eval_ids = [v for v, s in zip(emb.video_id, emb.split) if s in ("test", "novel")]
    assert sorted(ref) == sorted(eval_ids) and sorted(captions) == ["novel", "test"]
    for split, caps in captions.items():
        assert sorted(caps) == sorted(v for v, s in zip(emb.video_id, emb.split) if s == split)
        for vid, caption in caps.items():
            assert caption == vocab.decode(ref[vid][0])
    rows = emb.videos("novel", "clip.h5")[:3]
    frames = encoder.read_frames(data / "frames" / "frames.h5", rows, dec.size)
    for r, clip in zip(rows, frames):  # the saved reference = a fresh DeviceDecoder run
        tokens, logits = dec.caption_with_logits(clip)
        assert ref[emb.video_id[r]][0] == tokens
        np.testing.assert_array_equal(ref[emb.video_id[r]][1], logits)
        assert logits.shape == (len(tokens) + (len(tokens) < dec.decoder.max_steps), len(vocab))
    metrics = json.loads((data.parent / "metrics" / "quantize.json").read_text())["device"]["cider"]
    assert set(metrics) >= {"test", "novel"} and all(m["device_int8"] >= 0 for m in metrics.values())
    scored = json.loads((data.parent / "metrics" / "eval.json").read_text())
    assert set(scored["device_int8"]) == {"test", "novel"}


def test_reference_file_round_trip(tmp_path):
    tokens = [[5, 6, 7], []]
    logits = [np.arange(12, dtype=np.int8).reshape(4, 3), np.full((1, 3), -128, np.int8)]
    write_reference(tmp_path / "r.npz", ["a", "b"], tokens, logits)
    back = read_reference(tmp_path / "r.npz")
    assert [back[v][0] for v in "ab"] == tokens
    for v, x in zip("ab", logits):
        np.testing.assert_array_equal(back[v][1], x)
    with pytest.raises(TinyCapError, match="missing.npz: file not found"):
        read_reference(tmp_path / "missing.npz")


def test_bad_frames_and_a_mismatched_encoder_are_refused(device, tmp_path):
    data, emb, dec = device
    with pytest.raises(
        TinyCapError, match=rf"device frames: need uint8 \[T,{dec.size},{dec.size},3\] RGB, got uint8 \[5, 16, 16, 3\]"
    ):
        dec.embed(np.zeros((5, 16, 16, 3), np.uint8))
    with pytest.raises(TinyCapError, match=r"RGB, got uint8 \[5, .*, 4\]"):
        dec.embed(np.zeros((5, dec.size, dec.size, 4), np.uint8))
    with pytest.raises(TinyCapError, match="no.tflite: file not found"):
        DeviceDecoder(tmp_path / "no.tflite", data / "int8")
    cfg = encoder.EncoderConfig(input_size=16, stem=4, blocks=[[8, 2]], dim=dec.dim + 3)
    torch.manual_seed(0)
    model = encoder.Encoder(cfg).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    tflite, _ = encoder.convert_int8(encoder.TFEncoder(model), pixels)
    (tmp_path / "wide.tflite").write_bytes(tflite)
    with pytest.raises(TinyCapError, match=rf"wide.tflite: embeds to D = {dec.dim + 3}, MicroCap"):
        DeviceDecoder(tmp_path / "wide.tflite", data / "int8")
