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
        ray.init(num_cpus=2, include_dashboard=False)
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
