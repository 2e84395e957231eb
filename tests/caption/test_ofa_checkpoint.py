"""Official-format OFA checkpoints: fairseq round trip, strict key map, restricted unpickler, conversion.

Run: .venv/bin/python -m pytest tests/caption/test_ofa_checkpoint.py -q
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from caption.ofa.captioner import OFACaptioner
from caption.ofa.checkpoint import UnsafeCheckpointError, load_converted, read_fairseq_checkpoint, restricted_load
from caption.ofa.keymap import port_to_official
from demo.tiny_ofa import NUM_BINS, NUM_CODES, write_tiny_ofa
from caption.ofa.tokenizer import write_bart_layout


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_ofa(tmp_path_factory.mktemp("tiny_ofa"), seed=1)


def official_args(cfg) -> argparse.Namespace:
    """The arch arguments an official tiny checkpoint would carry, sized like the test model."""
    return argparse.Namespace(
        arch="ofa_tiny", task="caption", encoder_embed_dim=cfg.embed_dim, decoder_embed_dim=cfg.embed_dim,
        encoder_ffn_embed_dim=cfg.ffn_dim, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers, resnet_type="resnet50",
        resnet_layers=list(cfg.resnet_layers), patch_image_size=cfg.patch_image_size, scale_attn=True, scale_fc=True,
        scale_heads=True, disable_entangle=True, add_type_embedding=True, num_bins=NUM_BINS, code_dict_size=NUM_CODES,
        best_score=np.float64(1.25),
    )


def write_official(tiny_dir: Path, out: Path, style: str = "args", drop: str | None = None, extra: str | None = None) -> Path:
    cfg, state, _ = load_converted(tiny_dir)
    official = port_to_official(state, cfg)
    if drop:
        del official[drop]
    if extra:
        official[extra] = torch.zeros(1)
    args = official_args(cfg)
    ckpt = {"model": official, "optimizer_history": [{"num_updates": 10}], "extra_state": {"epoch": 3}}
    if style == "args":
        ckpt["args"] = args
    else:
        ckpt["args"], ckpt["cfg"] = None, {"model": args, "task": {"_name": "caption"}}
    torch.save(ckpt, out)
    return out


def images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (48 + 8 * i, 80, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("style", ["args", "cfg"])
def test_fairseq_round_trip_gives_identical_captions(tiny_dir, tmp_path, style):
    pt = write_official(tiny_dir, tmp_path / "caption_tiny.pt", style)
    official = torch.load(pt, weights_only=False)["model"]
    assert "encoder.layers.0.self_attn.c_attn" in official and "decoder.layers.1.encoder_attn.k_proj.weight" in official
    assert "encoder.embed_images.layer1.0.conv1.weight" in official and "decoder.output_projection.weight" in official
    from_dir = OFACaptioner(str(tiny_dir), device="cpu")
    from_pt = OFACaptioner(str(pt), device="cpu", bpe_dir=tiny_dir)
    assert from_pt.cfg == from_dir.cfg.__class__(**{**from_dir.cfg.to_json(), "flavour": "tiny"})
    assert from_pt.generate_tokens(images()) == from_dir.generate_tokens(images())
    assert from_pt.describe()["checkpoint_sha256"] != from_dir.describe()["checkpoint_sha256"]


def test_convert_cli_writes_a_loadable_directory(tiny_dir, tmp_path):
    from jobs.caption import main

    pt = write_official(tiny_dir, tmp_path / "caption_tiny.pt")
    out = tmp_path / "converted"
    assert main(["convert-ofa", str(pt), str(out), "--bpe-dir", str(tiny_dir)]) == 0
    converted = OFACaptioner(str(out), device="cpu")
    assert converted.describe()["source_sha256"] is not None
    assert converted.generate(images(2)) == OFACaptioner(str(tiny_dir), device="cpu").generate(images(2))
    bart = write_bart_layout(tiny_dir, tmp_path / "bart_bpe", num_codes=NUM_CODES, num_bins=NUM_BINS)
    assert main(["convert-ofa", str(pt), str(tmp_path / "converted_bart"), "--bpe-dir", str(bart)]) == 0
    assert sorted(p.name for p in (tmp_path / "converted_bart").iterdir()) == [
        "added_tokens.json", "config.json", "merges.txt", "model.safetensors", "vocab.json"]
    assert OFACaptioner(str(tmp_path / "converted_bart"), device="cpu").generate(images(2)) == converted.generate(images(2))


def test_missing_and_unexpected_keys_are_named(tiny_dir, tmp_path):
    pt = write_official(tiny_dir, tmp_path / "a.pt", drop="encoder.layers.1.attn_ln.weight")
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layers.1.attn_ln.weight'\]"):
        read_fairseq_checkpoint(pt)
    pt = write_official(tiny_dir, tmp_path / "b.pt", extra="encoder.layers.0.mystery.weight")
    with pytest.raises(ValueError, match="unexpected keys.*encoder.layers.0.mystery.weight"):
        read_fairseq_checkpoint(pt)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_a_checkpoint_that_carries_code(tmp_path):
    marker = tmp_path / "pwned"
    pt = tmp_path / "evil.pt"
    torch.save({"model": {"encoder.embed_tokens.weight": torch.zeros(2, 2)}, "args": _Exploit(marker)}, pt)
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pt.*(posix|os)\.system"):
        restricted_load(pt)
    assert not marker.exists()


def test_non_ofa_checkpoints_are_refused(tmp_path):
    bart = tmp_path / "bart.pt"
    torch.save({"model": {"encoder.embed_tokens.weight": torch.zeros(4, 2), "encoder.embed_images.conv1.weight": torch.zeros(1)},
                "args": argparse.Namespace(arch="bart_large")}, bart)
    with pytest.raises(ValueError, match="bart_large.*not an OFA model"):
        read_fairseq_checkpoint(bart)
    plain = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="not a fairseq checkpoint"):
        read_fairseq_checkpoint(plain)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_fairseq_checkpoint(text)


def test_checkpoints_with_unported_options_are_refused(tiny_dir, tmp_path):
    """sync_bn would silently change the ResNet's BatchNorm eps under the same key names."""
    pt = write_official(tiny_dir, tmp_path / "sync.pt")
    ckpt = torch.load(pt, weights_only=False)
    ckpt["args"].sync_bn = True
    torch.save(ckpt, pt)
    with pytest.raises(ValueError, match="sync_bn=True, which the OFA port does not implement"):
        read_fairseq_checkpoint(pt)


def test_text_buckets_are_the_1024_table_whatever_the_max_positions():
    import dataclasses

    from caption.ofa.config import flavour
    from caption.ofa.model import OFAModel
    from caption.ofa.positions import token_rel_buckets

    cfg = dataclasses.replace(flavour("tiny"), max_source_positions=512, max_target_positions=256)
    model = OFAModel(cfg)
    full = token_rel_buckets(cfg.token_bucket_size, 1024)
    assert torch.equal(model.encoder.token_buckets[:512, :512], full[:512, :512])
    assert torch.equal(model.decoder.token_buckets[:256, :256], full[:256, :256])
    assert not torch.equal(token_rel_buckets(cfg.token_bucket_size, 512), full[:512, :512])  # the old, wrong table


def test_switches_a_checkpoint_does_not_store_take_the_official_arch_defaults():
    from caption.ofa.config import config_from_fairseq_args

    stored = {"arch": "ofa_large", "scale_attn": True, "scale_fc": True, "scale_heads": True, "disable_entangle": True}
    assert config_from_fairseq_args(stored, 59457).scale_attn is True
    bare = config_from_fairseq_args({"arch": "ofa_large"}, 59457)
    assert (bare.scale_attn, bare.scale_fc, bare.scale_heads, bare.disable_entangle) == (False, False, False, False)
    assert bare.embed_dim == 1024 and bare.resnet_layers == (3, 8, 36)
