"""The CLIP-ViP towers: token layout, temporal interpolation, proxy vs. dense attention, API, compile.

Run: .venv/bin/python -m pytest tests/model/test_clip_vip.py -q
"""

from __future__ import annotations

import pytest
import torch

from model.attention import proxy_block_mask, to_flat
from model.clip_vip import CLIPViP, get_config


def _model(**overrides) -> CLIPViP:
    torch.manual_seed(0)
    model = CLIPViP(get_config("debug", **overrides)).double().eval()
    with torch.no_grad():  # non-zero temporal table so its placement is actually tested
        emb = model.vision_model.embeddings
        if hasattr(emb, "temporal_embedding"):
            emb.temporal_embedding.normal_()
    return model


def _pixels(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_new_parameters_are_initialised_as_the_official_code():
    model = CLIPViP(get_config("debug"))
    emb = model.vision_model.embeddings
    assert emb.added_cls.shape == (3, 64) and emb.temporal_embedding.shape == (1, 12, 64)
    assert torch.count_nonzero(emb.temporal_embedding) == 0
    assert 0.7 < emb.added_cls.std().item() < 1.3  # N(0,1), untouched by the weight init
    assert model.logit_scale.item() == pytest.approx(4.60)
    assert "vision_model.pre_layrnorm.weight" in model.state_dict()


def test_temporal_interpolation_values():
    emb = _model().vision_model.embeddings
    table = emb.temporal_embedding[0]  # [12,D]
    torch.testing.assert_close(emb.temporal(12)[0], table)
    torch.testing.assert_close(emb.temporal(1)[0, 0], 0.5 * (table[5] + table[6]))
    got = emb.temporal(32)[0]
    # align_corners=False samples (j + 0.5) * 12/32 - 0.5, clamped at 0: 0, 0.0625, 0.4375, 0.8125, ...
    for j, pos in enumerate([0.0, 0.0625, 0.4375, 0.8125]):
        lo = int(pos)
        frac = pos - lo
        torch.testing.assert_close(got[j], (1 - frac) * table[lo] + frac * table[lo + 1])
    torch.testing.assert_close(got[31], table[11])  # clamped at the end


def test_token_layout():
    model = _model()
    emb = model.vision_model.embeddings
    pixels = _pixels(2, 3)
    framed = emb(pixels)  # [B, 3*(4+16), D]
    tokens = emb(pixels, framed=False)  # [B, 4 + 3*16, D], the official layout
    assert framed.shape == (2, 3 * (4 + 16), 64) and tokens.shape == (2, 4 + 3 * 16, 64)
    torch.testing.assert_close(to_flat(framed, 4, 3), tokens, rtol=0, atol=0)
    pos = emb.position_embedding.weight
    torch.testing.assert_close(tokens[0, 0], emb.class_embedding + pos[0])
    torch.testing.assert_close(tokens[1, 1:4], emb.added_cls + pos[0])
    frame = 2
    patch = torch.nn.functional.conv2d(pixels[1, frame:frame + 1], emb.patch_embedding.weight, stride=8)
    patch = patch.flatten(2).transpose(1, 2)[0]  # [16,D]
    expected = patch + pos[1:] + emb.temporal(3)[0, frame]
    torch.testing.assert_close(tokens[1, 4 + frame * 16:4 + (frame + 1) * 16], expected)


def _dense_masked_video_features(model: CLIPViP, pixels: torch.Tensor) -> torch.Tensor:
    """Reference tower: every vision layer attends densely with the hand-built block mask."""
    vm, (b, t) = model.vision_model, pixels.shape[:2]
    x = vm.pre_layrnorm(vm.embeddings(pixels, framed=False))
    mask = proxy_block_mask(4, t, 16)[None, None].expand(b, 1, -1, -1)
    for layer in vm.encoder.layers:
        x = layer(x, "full", 0, 1, mask, False)
    return torch.nn.functional.normalize(model.visual_projection(vm.post_layernorm(x[:, 0])), dim=-1)


@pytest.mark.parametrize("b,t", [(1, 1), (2, 3), (3, 12)])
def test_video_tower_equals_dense_block_masked_tower(b, t):
    model = _model()
    pixels = _pixels(b, t, seed=t)
    torch.testing.assert_close(model.encode_video(pixels), _dense_masked_video_features(model, pixels),
                               rtol=1e-12, atol=1e-12)


def test_video_tower_gradients_equal_dense_block_masked_tower():
    # The framed layout repeats the proxies per frame; the chain rule must still sum to the exact gradient.
    model, pixels = _model(), _pixels(2, 3, seed=5)
    weights = torch.randn(2, 32, dtype=torch.float64)
    grads = []
    for encode in (model.encode_video, lambda x: _dense_masked_video_features(model, x)):
        model.zero_grad()
        (encode(pixels) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.vision_model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-10, atol=1e-12, msg=name)


def test_single_frame_is_full_attention_over_four_class_tokens_and_patches():
    proxy, joint = _model(), _model(attention="joint")
    joint.load_state_dict(proxy.state_dict())
    frames = _pixels(3, 1)[:, 0]
    torch.testing.assert_close(proxy.encode_frames(frames), joint.encode_frames(frames), rtol=1e-12, atol=1e-12)
    video = _pixels(2, 4)  # with several frames the two variants differ
    assert not torch.allclose(proxy.encode_video(video), joint.encode_video(video))


def test_meanpool_is_the_normalised_mean_of_normalised_frame_features():
    model = _model(attention="meanpool")
    assert not hasattr(model.vision_model.embeddings, "added_cls")
    video = _pixels(2, 5)
    per_frame = torch.stack([model.encode_frames(video[:, i]) for i in range(5)], dim=1)
    expected = torch.nn.functional.normalize(per_frame.mean(1), dim=-1)
    torch.testing.assert_close(model.encode_video(video), expected, rtol=1e-12, atol=1e-12)


def test_text_pools_the_first_end_of_text_and_ignores_padding():
    model = _model()
    eot = model.config.eot_token_id
    ids = torch.tensor([[eot - 1, 5, 9, eot, eot, eot], [eot - 1, 7, eot, eot, eot, eot]])
    mask = (torch.arange(6) <= torch.tensor([[3], [2]])).long()
    feats = model.encode_text(ids, mask)
    # Same texts without padding give the same features: causal attention + first-EOT pooling.
    torch.testing.assert_close(feats[0], model.encode_text(ids[:1, :4])[0])
    torch.testing.assert_close(feats[1], model.encode_text(ids[1:, :3])[0])
    assert torch.isfinite(model.encode_text(ids, torch.zeros_like(ids))).all()  # fully masked rows: no NaN
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_forward_dict_and_input_errors():
    model = _model()
    sub = torch.randint(0, 100, (2, 8))
    out = model(video=_pixels(2, 12), frames=_pixels(2, 1)[:, 0], subtitle_ids=sub, caption_ids=sub[:, :6])
    assert set(out) == {"video_features", "frame_features", "subtitle_features", "caption_features", "logit_scale"}
    for key in ("video_features", "frame_features", "subtitle_features", "caption_features"):
        assert out[key].shape == (2, 32)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(2, dtype=torch.float64))
    both = model(subtitle_ids=sub, caption_ids=sub.flip(0))  # batched into one text pass
    torch.testing.assert_close(both["caption_features"], model.encode_text(sub.flip(0)))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model.encode_video(_pixels(2, 1)[:, 0])
    with pytest.raises(ValueError, match="32x32"):
        model.encode_video(torch.zeros(1, 2, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="attention"):
        get_config("debug", attention="dense")
    with pytest.raises(ValueError, match="flavour"):
        get_config("B/8")


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = _model().train()
        model.gradient_checkpointing = ckpt
        out = model(video=_pixels(2, 3), subtitle_ids=torch.randint(0, 100, (2, 5)))
        (out["video_features"] @ out["subtitle_features"].T).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = CLIPViP(get_config("debug"))
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph raises on any graph break
    inputs = dict(video=torch.randn(2, 12, 3, 32, 32), frames=torch.randn(2, 3, 32, 32),
                  subtitle_ids=torch.randint(0, 100, (2, 8)), subtitle_mask=torch.ones(2, 8, dtype=torch.long),
                  caption_ids=torch.randint(0, 100, (2, 8)), caption_mask=torch.ones(2, 8, dtype=torch.long))
    out, ref = compiled(**inputs), model(**inputs)
    for key in ref:
        torch.testing.assert_close(out[key], ref[key])
