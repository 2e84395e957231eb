"""Batched, cached text embedding: the slow step of the analysis, done once per (encoder, text).

The cache is a folder per encoder (named by a hash of its ``cache_id``) holding append-only
``part-*.npz`` files of ``(sha1(text), vector)`` rows, the digests stored as (N, 20) uint8 arrays.
A run writes one new part for the texts it had to encode; a part appears by atomic rename, so an
interrupted or concurrent run never leaves a half-written file behind. Re-running the report with
other seeds, corpora or clustering settings encodes only texts it has never seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np

from analysis.encoders import TextEncoder

logger = logging.getLogger(__name__)


KEY_BYTES = 20


def text_key(text: str) -> bytes:
    """The cache key of one text: its SHA-1 digest (20 bytes)."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def _keys_from_array(keys: np.ndarray) -> list[bytes]:
    """Stored keys -> 20-byte digests.

    Parts written before the uint8 layout hold numpy ``S20`` strings, which drop trailing NUL bytes
    when read back: about one digest in 256 ends in 0x00 and came back a byte short, so its text
    never matched and was encoded again on every run. Padding with NULs restores those digests
    exactly (only NULs were ever dropped), so old caches keep working.
    """
    if keys.dtype.kind == "S":
        return [bytes(k).ljust(KEY_BYTES, b"\0") for k in keys]
    if keys.dtype == np.uint8 and keys.ndim == 2 and keys.shape[1] == KEY_BYTES:
        return [k.tobytes() for k in keys]
    raise ValueError(f"keys of dtype {keys.dtype} and shape {keys.shape}")


def _keys_to_array(keys: list[bytes]) -> np.ndarray:
    """20-byte digests -> (N, 20) uint8: raw bytes that round-trip exactly, NULs included."""
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)


class EmbeddingCache:
    """Vectors on disk keyed by encoder id and text hash."""

    def __init__(self, root: str | Path, cache_id: str):
        self.dir = Path(root).expanduser() / hashlib.sha1(cache_id.encode()).hexdigest()[:20]
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "encoder.json"
        if not meta.exists():
            meta.write_text(json.dumps({"cache_id": cache_id}) + "\n")
        self._rows: dict[bytes, np.ndarray] = {}
        for part in sorted(self.dir.glob("part-*.npz")):
            try:
                with np.load(part) as z:
                    keys, vecs = z["keys"], z["vecs"]
                rows = _keys_from_array(keys)
            except (OSError, ValueError, KeyError) as e:
                logger.warning("embedding cache: ignoring unreadable %s (%s)", part, e)
                continue
            self._rows.update(zip(rows, vecs))

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> np.ndarray | None:
        return self._rows.get(key)

    def put(self, keys: list[bytes], vecs: np.ndarray) -> None:
        """Store new rows (one part file) and keep them in memory."""
        if not keys:
            return
        if any(len(k) != KEY_BYTES for k in keys):
            raise ValueError(f"cache keys must be {KEY_BYTES}-byte digests (text_key)")
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}.npz"
        np.savez(tmp, keys=_keys_to_array(keys), vecs=vecs.astype(np.float32))
        os.replace(tmp, self.dir / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz")
        self._rows.update(zip(keys, vecs))


def embed_texts(encoder: TextEncoder, texts: list[str] | tuple[str, ...], *, batch_size: int = 128,
                cache: EmbeddingCache | None = None, desc: str = "encode", progress: bool = True) -> np.ndarray:
    """Embed ``texts`` -> (len(texts), D) float32 unit rows, encoding only texts the cache lacks.

    Texts are batched in order of length so each batch pads little (long ASR lines and short
    captions would otherwise share batches); rows come back in the input order.
    """
    from tqdm.auto import tqdm

    keys = [text_key(t) for t in texts]
    unique: dict[bytes, str] = {}
    for k, t in zip(keys, texts):
        if k not in unique and (cache is None or cache.get(k) is None):
            unique[k] = t
    todo_keys = sorted(unique, key=lambda k: len(unique[k]))
    new: dict[bytes, np.ndarray] = {}
    if todo_keys:
        chunks = []
        with tqdm(total=len(todo_keys), desc=desc, unit="text", disable=not progress, leave=False) as bar:
            for i in range(0, len(todo_keys), batch_size):
                batch = [unique[k] for k in todo_keys[i:i + batch_size]]
                chunks.append(encoder.encode(batch))
                bar.update(len(batch))
        vecs = np.concatenate(chunks)
        new = dict(zip(todo_keys, vecs))
        if cache is not None:
            cache.put(todo_keys, vecs)
    logger.info("%s: %d texts, %d newly encoded, the rest from cache or repeats", desc, len(texts), len(todo_keys))
    rows = [new[k] if k in new else cache.get(k) for k in keys]  # type: ignore[union-attr]
    return np.stack(rows).astype(np.float32, copy=False)
