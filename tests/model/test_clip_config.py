"""A ``clip_config`` given with an official CLIP-ViP checkpoint is checked against the weights:
shapes that differ are refused naming each field, a released architecture's known heads are never
replaced silently, and the right config loads the model exactly.

Configs are written the way transformers writes them (``CLIPConfig.save_pretrained``); checkpoints
the way the official trainer saves them (``clipmodel.``-prefixed fp16 state dict, ``torch.save``).
Run: .venv/bin/python -m pytest tests/model/test_clip_config.py -q
"""

from __future__ import annotations

import logging

import pytest
import torch

from common.errors import UserError
from model.clip_vip import CLIPViP, get_config
from model.convert import clip_config_fields, config_from_state, load_official_clipvip

from tests.model.test_convert import _hf_config, _official_file, _relative_error


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """A 64-wide model with 4 vision and 2 text heads, saved as the official trainer saves."""
    torch.manual_seed(5)
    cfg = get_config("debug", vocab_size=300, eot_token_id=299, vision_heads=4, text_heads=2)
    model = CLIPViP(cfg).eval()
    path = tmp_path_factory.mktemp("reduced") / "pretrain_clipvip.pt"
    _official_file(model, path)
    return model, path


def test_a_config_of_another_size_is_refused_naming_each_differing_field(reduced, tmp_path):
    source, path = reduced
    wider = get_config("debug", vocab_size=300, eot_token_id=299, vision_width=128, vision_heads=8, text_width=64,
                       text_heads=4, vision_layers=3)
    _hf_config(wider).save_pretrained(tmp_path / "wider")
    with pytest.raises(UserError) as info:
        load_official_clipvip(path, clip_config=tmp_path / "wider")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"clip_config {tmp_path / 'wider'} does not describe")
    for field in ("vision_width 128 there, 64 in the weights", "vision_layers 3 there, 2 in the weights",
                  "vision_mlp 512 there, 256 in the weights"):
        assert field in message, message
    assert "text_width" not in message and "patch_size" not in message  # fields that agree are not named
    # The model's own config loads it with its own heads, and its features are the source's.
    _hf_config(source.config).save_pretrained(tmp_path / "own")
    model, report = load_official_clipvip(path, clip_config=tmp_path / "own" / "config.json")
    assert report.missing == [] and report.unexpected == []
    assert (model.config.vision_heads, model.config.text_heads) == (4, 2)
    video, ids = torch.randn(2, 12, 3, 32, 32), torch.randint(0, 299, (3, 9))
    with torch.no_grad():
        assert _relative_error(model.encode_video(video), source.encode_video(video)) < 5e-3
        assert _relative_error(model.encode_text(ids), source.encode_text(ids)) < 5e-3


def test_a_config_with_another_activation_is_followed(reduced, tmp_path):
    """What no shape tells (heads, activation, norm eps) comes from the config, not from defaults."""
    source, path = reduced
    _hf_config(source.config, **{"text.hidden_act": "gelu", "vision.hidden_act": "gelu"}).save_pretrained(tmp_path)
    model, _ = load_official_clipvip(path, clip_config=tmp_path)
    assert model.config.hidden_act == "gelu"


def _meta_state(flavour: str) -> dict[str, torch.Tensor]:
    """A released architecture's state dict at full size, shapes only (no memory)."""
    with torch.device("meta"):
        return CLIPViP(get_config(flavour)).state_dict()


def test_a_released_architectures_heads_are_never_replaced_silently(tmp_path, caplog):
    b32 = _meta_state("B/32")
    _hf_config(get_config("B/32")).save_pretrained(tmp_path / "openai_b32")
    fields = clip_config_fields(b32, tmp_path / "openai_b32")
    assert fields == {"vision_heads": 12, "text_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    # B/32 shapes, 16/16 heads: the config is not this model's; loading it would move every feature.
    _hf_config(get_config("B/32"), **{"vision.num_attention_heads": 16, "text.num_attention_heads": 16}
               ).save_pretrained(tmp_path / "heads16")
    with pytest.raises(UserError, match=r"gives 16 vision and 16 text heads, but the weights have the shapes of the "
                                        r"released B/32 architecture, which has 12 and 8"):
        clip_config_fields(b32, tmp_path / "heads16")
    # An L/14 config on B/32 weights names the config and its fields, not a head-divisibility puzzle.
    _hf_config(get_config("L/14")).save_pretrained(tmp_path / "l14")
    with pytest.raises(UserError) as info:
        clip_config_fields(b32, tmp_path / "l14")
    message = str(info.value)
    assert message.startswith(f"clip_config {tmp_path / 'l14'} does not describe this checkpoint")
    assert "patch_size 14 there, 32 in the weights" in message and "vision_width 1024 there, 768" in message
    assert "divisible" not in message
    # Heads given explicitly from Python win, and the log says they differ from the known ones.
    with caplog.at_level(logging.WARNING, logger="model.convert"):
        cfg = config_from_state(b32, vision_heads=16, text_heads=16)
    assert (cfg.vision_heads, cfg.text_heads) == (16, 16)
    assert "vision_heads=16 as given, where the released B/32 architecture" in caplog.text


def test_a_missing_clip_config_is_named(reduced, tmp_path):
    _, path = reduced
    with pytest.raises(FileNotFoundError, match=r"CLIP config .*nope.json does not exist"):
        load_official_clipvip(path, clip_config=tmp_path / "nope.json")
