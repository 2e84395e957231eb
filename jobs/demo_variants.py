"""The post-pretraining variants ``clipvip demo`` can run, in a module of their own so that the demo's
entry point, stages and report all read one table without importing each other."""

from __future__ import annotations

# variant -> (attention, loss terms, what it shows)
VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "proxy_ocl": ("proxy", ("vsc", "fc"), "CLIP-ViP: proxy-guided attention, L(V-SC) + L(F-C)"),
    "proxy_subtitles": ("proxy", ("vs",), "proxy-guided attention, subtitles only: L(V-S)"),
    # OCL without the subtitles: the same terms with captions as the only text.
    "proxy_captions": ("proxy", ("vc", "fc"), "proxy-guided attention, captions only: L(V-C) + L(F-C)"),
    "joint_ocl": ("joint", ("vsc", "fc"), "full joint attention over all tokens, L(V-SC) + L(F-C)"),
    "meanpool_ocl": ("meanpool", ("vsc", "fc"), "CLIP4Clip mean pooling of frame features, L(V-SC) + L(F-C)"),
}
