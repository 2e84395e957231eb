"""``OFAConfig``, the named OFA flavours, and reading the arch arguments stored in a fairseq checkpoint.

Sizes follow the OFA model card (``models/ofa/ofa.py`` arch functions). The NormFormer switches
(``scale_attn``, ``scale_fc``, ``scale_heads``) and ``disable_entangle`` default to what the official
caption fine-tuning scripts pass; a checkpoint's own arguments always win, and where a checkpoint
lacks one, it gets the official arch function's default (False), as fairseq would give it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from common.errors import UserError

RESNET_LAYERS: dict[str, tuple[int, int, int]] = {
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}


@dataclasses.dataclass(kw_only=True, frozen=True)
class OFAConfig:
    """Architecture of one OFA model; every field maps to a fairseq argument of the same meaning."""

    flavour: str = "custom"
    embed_dim: int = 768
    ffn_dim: int = 3072
    heads: int = 12
    encoder_layers: int = 6
    decoder_layers: int = 6
    resnet_layers: tuple[int, int, int] = RESNET_LAYERS["resnet101"]
    vocab_size: int = 59457
    max_source_positions: int = 1024
    max_target_positions: int = 1024
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    code_image_size: int = 128
    attn_scale_factor: float = 2.0
    scale_attn: bool = True
    scale_fc: bool = True
    scale_heads: bool = True
    scale_resids: bool = False
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    add_type_embedding: bool = True
    entangle_position_embedding: bool = False
    disable_entangle: bool = True
    no_scale_embedding: bool = True
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    activation_fn: str = "gelu"
    patch_image_size: int = 480
    bos: int = 0
    pad: int = 1
    eos: int = 2
    unk: int = 3

    def __post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise UserError(f"embed_dim {self.embed_dim} is not divisible by heads {self.heads}")
        if self.activation_fn not in ("gelu", "relu"):
            raise UserError(f"activation_fn {self.activation_fn!r} is not supported; use 'gelu' or 'relu'")
        side = self.patch_image_size // 16
        if side > self.image_bucket_size:
            raise UserError(
                f"patch_image_size {self.patch_image_size} gives a {side}x{side} patch grid, larger than "
                f"image_bucket_size {self.image_bucket_size}; use at most {16 * self.image_bucket_size} px"
            )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OFAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"OFA config has unknown keys {unknown}; known keys: {sorted(known)}")
        data = dict(data)
        if "resnet_layers" in data:
            data["resnet_layers"] = tuple(data["resnet_layers"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> OFAConfig:
        return cls.from_json(json.loads(Path(path).read_text()))


def _flavour(name: str, d: int, heads: int, enc: int, dec: int, resnet: str) -> OFAConfig:
    return OFAConfig(
        flavour=name, embed_dim=d, ffn_dim=4 * d, heads=heads, encoder_layers=enc, decoder_layers=dec,
        resnet_layers=RESNET_LAYERS[resnet],
    )


FLAVOURS: dict[str, OFAConfig] = {
    "tiny": _flavour("tiny", 256, 4, 4, 4, "resnet50"),
    "medium": _flavour("medium", 512, 8, 4, 4, "resnet101"),
    "base": _flavour("base", 768, 12, 6, 6, "resnet101"),
    "large": _flavour("large", 1024, 16, 12, 12, "resnet152"),
    "huge": _flavour("huge", 1280, 16, 24, 12, "resnet152"),
}


def debug_config(vocab_size: int) -> OFAConfig:
    """A few-MB model of the same architecture for CPU tests: 32 wide, 2+2 layers, one block per stage, 64 px."""
    return dataclasses.replace(
        FLAVOURS["tiny"], flavour="debug", embed_dim=32, ffn_dim=64, heads=2, encoder_layers=2, decoder_layers=2,
        resnet_layers=(1, 1, 1), vocab_size=vocab_size, patch_image_size=64,
    )


def flavour(name: str, **overrides: Any) -> OFAConfig:
    """A named flavour, optionally with fields replaced (``flavour("base", patch_image_size=384)``)."""
    if name not in FLAVOURS:
        raise UserError(f"unknown OFA flavour {name!r}; choose one of {sorted(FLAVOURS)}")
    return dataclasses.replace(FLAVOURS[name], **overrides)


# fairseq argument name -> OFAConfig field, for the fields whose names differ or need conversion.
_ARG_FIELDS: dict[str, str] = {
    "encoder_embed_dim": "embed_dim",
    "encoder_ffn_embed_dim": "ffn_dim",
    "encoder_attention_heads": "heads",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "max_source_positions": "max_source_positions",
    "max_target_positions": "max_target_positions",
    "token_bucket_size": "token_bucket_size",
    "image_bucket_size": "image_bucket_size",
    "code_image_size": "code_image_size",
    "attn_scale_factor": "attn_scale_factor",
    "scale_attn": "scale_attn",
    "scale_fc": "scale_fc",
    "scale_heads": "scale_heads",
    "scale_resids": "scale_resids",
    "layernorm_embedding": "layernorm_embedding",
    "patch_layernorm_embedding": "patch_layernorm_embedding",
    "code_layernorm_embedding": "code_layernorm_embedding",
    "add_type_embedding": "add_type_embedding",
    "entangle_position_embedding": "entangle_position_embedding",
    "disable_entangle": "disable_entangle",
    "no_scale_embedding": "no_scale_embedding",
    "encoder_normalize_before": "encoder_normalize_before",
    "decoder_normalize_before": "decoder_normalize_before",
    "activation_fn": "activation_fn",
    "patch_image_size": "patch_image_size",
}

# Arguments the port does not implement; a checkpoint that turns one on is refused rather than
# silently mis-computed.
# sync_bn changes the ResNet's BatchNorm eps (1e-3) and freeze_resnet its buffers, under the same key names.
_UNSUPPORTED_TRUE = ("encoder_prompt", "decoder_prompt", "adapter", "cross_self_attention", "no_cross_attention",
                     "sync_bn", "freeze_resnet")


# Switches the official arch functions default to False (``getattr(args, name, False)``) although the
# caption scripts turn them on: a checkpoint that does not store them was trained without them.
_ARCH_FALSE_DEFAULTS = ("scale_attn", "scale_fc", "scale_heads", "disable_entangle")


def config_from_fairseq_args(args: dict[str, Any], vocab_size: int) -> OFAConfig:
    """Build the config from a checkpoint's arch arguments (``args`` Namespace or ``cfg.model`` as a dict).

    The flavour is chosen by ``arch`` (``ofa_tiny`` ... ``ofa_huge``); explicit arguments override it,
    exactly as fairseq's arch functions only fill in what the command line left unset.
    """
    arch = str(args.get("arch") or args.get("_name") or "")
    if not arch.startswith("ofa"):
        raise UserError(
            f"checkpoint arch is {arch!r}, not an OFA model (expected ofa_tiny/medium/base/large/huge); "
            "pass an official OFA checkpoint such as caption_large_best_clean.pt"
        )
    name = arch[len("ofa_"):] if arch.startswith("ofa_") else "large"
    if name not in FLAVOURS:
        raise UserError(f"checkpoint arch {arch!r} is an OFA variant this port does not know; known: {sorted(FLAVOURS)}")
    for key in _UNSUPPORTED_TRUE:
        if args.get(key):
            raise UserError(f"checkpoint sets {key}={args[key]!r}, which the OFA port does not implement")
    if args.get("decoder_embed_dim", args.get("encoder_embed_dim")) != args.get("encoder_embed_dim"):
        raise UserError("checkpoint has different encoder and decoder widths; OFA shares one embedding")
    fields: dict[str, Any] = {"flavour": name, "vocab_size": vocab_size}
    fields.update({arg: False for arg in _ARCH_FALSE_DEFAULTS if args.get(arg) is None})
    for arg, field in _ARG_FIELDS.items():
        if args.get(arg) is not None:
            fields[field] = args[arg]
    if args.get("resnet_layers") is not None:  # not an OFA argument: lets small test models skip ResNet blocks
        fields["resnet_layers"] = tuple(int(n) for n in args["resnet_layers"])
    elif args.get("resnet_type") is not None:
        if args["resnet_type"] not in RESNET_LAYERS:
            raise UserError(f"checkpoint resnet_type {args['resnet_type']!r} is not one of {sorted(RESNET_LAYERS)}")
        fields["resnet_layers"] = RESNET_LAYERS[args["resnet_type"]]
    base = FLAVOURS[name]
    typed = {k: type(getattr(base, k))(v) if k not in ("flavour", "resnet_layers") else v for k, v in fields.items()}
    return dataclasses.replace(base, **typed)
