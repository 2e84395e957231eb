"""The motion-direction probe: can a video encoder tell a clip from its time reversal?

Each test clip is paired with its exact time reversal (the sampled frames flipped along T), and
each gets a description that differs only in the direction word ("... moving left" against
"... moving right"). A model that pools frames without order (CLIP4Clip mean pooling) gives both
videos the same feature, so on every pair it scores the two descriptions equally: its pairwise
accuracy is 0.5 by construction, ties counted as half. Proxy-guided attention with temporal
embeddings sees frame order and can do better.

The number that comes out, ``pair_accuracy``, is scored per video: 1 when its own description
scores higher than its twin's description, 0.5 on a tie, 0 otherwise; chance is 0.5. Ordinary
retrieval recall is deliberately not used here: the official rank rule is optimistic on exact
ties, which would credit an order-blind model with both twins at rank 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@dataclasses.dataclass(frozen=True)
class DirectionResult:
    pair_accuracy: float
    chance_pair_accuracy: float
    n_pairs: int


def flip_direction(text: str) -> str:
    """Swap the direction word of a description ("a red circle moving left" -> "... right")."""
    words = text.split()
    hits = [i for i, w in enumerate(words) if w in OPPOSITE]
    if len(hits) != 1:
        raise ValueError(f"description {text!r} must name exactly one direction of {sorted(OPPOSITE)}")
    words[hits[0]] = OPPOSITE[words[hits[0]]]
    return " ".join(words)


def build_pairs(videos: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Videos [N, T, 3, H, W] and their descriptions -> 2N videos (originals, then reversals) and 2N texts."""
    if videos.ndim != 5 or videos.shape[0] != len(texts):
        raise ValueError(f"expected videos [N, T, 3, H, W] with one text each, got {tuple(videos.shape)} and {len(texts)}")
    reversed_ = torch.flip(videos, dims=[1])
    return torch.cat([videos, reversed_]), list(texts) + [flip_direction(t) for t in texts]


def per_video_scores(video_feats: np.ndarray, text_feats: np.ndarray) -> np.ndarray:
    """1, 0.5 or 0 for each of the 2N videos laid out as :func:`build_pairs` returns them."""
    v = np.asarray(video_feats, dtype=np.float64)
    t = np.asarray(text_feats, dtype=np.float64)
    n = v.shape[0] // 2
    sim = t @ v.T  # [texts, videos]
    own = np.concatenate([np.diag(sim[:n, :n]), np.diag(sim[n:, n:])])
    twin_text = np.concatenate([np.diag(sim[n:, :n]), np.diag(sim[:n, n:])])
    # Features are equal up to float rounding for order-blind models; compare with a tolerance.
    diff = own - twin_text
    return np.where(np.abs(diff) <= 1e-6, 0.5, (diff > 0).astype(np.float64))


def per_clip_scores(video_feats: np.ndarray, text_feats: np.ndarray) -> np.ndarray:
    """Per test clip: the mean score of the clip and its reversal (the unit a test query stands for)."""
    per_video = per_video_scores(video_feats, text_feats)
    n = per_video.shape[0] // 2
    return (per_video[:n] + per_video[n:]) / 2


def score_pairs(video_feats: np.ndarray, text_feats: np.ndarray) -> DirectionResult:
    """Score 2N normalised features laid out as :func:`build_pairs` returns them."""
    per_video = per_video_scores(video_feats, text_feats)
    return DirectionResult(pair_accuracy=float(per_video.mean()), chance_pair_accuracy=0.5,
                           n_pairs=per_video.shape[0] // 2)
