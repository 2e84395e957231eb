"""What ``clipvip demo`` runs: its sizes and settings (``DemoConfig``, ``small`` for CI) and the
post-pretraining variants it compares. The entry point, stages and report all read this module and
none of them imports another."""

from __future__ import annotations

import dataclasses

# variant -> (attention, loss terms, what it shows)
VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "proxy_ocl": ("proxy", ("vsc", "fc"), "CLIP-ViP: proxy-guided attention, L(V-SC) + L(F-C)"),
    "proxy_subtitles": ("proxy", ("vs",), "proxy-guided attention, subtitles only: L(V-S)"),
    # OCL without the subtitles: the same terms with captions as the only text.
    "proxy_captions": ("proxy", ("vc", "fc"), "proxy-guided attention, captions only: L(V-C) + L(F-C)"),
    "joint_ocl": ("joint", ("vsc", "fc"), "full joint attention over all tokens, L(V-SC) + L(F-C)"),
    "meanpool_ocl": ("meanpool", ("vsc", "fc"), "CLIP4Clip mean pooling of frame features, L(V-SC) + L(F-C)"),
}


@dataclasses.dataclass(kw_only=True, frozen=True)
class DemoConfig:
    """Sizes of the default demo; ``--small`` shrinks them for CI."""

    out_dir: str = "demo_out"
    seed: int = 0
    n_pretrain: int = 720  # curated into shards
    # A smaller palette than the synthesiser's full one: each training batch then holds clips that
    # differ only in motion direction, the negatives that make direction worth learning.
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square")
    subtitles: str = "asr"  # pretraining subtitles: "asr" (mostly off-topic speech) | "narrated" (about the clip)
    n_finetune: int = 96  # downstream-style training clips (clean descriptions)
    n_val: int = 32  # downstream-style validation clips: fine-tune checkpoint selection
    n_test: int = 96  # held-out test clips: every table
    # The captioner's labelled clips (their middle frames): fine-tuning and held-out accuracy.
    n_caption_train: int = 512
    n_caption_heldout: int = 64
    caption_steps: int = 150  # 0 keeps caption_model as given
    caption_batch_size: int = 32
    caption_lr: float = 1e-3  # the tiny random OFA only; a given OFA keeps the recipe's 1e-5
    num_frames: int = 8  # per clip in training and evaluation (12 in the paper; 8 costs a third less here)
    image_size: int = 32  # the debug flavour's input; 224 with a real CLIP
    flavour: str = "debug"
    clip_model: str = ""  # "" tiny random CLIP-ViP | HF CLIP dir or hub id
    caption_model: str = ""  # "" tiny OFA fine-tuned here | "ofa:<ckpt>" (fine-tuned here) | "hf:<model>" (as is)
    pretrain_steps: int = 120
    # Post-pretraining runs: every variant at ``seed``; the claim variants again at seed+1 .. seed+seeds-1.
    # Every claim (captions, subtitles, attention) is tested at every seed, so all variants are claim variants.
    variants: tuple[str, ...] = ("proxy_subtitles", "proxy_ocl", "proxy_captions", "joint_ocl", "meanpool_ocl")
    claim_variants: tuple[str, ...] = ("proxy_subtitles", "proxy_ocl", "proxy_captions", "joint_ocl", "meanpool_ocl")
    seeds: int = 2
    finetune_steps: int = 120
    finetune_lr: float = 1e-3
    # Fine-tuned from each seed's post-pretrained model: proxy-guided attention beside mean pooling.
    finetune_variants: tuple[str, ...] = ("proxy_ocl", "meanpool_ocl")
    smoke_test: bool = False  # set by --small: the report says its numbers are a smoke test
    batch_size: int = 32
    lr: float = 2e-3  # random-init tiny models; a real CLIP wants ~5e-6 (the paper's)
    # Tiny models trained from scratch start at CLIP's from-scratch temperature; CLIP weights keep 4.60.
    logit_scale_init: float = 2.66
    # From-scratch models only (CLIP weights keep the official zeros): at zeros a random-init tower
    # is blind to frame order and stays so; N(0, 0.5) learnt direction in ~500 steps on clean text.
    temporal_init_std: float = 0.5
    short_side: int = 64  # training copies in the shards; 240 (HD-VILA-like) with a real 224 px CLIP
    nmi_n: int = 200  # sentences per corpus in the NMI report
    ray_num_cpus: int = 2
    num_workers: int = 0  # loader worker processes per training run (0: the run's own process decodes)
    train_workers: int = 2  # training runs at once, each in its own process with cores / train_workers threads
    synth_workers: int = 2  # processes encoding the synthetic clips


def small(cfg: DemoConfig) -> DemoConfig:
    """The reduced size CI runs: every stage, fewer clips and steps."""
    return dataclasses.replace(cfg, n_pretrain=48, n_finetune=24, n_val=8, n_test=12, pretrain_steps=12,
                               finetune_steps=6, batch_size=8, nmi_n=40, n_caption_train=24, n_caption_heldout=8,
                               caption_steps=4, caption_batch_size=8, smoke_test=True)


# What each field means, for ``clipvip demo --help`` (``--set field=value`` changes one).
FIELD_HELP: dict[str, str] = {
    "out_dir": "output folder (also --out)",
    "seed": "first seed; the runs use seed, seed+1, ... (seeds of them)",
    "n_pretrain": "pretraining clips, curated into shards",
    "colors": "colours the synthetic shapes take", "shapes": "shapes the clips show",
    "subtitles": "pretraining subtitles: asr (mostly off-topic speech) or narrated (about the clip)",
    "n_finetune": "downstream-style fine-tuning clips (clean descriptions)",
    "n_val": "validation clips (fine-tuning checkpoint selection)", "n_test": "test clips: every table",
    "n_caption_train": "labelled clips the captioner is fine-tuned on",
    "n_caption_heldout": "labelled clips its accuracy is measured on",
    "caption_steps": "captioner fine-tuning steps (0 keeps caption_model as given)",
    "caption_batch_size": "captioner batch size", "caption_lr": "captioner lr (the tiny random OFA only)",
    "num_frames": "frames per clip in training and evaluation", "image_size": "frame size the model sees",
    "flavour": "CLIP-ViP size when no clip_model is given (debug: tiny)",
    "clip_model": "a CLIP folder or hub id to start from ('' : a tiny random model)",
    "caption_model": "'' (a tiny OFA trained here), ofa:<checkpoint> (fine-tuned here) or hf:<model> (as is)",
    "pretrain_steps": "steps of every post-pretraining run (400 shows the longer-run reversal)",
    "variants": "post-pretraining variants run at the first seed (proxy_subtitles, proxy_ocl, proxy_captions, "
                "joint_ocl, meanpool_ocl)",
    "claim_variants": "variants run again at every further seed", "seeds": "seeds per claim variant",
    "finetune_steps": "fine-tuning steps", "finetune_lr": "fine-tuning lr",
    "finetune_variants": "variants fine-tuned from each seed's post-pretrained model",
    "smoke_test": "label the numbers a smoke test (--small sets it)",
    "batch_size": "clips per training step", "lr": "post-pretraining lr (random-init tiny models)",
    "logit_scale_init": "starting temperature of random-init models",
    "temporal_init_std": "spread of random-init temporal embeddings",
    "short_side": "short side of the shards' training copies (px)", "nmi_n": "sentences per corpus in the NMI report",
    "ray_num_cpus": "CPUs of the local Ray curation runs on",
    "num_workers": "loader processes per training run (0: the run's own process)",
    "train_workers": "training runs at once", "synth_workers": "processes encoding the synthetic clips",
}


def fields_help() -> str:
    """Every field with its default and meaning, one per line."""
    lines = []
    for f in dataclasses.fields(DemoConfig):
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        lines.append(f"  {f.name} = {shown}: {FIELD_HELP.get(f.name, '')}")
    return "\n".join(lines)
