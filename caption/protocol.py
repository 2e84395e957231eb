"""The ``Captioner`` protocol, its decode settings and image input (the registry that builds a
captioner from a spec string is ``caption/registry.py``).

A captioner loads its model once and turns a batch of RGB images into one caption each. It knows
nothing about Ray, videos or shards: the pipeline's caption stage adapts columns to it and back.

Spec strings (the ``caption.model`` config value):

- ``hf:<path or hub id>``: a stock transformers image-to-text model (BLIP, GIT, any
  VisionEncoderDecoder), see ``caption/hf.py``.
- ``ofa:<checkpoint>``: the OFA port, see ``caption/ofa``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image


@dataclasses.dataclass(kw_only=True, frozen=True)
class DecodeSettings:
    """Decoding settings, recorded beside every caption. Defaults are OFA-Caption's (beam 5, 16 tokens)."""

    beam: int = 5
    max_new_tokens: int = 16
    min_new_tokens: int = 1
    no_repeat_ngram_size: int = 3
    length_penalty: float = 1.0


@runtime_checkable
class Captioner(Protocol):
    """Load once, then ``generate(images) -> list[str]``, one caption per image, same order."""

    name: str

    def generate(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]: ...

    def describe(self) -> dict[str, Any]:
        """Model name, checkpoint hash and decode settings, stored in every sample's metadata."""
        ...


def as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """Accept PIL images or HxWx3 uint8 arrays; return an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    return Image.fromarray(arr, "RGB")
