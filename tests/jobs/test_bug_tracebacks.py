"""A bug is never reported as the user's mistake: every command catches ``common.errors.UserError``
and nothing broader, so an exception of any other kind raised deep inside a command (here a plain
``ValueError`` injected into a library function the command calls) reaches stderr with its
traceback and exit code 1, not as a one-line "error:" with exit code 2.

Each case runs the real ``clipvip`` dispatcher in a fresh interpreter with one library function
replaced before the command imports it. Run: .venv/bin/python -m pytest tests/jobs/test_bug_tracebacks.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_with_bug(module: str, function: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"import {module} as target\n"
        "def injected(*args, **kwargs):\n"
        "    raise ValueError('injected bug: a wrong index deep in the library')\n"
        f"target.{function} = injected\n"
        "from jobs import cli\n"
        f"sys.exit(cli.main({argv!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_traceback(proc: subprocess.CompletedProcess, prog: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: injected bug: a wrong index deep in the library" in proc.stderr
    assert f"{prog}: error:" not in proc.stderr


def test_nmi_shows_a_bug_in_the_corpus_reader(tmp_path):
    (tmp_path / "a.txt").write_text("a red circle moves left\n" * 5)
    (tmp_path / "b.txt").write_text("so um yeah we went there\n" * 5)
    proc = run_with_bug("analysis.corpora", "read_corpus",
                        ["nmi", "a=a.txt", "b=b.txt", "--n", "2", "--out", str(tmp_path / "report")], tmp_path)
    _assert_traceback(proc, "clipvip nmi")
    assert not (tmp_path / "report").exists()


def test_caption_shows_a_bug_in_the_image_reader(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "frame.jpg")
    proc = run_with_bug("caption.ofa.preprocess", "load_image",
                        ["caption", "images", "--model", "ofa:nowhere", str(tmp_path / "frame.jpg")], tmp_path)
    _assert_traceback(proc, "clipvip caption")


def test_evaluate_shows_a_bug_in_the_model_loader(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    (tmp_path / "v0.mp4").write_bytes(b"")
    (tmp_path / "test.jsonl").write_text(json.dumps({"video": "v0.mp4", "text": "a red circle"}) + "\n")
    proc = run_with_bug("model.convert", "load_checkpoint",
                        ["evaluate", "--model", str(model), "--tokenizer", "openai/clip-vit-base-patch32",
                         "--dataset", "msrvtt", "--manifest", str(tmp_path / "test.jsonl"),
                         "--video-root", str(tmp_path)], tmp_path)
    _assert_traceback(proc, "clipvip evaluate")


@pytest.mark.parametrize("command", ["nmi", "caption"])
def test_the_same_inputs_without_the_bug_are_one_line_user_errors(command, tmp_path):
    """The control: what the user did get wrong is still one line and exit code 2."""
    argv = (["nmi", "a=missing.txt", "b=missing.txt", "--out", str(tmp_path / "r")] if command == "nmi" else
            ["caption", "images", "--model", "ofa:nowhere", str(tmp_path / "missing.jpg")])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " WARNING " not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"clipvip {command}: error: ") and "missing" in lines[0]
