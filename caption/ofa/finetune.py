"""Caption fine-tuning for the OFA port: OFA's caption stage 1 on your own (image, caption) pairs.

The recipe is the official cross-entropy stage (``run_scripts/caption/train_caption_stage1.sh`` and
``criterions/label_smoothed_cross_entropy.py`` in the OFA repository), run on the port's own model:

- source: the captioner's prompt (``" what does the image describe?"``), the image resized square
  (bicubic, mean/std 0.5), exactly what captioning feeds the encoder;
- target: the caption with punctuation deleted, cut to ``max_target_words`` words, BPE-encoded with a
  leading space, then EOS; the decoder reads ``bos`` + the same tokens (teacher forcing);
- loss per target token ``(1 - eps - eps_i) * nll + eps_i * smooth`` with ``eps_i = eps / (V - 1)``
  and ``smooth`` the sum of minus log-probabilities over the vocabulary (label smoothing 0.1),
  summed over tokens and divided by the token count; optionally the worst ``drop_worst_ratio`` of
  tokens left out after ``drop_worst_after`` updates, as the official criterion can;
- AdamW (0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter, gradient norm clipped at 1.0,
  lr 1e-5 with linear warm-up over 6% of the steps and linear decay to 0; dropout 0.1; token
  embeddings (shared with the output layer) frozen; the ResNet's batch norms train, as OFA's do.

Not reproduced: drop-path (the port has none), and the official run's global batch of 128 (8 per
GPU x 4 accumulation x 4 GPUs) unless you set ``batch_size`` so.

Weights go in and out in the port's format: ``model`` is ``ofa:<converted dir>`` or
``ofa:<official .pt>`` (the loader the captioner uses), and ``out_dir`` receives
``model.safetensors``, ``config.json`` and the tokenizer files, so ``ofa:<out_dir>`` captions with
the result. Data is a JSON-lines manifest (``image`` or ``video`` path plus a caption column; a
video contributes its middle frame) or clipvip shards (the ``jpg`` member plus a text field).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import shutil
import string
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from caption.ofa.tokenizer import CAPTION_PROMPT, OFATokenizer, find_bpe_files
from common.errors import UserError
from common.jsonio import strict_json
from common.jsonl import read_objects

logger = logging.getLogger(__name__)

_PUNCT = str.maketrans("", "", string.punctuation)
LOG_FILE = "finetune_log.jsonl"


@dataclasses.dataclass(kw_only=True, frozen=True)
class CaptionDataConfig:
    """Where the (image, caption) pairs come from: a manifest or shards, exactly one."""

    # JSON lines, one pair per row: "image" (an image file) or "video" / "path" (a clip: its middle
    # frame, or the middle of "start".."end" seconds) and the caption in ``text_field``. Paths are
    # local (relative ones resolve against the working directory, as in curation manifests) or
    # fsspec URLs.
    manifest: str = ""
    # clipvip shard pattern(s) (``shards.format.expand_pattern`` syntax): each sample's ``jpg``
    # member with the text in ``text_field``.
    shards: str = ""
    # Manifest: a column. Shards: ``caption`` or ``subtitle`` (the ``<key>.<field>.txt`` member, or a
    # member of that exact name) or ``json.<key>`` (a key of the sample's json member).
    text_field: str = "caption"
    # Frames resized to the model's resolution stay in memory when they fit in this budget, so
    # later epochs skip decoding; beyond it they are decoded again every epoch.
    cache_mb: int = 1024
    num_workers: int = 2  # threads decoding and resizing frames


@dataclasses.dataclass(kw_only=True, frozen=True)
class CaptionFinetuneConfig:
    """One fine-tuning run. Defaults are OFA's caption stage 1 (see the module docstring)."""

    model: str = ""  # ofa:<converted dir> | ofa:<official .pt> (the "ofa:" prefix may be left out)
    bpe_dir: str = ""  # for an official .pt: the folder with its tokenizer files (default: beside it)
    out_dir: str = ""
    data: CaptionDataConfig = CaptionDataConfig()
    steps: int = 0  # optimizer steps; 0 derives them from epochs
    epochs: float = 2.0  # the official stage-1 script's loop runs 2 epochs over COCO
    batch_size: int = 32
    lr: float = 1e-5
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    label_smoothing: float = 0.1
    dropout: float = 0.1
    # The shared token embedding (also the output layer) stays fixed, as the official run freezes
    # it. Turn off for a model whose embeddings are not trained yet (a random debug model).
    freeze_embeddings: bool = True
    # Keep the ResNet's batch-norm statistics fixed instead of training them with batch statistics
    # (useful for batches of a few images, where those statistics are noise).
    freeze_batchnorm: bool = False
    max_target_words: int = 20
    drop_worst_ratio: float = 0.0  # the official run uses 0.2 after 2500 updates on COCO
    drop_worst_after: int = 0
    prompt: str = CAPTION_PROMPT
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA only)
    log_every: int = 10


class CaptionDataError(UserError):
    """A manifest row, shard sample or image that cannot become a training pair; names where."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class CaptionPair:
    """One training pair. ``image`` is a path, or the JPEG bytes of a shard sample."""

    key: str
    image: str | bytes
    caption: str
    video: bool = False  # ``image`` is a clip: take its middle frame
    start: float | None = None
    end: float | None = None


def _clean_caption(text: str, max_words: int) -> str:
    """OFA's training-time caption: punctuation deleted, whitespace collapsed, at most ``max_words`` words."""
    return " ".join(text.translate(_PUNCT).split()[:max_words])


def read_manifest(path: str | Path, text_field: str = "caption") -> list[CaptionPair]:
    """The pairs of a JSON-lines manifest; rows that cannot be used raise, naming the line."""
    path = Path(path)
    if not path.is_file():
        raise CaptionDataError(f"manifest {path} does not exist; give a JSON-lines file of "
                               '{"image": PATH, "caption": TEXT} rows')
    pairs = []
    lines = enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
    for lineno, row in read_objects(lines, lambda n: f"{path}:{n}", CaptionDataError):
        where = f"{path}:{lineno}"
        media = [k for k in ("image", "video", "path") if row.get(k)]
        if len(media) != 1:
            raise CaptionDataError(f"{where}: give exactly one of 'image' (an image file) or 'video'/'path' (a clip), "
                                   f"got {media or 'none'}")
        source = str(row[media[0]])
        if "://" not in source and not Path(source).is_file():
            raise CaptionDataError(f"{where}: {media[0]} {source} does not exist")
        text = row.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise CaptionDataError(f"{where}: no caption in column {text_field!r} (columns: {sorted(row)}); "
                                   "set the text field to the column holding the caption")
        start, end = row.get("start"), row.get("end")
        pairs.append(CaptionPair(key=str(row.get("key", lineno)), image=source, caption=text, video=media[0] != "image",
                                 start=None if start is None else float(start), end=None if end is None else float(end)))
    if not pairs:
        raise CaptionDataError(f"manifest {path} has no rows")
    return pairs


def read_shards(pattern: str, text_field: str = "caption") -> list[CaptionPair]:
    """The pairs of clipvip shards: each sample's ``jpg`` member and its text (see ``CaptionDataConfig``).

    The JPEG bytes are held in memory (tens of kB a frame): right for the thousands to hundreds of
    thousands of frames a domain adaptation uses.
    """
    from shards.format import JPG, META, PatternError, expand_pattern, raw_samples

    try:
        urls = expand_pattern(pattern, must_exist=True)
    except PatternError as exc:
        raise CaptionDataError(str(exc)) from None
    json_key = text_field[len("json."):] if text_field.startswith("json.") else None
    members = {META} if json_key is not None else {text_field, f"{text_field}.txt"}

    def fail(error: Exception) -> None:
        raise CaptionDataError(f"shard {error}") from None

    pairs = []
    for raw in raw_samples(urls, fail, wanted=lambda ext: ext == JPG or ext in members):
        where = f"sample {raw['__key__']!r} of {raw['__url__']}"
        if raw.get(JPG) is None:
            raise CaptionDataError(f"{where} has no jpg member (the middle frame); shards from 'clipvip curate' have one")
        if json_key is not None:
            meta = json.loads(raw[META]) if raw.get(META) is not None else {}
            text = meta.get(json_key)
        else:
            data = raw.get(text_field) if raw.get(text_field) is not None else raw.get(f"{text_field}.txt")
            text = data.decode("utf-8") if data is not None else None
        if not isinstance(text, str) or not text.strip():
            raise CaptionDataError(f"{where} has no text in field {text_field!r}; use caption, subtitle or json.<key>")
        pairs.append(CaptionPair(key=raw["__key__"], image=raw[JPG], caption=text))
    if not pairs:
        raise CaptionDataError(f"shards {pattern} hold no samples")
    return pairs


def load_pixels(pair: CaptionPair, size: int) -> np.ndarray:
    """The pair's image (a video's middle frame) as (size, size, 3) uint8, OFA's square bicubic resize."""
    from PIL import Image, UnidentifiedImageError

    from caption.ofa.preprocess import load_image, resize_batch

    try:
        if pair.video:
            from video.frames import ClipError, middle_frame

            try:
                _, image = middle_frame(str(pair.image), pair.start, pair.end)
            except (ClipError, OSError) as exc:
                raise CaptionDataError(f"clip {pair.image} (row {pair.key}): no middle frame ({exc})") from None
        elif isinstance(pair.image, bytes) or "://" in pair.image:
            data = pair.image if isinstance(pair.image, bytes) else _read_url(pair.image)
            with Image.open(io.BytesIO(data)) as img:
                image = img.convert("RGB")
        else:
            image = load_image(pair.image)
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        if isinstance(exc, CaptionDataError):
            raise
        raise CaptionDataError(f"image of {pair.key}: {exc}") from None
    return resize_batch([image], size)[0].numpy()


def _read_url(url: str) -> bytes:
    import fsspec

    with fsspec.open(url, "rb") as f:
        return f.read()


class PairSet:
    """Training pairs as tensors: resized pixels (cached when they fit) and tokenised targets."""

    def __init__(self, pairs: list[CaptionPair], tokenizer: OFATokenizer, size: int, cfg: CaptionDataConfig,
                 max_words: int) -> None:
        self.pairs, self.size = pairs, size
        self.targets = []
        for pair in pairs:
            text = _clean_caption(pair.caption, max_words)
            if not text:
                raise CaptionDataError(f"caption of {pair.key} ({pair.caption!r}) is empty once punctuation is deleted")
            self.targets.append(tokenizer.encode(" " + text))
        self.bos, self.eos, self.pad = tokenizer.bos, tokenizer.eos, tokenizer.pad
        fits = len(pairs) * size * size * 3 <= cfg.cache_mb * 2**20
        self._cache: dict[int, np.ndarray] | None = {} if fits else None
        self._pool = ThreadPoolExecutor(cfg.num_workers, "ofa-finetune-data") if cfg.num_workers > 1 else None

    def __len__(self) -> int:
        return len(self.pairs)

    def pixels(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        arr = load_pixels(self.pairs[i], self.size)
        if self._cache is not None:
            self._cache[i] = arr
        return arr

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """``pixels`` (B, 3, S, S) in [-1, 1], ``prev_tokens`` and ``target`` (B, T), right-padded."""
        from caption.ofa.preprocess import normalize

        arrays = list(self._pool.map(self.pixels, indices)) if self._pool else [self.pixels(i) for i in indices]
        pixels = normalize(torch.from_numpy(np.stack(arrays)))
        t = max(len(self.targets[i]) for i in indices) + 1
        prev = torch.full((len(indices), t), self.pad, dtype=torch.long)
        target = torch.full((len(indices), t), self.pad, dtype=torch.long)
        for row, i in enumerate(indices):
            tokens = self.targets[i]
            prev[row, : len(tokens) + 1] = torch.tensor([self.bos, *tokens])
            target[row, : len(tokens) + 1] = torch.tensor([*tokens, self.eos])
        return {"pixels": pixels, "prev_tokens": prev, "target": target}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices: a new seeded permutation each epoch, the last batch of an epoch
    possibly smaller (every pair is seen once per epoch)."""
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]
        epoch += 1


# ---------------------------------------------------------------------------------------------
# Loss


def label_smoothed_nll(lprobs: torch.Tensor, target: torch.Tensor, epsilon: float,
                       drop_worst_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """OFA's label-smoothed cross-entropy on (N, V) log-probabilities of N real (non-pad) tokens.

    Returns the summed loss, the summed plain NLL and the number of tokens kept. With
    ``drop_worst_ratio`` the tokens with the largest loss are left out (OFA's ``drop_worst``).
    """
    nll = -lprobs.gather(-1, target[:, None])[:, 0]
    smooth = -lprobs.sum(-1)
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    if drop_worst_ratio > 0:
        loss, kept = torch.topk(loss, k=int(loss.numel() * (1 - drop_worst_ratio)), largest=False)
        nll = nll[kept]
    return loss.sum(), nll.sum(), loss.numel()


def caption_loss(model, batch: dict[str, torch.Tensor], prompt: torch.Tensor, epsilon: float,
                 drop_worst_ratio: float = 0.0) -> dict[str, torch.Tensor]:
    """Teacher-forced loss of one batch: ``loss`` and ``nll`` per target token, and ``tokens``."""
    logits = model(batch["pixels"], prompt, batch["prev_tokens"])  # B, T, V
    real = batch["target"] != model.cfg.pad
    lprobs = F.log_softmax(logits[real].float(), dim=-1)
    loss, nll, n = label_smoothed_nll(lprobs, batch["target"][real], epsilon, drop_worst_ratio)
    return {"loss": loss / n, "nll": nll / n, "tokens": torch.tensor(n)}


def linear_warmup_decay(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0
    (fairseq's ``polynomial_decay`` with power 1 and end lr 0)."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # the first step trains at lr/warmup, never at 0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


# ---------------------------------------------------------------------------------------------
# The run


def _strip_prefix(spec: str) -> str:
    return spec[len("ofa:"):] if spec.startswith("ofa:") else spec


def check_config(cfg: CaptionFinetuneConfig) -> list[str]:
    """What is wrong with ``cfg`` before anything loads (empty when nothing is)."""
    problems = []
    backend, sep, _ = cfg.model.partition(":")
    if not cfg.model:
        problems.append("model is empty; give ofa:<converted dir> or ofa:<official .pt>")
    elif sep and backend != "ofa" and not Path(cfg.model).exists():
        problems.append(f"model {cfg.model!r}: only OFA models fine-tune here; give ofa:<dir or .pt>")
    elif not Path(_strip_prefix(cfg.model)).exists():
        problems.append(f"model {_strip_prefix(cfg.model)} does not exist; give a converted OFA directory "
                        "(clipvip caption convert-ofa) or an official .pt")
    if not cfg.out_dir:
        problems.append("out_dir is empty; give the folder for the fine-tuned model")
    elif Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        problems.append(f"out_dir {cfg.out_dir} is a file; give a new or existing folder")
    elif cfg.model and Path(cfg.out_dir).resolve() == Path(_strip_prefix(cfg.model)).resolve():
        problems.append(f"out_dir {cfg.out_dir} is the model being fine-tuned; write the result elsewhere")
    if bool(cfg.data.manifest) == bool(cfg.data.shards):
        problems.append("give exactly one of data.manifest and data.shards")
    if cfg.steps < 0 or (cfg.steps == 0 and cfg.epochs <= 0):
        problems.append(f"steps {cfg.steps} / epochs {cfg.epochs}: give steps > 0 or epochs > 0")
    for name in ("batch_size", "max_target_words"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} {getattr(cfg, name)} must be at least 1")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        problems.append(f"label_smoothing {cfg.label_smoothing} must be in [0, 1)")
    if not 0.0 <= cfg.drop_worst_ratio < 1.0:
        problems.append(f"drop_worst_ratio {cfg.drop_worst_ratio} must be in [0, 1)")
    if not 0.0 <= cfg.dropout < 1.0:
        problems.append(f"dropout {cfg.dropout} must be in [0, 1)")
    if cfg.lr <= 0:
        problems.append(f"lr {cfg.lr} must be positive")
    if cfg.precision not in ("fp32", "bf16"):
        problems.append(f"precision {cfg.precision!r} must be fp32 or bf16")
    return problems


@dataclasses.dataclass
class Finetuned:
    """A fine-tuned model in memory (eval mode, batch norms unfolded) and how it got there."""

    model: Any  # caption.ofa.model.OFAModel
    files: Any  # caption.ofa.captioner.OFAFiles of the starting point
    cfg: CaptionFinetuneConfig
    losses: list[float]  # per step, label-smoothed
    nll: list[float]  # per step, plain cross-entropy per token
    pairs: int
    seconds: float


def train(cfg: CaptionFinetuneConfig) -> Finetuned:
    """Fine-tune in memory; the per-step log goes to ``<out_dir>/finetune_log.jsonl``."""
    from caption.ofa.captioner import load_ofa
    from caption.ofa.checkpoint import build_model
    from common.device import resolve_device

    problems = check_config(cfg)
    if problems:
        raise CaptionDataError("; ".join(problems))
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    src = _strip_prefix(cfg.model)
    files = load_ofa(src, cfg.bpe_dir or None)
    device = torch.device(resolve_device(cfg.device))
    pairs = read_manifest(cfg.data.manifest, cfg.data.text_field) if cfg.data.manifest else \
        read_shards(cfg.data.shards, cfg.data.text_field)
    data = PairSet(pairs, files.tokenizer, files.cfg.patch_image_size, cfg.data, cfg.max_target_words)
    total = cfg.steps or math.ceil(len(pairs) / cfg.batch_size * cfg.epochs)

    model = build_model(files.cfg, files.state, device).requires_grad_(True).set_dropout(cfg.dropout).train()
    if cfg.freeze_embeddings:
        model.embed_tokens.weight.requires_grad_(False)
    if cfg.freeze_batchnorm:
        for m in model.encoder.resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total, cfg.warmup_ratio))
    prompt = torch.tensor(files.tokenizer.encode_prompt(cfg.prompt), dtype=torch.long, device=device)
    bf16 = cfg.precision == "bf16" and device.type == "cuda"
    if cfg.precision == "bf16" and not bf16:
        logger.warning("precision bf16 is for CUDA; training in fp32 on %s", device)
    logger.info("fine-tuning OFA-%s from %s on %d pairs: %d steps of %d on %s", files.cfg.flavour, src, len(pairs),
                total, cfg.batch_size, device)

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    losses, nlls = [], []
    batches = epoch_batches(len(pairs), cfg.batch_size, cfg.seed)
    try:
        with open(out / LOG_FILE, "w") as log:
            for step in range(1, total + 1):
                batch = {k: v.to(device) for k, v in data.batch(next(batches)).items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    result = caption_loss(model, batch, prompt, cfg.label_smoothing,
                                          cfg.drop_worst_ratio if step > cfg.drop_worst_after else 0.0)
                loss = result["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"step {step}: loss is {float(loss)}; lower lr ({cfg.lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                lr = optimizer.param_groups[0]["lr"]  # the rate this step trains at (the scheduler moves on below)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                nlls.append(float(result["nll"].detach()))
                if step % cfg.log_every == 0 or step in (1, total):
                    record = {"step": step, "loss": losses[-1], "nll": nlls[-1], "grad_norm": float(grad_norm),
                              "lr": lr, "tokens": int(result["tokens"])}
                    log.write(json.dumps(record) + "\n")
                    logger.info("step %d/%d loss %.4f nll %.4f", step, total, losses[-1], nlls[-1])
    finally:
        data.close()
    model.eval().requires_grad_(False)
    return Finetuned(model=model, files=files, cfg=cfg, losses=losses, nll=nlls, pairs=len(pairs),
                     seconds=time.perf_counter() - t0)


def save(result: Finetuned, out_dir: str | Path) -> Path:
    """``model.safetensors`` + ``config.json`` + the tokenizer files: a directory ``ofa:<out_dir>`` loads."""
    from caption.ofa.checkpoint import save_converted
    from common.files import sha256_file

    out = Path(out_dir)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in result.model.state_dict().items()}
    files = result.files
    meta = {**{k: files.meta[k] for k in ("num_codes", "num_bins") if k in files.meta},
            "source": f"caption fine-tuning of {Path(files.weights).resolve()}",
            # The official checkpoint the chain started from, when the starting point recorded one.
            "source_sha256": files.meta.get("source_sha256") or (
                sha256_file(files.weights) if Path(files.weights).suffix == ".pt" else None),
            "finetuned_from_sha256": sha256_file(files.weights),
            "finetune": {**strict_json(result.cfg), "steps_run": len(result.losses),
                         "pairs": result.pairs}}
    save_converted(out, files.cfg, state, meta)
    for name, path in find_bpe_files(files.bpe_dir).items():
        if path.resolve() != (out / name).resolve():
            shutil.copyfile(path, out / name)
    return out


def run(cfg: CaptionFinetuneConfig) -> dict[str, Any]:
    """Fine-tune, save to ``cfg.out_dir`` and return a summary (losses per step, sizes, seconds)."""
    result = train(cfg)
    out = save(result, cfg.out_dir)
    logger.info("wrote the fine-tuned OFA to %s (%.1f s)", out, result.seconds)
    return {"out_dir": str(out), "steps": len(result.losses), "pairs": result.pairs, "losses": result.losses,
            "nll": result.nll, "seconds": round(result.seconds, 2), "log": str(out / LOG_FILE)}

