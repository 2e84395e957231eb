"""The one device resolver: ``auto`` picks CUDA when present."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
