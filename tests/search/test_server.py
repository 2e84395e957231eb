"""``clipvip serve``'s HTTP API (search/server.py, search/media.py) over real HTTP on loopback, on the
index of the embedded synthetic shards: each query kind, filters, paging, more-like-this, byte
ranges, refusals (unknown index, oversized body, path traversal, rate) and metrics.
Run: ``.venv/bin/python -m pytest tests/search/test_server.py -q``."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.search.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def request(server, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def search(server, **body):
    status, _, data = request(server, "POST", "/api/search", body)
    return status, json.loads(data)


def test_each_query_kind_answers_as_the_library(live_server, demo_index):
    from search.query import Searcher

    lib = Searcher.open([f"demo={demo_index}"], device="cpu")
    status, text = search(live_server, index="demo", text="a blue square moving up", k=5)
    assert status == 200 and [r["key"] for r in text["results"]] == \
        [h.key for h in lib.search("demo", text="a blue square moving up", k=5).hits]
    status, like = search(live_server, index="demo", key="clip000003", k=5)
    assert status == 200 and "clip000003" not in [r["key"] for r in like["results"]]
    vec = lib.encode_texts(["a blue square moving up"])[0].tolist()
    status, by_vec = search(live_server, index="demo", vector=vec, k=5)
    assert [r["key"] for r in by_vec["results"]] == [r["key"] for r in text["results"]]
    first = text["results"][0]
    assert first["thumb"] == f"/media/demo/{first['key']}.jpg" and first["clip"].endswith(".mp4")
    assert {"score", "subtitle", "caption", "duration", "meta", "duplicates"} <= set(first)


def test_filters_paging_and_folding(live_server):
    _, full = search(live_server, text="a shape", k=20)
    _, page2 = search(live_server, text="a shape", k=5, offset=5)
    assert [r["key"] for r in page2["results"]] == [r["key"] for r in full["results"][5:10]] and page2["has_more"]
    _, red = search(live_server, text="a shape", k=24, filters={"columns": {"color": "red"}, "duration_max": 3.5})
    assert red["results"] and all(r["meta"]["color"] == "red" and r["duration"] <= 3.5 for r in red["results"])
    _, cap = search(live_server, text="a shape", k=24, filters={"caption": "CIRCLE"})
    assert cap["results"] and all("circle" in r["caption"] for r in cap["results"])
    _, folded = search(live_server, text="a shape", k=24, fold=True)
    n = len(folded["results"]) + sum(len(r["duplicates"]) for r in folded["results"])
    assert n == 24


def test_refusals(live_server):
    assert search(live_server, index="nope", text="x")[0] == 404
    assert search(live_server, index="demo", key="no_such_clip")[0] == 404
    assert search(live_server, text="x", k=1000)[0] == 400
    assert search(live_server, text="x", vector=[0.1] * 32)[0] == 400
    assert search(live_server, text="x", bogus=1)[0] == 400
    assert search(live_server, text="x", filters={"columns": {"nope": "1"}})[0] == 400
    status, _, body = request(live_server, "POST", "/api/search", raw=b"{not json")
    assert status == 400 and b"JSON" in body
    status, _, body = request(live_server, "POST", "/api/search", raw=json.dumps({"text": "x" * 100_000}).encode())
    assert status == 413 and b"request body over" in body


@pytest.mark.parametrize("path", [
    "/media/demo/..%2F..%2F..%2Fetc%2Fpasswd.mp4", "/media/demo/%2Fetc%2Fpasswd.mp4", "/media/..%2F..%2Fetc/passwd.jpg",
    "/media/demo/../../../../etc/passwd", "/static/..%2F..%2Fpyproject.toml", "/static/%2e%2e%2fserver.py",
    "/static/server.py", "/media/demo/clip000000.mp4%00.jpg", "/media/demo/clip000000.txt",
    "/api/metadata/demo/..%2F..%2Fetc%2Fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
])
def test_no_request_reaches_a_file_by_path(live_server, path):
    status, _, body = request(live_server, "GET", path)
    assert status in (400, 404) and b"root:" not in body and b"[project]" not in body and b"import " not in body


def test_range_requests_stream_the_clip_from_its_shard(live_server, demo_index):
    from search.store import Store

    store = Store(demo_index)
    row = store.rows([store.row_of("clip000007")])[0]
    with open(row["shard"], "rb") as f:
        f.seek(row["mp4_offset"])
        clip = f.read(row["mp4_size"])
    status, headers, body = request(live_server, "GET", "/media/demo/clip000007.mp4")
    assert status == 200 and body == clip and headers["Accept-Ranges"] == "bytes"
    status, headers, body = request(live_server, "GET", "/media/demo/clip000007.mp4", headers={"Range": "bytes=100-299"})
    assert status == 206 and body == clip[100:300] and headers["Content-Range"] == f"bytes 100-299/{len(clip)}"
    status, _, body = request(live_server, "GET", "/media/demo/clip000007.mp4", headers={"Range": "bytes=-50"})
    assert status == 206 and body == clip[-50:]
    status, _, body = request(live_server, "GET", "/media/demo/clip000007.mp4", headers={"Range": "bytes=1000-"})
    assert status == 206 and body == clip[1000:]
    status, headers, _ = request(live_server, "GET", "/media/demo/clip000007.mp4",
                                 headers={"Range": f"bytes={len(clip)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(clip)}"
    status, headers, jpg = request(live_server, "GET", "/media/demo/clip000007.jpg")
    assert status == 200 and jpg[:3] == b"\xff\xd8\xff" and headers["Content-Type"] == "image/jpeg"


def test_health_metrics_and_batched_text_queries(demo_index):
    """Concurrent text queries share encoder calls; /metrics shows counts and latency histograms."""
    from search.query import Searcher

    searcher = Searcher.open([f"demo={demo_index}"], device="cpu")
    real = searcher.encode_texts
    calls = []

    def slow_encode(texts):  # a bigger model's encoder call: long enough for queries to pile up behind it
        calls.append(len(texts))
        time.sleep(0.05)
        return real(texts)

    searcher.encode_texts = slow_encode
    server = LiveServer(searcher)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: search(server, text=f"a shape number {i}", k=3), range(32)))
        assert all(status == 200 for status, _ in results)
        assert sum(calls) == 32 and len(calls) < 32 and max(calls) > 1
        status, _, body = request(server, "GET", "/healthz")
        assert status == 200 and json.loads(body)["indices"] == {"demo": 24}
        _, _, metrics = request(server, "GET", "/metrics")
        text = metrics.decode()
        assert 'clipvip_requests_total{route="/api/search",status="200"} 32' in text
        assert 'clipvip_request_seconds_bucket{route="/api/search",le="+Inf"} 32' in text
        assert 'clipvip_queries_total{index="demo",kind="text"} 32' in text
        assert f'clipvip_text_batch_size_count{{}} {len(calls)}' in text
    finally:
        server.close()


def test_the_rate_limit(demo_index):
    from search.query import Searcher
    from search.server import ServeConfig

    server = LiveServer(Searcher.open([f"demo={demo_index}"], device="cpu"), ServeConfig(rate_per_s=1, burst=3))
    try:
        statuses = [request(server, "GET", "/api/indices")[0] for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
        assert request(server, "GET", "/healthz")[0] == 200  # health checks are never limited
    finally:
        server.close()


def test_serve_cli_binds_loopback_and_refuses_a_wrong_model(demo_index, search_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "serve", "--index", f"demo={demo_index}", "--port",
                             str(port), "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving demo on http://127.0.0.1:{port}/"), line
        for _ in range(100):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                assert conn.getresponse().status == 200
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the server never answered")
    finally:
        proc.terminate()
        proc.wait(30)
    import shutil

    other = tmp_path / "other"
    shutil.copytree(search_model[0], other)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(other / "model.safetensors"))
    weights["logit_scale"] = weights["logit_scale"] + 1
    save_file(weights, str(other / "model.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "serve", "--index", str(demo_index), "--model", str(other),
                           "--tokenizer", search_model[1], "--port", str(port)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "was built with model" in proc.stderr.strip().splitlines()[-1]
