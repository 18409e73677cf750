"""Model weights in and out: safetensors export, and import from safetensors or PyTorch files.

Parameter names are the model's dotted names (``conv1.weight``); the
torchvision-layout AlexNet (``models/alexnet-torchvision.yaml``) names its
layers after torchvision's modules, so its names are torchvision's
(``features.0.weight`` ... ``classifier.6.bias``) and a torchvision state
dict loads directly.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy

from .backend import CPU, transfer
from .io_utils import atomic_write

__all__ = ["save_weights", "load_weights", "read_weight_file"]


def save_weights(model, path, metadata: dict | None = None) -> Path:
    """Write every parameter and buffer of ``model`` to a ``.safetensors`` file (atomically)."""
    from safetensors.numpy import save_file

    tensors = {name: numpy.ascontiguousarray(transfer(array, CPU)) for name, array in model.state_dict().items()}
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def read_weight_file(path) -> dict:
    """name -> NumPy array from a ``.safetensors`` file, or a PyTorch ``.pth``/``.pt`` state dict.

    PyTorch files are read with ``torch.load(weights_only=True)`` (no pickle
    code runs); torch must be installed for them.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from .safetensors_io import read_safetensors

        return read_safetensors(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError:
            raise ValueError(f"{path}: reading PyTorch files needs torch (pip install torch); "
                             "or convert the weights to .safetensors") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's message suggests weights_only=False: not for files from strangers
            raise ValueError(f"{path}: refused: holds Python objects other than tensors, and unpickling them "
                             "could run code") from None
        except Exception as e:  # a truncated or foreign file: torch raises many kinds
            reason = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"{path}: not a loadable PyTorch weights file ({type(e).__name__}: {reason})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
        widen = (torch.bfloat16,)  # no NumPy dtype: float32 holds every value exactly
        return {k: (v.detach().cpu().float() if v.dtype in widen else v.detach().cpu()).numpy()
                for k, v in state.items() if hasattr(v, "detach")}
    raise ValueError(f"{path}: unknown weight file type {path.suffix!r} (use .safetensors, .pth or .pt)")


def load_weights(model, path, strict: bool = True, rename: dict | None = None) -> None:
    """Load weights from ``path`` into ``model`` (names checked; shapes must match exactly).

    ``rename`` maps names in the file to the model's names (prefix
    replacements: ``{"module.": ""}`` strips DataParallel's prefix).
    """
    state = read_weight_file(path)
    for old, new in (rename or {}).items():
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=strict)
    except (KeyError, ValueError) as e:
        message = e.args[0] if e.args else str(e)
        raise ValueError(f"{path}: {message}") from None
