"""``hf:<path or hub id>``: stock transformers image-to-text models as a ``Captioner``.

Any model ``AutoModelForImageTextToText`` knows and that captions from pixels alone works: BLIP
(``BlipForConditionalGeneration``), GIT (``GitForCausalLM``) and any ``VisionEncoderDecoderModel``
(e.g. ViT + GPT-2). These are ablation captioners, not the OFA captions CLIP-ViP used.

Toy-size random models of each family, for tests and benchmarks, are written by
``demo.tiny_hf.write_debug_model``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from caption.protocol import DecodeSettings, as_pil
from common.device import resolve_device
from common.errors import UserError

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_sha256(model_dir: Path) -> dict[str, str]:
    """sha256 of every weights file in a local model folder (empty for hub ids)."""
    out = {}
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[path.name] = h.hexdigest()
    return out


class HFCaptioner:
    """Caption images with a transformers image-to-text model, batched, with fixed decode settings."""

    def __init__(self, model: str, *, device: str = "auto", settings: DecodeSettings | None = None,
                 dtype: str = "auto", batch_size: int | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        self.name = f"hf:{model}"
        self.model_id = model
        self.batch_size = batch_size  # images per forward pass; None: all images of a call in one
        self.settings = settings or DecodeSettings()
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = "float16" if self.device.startswith("cuda") else "float32"
        self.dtype = getattr(torch, dtype)
        try:
            config = AutoConfig.from_pretrained(model)
            self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise UserError(f"caption model {model!r} could not be loaded as a transformers image-to-text model "
                             f"(BLIP, GIT or VisionEncoderDecoder) from a local folder or hub id: {exc}") from exc
        self.model_type = config.model_type
        self.model.to(self.device).eval()
        self.image_processor, self.tokenizer = _load_processing(model)
        local = Path(model)
        self.weights = weights_sha256(local) if local.is_dir() else {}

    def generate(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        """One caption per image, same order, in forward passes of at most ``batch_size`` images."""
        step = self.batch_size or max(len(images), 1)
        return [text for i in range(0, len(images), step) for text in self._generate(images[i:i + step])]

    def _generate(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        import torch

        if not images:
            return []
        pixels = self.image_processor(images=[as_pil(im) for im in images], return_tensors="pt")["pixel_values"]
        s = self.settings
        with torch.inference_mode():
            out = self.model.generate(
                pixel_values=pixels.to(self.device, self.dtype), num_beams=s.beam, max_new_tokens=s.max_new_tokens,
                min_new_tokens=s.min_new_tokens, no_repeat_ngram_size=s.no_repeat_ngram_size,
                length_penalty=s.length_penalty, early_stopping=s.beam > 1, do_sample=False)
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def describe(self) -> dict[str, Any]:
        """Backend, model, architecture, weights hashes (local folders) and decode settings."""
        import dataclasses

        return {"backend": "hf", "name": self.name, "model_type": self.model_type,
                "weights_sha256": self.weights, "settings": dataclasses.asdict(self.settings),
                "dtype": str(self.dtype).removeprefix("torch.")}


def _load_processing(model: str) -> tuple[Any, Any]:
    """(image processor, tokenizer): from the model's processor, else its separate parts (ViT + GPT-2)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(model)
        image_processor = getattr(processor, "image_processor", None)
        tokenizer = getattr(processor, "tokenizer", None)
        if image_processor is not None and tokenizer is not None:
            return image_processor, tokenizer
    except (OSError, ValueError, TypeError):
        pass
    return AutoImageProcessor.from_pretrained(model), AutoTokenizer.from_pretrained(model)
