"""The package structure as a contract: no import cycle anywhere, caption/ and model/ independent
of each other, no product package importing the demo, and ``model`` importable with torch and
safetensors alone (no data or serving libraries). Imports inside functions count: a lazy import is
still an edge.

Run: ``.venv/bin/python -m pytest tests/test_layering.py -q``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "caption", "model", "train", "analysis", "jobs", "shards", "common", "demo", "search")


def _graph() -> dict[str, set[str]]:
    modules = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_caption_and_model_do_not_import_each_other():
    graph = _graph()
    crossing = [(a, b) for a, deps in graph.items() for b in deps
                if (a.split(".")[0], b.split(".")[0]) in (("caption", "model"), ("model", "caption"))]
    assert crossing == []


def test_model_needs_only_torch_and_safetensors():
    blocked = ("transformers", "pandas", "ray", "fsspec", "webdataset", "decord", "av", "PIL", "pyarrow", "sklearn",
               "faiss", "regex", "yaml", "braceexpand", "sentence_transformers", "tokenizers", "caption", "pipeline",
               "train", "analysis", "jobs", "shards")
    code = (
        "import sys\n"
        f"BLOCKED = {blocked!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError('model/ imported ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import model, model.attention, model.clip_vip, model.convert, model.loss, model.metrics, model.tokenizer\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_product_packages_do_not_import_the_demo():
    """demo/ holds synthetic data, toy models and the demo's stages; only jobs/ (its CLIs), the tests
    and the benchmarks may use it."""
    graph = _graph()
    product = ("pipeline", "caption", "model", "train", "analysis", "shards", "common", "search")
    leaks = [(a, b) for a, deps in graph.items() for b in deps
             if a.split(".")[0] in product and b.split(".")[0] == "demo"]
    assert leaks == []


def test_search_imports_downward_only():
    """search/ sits above model, train, shards and pipeline: nothing below it (and no other room
    beside it) imports it; only jobs/, the demo and the tests do."""
    graph = _graph()
    upward = [(a, b) for a, deps in graph.items() for b in deps
              if b.split(".")[0] == "search" and a.split(".")[0] not in ("search", "jobs", "demo")]
    assert upward == []
