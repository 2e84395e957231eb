"""``clipvip encode``: texts and videos to normalised embeddings with a trained CLIP-ViP.

Example::

    clipvip encode --model runs/finetune_msrvtt_b32 --text "a dog catches a frisbee" \\
        --video clips/a.mp4 --video clips/long.mp4:12.0:19.5 --out vectors.npz

Prints the cosine of every text with every video; ``--out`` saves ``texts``, ``videos`` and the
inputs in an ``.npz``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.common import UserError, cli_main, offline_defaults, setup_logging


def parse_video(spec: str) -> str | tuple[str, float, float]:
    """``path`` or ``path:start:end`` (seconds)."""
    parts = spec.rsplit(":", 2)
    if len(parts) == 3:
        try:
            return parts[0], float(parts[1]), float(parts[2])
        except ValueError:
            pass
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip encode", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run dir, a model dir or clipvip:<official .pt>")
    p.add_argument("--tokenizer", help="CLIP tokenizer dir or hub id (default: the run's)")
    p.add_argument("--clip-config", help="for an official .pt of a non-released architecture")
    p.add_argument("--text", action="append", default=[], help="a text to encode (repeatable)")
    p.add_argument("--video", action="append", default=[], help="a video file, or path:start:end seconds (repeatable)")
    p.add_argument("--frames", type=int, help="frames per video (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the vectors to this .npz")
    args = p.parse_args(argv)
    setup_logging("WARNING")
    offline_defaults()
    videos = [parse_video(v) for v in args.video]
    problems = []
    if not args.text and not videos:
        problems.append("give at least one --text or --video")
    for v in videos:
        path = v if isinstance(v, str) else v[0]
        if "://" not in path and not Path(path).is_file():
            problems.append(f"--video {path}: no such file")
        if not isinstance(v, str) and v[2] <= v[1]:
            problems.append(f"--video {path}:{v[1]}:{v[2]}: the end must be after the start")
    if args.frames is not None and args.frames < 2:
        problems.append(f"--frames {args.frames} must be at least 2")
    if args.batch_size < 1:
        problems.append(f"--batch-size {args.batch_size} must be at least 1")
    if args.out and not args.out.endswith(".npz"):
        problems.append(f"--out {args.out}: give a file name ending in .npz")
    if problems:
        raise UserError("; ".join(problems))

    import numpy as np

    from search.encoder import Encoder
    from train.video import DecodeError

    enc = Encoder.load(args.model, tokenizer=args.tokenizer, device=args.device, num_frames=args.frames,
                       clip_config=args.clip_config)
    texts = enc.encode_texts(args.text)
    try:
        vids = enc.encode_videos(videos, batch_size=args.batch_size)
    except DecodeError as exc:  # a --video that exists but does not decode
        raise UserError(f"--video: {exc}") from exc
    print(f"model {enc.model_name} ({enc.model_id}), {enc.dim}-d, {enc.num_frames} frames per video")
    if len(texts) and len(vids):
        sims = texts @ vids.T
        names = [v if isinstance(v, str) else f"{v[0]}:{v[1]:g}:{v[2]:g}" for v in videos]
        for t, row in zip(args.text, sims):
            print(f"{t!r}: " + ", ".join(f"{Path(n).name} {s:.4f}" for n, s in zip(names, row)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.out, texts=texts, videos=vids, text_inputs=np.asarray(args.text, dtype=str),
                 video_inputs=np.asarray([str(v) for v in videos], dtype=str), model_id=enc.model_id)
        print(f"wrote {args.out}: texts {texts.shape}, videos {vids.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip encode", main))
