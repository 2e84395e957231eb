"""Weight import/export: HF CLIP parity, fabricated official CLIP-ViP checkpoints, safetensors round trip.

Everything is built offline from tiny random ``transformers`` CLIP configs.
Run: .venv/bin/python -m pytest tests/model/test_convert.py -q
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from model.clip_vip import CLIPViP, get_config
from model.convert import from_hf_clip, load_checkpoint, load_official_clipvip, save_checkpoint


def _hf_features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers 4 vs 5


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=20, bos_token_id=97, eos_token_id=98, pad_token_id=98)
    vision = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    path = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(path)
    return model, str(path)


def test_hf_init_reports_only_the_new_parameters(hf_clip, caplog):
    hf, path = hf_clip
    with caplog.at_level("INFO"):
        ours = from_hf_clip(path)
    assert "added_cls" in caplog.text and "temporal_embedding" in caplog.text
    assert ours.config.vision_mlp == 40 and ours.config.eot_token_id == 98 and ours.config.context_length == 20
    assert ours.logit_scale.item() == pytest.approx(4.60)
    hf_state = hf.state_dict()
    for key, value in ours.state_dict().items():
        if key in hf_state and key != "logit_scale":
            assert torch.equal(value, hf_state[key]), key


def test_hf_init_gives_clip_text_features(hf_clip):
    hf, path = hf_clip
    ours = from_hf_clip(path).eval()
    ids = torch.tensor([[97, 5, 17, 33, 98, 98, 98], [97, 60, 98, 98, 98, 98, 98], [97, 1, 2, 3, 4, 5, 98]])
    mask = (ids != 98).long()
    mask[torch.arange(3), (ids == 98).int().argmax(-1)] = 1  # the real EOT is attended; padding is not
    with torch.no_grad():
        expected = F.normalize(_hf_features(hf.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)
        torch.testing.assert_close(ours.encode_text(ids, mask), expected, rtol=1e-5, atol=1e-5)


def test_meanpool_frame_features_are_clip_image_features(hf_clip):
    hf, path = hf_clip
    ours = from_hf_clip(path, attention="meanpool").eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = F.normalize(_hf_features(hf.get_image_features(pixel_values=images)), dim=-1)
        torch.testing.assert_close(ours.encode_frames(images), expected, rtol=1e-5, atol=1e-5)
        # A one-frame "video" through the baseline is the same image feature.
        torch.testing.assert_close(ours.encode_video(images[:, None]), expected, rtol=1e-5, atol=1e-5)


def test_proxy_tower_at_one_frame_is_clip_with_three_extra_class_tokens(hf_clip):
    hf, path = hf_clip
    ours = from_hf_clip(path).eval()
    with torch.no_grad():
        ours.vision_model.embeddings.temporal_embedding.normal_()
        images = torch.randn(2, 3, 32, 32)
        tokens = ours.vision_model.embeddings(images[:, None])  # [B, 4 + 16, D]
        hf_tokens = hf.vision_model.embeddings(images)  # [B, 1 + 16, D]: CLIP's own [CLS] + patches
        temporal_mid = ours.vision_model.embeddings.temporal(1)[0, 0]
        torch.testing.assert_close(tokens[:, 0], hf_tokens[:, 0])
        torch.testing.assert_close(tokens[:, 4:], hf_tokens[:, 1:] + temporal_mid)
        # HF's own encoder, dense over all 20 tokens, pooled at token 0.
        vm = hf.vision_model
        hidden = vm.encoder(inputs_embeds=vm.pre_layrnorm(tokens)).last_hidden_state
        expected = F.normalize(hf.visual_projection(vm.post_layernorm(hidden[:, 0])), dim=-1)
        torch.testing.assert_close(ours.encode_frames(images), expected, rtol=1e-5, atol=1e-5)


def _official_file(model: CLIPViP, path, extra: dict | None = None, drop: str | None = None):
    """Write ``model`` the way the released checkpoints are: prefix, fp16, position_ids buffers."""
    state = {f"clipmodel.{k}": v.half() for k, v in model.state_dict().items() if k != drop}
    cfg = model.config
    state["clipmodel.text_model.embeddings.position_ids"] = torch.arange(cfg.context_length)[None]
    state["clipmodel.vision_model.embeddings.position_ids"] = torch.arange(cfg.num_patches + 1)[None]
    state.update(extra or {})
    torch.save(state, path)


def test_load_fabricated_official_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = CLIPViP(get_config("debug", vocab_size=300, eot_token_id=299)).eval()
    _official_file(source, tmp_path / "pretrain_clipvip.pt")
    loaded, report = load_official_clipvip(tmp_path / "pretrain_clipvip.pt", vision_heads=4, text_heads=4)
    assert report.missing == [] and report.unexpected == []
    assert loaded.config == source.config
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, source.state_dict()[key].half().float(), rtol=0, atol=0)
    video = torch.randn(2, 12, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(video), source.encode_video(video), rtol=0, atol=5e-3)


def test_official_checkpoint_report_and_errors(tmp_path):
    source = CLIPViP(get_config("debug", vocab_size=300, eot_token_id=299))
    _official_file(source, tmp_path / "a.pt", extra={"clipmodel.some_head.weight": torch.zeros(2)},
                   drop="vision_model.embeddings.added_cls")
    model, report = load_official_clipvip(tmp_path / "a.pt", vision_heads=4, text_heads=4)
    assert report.missing == ["vision_model.embeddings.added_cls"] and report.unexpected == ["some_head.weight"]
    _official_file(source, tmp_path / "b.pt", extra={"clipmodel.some_head.weight": torch.zeros(2), "step": torch.tensor(3)},
                   drop="text_projection.weight")
    model, report = load_official_clipvip(tmp_path / "b.pt", vision_heads=4, text_heads=4)
    assert report.missing == ["text_projection.weight"]
    assert report.unexpected == ["some_head.weight", "step"]
    with pytest.raises(ValueError, match="does not fit"):
        load_official_clipvip(tmp_path / "b.pt", vision_heads=4, text_heads=4, temporal_size=8)
    torch.save({"text_model.x": torch.zeros(1)}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="clipmodel"):
        load_official_clipvip(tmp_path / "c.pt")


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(2)
    model = CLIPViP(get_config("debug", attention="joint", temporal_size=8)).eval()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    video, ids = torch.randn(1, 8, 3, 32, 32), torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(video), model.encode_video(video))
        assert torch.equal(loaded.encode_text(ids), model.encode_text(ids))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "nothing")


def _hf_config(cfg, **changes):
    """The transformers CLIP config a CLIP-ViP architecture is built from, as a user would save it."""
    from transformers import CLIPConfig

    text = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
                num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                max_position_embeddings=cfg.context_length, eos_token_id=cfg.eot_token_id)
    vision = dict(hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size)
    for key, value in changes.items():
        tower, field = key.split(".")
        (text if tower == "text" else vision)[field] = value
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.embed_dim)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_head_count_is_read_or_refused_never_guessed(tmp_path):
    """Head count changes no shape: a 64-wide tower with 2 heads (head size 32) loads without one
    missing key under a width/64 or any other guess, with wrong features. It must come from the
    caller or the CLIP config, or the load must stop."""
    torch.manual_seed(3)
    cfg = get_config("debug", vocab_size=300, eot_token_id=299, vision_heads=2, text_heads=2)
    source = CLIPViP(cfg).eval()
    _official_file(source, tmp_path / "heads2.pt")
    with pytest.raises(ValueError, match=r"cannot tell the attention heads .* Pass vision_heads=<n> and text_heads=<n>, "
                                         r"or clip_config="):
        load_official_clipvip(tmp_path / "heads2.pt")
    video, ids = torch.randn(2, 12, 3, 32, 32), torch.randint(0, 299, (3, 9))
    with torch.no_grad():
        want_v, want_t = source.encode_video(video), source.encode_text(ids)
        # The caller's count, or the transformers CLIP config the model was built from.
        _hf_config(cfg).save_pretrained(tmp_path / "clip")
        for model, report in (load_official_clipvip(tmp_path / "heads2.pt", vision_heads=2, text_heads=2),
                              load_official_clipvip(tmp_path / "heads2.pt", clip_config=tmp_path / "clip"),
                              load_official_clipvip(tmp_path / "heads2.pt", clip_config=tmp_path / "clip" / "config.json")):
            assert report.missing == [] and report.unexpected == []
            assert (model.config.vision_heads, model.config.text_heads) == (2, 2)
            assert _relative_error(model.encode_video(video), want_v) < 5e-3
            assert _relative_error(model.encode_text(ids), want_t) < 5e-3
        # Why guessing is refused: the wrong count loads cleanly and every feature moves.
        wrong, report = load_official_clipvip(tmp_path / "heads2.pt", vision_heads=1, text_heads=1)
        assert report.missing == [] and report.unexpected == []
        assert _relative_error(wrong.encode_video(video), want_v) > 0.01
        assert _relative_error(wrong.encode_text(ids), want_t) > 0.01
    (tmp_path / "not_clip.json").write_text("{}")
    with pytest.raises(UserError, match="not a transformers CLIP config.json"):
        load_official_clipvip(tmp_path / "heads2.pt", clip_config=tmp_path / "not_clip.json")


@pytest.mark.parametrize("flavour, heads", [("B/32", (12, 8)), ("B/16", (12, 8)), ("L/14", (16, 12))])
def test_released_architectures_take_their_known_head_counts(flavour, heads):
    from model.convert import config_from_state

    with torch.device("meta"):
        state = CLIPViP(get_config(flavour)).state_dict()
    cfg = config_from_state(state)
    assert (cfg.vision_heads, cfg.text_heads) == heads == (get_config(flavour).vision_heads, get_config(flavour).text_heads)


class _Exploit:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_official_checkpoint_carrying_code_is_refused_in_our_words(tmp_path):
    from model.convert import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    source = CLIPViP(get_config("debug", vocab_size=300, eot_token_id=299))
    state = {f"clipmodel.{k}": v for k, v in source.state_dict().items()}
    state["clipmodel.extra"] = _Exploit(marker)
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_official_clipvip(tmp_path / "evil.pt", vision_heads=4, text_heads=4)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    assert re.fullmatch(re.escape(f"{tmp_path / 'evil.pt'}: refusing to unpickle global ") + r"(posix|nt|os)\.system: "
                        r"a checkpoint holds only tensors and plain data; this file carries code or objects from "
                        r"another program", message)
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt is not a readable PyTorch checkpoint"):
        load_official_clipvip(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        load_official_clipvip(tmp_path / "missing.pt")
