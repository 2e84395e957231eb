"""Role assignment and scoring (analysis/report.py) and the rendering layer (analysis/render.py, analysis/plots.py).

Reports are built by ``analysis.report.analyse`` from embeddings made here (no encoder), so each
test controls the geometry: well-separated corpora, a pair whose K-means split flips between seeds,
a corpus whose file is sorted by topic.
Run: ``.venv/bin/python -m pytest tests/analysis/test_report.py -q``.
"""

from __future__ import annotations

import json

import matplotlib.axes
import numpy as np
import pytest

from analysis.corpora import corpus_from_texts
from analysis.render import OutputError, markdown, report_dict, write_report
from analysis.report import NMIConfig, analyse, assign_roles, draw_samples


def test_roles_decide_the_focus_pairs():
    _, roles, focus = assign_roles(NMIConfig(pretrain=("s=a.txt", "c=b.txt"), downstream=("m=c.txt",),
                                             corpora=("x=d.txt",)))
    assert focus == [("s", "m"), ("c", "m")] and roles["x"] == "other"
    # Only one side named: the unlabelled corpora are the other side.
    _, _, focus = assign_roles(NMIConfig(pretrain=("s=a.txt",), corpora=("m=c.txt", "d=d.txt")))
    assert focus == [("s", "m"), ("s", "d")]
    # No roles: every pair.
    _, _, focus = assign_roles(NMIConfig(corpora=("a=a.txt", "b=b.txt", "c=c.txt")))
    assert focus == [("a", "b"), ("a", "c"), ("b", "c")]


ENCODER = {"name": "test-encoder", "dtype": "bfloat16", "max_length": 64, "device": "cpu"}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(names, roles, *, seeds=(0, 1, 2), n=60, size=200, geometry=None, **cfg_kw):
    """A report of ``names`` (each a corpus of ``size`` texts) from made-up embeddings.

    ``geometry(seed, i, rows)`` gives corpus i's (n, D) embeddings for the sampled ``rows``; by default
    each corpus is a blob around its own axis, far from the others.
    """
    pre = tuple(f"{a}=x.txt" for a in names if roles.get(a) == "pretrain")
    down = tuple(f"{a}=x.txt" for a in names if roles.get(a) == "downstream")
    other = tuple(f"{a}=x.txt" for a in names if roles.get(a, "other") == "other")
    cfg = NMIConfig(pretrain=pre, downstream=down, corpora=other, n=n, seeds=seeds, cache_dir=None,
                    progress=False, **cfg_kw)
    specs, role_map, focus = assign_roles(cfg)
    corpora = [corpus_from_texts(s.name, [f"{s.name} text {k}" for k in range(size)]) for s in specs]
    samples = draw_samples(cfg, corpora)
    dim = max(16, len(corpora) + 2)

    def blobs(seed, i, rows):
        rng = np.random.default_rng([seed, i])
        return _unit(np.eye(dim)[i] * 4 + rng.standard_normal((len(rows), dim)) * 0.5)

    geometry = geometry or blobs
    embs = {s: [geometry(s, i, samples[s][i].indices) for i in range(len(corpora))] for s in cfg.seeds}
    return analyse(cfg, corpora, samples, embs, roles=role_map, focus=focus, encoder=ENCODER, cache_id="test")


@pytest.fixture()
def drawn_text(monkeypatch):
    """Every string drawn with Axes.text, and every red frame added, while the test runs."""
    record = {"text": [], "frames": 0}
    text, add_patch = matplotlib.axes.Axes.text, matplotlib.axes.Axes.add_patch

    def spy_text(self, x, y, s, *a, **kw):
        record["text"].append(str(s))
        return text(self, x, y, s, *a, **kw)

    def spy_patch(self, patch):
        if getattr(patch, "get_edgecolor", None) and patch.get_edgecolor()[0] > 0.8 > patch.get_edgecolor()[1]:
            record["frames"] += 1
        return add_patch(self, patch)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", spy_text)
    monkeypatch.setattr(matplotlib.axes.Axes, "add_patch", spy_patch)
    return record


@pytest.mark.parametrize("c", [9, 12])
def test_many_corpora_keep_their_spread(tmp_path, drawn_text, c):
    names = [f"c{i}" for i in range(c)]
    report = _build(names, {n: ("pretrain" if i < c // 2 else "downstream") for i, n in enumerate(names)},
                    seeds=(0, 1), n=30, size=60, bootstrap=50)
    write_report(report, tmp_path / "out")
    cells = [t for t in drawn_text["text"] if t[:1].isdigit()]
    # One cell per pair (the lower triangle), each with its mean and its spread.
    assert len(cells) == c * (c - 1) // 2
    assert all("\n±" in t for t in cells), cells[:3]
    md = markdown(report)
    assert md.count(" ± ") >= c * (c - 1) // 2  # every pair's table row carries mean ± sd


def _bimodal(seed, i, rows):
    """Four blobs at (±1, ±1): corpus 0 on the right, corpus 1 on the left, both spread up and down.

    Seeds 0 and 1 stretch the corpora apart along x, so K-means splits them (NMI ~1); seed 2 stretches
    both along y, and the lowest-inertia split is top against bottom, across the corpora (NMI ~0).
    """
    rng = np.random.default_rng([seed, i, 7])
    half = len(rows) // 2
    ys = np.r_[np.ones(half), -np.ones(len(rows) - half)]
    gap_x, gap_y = (3.0, 1.0) if seed < 2 else (1.0, 3.0)
    x = np.zeros((len(rows), 8))
    x[:, 0] = (gap_x if i == 0 else -gap_x) + rng.standard_normal(len(rows)) * 0.2
    x[:, 1] = gap_y * ys + rng.standard_normal(len(rows)) * 0.2
    x[:, 2:] = rng.standard_normal((len(rows), 6)) * 0.05
    return x.astype(np.float32)


def test_bimodal_pair_is_flagged_in_markdown_json_and_heatmap(tmp_path, drawn_text):
    report = _build(["asr", "anet"], {"asr": "pretrain", "anet": "downstream"}, n=200, size=400,
                    geometry=_bimodal, bootstrap=200)
    pair = report.pair("asr", "anet")
    assert pair.nmi.values[0] > 0.9 and pair.nmi.values[1] > 0.9 and pair.nmi.values[2] < 0.1
    assert pair.unstable and report.unstable == (pair,)
    md = markdown(report)
    assert "## Unstable pairs" in md
    listed = next(line for line in md.splitlines() if line.startswith("- asr (P) / anet (D): "))
    assert listed.endswith(f"(range {pair.nmi.range:.3f})") and pair.nmi.range > 0.9
    row = next(line for line in md.splitlines() if line.startswith("| asr (P) | anet (D) |"))
    assert row.endswith("| ⚠ unstable |")
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["unstable_pairs"] == [["asr", "anet"]]
    assert drawn_text["frames"] == 1 and any(t.endswith(" !") for t in drawn_text["text"])


def test_stable_pairs_are_not_flagged():
    report = _build(["a", "b", "c"], {}, n=50)
    assert report.unstable == () and "None: every pair's seeds agree" in markdown(report)
    assert all(not line.endswith("⚠ unstable |") for line in markdown(report).splitlines())


def test_projection_sample_is_uniform_over_each_corpus():
    # Each file is sorted by topic: its first half reads "topic 0", its second half "topic 1".
    def sorted_file(seed, i, rows):
        rng = np.random.default_rng([seed, i])
        topic = (rows >= 2000).astype(float)
        return _unit(np.stack([np.full(len(rows), 1.0 + i), topic, *rng.standard_normal((6, len(rows))) * 0.1], 1))

    report = _build(["a", "b"], {}, seeds=(3, 4), n=1000, size=4000, project_points=200, geometry=sorted_file,
                    bootstrap=0)
    proj = report.projection
    assert proj.seed == 3 and proj.coords.shape == (400, 2) and np.bincount(proj.corpus).tolist() == [200, 200]
    for i in range(2):
        rows = proj.rows[proj.corpus == i]
        assert len(set(rows.tolist())) == 200
        # Drawn over the whole file, not its start: both halves (both topics) show, in equal measure.
        assert 0.4 < np.mean(rows >= 2000) < 0.6
        assert rows.min() < 400 and rows.max() > 3600
    assert 0 < proj.explained[1] <= proj.explained[0] < 1


def test_projection_draws_corpora_interleaved_with_role_markers(tmp_path, monkeypatch):
    calls = []
    scatter = matplotlib.axes.Axes.scatter

    def spy(self, x, y, *a, **kw):
        calls.append(kw.get("c"))
        return scatter(self, x, y, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    report = _build(["a", "b", "c"], {"a": "pretrain", "b": "downstream", "c": "downstream"}, seeds=(0,), n=40)
    write_report(report, tmp_path / "out")
    assert len(calls) == 1  # one draw call: no corpus is painted over another because it came later
    colours = list(calls[0])
    first = colours[: len(colours) // 4]
    assert len(set(first)) == 3  # the first quarter drawn already mixes every corpus


def test_markdown_reads_as_a_paper_table():
    report = _build(["subs", "caps", "test"], {"subs": "pretrain", "caps": "pretrain", "test": "downstream"},
                    n=40, bootstrap=100)
    md = markdown(report)
    lines = md.splitlines()
    # The how-to-read paragraph opens the report and names what a reader needs to quote the numbers.
    intro = lines[2]
    assert intro.startswith("**How to read this.**")
    for needed in ("Near 0", "Near 1", "k = 2", "n = 40", "test-encoder", "bfloat16", "3 seeds (0, 1, 2)"):
        assert needed in intro, needed
    assert "95% CI is a bootstrap over sentences" in lines[4]
    assert "(nmi_matrix.png)" in md and "(projection.png)" in md
    # Focus table: roles marked, mean ± sd, interval, min, max.
    p = report.pair("subs", "test")
    row = next(line for line in lines if line.startswith("| subs (P) | test (D) |"))
    assert f"| {p.nmi.mean:.3f} ± {p.nmi.std:.3f} | {p.ci.low:.3f}–{p.ci.high:.3f} | {p.nmi.min:.3f} |" in row
    # The matrix is one triangle with numbered columns: the first row holds no pair, lines stay short.
    start = lines.index("| | 1 | 2 |")
    assert lines[start + 2].startswith("| 2 caps (P) | ") and lines[start + 3].startswith("| 3 test (D) | ")
    assert max(len(line) for line in lines[start:start + 4]) < 60
    assert "| subs | pretrain | `<memory>` | 200 | 0 | 0 | 200 |" in md
    assert "k=3" in md and "drawn uniformly from seed 0's sample" in md


def test_single_seed_says_so_and_keeps_null_spread():
    report = _build(["a", "b"], {}, seeds=(0,), n=40)
    md = markdown(report)
    assert "one seed (0); --seeds 0 1 2 shows how much" in md and " ± " not in md
    assert report_dict(report)["pairs"][0]["nmi"]["std"] is None


def test_json_holds_every_number(tmp_path):
    paths = write_report(_build(["a", "b", "c"], {}, seeds=(0, 1), n=40, bootstrap=100), tmp_path / "r")
    data = json.loads(paths["json"].read_text())
    assert data["matrix"]["mean"][0][0] is None and data["matrix"]["mean"][0][2] > 0.9
    first = data["pairs"][0]
    assert set(first) >= {"a", "b", "nmi", "ci", "unstable", "cluster_by_corpus_first_seed"}
    assert first["ci"]["level"] == 0.95 and first["ci"]["resamples"] == 100
    assert data["encoder"]["dtype"] == "bfloat16" and data["settings"]["kmeans_backend"] == "numpy"
    assert data["projection"]["seed"] == 0 and len(data["projection"]["explained_variance"]) == 2
    for key in ("heatmap", "projection"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"


def test_report_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    report = _build(["a", "b"], {}, seeds=(0,), n=40)
    out = tmp_path / "r"
    write_report(report, out, extra={"config.json": "{}\n"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"report.json", "report.md", "nmi_matrix.png", "projection.png", "config.json"}

    import analysis.render as render

    def broken(*a, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(render, "projection_scatter", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(report, out, extra={"config.json": '{"new": 1}\n'})
    # The earlier report is untouched (its config.json too) and no temporary folder is left.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    with pytest.raises(RuntimeError):
        write_report(report, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    monkeypatch.undo()
    # A rerun replaces the report whole: a file the new run does not write does not linger.
    write_report(report, out)
    assert not (out / "config.json").exists() and (out / "report.md").is_file()


def test_output_folder_must_be_a_folder_for_reports(tmp_path):
    report = _build(["a", "b"], {}, seeds=(0,), n=40)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match=r"file\.txt is a file, not a folder"):
        write_report(report, tmp_path / "file.txt")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(OutputError, match=r"holds files that are not an NMI report \(thesis\.tex\)"):
        write_report(report, mine)
    assert (mine / "thesis.tex").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_report(report, empty)["markdown"].is_file()
