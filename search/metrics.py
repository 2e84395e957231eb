"""Request counts and latency histograms in the Prometheus text format (``GET /metrics``)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets, self.counts):
            running += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


class Metrics:
    """Per route: requests by status and a latency histogram; queries by kind; text batch sizes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.queries: dict[tuple[str, str], int] = defaultdict(int)
        self.batches = Histogram(BATCH_BUCKETS)
        self.rejected: dict[str, int] = defaultdict(int)

    def request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def query(self, index: str, kind: str) -> None:
        with self.lock:
            self.queries[(index, kind)] += 1

    def batch(self, size: int) -> None:
        with self.lock:
            self.batches.observe(size)

    def reject(self, why: str) -> None:
        with self.lock:
            self.rejected[why] += 1

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP clipvip_requests_total HTTP requests by route and status", "# TYPE clipvip_requests_total counter"]
            lines += [f'clipvip_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
            lines += ["# HELP clipvip_request_seconds request latency by route", "# TYPE clipvip_request_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                lines += h.lines("clipvip_request_seconds", f'route="{route}"')
            lines += ["# HELP clipvip_queries_total search queries by index and kind", "# TYPE clipvip_queries_total counter"]
            lines += [f'clipvip_queries_total{{index="{i}",kind="{k}"}} {n}' for (i, k), n in sorted(self.queries.items())]
            lines += ["# HELP clipvip_text_batch_size texts per encoder call", "# TYPE clipvip_text_batch_size histogram"]
            lines += self.batches.lines("clipvip_text_batch_size", "")
            lines += ["# HELP clipvip_rejected_total requests refused by a limit", "# TYPE clipvip_rejected_total counter"]
            lines += [f'clipvip_rejected_total{{why="{w}"}} {n}' for w, n in sorted(self.rejected.items())]
            return "\n".join(lines) + "\n"
