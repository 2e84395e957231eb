"""Every JSON-lines reader of the project treats a blank line the same way: it is no row. The same
rows, separated by empty, space-only and tab-only lines and ending without a newline, read as the
same rows by the curation manifest, the NMI corpora, the retrieval manifest, the caption
fine-tuning manifest and the training metrics; and a broken line is named by every reader.
Run: .venv/bin/python -m pytest tests/test_common_jsonl.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import UserError

BLANKS = ["", "   ", "\t"]


def _write(path: Path, rows: list[dict]) -> Path:
    """The rows with a blank line of each kind before, between and after them, and no final newline."""
    lines = []
    for row, blank in zip(rows, BLANKS):
        lines += [blank, json.dumps(row)]
    path.write_text("\n".join(lines + [" "]))
    return path


def _media(tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "f.png")
    (tmp_path / "v.mp4").write_bytes(b"")
    return tmp_path / "f.png", tmp_path / "v.mp4"


def test_blank_lines_are_no_rows_for_every_reader(tmp_path):
    from analysis.corpora import read_corpus
    from caption.ofa.finetune import read_manifest
    from pipeline.manifest import ManifestConfig, scan_local
    from train.log import read_metrics
    from train.retrieval_data import load_manifest

    image, video = _media(tmp_path)
    texts = ["a red circle", "a blue square", "a green star"]
    curation = _write(tmp_path / "curate.jsonl", [{"key": f"k{i}", "path": str(video), "text": t}
                                                  for i, t in enumerate(texts)])
    assert [r["key"] for r in scan_local(ManifestConfig(path=str(curation)))] == ["k0", "k1", "k2"]
    corpus = read_corpus(f"c={_write(tmp_path / 'corpus.jsonl', [{'text': t} for t in texts])}:text")
    assert corpus.texts == tuple(texts) and corpus.n_records == 3 and corpus.n_empty == 0
    retrieval = _write(tmp_path / "test.jsonl", [{"video": str(video), "text": t} for t in texts])
    assert [e.texts for e in load_manifest(str(retrieval), "msrvtt")] == [(t,) for t in texts]
    pairs = _write(tmp_path / "pairs.jsonl", [{"image": str(image), "caption": t} for t in texts])
    assert [p.caption for p in read_manifest(pairs)] == texts
    metrics = _write(tmp_path / "metrics.jsonl", [{"kind": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3]


def test_a_broken_line_is_named_by_every_reader(tmp_path):
    from analysis.corpora import read_corpus
    from caption.ofa.finetune import read_manifest
    from train.log import read_metrics
    from train.retrieval_data import load_manifest

    _, video = _media(tmp_path)
    broken = tmp_path / "broken.jsonl"
    good = json.dumps({"video": str(video), "text": "fine", "caption": "fine", "step": 1})
    broken.write_text(good + '\n\n{"text": oops}\n')
    for read in (lambda: read_corpus(f"c={broken}:text"), lambda: read_manifest(broken),
                 lambda: load_manifest(str(broken), "msrvtt"), lambda: read_metrics(broken)):
        with pytest.raises(UserError, match=r"(broken.jsonl:3|broken.jsonl line 3): not valid JSON"):
            read()
