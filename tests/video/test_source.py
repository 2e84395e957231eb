"""The pixel cap on decoded pictures (video/source.py, ``frames.max_pixels``): a source above it
fails its row with its size and the setting, without the giant picture being decoded; 8K video
passes the default. Run: ``.venv/bin/python -m pytest tests/video/test_source.py -q``.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode_worker import DecoderProcess
from video.frames import ClipError, FrameConfig, middle_frame, process_clip

ROOT = Path(__file__).resolve().parents[2]


def _write_png(path: Path, width: int, height: int) -> None:
    """A black RGB PNG of any size, streamed row by row (the full picture is never in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(1)
    row = b"\x00" + bytes(3 * width)  # filter byte "none", then the pixels
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _write_h264(path: Path, width: int, height: int, n: int = 2) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(2))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "threads": "1"}
        grey = np.full((height * 3 // 2, width), 128, np.uint8)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(grey, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def giant_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("giant") / "giant.png"
    _write_png(path, 16000, 16000)  # 256 MP in well under a megabyte
    return path


def test_a_giant_image_fails_its_row_naming_its_size_and_the_setting(giant_png):
    expected = "picture is 16000x16000 = 256000000 pixels, above frames.max_pixels=67108864"
    with pytest.raises(ClipError, match=expected):
        process_clip(str(giant_png), None, None, FrameConfig())
    with pytest.raises(ClipError, match=expected):
        middle_frame(str(giant_png))
    decoder = DecoderProcess(FrameConfig())  # as the pipeline runs it: a failed row with the reason
    try:
        out, reason = decoder.decode(str(giant_png), None, None)
    finally:
        decoder.close()
    assert out is None
    assert reason == f"ClipError: {giant_png}: {expected}; not decoded (raise frames.max_pixels to take it)"


def test_the_giant_picture_is_never_allocated(giant_png):
    """Decoding it would take at least 768 MB (16000 x 16000 x 3 bytes); the refusal takes a Python
    process's usual footprint."""
    # VmHWM, the peak resident memory of this process image (ru_maxrss would carry over the
    # parent's peak through fork and exec).
    code = ("import sys; from video.frames import ClipError, FrameConfig, process_clip\n"
            "try:\n    process_clip(sys.argv[1], None, None, FrameConfig())\nexcept ClipError:\n    pass\n"
            "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print(int(peak.split()[1]) // 1024)")
    proc = subprocess.run([sys.executable, "-c", code, str(giant_png)], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert int(proc.stdout.split()[-1]) < 400, proc.stdout


def test_8k_video_passes_the_default_and_a_lower_cap_refuses_it(tmp_path):
    path = tmp_path / "dci8k.mp4"
    _write_h264(path, 8192, 4320)
    out = process_clip(str(path), None, None, FrameConfig())
    assert (out.src_width, out.src_height) == (8192, 4320) and (out.width, out.height) == (456, 240)
    assert out.n_frames == 2 and out.jpg[:2] == b"\xff\xd8"
    with pytest.raises(ClipError, match=r"picture is 8192x4320 = 35389440 pixels, above frames.max_pixels=33177600"):
        process_clip(str(path), None, None, FrameConfig(max_pixels=7680 * 4320))


def test_the_cap_must_admit_the_smallest_clip_and_fit_ffmpeg():
    with pytest.raises(ValueError, match=r"frames.max_pixels=1000 must be between frames.min_side squared \(1024\)"):
        FrameConfig(max_pixels=1000)
    with pytest.raises(ValueError, match=r"frames.max_pixels=4294967296 .* \(FFmpeg's limit\)"):
        FrameConfig(max_pixels=2**32)
