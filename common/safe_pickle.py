"""Unpickling foreign ``.pt`` checkpoints without running their code: one allow-list for every
checkpoint the project reads (official CLIP-ViP and OFA weights)."""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch

from common.errors import MissingInputError, UserError

# What a checkpoint pickle may build: tensors, storages, plain containers and values, plus the
# argparse.Namespace and numpy scalars fairseq (OFA) stores beside its weights. Nothing that runs code.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes (numpy scalars use it)
    ("argparse", "Namespace"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class UnsafeCheckpointError(UserError):
    """The checkpoint's pickle refers to something other than plain data; it is never loaded."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)) or (
            module.startswith("numpy.dtypes") and name.endswith("DType")
        ):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to unpickle global {module}.{name}: a checkpoint holds only tensors and plain data; "
            "this file carries code or objects from another program"
        )


_PICKLE_MODULE = types.ModuleType("clipvip_restricted_pickle")
_PICKLE_MODULE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_PICKLE_MODULE.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]


def restricted_load(path: str | Path) -> Any:
    """Unpickle a ``torch.save`` file (zip or legacy format) allowing only plain data.

    Every ``.pt`` the project reads goes through here (official CLIP-ViP and OFA checkpoints). A
    global outside the allow-list is refused before it is ever called, with a one-line
    ``UnsafeCheckpointError``; there is no switch to load such a file anyway.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} does not exist")
    try:
        # weights_only=False only because torch's own allow-list does not know argparse.Namespace;
        # safety comes from _RestrictedUnpickler, which torch uses for every global lookup.
        return torch.load(path, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:200]})") from None
