"""model/prefetch.py: one batch ahead, in order, with the loader state of the batch last handed out.

Run: .venv/bin/python -m pytest tests/model/test_prefetch.py -q   (add -m gpu on a CUDA machine)
"""

from __future__ import annotations

import functools

import pytest
import torch

from model.prefetch import DevicePrefetcher
from model.train import Runtime, model_inputs


class CountingLoader:
    """Yields numbered batches; its state is how many it has yielded; fails at ``fail_at``."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.served = n, fail_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.served == self.fail_at:
            raise OSError("shard 7 vanished")
        if self.served == self.n:
            raise StopIteration
        self.served += 1
        return {"x": torch.full((2,), float(self.served))}

    def state_dict(self):
        return {"served": self.served}


def test_batches_arrive_in_order_and_state_trails_the_prefetch():
    loader = CountingLoader(4)
    pf = DevicePrefetcher(loader, lambda b: {"x": b["x"] * 10}, "cpu")
    assert pf.state_dict() == {"served": 0}
    first = next(pf)
    assert first["x"].tolist() == [10.0, 10.0] and loader.served == 1
    pf.prefetch()
    pf.prefetch()  # idempotent until the batch is taken
    assert loader.served == 2 and pf.state_dict() == {"served": 1}  # one ahead, but the checkpoint says 1
    assert next(pf)["x"][0].item() == 20.0 and pf.state_dict() == {"served": 2}
    assert next(pf)["x"][0].item() == 30.0  # without prefetch(), next() prepares the batch itself
    pf.prefetch()
    assert [b["x"][0].item() for b in pf] == [40.0]
    assert pf.state_dict() == {"served": 4}
    with pytest.raises(StopIteration):
        next(pf)


def test_a_loader_error_surfaces_after_the_batches_before_it():
    pf = DevicePrefetcher(CountingLoader(10, fail_at=2), lambda b: b, "cpu")
    assert next(pf)["x"][0].item() == 1.0
    pf.prefetch()
    assert next(pf)["x"][0].item() == 2.0
    pf.prefetch()  # the failure is held back, not raised into the training step
    with pytest.raises(OSError, match="shard 7 vanished"):
        next(pf)
    assert pf.state_dict() == {"served": 2}


def _uint8_batch(seed: int, n: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    clips = [torch.randint(0, 256, (4, 36, 48 if i % 2 else 64, 3), dtype=torch.uint8, generator=g) for i in range(n)]
    mids = [c[:1].clone() for c in clips]
    ids = torch.randint(0, 100, (n, 8), generator=g)
    return {"video": clips, "frames": mids, "subtitle_ids": ids, "subtitle_mask": torch.ones_like(ids)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_side_stream_batches_equal_the_training_stream_ones():
    device = torch.device("cuda")
    rt = Runtime(0, 1, device, "fp32", 32)
    prepare = functools.partial(model_inputs, rt=rt)
    raw = [_uint8_batch(s) for s in range(5)]
    pinned = [{k: [t.pin_memory() for t in v] if isinstance(v, list) else v.pin_memory() for k, v in b.items()} for b in raw]
    expected = [prepare(b) for b in raw]
    got = []
    pf = DevicePrefetcher(iter(pinned), prepare, device)
    for batch in pf:
        # Heavy work on the training stream while the next batch copies on the side stream.
        torch.randn(2048, 2048, device=device).matmul(torch.randn(2048, 2048, device=device))
        pf.prefetch()
        got.append({k: v.clone() for k, v in batch.items()})
    assert len(got) == 5
    for e, g in zip(expected, got):
        assert e.keys() == g.keys() and all(g[k].device.type == "cuda" for k in g)
        for k in e:
            torch.testing.assert_close(g[k], e[k], rtol=0, atol=0)
    assert expected[0]["video"].shape == (3, 4, 3, 32, 32) and expected[0]["frames"].shape == (3, 3, 32, 32)
