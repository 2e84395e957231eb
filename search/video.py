"""Frames of a video file or of a span inside it, sampled the way the model's evaluation samples them.

A whole file goes through ``train.video.decode_video_file`` (``linspace(0, n-1, T)``), exactly the
evaluation path. A span ``(path, start, end)`` in seconds takes the frames on screen in
``[start, end)`` and spreads the same ``linspace`` over them, so a span cut out of a long video is
sampled as if it were its own file. ``middle_frame_jpeg`` gives the frame on screen at the span's
middle, the thumbnail the server shows for clips that are not in shards.

Shape legend: T frames, H/W height/width, C=3 channels.
"""

from __future__ import annotations

import io
import math

import numpy as np

from common.errors import UserError
from train.video import DecodeError, decode_video_file

VideoSpec = str | tuple[str, float | None, float | None]


def split_spec(spec: VideoSpec) -> tuple[str, float | None, float | None]:
    """``(path, start, end)`` of a path or a ``(path, start, end)`` tuple (None: from the start / to the end)."""
    if isinstance(spec, str):
        return spec, None, None
    if not isinstance(spec, (tuple, list)) or len(spec) != 3:
        raise UserError(f"a video is a path or a (path, start_s, end_s) tuple, got {spec!r}")
    path, start, end = spec
    start = None if start is None or (isinstance(start, float) and math.isnan(start)) else float(start)
    end = None if end is None or (isinstance(end, float) and math.isnan(end)) else float(end)
    if start is not None and end is not None and end <= start:
        raise UserError(f"span of {path}: end {end} must be after start {start}")
    return str(path), start, end


def _reader(path: str):
    import decord
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
        return decord.VideoReader(io.BytesIO(data), num_threads=1)
    except FileNotFoundError as e:
        raise DecodeError(f"{path}: no such file") from e
    except OSError as e:
        raise DecodeError(f"{path}: cannot read it ({e.strerror or e})") from e
    except (RuntimeError, decord.DECORDError) as e:
        raise DecodeError(f"{path}: decord could not open it: {str(e).splitlines()[0][:200]}") from e


def span_indices(n: int, fps: float, start: float | None, end: float | None, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames spread over the frames on screen in ``[start, end)``."""
    first = 0 if start is None else int(math.floor(start * fps + 1e-6))
    last = n - 1 if end is None else min(n - 1, int(math.ceil(end * fps - 1e-6)) - 1)
    if first > n - 1 or last < first:
        raise DecodeError(f"span {start}-{end} s is outside the video ({n} frames at {fps:.3f} fps)")
    return first + np.linspace(0, last - first, num_frames).astype(int)


def decode_spec(spec: VideoSpec, num_frames: int) -> np.ndarray:
    """uint8 [T, H, W, C] of a file (the evaluation's sampling) or of a span of it."""
    path, start, end = split_spec(spec)
    if start is None and end is None:
        try:
            return decode_video_file(path, num_frames, train=False)
        except FileNotFoundError as e:
            raise DecodeError(f"{path}: no such file") from e
    reader = _reader(path)
    return _frames(reader, span_indices(len(reader), float(reader.get_avg_fps()), start, end, num_frames), path)


def _frames(reader, idx: np.ndarray, path: str) -> np.ndarray:
    """uint8 [len(idx), H, W, C]: the frames at ``idx``; decord's failures as ``DecodeError``."""
    try:
        return reader.get_batch(idx.tolist()).asnumpy()
    except RuntimeError as e:  # decord reports every demux/decode failure as a RuntimeError (DECORDError)
        raise DecodeError(f"{path}: decord could not decode the span: {str(e).splitlines()[0][:200]}") from e


def middle_frame_jpeg(path: str, start: float | None, end: float | None, max_side: int = 320) -> bytes:
    """JPEG of the frame on screen at the middle of the span (or of the file); ``DecodeError`` when the
    file is gone or does not decode."""
    from PIL import Image

    reader = _reader(path)
    idx = span_indices(len(reader), float(reader.get_avg_fps()), start, end, 3)[1:2]
    im = Image.fromarray(_frames(reader, idx, path)[0])
    im.thumbnail((max_side, max_side))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=85)
    return out.getvalue()
