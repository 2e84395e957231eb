"""A simulated GPU captioner for the pipeline benchmark and the caption-service tests.

``SimulatedGPU.generate(images)`` takes ``time_scale * (a + b * n)`` seconds for ``n`` images,
sleeping in its own process (it holds no CPU, as a GPU kernel holds none of the host's), and
captions each image with a function of its pixels: its mean colour and size. So a caption can be
checked against the very frame it belongs to, and a caption attached to the wrong key is caught.

The defaults are fitted to OFA-large on one H100 (bf16, beam 5, 16 tokens; BENCHMARKS.md: 101,
252 and 328 images/s at batch 32, 128 and 256): least squares of the batch time ``n / rate``
against ``n`` gives ``a = 0.2476`` s and ``b = 2.0731`` ms per image, which reproduces the three
rates within 1%. At 8 images per call (what a shard task sent before the caption service) it
would caption 30 images/s.

Use it as ``caption.model = "py:bench.sim_gpu:SimulatedGPU"`` with ``caption.options`` such as
``{time_scale = 10, spy_dir = "/tmp/spy"}``. With ``spy_dir``, while a call runs, it keeps a file
``<spy_dir>/busy-<pid>`` holding the Ray actor name and node id of the replica it runs in, one
per line; each call appends ``<pid> <n images> <start>`` to ``<spy_dir>/<pid>.calls`` when it
starts and ``<pid> <n images> <start> <end>`` (Unix seconds) to ``<spy_dir>/<pid>.done`` when it
ends. ``fail_load`` makes the constructor raise that message (a model that cannot load).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image

OFA_LARGE_H100_A = 0.2476  # s per generate call
OFA_LARGE_H100_B = 0.0020731  # s per image


def pixel_caption(image: Image.Image) -> str:
    """The caption the simulated GPU gives ``image``: its mean R, G, B and its size."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    r, g, b = (int(round(v)) for v in rgb.reshape(-1, 3).mean(axis=0))
    return f"mean colour {r} {g} {b} size {image.width}x{image.height}"


class SimulatedGPU:
    """A captioner whose cost is ``time_scale * (a + b * n)`` seconds per call of ``n`` images."""

    name = "simulated-gpu"

    def __init__(self, *, device: str = "cpu", settings: Any = None, batch_size: int | None = None,
                 **options: Any) -> None:
        # Settings given here win over those in CLIPVIP_SIM_GPU (JSON), which serves checkouts whose
        # caption config cannot pass options to a captioner.
        opts = {**json.loads(os.environ.get("CLIPVIP_SIM_GPU", "{}")), **options}
        unknown = set(opts) - {"a", "b", "time_scale", "spy_dir", "fail_load"}
        if unknown:
            raise ValueError(f"SimulatedGPU: unknown option(s) {sorted(unknown)}")
        if opts.get("fail_load"):
            raise RuntimeError(opts["fail_load"])
        self.a = float(opts.get("a", OFA_LARGE_H100_A))
        self.b = float(opts.get("b", OFA_LARGE_H100_B))
        self.time_scale = float(opts.get("time_scale", 1.0))
        self.batch_size = batch_size
        self.spy_dir = str(opts.get("spy_dir", ""))
        if self.spy_dir:
            os.makedirs(self.spy_dir, exist_ok=True)

    def generate(self, images: Sequence[Image.Image]) -> list[str]:
        busy = ""
        start = time.time()
        if self.spy_dir:
            busy = os.path.join(self.spy_dir, f"busy-{os.getpid()}")
            with open(busy + ".tmp", "w") as f:
                f.write("\n".join(_where()))
            os.replace(busy + ".tmp", busy)
            with open(os.path.join(self.spy_dir, f"{os.getpid()}.calls"), "a") as f:
                f.write(f"{os.getpid()} {len(images)} {start:.6f}\n")
        try:
            time.sleep(self.time_scale * (self.a + self.b * len(images)))
            return [pixel_caption(im) for im in images]
        finally:
            if busy:
                os.unlink(busy)
                with open(os.path.join(self.spy_dir, f"{os.getpid()}.done"), "a") as f:
                    f.write(f"{os.getpid()} {len(images)} {start:.6f} {time.time():.6f}\n")

    def describe(self) -> dict[str, Any]:
        return {"backend": "py", "name": self.name, "a": self.a, "b": self.b, "time_scale": self.time_scale}


def _where() -> tuple[str, str]:
    """(Ray actor name, node id) of the calling process, or empty strings outside Ray."""
    try:
        import ray

        ctx = ray.get_runtime_context()
        return ctx.get_actor_name() or "", ctx.get_node_id() or ""
    except Exception:  # noqa: BLE001 - outside Ray there is no actor to name
        return "", ""
