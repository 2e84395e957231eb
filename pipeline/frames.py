"""Decode one clip span: its middle frame as JPEG, and the span re-encoded for training.

Both come from one forward decode with PyAV: seek to the keyframe at or before the point of
interest, then decode forward only as far as needed. The middle frame is chosen by time: the frame
on screen at ``(start + end) / 2`` (the whole video when the row has no span), i.e. the last frame
whose presentation time is at or before that instant. For a clip without a span this is frame
``n // 2``, the frame CLIP-ViP's pretraining dataset takes (``vr[int(n_frames / 2)]``).

The training copy keeps ``target_fps`` frames per second (never more than the source has), scales
the short side down to ``short_side`` and is H.264 with a short keyframe interval, so a training
loader decodes a few frames without walking a long GOP.

Expected failures (unreadable, truncated or non-video files, missing paths, spans outside the
video, empty spans) raise ``ClipError`` with a readable reason; the decode stage turns those into
failed rows. Anything else is a bug and propagates.
"""

from __future__ import annotations

import dataclasses
import io
import math
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image


@dataclasses.dataclass(kw_only=True, frozen=True)
class FrameConfig:
    """How clips are decoded, sampled and re-encoded (the decode stage's config)."""

    target_fps: float = 3.0  # HD-VILA training clips are stored at 3 fps
    short_side: int = 240  # training copy; never upscaled
    keyframe_interval: int = 3  # in output frames: 1 s at 3 fps keeps training reads cheap
    crf: int = 23
    preset: str = "veryfast"
    image_max_short_side: int = 480  # middle frame for the captioner (OFA reads 480 px); 0 keeps native
    jpeg_quality: int = 90
    decode_threads: int = 1  # one decoder per core; the pipeline parallelises across clips
    reencode: bool = True
    timeout_s: float = 60.0  # a decode that hangs longer is killed and counted as failed
    num_cpus: float = 1.0  # per decode task (Ray)
    batch_size: int = 8  # rows per decode task call (Ray)

    def __post_init__(self) -> None:
        if self.target_fps <= 0:
            raise ValueError(f"frames.target_fps={self.target_fps} must be > 0 (HD-VILA uses 3)")
        if self.short_side < 2:
            raise ValueError(f"frames.short_side={self.short_side} must be >= 2 pixels")
        if self.keyframe_interval < 1:
            raise ValueError(f"frames.keyframe_interval={self.keyframe_interval} must be >= 1 frame")


class ClipError(Exception):
    """An expected, per-clip failure (bad file, bad span); becomes a failed row, never a crash."""


# Failures that mean "this input is bad", not "this code is wrong".
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ClipError, av.error.FFmpegError, OSError, EOFError)


@dataclasses.dataclass(kw_only=True)
class ClipOutput:
    """What one clip yields: the middle frame, the training copy and facts about the source."""

    jpg: bytes
    mp4: bytes
    middle_time: float  # seconds from the video's start
    start: float
    end: float
    src_fps: float
    src_width: int
    src_height: int
    fps: float  # of the training copy
    width: int
    height: int
    n_frames: int

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("jpg", "mp4")}


def open_container(path: str) -> av.container.InputContainer:
    """Open a local path directly (seekable, fastest); any other fsspec URL through a file object."""
    if "://" in path and not path.startswith("file://"):
        import fsspec

        return av.open(fsspec.open(path, "rb").open())
    local = path.removeprefix("file://")
    return av.open(local)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is at most ``short_side``; keep aspect; even sizes for yuv420p."""
    scale = min(1.0, short_side / min(width, height)) if short_side > 0 else 1.0
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise ClipError(f"{path}: no video stream")
    return container.streams.video[0]


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    raise ClipError("video has no known duration")


def resolve_span(path: str, start: float | None, end: float | None, duration: float, fps: float) -> tuple[float, float]:
    """The span in seconds; the whole video when neither bound is given. Rejects spans outside it."""
    s = 0.0 if start is None or (isinstance(start, float) and math.isnan(start)) else float(start)
    e = duration if end is None or (isinstance(end, float) and math.isnan(end)) else float(end)
    slack = 1.0 / fps if fps > 0 else 0.0
    if s < 0 or e <= s:
        raise ClipError(f"{path}: span [{s:.3f}, {e:.3f}] s is empty or negative")
    if s >= duration or e > duration + slack:
        raise ClipError(f"{path}: span [{s:.3f}, {e:.3f}] s lies outside the video ({duration:.3f} s long)")
    return s, min(e, duration)


def _frames_from(container: av.container.InputContainer, stream: av.video.stream.VideoStream, seek_s: float):
    """Seek to the keyframe at or before ``seek_s`` and yield (time, frame) forward from there."""
    tb = stream.time_base
    origin = stream.start_time or 0
    if seek_s > 0:
        container.seek(origin + int(seek_s / tb), stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        yield float((frame.pts - origin) * tb), frame


def _jpeg(frame: av.VideoFrame, max_short_side: int, quality: int) -> bytes:
    w, h = scaled_size(frame.width, frame.height, max_short_side) if max_short_side > 0 else (frame.width, frame.height)
    rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _at_or_before(t: float, target: float) -> bool:
    # Frame times are rationals turned into floats; allow a microsecond of rounding.
    return t <= target + 1e-6


def middle_frame(path: str, start: float | None = None, end: float | None = None) -> tuple[float, np.ndarray]:
    """The frame on screen at the middle of the span, as (time, HxWx3 uint8). Seeks, then decodes forward."""
    with open_container(path) as container:
        stream = _video_stream(container, path)
        stream.thread_count = 1
        fps = float(stream.average_rate or 0)
        s, e = resolve_span(path, start, end, _duration(container, stream), fps)
        mid = (s + e) / 2
        chosen: tuple[float, av.VideoFrame] | None = None
        for t, frame in _frames_from(container, stream, mid):
            if not _at_or_before(t, mid):
                break
            chosen = (t, frame)
    if chosen is None:
        raise ClipError(f"{path}: no frame decoded at {mid:.3f} s")
    return chosen[0], chosen[1].to_ndarray(format="rgb24")


def process_clip(path: str, start: float | None, end: float | None, cfg: FrameConfig) -> ClipOutput:
    """Decode the span once: pick the middle frame and, when configured, re-encode the span.

    Raises:
        ClipError: (or a PyAV / OS error) for inputs that cannot be decoded as asked.
    """
    with open_container(path) as container:
        stream = _video_stream(container, path)
        stream.thread_count = cfg.decode_threads
        src_fps = float(stream.average_rate or 0)
        s, e = resolve_span(path, start, end, _duration(container, stream), src_fps)
        mid = (s + e) / 2
        out_fps = min(cfg.target_fps, src_fps) if src_fps > 0 else cfg.target_fps
        n_out = max(1, math.ceil((e - s) * out_fps - 1e-6)) if cfg.reencode else 0
        targets = [s + k / out_fps for k in range(n_out)]
        encoder = _Encoder(cfg, out_fps) if cfg.reencode else None
        middle: tuple[float, av.VideoFrame] | None = None
        prev: av.VideoFrame | None = None
        k = 0
        # When only the middle frame is wanted, start decoding at the keyframe before it.
        for t, frame in _frames_from(container, stream, s if cfg.reencode else mid):
            if _at_or_before(t, mid):
                middle = (t, frame)
            # Each output time takes the frame on screen at that time (the latest one not after it).
            while k < n_out and not _at_or_before(t, targets[k]):
                encoder.add(prev if prev is not None else frame)
                k += 1
            prev = frame
            if not _at_or_before(t, max(mid, targets[-1] if targets else mid)):
                break
        while k < n_out and prev is not None:
            encoder.add(prev)
            k += 1
        if middle is None or prev is None:
            raise ClipError(f"{path}: no frames decoded in span [{s:.3f}, {e:.3f}] s")
        src_w, src_h = stream.codec_context.width, stream.codec_context.height
    jpg = _jpeg(middle[1], cfg.image_max_short_side, cfg.jpeg_quality)
    mp4, (w, h) = encoder.finish() if encoder else (b"", (0, 0))
    return ClipOutput(jpg=jpg, mp4=mp4, middle_time=middle[0], start=s, end=e, src_fps=src_fps,
                      src_width=src_w, src_height=src_h, fps=out_fps if cfg.reencode else 0.0,
                      width=w, height=h, n_frames=n_out)


class _Encoder:
    """H.264 into an in-memory mp4, sized on the first frame."""

    def __init__(self, cfg: FrameConfig, fps: float):
        self.cfg, self.fps = cfg, fps
        self.buf = io.BytesIO()
        self.container: av.container.OutputContainer | None = None
        self.stream = None
        self.size = (0, 0)

    def _open(self, frame: av.VideoFrame) -> None:
        self.size = scaled_size(frame.width, frame.height, self.cfg.short_side)
        self.container = av.open(self.buf, "w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.time_base = 1 / rate
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.gop_size = self.cfg.keyframe_interval
        self.stream.thread_count = 1
        self.stream.options = {"preset": self.cfg.preset, "crf": str(self.cfg.crf), "sc_threshold": "0",
                               "keyint_min": str(self.cfg.keyframe_interval)}
        self.n = 0

    def add(self, frame: av.VideoFrame) -> None:
        if self.container is None:
            self._open(frame)
        w, h = self.size
        out = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
        out.pts, out.time_base = self.n, self.time_base
        for packet in self.stream.encode(out):
            self.container.mux(packet)
        self.n += 1

    def finish(self) -> tuple[bytes, tuple[int, int]]:
        assert self.container is not None, "finish() before any frame"
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buf.getvalue(), self.size
