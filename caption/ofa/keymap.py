"""The one table between official OFA (fairseq) state-dict keys and this port's keys.

If a real checkpoint names something differently, the fix is one line in ``RENAMES`` or ``IGNORED``.
Loading is strict: an official key that matches no rule, or a port key that nothing fills, is an error
that names the key.
"""

from __future__ import annotations

import re

import torch

from caption.ofa.config import OFAConfig
from caption.ofa.positions import image_rel_buckets, token_rel_buckets
from common.errors import UserError

# official regex -> port template; first match wins. The three token-embedding names are one
# tensor in OFA (share_all_embeddings + tied output projection); all three must be equal.
RENAMES: list[tuple[str, str]] = [
    (r"encoder\.embed_tokens\.weight", "embed_tokens.weight"),
    (r"decoder\.embed_tokens\.weight", "embed_tokens.weight"),
    (r"decoder\.output_projection\.weight", "embed_tokens.weight"),
    (r"encoder\.embed_images\.(.+)", r"encoder.resnet.\1"),
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn\.c_attn", r"\1.layers.\2.self_attn.head_scale"),
    (r"decoder\.layers\.(\d+)\.encoder_attn\.c_attn", r"decoder.layers.\1.cross_attn.head_scale"),
    (r"decoder\.layers\.(\d+)\.encoder_attn\.(.+)", r"decoder.layers.\1.cross_attn.\2"),
    (r"decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.+)", r"decoder.layers.\1.cross_attn_layer_norm.\2"),
    (r"(encoder|decoder)\.layers\.(\d+)\.(fc1|fc2|ffn_layernorm)\.(.+)", r"\1.layers.\2.ffn.\3.\4"),
    (r"(encoder|decoder)\.token_rel_pos_table_list\.(\d+)\.weight", r"\1.token_rel_pos.\2.weight"),
    (r"encoder\.image_rel_pos_table_list\.(\d+)\.weight", r"encoder.image_rel_pos.\1.weight"),
    # Everything else (layer norms, attention projections, position tables) keeps its name.
    (r"((?:encoder|decoder)\..+)", r"\1"),
]

# Official keys accepted and dropped: fairseq bookkeeping, buffers the port recomputes (checked
# below), and the decoder's image-code generation parts, which captioning never runs.
IGNORED: list[str] = [
    r"(encoder|decoder)\.version",
    r"(encoder|decoder)\.(token_rp_bucket|image_rp_bucket)",
    r"decoder\.image_position_idx",
    r"decoder\.embed_image_positions\.weight",
    r"decoder\.image_pos_ln\.(weight|bias)",
    r"decoder\.code_layernorm_embedding\.(weight|bias)",
    r"decoder\.image_rel_pos_table_list\.\d+\.weight",
]

_TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN equal to NaN: one shared tensor saved three times holds its NaNs
    (if any) in the same places, and ``torch.equal`` would call such copies different. Whether the
    weights are finite is checked separately, and named as NaN or inf."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def port_name(official: str) -> str | None:
    """The port key for an official key, ``None`` for an ignored key; ``KeyError`` if nothing matches."""
    if any(re.fullmatch(p, official) for p in IGNORED):
        return None
    for pattern, template in RENAMES:
        m = re.fullmatch(pattern, official)
        if m:
            return m.expand(template)
    raise KeyError(official)


def expected_buffers(cfg: OFAConfig) -> dict[str, torch.Tensor]:
    """The bucket buffers an official checkpoint stores; the port's biases assume exactly these values."""
    token = token_rel_buckets(cfg.token_bucket_size)
    image = image_rel_buckets(cfg.image_bucket_size)
    return {
        "encoder.token_rp_bucket": token, "encoder.image_rp_bucket": image,
        "decoder.token_rp_bucket": token, "decoder.image_rp_bucket": image,
    }


def official_to_port(official: dict[str, torch.Tensor], cfg: OFAConfig, port_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Map an official state dict onto the port's keys, strictly.

    Raises:
        UserError: naming unknown official keys, port keys left unfilled, shape mismatches, untied
            embeddings, or bucket buffers that differ from the port's.
    """
    present = [k for k in _TIED if k in official]
    for key in present[1:]:
        if not _same_values(official[key], official[present[0]]):
            raise UserError(f"{key} differs from {present[0]}; the OFA port needs shared token embeddings")
    for key, want in expected_buffers(cfg).items():
        if key in official and (official[key].shape != want.shape or not torch.equal(official[key].long(), want)):
            raise UserError(f"checkpoint buffer {key} differs from the port's relative-position buckets")
    port: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in official.items():
        try:
            name = port_name(key)
        except KeyError:
            unknown.append(key)
            continue
        if name is None:
            continue
        if name not in port_shapes:
            unknown.append(f"{key} (-> {name})")
            continue
        if tuple(value.shape) != tuple(port_shapes[name]):
            raise UserError(f"checkpoint key {key} has shape {tuple(value.shape)}, the port's {name} expects {tuple(port_shapes[name])}")
        port[name] = value
    missing = sorted(set(port_shapes) - set(port))
    if unknown or missing:
        raise UserError(
            "OFA checkpoint does not match the port: "
            + (f"unexpected keys {unknown[:20]}{' ...' if len(unknown) > 20 else ''}; " if unknown else "")
            + (f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}; " if missing else "")
            + "fix the table in caption/ofa/keymap.py if the checkpoint is a genuine OFA one"
        )
    return port


_INVERSE: list[tuple[str, str]] = [
    (r"encoder\.resnet\.(.+)", r"encoder.embed_images.\1"),
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn\.head_scale", r"\1.layers.\2.self_attn.c_attn"),
    (r"decoder\.layers\.(\d+)\.cross_attn\.head_scale", r"decoder.layers.\1.encoder_attn.c_attn"),
    (r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.(.+)", r"decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (r"decoder\.layers\.(\d+)\.cross_attn_ln\.(.+)", r"decoder.layers.\1.cross_attn_ln.\2"),
    (r"decoder\.layers\.(\d+)\.cross_attn\.(.+)", r"decoder.layers.\1.encoder_attn.\2"),
    (r"(encoder|decoder)\.layers\.(\d+)\.ffn\.(.+)", r"\1.layers.\2.\3"),
    (r"(encoder|decoder)\.token_rel_pos\.(\d+)\.weight", r"\1.token_rel_pos_table_list.\2.weight"),
    (r"encoder\.image_rel_pos\.(\d+)\.weight", r"encoder.image_rel_pos_table_list.\1.weight"),
    (r"((?:encoder|decoder)\..+)", r"\1"),
]


def port_to_official(port: dict[str, torch.Tensor], cfg: OFAConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """The official-format state dict for port weights, with every key a real checkpoint carries.

    Used to write fabricated fairseq checkpoints in tests. The decoder's unused image-generation
    parts get random values of the official shapes (captioning never reads them).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, value in port.items():
        if name == "embed_tokens.weight":
            for key in _TIED:
                out[key] = value.clone()
            continue
        for pattern, template in _INVERSE:
            m = re.fullmatch(pattern, name)
            if m:
                out[m.expand(template)] = value.clone()
                break
        else:
            raise KeyError(f"port key {name} has no official name")
    c, h = cfg.embed_dim, cfg.heads
    n_img_rel = (2 * cfg.image_bucket_size - 1) ** 2 + 3
    window = cfg.code_image_size // 8
    out.update(expected_buffers(cfg))
    out["encoder.version"] = torch.tensor([3.0])
    out["decoder.version"] = torch.tensor([3.0])
    out["decoder.embed_image_positions.weight"] = torch.randn(cfg.image_bucket_size**2 + 1, c, generator=gen)
    out["decoder.image_pos_ln.weight"], out["decoder.image_pos_ln.bias"] = torch.ones(c), torch.zeros(c)
    if cfg.code_layernorm_embedding:
        out["decoder.code_layernorm_embedding.weight"], out["decoder.code_layernorm_embedding.bias"] = torch.ones(c), torch.zeros(c)
    for i in range(cfg.decoder_layers):
        out[f"decoder.image_rel_pos_table_list.{i}.weight"] = torch.randn(n_img_rel, h, generator=gen)
    grid = torch.arange(window)[None, :] + torch.arange(window)[:, None] * cfg.image_bucket_size + 1
    out["decoder.image_position_idx"] = torch.cat([torch.tensor([0]), grid.flatten(), torch.full((769,), 1024)])
    return out
