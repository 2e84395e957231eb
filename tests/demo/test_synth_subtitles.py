"""The synthesiser's ASR-style subtitles, its parallel encoding and its bounding-box rendering.

Run: .venv/bin/python -m pytest tests/pipeline/test_synth_subtitles.py -q
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from demo import synth


def test_asr_subtitles_are_speech_that_only_sometimes_names_the_clip():
    rng = random.Random(0)
    specs = list(synth.sample_specs(600, seed=1, colors=("red", "blue"), shapes=("circle", "square")))
    subs = [synth.spoken_subtitle(s.color, s.shape, s.direction, rng) for s in specs]
    assert all(t and t == t.lower() and not any(c in t for c in ".,!?") for t in subs)
    words = [len(t.split()) for t in subs]
    assert min(words) >= 1 and max(words) <= 70 and 15 <= np.mean(words) <= 35
    for field in ("color", "shape", "direction"):  # said about half the time, never always
        said = np.mean([getattr(s, field) in t.split() for s, t in zip(specs, subs)])
        assert 0.35 < said < 0.7, (field, said)
    off_topic = np.mean([any(c in t for c in synth._CHATTER) for t in subs])
    assert 0.5 < off_topic < 0.8
    # A colour the clip does not have turns up too (the speaker talks about other videos).
    assert any("blue" in t.split() for s, t in zip(specs, subs) if s.color == "red")


def test_subtitle_style_and_workers_leave_the_clips_alone(tmp_path):
    one = synth.synthesize(tmp_path / "one", 6, seed=2, span_fraction=0.34, subtitles="asr")
    two = synth.synthesize(tmp_path / "two", 6, seed=2, span_fraction=0.34, subtitles="asr", workers=2)
    narrated = synth.synthesize(tmp_path / "narrated", 6, seed=2, span_fraction=0.34)
    rows = [[json.loads(line) for line in m.read_text().splitlines()] for m in (one, two, narrated)]
    for a, b, c in zip(*rows):
        assert a["text"] == b["text"] != c["text"]  # the text follows the style, not the workers
        assert {k: v for k, v in a.items() if k not in ("path", "text")} == \
               {k: v for k, v in c.items() if k not in ("path", "text")}
        for other in (b, c):  # the video bytes are the same whatever the style and workers
            assert open(a["path"], "rb").read() == open(other["path"], "rb").read()
    assert "start" in rows[0][0] and "start" not in rows[0][-1]
    with pytest.raises(ValueError, match="unknown subtitle style"):
        synth.synthesize(tmp_path / "bad", 1, subtitles="shouted")


def test_short_clips_keep_their_content(tmp_path):
    manifest = synth.synthesize(tmp_path, 3, seed=4, seconds=1.0)
    for row in map(json.loads, manifest.read_text().splitlines()):
        assert row["n_frames"] == max(2, round(row["fps"] * 1.0))
        assert row["caption_gt"] == synth.describe(row["color"], row["shape"], row["direction"])


def _whole_frame_render(spec: synth.ClipSpec) -> np.ndarray:
    """The renderer as it was before it tested only the bounding box: a mask over the whole frame."""
    rng = np.random.default_rng(spec.seed)
    h, w, n = spec.height, spec.width, spec.n_frames
    background = synth._background(h, w, rng)
    r = 0.16 * min(h, w)
    margin = r + 2
    cross = float(rng.uniform(0.35, 0.65))
    frames = []
    for i in range(n):
        t = i / (n - 1)
        if spec.direction in ("left", "right"):
            p = t if spec.direction == "right" else 1 - t
            cx, cy = margin + p * (w - 2 * margin), cross * h
        else:
            p = t if spec.direction == "down" else 1 - t
            cx, cy = cross * w, margin + p * (h - 2 * margin)
        frame = background.copy()
        frame[synth._shape_mask(spec.shape, h, w, cx, cy, r)] = synth.COLORS[spec.color]
        frames.append(frame)
    return np.stack(frames)


@pytest.mark.parametrize("seed", [0, 7])
def test_rendering_only_the_bounding_box_gives_the_same_pixels(seed):
    for spec in synth.sample_specs(12, seed=seed):  # every shape, several sizes and directions
        np.testing.assert_array_equal(synth.render_frames(spec), _whole_frame_render(spec))
