"""OFA caption preprocessing without torchvision: RGB, square bicubic resize, scale to [-1, 1].

Equivalent to OFA's ``Resize((S, S), BICUBIC) -> ToTensor -> Normalize([0.5]*3, [0.5]*3)`` on a PIL image
(torchvision's PIL path calls ``PIL.Image.resize`` with the same filter). Aspect ratio is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from caption.protocol import as_pil


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file; a missing or corrupt file raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"image {path} cannot be decoded ({exc}); it is corrupt or not an image") from exc


def preprocess(images: Sequence[Image.Image | np.ndarray], size: int = 480) -> torch.Tensor:
    """Images (PIL or HxWx3 uint8) -> (B, 3, size, size) float32 in [-1, 1]."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = as_pil(image)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.Resampling.BICUBIC)
        batch[i] = np.asarray(pil)
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    return pixels.sub_(0.5).div_(0.5)
