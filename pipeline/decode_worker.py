"""Decode in a child process the caller can afford to lose.

Video decoders are C code fed untrusted bytes: decord can segfault on a broken file, which would
take down a Ray worker and, after retries, the whole job. ``DecoderProcess`` keeps one persistent
child (``python -m pipeline.decode_worker``) per calling process. A clip that kills the child or
hangs past the timeout becomes a failed result with the reason; the next call starts a fresh
child. Expected decode failures come back as failed results too; a bug in the decode code comes
back as ``DecodeWorkerBug`` and is raised in the caller, so it is never mistaken for bad data.

Protocol: length-prefixed pickles on the child's stdin/stdout (the child moves its own stdout to
stderr first, so a stray print from a library cannot corrupt the stream).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, BinaryIO

from video.frames import EXPECTED_ERRORS, ClipOutput, FrameConfig, process_clip

logger = logging.getLogger(__name__)

# Test hook: a path containing this substring makes the child kill itself with SIGSEGV, the way a
# decoder crash does, so tests exercise the real recovery path.
CRASH_ENV = "CLIPVIP_DECODE_CRASH_ON"
_HEADER = struct.Struct("<Q")


class DecodeWorkerBug(RuntimeError):
    """The decode code itself raised an unexpected exception (traceback from the child included)."""


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """Read n bytes from fd; None on EOF; TimeoutError past the deadline."""
    import time

    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class DecoderProcess:
    """One persistent decode child; ``decode`` never lets the child's death escape as a crash."""

    def __init__(self, cfg: FrameConfig):
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        atexit.register(self.close)

    def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.decode_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=root)
        _send(self.proc.stdin, self.cfg)

    def decode(self, path: str, start: float | None, end: float | None) -> tuple[ClipOutput | None, str]:
        """Process one clip in the child. Returns (output, "") or (None, reason)."""
        import time

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _send(self.proc.stdin, (str(path), start, end))
            deadline = time.monotonic() + self.cfg.timeout_s if self.cfg.timeout_s > 0 else None
            fd = self.proc.stdout.fileno()
            header = _read_exact(fd, _HEADER.size, deadline)
            body = _read_exact(fd, _HEADER.unpack(header)[0], deadline) if header else None
        except TimeoutError:
            self._kill()
            return None, f"decode timed out after {self.cfg.timeout_s:g} s (decoder killed)"
        except BrokenPipeError:
            body = None
        if body is None:
            return None, f"decoder process died ({self._reap()}) while decoding this clip"
        kind, value = pickle.loads(body)
        if kind == "bug":
            raise DecodeWorkerBug(f"decoding {path} raised an unexpected error in the decode child:\n{value}")
        return (value, "") if kind == "ok" else (None, value)

    def _reap(self) -> str:
        assert self.proc is not None
        code = self.proc.wait()
        self.proc = None
        self.restarts += 1
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.restarts += 1

    def close(self) -> None:
        """Stop the child (it also exits by itself when its stdin closes)."""
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
            self.proc = None


def describe_error(exc: BaseException) -> str:
    """A one-line failure reason: the exception type and message."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _child_main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    crash_on = os.environ.get(CRASH_ENV, "")

    def recv() -> Any:
        header = inp.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return None
        return pickle.loads(inp.read(_HEADER.unpack(header)[0]))

    cfg = recv()
    while (request := recv()) is not None:
        path, start, end = request
        if crash_on and crash_on in path:
            os.kill(os.getpid(), signal.SIGSEGV)
        try:
            reply = ("ok", process_clip(path, start, end, cfg))
        except EXPECTED_ERRORS as exc:
            reply = ("failed", describe_error(exc))
        except Exception:  # noqa: BLE001 - sent to the parent, which raises it
            reply = ("bug", traceback.format_exc())
        _send(out, reply)


if __name__ == "__main__":
    _child_main()
