"""The package structure as a contract: no import cycle anywhere, between modules or between packages
(a package imports another only if that one does not, however indirectly, import it back),
caption/ and model/ independent of each other, no product package importing the demo, and ``model``
importable with torch and safetensors alone (no data or serving libraries). Imports inside
functions count: a lazy import is still an edge. Product code imports webdataset nowhere (it is an
extra, for the tests and the benchmarks), and no function only forwards to another package's.

Run: ``.venv/bin/python -m pytest tests/test_layering.py -q``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "caption", "model", "train", "analysis", "jobs", "shards", "common", "demo", "video",
            "search")


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


def _package_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """(package, package it imports) -> the module imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for a, deps in graph.items():
        for b in deps:
            pa, pb = a.split(".")[0], b.split(".")[0]
            if pa != pb:
                edges.setdefault((pa, pb), []).append(f"{a} -> {b}")
    return edges


def test_no_package_cycle():
    """Modules can avoid a cycle while their packages are in one (caption fine-tuning read middle
    frames from pipeline/ while pipeline/ builds captioners from caption/): a package must not
    depend on itself through others either."""
    edges = _package_edges(_graph())
    packages = {p: {b for (a, b) in edges if a == p} for p in PACKAGES}
    cycles = _cycles(packages)
    named = [{pkg: [imp for (a, b), imps in edges.items() if a == pkg and b in cycle for imp in imps]
              for pkg in cycle} for cycle in cycles]
    assert cycles == [], named


def test_product_code_never_imports_webdataset():
    """webdataset is an extra (``test``, ``bench``): the shards are written and read by shards/format.py."""
    import tomllib

    users = sorted(str(path.relative_to(ROOT)) for pkg in PACKAGES for path in (ROOT / pkg).rglob("*.py")
                   for node in ast.walk(ast.parse(path.read_text()))
                   if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "webdataset" for a in node.names))
                   or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "webdataset"))
    assert users == []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("webdataset") for d in project["dependencies"])
    for extra in ("test", "bench"):
        assert any(d.startswith("webdataset") for d in project["optional-dependencies"][extra]), extra


def test_no_function_only_forwards_to_another_modules_function():
    """A function whose whole body returns a call of a function imported from another project module
    is a second name for it: callers should use the first (classes, whose call builds a value, are
    not forwarding)."""
    forwarders = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text())
            imported = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PACKAGES:
                    imported.update(a.asname or a.name for a in node.names)
                elif isinstance(node, ast.Import):
                    imported.update(a.asname or a.name.split(".")[0] for a in node.names
                                    if a.name.split(".")[0] in PACKAGES)
            for node in tree.body:
                if not isinstance(node, ast.FunctionDef):
                    continue
                body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
                if len(body) != 1 or not isinstance(body[0], ast.Return) or not isinstance(body[0].value, ast.Call):
                    continue
                func = body[0].value.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                base = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else name
                if base in imported and not name[:1].isupper():
                    forwarders.append(f"{path.relative_to(ROOT)}: {node.name} -> {ast.unparse(func)}")
    assert forwarders == []


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
