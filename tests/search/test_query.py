"""The library search call (search/query.py, search/store.py) over the embedded synthetic shards: every
query kind, filters against a numpy reference, paging, more-like-this and near-duplicate folding.
Run: ``.venv/bin/python -m pytest tests/search/test_query.py -q``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def index_dir(demo_index) -> Path:
    return demo_index


@pytest.fixture(scope="module")
def searcher(demo_index):
    from search.query import Searcher

    return Searcher.open([f"demo={demo_index}"], device="cpu")


def _reference(searcher, query: np.ndarray, keep) -> list[str]:
    """Keys by descending float64 score over the rows ``keep(row)`` accepts."""
    store = searcher.stores["demo"]
    rows = store.rows(list(range(len(store))))
    vecs = np.asarray(store.vectors, dtype=np.float64)
    scores = vecs @ query.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return [rows[i]["key"] for i in order if keep(rows[i])]


def test_a_text_query_ranks_every_clip_by_cosine(searcher):
    page = searcher.search("demo", text="a red circle moving left", k=24)
    q = searcher.encode_texts(["a red circle moving left"])[0]
    assert [h.key for h in page.hits] == _reference(searcher, q, lambda r: True)
    assert page.mode == "exact" and not page.has_more
    for vector in (q.tolist(), q):
        same = searcher.search("demo", vector=vector, k=24)
        assert [h.key for h in same.hits] == [h.key for h in page.hits]


@pytest.mark.parametrize("filters, keep", [
    ({"duration_min": 2.0, "duration_max": 3.0}, lambda r: r["duration"] is not None and 2.0 <= r["duration"] <= 3.0),
    ({"subtitle": "RED"}, lambda r: "red" in r["subtitle"].lower()),
    ({"caption": "circle"}, lambda r: "circle" in r["caption"].lower()),
    ({"columns": {"color": "blue"}, "caption": "moving"}, lambda r: r["meta"]["color"] == "blue"
     and "moving" in r["caption"]),
])
def test_filters_return_exactly_the_rows_that_pass(searcher, filters, keep):
    q = searcher.encode_texts(["a shape"])[0]
    want = _reference(searcher, q, keep)
    assert want, "the filter should match some synthetic clips"
    page = searcher.search("demo", text="a shape", k=24, filters=filters)
    assert [h.key for h in page.hits] == want


def test_an_unknown_filter_column_is_refused(searcher):
    from search.store import StoreError

    with pytest.raises(StoreError, match="'colour' is not in this index"):
        searcher.search("demo", text="x", filters={"columns": {"colour": "red"}})


def test_paging_walks_the_same_ranking(searcher):
    full = searcher.search("demo", text="a square", k=12)
    second = searcher.search("demo", text="a square", k=5, offset=5)
    assert [h.key for h in second.hits] == [h.key for h in full.hits[5:10]] and second.has_more


def test_more_like_this_never_returns_the_clip_itself(searcher):
    store = searcher.stores["demo"]
    key = "clip000005"
    page = searcher.search("demo", key=key, k=23)
    assert key not in [h.key for h in page.hits] and len(page.hits) == 23
    assert [h.key for h in page.hits] == [k for k in _reference(searcher, store.vector(store.row_of(key)),
                                                               lambda r: True) if k != key]


def test_folding_keeps_only_distinct_clips(searcher):
    from search.query import QueryError

    searcher.fold_threshold = 0.99
    try:
        page = searcher.search("demo", text="a shape", k=24, fold=True)
    finally:
        searcher.fold_threshold = 0.95
    store = searcher.stores["demo"]
    kept = np.stack([store.vector(h.row) for h in page.hits])
    sims = kept @ kept.T
    assert (sims[~np.eye(len(kept), dtype=bool)] < 0.99).all()
    folded = [(h, d) for h in page.hits for d in h.duplicates]
    assert folded, "the random-weight model puts some synthetic clips within 0.99 of each other"
    for h, d in folded:
        assert store.vector(store.row_of(d)) @ store.vector(h.row) >= 0.99
    assert sorted([h.key for h in page.hits] + [d for _, d in folded]) == sorted(store.meta["key"].to_pylist())
    with pytest.raises(QueryError, match="unknown index"):
        searcher.search("nope", text="x")
    with pytest.raises(QueryError, match="offset \\+ k"):
        searcher.search("demo", text="x", k=10, offset=995)


def test_search_cli_prints_the_results(index_dir):
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "search", "--index", str(index_dir), "--text",
                           "a red circle", "-k", "3", "--where", "color=red", "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("text 'a red circle' in") and len(lines) >= 2
    assert all("red" in line for line in lines[1:])
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "search", "--index", str(index_dir), "--like", "nokey"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"key 'nokey' is not in index {index_dir.name}")
