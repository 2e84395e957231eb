"""Writing local files and folders so that a reader never sees half of one.

A file is written beside its final name and renamed over it (atomic within one file system). A
folder is built under a temporary name and moved into place; an earlier folder of that name is
set aside first and deleted only once the new one is in, so a crash leaves either the old or the
new folder, never a mix. (Object stores have no rename: the curation writer uploads each file
once under its final name instead; see ``pipeline/writer.py``.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """This process's file-mode creation mask, read without changing it where Linux tells it
    (``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: str | Path) -> None:
    """Give ``path`` the mode a new file (or folder) gets from ``open`` (``mkdir``) under the umask.

    ``tempfile.mkstemp``/``mkdtemp`` and safetensors' ``save_file`` create 0600 files and 0700
    folders, so a model or checkpoint written through them would be unreadable to anyone else, such
    as Ray workers running under another account; everything this project writes gets the mode the
    user's umask asks for instead.
    """
    path = Path(path)
    full = 0o777 if path.is_dir() else 0o666
    path.chmod(full & ~umask())


def write_safetensors(tensors: dict, path: str | Path) -> None:
    """``safetensors.torch.save_file`` with the umask's file mode (see :func:`give_default_mode`)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    give_default_mode(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        give_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def temp_dir_beside(final: str | Path) -> Path:
    """An empty folder on the same file system as ``final``, for building what will replace it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    give_default_mode(tmp)  # mkdtemp makes it 0700; the folder gets what any new folder would
    return tmp


@contextlib.contextmanager
def built_aside(final: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` to build in: when the block ends normally it replaces
    ``final`` whole (:func:`replace_dir`); when it raises, the folder is removed and ``final`` is as
    it was."""
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an earlier ``final`` whole."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
