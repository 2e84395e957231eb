"""demo/stats.py and the report's number formatting: per-query R@k credit against the library's
metrics (with and without exact ties), the paired bootstrap against a direct computation, and
percentages that never round a near-miss to 100%.

Run: .venv/bin/python -m pytest tests/demo/test_stats.py -q
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from demo.config import FIELD_HELP, DemoConfig
from demo.report import pct
from demo.stats import paired_difference, rank_credit, top1_correct
from model.metrics import retrieval_metrics


def test_rank_credit_averages_to_the_reported_recall():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(40, 40))
    m = retrieval_metrics(sim)
    for k in (1, 5, 10):
        assert 100 * rank_credit(sim, k).mean() == pytest.approx(m[f"t2v_r{k}"])
    # Exact ties: every video scores the same for every text (a collapsed model). The official rule
    # averages each query's tied positions: R@1 is 1/N, and so is every query's credit.
    flat = np.zeros((12, 12))
    assert rank_credit(flat, 1) == pytest.approx(np.full(12, 1 / 12))
    assert 100 * rank_credit(flat, 1).mean() == pytest.approx(retrieval_metrics(flat)["t2v_r1"])
    assert rank_credit(flat, 5) == pytest.approx(np.full(12, 5 / 12))


def test_top1_correct_reads_the_attribute_of_the_best_video():
    rows = [{"color": "red"}, {"color": "blue"}, {"color": "red"}]
    sim = np.array([[0.1, 0.0, 0.9], [0.0, 1.0, 0.0], [0.0, 0.8, 0.1]])
    assert top1_correct(sim, rows, "color").tolist() == [1.0, 1.0, 0.0]


def test_paired_bootstrap_matches_a_direct_computation():
    rng = np.random.default_rng(3)
    a = [rng.random(50) < 0.3, rng.random(50) < 0.35]
    b = [rng.random(50) < 0.1, rng.random(50) < 0.1]
    d = paired_difference("t2v_r1", [0, 1], a, b)
    assert d.per_seed == pytest.approx([100 * (a[i].mean() - b[i].mean()) for i in (0, 1)])
    assert d.mean == pytest.approx(np.mean(d.per_seed)) and d.n_queries == 50
    # Direct: the same query resample for both models and both seeds, seed-averaged difference.
    idx = np.random.default_rng(0).integers(0, 50, size=(2000, 50))
    boot = [100 * np.mean([a[s][i].mean() - b[s][i].mean() for s in (0, 1)]) for i in idx]
    assert (d.low, d.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    assert d.verdict == ("A" if d.low > 0 else "neither")
    same = paired_difference("t2v_r1", [0], [a[0]], [a[0]])
    assert (same.mean, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "neither")
    worse = paired_difference("t2v_r1", [0, 1], b, a)
    assert worse.high < 0 and worse.verdict == "B"


def test_percentages_never_round_a_near_miss_to_all_or_nothing():
    assert pct(0.9986) == "99.9%" and pct(1.0) == "100%" and pct(0.5) == "50%"
    assert pct(0.0004) == "0.04%" and pct(0.0) == "0%" and pct(0.99999) == "99.999%"


def test_every_demo_field_is_explained_in_the_help():
    assert {f.name for f in dataclasses.fields(DemoConfig)} == set(FIELD_HELP)
