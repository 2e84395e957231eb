"""``clipvip serve``: an HTTP JSON API and a web page over one or more indices, in one process.

Built on aiohttp (installed with Ray): one asyncio process holds the model once, answers JSON,
serves the page's static files and streams clips by byte range. CPU-bound work (faiss, numpy,
decoding a thumbnail) runs on a thread pool so the event loop keeps accepting requests, and
concurrent text queries share encoder calls (:mod:`search.batcher`).

Routes: ``GET /`` the page; ``GET /static/{app.js,app.css}``; ``GET /api/indices``;
``POST /api/search``; ``GET /api/metadata/{index}/{key}``; ``GET /media/{index}/{key}.mp4`` (Range)
and ``.jpg``; ``GET /healthz``; ``GET /metrics`` (Prometheus text). A request names indices and
keys, never files. Limits: bound to 127.0.0.1 unless told otherwise, request bodies of at most
``max_body_bytes``, and ``rate_per_s`` API requests a second per client (burst ``burst``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from search.batcher import TextBatcher
from search.media import RangeError, clip_source, parse_range, read_slice, thumb_source
from search.metrics import Metrics
from search.query import QueryError, Searcher
from search.store import StoreError
from train.video import DecodeError

logger = logging.getLogger(__name__)

STATIC = {"app.js": "application/javascript", "app.css": "text/css"}
CHUNK = 1 << 19
MAX_TEXT = 500
MAX_K = 100


@dataclasses.dataclass(kw_only=True, frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 65536
    rate_per_s: float = 20.0  # API requests a second per client address
    burst: int = 40
    threads: int = 4  # search and media threads
    max_batch: int = 64  # texts per encoder call
    max_wait_ms: float = 2.0


class RateLimiter:
    """A token bucket per client address."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        if len(self.buckets) > 10_000:
            self.buckets.clear()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self.buckets[client] = (tokens - 1.0 if ok else tokens, now)
        return ok


def _error(status: int, message: str):
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


def create_app(searcher: Searcher, cfg: ServeConfig = ServeConfig()):
    """The aiohttp application over ``searcher``."""
    from aiohttp import web

    metrics = Metrics()
    limiter = RateLimiter(cfg.rate_per_s, cfg.burst)
    pool = ThreadPoolExecutor(cfg.threads, thread_name_prefix="search")
    batcher = TextBatcher(searcher.encode_texts, cfg.max_batch, cfg.max_wait_ms, on_batch=metrics.batch)
    started = time.time()

    @web.middleware
    async def observe(request, handler):
        t0 = time.perf_counter()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        status = 500
        try:
            if route.startswith("/api/") and not limiter.allow(request.remote or "?"):
                metrics.reject("rate")
                status = 429
                resp = _error(429, f"more than {cfg.rate_per_s:g} requests a second from this address; slow down")
                resp.headers["Retry-After"] = "1"
                return resp
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            if exc.status == 413:
                metrics.reject("size")
                return _error(413, f"request body over {cfg.max_body_bytes} bytes")
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise
        finally:
            metrics.request(route, status, time.perf_counter() - t0)

    app = web.Application(middlewares=[observe], client_max_size=cfg.max_body_bytes)
    loop_run = lambda fn, *a, **kw: asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *a, **kw))  # noqa: E731

    async def page(_request):
        html = resources.files("search.web").joinpath("index.html").read_text()
        return web.Response(text=html, content_type="text/html")

    async def static(request):
        name = request.match_info["name"]
        if name not in STATIC:
            return _error(404, "no such file")
        body = resources.files("search.web").joinpath(name).read_text()
        return web.Response(text=body, content_type=STATIC[name])

    async def indices(_request):
        out = []
        for name, store in searcher.stores.items():
            info = store.info
            out.append({"name": name, "count": len(store), "dim": info["dim"], "model_id": info["model_id"],
                        "index_key": info["index_key"], "search": info["search"],
                        "filter_columns": store.filter_columns()})
        return web.json_response({"indices": out, "fold_threshold": searcher.fold_threshold})

    def _links(index: str, page_dict: dict[str, Any]) -> dict[str, Any]:
        from urllib.parse import quote

        shards = searcher.stores[index].meta["shard"]
        for r in page_dict["results"]:
            base = f"/media/{quote(index)}/{quote(r['key'])}"
            r["thumb"], r["clip"] = f"{base}.jpg", f"{base}.mp4"
            if not shards[r["row"]].is_valid and r.get("start") is not None:
                # A span of a source file: the browser plays just the span (a media fragment).
                r["clip"] += f"#t={r['start']:g},{r['end']:g}" if r.get("end") is not None else f"#t={r['start']:g}"
        return page_dict

    async def search(request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        unknown = set(body) - {"index", "text", "key", "vector", "k", "offset", "filters", "fold"}
        if unknown:
            return _error(400, f"unknown field(s) {sorted(unknown)}")
        index = body.get("index") or next(iter(searcher.stores))
        text, key, vector = body.get("text"), body.get("key"), body.get("vector")
        try:
            k, offset = int(body.get("k", 20)), int(body.get("offset", 0))
        except (TypeError, ValueError):
            return _error(400, "k and offset must be integers")
        if k > MAX_K:
            return _error(400, f"k={k}: at most {MAX_K} a page")
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
            return _error(400, f"text must be a string of at most {MAX_TEXT} characters")
        if vector is not None and (not isinstance(vector, list) or not all(isinstance(x, (int, float)) for x in vector)):
            return _error(400, "vector must be a list of numbers")
        try:
            if index not in searcher.stores:
                raise QueryError(f"unknown index {index!r}; this server has {sorted(searcher.stores)}")
            text_vector = await batcher.encode_one(text) if isinstance(text, str) and text.strip() else None
            page = await loop_run(searcher.search, index, text=text if text_vector is not None else None, key=key,
                                  vector=vector, k=k, offset=offset, filters=body.get("filters"),
                                  fold=bool(body.get("fold")), text_vector=text_vector)
        except QueryError as exc:
            status = 404 if str(exc).startswith(("unknown index", "key ")) else 400
            return _error(status, str(exc))
        except StoreError as exc:
            return _error(400, str(exc))
        metrics.query(index, "text" if text_vector is not None else ("key" if key else "vector"))
        return web.json_response(_links(index, page.to_dict()))

    def _row(index: str, key: str) -> dict[str, Any] | None:
        store = searcher.stores.get(index)
        if store is None:
            return None
        row = store.row_of(key)
        return None if row is None else store.rows([row])[0]

    async def metadata(request):
        row = await loop_run(_row, request.match_info["index"], request.match_info["key"])
        if row is None:
            return _error(404, "no such index or key")
        return web.json_response(row)

    @functools.lru_cache(maxsize=4096)
    def _decoded_thumb(path: str, start: float | None, end: float | None) -> bytes:
        from search.video import middle_frame_jpeg

        return middle_frame_jpeg(path, start, end)

    async def media(request):
        index, key, ext = request.match_info["index"], request.match_info["key"], request.match_info["ext"]
        row = await loop_run(_row, index, key)
        if row is None:
            return _error(404, "no such index or key")
        if ext == "jpg":
            src = thumb_source(row)
            if src is None:
                try:
                    data = await loop_run(_decoded_thumb, row["path"], row.get("start"), row.get("end"))
                except DecodeError as exc:  # a source that is gone or no longer decodes is a 404, not a crash
                    return _error(404, f"no thumbnail: {str(exc)[:200]}")
                return web.Response(body=data, content_type="image/jpeg")
            data = await loop_run(read_slice, src, 0, src.size)
            return web.Response(body=data, content_type=src.content_type,
                                headers={"Cache-Control": "public, max-age=86400"})
        src = await loop_run(clip_source, row)
        if src is None:
            return _error(404, "the clip's source is gone")
        try:
            rng = parse_range(request.headers.get("Range"), src.size)
        except RangeError as exc:
            resp = _error(416, str(exc))
            resp.headers["Content-Range"] = f"bytes */{src.size}"
            return resp
        first, last = rng if rng else (0, src.size - 1)
        resp = web.StreamResponse(status=206 if rng else 200, headers={
            "Accept-Ranges": "bytes", "Content-Type": src.content_type, "Content-Length": str(last - first + 1),
            **({"Content-Range": f"bytes {first}-{last}/{src.size}"} if rng else {})})
        await resp.prepare(request)
        pos = first
        while pos <= last:
            n = min(CHUNK, last - pos + 1)
            await resp.write(await loop_run(read_slice, src, pos, n))
            pos += n
        await resp.write_eof()
        return resp

    async def health(_request):
        return web.json_response({"status": "ok", "uptime_s": round(time.time() - started, 1),
                                  "indices": {n: len(s) for n, s in searcher.stores.items()},
                                  "model_loaded": searcher._encoder is not None})

    async def prometheus(_request):
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    async def on_startup(_app):
        await batcher.start()

    async def on_cleanup(_app):
        await batcher.stop()
        pool.shutdown(wait=False)

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/indices", indices)
    app.router.add_post("/api/search", search)
    app.router.add_get("/api/metadata/{index}/{key}", metadata)
    app.router.add_get(r"/media/{index}/{key}.{ext:mp4|jpg}", media)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", prometheus)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(searcher: Searcher, cfg: ServeConfig) -> None:
    """Run the server until interrupted."""
    from aiohttp import web

    web.run_app(create_app(searcher, cfg), host=cfg.host, port=cfg.port, access_log=None,
                print=lambda msg: logger.info("%s", msg))
