"""The embedding worker's throughput against a bare model loop on the same decoded clips.

Ours: ``EmbedActor.embed_unit`` on a curated shard tar, in this process (no Ray): it reads the
tar, decodes each clip (the next batch while the model runs), preprocesses, encodes, casts to
float16 and writes the parquet part and its marker. Bare: the clips decoded once beforehand, then
only ``preprocess`` + ``model.encode_video`` on the same batches. The ratio is what everything
around the model costs. Both sides use the same random-weight model and batch size.

Run: ``.venv/bin/python bench/embed.py --flavour B/32 --clips 16 --frames 12``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flavour", default="B/32")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import dataclasses

    import torch

    from demo.synth import synthesize
    from model.clip_vip import CLIPViP, get_config
    from model.convert import save_checkpoint
    from search.embed import EmbedConfig
    from search.embed_worker import EmbedActor, Unit
    from shards.format import expand_pattern, raw_samples
    from train.video import decode_frames, preprocess

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_test_shards  # the curation's own writer, without Ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    manifest = synthesize(tmp / "clips", args.clips, seed=0, vary_format=False)
    pattern = write_test_shards(manifest, tmp / "shards", per_shard=args.clips)
    url = expand_pattern(pattern)[0]
    from model.tokenizer import load_tokenizer, train_clip_bpe

    tok = train_clip_bpe(["a red circle moving left", "a blue square"], tmp / "tok", num_merges=10)
    loaded = load_tokenizer(str(tok))
    torch.manual_seed(0)
    model = CLIPViP(get_config(args.flavour, vocab_size=len(loaded), eot_token_id=loaded.eos_token_id))
    model_dir = save_checkpoint(model, tmp / "model")
    cfg = EmbedConfig(model=str(model_dir), tokenizer=str(tok), shards=pattern, output_dir=str(tmp / "parts"),
                      num_frames=args.frames, batch_size=args.batch_size, device="cpu", num_cpus=0)
    actor = EmbedActor(cfg)
    model = actor.encoder.model
    clips = [decode_frames(s["mp4"], args.frames, train=False) for s in raw_samples([url], lambda e: None)]
    size = model.config.image_size

    def ours() -> float:
        t = time.perf_counter()
        actor.embed_unit(Unit(index=0, url=url))
        return time.perf_counter() - t

    @torch.no_grad()
    def bare() -> float:
        t = time.perf_counter()
        for i in range(0, len(clips), args.batch_size):
            model.encode_video(torch.stack([preprocess(c, size) for c in clips[i:i + args.batch_size]]))
        return time.perf_counter() - t

    ours(), bare()  # warm-up: allocator, first-call paths
    times = {"ours": [], "bare": []}
    for _ in range(args.repeats):  # interleaved, so drift from other load hits both sides alike
        times["ours"].append(ours())
        times["bare"].append(bare())
    best = {k: min(v) for k, v in times.items()}
    rates = {k: len(clips) / v for k, v in best.items()}
    print(json.dumps({"flavour": args.flavour, "frames": args.frames, "clips": len(clips),
                      "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "clips_per_s": {k: round(v, 3) for k, v in rates.items()},
                      "ratio_ours_over_bare": round(rates["ours"] / rates["bare"], 3),
                      "times_s": {k: [round(x, 2) for x in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
