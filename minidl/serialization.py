"""``mdl.save`` / ``mdl.load``: a model (and optionally its optimizer) in one safe file.

The file is safetensors (no pickle: loading cannot run code) with JSON
metadata; a model built from a spec stores the spec too, so ``mdl.load``
rebuilds it::

    mdl.save("model.safetensors", model, optimizer, epoch=3)
    loaded = mdl.load("model.safetensors")
    loaded.model, loaded.optimizer_state, loaded.meta["epoch"]
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["save", "load", "Loaded"]


@dataclass
class Loaded:
    """What :func:`load` returns."""

    model: object  # a Model rebuilt from the stored spec, or None when the file has no spec
    state: dict  # parameter/buffer name -> NumPy array
    optimizer_state: dict | None  # for optimizer.load_state_dict
    meta: dict
    transform_state: dict  # data-transform statistics of a training run (e.g. a mean image)
    ema: dict | None = None  # parameter name -> averaged weights, when the run kept an average (train: {ema: ...})

    def use_average(self) -> None:
        """Put the averaged weights into :attr:`model` (what ``minidl eval`` and ``predict`` evaluate)."""
        if self.ema and self.model is not None:
            self.model.load_state_dict({**dict(self.model.state_dict()), **self.ema})


def save(path, model, optimizer=None, **meta):
    """Write ``model``'s parameters and buffers (and ``optimizer``'s state) to ``path`` atomically."""
    from .training.checkpoint import write_checkpoint

    spec = getattr(model, "spec", None)
    if spec is not None:
        from .yaml_loader import plain

        meta.setdefault("model_spec", plain(spec))
    return write_checkpoint(path, model, optimizer, meta)


def load(path, device=None) -> Loaded:
    """Read a file written by :func:`save` (or a training checkpoint), refusing malformed ones."""
    from .builder import build_model
    from .training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    meta = checkpoint["meta"]
    model = None
    if "model_spec" in meta:
        model = build_model(meta["model_spec"])
        model.load_state_dict(checkpoint["model"])
        if device is not None:
            model.to(device)
    return Loaded(model, checkpoint["model"], checkpoint["optimizer"], meta, checkpoint["transform"],
                  checkpoint.get("ema") or None)
