"""The clipvip shard format: one contract shared by the curation writer, the trainer's loader and
the NMI shard reader.

A curated dataset is a folder (local path or any fsspec URL) holding, for input shard ``i``
(manifest rows ``[i*S, (i+1)*S)``)::

    {prefix}-{i:06d}.tar          WebDataset tar: one sample per successfully processed row
    {prefix}-{i:06d}.parquet      one row per input row: key, row, status ("ok"|"failed"), error
    {prefix}-{i:06d}_stats.json   written last; its presence means the shard is complete

and, for the whole run, ``_run.json`` (the run's fingerprint), ``_summary.json`` (counts by
status) and ``sizes.json`` (``{"<prefix>-000000.tar": n_samples, ...}``, the WebDataset
convention).

Each sample in a tar is the members of ``MEMBERS``, named ``<key>.<ext>``, consecutive and in
that order, samples in manifest order. ``__key__`` is the manifest key, which never holds a dot
or slash (WebDataset splits a member name at the first dot of its base name).

Shard patterns (``expand_pattern``) are one syntax everywhere a user names shards: ``::``
separates several patterns, each pattern may hold brace ranges (``shard-{000000..000099}.tar``)
and glob characters (``shards/*.tar``), local or at any fsspec URL. Globs are sorted; the order of
``::`` parts and of brace expansions is kept.
"""

from __future__ import annotations

import glob
import io
import re
import tarfile
from typing import IO, Any, Callable, Iterable, Iterator

from common.errors import UserError

# The members of one sample, in the order they are written.
# The clip span re-encoded for training: H.264, constant frame rate, short side <= 240, always
# BT.601 limited-range yuv420p and tagged so (video/reencode.py), whatever the source.
MP4 = "mp4"
JPG = "jpg"  # the middle frame (on screen at (start+end)/2), short side <= 480
SUBTITLE = "subtitle.txt"  # the manifest's text (ASR subtitle), UTF-8
CAPTION = "caption.txt"  # the caption of the middle frame, UTF-8; empty when captioning is off
META = "json"  # metadata, fields below
MEMBERS = (MP4, JPG, SUBTITLE, CAPTION, META)

# Fields of the ``json`` member written by the pipeline. Every other manifest column (or
# video2dataset json field) is carried through under its own name; one that collides with these
# is stored as ``manifest_<name>`` (``merge_passthrough``).
META_FIELDS = (
    "key", "path",  # the manifest key and the source video (a tar URL for video2dataset input)
    "start", "end", "duration",  # the span in the source, seconds
    "middle_time",  # the timestamp of the middle frame in the source, seconds
    "src_fps", "src_width", "src_height",  # the source stream
    "fps", "width", "height", "n_frames",  # the training mp4
    "rotation", "mirrored",  # the source's display matrix, applied to both outputs
    "caption",  # {"model": ..., settings...}, or {"model": ""} when captioning was off
)
PASSTHROUGH_PREFIX = "manifest_"

STATUS_OK, STATUS_FAILED = "ok", "failed"
STATUS_COLUMNS = ("key", "row", "status", "error")

RUN_FILE = "_run.json"
SUMMARY_FILE = "_summary.json"
SIZES_FILE = "sizes.json"
TMP_MARK = ".tmp-"


def shard_name(prefix: str, shard: int) -> str:
    """``{prefix}-{shard:06d}``: stable across runs because shards are manifest positions."""
    return f"{prefix}-{shard:06d}"


def shard_files(output_dir: str, prefix: str, shard: int) -> dict[str, str]:
    """The tar, status parquet and stats marker of one shard."""
    base = f"{output_dir.rstrip('/')}/{shard_name(prefix, shard)}"
    return {"tar": f"{base}.tar", "parquet": f"{base}.parquet", "stats": f"{base}_stats.json"}


_SHARD_FILE = re.compile(r"^(?P<prefix>.+)-(?P<shard>\d{6})(?P<suffix>\.tar|\.parquet|_stats\.json)$")


def parse_shard_file(name: str) -> tuple[str, int, str] | None:
    """``(prefix, shard, suffix)`` of a shard file's base name, or None for any other file."""
    m = _SHARD_FILE.match(name)
    return (m["prefix"], int(m["shard"]), m["suffix"]) if m else None


def split_member(name: str) -> tuple[str, str] | None:
    """``(sample key with its folder, extension)`` of a tar member name, as WebDataset splits it."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return name[: len(name) - len(base)] + stem, ext.lower()


# ---------------------------------------------------------------------------------------------
# Shard patterns


class PatternError(UserError):
    """A shard pattern that names no file; the message shows the pattern and an example."""


def expand_pattern(spec: str | Iterable[str], *, must_exist: bool = False) -> list[str]:
    """Expand ``'a-{000..009}.tar::b/*.tar'`` (or a list of such) into URLs, in order.

    Brace ranges expand without looking at storage (so a pattern may name shards that do not exist
    yet, as the trainer's loader allows); glob parts list storage and are sorted. ``must_exist``
    raises if a URL does not exist (for inputs, which must).
    """
    import braceexpand

    parts = [spec] if isinstance(spec, str) else list(spec)
    pieces = [p.strip() for part in parts for p in part.split("::") if p.strip()]
    urls: list[str] = []
    for piece in pieces:
        for one in braceexpand.braceexpand(piece):
            if glob.has_magic(one):
                urls += _glob(one)
            else:
                urls.append(one)
    if not urls:
        raise PatternError(f"shard pattern {spec!r} names no file; give e.g. 'shards/shard-{{000000..000009}}.tar', "
                           "'shards/*.tar' or several patterns joined with '::'")
    if must_exist:
        import fsspec

        for url in urls:
            fs, path = fsspec.core.url_to_fs(url)
            if not fs.exists(path):
                raise PatternError(f"{url} (from shard pattern {spec!r}) does not exist")
    return urls


def _glob(pattern: str) -> list[str]:
    if "://" not in pattern:
        return sorted(glob.glob(pattern))
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))


# ---------------------------------------------------------------------------------------------
# Writing


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One regular file with fixed owner, mode and mtime, so a shard's bytes depend only on its rows."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def sample_members(key: str, *, mp4: bytes, jpg: bytes, subtitle: str, caption: str,
                   meta: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The members of one sample, named and ordered as ``MEMBERS``."""
    import json

    return [(f"{key}.{MP4}", mp4), (f"{key}.{JPG}", jpg), (f"{key}.{SUBTITLE}", subtitle.encode()),
            (f"{key}.{CAPTION}", caption.encode()), (f"{key}.{META}", json.dumps(meta, sort_keys=True).encode())]


def passthrough_name(name: str, taken: Iterable[str]) -> str:
    """``name``, or ``manifest_<name>`` (``manifest_manifest_<name>``, ...) while that is taken."""
    taken = set(taken)
    while name in taken:
        name = f"{PASSTHROUGH_PREFIX}{name}"
    return name


def merge_passthrough(meta: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``meta`` plus every carried manifest field: under its own name, or, where the pipeline writes
    that name itself, under ``passthrough_name`` (fields whose names are free are placed first,
    so a manifest's own ``manifest_caption`` keeps its name beside a prefixed ``caption``)."""
    out = dict(meta)
    out.update((name, value) for name, value in extra.items() if name not in meta)
    for name, value in extra.items():
        if name in meta:
            out[passthrough_name(name, out)] = value
    return out


# ---------------------------------------------------------------------------------------------
# Reading


def open_url(url: str) -> IO[bytes]:
    import fsspec

    return fsspec.open(url, "rb").open()


class ShardReadError(OSError):
    """A tar that cannot be opened or ends early; ``url`` names it."""

    def __init__(self, url: str, cause: BaseException) -> None:
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(f"{url}: {reason}")
        self.url, self.cause = url, cause


def iter_tar_samples(url: str, *, wanted: Callable[[str], bool] | None = None, stream: IO[bytes] | None = None,
                     on_error: Callable[[ShardReadError], None] | None = None,
                     offsets: bool = False) -> Iterator[dict[str, Any]]:
    """Samples of one tar, in order: ``{"__key__", "__url__", ext: bytes, ...}``.

    Members of a sample are adjacent (as WebDataset writes them). ``wanted(ext)`` False skips a
    member's bytes without reading them (the NMI reader needs only text); skipped members appear
    as None. ``offsets`` adds ``"__offsets__": {ext: (byte offset of its data in the tar, size)}``,
    so a member can later be read (or served) straight out of the tar. A tar that cannot be opened or ends early is a ``ShardReadError``: given to
    ``on_error`` (then the last, incomplete sample still comes through without its missing
    members, for the consumer to reject), or raised after that sample when there is no callback.
    """
    current: dict[str, Any] | None = None
    try:
        raw = stream if stream is not None else open_url(url)
        with raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                parts = split_member(info.name)
                if parts is None:
                    continue
                key, ext = parts
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                if ext in current:
                    raise ValueError(f"sample {key!r} has two {ext!r} members")
                take = wanted is None or wanted(ext)
                current[ext] = tar.extractfile(info).read() if take else None
                if offsets:
                    current.setdefault("__offsets__", {})[ext] = (int(info.offset_data), int(info.size))
    except (OSError, EOFError, tarfile.TarError, ValueError) as exn:
        error = ShardReadError(url, exn)
        if on_error is not None:
            on_error(error)
        if current is not None:
            yield current
        if on_error is None:
            raise error from exn
        return
    if current is not None:
        yield current


def raw_samples(urls: Iterable[str], on_shard_error: Callable[[ShardReadError], None],
                wanted: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of the tars at ``urls`` in order; a bad tar is reported once and the next one read."""
    for url in urls:
        yield from iter_tar_samples(url, wanted=wanted, on_error=on_shard_error)


def read_sizes(urls: list[str]) -> dict[str, int]:
    """``sizes.json`` beside the first shard (file name -> samples), or {} when absent."""
    import json

    import fsspec

    first = urls[0]
    path = first.rsplit("/", 1)[0] + "/" + SIZES_FILE if "/" in first else SIZES_FILE
    try:
        with fsspec.open(path, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
