"""Weights in and out: HF CLIP initialisation, official CLIP-ViP checkpoints, our safetensors format.

Our parameter names equal HF CLIP's and the official CLIP-ViP's, so every import
is a filter, not a rename: drop ``position_ids`` buffers, strip the official ``clipmodel.`` prefix,
cast to fp32, check shapes (raising on any mismatch), and report missing / unexpected keys.
``transformers`` is imported only inside :func:`from_hf_clip`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from common.errors import MissingInputError, UserError
from common.files import write_safetensors
from common.safe_pickle import UnsafeCheckpointError, restricted_load  # noqa: F401 - re-exported for callers
from model.clip_vip import FLAVOURS, CLIPViP, CLIPViPConfig

logger = logging.getLogger(__name__)

OFFICIAL_PREFIX = "clipmodel."


class HeadCountError(UserError):
    """A checkpoint whose attention head counts its weights do not determine. ``detail`` says why;
    the message adds how to give them from Python, and a command names its own option instead."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{detail}. Pass vision_heads=<n> and text_heads=<n>, or clip_config=<the transformers "
                         "CLIP config.json it was built from>")
# Flavours that are OpenAI CLIP architectures, so their head counts are known facts; a checkpoint with
# their exact shapes is taken to have their heads.
RELEASED_FLAVOURS = ("B/32", "B/16", "L/14")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclasses.dataclass
class LoadReport:
    """Keys the model expected but the checkpoint lacked, and checkpoint keys the model does not use."""

    missing: list[str]
    unexpected: list[str]

    def __str__(self) -> str:
        return f"missing={self.missing} unexpected={self.unexpected}"


def load_weights(model: CLIPViP, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load ``state`` non-strictly into ``model`` (fp32 cast); raise :class:`UserError` on any shape mismatch."""
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise UserError("checkpoint does not fit this architecture (check the flavour / config overrides): "
                        + "; ".join(bad))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    return LoadReport(sorted(result.missing_keys), sorted(result.unexpected_keys))


def config_from_hf(hf_config, **overrides) -> CLIPViPConfig:
    """A :class:`CLIPViPConfig` matching a ``transformers.CLIPConfig``."""
    v, t = hf_config.vision_config, hf_config.text_config
    if v.hidden_act != t.hidden_act:
        raise UserError(f"vision uses {v.hidden_act} but text uses {t.hidden_act}; mixed activations are unsupported")
    # eos_token_id == 2 marks old HF configs whose real end-of-text is the highest id (argmax rule).
    eot = t.eos_token_id if t.eos_token_id not in (None, 2) else t.vocab_size - 1
    fields = dict(image_size=v.image_size, patch_size=v.patch_size, vision_width=v.hidden_size,
                  vision_layers=v.num_hidden_layers, vision_heads=v.num_attention_heads,
                  vision_mlp=v.intermediate_size, vocab_size=t.vocab_size, context_length=t.max_position_embeddings,
                  text_width=t.hidden_size, text_layers=t.num_hidden_layers, text_heads=t.num_attention_heads,
                  text_mlp=t.intermediate_size, embed_dim=hf_config.projection_dim, eot_token_id=eot,
                  hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps)
    return CLIPViPConfig(**{**fields, **overrides})


def from_hf_clip(path_or_id: str, **cfg_overrides) -> CLIPViP:
    """Initialise CLIP-ViP from any HF CLIP checkpoint (local folder or hub id), as the paper does.

    Every CLIP tensor maps 1:1; only ``added_cls`` (N(0,1)) and ``temporal_embedding`` (zeros) stay
    new, and ``logit_scale`` is set to ``logit_scale_init`` (4.60). Anything else missing raises.
    """
    from transformers import CLIPModel

    try:
        hf = CLIPModel.from_pretrained(path_or_id, dtype=torch.float32)
    except OSError as e:
        raise MissingInputError(f"no HF CLIP checkpoint at {path_or_id!r}: give a folder saved with "
                                f"save_pretrained or a hub id on a machine with network access") from e
    cfg = config_from_hf(hf.config, **cfg_overrides)
    model = CLIPViP(cfg)
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    report = load_weights(model, state)
    expected_new = {"vision_model.embeddings.added_cls", "vision_model.embeddings.temporal_embedding"}
    if set(report.missing) - expected_new or report.unexpected:
        raise UserError(f"{path_or_id!r} is not a plain CLIP checkpoint for this config: {report}")
    with torch.no_grad():
        model.logit_scale.fill_(cfg.logit_scale_init)
    logger.info("initialised CLIP-ViP from %s; new parameters: %s", path_or_id, report.missing)
    return model


# The architecture fields a checkpoint's tensor shapes determine (an MLP width of None means 4x width).
SHAPE_FIELDS = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_mlp", "vocab_size",
                "context_length", "text_width", "text_layers", "text_mlp", "embed_dim")
# What a transformers CLIP config adds that no shape tells: the head counts, the activation, the norm eps.
CONFIG_ONLY_FIELDS = ("vision_heads", "text_heads", "hidden_act", "layer_norm_eps")


def read_clip_config(path: str | Path) -> CLIPViPConfig:
    """The architecture a transformers ``CLIPConfig`` JSON (a file or its folder) describes, with
    transformers' defaults for the fields the file leaves out (``save_pretrained`` writes only
    non-default values). ``transformers`` is imported only here."""
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    if not file.is_file():
        raise MissingInputError(f"CLIP config {file} does not exist; give the transformers CLIP config.json the "
                                "checkpoint was built from")
    try:
        data = json.loads(file.read_text())
        if not (isinstance(data.get("vision_config"), dict) and isinstance(data.get("text_config"), dict)):
            raise KeyError("vision_config and text_config")
        from transformers import CLIPConfig

        return config_from_hf(CLIPConfig.from_dict(data))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{file} is not a transformers CLIP config.json with a vision_config and a text_config "
                        f"({type(e).__name__}: {e})".replace("\n", " ")) from None


def _resolved(cfg: CLIPViPConfig, key: str) -> int:
    """A shape field's value, an MLP width of None resolved to its ratio times the width."""
    value = getattr(cfg, key)
    if value is None:
        return cfg.mlp_ratio * getattr(cfg, "vision_width" if key == "vision_mlp" else "text_width")
    return value


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The :data:`SHAPE_FIELDS` (and the end-of-text id: the last token) of an official state dict."""
    def layers(prefix: str) -> int:
        return 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))
    emb = "vision_model.embeddings."
    patch = state[emb + "patch_embedding.weight"].shape[-1]
    grid = round((state[emb + "position_embedding.weight"].shape[0] - 1) ** 0.5)
    tok = state["text_model.embeddings.token_embedding.weight"]
    return dict(image_size=grid * patch, patch_size=patch, vision_width=state[emb + "class_embedding"].shape[0],
                vision_layers=layers("vision_model.encoder.layers."),
                vision_mlp=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0], vocab_size=tok.shape[0],
                context_length=state["text_model.embeddings.position_embedding.weight"].shape[0],
                text_width=tok.shape[1], text_layers=layers("text_model.encoder.layers."),
                text_mlp=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                embed_dim=state["visual_projection.weight"].shape[0], eot_token_id=tok.shape[0] - 1)


def released_flavour(shapes: dict[str, int]) -> str | None:
    """The released CLIP architecture (``RELEASED_FLAVOURS``) whose widths, depths, patch and
    embedding size the shapes match, if any."""
    keys = ("patch_size", "vision_width", "vision_layers", "text_width", "text_layers", "embed_dim")
    return next((name for name in RELEASED_FLAVOURS if all(FLAVOURS[name][k] == shapes[k] for k in keys)), None)


def clip_config_fields(state: dict[str, torch.Tensor], clip_config: str | Path) -> dict[str, object]:
    """The :data:`CONFIG_ONLY_FIELDS` of ``clip_config``, once it is known to describe ``state``.

    Refused, in one line: a config whose shapes differ from the weights' (each differing field
    named, with both values), and a config giving other head counts than those of the released
    architecture the weights have (a wrong config would load without a missing key and move every
    feature).
    """
    cfg, shapes = read_clip_config(clip_config), _shapes(state)
    differ = [f"{k} {_resolved(cfg, k)} there, {shapes[k]} in the weights" for k in SHAPE_FIELDS
              if _resolved(cfg, k) != shapes[k]]
    if differ:
        raise UserError(f"clip_config {clip_config} does not describe this checkpoint: {'; '.join(differ)}; give the "
                        "config.json of the model these weights come from")
    flavour = released_flavour(shapes)
    if flavour is not None:
        known = (FLAVOURS[flavour]["vision_heads"], FLAVOURS[flavour]["text_heads"])
        if (cfg.vision_heads, cfg.text_heads) != known:
            raise UserError(f"clip_config {clip_config} gives {cfg.vision_heads} vision and {cfg.text_heads} text "
                            f"heads, but the weights have the shapes of the released {flavour} architecture, which "
                            f"has {known[0]} and {known[1]}; give that model's config.json (or none: its heads are "
                            "known), or, for a model that really has other heads, pass vision_heads= and text_heads= "
                            "from Python")
    return {k: getattr(cfg, k) for k in CONFIG_ONLY_FIELDS}


def config_from_state(state: dict[str, torch.Tensor], **overrides) -> CLIPViPConfig:
    """Infer the architecture from tensor shapes; the head counts from ``overrides`` or a flavour.

    Every shape is the same whatever the number of attention heads, so the heads cannot be read from
    the weights, and a wrong count loads without a single missing key while every feature comes out
    different. They are taken from ``overrides`` (``vision_heads``/``text_heads``), else from the
    released CLIP architecture whose widths, depths, patch and embedding size all match (the
    CLIP-ViP ViT-B checkpoints: 12 vision and 8 text heads, as in OpenAI's CLIP). Anything else
    raises rather than guess. Overrides that differ from a released architecture's heads are used,
    with a warning saying so.
    """
    fields: dict[str, object] = dict(_shapes(state))
    flavour = released_flavour(fields)
    for heads in ("vision_heads", "text_heads"):
        if heads in overrides:
            if flavour is not None and overrides[heads] != FLAVOURS[flavour][heads]:
                logger.warning("%s=%s as given, where the released %s architecture these weights match has %s", heads,
                               overrides[heads], flavour, FLAVOURS[flavour][heads])
            continue
        if flavour is None:
            raise HeadCountError(
                f"cannot tell the attention heads of this checkpoint (vision width {fields['vision_width']}, text width "
                f"{fields['text_width']}, {fields['vision_layers']}/{fields['text_layers']} layers): it matches none of "
                f"the released architectures {RELEASED_FLAVOURS}, and the weights have the same shapes for every head "
                "count")
        fields[heads] = FLAVOURS[flavour][heads]
    for mlp, width in (("vision_mlp", "vision_width"), ("text_mlp", "text_width")):
        if fields[mlp] == 4 * fields[width]:
            fields[mlp] = None  # the default ratio; keeps configs comparable to the flavours
    emb = "vision_model.embeddings."
    if emb + "added_cls" in state:
        fields["num_proxies"] = 1 + state[emb + "added_cls"].shape[0]
    if emb + "temporal_embedding" in state:
        fields["temporal_size"] = state[emb + "temporal_embedding"].shape[1]
    if emb + "added_cls" not in state and emb + "temporal_embedding" not in state:
        fields["attention"] = "meanpool"  # a plain CLIP state dict: the CLIP4Clip baseline
    return CLIPViPConfig(**{**fields, **overrides})


def load_official_clipvip(path: str | Path, clip_config: str | Path | None = None,
                          **cfg_overrides) -> tuple[CLIPViP, LoadReport]:
    """Load a released CLIP-ViP checkpoint (``pretrain_clipvip_base_{32,16}.pt``).

    The file is a ``torch.save``d flat dict whose keys carry the ``clipmodel.`` prefix, mostly fp16
    (apex O2). It is read with :func:`restricted_load` (a file carrying code is refused).
    Prefix and ``position_ids`` buffers are dropped, tensors cast to fp32; the architecture is read
    from the shapes, the attention heads from ``cfg_overrides``, else ``clip_config`` (the
    transformers CLIP ``config.json`` the model was built from, as the official configs name one,
    which must agree with the shapes: :func:`clip_config_fields`), else a matching flavour (see
    :func:`config_from_state`).

    Returns:
        The model and the report of missing / unexpected keys (both empty for a released file).
    """
    path = Path(path)
    raw = restricted_load(path)
    if not isinstance(raw, dict) or not any(k.startswith(OFFICIAL_PREFIX) for k in raw):
        raise UserError(f"{path}: expected the official flat state dict with '{OFFICIAL_PREFIX}'-prefixed keys")
    state = {k[len(OFFICIAL_PREFIX):]: v for k, v in raw.items()
             if k.startswith(OFFICIAL_PREFIX) and not k.endswith("position_ids")}
    foreign = sorted(k for k in raw if not k.startswith(OFFICIAL_PREFIX))
    if clip_config is not None:
        cfg_overrides = {**clip_config_fields(state, clip_config), **cfg_overrides}
    model = CLIPViP(config_from_state(state, **cfg_overrides))
    report = load_weights(model, state)
    report.unexpected = sorted(report.unexpected + foreign)
    if report.missing or report.unexpected:
        logger.warning("official checkpoint %s: %s", path, report)
    return model, report


def save_checkpoint(model: CLIPViP, out_dir: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (fp32 or the model's dtype) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    (out / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")
    write_safetensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    return out


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> CLIPViP:
    """Load a folder written by :func:`save_checkpoint` (strict: every key must match)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise MissingInputError(f"{path} is not a CLIP-ViP checkpoint: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg = CLIPViPConfig(**json.loads((path / CONFIG_FILE).read_text()))
    model = CLIPViP(cfg)
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=str(map_location)), strict=True)
    return model
