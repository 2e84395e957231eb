"""The training copy's encoder: H.264 in an in-memory mp4, in one colour encoding whatever the source.

Every training clip is written as BT.601 limited-range Y'CbCr (``yuv420p``, the matrix and range
that FFmpeg, and so decord, assume for a stream that says nothing), and tagged as such in the
stream. Sources arrive in many encodings: HD video is mostly BT.709, phone and screen recordings
are often full range (``yuvj420p``, or ``yuv420p`` flagged full range). Keeping the source's
encoding without its tags made decord read a BT.709 source's training copy about 20 levels too
green, while the middle-frame JPEG (converted to RGB with the source's own tags) was right; so
the captioner and the trainer saw different colours. Converting every source to one encoding and
tagging it makes any reader, tag-aware or not, get the RGB the source's own tags describe.

The conversion is one swscale pass from the decoded frame (its own matrix and range) to the
scaled ``yuv420p`` frame; only rotated sources go through RGB, because the pixels are turned there.
The transfer curve and primaries are not converted: the output carries the source's tags for
them, as the JPEG carries its RGB values unchanged.

The width is also kept to one the trainer's decoder can read: see ``readable_width``.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Protocol

import av
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation

from video.orientation import Orientation

# The one colour encoding of every training copy: BT.601 matrix, limited ("tv", MPEG) range.
OUTPUT_PIX_FMT = "yuv420p"
OUTPUT_COLORSPACE = Colorspace.ITU601  # swscale's name for the BT.601 matrix
OUTPUT_COLOR_RANGE = ColorRange.MPEG
# The stream tags (H.264 VUI) that say so: FFmpeg's AVCOL_SPC_SMPTE170M (BT.601 matrix) and
# AVCOL_RANGE_MPEG.
OUTPUT_COLORSPACE_TAG = 6
OUTPUT_COLOR_RANGE_TAG = 1

# Area averaging for the downscale. Accurate rounding and full-resolution chroma on both sides of a
# matrix conversion: without them a BT.709 source came back up to 5 levels off (its chroma was
# converted at half resolution and truncated); with them, within the 3 levels a BT.601 source
# shows. They cost nothing measurable next to decoding and encoding.
SCALE_FLAGS = (Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
               | Interpolation.FULL_CHR_H_INP)

# FFmpeg pads each RGB row of a filtered frame to the CPU's SIMD alignment: 16, 32 or 64 pixels.
_ROW_ALIGNMENTS = (16, 32, 64)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is at most ``short_side``; keep aspect; even sizes for yuv420p."""
    scale = min(1.0, short_side / min(width, height)) if short_side > 0 else 1.0
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def readable_width(width: int) -> int:
    """The smallest even width >= ``width`` that the trainer's decoder (decord) reads back.

    decord skips its row-by-row copy whenever the padded row length in bytes is a whole multiple
    of the width, and then reads the padded rows as if they were the frame: for a 144-px-wide clip
    (rows padded to 192 px) the sizes disagree and every read fails ("The size must exactly
    match"), so the trainer skips the clip every epoch. Across the alignments above this hits only
    2, 4, 6, 8, 12, 16, 24, 32, 36, 48, 72, 96 and 144 px; the training copy steps 2 px past them,
    a change the trainer's square resize makes invisible.
    """
    def unsafe(w: int) -> bool:
        return any(w % a and (3 * -(-w // a) * a) % w == 0 for a in _ROW_ALIGNMENTS)

    w = max(2, width + width % 2)
    while unsafe(w):
        w += 2
    return w


# Frame tags that already mean the output encoding: BT.601 (AVCOL_SPC_BT470BG, SMPTE170M) or
# unspecified, in limited or unspecified range (FFmpeg reads both unspecified tags that way).
_BT601_TAGS = (2, 5, 6)
_LIMITED_TAGS = (0, 1)


def to_output_encoding(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """``frame`` scaled to ``width`` x ``height`` in the training copy's encoding (BT.601, limited).

    The source side of the conversion is the frame's own matrix and range tags (an untagged frame
    is BT.601 limited, as every FFmpeg-based reader assumes). A frame already in that encoding is
    only scaled: asking swscale for a conversion there cost 3-6% of the clip's time for nothing.
    """
    if frame.format.name == OUTPUT_PIX_FMT and frame.colorspace in _BT601_TAGS and frame.color_range in _LIMITED_TAGS:
        return frame.reformat(width=width, height=height, format=OUTPUT_PIX_FMT, interpolation=Interpolation.AREA)
    return frame.reformat(width=width, height=height, format=OUTPUT_PIX_FMT, dst_colorspace=OUTPUT_COLORSPACE,
                          dst_color_range=OUTPUT_COLOR_RANGE, interpolation=SCALE_FLAGS)


def _known(tag: int, values: type[ColorPrimaries] | type[ColorTrc]) -> int:
    return tag if tag in {v.value for v in values} else values.UNSPECIFIED.value


class EncodeSettings(Protocol):
    """The settings the encoder reads (``FrameConfig`` has them)."""

    short_side: int
    keyframe_interval: int
    crf: int
    preset: str


class TrainingEncoder:
    """H.264 into an in-memory mp4 at ``fps``, sized on the first frame (as displayed)."""

    def __init__(self, fps: float, cfg: EncodeSettings):
        self.cfg, self.fps = cfg, fps
        self.buf = io.BytesIO()
        self.container: av.container.OutputContainer | None = None
        self.stream = None
        self.size = (0, 0)

    def _open(self, frame: av.VideoFrame, orient: Orientation) -> None:
        w, h = scaled_size(*orient.display_size(frame.width, frame.height), self.cfg.short_side)
        self.size = (readable_width(w), h)
        self.container = av.open(self.buf, "w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.time_base = 1 / rate
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = OUTPUT_PIX_FMT
        ctx = self.stream.codec_context
        ctx.colorspace, ctx.color_range = OUTPUT_COLORSPACE_TAG, OUTPUT_COLOR_RANGE_TAG
        # Primaries and transfer are passed through unconverted, so their tags are the source's
        # (a reserved or unknown value says nothing: unspecified).
        ctx.color_primaries = _known(frame.color_primaries, ColorPrimaries)
        ctx.color_trc = _known(frame.color_trc, ColorTrc)
        ctx.gop_size = self.cfg.keyframe_interval
        self.stream.thread_count = 1
        # mbtree=0: with x264's MB-tree rate control (its AVX-512 code) the same frames encoded
        # to different bytes and pixels from one run to the next for 9 of 60 synthetic clips on
        # an AVX-512 machine, so shards were not reproducible; without it, none did.
        self.stream.options = {"preset": self.cfg.preset, "crf": str(self.cfg.crf), "sc_threshold": "0",
                               "keyint_min": str(self.cfg.keyframe_interval), "x264-params": "mbtree=0"}
        self.n = 0

    def add(self, frame: av.VideoFrame, orient: Orientation) -> None:
        """Append ``frame`` (a decoded source frame) as the next output frame, turned upright."""
        if self.container is None:
            self._open(frame, orient)
        w, h = self.size
        if orient.ops:
            # Scale in the stored orientation (to RGB, read with the source's tags), turn the
            # pixels, then convert for the encoder.
            sw, sh = orient.display_size(w, h)
            rgb = orient.apply(frame.to_ndarray(format="rgb24", width=sw, height=sh, interpolation=SCALE_FLAGS))
            out = to_output_encoding(av.VideoFrame.from_ndarray(rgb, format="rgb24"), w, h)
        else:
            out = to_output_encoding(frame, w, h)
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
