"""Text corpora for the domain-gap analysis: parse ``name=path[:field]`` specs and read the texts.

Supported sources, chosen by file extension (an extra ``.gz``/``.bz2``/``.xz``/``.zst`` is
decompressed on the fly):

- ``.txt``: one text per line.
- ``.jsonl`` / ``.ndjson``: one JSON object per line (a blank line is no record); ``field`` names the
  key (default ``text``).
- ``.csv`` / ``.tsv``: a header row; ``field`` names the column (default ``text``).
- ``.parquet``: ``field`` names the column (default ``text``).
- ``.tar``: clipvip WebDataset shards, whose samples carry ``subtitle.txt``, ``caption.txt`` and
  ``json``. ``field`` is ``subtitle`` (default) or ``caption`` (read ``<key>.<field>.txt``), or
  ``json.<key>`` for a key of the sample's json member. The path may be a glob or brace pattern
  (``shards/{00000..00009}.tar``), so one corpus spans many shards.

Nothing is dropped silently: empty texts and duplicates are counted on the :class:`Corpus`, and the
report prints the counts. Empty texts never enter a sample (there is nothing to embed); duplicates do
by default, because repeated queries are part of a corpus's real distribution.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import tarfile
from pathlib import Path
from typing import Iterator

from common.errors import UserError
from common.jsonl import read_objects

logger = logging.getLogger(__name__)

_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
_FORMATS = {
    ".txt": "txt", ".text": "txt",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".pq": "parquet",
    ".tar": "wds",
}
_DEFAULT_FIELD = {"txt": None, "jsonl": "text", "csv": "text", "tsv": "text", "parquet": "text", "wds": "subtitle"}


class CorpusError(UserError):
    """A corpus cannot be used; the message names the corpus, the file and the fix."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class CorpusSpec:
    """One corpus as named on the command line: ``name=path[:field]``."""

    name: str
    path: str
    field: str | None = None

    @classmethod
    def parse(cls, spec: str) -> CorpusSpec:
        """Parse ``name=path[:field]``.

        The field is the part after the last ``:`` when that part holds no ``/`` (so ``s3://...``
        and Windows drive letters stay part of the path).
        """
        name, sep, rest = spec.partition("=")
        name = name.strip()
        if not sep or not name or not rest:
            raise CorpusError(f"corpus spec {spec!r} must look like name=path[:field], e.g. subs=asr.jsonl:text")
        path, field = rest, None
        if ":" in rest:
            head, tail = rest.rsplit(":", 1)
            if tail and "/" not in tail and "\\" not in tail and len(head) > 1 and not head.endswith(":"):
                path, field = head, tail
        return cls(name=name, path=path, field=field)

    def __str__(self) -> str:
        return f"{self.name}={self.path}" + (f":{self.field}" if self.field else "")


@dataclasses.dataclass(kw_only=True, frozen=True)
class Corpus:
    """The texts of one corpus in source order, with the counts the report shows.

    ``texts`` holds every non-empty text (whitespace-stripped), duplicates included.
    """

    name: str
    source: str
    field: str | None
    files: tuple[str, ...]
    texts: tuple[str, ...]
    n_records: int
    n_empty: int
    n_duplicates: int

    @property
    def n_unique(self) -> int:
        return len(self.texts) - self.n_duplicates

    def unique_texts(self) -> tuple[str, ...]:
        """Non-empty texts with later duplicates removed, in source order."""
        return tuple(dict.fromkeys(self.texts))

    def summary(self) -> dict[str, object]:
        """The counts as a JSON-ready dict (texts left out)."""
        return {
            "name": self.name, "source": self.source, "field": self.field, "files": len(self.files),
            "records": self.n_records, "empty": self.n_empty, "non_empty": len(self.texts),
            "duplicates": self.n_duplicates, "unique": self.n_unique,
        }


def detect_format(path: str) -> tuple[str, str | None]:
    """``(format, compression)`` from the file name, e.g. ``("jsonl", "gzip")`` for ``x.jsonl.gz``."""
    p = Path(path.split("?", 1)[0])
    suffixes = [s.lower() for s in p.suffixes]
    compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise CorpusError(
            f"cannot tell the format of {path!r} from its extension; use one of "
            f"{sorted(_FORMATS)} (optionally with {sorted(_COMPRESSION)})"
        )
    return fmt, compression


def expand_paths(pattern: str) -> list[str]:
    """The files a corpus path names, in the shard-pattern syntax every clipvip command shares:
    brace ranges, globs (sorted) and ``::`` lists, local or at any fsspec URL; [] when none match."""
    from shards.format import PatternError, expand_pattern

    try:
        return expand_pattern(pattern)
    except PatternError:
        return []


def _open(path: str, mode: str, compression: str | None):
    import fsspec

    return fsspec.open(path, mode, compression=compression, encoding="utf-8" if "t" in mode else None)


def _as_text(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise CorpusError(f"{where}: the field holds a {type(value).__name__}, not a string")


# Magic numbers of binary formats people pass by mistake, for a hint in the "not text" error.
_MAGIC = ((b"\x1f\x8b", "gzip data: add .gz to the name"), (b"BZh", "bzip2 data: add .bz2 to the name"),
          (b"\xfd7zXZ", "xz data: add .xz to the name"), (b"\x28\xb5\x2f\xfd", "zstd data: add .zst to the name"),
          (b"PAR1", "a parquet file: name it .parquet"), (b"PK\x03\x04", "a zip archive: unpack it first"),
          (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"),
          (b"\x7fELF", "an executable"))


def _not_text(path: str, name: str, lineno: int, raw: bytes, err: UnicodeDecodeError, first: bytes) -> CorpusError:
    hint = next((what for magic, what in _MAGIC if first.startswith(magic)), None)
    if hint is None and first[257:262] == b"ustar":
        hint = "a tar archive: name it .tar"
    bad = raw[err.start:err.start + 1].hex()
    what = f"; it looks like {hint}" if hint else "; is it a binary file? Corpora are UTF-8 text"
    return CorpusError(f"corpus {name!r}: {path} is not UTF-8 text: line {lineno} has byte 0x{bad} at "
                       f"column {err.start + 1}{what}")


def _byte_lines(f, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream, ``\\n`` kept. Reads by chunks, since not every decompressing reader
    (zstandard's, for one) supports iterating by line."""
    pending: list[bytes] = []
    while block := f.read(chunk):
        start = 0
        while (end := block.find(b"\n", start)) != -1:
            yield b"".join(pending) + block[start:end + 1]
            pending, start = [], end + 1
        if start < len(block):
            pending.append(block[start:])
    if pending:
        yield b"".join(pending)


def _text_lines(path: str, compression: str | None, name: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 file, line endings kept; a byte that is not UTF-8 is a
    :class:`CorpusError` naming the line (decoding line by line keeps the number exact, where a
    text stream fails a whole buffer ahead). A UTF-8 byte-order mark is dropped."""
    with _open(path, "rb", compression) as f:
        for lineno, raw in enumerate(_byte_lines(f), 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                with _open(path, "rb", compression) as g:
                    head = g.read(512)
                raise _not_text(path, name, lineno, raw, e, head) from None


def _read_txt(path: str, compression: str | None, field: str | None, name: str) -> Iterator[str]:
    if field:
        raise CorpusError(f"corpus {name!r}: {path} is plain text (a text per line); drop ':{field}' from its spec")
    for _, line in _text_lines(path, compression, name):
        yield line.rstrip("\r\n")


def _read_jsonl(path: str, compression: str | None, field: str, name: str) -> Iterator[str]:
    for i, record in read_objects(_text_lines(path, compression, name), lambda n: f"corpus {name!r}, {path} line {n}",
                                  CorpusError):
        where = f"corpus {name!r}, {path} line {i}"
        if field not in record:
            keys = sorted(record)
            raise CorpusError(
                f"{where}: no field {field!r} (the record has {keys}); name one with {name}=PATH:FIELD")
        yield _as_text(record[field], where)


def _read_csv(path: str, compression: str | None, field: str, name: str, delimiter: str) -> Iterator[str]:
    csv.field_size_limit(1 << 30)
    # csv reads any iterable of lines; lines keep their endings, so quoted fields spanning lines still parse.
    reader = csv.DictReader((line for _, line in _text_lines(path, compression, name)), delimiter=delimiter)
    if reader.fieldnames is None or field not in reader.fieldnames:
        raise CorpusError(
            f"corpus {name!r}: {path} has no column {field!r} (columns: {reader.fieldnames}); "
            f"name one with {name}=PATH:COLUMN"
        )
    for row in reader:
        yield _as_text(row[field], f"corpus {name!r}, {path} line {reader.line_num}")


def _read_parquet(path: str, compression: str | None, field: str, name: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    with _open(path, "rb", compression) as f:
        pf = pq.ParquetFile(f)
        columns = pf.schema_arrow.names
        if field not in columns:
            raise CorpusError(
                f"corpus {name!r}: {path} has no column {field!r} (columns: {columns}); "
                f"name one with {name}=PATH:COLUMN"
            )
        for batch in pf.iter_batches(columns=[field]):
            for value in batch.column(0).to_pylist():
                yield _as_text(value, f"corpus {name!r}, {path} column {field!r}")


def _wds_samples(path: str, compression: str | None, wanted: set[str]) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """``(key, {extension: bytes})`` per sample, read by the shard format's reader.

    Only ``wanted`` extensions are read (shards also carry mp4 and jpg bytes); the rest appear as None.
    """
    from shards.format import iter_tar_samples

    for sample in iter_tar_samples(path, wanted=wanted.__contains__, stream=_open(path, "rb", compression).open()):
        yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}


def _read_wds(path: str, compression: str | None, field: str, name: str) -> Iterator[str]:
    json_key = field[len("json."):] if field.startswith("json.") else None
    wanted = {"json"} if json_key is not None else {field, f"{field}.txt"}
    for key, members in _wds_samples(path, compression, wanted):
        where = f"corpus {name!r}, {path} sample {key!r}"
        if json_key is not None:
            if members.get("json") is None:
                raise CorpusError(f"{where}: no json member (members: {sorted(members)})")
            record = json.loads(members["json"])
            if json_key not in record:
                raise CorpusError(f"{where}: the json member has no key {json_key!r} (keys: {sorted(record)})")
            yield _as_text(record[json_key], where)
            continue
        data = members.get(field) if members.get(field) is not None else members.get(f"{field}.txt")
        if data is None:
            raise CorpusError(
                f"{where}: no {field!r} member (members: {sorted(members)}); use {name}=PATH:subtitle, "
                f"{name}=PATH:caption or {name}=PATH:json.KEY"
            )
        yield data.decode("utf-8")


def _records(path: str, field: str | None, name: str) -> Iterator[str]:
    try:
        fmt, compression = detect_format(path)
    except CorpusError as e:
        raise CorpusError(f"corpus {name!r}: {e}") from None
    field = field or _DEFAULT_FIELD[fmt]
    if fmt == "txt":
        return _read_txt(path, compression, field, name)
    if fmt == "jsonl":
        return _read_jsonl(path, compression, field, name)
    if fmt in ("csv", "tsv"):
        return _read_csv(path, compression, field, name, "\t" if fmt == "tsv" else ",")
    if fmt == "parquet":
        return _read_parquet(path, compression, field, name)
    return _read_wds(path, compression, field, name)


def read_corpus(spec: CorpusSpec | str) -> Corpus:
    """Read every text of one corpus; raise :class:`CorpusError` naming the corpus on any bad input."""
    spec = CorpusSpec.parse(spec) if isinstance(spec, str) else spec
    files = expand_paths(spec.path)
    if not files:
        raise CorpusError(f"corpus {spec.name!r}: no file matches {spec.path!r}; check the path or pattern")
    texts: list[str] = []
    seen: set[str] = set()
    n_records = n_empty = n_duplicates = 0
    for path in files:
        try:
            for raw in _records(path, spec.field, spec.name):
                n_records += 1
                text = raw.strip()
                if not text:
                    n_empty += 1
                    continue
                if text in seen:
                    n_duplicates += 1
                else:
                    seen.add(text)
                texts.append(text)
        except CorpusError:
            raise
        except (OSError, UnicodeDecodeError, tarfile.TarError, csv.Error, json.JSONDecodeError) as e:
            raise CorpusError(f"corpus {spec.name!r}: cannot read {path}: {type(e).__name__}: {e}") from e
        except Exception as e:
            # pyarrow raises its own ArrowInvalid for a file that is not parquet.
            if type(e).__module__.startswith("pyarrow"):
                raise CorpusError(f"corpus {spec.name!r}: cannot read {path}: {type(e).__name__}: {e}") from e
            raise
    if not texts:
        raise CorpusError(
            f"corpus {spec.name!r} ({spec.path}) has no non-empty text ({n_records} records, {n_empty} empty); "
            "check the file and the field name"
        )
    if n_empty or n_duplicates:
        logger.info("corpus %r: %d records, %d empty (skipped), %d duplicate texts (kept)",
                    spec.name, n_records, n_empty, n_duplicates)
    fmt, _ = detect_format(files[0])
    return Corpus(name=spec.name, source=spec.path, field=spec.field or _DEFAULT_FIELD[fmt], files=tuple(files),
                  texts=tuple(texts), n_records=n_records, n_empty=n_empty, n_duplicates=n_duplicates)


def corpus_from_texts(name: str, texts: list[str] | tuple[str, ...], source: str = "<memory>") -> Corpus:
    """A :class:`Corpus` from texts already in memory (tests, notebooks), counted the same way as files."""
    kept = [t.strip() for t in texts if t.strip()]
    if not kept:
        raise CorpusError(f"corpus {name!r} has no non-empty text")
    return Corpus(name=name, source=source, field=None, files=(), texts=tuple(kept), n_records=len(texts),
                  n_empty=len(texts) - len(kept), n_duplicates=len(kept) - len(set(kept)))


def read_all(specs: list[CorpusSpec]) -> list[Corpus]:
    """Read several corpora; names must be unique, since they label the report."""
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CorpusError(f"corpus name(s) {dup} used more than once; give each corpus its own name")
    return [read_corpus(s) for s in specs]

