"""Official OFA ``.pt`` files without fairseq, and the converted safetensors + JSON form.

fairseq checkpoints are pickles holding the state dict plus an ``argparse.Namespace`` of arguments
(``args``) or a ``cfg`` dict whose ``model`` entry is such a Namespace. ``restricted_load`` (shared
with the CLIP-ViP loader in ``model/convert.py``) reads them with an unpickler that can only build
tensors, storages, plain containers, Namespaces and numpy data (fairseq stores numpy scalars in its
bookkeeping); any other global, such as ``os.system``, is refused before it is ever called.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from caption.ofa.config import OFAConfig, config_from_fairseq_args
from caption.ofa.keymap import official_to_port
from caption.ofa.model import OFAModel
from common.errors import MissingInputError, UserError
from common.files import sha256_file, write_safetensors
from common.safe_pickle import UnsafeCheckpointError, restricted_load  # noqa: F401 - one allow-list for every .pt read

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, dict):
        return dict(obj)
    return {}


def arch_args(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model arguments of a fairseq checkpoint: ``args``, else ``cfg['task']`` updated by ``cfg['model']``."""
    if ckpt.get("args") is not None:
        return _as_dict(ckpt["args"])
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and cfg.get("model") is not None:
        return {**_as_dict(cfg.get("task")), **_as_dict(cfg["model"])}
    raise UserError("checkpoint has no 'args' and no 'cfg' with a 'model' entry, so its architecture is unknown")


def port_shapes(cfg: OFAConfig) -> dict[str, torch.Size]:
    """Key -> shape of the port's state dict, without allocating weights."""
    with torch.device("meta"):
        model = OFAModel(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def check_finite(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights that hold NaN or inf, naming each such tensor and its counts.

    Such a checkpoint is damaged. Decoding through a NaN weight gives NaN log-probabilities and no
    caption at all; a NaN row of the shared token embedding is quieter and worse: that token can
    never be chosen, so captions come out different from the model's without any error.
    """
    bad = []
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        # One pass without a mask: a NaN or inf anywhere makes the sum NaN or inf. A finite sum
        # clears the tensor; only a non-finite one (or finite weights whose sum overflows) is counted.
        if bool(torch.isfinite(tensor.sum(dtype=torch.float32 if tensor.element_size() < 4 else None))):
            continue
        nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
        if nan or inf:
            bad.append(f"{name}: " + ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n))
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise UserError(f"{source}: the weights hold NaN or inf in {len(bad)} tensor(s) ({shown}); the checkpoint is "
                        "damaged: convert or download it again, or use another")


def read_fairseq_checkpoint(path: str | Path) -> tuple[OFAConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Config, port-keyed weights and tokenizer meta from an official OFA ``.pt``; errors name what does not fit."""
    ckpt = restricted_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError(f"{path} is not a fairseq checkpoint: expected a dict with a 'model' state dict")
    official = {k: v for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
    if "encoder.embed_tokens.weight" not in official or not any(k.startswith("encoder.embed_images.") for k in official):
        raise UserError(f"{path} is not an OFA checkpoint: it lacks encoder.embed_tokens and the encoder.embed_images ResNet")
    try:
        args = arch_args(ckpt)
        cfg = config_from_fairseq_args(args, vocab_size=official["encoder.embed_tokens.weight"].shape[0])
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    state = official_to_port(official, cfg, port_shapes(cfg))
    check_finite(state, path)
    meta = {"arch": args.get("arch"), "num_codes": int(args.get("code_dict_size") or 8192), "num_bins": int(args.get("num_bins") or 1000)}
    return cfg, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, meta


def build_model(cfg: OFAConfig, state: dict[str, torch.Tensor] | None = None, device: str | torch.device = "cpu") -> OFAModel:
    """An eval-mode ``OFAModel``; with ``state``, loaded strictly (any missing or extra key raises)."""
    with torch.device(device):
        model = OFAModel(cfg)
    model = model.to(device)  # the bucket buffers are built on CPU
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UserError(f"OFA weights do not match the config: missing {result.missing_keys[:20]}, unexpected {result.unexpected_keys[:20]}")
    return model.eval().requires_grad_(False)


def save_converted(out_dir: str | Path, cfg: OFAConfig, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (``{"model": cfg, "meta": meta}``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors({k: v.contiguous() for k, v in state.items()}, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps({"model": cfg.to_json(), "meta": meta}, indent=2) + "\n")
    return out


def load_converted(model_dir: str | Path) -> tuple[OFAConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Config, weights and meta from a converted directory."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if not (model_dir / n).is_file()]
    if missing:
        raise MissingInputError(
            f"{model_dir} lacks {', '.join(missing)}; create it with 'clipvip caption convert-ofa <ckpt.pt> {model_dir}'"
        )
    data = json.loads((model_dir / CONFIG_FILE).read_text())
    if "model" not in data:
        raise UserError(f"{model_dir / CONFIG_FILE} is not an OFA port config (no 'model' section)")
    state = load_file(str(model_dir / WEIGHTS_FILE))
    check_finite(state, model_dir / WEIGHTS_FILE)
    return OFAConfig.from_json(data["model"]), state, data.get("meta", {})


def convert_fairseq_checkpoint(ckpt: str | Path, out_dir: str | Path, bpe_dir: str | Path | None = None) -> Path:
    """One-time conversion: official ``.pt`` -> ``out_dir`` with safetensors, JSON config and the BPE files.

    The tokenizer files (``encoder.json``, ``vocab.bpe``, ``dict.txt``, or BART-style ``vocab.json`` and
    ``merges.txt`` with any ``added_tokens.json``) are copied from ``bpe_dir`` when given, so the
    directory alone is enough for ``load_captioner('ofa:<out_dir>')``.
    """
    import shutil

    from caption.ofa.tokenizer import OFATokenizer, embedding_mismatch, find_bpe_files

    cfg, state, meta = read_fairseq_checkpoint(ckpt)
    files = find_bpe_files(bpe_dir) if bpe_dir is not None else {}
    if files:
        tokenizer = OFATokenizer(bpe_dir, num_codes=meta["num_codes"], num_bins=meta["num_bins"])
        mismatch = embedding_mismatch(tokenizer, cfg.vocab_size)
        if mismatch:
            raise UserError(f"{ckpt} with the tokenizer in {bpe_dir}: {mismatch}")
    meta = {**meta, "source": str(Path(ckpt).resolve()), "source_sha256": sha256_file(ckpt)}
    out = save_converted(out_dir, cfg, state, meta)
    for name, path in files.items():
        shutil.copyfile(path, out / name)
    return out
