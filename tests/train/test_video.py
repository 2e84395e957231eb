"""train/video.py: frame-index sampling against the spec's formulas, decord decode, the pixel pipeline.

Run: .venv/bin/python -m pytest tests/train/test_video.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.video import (CLIP_MEAN, CLIP_STD, DecodeError, decode_frames, decode_image, preprocess,
                         preprocess_on_device, sample_frame_indices)


@pytest.mark.parametrize("n", [1, 5, 11, 12, 13, 40, 97, 181])
def test_test_sampling_is_linspace_with_endpoints(n):
    idx = sample_frame_indices(n, 12, train=False)
    assert idx.tolist() == [int(v) for v in np.linspace(0, n - 1, 12)]
    assert idx[0] == 0 and idx[-1] == n - 1


@pytest.mark.parametrize("n,t", [(40, 12), (97, 12), (13, 12), (200, 32), (5, 12)])
def test_train_sampling_matches_the_official_jitter(n, t):
    # The spec's formula written out independently, fed the same two draws.
    for seed in range(50):
        got = sample_frame_indices(n, t, train=True, rng=np.random.default_rng(seed))
        draws = np.random.default_rng(seed)
        interval = n // (t - 1)
        start = int(draws.integers(0, interval + 1))
        end = int(draws.integers(n - 1 - interval, n))
        assert 0 <= start <= interval and n - 1 - interval <= end <= n - 1
        assert got.tolist() == np.clip(np.linspace(start, end, t).astype(int), 0, n - 1).tolist()


def test_train_sampling_covers_the_jitter_range_and_is_seeded():
    starts = {int(sample_frame_indices(100, 12, train=True, rng=np.random.default_rng(s))[0]) for s in range(300)}
    assert starts == set(range(0, 100 // 11 + 1))
    a = sample_frame_indices(100, 12, train=True, rng=np.random.default_rng(7))
    b = sample_frame_indices(100, 12, train=True, rng=np.random.default_rng(7))
    assert a.tolist() == b.tolist()
    with pytest.raises(ValueError, match="rng"):
        sample_frame_indices(100, 12, train=True)


def _first_clip(manifest: Path) -> dict:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return next(r for r in rows if "start" not in r)


def test_decode_from_bytes_gives_the_sampled_frames(synth_clips):
    import decord

    row = _first_clip(synth_clips)
    data = Path(row["path"]).read_bytes()
    frames = decode_frames(data, 12, train=False)
    assert frames.shape == (12, row["height"], row["width"], 3) and frames.dtype == np.uint8
    vr = decord.VideoReader(row["path"])
    want = vr.get_batch(np.linspace(0, len(vr) - 1, 12).astype(int).tolist()).asnumpy()
    np.testing.assert_array_equal(frames, want)


def test_broken_bytes_raise_decode_error(synth_clips):
    data = Path(_first_clip(synth_clips)["path"]).read_bytes()
    for bad in (b"", data[: len(data) // 5], b"not a video" * 50):
        with pytest.raises(DecodeError):
            decode_frames(bad, 12, train=False)
    with pytest.raises(DecodeError):
        decode_image(b"\xff\xd8 truncated jpeg")


def test_preprocess_is_bicubic_squash_then_clip_norm():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 240, 320, 3), dtype=np.uint8)
    out = preprocess(frames, 224)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    ref = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=False)
    ref = (ref - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)


def test_device_preprocessing_matches_worker_preprocessing():
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 256, size=(4, h, w, 3), dtype=np.uint8) for h, w in ((240, 320), (240, 426), (240, 320))]
    on_device = preprocess_on_device([torch.from_numpy(c) for c in clips], 64, "cpu")
    assert on_device.shape == (3, 4, 3, 64, 64)
    for i, c in enumerate(clips):
        torch.testing.assert_close(on_device[i], preprocess(c, 64))
