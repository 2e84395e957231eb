"""The clip synthesiser: real H.264 files whose content matches their text."""

from __future__ import annotations

import json

import numpy as np

from demo import synth


def test_manifest_rows_point_at_decodable_h264(synth_clips):
    import av

    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
    for row in rows[:6]:
        with av.open(row["path"]) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "h264"
            n = sum(1 for _ in c.decode(stream))
        expected = row["n_frames"] * (3 if "start" in row else 1)
        assert n == expected
        assert row["direction"] in row["caption_gt"] and row["color"] in row["caption_gt"]
        assert row["text"] and row["text"] == row["text"].lower()


def test_motion_follows_direction():
    spec = next(synth.sample_specs(1, seed=5, vary_format=False))
    frames = synth.render_frames(spec).astype(np.int32)
    colour = np.array(synth.COLORS[spec.color])
    # Centre of mass of the shape's pixels, first and last frame.
    def centre(frame):
        ys, xs = np.nonzero(np.all(np.abs(frame - colour) < 3, axis=-1))
        return xs.mean(), ys.mean()
    (x0, y0), (x1, y1) = centre(frames[0]), centre(frames[-1])
    moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}[spec.direction]
    assert moved > 0.4 * min(spec.width, spec.height)


def test_reversed_direction_is_time_reversal():
    spec = next(synth.sample_specs(1, seed=2, vary_format=False))
    import dataclasses

    back = dataclasses.replace(spec, direction=synth.OPPOSITE[spec.direction])
    np.testing.assert_array_equal(synth.render_frames(spec)[::-1], synth.render_frames(back))


def test_palette_restriction_and_unknown_names():
    import pytest

    specs = list(synth.sample_specs(40, seed=1, colors=("red", "blue"), shapes=("circle",)))
    assert {s.color for s in specs} == {"red", "blue"} and {s.shape for s in specs} == {"circle"}
    assert {s.direction for s in specs} == set(synth.DIRECTIONS)
    with pytest.raises(ValueError, match="unknown colour"):
        next(synth.sample_specs(1, colors=("mauve",)))
