"""The motion-direction probe and the switches that let a from-scratch model learn frame order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.clip_vip import CLIPViP, get_config
from demo.direction import build_pairs, flip_direction, score_pairs


def test_flip_direction_swaps_exactly_one_word():
    assert flip_direction("a red circle moving left") == "a red circle moving right"
    assert flip_direction("a blue square moving up") == "a blue square moving down"
    with pytest.raises(ValueError, match="exactly one direction"):
        flip_direction("a red circle")


def test_order_blind_features_score_exactly_chance():
    rng = np.random.default_rng(0)
    n, e = 6, 8
    v = rng.normal(size=(n, e))
    video = np.concatenate([v, v])  # a clip and its reversal look the same
    text = rng.normal(size=(2 * n, e))
    assert score_pairs(video, text).pair_accuracy == 0.5


def test_order_aware_features_score_above_chance():
    n, e = 5, 4
    direction = np.eye(e)[0]
    content = np.eye(e)[1]
    video = np.stack([content + direction] * n + [content - direction] * n)
    text = video.copy()
    assert score_pairs(video, text).pair_accuracy == 1.0
    swapped = np.concatenate([text[n:], text[:n]])  # every clip described with its twin's direction
    assert score_pairs(video, swapped).pair_accuracy == 0.0


def test_build_pairs_reverses_time_and_flips_text():
    videos = torch.arange(2 * 3).float().view(2, 3, 1, 1, 1).expand(2, 3, 3, 2, 2)
    pv, pt = build_pairs(videos, ["a red circle moving left", "a cyan square moving down"])
    assert torch.equal(pv[2], videos[0].flip(0)) and pt[2:] == ["a red circle moving right", "a cyan square moving up"]


def test_temporal_init_std_breaks_the_order_blind_start():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 3, 32, 32)
    official = CLIPViP(get_config("debug")).eval()  # zeros: exactly order-blind at the start
    assert torch.count_nonzero(official.vision_model.embeddings.temporal_embedding) == 0
    scratch = CLIPViP(get_config("debug", temporal_init_std=0.5)).eval()
    with torch.no_grad():
        same = (official.encode_video(x) - official.encode_video(x.flip(1))).abs().max()
        differ = (scratch.encode_video(x) - scratch.encode_video(x.flip(1))).abs().max()
    assert same < 1e-5 < 1e-2 < differ
