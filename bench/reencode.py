"""Middle frame + training re-encode, clips/s on one core: the decode path before and after the
colour and pixel-cap changes, side by side in one run.

- before: the training copy keeps the source's colour encoding (one swscale pass that only
  scales), untagged; the source opens without a pixel cap or FFmpeg log capture.
- after (``video.frames.process_clip`` as it is): every source not already BT.601 limited
  converted to it with accurate rounding and full-resolution chroma, all tagged; decoders capped
  at ``frames.max_pixels``, FFmpeg's error log captured while a clip decodes.

Both run ``process_clip`` with re-encoding on (the pipeline's default) over the same clips: the
benchmark clip set (``bench/clips.py``: 224p to 720p, untagged, read as BT.601) and copies of its
larger clips re-encoded as BT.709-tagged H.264 (the matrix of most HD video, where the "after"
path converts colours). Rounds alternate before/after so drift on a shared machine hits both.

Run: ``.venv/bin/python -m bench.reencode [--clips-dir runs/bench_clips] [-n 100] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from bench.clips import bench_clips
from video import frames, reencode
from video.frames import FrameConfig, process_clip
from video.source import open_container, video_stream


def bt709_copies(rows: list[dict], out_dir: Path, n: int) -> list[dict]:
    """BT.709-tagged H.264 copies of the ``n`` largest clips (written once, then reused)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for row in sorted(rows, key=lambda r: -r["width"] * r["height"])[:n]:
        path = out_dir / Path(row["path"]).name
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            with av.open(row["path"]) as src, av.open(str(tmp), "w") as dst:
                stream = dst.add_stream("libx264", rate=Fraction(row["fps"]))
                stream.width, stream.height, stream.pix_fmt = row["width"], row["height"], "yuv420p"
                ctx = stream.codec_context
                ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709
                ctx.color_range, ctx.gop_size = 1, row["gop"]
                stream.options = {"preset": "veryfast", "threads": "1"}
                for frame in src.decode(video=0):
                    rgb = frame.reformat(format="rgb24")
                    out = rgb.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                    out.pts = None
                    for packet in stream.encode(out):
                        dst.mux(packet)
                for packet in stream.encode():
                    dst.mux(packet)
            tmp.rename(path)
        copies.append({**row, "path": str(path)})
    return copies


def _open_uncapped(path: str, max_pixels: int):
    container = open_container(path)
    return container, video_stream(container, path)


@contextlib.contextmanager
def before() -> Iterator[None]:
    """The decode path as it was: no colour conversion or tags' effect on the scale, no pixel cap."""
    saved = reencode.to_output_encoding, frames.open_capped, frames.pixel_cap_named
    reencode.to_output_encoding = lambda frame, w, h: frame.reformat(width=w, height=h, format="yuv420p",
                                                                     interpolation="AREA")
    frames.open_capped = _open_uncapped
    frames.pixel_cap_named = lambda path, max_pixels: contextlib.nullcontext()
    try:
        yield
    finally:
        reencode.to_output_encoding, frames.open_capped, frames.pixel_cap_named = saved


def rate(rows: list[dict], cfg: FrameConfig) -> float:
    """Clips per CPU-second of this process (decode and encode run in it, one thread each): on a
    machine shared with other jobs, CPU time moves far less than wall time."""
    t0 = time.process_time()
    for row in rows:
        assert process_clip(row["path"], None, None, cfg).mp4[4:8] == b"ftyp"
    return len(rows) / (time.process_time() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips-dir", default="runs/bench_clips")
    p.add_argument("-n", type=int, default=100, help="clips of the benchmark set")
    p.add_argument("--bt709", type=int, default=25, help="BT.709 copies of its largest clips")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    manifest = bench_clips(args.clips_dir, args.n)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    sets = {"benchmark set (untagged)": rows,
            "BT.709-tagged copies": bt709_copies(rows, Path(args.clips_dir) / "bt709", args.bt709)}
    cfg = FrameConfig()
    for clips in sets.values():  # warm-up: imports, first opens, page cache
        rate(clips[:3], cfg)
        with before():
            rate(clips[:3], cfg)
    print(f"process_clip with re-encode (3 fps, 240p), one core, one decoder thread; {args.rounds} rounds, "
          "before/after alternating")
    for name, clips in sets.items():
        after_rates, before_rates = [], []
        for _ in range(args.rounds):
            with before():
                before_rates.append(rate(clips, cfg))
            after_rates.append(rate(clips, cfg))
        b, a = sorted(before_rates)[len(before_rates) // 2], sorted(after_rates)[len(after_rates) // 2]
        print(f"{name:<26} {len(clips):4d} clips  before {b:7.2f} clips/CPU-s  after {a:7.2f} clips/CPU-s  "
              f"after/before {a / b:5.3f}x (median of {args.rounds})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
