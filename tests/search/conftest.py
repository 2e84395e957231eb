"""Fixtures of the search tests: a small CLIP-ViP saved the way training saves it, an embedding run
of the synthesised shards made by the real Ray job, and an index of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def search_model(synth_tokenizer, tmp_path_factory) -> tuple[str, str]:
    """(model dir, tokenizer dir): the debug flavour (random weights, seed 0) in our safetensors format."""
    import torch

    from model.clip_vip import CLIPViP, get_config
    from model.convert import save_checkpoint

    torch.manual_seed(0)
    model = CLIPViP(get_config("debug", vocab_size=len(synth_tokenizer), eot_token_id=synth_tokenizer.eos_token_id,
                               temporal_init_std=0.5))
    out = save_checkpoint(model, tmp_path_factory.mktemp("model") / "model")
    return str(out), str(synth_tokenizer.name_or_path)


@pytest.fixture(scope="session")
def local_ray():
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not ray.is_initialized():
        # "local": a Ray of its own, never a cluster something else on this machine started.
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def embedded(local_ray, synth_shards, search_model, tmp_path_factory) -> Path:
    """The synthesised shards embedded by ``search.embed.run`` (video, subtitle and caption vectors)."""
    from search.embed import EmbedConfig, run

    out = tmp_path_factory.mktemp("embed") / "parts"
    model_dir, tok = search_model
    summary = run(EmbedConfig(model=model_dir, tokenizer=tok, shards=synth_shards, output_dir=str(out),
                              texts=("subtitle", "caption"), num_frames=4, batch_size=4, device="cpu",
                              progress_every_s=1.0))
    assert summary["units_complete"] == summary["units"] == 6
    return out


def write_parts(folder: Path, chunks: list, model_id: str = "sha256:test", start: int = 0,
                text_chunks: list | None = None) -> list[str]:
    """Embedding parts as the embed worker writes them (``parts.build_table``, parquet, then the marker)
    from arrays of vectors; keys ``v<global row>``, durations cycling 1..9 s, a ``topic`` column."""
    import json

    import pyarrow.parquet as pq

    from search import parts

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "_run.json").exists():
        (folder / "_run.json").write_text(json.dumps({"format": 1, "model_id": model_id}))
    names, offset = [], start
    for j, vectors in enumerate(chunks):
        name = parts.part_name(len(list(folder.glob("embed-*_stats.json"))))
        rows = [{"key": f"v{offset + r}", "subtitle": f"subtitle {offset + r}", "caption": f"caption {(offset + r) % 7}",
                 "duration": float(1 + (offset + r) % 9), "start": 0.0, "end": float(1 + (offset + r) % 9),
                 "meta": {"topic": str((offset + r) % 5)}} for r in range(len(vectors))]
        texts = {"subtitle_vector": text_chunks[j]} if text_chunks is not None else {}
        table = parts.build_table(rows, vectors, texts, model_id, vectors.shape[1])
        pq.write_table(table, folder / f"{name}.parquet")
        (folder / f"{name}_stats.json").write_text(json.dumps({"counts": {"ok": len(rows)}, "samples": len(rows)}))
        names.append(name)
        offset += len(vectors)
    return names


class LiveServer:
    """``search.server.create_app`` served on an ephemeral loopback port from a background thread."""

    def __init__(self, searcher, cfg=None) -> None:
        import asyncio
        import threading

        from search.server import ServeConfig, create_app

        self.loop = asyncio.new_event_loop()
        self.app = create_app(searcher, cfg or ServeConfig())
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the server did not start"

    def _run(self) -> None:
        import asyncio

        from aiohttp import web

        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="session")
def demo_index(embedded, tmp_path_factory) -> Path:
    """The index of the embedded synthetic shards (24 clips, a Flat index)."""
    from search.index import IndexConfig, build

    out = tmp_path_factory.mktemp("served") / "index"
    build(IndexConfig(embeddings=str(embedded), out=str(out)))
    return out


@pytest.fixture(scope="session")
def live_server(demo_index):
    from search.query import Searcher

    server = LiveServer(Searcher.open([f"demo={demo_index}"], device="cpu"))
    yield server
    server.close()
