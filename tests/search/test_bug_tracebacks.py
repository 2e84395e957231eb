"""A bug in ``clipvip search``, ``index`` or ``embed`` is never reported as the user's mistake: the
commands catch ``common.errors.UserError`` and nothing broader, so a plain ``ValueError`` injected into
a library function they call reaches stderr with its traceback and exit code 1; the user's own
mistakes (a vector of the wrong size, a folder that holds no embedding run, a model whose weights do
not match its config) stay one line with exit code 2. Neither writes anything.

Each case runs the real ``clipvip`` dispatcher in a fresh interpreter (the injection is
``tests/jobs/test_bug_tracebacks.run_with_bug``). Run:
``.venv/bin/python -m pytest tests/search/test_bug_tracebacks.py -q``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo.vectors import clustered
from tests.jobs.test_bug_tracebacks import ROOT, _assert_traceback, run_with_bug
from tests.search.conftest import write_parts


def _one_line(argv: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"clipvip {argv[0]}: error: ") and "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    from search.index import IndexConfig, build

    folder = tmp_path_factory.mktemp("small")
    write_parts(folder / "parts", [clustered(60, 16, topics=6, seed=2)])
    build(IndexConfig(embeddings=str(folder / "parts"), out=str(folder / "index"), queries=20))
    return folder


def test_search_shows_a_bug_in_the_ranking(small_index, tmp_path):
    np.save(tmp_path / "q.npy", clustered(1, 16, topics=6, seed=2)[0])
    argv = ["search", "--index", str(small_index / "index"), "--vector", str(tmp_path / "q.npy")]
    _assert_traceback(run_with_bug("search.query", "ranked", argv, tmp_path), "clipvip search")
    np.save(tmp_path / "q8.npy", np.ones(8, np.float32))
    line = _one_line(["search", "--index", str(small_index / "index"), "--vector", str(tmp_path / "q8.npy")],
                     tmp_path)
    assert "takes 16 finite numbers, got 8" in line


def test_index_shows_a_bug_in_the_metadata_table_and_writes_nothing(small_index, tmp_path):
    argv = ["index", "--embeddings", str(small_index / "parts"), "--out", str(tmp_path / "index")]
    _assert_traceback(run_with_bug("search.index", "metadata_table", argv, tmp_path), "clipvip index")
    assert not (tmp_path / "index").exists()
    (tmp_path / "empty").mkdir()
    line = _one_line(["index", "--embeddings", str(tmp_path / "empty"), "--out", str(tmp_path / "index")], tmp_path)
    assert "holds no embedding run" in line and not (tmp_path / "index").exists()


def test_embed_shows_a_bug_in_the_model_check_and_refuses_a_mismatched_model_before_writing(search_model,
                                                                                               tmp_path):
    """The model is checked in the driver, before Ray starts and before anything is written: a bug in
    that check is a traceback; weights that do not match their config.json (here, a config that says
    the embedding has 16 dimensions where the weights have 32) are one line naming the file."""
    model_dir, tok = search_model
    argv = ["embed", "--model", model_dir, "--tokenizer", tok, "--shards", str(tmp_path / "s-{000000..000001}.tar"),
            "--out", str(tmp_path / "parts")]
    _assert_traceback(run_with_bug("search.model_files", "check_model_dir", argv, tmp_path), "clipvip embed")
    assert not (tmp_path / "parts").exists()
    wrong = tmp_path / "wrong"
    shutil.copytree(model_dir, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "embed_dim": config["embed_dim"] // 2}))
    line = _one_line(["embed", "--model", str(wrong), *argv[3:]], tmp_path)
    assert f"{wrong / 'model.safetensors'} does not match {wrong / 'config.json'}" in line
    assert "the config needs" in line and not (tmp_path / "parts").exists()
