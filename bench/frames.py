"""Middle-frame extraction, clips/s on one core: clipvip vs ffmpeg per clip vs full decoding.

All methods produce a JPEG of the middle frame of each of 200 synthesised clips (mixed size and
keyframe interval), one clip at a time, one decoder thread:

- clipvip (PyAV): ``video.frames.process_clip(reencode=False)``: seek to the keyframe before
  the middle, decode forward to it, JPEG-encode.
- decord: ``VideoReader(num_threads=1)[n // 2]`` (seeks internally), same JPEG encode.
- ffmpeg subprocess: ``ffmpeg -threads 1 -ss <mid> -i clip -frames:v 1 out.jpg`` per clip (the
  middle time comes from the manifest, so ffmpeg pays no probe).
- full decode: every frame from the start with PyAV, keep the middle one.

Run: ``.venv/bin/python -m bench.frames [--clips-dir runs/bench_clips] [-n 200]``
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import av
from PIL import Image

from bench.clips import bench_clips
from video.frames import FrameConfig, process_clip


def _jpeg(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def clipvip(row: dict, cfg=FrameConfig(reencode=False, image_max_short_side=0)) -> bytes:
    return process_clip(row["path"], None, None, cfg).jpg


def decord_reader(row: dict) -> bytes:
    import decord

    vr = decord.VideoReader(row["path"], num_threads=1)
    return _jpeg(vr[len(vr) // 2].asnumpy())


def full_decode(row: dict) -> bytes:
    with av.open(row["path"]) as c:
        stream = c.streams.video[0]
        stream.thread_count = 1
        frames = [f for f in c.decode(stream)]
    return _jpeg(frames[len(frames) // 2].to_ndarray(format="rgb24"))


def ffmpeg_subprocess(row: dict, tmp: Path) -> bytes:
    mid = row["n_frames"] / row["fps"] / 2
    out = tmp / "mid.jpg"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-threads", "1", "-ss", f"{mid:.6f}", "-i", row["path"],
                    "-frames:v", "1", "-q:v", "2", str(out)], check=True)
    return out.read_bytes()


def measure(name: str, fn, rows: list[dict]) -> float:
    fn(rows[0])  # warm-up (imports, first open)
    t0 = time.perf_counter()
    for row in rows:
        assert fn(row)[:2] == b"\xff\xd8", name
    rate = len(rows) / (time.perf_counter() - t0)
    print(f"{name:<22} {rate:8.1f} clips/s", flush=True)
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips-dir", default="runs/bench_clips")
    p.add_argument("-n", type=int, default=200)
    args = p.parse_args(argv)
    manifest = bench_clips(args.clips_dir, args.n)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    print(f"{len(rows)} clips, sizes {sorted({(r['width'], r['height']) for r in rows})}, "
          f"keyframe intervals {sorted({r['gop'] for r in rows})}; one core, one decoder thread")
    rates = {"clipvip (PyAV seek)": measure("clipvip (PyAV seek)", clipvip, rows),
             "decord": measure("decord", decord_reader, rows)}
    if shutil.which("ffmpeg"):
        with tempfile.TemporaryDirectory() as tmp:
            rates["ffmpeg subprocess"] = measure("ffmpeg subprocess", lambda r: ffmpeg_subprocess(r, Path(tmp)), rows)
    else:
        print("ffmpeg binary not found (apt-get install -y ffmpeg); skipping the subprocess baseline")
    rates["full decode (PyAV)"] = measure("full decode (PyAV)", full_decode, rows)
    base = rates["clipvip (PyAV seek)"]
    for name, rate in rates.items():
        if name != "clipvip (PyAV seek)":
            print(f"clipvip / {name:<20} {base / rate:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
