"""The training copy's colours (video/reencode.py, through video/frames.py's process_clip): whatever
the source's colour matrix and range, the trainer's decoder (decord) and the middle-frame JPEG
(PIL) give back the source's true RGB.

Sources are synthesised here: known RGB patches turned into Y'CbCr with the BT.601 or BT.709
formulas in float64 (limited or full range), then H.264-encoded with PyAV and tagged the way real
encoders tag them (x264's VUI colour description; full range as ``yuvj420p``, as FFmpeg writes
phone and MJPEG-derived video, or as ``yuv420p`` flagged full range, as ``x264 --range pc`` does).
Run: ``.venv/bin/python -m pytest tests/video/test_reencode.py -q``.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from video.frames import FrameConfig, process_clip
from train.video import decode_frames

# Saturated, dark, light and mid colours: where a wrong matrix or range shows most.
COLOURS = [(40, 180, 90), (200, 30, 60), (20, 40, 220), (250, 240, 20),
           (128, 128, 128), (10, 10, 10), (245, 245, 245), (90, 20, 160)]
H, W = 240, 320  # 2 x 4 patches of 120 x 80 px; no scaling at the default short side of 240
MARGIN = 12  # px kept clear of patch edges, where 4:2:0 chroma and the codec blur colours together
# Matrix coefficients (Kr, Kb) and FFmpeg's tag values (AVCOL_SPC/PRI/TRC) for each standard.
MATRICES = {"bt601": ((0.299, 0.114), 6), "bt709": ((0.2126, 0.0722), 1)}


def _patch_labels() -> np.ndarray:
    rows, cols = np.indices((H, W))
    return (rows // 120) * 4 + cols // 80


def _true_rgb() -> np.ndarray:
    return np.asarray(COLOURS, dtype=np.uint8)[_patch_labels()]


def _ycbcr420(rgb: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """Planar 4:2:0 Y'CbCr of ``rgb`` by the standard's formulas in float64, as one (H*3/2, W) array."""
    (kr, kb), _ = MATRICES[matrix]
    x = rgb.astype(np.float64) / 255.0
    y = kr * x[..., 0] + (1 - kr - kb) * x[..., 1] + kb * x[..., 2]
    cb = (x[..., 2] - y) / (2 * (1 - kb))
    cr = (x[..., 0] - y) / (2 * (1 - kr))
    if full_range:
        planes = (255 * y, 128 + 255 * cb, 128 + 255 * cr)
    else:
        planes = (16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr)
    luma = planes[0]
    chroma = [p.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3)) for p in planes[1:]]  # patches are 2x2-aligned
    to8 = lambda p: np.clip(np.round(p), 0, 255).astype(np.uint8)  # noqa: E731
    return np.concatenate([to8(luma), to8(chroma[0]).reshape(H // 4, W), to8(chroma[1]).reshape(H // 4, W)])


def _write_source(path: Path, matrix: str, full_range: str, rotation: int = 0, n: int = 12, fps: int = 6) -> None:
    """An H.264 mp4 of the true RGB in ``matrix``; ``full_range`` is "" (limited), "yuvj" or "flag"."""
    _, tag = MATRICES[matrix]
    pix_fmt = "yuvj420p" if full_range == "yuvj" else "yuv420p"
    planes = _ycbcr420(_true_rgb(), matrix, bool(full_range))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        ctx = stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = tag
        ctx.color_range = 2 if full_range else 1
        stream.options = {"crf": "12", "threads": "1"}
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(planes, format=pix_fmt)
            frame.colorspace, frame.color_range, frame.pts = tag, ctx.color_range, i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _patch_errors(got: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(largest error of a patch's mean colour, largest error of one pixel) over patch interiors."""
    truth = np.asarray(COLOURS, dtype=np.float64)
    mean_err = pixel_err = 0.0
    for k in range(len(COLOURS)):
        rows, cols = np.nonzero(labels == k)
        box = got[rows.min() + MARGIN:rows.max() + 1 - MARGIN, cols.min() + MARGIN:cols.max() + 1 - MARGIN]
        box = box.reshape(-1, 3).astype(np.float64)
        mean_err = max(mean_err, float(np.abs(box.mean(axis=0) - truth[k]).max()))
        pixel_err = max(pixel_err, float(np.abs(box - truth[k]).max()))
    return mean_err, pixel_err


SOURCES = [("bt601", ""), ("bt709", ""), ("bt601", "yuvj"), ("bt709", "flag")]


@pytest.mark.parametrize("matrix, full_range", SOURCES)
def test_training_copy_and_middle_frame_show_the_true_colours(tmp_path, matrix, full_range):
    path = tmp_path / f"{matrix}{full_range}.mp4"
    _write_source(path, matrix, full_range)
    labels = _patch_labels()
    with av.open(str(path)) as c:  # the fixture is what it claims: tagged, and decodes to the true colours
        first = next(c.decode(video=0))
        assert (first.colorspace, first.color_range) == (MATRICES[matrix][1], 2 if full_range else 1)
        assert _patch_errors(first.to_ndarray(format="rgb24"), labels)[0] <= 3

    out = process_clip(str(path), None, None, FrameConfig())
    assert (out.width, out.height) == (W, H)
    frames = decode_frames(out.mp4, 2, train=False)  # the trainer's own read: decord
    for frame in frames:
        mean_err, pixel_err = _patch_errors(frame, labels)
        assert mean_err <= 4 and pixel_err <= 6, (matrix, full_range, mean_err, pixel_err)
    jpg = np.asarray(Image.open(io.BytesIO(out.jpg)).convert("RGB"))
    assert _patch_errors(jpg, labels)[0] <= 3
    with av.open(io.BytesIO(out.mp4)) as c:  # one encoding for every source, and it says which
        first = next(c.decode(video=0))
        assert (first.format.name, first.colorspace, first.color_range) == ("yuv420p", 6, 1)
        # Primaries and transfer curve are not converted, so they keep the source's tags.
        assert first.color_primaries == first.color_trc == MATRICES[matrix][1]


def test_a_rotated_bt709_clip_is_upright_and_true(tmp_path):
    """Stored landscape with a display matrix asking for a quarter turn counter-clockwise: the
    outputs are the turned picture, in true colours."""
    path = tmp_path / "rotated709.mp4"
    _write_source(path, "bt709", "", rotation=90)
    labels = np.rot90(_patch_labels(), 1)
    out = process_clip(str(path), None, None, FrameConfig())
    assert (out.rotation, out.width, out.height) == (90, H, W)
    for frame in decode_frames(out.mp4, 2, train=False):
        mean_err, pixel_err = _patch_errors(frame, labels)
        assert mean_err <= 4 and pixel_err <= 6, (mean_err, pixel_err)
    jpg = np.asarray(Image.open(io.BytesIO(out.jpg)).convert("RGB"))
    assert jpg.shape == (W, H, 3) and _patch_errors(jpg, labels)[0] <= 3
