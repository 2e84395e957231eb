"""Middle frame and training re-encode (video/frames.py), checked against full decodes, against
decord (the trainer's decoder, which applies display rotation itself) and against PyAV's documented
display-matrix semantics. Run: ``.venv/bin/python -m pytest tests/video/test_frames.py -q``."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
from PIL import Image

from train.video import DecodeError, decode_frames
from video.frames import ClipError, FrameConfig, middle_frame, process_clip
from video.reencode import readable_width, scaled_size
from demo.synth import write_awkward_clips


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
    w, h = scaled_size(row["width"], row["height"], 96)
    assert min(out.width, out.height) == 96 and (out.width, out.height) == (readable_width(w), h)
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


def _mean_abs(a, b) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


def _jpg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    return write_awkward_clips(tmp_path_factory.mktemp("awkward"))


def test_intact_webm_decodes_whole(awkward):
    out = process_clip(str(awkward["webm"]), None, None, FrameConfig())
    assert (out.start, out.end, out.n_frames) == (0.0, pytest.approx(4.0), 12)
    assert out.middle_time == pytest.approx(2.0)  # frame 50 of 100 at 25 fps


@pytest.mark.parametrize("reencode", [True, False])
@pytest.mark.parametrize("cut", ["webm_cut30", "webm_cut50"])
def test_truncated_webm_fails_instead_of_freezing(awkward, cut, reencode):
    """A cut WebM still announces 4 s; its frames stop near 1 s or 2 s. Decoding it as 4 s would
    make the last decoded frame the 'middle' and pad the training copy with it, frozen."""
    path = str(awkward[cut])
    with av.open(path) as c:
        assert c.duration / av.time_base == pytest.approx(4.0)
    assert _full_decode(path)[-1][0] < 2.0
    with pytest.raises(ClipError, match=r"decodable frames end at 1\.\d+ s but the span runs to 4\.000 s.*truncated"):
        process_clip(path, None, None, FrameConfig(reencode=reencode))


def test_span_inside_the_decodable_part_of_a_cut_file_still_works(awkward):
    out = process_clip(str(awkward["webm_cut50"]), 0.2, 1.2, FrameConfig())
    assert out.middle_time == pytest.approx(0.68)  # the frame on screen at 0.7 s (25 fps)
    assert out.n_frames == 3


def test_rotated_clip_comes_out_upright(awkward):
    """Stored as 320x240 with 'turn 90 degrees counter-clockwise': both outputs must be the upright
    240x320 picture, the way decord (which applies the display matrix itself) and players show it."""
    import decord

    path = str(awkward["rotated"])
    upright = np.load(awkward["rotated"].parent / "rotated_upright.npy")  # [20, 320, 240, 3] at 10 fps
    with av.open(path) as c:
        first = next(c.decode(video=0))
        assert (first.width, first.height, first.rotation) == (320, 240, 90)
    out = process_clip(path, None, None, FrameConfig(short_side=10_000, image_max_short_side=0, crf=0))
    meta = out.meta()
    assert (meta["rotation"], meta["mirrored"], meta["src_width"], meta["src_height"]) == (90, False, 240, 320)
    assert (out.width, out.height) == (240, 320)
    jpg = _jpg(out.jpg)
    assert jpg.shape == (320, 240, 3) and out.middle_time == pytest.approx(1.0)
    assert _mean_abs(jpg, upright[10]) < 4
    assert _mean_abs(jpg, decord.VideoReader(path, num_threads=1)[10].asnumpy()) < 4
    # The training copy, read by the trainer's decoder: output frame k is the source frame at k / 3 s.
    frames = decode_frames(out.mp4, out.n_frames, train=False)
    assert frames.shape == (6, 320, 240, 3)
    for k, frame in enumerate(frames):
        assert _mean_abs(frame, upright[int(k * 10 / 3 + 1e-6)]) < 4, k
    t, mid = middle_frame(path)
    assert mid.shape == (320, 240, 3) and _mean_abs(mid, upright[10]) < 4


def _write_with_display_matrix(path, stored: np.ndarray, degrees: int, hflip: bool, vflip: bool) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=6)
        s.height, s.width = stored.shape[:2]
        s.pix_fmt = "yuv420p"
        s.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for _ in range(3):
            for packet in s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


@pytest.mark.parametrize("degrees", [0, 90, 180, -90])
@pytest.mark.parametrize("hflip, vflip", [(False, False), (True, False), (False, True)])
def test_display_matrix_turns_and_mirrors(tmp_path, degrees, hflip, vflip):
    """PyAV documents the matrix it writes as 'turn ``degrees`` counter-clockwise, then mirror';
    the outputs must show exactly that picture."""
    stored = np.full((40, 64, 3), 100, np.uint8)  # both sides widths the trainer's decoder reads
    stored[:16, :16] = (250, 0, 0)
    stored[-16:, -24:] = (0, 0, 250)
    stored[:16, -8:] = (0, 250, 0)
    expected = np.rot90(stored, degrees // 90)
    expected = expected[:, ::-1] if hflip else expected
    expected = expected[::-1] if vflip else expected
    path = tmp_path / "m.mp4"
    _write_with_display_matrix(path, stored, degrees, hflip, vflip)
    out = process_clip(str(path), None, None, FrameConfig(short_side=10_000, crf=0))
    assert out.mirrored == (hflip or vflip)
    assert _mean_abs(_jpg(out.jpg), expected) < 4
    trained = decode_frames(out.mp4, 2, train=False)[0]
    assert trained.shape == (*expected.shape[:2], 3) and _mean_abs(trained, expected) < 4


def test_tiny_clip_fails_with_reason(awkward):
    with pytest.raises(ClipError, match=r"video is 2x2 px, below the minimum short side of 32 px \(frames.min_side\)"):
        process_clip(str(awkward["tiny"]), None, None, FrameConfig())


def test_min_side_is_validated():
    with pytest.raises(ValueError, match="frames.min_side=8 must be >= 16"):
        FrameConfig(min_side=8)


@pytest.mark.parametrize("width, height", [(144, 256), (48, 64), (96, 72), (32, 32)])
def test_small_training_copies_are_readable_by_the_trainer(tmp_path, width, height):
    """decord cannot read back a few narrow widths (144 px, a 144p portrait clip, among them); the
    training copy steps past them and the trainer's decoder reads every frame."""
    from demo.synth import encode_h264

    frames = np.random.default_rng(width).integers(0, 256, size=(6, height, width, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(frames[:, ::8, ::8], 8, axis=1), 8, axis=2)[:, :height, :width]  # 8 px blocks
    path = tmp_path / "small.mp4"
    encode_h264(np.ascontiguousarray(frames), path, 3, 3, crf=0)
    out = process_clip(str(path), None, None, FrameConfig(crf=0))
    assert (out.width, out.height) == (readable_width(width), height)
    decoded = decode_frames(out.mp4, out.n_frames, train=False)
    assert decoded.shape == (6, height, readable_width(width), 3)


def test_readable_width_covers_every_width_decord_rejects():
    """Every even width from 16 to 198 px, read back with the trainer's decoder: the widths it
    rejects on this machine are among those ``readable_width`` steps past, and every width it
    steps to is read."""
    def mp4(width: int) -> bytes:
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=6)
            s.width, s.height, s.pix_fmt = width, 16, "yuv420p"
            for i in range(2):
                for packet in s.encode(av.VideoFrame.from_ndarray(np.full((16, width, 3), 60 * i, np.uint8))):
                    c.mux(packet)
            for packet in s.encode():
                c.mux(packet)
        return buf.getvalue()

    def readable(width: int) -> bool:
        try:
            return decode_frames(mp4(width), 2, train=False).shape == (2, 16, width, 3)
        except DecodeError:
            return False

    widths = range(16, 200, 2)
    rejected = {w for w in widths if not readable(w)}
    assert rejected and rejected <= {w for w in widths if readable_width(w) != w}
    assert all(readable(readable_width(w)) for w in widths)
    assert all(readable_width(w) - w <= 2 for w in widths)
