"""Build a captioner from a spec string (the ``caption.model`` config value):

- ``hf:<path or hub id>``: a stock transformers image-to-text model (BLIP, GIT, any
  VisionEncoderDecoder), see ``caption/hf.py``.
- ``ofa:<checkpoint>``: the OFA port, see ``caption/ofa``.
- ``py:<module>:<Class>``: your own class implementing :class:`caption.protocol.Captioner` (a
  VLM, a remote API, a stand-in for benchmarks), imported by name on the caption node and built
  with ``device``, ``settings``, ``batch_size`` and the keyword ``options`` given here. It runs
  your code, as ``python -m`` would: it comes from your own config, never from a file we load.

Backends load lazily, so naming one never imports the other.
"""

from __future__ import annotations

import importlib
from typing import Any

from caption.protocol import Captioner, DecodeSettings
from common.errors import UserError

BACKENDS = ("hf", "ofa", "py")


def load_captioner(spec: str, *, device: str = "auto", settings: DecodeSettings | None = None,
                   batch_size: int | None = None, **kwargs: Any) -> Captioner:
    """Build a captioner from ``hf:<model>``, ``ofa:<checkpoint>`` or ``py:<module>:<Class>``.

    ``batch_size``: images per forward pass (the backends split longer calls); ``None`` keeps the
    backend's own default.
    """
    if ":" not in spec:
        raise UserError(f"caption model {spec!r} needs a backend prefix: 'hf:<path or hub id>', "
                         "'ofa:<checkpoint path>' or 'py:<module>:<Class>'")
    backend, target = spec.split(":", 1)
    settings = settings or DecodeSettings()
    if backend == "hf":
        from caption.hf import HFCaptioner

        return HFCaptioner(target, device=device, settings=settings, batch_size=batch_size, **kwargs)
    if backend == "ofa":
        from caption.ofa.captioner import OFACaptioner

        return OFACaptioner(target, device=device, settings=settings, batch_size=batch_size, **kwargs)
    if backend == "py":
        return python_class(target)(device=device, settings=settings, batch_size=batch_size, **kwargs)
    raise UserError(f"unknown caption backend {backend!r} in {spec!r}; use one of {', '.join(BACKENDS)}")


def python_class(target: str) -> type:
    """The class named by ``<module>:<Class>``; raises :class:`UserError` naming what is missing."""
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise UserError(f"caption model 'py:{target}' must name a class as 'py:<module>:<Class>'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"caption model 'py:{target}': module {module_name!r} cannot be imported here ({exc}); "
                         "it must be importable on every caption node") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UserError(f"caption model 'py:{target}': module {module_name!r} has no class {class_name!r}")
    return cls
