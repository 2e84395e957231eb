"""One curation run at a time per output folder.

Two runs writing into one folder would each take the other's temporary files for an interrupted
run's leftovers and delete them, and both would report success. So a run holds an exclusive lock
on the folder itself (``flock`` on the directory: nothing is written to take it) from before it
compares fingerprints (or, with ``writer.overwrite``, deletes an older run) until its summary is
written; a second run is refused at once, naming the folder. The kernel drops the lock with the
process, so a killed run never leaves a stale one behind.

Local folders only: an object store has no lock, and a file system whose folders cannot be
locked (some network file systems) gets a warning instead; do not start two runs there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator

from pipeline.errors import SetupError

logger = logging.getLogger(__name__)


class OutputBusy(SetupError):
    """Another curation run holds the output folder."""


@contextlib.contextmanager
def output_lock(output_dir: str) -> Iterator[None]:
    """Hold ``output_dir`` for this run (created when missing); raise :class:`OutputBusy` if another run does."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        yield  # object stores: no lock to take
        return
    path = output_dir.removeprefix("file://")
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputBusy(f"writer.output_dir {path} is being written by another curation run right now; "
                                 "wait for it to finish (then rerun to resume) or give another writer.output_dir"
                                 ) from None
            logger.warning("cannot lock writer.output_dir %s (%s): make sure no other curation run writes there "
                           "at the same time", path, exc.strerror)
        yield
    finally:
        os.close(fd)  # releases the lock
