"""OCL loss terms against direct float64 formulas, and the gathered loss on 2 gloo processes.

Run: .venv/bin/python -m pytest tests/model/test_loss.py -q
"""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from model.loss import TERMS, OCLLoss, clamp_logit_scale_

KEYS = {"V": "video_features", "S": "subtitle_features", "F": "frame_features", "C": "caption_features"}


def _features(n: int, e: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: F.normalize(torch.randn(n, e, generator=g, dtype=torch.float64), dim=-1) for k in KEYS.values()}


def _ce_rows(x: torch.Tensor, y: torch.Tensor, s: float) -> float:
    """mean_i -log(exp(s x_i.y_i) / sum_j exp(s x_i.y_j)), written out."""
    total = 0.0
    for i in range(x.shape[0]):
        logits = [s * float(x[i] @ y[j]) for j in range(y.shape[0])]
        total += -(logits[i] - math.log(sum(math.exp(z) for z in logits)))
    return total / x.shape[0]


def _video_side(v, pos, other, s: float) -> float:
    """mean_i -log(e^{s v_i.pos_i} / (sum_j e^{s v_i.pos_j} + sum_{j != i} e^{s v_i.other_j}))."""
    total = 0.0
    n = v.shape[0]
    for i in range(n):
        denom = sum(math.exp(s * float(v[i] @ pos[j])) for j in range(n))
        denom += sum(math.exp(s * float(v[i] @ other[j])) for j in range(n) if j != i)
        total += -(s * float(v[i] @ pos[i]) - math.log(denom))
    return total / n


def _direct(term: str, f: dict[str, torch.Tensor], s: float) -> float:
    V, S, Fr, C = (f[KEYS[k]] for k in "VSFC")
    if term == "vsc":
        return _ce_rows(S, V, s) + _ce_rows(C, V, s) + _video_side(V, S, C, s) + _video_side(V, C, S, s)
    if term == "joint":
        x, y = torch.cat([V, Fr]), torch.cat([S, C])
        return _ce_rows(x, y, s) + _ce_rows(y, x, s)
    x, y = f[KEYS[term[0].upper()]], f[KEYS[term[1].upper()]]
    return _ce_rows(x, y, s) + _ce_rows(y, x, s)


@pytest.mark.parametrize("term", TERMS)
def test_each_term_matches_the_direct_formula(term):
    f = _features(5, seed=TERMS.index(term))
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    out = OCLLoss((term,))(f, scale)
    assert set(out) == {f"{term}_loss", "loss"}
    assert out[f"{term}_loss"].item() == pytest.approx(_direct(term, f, 20.0), rel=1e-12)


def test_default_is_vsc_plus_fc_summed():
    f = _features(4, seed=7)
    loss = OCLLoss()
    out = loss(f, torch.tensor(4.6, dtype=torch.float64))
    s = math.exp(4.6)
    assert loss.terms == ("vsc", "fc")
    assert out["vsc_loss"].item() == pytest.approx(_direct("vsc", f, s), rel=1e-11)
    assert out["fc_loss"].item() == pytest.approx(_direct("fc", f, s), rel=1e-11)
    assert out["loss"].item() == pytest.approx(out["vsc_loss"].item() + out["fc_loss"].item(), rel=1e-14)


def test_excluded_positive_changes_the_video_side():
    # Making the caption identical to the subtitle must not penalise the video: the other positive
    # is not a negative, so the vsc video-side terms equal plain V->S CE over S plus other captions.
    f = _features(4, seed=3)
    f["caption_features"] = f["subtitle_features"].clone()
    s = 10.0
    V, S = f["video_features"], f["subtitle_features"]
    got = OCLLoss(("vsc",))(f, torch.tensor(math.log(s), dtype=torch.float64))["vsc_loss"].item()
    included = 2 * _ce_rows(S, V, s) + 2 * _ce_rows(V, torch.cat([S, S]), s)  # other positive kept, for contrast
    assert got == pytest.approx(_direct("vsc", f, s), rel=1e-12)
    assert got < included


def test_errors_and_clamp():
    with pytest.raises(ValueError, match="distinct names"):
        OCLLoss(("vs", "vsx"))
    with pytest.raises(ValueError, match="caption_features"):
        OCLLoss(("fc",))({"frame_features": torch.zeros(2, 3)}, torch.tensor(1.0))
    p = torch.nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale_(p)
    assert p.item() == pytest.approx(math.log(200))
    clamp_logit_scale_(p.data.fill_(-1.0))
    assert p.item() == 0.0


def _setup(n: int):
    """Shared by both paths: raw features, a linear 'tower' and the logit scale."""
    g = torch.Generator().manual_seed(11)
    raw = {k: torch.randn(n, 6, generator=g, dtype=torch.float64) for k in KEYS.values()}
    tower = torch.randn(6, 6, generator=g, dtype=torch.float64)
    return raw, tower, torch.tensor(3.0, dtype=torch.float64)


def _loss_and_grads(raw, tower, scale, gather_grad="sum"):
    tower, scale = tower.clone().requires_grad_(), scale.clone().requires_grad_()
    feats = {k: F.normalize(v @ tower, dim=-1) for k, v in raw.items()}
    out = OCLLoss(TERMS, gather_grad=gather_grad)(feats, scale)
    out["loss"].backward()
    return out["loss"].detach(), tower.grad, scale.grad


def _worker(rank: int, world: int, port: int, n: int, gather_grad: str, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        raw, tower, scale = _setup(n * world)
        local = {k: v[rank * n:(rank + 1) * n] for k, v in raw.items()}
        loss, g_tower, g_scale = _loss_and_grads(local, tower, scale, gather_grad)
        for g in (g_tower, g_scale):  # what DDP does: average the gradients over ranks
            dist.all_reduce(g)
            g /= world
        results[rank] = (loss, g_tower, g_scale)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("gather_grad", ["sum", "mean"])
def test_gathered_loss_on_two_processes_against_single_process_on_the_whole_batch(gather_grad):
    """Float64, every term: "sum" gives one process's gradients exactly; "mean" (the official
    Horovod allgather) gives the tower's divided by the number of ranks and the logit scale's as is."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    n, world = 3, 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, port, n, gather_grad, results), nprocs=world, join=True)
        results = dict(results)
    loss, g_tower, g_scale = _loss_and_grads(*_setup(n * world))
    for rank in range(world):
        r_loss, r_tower, r_scale = results[rank]
        torch.testing.assert_close(r_loss, loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(r_tower, g_tower / (world if gather_grad == "mean" else 1), rtol=1e-10,
                                   atol=1e-12)
        torch.testing.assert_close(r_scale, g_scale, rtol=1e-10, atol=1e-12)
