"""From clip bytes to model-ready pixels: frame-index sampling, decord decode, bicubic squash, CLIP norm.

Follows the official CLIP-ViP preprocessing exactly:

- frame indices: uniform; at train time with the official jitter, at test time ``linspace(0, n-1, T)``;
- decode with decord from the clip bytes (no temporary file);
- uint8 -> float / 255, an aspect-distorting bicubic resize to ``size x size`` without antialiasing
  (torchvision 0.9's behaviour, reproduced with ``F.interpolate`` so torchvision is not needed), then
  normalisation with the CLIP mean and std. No spatial augmentation.

Because the bicubic resize is linear, it can run either in the loader worker (``preprocess``) or on
the accelerator (``preprocess_on_device`` on the raw uint8 frames); both give the same numbers up to
float rounding. Shipping uint8 frames and resizing on the GPU moves the most expensive CPU step
(about two thirds of a worker's time per clip) off the loader.

Shape legend: T frames, H/W source height/width, S output side, C=3 channels.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class DecodeError(RuntimeError):
    """A clip or image that cannot be decoded: the caller skips and counts the sample."""


def sample_frame_indices(n: int, num_frames: int, *, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of ``num_frames`` frames from a clip of ``n`` frames (official ``get_sample_idx``).

    Test: ``linspace(0, n-1, T).astype(int)``. Train (``sample_jitter=1``): ``interval = n // (T-1)``,
    ``start ~ U{0..interval}``, ``end ~ U{n-1-interval..n-1}``, ``linspace(start, end, T).astype(int)``.
    Short clips repeat frames rather than fail, as the official code does.

    Args:
        n: frames in the clip (>= 1).
        num_frames: T, frames to sample (>= 2).
        train: use the jittered train sampling (needs ``rng``).
        rng: source of the jitter; seed it per sample for reproducible runs.
    """
    if n < 1:
        raise DecodeError(f"clip has {n} frames; need at least 1")
    if num_frames < 2:
        raise ValueError(f"num_frames={num_frames}: uniform sampling needs at least 2 frames")
    if not train:
        return np.linspace(0, n - 1, num_frames).astype(int)
    if rng is None:
        raise ValueError("train-time frame sampling needs an rng (seed it per sample for reproducibility)")
    interval = n // (num_frames - 1)
    start = int(rng.integers(0, interval + 1))
    end = int(rng.integers(n - 1 - interval, n))
    # Very short clips can draw end < start; clip to the valid range like the official indices would.
    idx = np.linspace(start, end, num_frames).astype(int)
    return np.clip(idx, 0, n - 1)


def decode_frames(data: bytes, num_frames: int, *, train: bool, rng: np.random.Generator | None = None,
                  ) -> np.ndarray:
    """Decode ``num_frames`` sampled frames from mp4 bytes with decord; uint8 [T, H, W, C].

    Raises:
        DecodeError: the bytes are not a decodable video (empty, truncated, garbage).
    """
    import decord

    if not data:
        raise DecodeError("empty video bytes")
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        n = len(reader)
        idx = sample_frame_indices(n, num_frames, train=train, rng=rng)
        frames = reader.get_batch(idx.tolist()).asnumpy()
    except DecodeError:
        raise
    except (RuntimeError, decord.DECORDError) as e:  # decord reports every demux/decode failure this way
        raise DecodeError(f"decord could not decode the clip: {str(e).splitlines()[0][:200]}") from e
    if frames.ndim != 4 or frames.shape[0] != num_frames:
        raise DecodeError(f"decoded frames have shape {frames.shape}, expected ({num_frames}, H, W, 3)")
    return frames


def decode_video_file(path: str, num_frames: int, *, train: bool, rng: np.random.Generator | None = None,
                      ) -> np.ndarray:
    """Like :func:`decode_frames` for a video file on disk (fine-tuning datasets); uint8 [T, H, W, C]."""
    import fsspec

    with fsspec.open(path, "rb") as f:
        return decode_frames(f.read(), num_frames, train=train, rng=rng)


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes to uint8 [1, H, W, C] (the middle frame, as a one-frame clip)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DecodeError(f"image bytes are not a decodable image: {e}") from e
    return arr[None]


def squash_and_normalize(frames_float: torch.Tensor, size: int) -> torch.Tensor:
    """[T, C, H, W] float in [0, 1] -> [T, C, S, S]: bicubic squash (no antialias), CLIP normalisation."""
    if frames_float.shape[-2:] != (size, size):
        frames_float = F.interpolate(frames_float, size=(size, size), mode="bicubic", align_corners=False,
                                     antialias=False)
    mean = torch.tensor(CLIP_MEAN, dtype=frames_float.dtype, device=frames_float.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=frames_float.dtype, device=frames_float.device).view(1, 3, 1, 1)
    return (frames_float - mean) / std


def preprocess(frames_uint8: np.ndarray | torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 [T, H, W, C] -> float32 [T, C, S, S], the model's pixel input for one clip."""
    if isinstance(frames_uint8, np.ndarray):
        frames_uint8 = np.require(frames_uint8, requirements=("C", "W"))  # decord hands out read-only arrays
    x = torch.as_tensor(frames_uint8)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # [T, C, H, W]
    return squash_and_normalize(x, size)


def preprocess_on_device(clips_uint8: list[torch.Tensor], size: int, device: torch.device | str,
                         ) -> torch.Tensor:
    """A list of uint8 [T, H, W, C] clips (sizes may differ) -> float32 [B, T, C, S, S] on ``device``.

    The same arithmetic as :func:`preprocess`, run where the model runs. Clips of equal source size
    are resized together.
    """
    out: list[torch.Tensor | None] = [None] * len(clips_uint8)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, clip in enumerate(clips_uint8):
        by_shape.setdefault(tuple(clip.shape), []).append(i)
    for shape, members in by_shape.items():
        # Clip by clip: pinned clips copy asynchronously; stacking on the host would first memcpy the
        # whole batch (hundreds of MB) into unpinned memory on the training thread.
        x = torch.stack([clips_uint8[i].to(device, non_blocking=True) for i in members])  # [b, T, H, W, C]
        b, t = x.shape[:2]
        x = x.permute(0, 1, 4, 2, 3).reshape(b * t, 3, shape[1], shape[2]).float().div_(255.0)
        x = squash_and_normalize(x, size).view(b, t, 3, size, size)
        for j, i in enumerate(members):
            out[i] = x[j]
    return torch.stack(out)  # type: ignore[arg-type]
