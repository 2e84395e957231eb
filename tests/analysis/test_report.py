"""Role assignment (analysis/report.py) and the rendering layer (analysis/render.py, analysis/plots.py).

Rendering is tested on a report assembled from arrays, with no encoder.
Run: ``.venv/bin/python -m pytest tests/analysis/test_report.py -q``.
"""

from __future__ import annotations

import json

import numpy as np

from analysis.gap import spread
from analysis.render import markdown, report_dict, write_report
from analysis.report import JointGap, NMIConfig, NMIReport, PairGap, assign_roles


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


def _report(seeds: tuple[int, ...]) -> NMIReport:
    names = ("subs", "caps", "test")
    values = {("subs", "caps"): [0.8, 0.7], ("subs", "test"): [0.9, 0.7], ("caps", "test"): [0.05, 0.01]}
    pairs = tuple(PairGap(a=a, b=b, nmi=spread(v[:len(seeds)]), counts=np.array([[10, 0], [0, 10]]))
                  for (a, b), v in values.items())
    m = np.full((3, 3), np.nan)
    s = np.full((3, 3), np.nan)
    for p in pairs:
        i, j = names.index(p.a), names.index(p.b)
        m[i, j] = m[j, i] = p.nmi.mean
        s[i, j] = s[j, i] = p.nmi.std
    rng = np.random.default_rng(0)
    corpora = tuple({"name": n, "source": f"{n}.txt", "field": None, "files": 1, "records": 12, "empty": 1,
                     "non_empty": 11, "duplicates": 2, "unique": 9} for n in names)
    return NMIReport(names=names, roles={"subs": "pretrain", "caps": "pretrain", "test": "downstream"},
                     focus=(("subs", "test"), ("caps", "test")), corpora=corpora, pairs=pairs, matrix=m,
                     matrix_std=s, joint=JointGap(k=3, nmi=spread([0.5, 0.4][:len(seeds)]),
                                                  counts=np.eye(3, dtype=int) * 10),
                     projection=rng.standard_normal((30, 2)).astype(np.float32),
                     projection_corpus=np.repeat(np.arange(3), 10), settings={
                         "n": 10, "seeds": list(seeds), "dedupe": False, "encoder": "minilm",
                         "kmeans_backend": "faiss", "kmeans_restarts": 10},
                     versions={"numpy": np.__version__}, timings={"encode": 1.0, "total": 2.0, "cluster": 0.5})


def test_json_holds_every_number_and_nan_becomes_null(tmp_path):
    paths = write_report(_report((0, 1)), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["matrix"]["mean"][0][0] is None and data["matrix"]["mean"][0][2] == 0.8
    assert data["focus_pairs"][0] == {"a": "subs", "b": "test", "values": [0.9, 0.7], "mean": 0.8,
                                      "std": data["focus_pairs"][0]["std"], "min": 0.7, "max": 0.9}
    assert data["all_corpora"]["cluster_by_corpus_first_seed"][1] == [0, 10, 0]
    assert data["corpora"][0]["duplicates"] == 2
    for key in ("heatmap", "projection"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"


def test_markdown_tables_and_single_seed_wording():
    md = markdown(_report((0, 1)))
    assert "| subs | test | 0.800 +- 0.100 | 0.700 | 0.900 |" in md
    assert "| **caps** | 0.750 +- 0.050 | - | 0.030 +- 0.020 |" in md
    assert "| subs | pretrain | `subs.txt` | 12 | 1 | 2 | 9 |" in md
    assert "Time (s): encode 1.0, cluster 0.5, total 2.0" in md
    single = markdown(_report((0,)))
    assert "| subs | test | 0.900 |" in single and "pass --seeds 0 1 2" in single
    assert report_dict(_report((0,)))["pairs"][0]["nmi"]["std"] == 0.0
