"""video2dataset's WebDataset output read as manifest rows, checked for completeness.

video2dataset writes, per shard, ``<shard>.tar`` (one sample per input: ``<key>.mp4`` with
``<key>.json`` and ``<key>.txt`` for a clip; ``json`` and ``txt`` alone, with ``status``
``failed_to_download`` or ``failed_to_subsample``, for an input it could not process),
``<shard>.parquet`` (the samples' metadata) and, last, ``<shard>_stats.json`` (counts: ``count``,
``successes``, ``failed_to_download``, ``failed_to_subsample``, ...). With clipping, one input
gives several samples keyed ``<key>_<clip>``, each json holding its span in ``clips``.

A sample with an mp4 is a row: the clip's bytes are its video (no span: the mp4 already is the
clip), its subtitle is the ``txt`` member or a json field, and every other json field is carried
into the sample's metadata. A sample without media that video2dataset marked as failed, or as a
success that produced no clip, is not a row (``TarWalk.skipped`` counts them).

A part is refused, never read partly:

- cut short: tarfile treats a file that stops cleanly at a member boundary as a complete archive,
  so a cut there lost samples silently. The tars webdataset and video2dataset write end with the
  end-of-archive marker (zero blocks); a walk that ends without it is refused.
- counts that disagree with its ``_stats.json``: the successes and failures video2dataset
  recorded for the shard must be the ones in the tar.
"""

from __future__ import annotations

import json
import tarfile
from typing import Any, Iterator

from pipeline.errors import ManifestError
from shards.format import passthrough_name, split_member

STATS_SUFFIX = "_stats.json"
# video2dataset's statuses (a sample's json ``status``).
SUCCESS = "success"
MEDIA = frozenset({"mp4", "webm", "mkv", "avi", "mov", "m4a", "mp3", "wav", "flac", "ogg", "opus"})


class _EndAwareTarInfo(tarfile.TarInfo):
    """Records on the tar how its member list ended: at the end-of-archive marker or not."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # an all-zero block: the archive's own end
            tar.clean_end = True
            raise


def stats_url(tar_url: str) -> str | None:
    """``<shard>_stats.json`` beside ``<shard>.tar``, where video2dataset writes it."""
    return tar_url[: -len(".tar")] + STATS_SUFFIX if tar_url.endswith(".tar") else None


class TarWalk:
    """The rows of one video2dataset tar, with what the walk saw (for ``check``)."""

    def __init__(self, url: str, subtitle_field: str) -> None:
        self.url = url
        self.json_field = subtitle_field[5:] if subtitle_field.startswith("json:") else None
        self.text_ext = None if self.json_field else subtitle_field
        self.skipped = 0  # samples without a clip
        self.failed = 0  # of them, inputs video2dataset recorded as failed
        self.sources: set[str] = set()  # inputs video2dataset recorded as successes
        self.complete = False
        self.last_key: str | None = None

    def rows(self, stream: Any, offset: int, read_clips: bool) -> Iterator[tuple[int, dict[str, Any]]]:
        """(byte offset of the sample, row) for each sample with a clip, reading ``stream`` (at
        ``offset`` in the tar) to its end. Clip bytes are read only with ``read_clips``."""
        keep = {"json", self.text_ext} | ({"mp4"} if read_clips else set())
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_EndAwareTarInfo) as tar:
                key, at, members, names = None, -1, {}, {}
                for info in tar:
                    parts = split_member(info.name) if info.isfile() else None
                    if parts is None:
                        continue
                    name, ext = parts
                    if name != key:
                        if key is not None:
                            yield from self._sample(key, at, members, names)
                        key, at, members, names = name, offset + info.offset, {}, {}
                    # A clip's bytes are read only by the shard worker that processes it.
                    members[ext] = tar.extractfile(info).read() if ext in keep else None
                    names[ext] = info.name
                self.complete = getattr(tar, "clean_end", False)  # set when the marker was read
                if key is not None and self.complete:
                    yield from self._sample(key, at, members, names)
        except tarfile.ReadError as exc:  # a member's data stops short of its declared size
            self.complete = False
            if "unexpected end of data" not in str(exc):
                raise
        if not self.complete:
            raise ManifestError(f"manifest part {self.url} is cut short{self._after()}: it ends without the "
                                "end-of-archive marker that webdataset and video2dataset write, so the samples "
                                "after the cut are missing. Copy or download the part again, or leave it out of "
                                "manifest.path")

    def _after(self) -> str:
        return f" after sample {self.last_key!r}" if self.last_key else ""

    def _sample(self, key: str, at: int, members: dict[str, Any], names: dict[str, str]):
        where = f"manifest part {self.url}, sample {key!r}"
        meta: dict[str, Any] = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ManifestError(f"{where}: the json member is not JSON ({exc})") from exc
            if not isinstance(meta, dict):
                raise ManifestError(f"{where}: the json member is not a JSON object")
        self.last_key = key
        status = meta.get("status")
        if status == SUCCESS:
            self.sources.add(key.rsplit("_", 1)[0] if "clips" in meta and "_" in key else key)
        if "mp4" not in members:
            if isinstance(status, str) and (status != SUCCESS or not set(members) & MEDIA):
                self.skipped += 1
                self.failed += int(status != SUCCESS)
                return
            raise ManifestError(f"{where}: no mp4 member (members: {sorted(members)}); curation reads the video "
                                "from <key>.mp4")
        if self.json_field is not None:
            text = meta.get(self.json_field)
        else:
            text = members[self.text_ext].decode("utf-8", "replace") if members.get(self.text_ext) else None
        extra = {k: v for k, v in meta.items() if k != self.json_field}
        if "source_member" in extra:  # the reader's own field: the json's goes under manifest_<name>
            moved = passthrough_name("source_member", extra)
            extra[moved] = extra.pop("source_member")
        extra["source_member"] = names["mp4"]
        yield at, {"key": key.rsplit("/", 1)[-1], "path": self.url, "member": members["mp4"] or b"",
                   "start": None, "end": None, "text": text if isinstance(text, str) else "", "extra": extra}

    def check_stats(self, stats: dict[str, Any], stats_at: str, rows: int) -> None:
        """Refuse a tar whose samples disagree with video2dataset's counts for it."""
        try:
            successes = int(stats["successes"])
            failed = int(stats.get("failed_to_download", 0)) + int(stats.get("failed_to_subsample", 0))
        except (KeyError, TypeError, ValueError):
            return  # another tool's marker (clipvip's own shards have one): nothing to check against
        if (len(self.sources), self.failed) != (successes, failed):
            raise ManifestError(
                f"manifest part {self.url} holds {rows} clip sample(s) from {len(self.sources)} successful input(s) "
                f"and {self.failed} failed one(s), but {stats_at} records successes={successes} and {failed} "
                "failed: the tar is incomplete or not the one video2dataset wrote beside that file. Copy or "
                "download the part again, or leave it out of manifest.path")


def companions(urls: list[str]) -> set[str]:
    """The parquet and ``_stats.json`` files video2dataset writes beside each of these tars: metadata
    of the tar, not manifest parts."""
    tars = {u[: -len(".tar")] for u in urls if u.endswith(".tar")}
    with_stats = {u[: -len(STATS_SUFFIX)] for u in urls if u.endswith(STATS_SUFFIX)} & tars
    return {f"{stem}{suffix}" for stem in with_stats for suffix in (STATS_SUFFIX, ".parquet")}
