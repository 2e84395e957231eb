"""The embedding worker: a Ray actor that loads the model once and turns input units into parts.

One call embeds one unit (a shard tar, or a slice of a video manifest) and writes its part where
the data goes, through the curation's storage helpers: the parquet appears whole under its final
name (a rename locally, one upload on object stores), then ``_stats.json``, the completion marker.
A unit redone after a crash overwrites the same names, so every key lands exactly once.

A clip that cannot be decoded is a failed row (counted in the marker with its reason), never a
crash; a shard tar that ends early fails the whole unit, which the driver reports for a rerun.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from common.errors import UserError
from search import parts

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True, frozen=True)
class Unit:
    """One input unit: a shard tar (``url``) or manifest slices (``slices``)."""

    index: int
    url: str = ""
    slices: Any = None


def _batches(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class EmbedActor:
    """Holds one :class:`search.encoder.Encoder`; ``embed_unit`` writes one part."""

    def __init__(self, cfg: Any) -> None:
        import torch

        from search.encoder import Encoder

        if cfg.num_cpus >= 1:
            torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.cfg, self.problem = cfg, ""
        try:
            self.encoder = Encoder.load(cfg.model, tokenizer=cfg.tokenizer or None, device=cfg.device,
                                        num_frames=cfg.num_frames or None, clip_config=cfg.clip_config or None,
                                        precision=cfg.precision, decode_workers=cfg.decode_workers)
        except UserError as exc:  # the driver checked these files: this node sees other ones (or none)
            self.problem = str(exc)
        self.pool = ThreadPoolExecutor(max(1, cfg.decode_workers))

    def describe(self) -> dict[str, Any]:
        """What decides the vectors (``Encoder.describe``), or ``{"problem": ...}`` when the model did
        not load here; the driver checks it before anything is written."""
        return {"problem": self.problem} if self.problem else self.encoder.describe()

    def _decode(self, item: dict[str, Any]) -> tuple[dict[str, Any], Any, str]:
        from search.video import decode_spec
        from train.video import DecodeError, decode_frames

        try:
            if item.get("mp4") is not None:
                frames = decode_frames(item["mp4"], self.encoder.num_frames, train=False)
            elif item.get("shard"):
                raise DecodeError("sample has no mp4 member")
            else:
                frames = decode_spec((item["path"], item.get("start"), item.get("end")), self.encoder.num_frames)
            return item, frames, ""
        except (DecodeError, OSError) as exc:  # an undecodable or unreadable clip: a failed row
            return item, None, f"{type(exc).__name__}: {str(exc)[:200]}"

    def _submit(self, batch: list[dict[str, Any]] | None) -> list[Any] | None:
        return None if batch is None else [self.pool.submit(self._decode, item) for item in batch]

    def _items(self, unit: Unit) -> Iterator[dict[str, Any]]:
        from search.inputs import manifest_rows, tar_samples

        if unit.url:
            for sample in tar_samples(unit.url):
                sample["shard"] = unit.url
                yield sample
        else:
            yield from manifest_rows(unit.slices, self.cfg.manifest_config, unit.index, self.cfg.base_dir)

    def embed_unit(self, unit: Unit) -> dict[str, Any]:
        """Embed every clip of ``unit`` and write its part and marker; return the marker's contents."""
        from pipeline.writer import local_temp, put_file, worker_identity, write_atomic

        if self.problem:
            raise UserError(self.problem)
        t0 = time.time()
        enc = self.encoder
        rows: list[dict[str, Any]] = []
        vectors: list[np.ndarray] = []
        failures: list[tuple[str, str]] = []
        decode_s = encode_s = 0.0
        batches = _batches(self._items(unit), self.cfg.batch_size)
        ahead = self._submit(next(batches, None))
        while ahead is not None:
            t = time.time()
            decoded = [f.result() for f in ahead]
            decode_s += time.time() - t
            ahead = self._submit(next(batches, None))  # the next batch decodes while this one encodes
            ok = [(item, frames) for item, frames, err in decoded if not err]
            failures += [(item["key"], err) for item, _, err in decoded if err]
            if not ok:
                continue
            t = time.time()
            vectors.append(enc.encode_frames([frames for _, frames in ok]))
            encode_s += time.time() - t
            for item, _ in ok:
                item.pop("mp4", None)
                rows.append(item)
        dim = enc.dim
        video = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
        text_vectors = {f"{name}_vector": enc.encode_texts([r[name] or "" for r in rows]) if rows
                        else np.zeros((0, dim), np.float32) for name in self.cfg.texts}
        table = parts.build_table(rows, video, text_vectors, enc.model_id, dim)
        base = f"{self.cfg.output_dir.rstrip('/')}/{parts.part_name(unit.index)}"
        tmp = local_temp(f"{base}.parquet")
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
        put_file(tmp, f"{base}.parquet")
        stats = {"unit": unit.index, "input": unit.url or "manifest", "rows": len(rows) + len(failures),
                 "counts": {"ok": len(rows), **({"failed": len(failures)} if failures else {})},
                 "samples": len(rows), "failures": dict(failures[:20]), "model_id": enc.model_id,
                 "timings": {"decode_s": round(decode_s, 3), "encode_s": round(encode_s, 3),
                             "wall_s": round(time.time() - t0, 3)},
                 "written_by": worker_identity(), "written_at": time.time()}
        write_atomic(f"{base}_stats.json", json.dumps(stats, indent=1).encode())
        return stats
