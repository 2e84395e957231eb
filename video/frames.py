"""Decode one clip span: its middle frame as JPEG, and the span re-encoded for training.

Both come from one forward decode with PyAV: seek to the keyframe at or before the point of
interest, then decode forward only as far as needed. The middle frame is chosen by time: the frame
on screen at ``(start + end) / 2`` (the whole video when the row has no span), i.e. the last frame
whose presentation time is at or before that instant. For a clip without a span this is frame
``n // 2``, the frame CLIP-ViP's pretraining dataset takes (``vr[int(n_frames / 2)]``).

The training copy keeps ``target_fps`` frames per second (never more than the source has), scales
the short side down to ``short_side`` and is H.264 with a short keyframe interval, so a training
loader decodes a few frames without walking a long GOP. It is always BT.601 limited-range and
tagged so, whatever the source's colour encoding (``video/reencode.py``), so the trainer's
decoder and the middle-frame JPEG show the same colours.

Both outputs show the video the way a player does: a display matrix in the container (a phone clip
stored landscape and flagged "rotate 90") is applied to the middle frame and to the training copy,
with FFmpeg's own rules (the ones ``ffmpeg`` and ``ffplay`` use to auto-rotate), and recorded in the
clip metadata as ``rotation``/``mirrored``; ``src_width``/``src_height`` are the displayed size.

A clip is refused rather than written wrong:

- truncated or cut files: a container often keeps announcing its full duration after the tail of
  the file is lost. The decode must reach the span's end (the last decoded frame, plus its own
  duration, within ``END_SLACK_S``); otherwise the middle frame would be the last frame that decoded
  and the training copy would be padded with that frame frozen.
- tiny clips: a short side below ``FrameConfig.min_side`` (32 px by default) carries too little
  picture for a 224-px model, and the smallest sizes cannot be read back by the trainer's decoder.
- display matrices that rotate by other than a multiple of 90 degrees (rare; turning them would
  need resampling onto a larger canvas).
- pictures above ``FrameConfig.max_pixels``: the size is read from the container before anything
  is decoded, and FFmpeg is given the same cap, so a picture whose size only its decoder knows (a
  huge PNG) is refused by the decoder before it allocates the picture.

Expected failures (unreadable, truncated or non-video files, missing paths, spans outside the
video, empty spans, the refusals above) raise ``ClipError`` with a readable reason; the decode
stage turns those into failed rows. Anything else is a bug and propagates.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import av
import numpy as np
from PIL import Image

from video.orientation import Orientation, orientation_of
from video.reencode import TrainingEncoder, scaled_size
from video.source import DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING, ClipError, open_capped, pixel_cap_named


# A decode must reach this close to the span's end (beyond the last frame's own duration) or the
# clip counts as truncated. A quarter second absorbs containers whose duration is that of a
# slightly longer audio track (Matroska/WebM report one duration for all streams).
END_SLACK_S = 0.25
# The smallest ``FrameConfig.min_side`` allowed: below it, ``reencode.readable_width`` would have to stretch
# the training copy by a large fraction (a 2-px-wide clip becomes 10 px wide).
MIN_SIDE_FLOOR = 16


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
    min_side: int = 32  # px; a source whose displayed short side is smaller fails its row
    timeout_s: float = 60.0  # a decode that hangs longer is killed and counted as failed
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height; a larger source fails its row undecoded

    def __post_init__(self) -> None:
        if self.target_fps <= 0:
            raise ValueError(f"frames.target_fps={self.target_fps} must be > 0 (HD-VILA uses 3)")
        if self.short_side < 2:
            raise ValueError(f"frames.short_side={self.short_side} must be >= 2 pixels")
        if self.keyframe_interval < 1:
            raise ValueError(f"frames.keyframe_interval={self.keyframe_interval} must be >= 1 frame")
        if self.min_side < MIN_SIDE_FLOOR:
            raise ValueError(f"frames.min_side={self.min_side} must be >= {MIN_SIDE_FLOOR} pixels: smaller clips "
                             "would have to be upscaled for the trainer's decoder to read them")
        if not self.min_side**2 <= self.max_pixels <= MAX_PIXELS_CEILING:
            raise ValueError(f"frames.max_pixels={self.max_pixels} must be between frames.min_side squared "
                             f"({self.min_side**2}) and {MAX_PIXELS_CEILING} (FFmpeg's limit); the default "
                             f"{DEFAULT_MAX_PIXELS} admits 8K video")


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
    src_width: int  # as displayed, i.e. after ``rotation``
    src_height: int
    fps: float  # of the training copy
    width: int
    height: int
    n_frames: int
    rotation: int = 0  # degrees counter-clockwise the source's display matrix asks for (FFmpeg's sign)
    mirrored: bool = False  # the display matrix also mirrors the picture

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("jpg", "mp4")}


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


def _frame_end(t: float, frame: av.VideoFrame, stream: av.video.stream.VideoStream, fps: float) -> float:
    """When ``frame`` (shown at ``t``) leaves the screen: its own duration, else one frame at ``fps``."""
    if frame.duration:
        return t + float(frame.duration * (frame.time_base or stream.time_base))
    return t + (1.0 / fps if fps > 0 else 0.0)


def _reach_towards(container: av.container.InputContainer, stream: av.video.stream.VideoStream, end: float,
                   fps: float) -> float:
    """How close to ``end`` the decodable frames reach: seek just before it and decode forward."""
    reached = -math.inf
    try:
        for t, frame in _frames_from(container, stream, max(0.0, end - END_SLACK_S)):
            reached = _frame_end(t, frame, stream, fps)
            if reached >= end - END_SLACK_S:
                break
    except av.error.FFmpegError:
        pass  # a seek or decode past the damage: the frames do not reach
    return reached


def _check_first_frame(path: str, frame: av.VideoFrame, cfg: FrameConfig) -> Orientation:
    orient = orientation_of(frame, path)
    w, h = orient.display_size(frame.width, frame.height)
    if min(w, h) < cfg.min_side:
        raise ClipError(f"{path}: video is {w}x{h} px, below the minimum short side of {cfg.min_side} px "
                        "(frames.min_side): too small to train on")
    return orient


def _jpeg(frame: av.VideoFrame, orient: Orientation, max_short_side: int, quality: int) -> bytes:
    w, h = scaled_size(frame.width, frame.height, max_short_side) if max_short_side > 0 else (frame.width, frame.height)
    rgb = orient.apply(frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _at_or_before(t: float, target: float) -> bool:
    # Frame times are rationals turned into floats; allow a microsecond of rounding.
    return t <= target + 1e-6


def middle_frame(path: str, start: float | None = None, end: float | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[float, np.ndarray]:
    """The frame on screen at the middle of the span, as (time, HxWx3 uint8), as displayed (rotation
    applied). Seeks, then decodes forward; a picture above ``max_pixels`` is a ``ClipError``."""
    with pixel_cap_named(path, max_pixels):
        return _middle_frame(path, start, end, max_pixels)


def _middle_frame(path: str, start: float | None, end: float | None, max_pixels: int) -> tuple[float, np.ndarray]:
    container, stream = open_capped(path, max_pixels)
    with container:
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
    return chosen[0], orientation_of(chosen[1], path).apply(chosen[1].to_ndarray(format="rgb24"))


def process_clip(path: str, start: float | None, end: float | None, cfg: FrameConfig) -> ClipOutput:
    """Decode the span once: pick the middle frame and, when configured, re-encode the span.

    Raises:
        ClipError: (or a PyAV / OS error) for inputs that cannot be decoded as asked, including
            files whose frames stop short of the span (truncated), clips below ``cfg.min_side``
            and pictures above ``cfg.max_pixels``.
    """
    with pixel_cap_named(path, cfg.max_pixels):
        return _process_span(path, start, end, cfg)


def _process_span(path: str, start: float | None, end: float | None, cfg: FrameConfig) -> ClipOutput:
    container, stream = open_capped(path, cfg.max_pixels)
    with container:
        stream.thread_count = cfg.decode_threads
        src_fps = float(stream.average_rate or 0)
        duration = _duration(container, stream)
        s, e = resolve_span(path, start, end, duration, src_fps)
        mid = (s + e) / 2
        out_fps = min(cfg.target_fps, src_fps) if src_fps > 0 else cfg.target_fps
        n_out = max(1, math.ceil((e - s) * out_fps - 1e-6)) if cfg.reencode else 0
        targets = [s + k / out_fps for k in range(n_out)]
        last_needed = max(mid, targets[-1] if targets else mid)
        encoder = TrainingEncoder(out_fps, cfg) if cfg.reencode else None
        orient: Orientation | None = None
        middle: tuple[float, av.VideoFrame] | None = None
        prev: av.VideoFrame | None = None
        first_t, reached = math.inf, -math.inf  # decoded frames cover [first_t, reached)
        k = 0
        # When only the middle frame is wanted, start decoding at the keyframe before it.
        for t, frame in _frames_from(container, stream, s if cfg.reencode else mid):
            if orient is None:
                orient = _check_first_frame(path, frame, cfg)
            first_t = min(first_t, t)
            if _at_or_before(t, mid):
                middle = (t, frame)
            # Each output time takes the frame on screen at that time (the latest one not after it).
            while k < n_out and not _at_or_before(t, targets[k]):
                encoder.add(prev if prev is not None else frame, orient)
                k += 1
            prev = frame
            reached = max(reached, _frame_end(t, frame, stream, src_fps))
            # Past the last frame any output needs; a re-encode also decodes the few frames left to
            # the span's end, so a truncated tail is seen without another seek.
            if not _at_or_before(t, last_needed) and (reached >= e - END_SLACK_S or not cfg.reencode):
                break
        if prev is None or orient is None:
            raise ClipError(f"{path}: no frames decoded in span [{s:.3f}, {e:.3f}] s")
        if reached < e - END_SLACK_S and not cfg.reencode:
            reached = max(reached, _reach_towards(container, stream, e, src_fps))  # the loop stopped at mid
        if reached < e - END_SLACK_S:
            raise ClipError(f"{path}: decodable frames end at {reached:.3f} s but the span runs to {e:.3f} s "
                            f"(the file claims {duration:.3f} s): truncated or damaged file")
        if cfg.reencode and first_t > s + END_SLACK_S:
            raise ClipError(f"{path}: decodable frames start at {first_t:.3f} s but the span starts at {s:.3f} s: "
                            "damaged file")
        if middle is None:
            raise ClipError(f"{path}: no frame decoded at {mid:.3f} s")
        while k < n_out:
            encoder.add(prev, orient)
            k += 1
        src_w, src_h = orient.display_size(stream.codec_context.width, stream.codec_context.height)
    jpg = _jpeg(middle[1], orient, cfg.image_max_short_side, cfg.jpeg_quality)
    mp4, (w, h) = encoder.finish() if encoder else (b"", (0, 0))
    return ClipOutput(jpg=jpg, mp4=mp4, middle_time=middle[0], start=s, end=e, src_fps=src_fps,
                      src_width=src_w, src_height=src_h, fps=out_fps if cfg.reencode else 0.0,
                      width=w, height=h, n_frames=n_out, rotation=orient.rotation, mirrored=orient.mirrored)
