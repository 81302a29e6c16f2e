"""Restricted loading of `.pt` files with configs beside tensors (fairseq checkpoints), never plain pickle.

fairseq checkpoints (fairseq/trainer.py `state_dict`) are `{"args": Namespace | None, "cfg": dict, "model":
state dict, "optimizer_history": [...], "extra_state": {...}, ...}`; older ones carry an `argparse.Namespace`,
others may hold omegaconf/fairseq objects. `torch.load(weights_only=True)` refuses those, so this unpickler
allows an explicit list of harmless globals (torch's tensor rebuild functions and dtypes, plain containers,
`argparse.Namespace`, numpy scalars/arrays) and turns classes from fairseq/omegaconf/hydra into inert
records that run no code of theirs. Any other global (`os.system`, `builtins.eval`, ...) is refused.
"""

from __future__ import annotations

import importlib
import pickle
import types
from pathlib import Path
from typing import Any

import numpy
import torch

from ..errors import CheckpointError

_ALLOWED = {
    "_codecs.encode",  # bytes under pickle protocol 2 (torch.save's default)
    "argparse.Namespace",
    "builtins.bytearray",
    "builtins.complex",
    "builtins.frozenset",
    "builtins.set",
    "builtins.slice",
    "collections.OrderedDict",
    "torch.Size",
    "torch.Tensor",
    "torch.device",
    "torch.nn.parameter.Parameter",
    "torch._tensor._rebuild_from_type_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
}
# Packages whose classes become inert records (configs, meters): nothing of theirs is imported or run.
INERT_PACKAGES = ("fairseq", "fairseq_cli", "omegaconf", "hydra", "avhubert")


class Inert:
    """Stands in for a class of an INERT_PACKAGES module: keeps constructor args and pickled state only."""

    args: tuple = ()
    kwargs: dict = {}
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


_inert_classes: dict[str, type] = {}


def _inert(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _inert_classes:
        _inert_classes[key] = type(name, (Inert,), {"__module__": f"inert.{module}"})
    return _inert_classes[key]


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` returns only allowlisted globals or inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in _ALLOWED:
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "numpy.dtypes" and name.endswith("DType"):  # numpy >= 1.25 pickles dtypes by class
            cls = getattr(importlib.import_module(module), name, None)
            if isinstance(cls, type) and issubclass(cls, numpy.dtype):
                return cls
        if module.split(".")[0] in INERT_PACKAGES:
            return _inert(module, name)
        raise pickle.UnpicklingError(f"refusing to load global '{key}' (not a tensor, container or config)")


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load uses of its `pickle_module`: Unpickler (subclassed to map storages), load (legacy files).
_PICKLE_MODULE = types.ModuleType("avsr_restricted_pickle")
_PICKLE_MODULE.Unpickler = RestrictedUnpickler
_PICKLE_MODULE.load = _load


def restricted_load(path: Path) -> Any:
    """Load a torch `.pt`/`.pth` with RestrictedUnpickler (memory-mapped when the format allows)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    kwargs = {"map_location": "cpu", "pickle_module": _PICKLE_MODULE, "weights_only": False}
    try:
        try:
            return torch.load(path, mmap=True, **kwargs)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, **kwargs)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # a corrupt or non-torch file: zipfile, EOF, struct errors
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from None
