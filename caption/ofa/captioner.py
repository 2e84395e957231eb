"""``OFACaptioner``: the OFA port behind the ``Captioner`` protocol (``load_captioner('ofa:<path>')``).

``<path>`` is either a converted directory (``model.safetensors`` + ``config.json`` + the BPE files) or an
official fairseq ``.pt``; for a ``.pt`` the BPE files come from ``bpe_dir`` or are looked for beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from caption.ofa.beam import BeamConfig, BeamSearchError
from caption.ofa.checkpoint import WEIGHTS_FILE, build_model, load_converted, read_fairseq_checkpoint
from caption.ofa.config import OFAConfig
from caption.ofa.generate import OFAGenerator
from caption.ofa.preprocess import normalize, resize_batch
from caption.ofa.tokenizer import CAPTION_PROMPT, OFATokenizer, embedding_mismatch, strip_punctuation
from caption.protocol import DecodeSettings
from common.device import resolve_device
from common.errors import MissingInputError, UserError
from common.files import sha256_file

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# run_scripts/caption/evaluate_caption_huge.sh (base and large use the DecodeSettings defaults)
HUGE_SETTINGS = DecodeSettings(beam=10, length_penalty=0.98)


class CaptionPrecisionError(UserError):
    """Half precision overflowed (NaN log-probabilities from finite weights); fp32 captions these images."""


def _find_bpe_dir(ckpt: Path) -> Path:
    for candidate in (ckpt.parent, ckpt.parent / "BPE", ckpt.parent / "utils" / "BPE"):
        if (candidate / "dict.txt").is_file() or (candidate / "vocab.json").is_file():
            return candidate
    return ckpt.parent  # find_bpe_files then raises, naming the missing files


@dataclasses.dataclass(frozen=True)
class OFAFiles:
    """An OFA model as read from disk, before a module is built: what the captioner and fine-tuning share."""

    cfg: OFAConfig
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    tokenizer: OFATokenizer
    weights: Path  # the file the weights came from (hashed into captions' metadata)
    bpe_dir: Path


def load_ofa(target: str | Path, bpe_dir: str | Path | None = None) -> OFAFiles:
    """Read a converted directory or an official ``.pt`` with its tokenizer, and check that they fit.

    For a ``.pt`` the BPE files come from ``bpe_dir`` or are looked for beside it; for a directory,
    from ``bpe_dir`` or the directory itself.
    """
    path = Path(target)
    if path.is_dir():
        cfg, state, meta = load_converted(path)
        weights, bpe = path / WEIGHTS_FILE, Path(bpe_dir) if bpe_dir else path
    elif path.is_file():
        cfg, state, meta = read_fairseq_checkpoint(path)
        weights, bpe = path, Path(bpe_dir) if bpe_dir else _find_bpe_dir(path)
    else:
        raise MissingInputError(f"OFA model {str(target)!r} is neither a converted directory nor a checkpoint file")
    tokenizer = OFATokenizer(bpe, num_codes=int(meta.get("num_codes", 8192)), num_bins=int(meta.get("num_bins", 1000)))
    mismatch = embedding_mismatch(tokenizer, cfg.vocab_size)
    if mismatch:
        raise UserError(f"OFA model {target} with the tokenizer in {bpe}: {mismatch}")
    return OFAFiles(cfg, state, meta, tokenizer, weights, bpe)


class OFACaptioner:
    """Loads OFA once; ``generate(images)`` returns one punctuation-free caption per image.

    Args:
        target: converted directory or official ``.pt``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        settings: beam, length and n-gram settings. Left at the defaults (beam 5, 16 tokens), OFA-huge
            switches to its official eval script's beam 10 and length penalty 0.98.
        bpe_dir: folder with ``encoder.json``, ``vocab.bpe``, ``dict.txt`` or BART-style ``vocab.json`` and
            ``merges.txt`` (default: beside the model).
        precision: ``auto`` (fp16 on GPU, as the official eval scripts run; fp32 on CPU), ``fp32``, ``bf16``
            or ``fp16``. Weights are cast, as fairseq's ``--fp16`` does; log-probabilities are always fp32.
        batch_size: images per forward pass (default 128 on GPU, 8 on CPU; H100 throughput doubles from 32 to 128).
        share_encoder: encode each image once for all beams (same captions, much faster).
        temperature: logits divisor (default: 0.98 for OFA-huge, 1.0 otherwise, as the official scripts).
        prompt: the encoder prompt, OFA's English caption prompt by default.
        preprocess_workers: threads resizing frames (default: up to 8 on GPU, where one thread's ~490
            frames/s would hold an H100 back; 1 on CPU, where the model is the bottleneck). With more than one,
            the next batch is also resized while the current one decodes.
    """

    name = "ofa"

    def __init__(
        self,
        target: str,
        *,
        device: str = "auto",
        settings: DecodeSettings | None = None,
        bpe_dir: str | Path | None = None,
        precision: str = "auto",
        batch_size: int | None = None,
        share_encoder: bool = True,
        temperature: float | None = None,
        prompt: str = CAPTION_PROMPT,
        preprocess_workers: int | None = None,
    ) -> None:
        files = load_ofa(target, bpe_dir)
        cfg, state, meta, weights = files.cfg, files.state, files.meta, files.weights
        self.tokenizer = files.tokenizer
        self.device = torch.device(resolve_device(device))
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in _DTYPES:
            raise UserError(f"precision {precision!r} is not one of {sorted(_DTYPES)} or 'auto'")
        self.precision = precision
        self.settings = settings or DecodeSettings()
        if cfg.flavour == "huge" and self.settings == DecodeSettings():
            self.settings = HUGE_SETTINGS
            logger.info("OFA-huge: decoding with its official settings (beam 10, length penalty 0.98, temperature 0.98)")
        if temperature is None:
            temperature = 0.98 if cfg.flavour == "huge" else 1.0
        self.batch_size = batch_size or (128 if self.device.type == "cuda" else 8)
        self.cfg, self.meta, self.prompt = cfg, meta, prompt
        self.weights_path = weights
        self.checkpoint_sha256 = sha256_file(weights)
        self.model = build_model(cfg, state).prepare_for_inference(self.device, _DTYPES[precision])
        t = self.tokenizer
        beam = BeamConfig(
            beam=self.settings.beam, max_len=self.settings.max_new_tokens, min_len=self.settings.min_new_tokens,
            no_repeat_ngram_size=self.settings.no_repeat_ngram_size, length_penalty=self.settings.length_penalty,
            bos=t.bos, pad=t.pad, eos=t.eos, unk=t.unk,
        )
        prompt_ids = torch.tensor(t.encode_prompt(prompt), dtype=torch.long)
        self.generator = OFAGenerator(self.model, prompt_ids, beam, share_encoder=share_encoder, temperature=temperature)
        self.temperature = temperature
        if preprocess_workers is None:
            preprocess_workers = min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 1
        threaded = preprocess_workers > 1
        self._resize_pool = ThreadPoolExecutor(preprocess_workers, "ofa-resize") if threaded else None
        self._prefetch = ThreadPoolExecutor(1, "ofa-prefetch") if threaded else None
        logger.info("loaded OFA-%s from %s on %s (%s)", cfg.flavour, target, self.device, precision)

    def generate_tokens(self, images: Sequence[Image.Image | np.ndarray],
                        names: Sequence[str] | None = None) -> list[list[int]]:
        """Best hypothesis per image as token ids (EOS included), before detokenisation.

        ``names`` (e.g. the image files) name the images in an error; by default, their positions.
        """
        chunks = [images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size)]
        size, dtype = self.cfg.patch_image_size, _DTYPES[self.precision]

        def resize(chunk: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
            return resize_batch(chunk, size, self._resize_pool)

        out: list[list[int]] = []
        ahead = None  # the next chunk, resizing in the background while this one decodes
        for i, chunk in enumerate(chunks):
            pixels = ahead.result() if ahead is not None else resize(chunk)
            ahead = self._prefetch.submit(resize, chunks[i + 1]) if self._prefetch and i + 1 < len(chunks) else None
            batch = normalize(pixels, self.device, dtype)
            try:
                out += [hyps[0].tokens for hyps in self.generator.generate(batch)]
            except BeamSearchError as exc:
                raise self._failure(exc, i * self.batch_size, names) from None
        return out

    def _failure(self, exc: BeamSearchError, first: int, names: Sequence[str] | None) -> Exception:
        """The error for images left without a caption, naming them. The weights are known to be finite
        (the loader refuses others), so NaN in half precision is an overflow the user fixes with fp32;
        anything else is a fault here, and keeps its traceback."""
        failed, nan = [first + j for j in exc.sentences], [first + j for j in exc.nan]
        labels = [str(names[k]) if names is not None else f"image {k} of this call" for k in failed]
        shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
        if nan and self.precision != "fp32":
            return CaptionPrecisionError(
                f"OFA in {self.precision} gave NaN log-probabilities for {len(failed)} image(s) ({shown}) although its "
                f"weights are finite: {self.precision} overflowed; caption in fp32 (--precision fp32, or "
                "precision='fp32' from Python)")
        why = "NaN log-probabilities" if nan else "every continuation scored -inf"
        return BeamSearchError(f"OFA ({self.precision}) left {len(failed)} image(s) without a caption ({shown}): {why} "
                               "from finite weights, which a correct model does not give; a fault of the port or of "
                               "weights far outside their trained range", failed, nan)

    def generate(self, images: Sequence[Image.Image | np.ndarray], names: Sequence[str] | None = None) -> list[str]:
        """One punctuation-free caption per image; ``names`` name the images in an error."""
        return [strip_punctuation(self.tokenizer.decode(tokens)) for tokens in self.generate_tokens(images, names)]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "ofa",
            "model": f"ofa-{self.cfg.flavour}",
            "checkpoint": str(self.weights_path),
            "checkpoint_sha256": self.checkpoint_sha256,
            "source_sha256": self.meta.get("source_sha256"),
            "decode": {
                **dataclasses.asdict(self.settings),
                "temperature": self.temperature,
                "prompt": self.prompt,
                "resolution": self.cfg.patch_image_size,
                "precision": self.precision,
                "strip_punctuation": True,
            },
        }
