"""How a player turns a clip's stored frames for display: the display matrix, FFmpeg's way.

A phone clip stored landscape and flagged "rotate 90" plays upright. ``orientation_of`` reads the
stream's display matrix and returns the turns and flips that ``ffmpeg`` and ``ffplay`` apply when
they auto-rotate, so the middle frame and the training copy look the way the clip plays.
"""

from __future__ import annotations

import dataclasses
import math

import av
import numpy as np

from video.source import ClipError


@dataclasses.dataclass(frozen=True)
class Orientation:
    """How to turn stored frames into displayed ones, from the stream's display matrix.

    ``ops`` are applied in order to an HxWxC array: ``transpose``, ``cw``/``ccw`` (quarter turns)
    and ``hflip``/``vflip``.
    """

    rotation: int = 0  # degrees counter-clockwise, FFmpeg's ``av_display_rotation_get`` rounded
    mirrored: bool = False
    ops: tuple[str, ...] = ()

    @property
    def swaps_axes(self) -> bool:
        return any(op in ("transpose", "cw", "ccw") for op in self.ops)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        for op in self.ops:
            arr = {"transpose": lambda a: a.transpose(1, 0, 2), "cw": lambda a: np.rot90(a, -1),
                   "ccw": lambda a: np.rot90(a, 1), "hflip": lambda a: a[:, ::-1],
                   "vflip": lambda a: a[::-1]}[op](arr)
        return np.ascontiguousarray(arr)

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        return (height, width) if self.swaps_axes else (width, height)


def orientation_of(frame: av.VideoFrame, path: str) -> Orientation:
    """The display transform a player applies to ``frame``.

    Follows the auto-rotation of the ``ffmpeg`` and ``ffplay`` tools case by case (``theta`` is the
    clockwise angle; the matrix entries decide between a plain quarter turn and a mirrored one), so
    the outputs look the way the clip plays. Other angles raise ``ClipError``.
    """
    matrix = next((np.frombuffer(bytes(sd), dtype=np.int32) for sd in frame.side_data
                   if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX), None)
    if matrix is None:
        return Orientation()
    rotation = 180 if int(frame.rotation) == -180 else int(frame.rotation)  # FFmpeg returns [-180, 180]
    mirrored = bool(int(matrix[0]) * int(matrix[4]) - int(matrix[1]) * int(matrix[3]) < 0)
    theta = float(-rotation)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        ops: tuple[str, ...] = ("transpose",) if matrix[3] > 0 else ("cw",)
    elif abs(theta - 180) < 1:
        ops = (("hflip",) if matrix[0] < 0 else ()) + (("vflip",) if matrix[4] < 0 else ())
    elif abs(theta - 270) < 1:
        ops = ("cw", "vflip") if matrix[3] < 0 else ("ccw",)
    elif abs(theta) > 1 and abs(theta - 360) > 1:
        raise ClipError(f"{path}: display matrix rotates by {rotation} degrees; only multiples of 90 are supported")
    else:
        ops = ("vflip",) if matrix[4] < 0 else ()
    return Orientation(rotation=rotation, mirrored=mirrored, ops=ops)
