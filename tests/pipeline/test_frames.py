"""Middle frame and training re-encode (pipeline/frames.py), checked against full decodes. Run:
``.venv/bin/python -m pytest tests/pipeline/test_frames.py -q``."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.frames import ClipError, FrameConfig, middle_frame, process_clip, scaled_size


def _rows(manifest):
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def _full_decode(path):
    with av.open(path) as c:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def _frame_at(frames, t):
    """Reference: the last frame whose time is at or before t."""
    return [f for f in frames if f[0] <= t + 1e-6][-1]


def test_middle_frame_equals_full_decode(synth_clips):
    rows = _rows(synth_clips)
    checked_span = checked_whole = 0
    for row in rows[:10]:
        frames = _full_decode(row["path"])
        start, end = row.get("start"), row.get("end")
        mid = (start + end) / 2 if start is not None else (frames[-1][0] + 1 / row["fps"]) / 2
        t_ref, ref = _frame_at(frames, mid)
        t, got = middle_frame(row["path"], start, end)
        assert t == pytest.approx(t_ref)
        np.testing.assert_array_equal(got, ref)
        if start is None:
            # Without a span this is frame n // 2, the frame CLIP-ViP's dataset reads.
            np.testing.assert_array_equal(got, frames[len(frames) // 2][1])
            checked_whole += 1
        else:
            assert start <= t < end
            checked_span += 1
    assert checked_span and checked_whole


def test_span_middle_shows_the_span_content(synth_clips):
    """Span rows point at the middle third of a 3-part video; the middle frame must come from it."""
    row = next(r for r in _rows(synth_clips) if "start" in r)
    frames = _full_decode(row["path"])
    n = row["n_frames"]
    t, got = middle_frame(row["path"], row["start"], row["end"])
    np.testing.assert_array_equal(got, frames[n + n // 2][1])


def test_process_clip_outputs(synth_clips):
    row = next(r for r in _rows(synth_clips) if "start" not in r and r["fps"] >= 10)
    cfg = FrameConfig(target_fps=3.0, short_side=96, keyframe_interval=2)
    out = process_clip(row["path"], None, None, cfg)
    duration = row["n_frames"] / row["fps"]
    assert out.start == 0 and out.end == pytest.approx(duration)
    assert (out.src_width, out.src_height, out.src_fps) == (row["width"], row["height"], row["fps"])
    assert min(out.width, out.height) == 96 and (out.width, out.height) == scaled_size(row["width"], row["height"], 96)
    jpg = np.asarray(Image.open(io.BytesIO(out.jpg)))
    assert jpg.shape == (row["height"], row["width"], 3)
    # JPEG of the exact middle frame: close to the full decode's frame.
    ref = _frame_at(_full_decode(row["path"]), duration / 2)[1]
    assert np.abs(jpg.astype(int) - ref.astype(int)).mean() < 4
    with av.open(io.BytesIO(out.mp4)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == 3.0
        decoded = list(c.decode(stream))
    assert len(decoded) == out.n_frames == int(np.ceil(duration * 3 - 1e-6))
    assert [f.key_frame for f in decoded][::2] == [True] * len(decoded[::2])
    assert (decoded[0].width, decoded[0].height) == (out.width, out.height)


def test_reencode_samples_by_time(synth_clips):
    """Output frame k is the source frame on screen at start + k / fps (checked on the shape's position)."""
    row = next(r for r in _rows(synth_clips) if "start" in r)
    cfg = FrameConfig(target_fps=2.0, short_side=10_000, crf=0)
    out = process_clip(row["path"], row["start"], row["end"], cfg)
    frames = _full_decode(row["path"])
    with av.open(io.BytesIO(out.mp4)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for k, got in enumerate(decoded):
        ref = _frame_at(frames, row["start"] + k / 2.0)[1]
        assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3, k


def test_source_slower_than_target_is_not_upsampled(synth_clips):
    row = next((r for r in _rows(synth_clips) if r["fps"] == 3 and "start" not in r), None)
    if row is None:
        pytest.skip("no 3 fps clip in this synth draw")
    out = process_clip(row["path"], None, None, FrameConfig(target_fps=6.0))
    assert out.fps == 3.0 and out.n_frames == row["n_frames"]


@pytest.mark.parametrize("start, end, fragment", [(100.0, 104.0, "outside the video"), (2.0, 1.0, "empty"),
                                                   (-1.0, 1.0, "negative")])
def test_bad_spans_are_clip_errors(synth_clips, start, end, fragment):
    row = next(r for r in _rows(synth_clips) if "start" not in r)
    with pytest.raises(ClipError, match=fragment):
        process_clip(row["path"], start, end, FrameConfig())


def test_scaled_size_never_upscales_and_stays_even():
    assert scaled_size(640, 360, 240) == (426, 240)
    assert scaled_size(320, 240, 480) == (320, 240)
    assert scaled_size(241, 135, 100) == (178, 100)
