"""Crash-isolated decoding (pipeline/decode_worker.py): bad inputs and a really killed decoder
become failure reasons, bugs still raise. Run: ``.venv/bin/python -m pytest tests/pipeline/test_decode_worker.py -q``."""

from __future__ import annotations

import json
import os
import signal

import pytest

from pipeline import decode_worker
from pipeline.decode_worker import CRASH_ENV, DecoderProcess, DecodeWorkerBug
from video.frames import FrameConfig


@pytest.fixture()
def rows(curate_manifest):
    return {r["key"]: r for r in map(json.loads, curate_manifest.read_text().splitlines())}


def test_broken_inputs_become_reasons(rows):
    dec = DecoderProcess(FrameConfig())
    try:
        for key in ("broken_zero_byte", "broken_truncated", "broken_not_video", "broken_garbage"):
            out, reason = dec.decode(rows[key]["path"], None, None)
            assert out is None and "InvalidDataError" in reason, (key, reason)
        out, reason = dec.decode(rows["broken_missing"]["path"], None, None)
        assert out is None and "FileNotFoundError" in reason
        out, reason = dec.decode(rows["broken_span"]["path"], 100.0, 104.0)
        assert out is None and "outside the video" in reason
        out, reason = dec.decode(rows["clip000005"]["path"], None, None)
        assert out is not None and reason == "" and out.jpg[:2] == b"\xff\xd8"
        assert dec.restarts == 0  # expected failures never cost a child
    finally:
        dec.close()


def test_segfaulting_decoder_is_a_failed_row_and_decoding_goes_on(rows, monkeypatch):
    monkeypatch.setenv(CRASH_ENV, "crashme")
    dec = DecoderProcess(FrameConfig())
    try:
        ok, _ = dec.decode(rows["clip000004"]["path"], None, None)
        first_pid = dec.proc.pid
        out, reason = dec.decode(rows["crash_decoder"]["path"], None, None)
        assert out is None and "killed by SIGSEGV" in reason
        again, reason = dec.decode(rows["clip000004"]["path"], None, None)
        assert again is not None and reason == "" and again.jpg == ok.jpg
        assert dec.proc.pid != first_pid and dec.restarts == 1
    finally:
        dec.close()


def test_child_killed_from_outside_is_reported(rows):
    dec = DecoderProcess(FrameConfig())
    try:
        dec.decode(rows["clip000004"]["path"], None, None)
        os.kill(dec.proc.pid, signal.SIGKILL)
        dec.proc.wait()
        # The dead child is noticed before sending, and a fresh one does the work.
        out, reason = dec.decode(rows["clip000004"]["path"], None, None)
        assert out is not None and reason == ""
    finally:
        dec.close()


def test_hang_is_killed_after_timeout(rows, monkeypatch, tmp_path):
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)  # opening a FIFO with no writer blocks forever: a stand-in for a hung decoder
    dec = DecoderProcess(FrameConfig(timeout_s=1.0))
    try:
        out, reason = dec.decode(str(fifo), None, None)
        assert out is None and "timed out" in reason
        out, reason = dec.decode(rows["clip000004"]["path"], None, None)
        assert out is not None
    finally:
        dec.close()


def test_unexpected_exception_in_child_raises(rows, monkeypatch):
    # A start of the wrong type is a programming error, not bad data: it must surface.
    dec = DecoderProcess(FrameConfig())
    try:
        with pytest.raises(DecodeWorkerBug, match="ValueError: could not convert"):
            dec.decode(rows["clip000004"]["path"], "zero", None)
    finally:
        dec.close()


def test_describe_error_is_one_line():
    assert decode_worker.describe_error(ValueError("bad\nthing")) == "ValueError: bad"
    assert decode_worker.describe_error(KeyError()) == "KeyError"


def test_awkward_clips_through_the_child(tmp_path):
    """Clips that used to curate 'ok' with wrong content: through the decode child, a cut WebM and a
    2x2 clip fail with their reason, and a rotated clip comes back upright with its rotation recorded."""
    from demo.synth import write_awkward_clips

    clips = write_awkward_clips(tmp_path)
    dec = DecoderProcess(FrameConfig())
    try:
        for key in ("webm_cut30", "webm_cut50"):
            out, reason = dec.decode(str(clips[key]), None, None)
            assert out is None and reason.startswith("ClipError: ") and "truncated or damaged file" in reason, reason
        out, reason = dec.decode(str(clips["tiny"]), None, None)
        assert out is None and "2x2 px, below the minimum short side of 32 px" in reason
        out, reason = dec.decode(str(clips["rotated"]), None, None)
        assert reason == "" and out.meta()["rotation"] == 90 and (out.width, out.height) == (240, 320)
        out, reason = dec.decode(str(clips["webm"]), None, None)
        assert reason == "" and out.meta()["end"] == 4.0 and out.meta()["rotation"] == 0
        assert dec.restarts == 0
    finally:
        dec.close()
