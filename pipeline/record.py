"""One clip on its way through a shard task: ``ClipRecord``.

A record is made from a manifest row (``pipeline/manifest.py``), filled in by the decode step
(middle frame, training copy, clip facts), then by the caption step, and handed to the shard's
writer (``pipeline/writer.py``), which turns it into a sample, or into a status row only when it
failed. Each step fills in its own fields and never touches another's:

=============  ==========================================================================
step           fields it sets
=============  ==========================================================================
manifest row   ``key``, ``path``, ``member``, ``start``, ``end``, ``text``, ``extra``,
               ``shard``, ``row``
decode         ``jpg``, ``mp4``, ``clip``, ``decode_s``; drops ``member`` (the source bytes)
caption        ``caption``, ``caption_info``, ``caption_s``
any step       ``status``/``error`` through :meth:`ClipRecord.fail`
=============  ==========================================================================

A failed record keeps going: it still reaches the writer, which records its reason in the shard's
status table. Later steps skip it (:attr:`ClipRecord.ok`), so a failure costs no GPU time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shards.format import STATUS_FAILED, STATUS_OK


@dataclasses.dataclass(kw_only=True, slots=True)
class ClipRecord:
    """A clip's state from manifest row to shard sample."""

    key: str
    path: str  # the video (local path or URL), or the video2dataset tar it came from
    text: str  # the subtitle
    extra: dict[str, Any]  # every other manifest field, carried into the sample's metadata
    shard: int
    row: int  # global manifest row: the order of rows in a shard
    start: float | None = None  # span inside the video, seconds; None: the whole video
    end: float | None = None
    member: bytes = b""  # the clip's own bytes when it came out of a tar (video2dataset input)
    status: str = STATUS_OK
    error: str = ""
    # decode
    jpg: bytes = b""  # the middle frame, JPEG
    mp4: bytes = b""  # the training copy, H.264
    clip: dict[str, Any] | None = None  # span, middle time, source and output fps/size, frames
    decode_s: float = 0.0
    # caption
    caption: str = ""
    caption_info: dict[str, Any] | None = None  # model, checkpoint hash, decode settings
    caption_s: float = 0.0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClipRecord:
        """A record from one of ``read_rows``' dicts."""
        return cls(key=row["key"], path=row["path"], text=row["text"], extra=row["extra"], shard=int(row["shard"]),
                   row=int(row["row"]), start=row["start"], end=row["end"], member=row.get("member") or b"",
                   status=row.get("status", STATUS_OK), error=row.get("error", ""))

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def fail(self, reason: str) -> None:
        """Mark the record failed with a one-line ``reason``; it still reaches the writer."""
        self.status, self.error = STATUS_FAILED, reason
