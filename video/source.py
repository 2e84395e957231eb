"""Opening a source clip for decoding: local paths or any fsspec URL, with decoded pixels capped.

Decoders allocate what a file's header asks for. A 16000x16000 PNG (a file of under a megabyte)
took 2.6 GB and 13 s in the decode child before anything checked it. ``open_capped`` refuses a
picture above ``max_pixels`` before decoding it: the size declared by the container is checked
first, and FFmpeg's decoders are given the same cap (its ``max_pixels`` option), both for the
picture FFmpeg decodes while probing a file whose container does not declare the size (an image)
and for every picture after (a stream may change size midway). FFmpeg says why it refused only in
its log, so ``pixel_cap_named`` captures the log while a clip decodes and turns the refusal into a
``ClipError`` naming the size and the setting.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import av

# The default cap on decoded pixels per picture: 8192 x 8192 (67.1 MP) admits 8K video at any aspect
# ratio (7680x4320 UHD, 8192x4320 DCI, 8192x8192 VR) and keeps one decoded RGB picture under 200 MB.
DEFAULT_MAX_PIXELS = 8192 * 8192
# FFmpeg's own ceiling for its ``max_pixels`` option.
MAX_PIXELS_CEILING = 2**31 - 1
# FFmpeg's log line when a decoder refuses a picture for its ``max_pixels`` option.
_FFMPEG_OVER_CAP = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")


class ClipError(Exception):
    """An expected, per-clip failure (bad file, bad span); becomes a failed row, never a crash."""


def open_container(path: str, max_pixels: int | None = None) -> av.container.InputContainer:
    """Open a local path directly (seekable, fastest); any other fsspec URL through a file object.

    ``max_pixels`` caps the decoder FFmpeg runs while probing the streams.
    """
    options = {"max_pixels": str(max_pixels)} if max_pixels else None
    if "://" in path and not path.startswith("file://"):
        import fsspec

        return av.open(fsspec.open(path, "rb").open(), options=options)
    local = path.removeprefix("file://")
    return av.open(local, options=options)


def video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    """The first video stream, or ``ClipError``."""
    if not container.streams.video:
        raise ClipError(f"{path}: no video stream")
    return container.streams.video[0]


def _too_many_pixels(path: str, width: int, height: int, max_pixels: int) -> ClipError:
    return ClipError(f"{path}: picture is {width}x{height} = {width * height} pixels, above frames.max_pixels="
                     f"{max_pixels}; not decoded (raise frames.max_pixels to take it)")


def _cap_decoder(stream: av.video.stream.VideoStream, path: str, max_pixels: int) -> None:
    """Refuse a stream whose declared picture is above the cap, then cap its decoder."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
        raise _too_many_pixels(path, width, height, max_pixels)
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(max_pixels)}


def open_capped(path: str, max_pixels: int) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The container and its video stream, with no picture above ``max_pixels`` decoded.

    When the capped probe refused a picture, the stream's size reads 0; decoding one picture then
    raises the refusal (worded by ``pixel_cap_named``). A picture within the cap means the size
    was unknown for another reason, and the file is opened again from the top.
    """
    container = open_container(path, max_pixels)
    try:
        stream = video_stream(container, path)
        if stream.codec_context.width * stream.codec_context.height == 0:
            _cap_decoder(stream, path, max_pixels)
            next(container.decode(stream), None)
            container.close()
            container = open_container(path, max_pixels)
            stream = video_stream(container, path)
        _cap_decoder(stream, path, max_pixels)
    except BaseException:
        container.close()
        raise
    return container, stream


@contextlib.contextmanager
def pixel_cap_named(path: str, max_pixels: int) -> Iterator[None]:
    """Within: FFmpeg's refusal of an over-cap picture (an EINVAL) becomes a ``ClipError`` naming its
    size and ``frames.max_pixels``. FFmpeg's error log is captured meanwhile, never printed."""
    import av.logging

    level, skip_repeated = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # the same refusal twice in a row is still worded
    try:
        with av.logging.Capture(local=False) as logs:
            try:
                yield
            except av.error.ArgumentError as exc:
                sizes = [m for _, _, text in logs if (m := _FFMPEG_OVER_CAP.search(text))]
                if sizes:
                    raise _too_many_pixels(path, int(sizes[-1][1]), int(sizes[-1][2]), max_pixels) from exc
                raise
    finally:
        av.logging.set_level(level)
        av.logging.set_skip_repeated(skip_repeated)
