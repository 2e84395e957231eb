"""Bucketed relative positions, as OFA computes them (values must match the official buffers exactly).

Text: offsets within +-bucket/2 keep their own bucket; longer ones share log-spaced buckets.
Image: BEiT-style 2-D offsets on a ``bucket x bucket`` grid, with index 0 reserved for a cls slot
(OFA numbers patches from 1, so the reserved row and column are never used by captioning).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def token_rel_buckets(bucket_size: int, max_position: int = 1024) -> torch.Tensor:
    """``(max_position, max_position)`` long CPU tensor of text relative-position bucket ids."""
    return _token_rel_buckets(bucket_size, max_position).clone()


def image_rel_buckets(bucket_size: int) -> torch.Tensor:
    """``(bucket^2 + 1, bucket^2 + 1)`` long CPU tensor of image relative-position bucket ids."""
    return _image_rel_buckets(bucket_size).clone()


@lru_cache(maxsize=4)
def _token_rel_buckets(bucket_size: int, max_position: int) -> torch.Tensor:
    cpu = torch.device("cpu")
    rel = torch.arange(max_position, device=cpu)[:, None] - torch.arange(max_position, device=cpu)[None, :]
    sign = torch.sign(rel)
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), mid - 1, rel.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(abs_pos.le(mid), rel, log_pos.int() * sign).long()
    return bucket + bucket_size - 1


@lru_cache(maxsize=4)
def _image_rel_buckets(bucket_size: int) -> torch.Tensor:
    num_rel = (2 * bucket_size - 1) ** 2 + 3
    cpu = torch.device("cpu")
    axis = torch.arange(bucket_size, device=cpu)
    coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # P, P, 2
    rel = rel + (bucket_size - 1)
    index = rel[:, :, 0] * (2 * bucket_size - 1) + rel[:, :, 1]
    out = torch.zeros((bucket_size * bucket_size + 1,) * 2, dtype=torch.long, device=cpu)
    out[1:, 1:] = index
    out[0, :] = num_rel - 3
    out[:, 0] = num_rel - 2
    out[0, 0] = num_rel - 1
    return out


def image_position_ids(height: int, width: int, bucket_size: int) -> torch.Tensor:
    """Row-major patch ids on the bucket grid, starting at 1: ``(height * width,)``."""
    return (torch.arange(width)[None, :] + torch.arange(height)[:, None] * bucket_size + 1).flatten()
