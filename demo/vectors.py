"""Synthetic embedding collections for the index tests and benchmarks.

Real CLIP-style embeddings are far from uniform on the sphere: they lie near a low-dimensional
surface and crowd around topics. Uniform random vectors in 512 dimensions have no near neighbours
at all (every pair is at cosine ~0), so no approximate index can beat a full scan on them and a
benchmark on them says nothing about a real collection. ``clustered`` draws points from a mixture
of ``topics`` Gaussian blobs in a ``latent``-dimensional space (blobs as wide as the spacing of
their centres, so topics overlap and neighbourhoods run across cell boundaries), maps them into
``dim`` dimensions with a fixed random linear map, adds a little isotropic noise and normalises.
"""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, *, topics: int = 1000, noise: float = 1.0, latent: int = 32, seed: int = 0,
              dtype=np.float32) -> np.ndarray:
    """``n`` unit vectors [n, dim]; the same ``seed`` gives the same topics and map, so queries drawn
    with it (and another ``n``) come from the same distribution."""
    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((latent, dim)).astype(np.float32) / latent ** 0.5
    centres = rng.standard_normal((topics, latent)).astype(np.float32)
    out = np.empty((n, dim), dtype=dtype)
    for i in range(0, n, 1 << 16):
        m = min(1 << 16, n - i)
        z = centres[rng.integers(0, topics, m)] + rng.standard_normal((m, latent)).astype(np.float32) * noise
        x = z @ lift + rng.standard_normal((m, dim)).astype(np.float32) * (0.2 / dim ** 0.5) * np.sqrt(latent)
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
