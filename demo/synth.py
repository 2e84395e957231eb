"""Synthesise real H.264 clips with learnable, temporal content, plus a manifest.

Each clip shows one coloured shape crossing the frame in one direction over a textured background.
Its text names colour, shape and direction, so a model can learn it; because a clip moving left is
(up to encoding noise) the time-reverse of the same clip moving right, only a model that sees frame
order can tell the two apart. The manifest's ``text`` column is a noisy, ASR-like subtitle; the
clean description sits in ``caption_gt`` for evaluation.

Resolution, fps, duration and keyframe interval vary per clip so decoders meet realistic variety.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Iterator

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 200),
    "cyan": (30, 210, 220),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}

# (width, height) pairs; all even for yuv420p.
SIZES = ((320, 240), (256, 192), (224, 224), (352, 200), (240, 320))
FPS_CHOICES = (3, 6, 10, 25, 30)
GOP_CHOICES = (3, 12, 30, 60, 250)

_FILLERS = ("um", "uh", "so", "you know", "like", "okay", "right", "alright")
_ASR_SUBS = {"circle": ("circle", "circles", "surfer", "circuit"), "square": ("square", "squared", "where"),
             "triangle": ("triangle", "try angle", "triangles")}


@dataclasses.dataclass(kw_only=True, frozen=True)
class ClipSpec:
    """What one synthetic clip shows and how it is encoded."""

    key: str
    color: str
    shape: str
    direction: str
    width: int
    height: int
    fps: int
    seconds: float
    gop: int
    seed: int

    @property
    def n_frames(self) -> int:
        return max(2, int(round(self.fps * self.seconds)))

    @property
    def caption(self) -> str:
        return describe(self.color, self.shape, self.direction)


def describe(color: str, shape: str, direction: str) -> str:
    """The clean description of a clip: colour, shape and motion direction."""
    return f"a {color} {shape} moving {direction}"


def asr_subtitle(color: str, shape: str, direction: str, rng: random.Random) -> str:
    """A noisy ASR-like subtitle: lower case, no punctuation, fillers, sometimes a misheard word."""
    shape_word = rng.choice(_ASR_SUBS[shape]) if rng.random() < 0.3 else shape
    templates = (
        "{f} so here we have a {c} {s} and it goes {d} {f}",
        "{f} watch the {c} {s} {f} it is moving to the {d}",
        "okay {f} now the {s} the {c} one slides {d}",
        "and {f} this {c} {s} heading {d} {f} pretty cool",
        "{f} {f} i think the {c} {s} moves {d} here",
        "look at that {c} thing {f} a {s} going {d}",
    )
    text = rng.choice(templates).format(
        f=rng.choice(_FILLERS) if rng.random() < 0.8 else "", c=color, s=shape_word, d=direction
    )
    return " ".join(text.split())


# Speech-to-text slips on the words that carry the content (what a recogniser hears for them).
_MISHEARD = {
    "red": ("read", "bread", "rad"), "green": ("grain", "greene", "clean"), "blue": ("blew", "glue", "blu"),
    "yellow": ("hello", "mellow", "yell oh"), "purple": ("purple", "people"), "cyan": ("sign", "sigh and"),
    "white": ("why", "wide"), "orange": ("orange", "oranges"),
    "circle": ("surfer", "circuit", "sir call", "circles"), "square": ("where", "scare", "squire"),
    "triangle": ("try angle", "triangles", "tangle"),
    "left": ("lift", "laughed", "loft"), "right": ("write", "rite", "bright"), "up": ("app", "op", "pup"),
    "down": ("town", "dawn", "done"),
}
# What a person talks about over a screen recording: mostly the channel, the making-of and asides.
_CHATTER = (
    "hey everybody welcome back to the channel", "alright guys so today is going to be a quick one",
    "before we start make sure you hit subscribe", "i got this idea from my brother last weekend",
    "the lighting in here is kind of weird today sorry about that", "we will come back to that in a second",
    "i recorded this part twice because the first take was bad", "my coffee is getting cold already",
    "let me know down in the comments what you think", "this is part three of the series",
    "i am using the same settings as last time", "the software crashed on me twice this morning",
    "you might hear my neighbours doing construction", "it took forever to render on my old laptop",
    "i will put a link in the description", "the music is from a free library by the way",
    "honestly i did not expect this to work", "a lot of you asked about this in the last video",
    "thanks to everyone who sent in their projects", "i keep forgetting to turn the fan off",
    "we are almost at ten thousand subscribers which is crazy", "so that is pretty much the setup",
    "give me a second i need to find the file", "i tried a bunch of other ways and they were worse",
    "if you are new here we make small animation tests", "that is all the time we have today",
    "i am going to speed this bit up", "the export took about twenty minutes",
)
_OPENERS = ("", "um", "uh", "so", "okay so", "alright", "yeah so", "and then", "right", "you know")
_CONTENT = {
    "color": ("this one is {w}", "i made it {w} this time", "the {w} one", "going with {w} again"),
    "shape": ("it is a {w}", "just a simple {w}", "the {w} shape", "a little {w}"),
    "direction": ("and it goes {w}", "it slides {w}", "it moves {w} across", "heading {w} the whole time"),
}


def spoken_subtitle(color: str, shape: str, direction: str, rng: random.Random) -> str:
    """A subtitle as automatic speech recognition writes one for a talking-over-the-screen video.

    Lower case, no punctuation, 1 to 60 words. A quarter of the subtitles narrate the clip
    (``asr_subtitle``); the rest are asides about the channel and the making-of, among which the
    clip's colour, shape and direction are each said about half the time (a third of those misheard
    by the recogniser), and one in four names a colour or shape that is not on screen. The mix was
    set so that the bundled MiniLM encoder separates these subtitles from the clips' descriptions
    about as well as it separates real YouTube ASR from MSR-VTT test queries: NMI 0.71-0.81 over
    six samples of 176, against about 0.7 for real ASR at 500 (the narrated style alone scores 0).
    """
    if rng.random() < 0.25:
        return asr_subtitle(color, shape, direction, rng)
    parts = [rng.choice(_CHATTER) for _ in range(rng.choice((0, 1, 1, 2, 3, 4)))]
    if rng.random() < 0.1:  # now and then the speaker narrates what is on screen in one go
        parts.insert(rng.randrange(len(parts) + 1), asr_subtitle(color, shape, direction, rng))
    for kind, word in {"color": color, "shape": shape, "direction": direction}.items():
        if rng.random() < 0.5:
            heard = rng.choice(_MISHEARD[word]) if word in _MISHEARD and rng.random() < 0.33 else word
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(_CONTENT[kind]).format(w=heard))
    if rng.random() < 0.25:
        other = rng.choice([c for c in COLORS if c != color] + [s for s in SHAPES if s != shape])
        parts.insert(rng.randrange(len(parts) + 1), f"last time we did a {other} one")
    if not parts:  # nothing said about the clip at all: the speaker just reacts
        parts = [rng.choice(("wow", "okay that is it", "nice", "here we go"))]
    words = " ".join(f"{rng.choice(_OPENERS)} {p}" for p in parts).split()
    if len(words) > 5 and rng.random() < 0.2:  # a segment cut mid-speech, as ASR segments often are
        cut = rng.randrange(3, len(words))
        words = words[:cut] if rng.random() < 0.5 else words[cut - 3:]
    return " ".join(words)


SUBTITLE_STYLES = {"narrated": asr_subtitle, "asr": spoken_subtitle}


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(20, 90, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    grad = (0.25 * (xx / max(w - 1, 1)) + 0.15 * (yy / max(h - 1, 1)))[..., None] * 80
    noise = rng.normal(0, 6, size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(base[None, None, :] + grad + noise, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, h: int, w: int, cx: float, cy: float, r: float, top: int = 0, left: int = 0) -> np.ndarray:
    """The shape's pixels among rows ``top..h-1`` and columns ``left..w-1`` (absolute coordinates)."""
    yy, xx = np.ogrid[top:h, left:w]
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    # Upward triangle: apex at top, base at the bottom.
    top, bottom = cy - r, cy + r
    frac = np.clip((yy - top) / (2 * r), 0, 1)
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= frac * r)


def render_frames(spec: ClipSpec) -> np.ndarray:
    """All frames of a clip as uint8 [N, H, W, 3]."""
    rng = np.random.default_rng(spec.seed)
    h, w, n = spec.height, spec.width, spec.n_frames
    bg = _background(h, w, rng)
    r = 0.16 * min(h, w)
    margin = r + 2
    colour = np.array(COLORS[spec.color], dtype=np.uint8)
    # The cross-axis position is fixed per clip; the moving axis goes edge to edge.
    cross = float(rng.uniform(0.35, 0.65))
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        t = i / (n - 1)
        if spec.direction in ("left", "right"):
            p = t if spec.direction == "right" else 1 - t
            cx, cy = margin + p * (w - 2 * margin), cross * h
        else:
            p = t if spec.direction == "down" else 1 - t
            cx, cy = cross * w, margin + p * (h - 2 * margin)
        frames[i] = bg
        # Only the shape's bounding box is tested (the same comparisons, so the same pixels as a
        # whole-frame mask, at a fraction of the cost).
        y0, y1 = max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1)
        x0, x1 = max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1)
        frames[i, y0:y1, x0:x1][_shape_mask(spec.shape, y1, x1, cx, cy, r, y0, x0)] = colour
    return frames


def encode_h264(frames: np.ndarray, path: str | Path, fps: int, gop: int, crf: int = 23) -> None:
    """Write uint8 [N, H, W, 3] frames as an H.264 mp4 with PyAV (no ffmpeg binary needed)."""
    encode_video(frames, path, fps, gop, crf=crf)


def encode_video(frames: np.ndarray, path: str | Path, fps: int, gop: int, *, codec: str = "libx264",
                 crf: int = 23, rotation: int = 0) -> None:
    """Write uint8 [N, H, W, 3] frames with PyAV; the container follows the suffix (.mp4, .webm).

    ``codec`` is ``libx264`` or ``libvpx-vp9`` (both in PyAV's bundled FFmpeg); with libx264 the same
    frames give the same bytes every time (one encoder thread). A non-zero
    ``rotation`` stores a display matrix asking players to turn the picture that many degrees
    counter-clockwise, as a phone does for a clip shot upright.
    """
    import av
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            # Same frames, same bytes. With x264's defaults, 57 of the demo's 720 clips came out
            # different from one run to the next on an AVX-512 machine (decoded pixels too, so
            # every number computed from them moved): x264's MB-tree rate control, in its AVX-512
            # code (capped at AVX2 it was deterministic). mbtree=0: 0 of 30 such clips differed in
            # 4 encodes each, against 19 of 30. One encoder thread as well: clips this small gain
            # nothing from frame threads, and ``synthesize(workers=...)`` runs encoders in parallel.
            stream.options = {"preset": "veryfast", "crf": str(crf), "keyint_min": str(min(gop, 25)),
                              "sc_threshold": "0", "threads": "1", "x264-params": "mbtree=0"}
        else:  # libvpx-vp9: constant quality, fastest settings
            stream.options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        if rotation:
            stream.set_display_rotation(rotation)
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def sample_specs(n: int, seed: int = 0, *, prefix: str = "clip", vary_format: bool = True,
                 colors: tuple[str, ...] | None = None, shapes: tuple[str, ...] | None = None) -> Iterator[ClipSpec]:
    """``n`` clip specs, deterministic in ``seed``; colour, shape and direction cycle evenly.

    ``colors``/``shapes`` restrict the palette: with fewer combinations a training batch holds more
    clips that differ only in direction, the negatives that teach motion.
    """
    rng = random.Random(seed)
    for name, chosen, known in (("colour", colors, COLORS), ("shape", shapes, SHAPES)):
        bad = sorted(set(chosen or ()) - set(known))
        if bad:
            raise ValueError(f"unknown {name}(s) {bad}; choose from {sorted(known)}")
    combos = [(c, s, d) for c in (colors or COLORS) for s in (shapes or SHAPES) for d in DIRECTIONS]
    rng.shuffle(combos)
    for i in range(n):
        color, shape, direction = combos[i % len(combos)]
        if vary_format:
            width, height = rng.choice(SIZES)
            fps, gop = rng.choice(FPS_CHOICES), rng.choice(GOP_CHOICES)
            seconds = rng.choice((2.0, 3.0, 4.0, 6.0))
        else:
            width, height, fps, gop, seconds = 224, 224, 6, 12, 4.0
        yield ClipSpec(key=f"{prefix}{i:06d}", color=color, shape=shape, direction=direction, width=width,
                       height=height, fps=fps, seconds=seconds, gop=gop, seed=seed * 1_000_003 + i)


def write_clip(spec: ClipSpec, out_dir: Path, rng: random.Random, subtitles: str = "narrated") -> dict:
    """Encode one clip and return its manifest row."""
    path = _encode_clip(spec, out_dir)
    return write_row_common(spec, path, rng, subtitles)


def synthesize(out_dir: str | Path, n: int, seed: int = 0, *, prefix: str = "clip", vary_format: bool = True,
               span_fraction: float = 0.0, manifest_name: str = "manifest.jsonl", progress: bool = False,
               colors: tuple[str, ...] | None = None, shapes: tuple[str, ...] | None = None,
               subtitles: str = "narrated", workers: int = 1, seconds: float | None = None) -> Path:
    """Write ``n`` clips and ``manifest.jsonl`` into ``out_dir``; return the manifest path.

    ``span_fraction`` of the rows instead point at a span (``start``/``end`` seconds) of a longer
    video made of three clips back to back, exercising span handling in the pipeline.
    ``subtitles`` picks the ``text`` column: ``narrated`` (a speaker describing the clip, lightly
    garbled) or ``asr`` (mostly off-topic speech as real ASR subtitles are, see ``spoken_subtitle``).
    ``workers`` > 1 encodes clips in that many processes; the files and manifest are the same.
    ``seconds`` makes every clip that long (a set used only for its middle frames can be short).
    """
    if subtitles not in SUBTITLE_STYLES:
        raise ValueError(f"unknown subtitle style {subtitles!r}; choose from {sorted(SUBTITLE_STYLES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = list(sample_specs(n, seed, prefix=prefix, vary_format=vary_format, colors=colors, shapes=shapes))
    if seconds is not None:
        specs = [dataclasses.replace(spec, seconds=seconds) for spec in specs]
    n_spans = int(round(span_fraction * n))
    spans = [i < n_spans for i in range(n)]
    dirs = [out_dir] * n
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the caller may hold threads (torch, Ray) that a forked child must not inherit
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        paths = pool.map(_encode, specs, dirs, spans, chunksize=8)
    else:
        pool, paths = None, map(_encode, specs, dirs, spans)
    if progress:
        from tqdm import tqdm

        paths = tqdm(paths, total=n, desc="synth", unit="clip")
    rng = random.Random(seed + 17)  # subtitles are drawn here, in clip order, whatever the workers
    rows = []
    try:
        for spec, span, path in zip(specs, spans, paths):
            row = write_row_common(spec, path, rng, subtitles)
            if span:
                row.update(start=spec.n_frames / spec.fps, end=2 * spec.n_frames / spec.fps)
            rows.append(row)
    finally:
        if pool is not None:
            pool.shutdown()
    manifest = out_dir / manifest_name
    with open(manifest, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return manifest


def _encode(spec: ClipSpec, out_dir: Path, span: bool) -> Path:
    return _encode_span(spec, out_dir) if span else _encode_clip(spec, out_dir)


def _encode_clip(spec: ClipSpec, out_dir: Path) -> Path:
    path = out_dir / f"{spec.key}.mp4"
    encode_h264(render_frames(spec), path, spec.fps, spec.gop)
    return path


def _encode_span(spec: ClipSpec, out_dir: Path) -> Path:
    """The clip is the middle third of a longer video: other content before and after it."""
    before = dataclasses.replace(spec, key=spec.key + "_pre", direction=OPPOSITE[spec.direction], seed=spec.seed + 1)
    after = dataclasses.replace(spec, key=spec.key + "_post", color=_other_color(spec.color), seed=spec.seed + 2)
    frames = np.concatenate([render_frames(before), render_frames(spec), render_frames(after)])
    path = out_dir / f"{spec.key}_long.mp4"
    encode_h264(frames, path, spec.fps, spec.gop)
    return path


def write_row_common(spec: ClipSpec, path: Path, rng: random.Random, subtitles: str = "narrated") -> dict:
    return {
        "key": spec.key, "path": str(path),
        "text": SUBTITLE_STYLES[subtitles](spec.color, spec.shape, spec.direction, rng),
        "caption_gt": spec.caption, "color": spec.color, "shape": spec.shape, "direction": spec.direction,
        "fps": spec.fps, "width": spec.width, "height": spec.height, "n_frames": spec.n_frames, "gop": spec.gop,
    }


def _other_color(color: str) -> str:
    names = list(COLORS)
    return names[(names.index(color) + 3) % len(names)]


def write_broken_files(out_dir: str | Path, good_clip: str | Path) -> dict[str, Path]:
    """Broken inputs every pipeline must survive: zero-byte, truncated, not-a-video, garbage bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = Path(good_clip).read_bytes()
    files = {
        "zero_byte": out_dir / "zero.mp4",
        "truncated": out_dir / "truncated.mp4",
        "not_video": out_dir / "notes.mp4",
        "garbage": out_dir / "garbage.mp4",
    }
    files["zero_byte"].write_bytes(b"")
    files["truncated"].write_bytes(data[: max(64, len(data) // 5)])
    files["not_video"].write_text("this is a subtitle file, not a video\n" * 20)
    rnd = np.random.default_rng(0)
    files["garbage"].write_bytes(data[:48] + rnd.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    return files


def write_awkward_clips(out_dir: str | Path) -> dict[str, Path]:
    """Valid-looking clips that decode, but wrongly unless handled: each must become a correct
    output or a failed row, never a silently wrong one.

    - ``webm``: an intact 4 s, 25 fps, 320x240 VP9 WebM (keyframe every 12 frames);
      ``webm_cut30``/``webm_cut50``: its first 30% / 50% of bytes. The container header still
      announces 4 s, the frames stop near 1 s / 2 s.
    - ``rotated``: a portrait 240x320 clip stored as 320x240 frames turned clockwise, with a display
      matrix asking for a 90-degree counter-clockwise turn (a phone clip shot upright). Its upright
      frames are ``rotated_upright.npy``.
    - ``tiny``: a 2x2 H.264 clip.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = ClipSpec(key="awkward", color="red", shape="circle", direction="right", width=320, height=240,
                    fps=25, seconds=4.0, gop=12, seed=7)
    files = {"webm": out_dir / "full.webm", "webm_cut30": out_dir / "cut30.webm",
             "webm_cut50": out_dir / "cut50.webm", "rotated": out_dir / "rotated.mp4", "tiny": out_dir / "tiny.mp4"}
    encode_video(render_frames(spec), files["webm"], spec.fps, spec.gop, codec="libvpx-vp9", crf=32)
    data = files["webm"].read_bytes()
    files["webm_cut30"].write_bytes(data[: int(len(data) * 0.3)])
    files["webm_cut50"].write_bytes(data[: int(len(data) * 0.5)])
    upright = render_frames(dataclasses.replace(spec, width=240, height=320, fps=10, seconds=2.0, gop=5,
                                                direction="down"))
    np.save(out_dir / "rotated_upright.npy", upright)
    stored = np.ascontiguousarray(np.rot90(upright, -1, axes=(1, 2)))  # each frame turned clockwise
    encode_video(stored, files["rotated"], 10, 5, rotation=90)
    encode_video(np.random.default_rng(0).integers(0, 256, size=(12, 2, 2, 3), dtype=np.uint8),
                 files["tiny"], 6, 3)
    return files
