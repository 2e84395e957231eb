"""Build a captioner from a spec string (the ``caption.model`` config value):

- ``hf:<path or hub id>``: a stock transformers image-to-text model (BLIP, GIT, any
  VisionEncoderDecoder), see ``caption/hf.py``.
- ``ofa:<checkpoint>``: the OFA port, see ``caption/ofa``.

Backends load lazily, so naming one never imports the other.
"""

from __future__ import annotations

from typing import Any

from caption.protocol import Captioner, DecodeSettings


def load_captioner(spec: str, *, device: str = "auto", settings: DecodeSettings | None = None, **kwargs: Any) -> Captioner:
    """Build a captioner from ``hf:<model>`` or ``ofa:<checkpoint>``."""
    if ":" not in spec:
        raise ValueError(
            f"caption model {spec!r} needs a backend prefix: 'hf:<path or hub id>' or 'ofa:<checkpoint path>'"
        )
    backend, target = spec.split(":", 1)
    settings = settings or DecodeSettings()
    if backend == "hf":
        from caption.hf import HFCaptioner

        return HFCaptioner(target, device=device, settings=settings, **kwargs)
    if backend == "ofa":
        from caption.ofa.captioner import OFACaptioner

        return OFACaptioner(target, device=device, settings=settings, **kwargs)
    raise ValueError(f"unknown caption backend {backend!r} in {spec!r}; use 'hf' or 'ofa'")
