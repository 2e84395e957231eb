"""``clipvip demo --small``: every stage runs and the report holds every section, with numbers that
come from the run (recomputed here from the saved embeddings, the claims' intervals included), and
says that its numbers are a smoke test.

Run alone: ``.venv/bin/python -m pytest tests/jobs/test_demo.py -q`` (under a minute on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import demo as demo_cli
from demo.config import VARIANTS, DemoConfig, small
from demo.training import finetune_runs, pretrain_runs
from demo.direction import build_pairs, flip_direction, score_pairs
from model.metrics import evaluate_all


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert demo_cli.main(["--small", "--out", str(out)]) == 0
    return out


def test_report_has_every_section_and_picture(demo_run):
    report = (demo_run / "report" / "report.md").read_text()
    for heading in ("## What this run shows", "## What the numbers mean", "## Data", "## The captioner",
                    "## Curation", "## Domain gap (NMI, k=2)", "## The paper's claims, tested",
                    "## Retrieval on the held-out test clips", "## Fine-tuning", "## Loss curves", "## Time",
                    "## Commands"):
        assert heading in report, heading
    for name in VARIANTS:
        assert f"| {name} |" in report
    assert "| chance |" in report
    for pic in ("loss_curves.png", "nmi_matrix.png", "caption_examples.png"):
        assert (demo_run / "report" / pic).stat().st_size > 1000
    assert "tiny randomly initialised" in report  # no weights given: the report says so
    commands = (demo_run / "report" / "commands.txt").read_text().splitlines()
    runs = pretrain_runs(small(DemoConfig()))
    assert len(runs) == 2 * len(DemoConfig().variants)  # every variant at both seeds: every claim has seeds
    assert sum(c.startswith("clipvip pretrain") for c in commands) == len(runs)
    assert sum(c.startswith("clipvip finetune") for c in commands) == 4  # proxy and mean pooling at both seeds
    assert sum(c.startswith("clipvip caption finetune") for c in commands) == 1
    # --small says what it is, at the top and in every claim's sentence, and claims nothing.
    assert "**Smoke test (`--small`).**" in report.split("## What this run shows")[0]
    assert "**smoke test only**" in report and "Reached at this scale" not in report
    assert "Not reached at this scale" not in report
    # The NMI analysis is linked, not pasted: one top-level heading, the heatmap once.
    assert report.count("\n# ") == 0 and report.count("](nmi_matrix.png)") == 1
    assert "(../nmi/report.md)" in report and (demo_run / "nmi" / "report.md").is_file()


def test_the_reported_training_commands_rebuild_each_run(demo_run):
    """Each ``clipvip pretrain|finetune`` line in commands.txt, parsed as the CLI parses it, gives the
    config the demo's run saved, and names no setting its task would ignore."""
    import dataclasses
    import shlex

    from common.jsonio import strict_json
    from jobs.train_cli import parse
    from train.tasks import get_task

    lines = [c for c in (demo_run / "report" / "commands.txt").read_text().splitlines()
             if c.startswith(("clipvip pretrain", "clipvip finetune"))]
    assert len(lines) == len(pretrain_runs(small(DemoConfig()))) + len(finetune_runs(small(DemoConfig())))
    for line in lines:
        job, *argv = shlex.split(line)[1:]
        cfg = parse(argv, f"clipvip {job}", "debug", job)
        saved = json.loads((Path(cfg.run_dir) / "config.json").read_text())
        assert strict_json(dataclasses.asdict(cfg)) == saved, line
        assert get_task(cfg).ignored(cfg) == [], line


def test_numbers_come_from_the_saved_embeddings(demo_run):
    results = json.loads((demo_run / "report" / "results.json").read_text())
    for name, ev in results["evaluation"].items():
        feats = np.load(ev["features"])
        recomputed = evaluate_all(feats["text"], feats["video"])
        assert recomputed["t2v_r1"] == pytest.approx(ev["retrieval"]["t2v_r1"])
        assert recomputed["dsl_t2v_r1"] == pytest.approx(ev["retrieval"]["dsl_t2v_r1"])
        direction = score_pairs(feats["pair_video"], feats["pair_text"])
        assert direction.pair_accuracy == pytest.approx(ev["direction"]["pair_accuracy"])
    assert results["curate"]["summary"]["counts"]["ok"] == results["data"]["pretrain_clips"]
    assert set(results["finetuned"]) == set(DemoConfig().finetune_variants)
    assert [[r["seed"] for r in runs] for runs in results["finetuned"].values()] == [[0, 1], [0, 1]]
    for ft in results["finetune"]["runs"].values():
        assert ft["selection"]["split"] == "val"


def test_claim_table_reports_every_seed_from_its_own_run(demo_run):
    results = json.loads((demo_run / "report" / "results.json").read_text())
    report = (demo_run / "report" / "report.md").read_text()
    cfg = DemoConfig()
    assert list(results["seeds"]) == list(cfg.claim_variants)
    for name, runs in results["seeds"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        assert runs[0]["features"] != runs[1]["features"]
        for r in runs:  # every per-seed number is the one its saved embeddings give
            feats = np.load(r["features"])
            assert evaluate_all(feats["text"], feats["video"])["t2v_r1"] == pytest.approx(r["retrieval"]["t2v_r1"])
        assert f"| {name} |" in report
    assert results["seeds"]["proxy_ocl"][0]["retrieval"] == results["evaluation"]["proxy_ocl"]["retrieval"]
    nmi = results["nmi"]["vs_descriptions"]
    assert set(nmi) == {"subtitles", "captions"} and all(0.0 <= v <= 1.0 for v in nmi.values())
    acc = results["captioner"]["heldout_accuracy"]
    assert acc["n"] == small(cfg).n_caption_heldout and 0.0 <= acc["both"] <= min(acc["color"], acc["shape"])
    assert results["curate"]["caption_accuracy"]["n"] == results["data"]["pretrain_clips"]


def test_mean_pooling_scores_chance_on_direction_by_construction(demo_run):
    results = json.loads((demo_run / "report" / "results.json").read_text())
    assert results["evaluation"]["meanpool_ocl"]["direction"]["pair_accuracy"] == 0.5
    from model.convert import load_checkpoint

    model = load_checkpoint(results["pretrain"]["runs"]["meanpool_ocl"]).eval()
    videos = torch.randn(3, 12, 3, 32, 32)
    pair_videos, texts = build_pairs(videos, ["a red circle moving left", "a blue square moving up",
                                              "a cyan triangle moving right"])
    assert texts[3:] == [flip_direction(t) for t in texts[:3]]
    with torch.no_grad():
        feats = model.encode_video(pair_videos)
    torch.testing.assert_close(feats[:3], feats[3:], atol=1e-5, rtol=0)


def test_each_claim_reports_its_seeds_and_a_paired_interval_from_the_saved_embeddings(demo_run):
    """Every claim's per-seed values are the saved embeddings' metrics, and its interval is a paired
    bootstrap over the test queries recomputed here independently (numpy, other code path)."""
    results = json.loads((demo_run / "report" / "results.json").read_text())
    report = (demo_run / "report" / "report.md").read_text()
    claims = {c["key"]: c for c in results["claims"]}
    assert set(claims) == {"captions_help", "subtitles_help", "proxy_vs_joint", "proxy_vs_meanpool",
                           "proxy_vs_meanpool_finetuned"}
    groups = {**results["seeds"], **{f"{k}_finetuned": v for k, v in results["finetuned"].items()}}
    def credit(run):
        """R@1 credit per query and seed; a query tied with m other videos gets 1/(m+1), as the
        official rule averages its tied positions. Also whether any query tied."""
        out, ties = [], False
        for r in run:
            f = np.load(r["features"])
            sim = f["text"].astype(np.float64) @ f["video"].astype(np.float64).T
            gt = np.diag(sim)[:, None]
            better, tied = (sim > gt).sum(1), (sim == gt).sum(1) - 1
            out.append(np.where(better == 0, 1.0 / (tied + 1), 0.0))
            ties |= bool(tied.any())
        return np.array(out), ties

    for claim in claims.values():
        assert f"A = `{claim['a']}`, B = `{claim['b']}`" in report
        first = claim["differences"][0]
        assert first["seeds"] == [0, 1]
        assert first["mean"] == pytest.approx(np.mean(first["a"]) - np.mean(first["b"]))
        assert first["low"] <= first["mean"] <= first["high"]
        a, b = groups[claim["a"]], groups[claim["b"]]
        if first["metric"] != "t2v_r1":
            assert first["a"] == pytest.approx([r["direction"]["pair_accuracy"] for r in a])
            continue
        (ca, ties_a), (cb, _) = credit(a), credit(b)
        assert ca.mean(axis=1) * 100 == pytest.approx(first["a"])
        if not ties_a:  # then the per-query credits average to the reported R@1 exactly
            assert first["a"] == pytest.approx([r["retrieval"]["t2v_r1"] for r in a])
        # The interval again: the same resample of the queries for both models and both seeds.
        idx = np.random.default_rng(0).integers(0, ca.shape[1], size=(2000, ca.shape[1]))
        boot = (ca[:, idx] - cb[:, idx]).mean(axis=2).mean(axis=0) * 100
        assert (first["low"], first["high"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))


def test_the_demo_ends_with_search(demo_run):
    """The last stage embeds and indexes the curated clips, draws the query examples and prints the
    search and serve commands for its own index."""
    examples = json.loads((demo_run / "search" / "examples.json").read_text())
    assert examples["embed"]["units_complete"] == examples["embed"]["units"]
    assert examples["index"]["count"] == examples["embed"]["counts"]["ok"]
    assert len(examples["examples"]) == 4 and all(len(e["top5"]) == 5 for e in examples["examples"])
    assert (demo_run / "report" / "search_examples.png").stat().st_size > 1000
    commands = (demo_run / "report" / "commands.txt").read_text().splitlines()
    assert any(c.startswith("clipvip search --index ") for c in commands)
    assert f"clipvip serve --index demo={demo_run / 'search' / 'index'}" in commands
