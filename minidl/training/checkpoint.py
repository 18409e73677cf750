"""Checkpoints: one safetensors file per save, with the training state as JSON metadata inside.

A checkpoint holds the model's parameters and buffers (``model/<name>``),
the optimizer's arrays (``optimizer/<param index>/<key>``), transform
statistics (``transform/<key>``), and, as JSON in the file's metadata, the
model spec, plugin names and versions, step, epoch, position in the epoch,
RNG state, scheduler state, optimizer hyperparameters and scalars, the
best metric, the algorithm each convolution layer chose per shape, the
precision and loss-scaler state, and the weight average (``ema/<name>``). One file means one atomic ``os.replace``: a checkpoint is
either complete or absent. No pickle anywhere.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy

from ..backend import CPU, transfer
from ..functions.conv_algorithm import ConvProblem, conv_algorithms
from ..io_utils import atomic_write
from ..safetensors_io import SafetensorsError, read_header, read_safetensors

__all__ = ["write_checkpoint", "save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_valid_checkpoint", "CheckpointError",
           "FORMAT", "read_transform_state", "conv_algorithm_records", "restore_conv_algorithms"]

FORMAT = "minidl-checkpoint-1"
_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def checkpoint_path(directory, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:09d}.safetensors"


def list_checkpoints(directory) -> list:
    """Checkpoint files in ``directory``, oldest first (by step)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _host(array):
    return numpy.ascontiguousarray(transfer(array, CPU))


def write_checkpoint(path, model, optimizer=None, meta: dict | None = None, transform_state: dict | None = None,
                     ema: dict | None = None):
    """Write model (and optimizer) state plus JSON ``meta`` to one safetensors file, atomically; ``ema`` holds
    averaged weights by parameter name (``ema/<name>``)."""
    from safetensors.numpy import save_file

    tensors = {f"model/{k}": _host(v) for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if hasattr(value, "shape"):
                    tensors[f"optimizer/{index}/{key}"] = _host(value)
                else:
                    scalars.setdefault(str(index), {})[key] = value
        meta["optimizer"] = {"type": type(optimizer).__name__, "param_groups": state["param_groups"],
                             "scalars": scalars, "step_count": state["step_count"]}
    for key, value in (transform_state or {}).items():
        tensors[f"transform/{key}"] = _host(value)
    for key, value in (ema or {}).items():
        tensors[f"ema/{key}"] = _host(value)
    meta["format"] = FORMAT
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"minidl": json.dumps(meta, default=_json_default)})
    return path


def save_checkpoint(directory, step: int, model, optimizer=None, meta: dict | None = None,
                    transform_state: dict | None = None, keep: int = 3, ema: dict | None = None) -> Path:
    """Write ``ckpt-<step>.safetensors`` atomically and keep only the newest ``keep`` checkpoints."""
    path = write_checkpoint(checkpoint_path(directory, step), model, optimizer, {**(meta or {}), "step": int(step)},
                            transform_state, ema)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def _json_default(value):
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint metadata")


def load_checkpoint(path) -> dict:
    """{"meta": dict, "model": {name: array}, "optimizer": state dict or None, "transform": {key: array},
    "ema": {parameter name: averaged array} (empty without a weight average)}."""
    path = Path(path)
    try:
        _, metadata, _ = read_header(path)
        raw = metadata.get("minidl")
        if raw is None:
            raise CheckpointError(f"{path}: not a minidl checkpoint (no 'minidl' metadata)")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
        tensors = read_safetensors(path)
    except (SafetensorsError, json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    transform = {k[len("transform/"):]: v for k, v in tensors.items() if k.startswith("transform/")}
    ema = {k[len("ema/"):]: v for k, v in tensors.items() if k.startswith("ema/")}
    optimizer = None
    if "optimizer" in meta:
        opt = meta["optimizer"]
        state = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in opt.get("scalars", {}).items():
            state.setdefault(int(index), {}).update(values)
        optimizer = {"state": state, "param_groups": opt["param_groups"], "step_count": opt.get("step_count", 0)}
    return {"meta": meta, "model": model, "optimizer": optimizer, "transform": transform, "ema": ema, "path": path}


def latest_valid_checkpoint(directory):
    """The newest checkpoint that loads, falling back (with a warning) past corrupt ones; None if none."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping corrupt checkpoint: {e}", stacklevel=2)
    return None


def read_transform_state(path) -> dict:
    """A checkpoint's transform statistics (``transform/<key>``: the mean image, ...) without its weights."""
    from safetensors import safe_open

    path = Path(path)
    try:
        header, _, _ = read_header(path)
        names = [name for name in header if name.startswith("transform/")]
        with safe_open(str(path), "numpy") as f:
            return {name[len("transform/"):]: f.get_tensor(name) for name in names}
    except (SafetensorsError, OSError) as e:
        raise CheckpointError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None


def conv_algorithm_records(model) -> list:
    """The convolution algorithms ``model``'s layers chose, as JSON: [{"layer", "problem", "algorithm"}]."""
    return [{"layer": name, "problem": problem.as_dict(), "algorithm": algorithm}
            for name, module in model.named_modules()
            for problem, algorithm in getattr(module, "algorithm_choices", {}).items()]


def restore_conv_algorithms(model, records) -> None:
    """Make ``model``'s layers choose what :func:`conv_algorithm_records` recorded; warn about what cannot be."""
    modules, known = dict(model.named_modules()), conv_algorithms()
    for record in records:
        module = modules.get(record["layer"])
        if module is None or not hasattr(module, "algorithm_choices") or record["algorithm"] not in known:
            what = "no such convolution layer" if record["algorithm"] in known else "algorithm not installed"
            warnings.warn(f"checkpoint chose conv algorithm {record['algorithm']!r} for layer {record['layer']!r} "
                          f"({what}); choosing anew, so results may differ in the last bits", RuntimeWarning,
                          stacklevel=2)
            continue
        module.algorithm_choices[ConvProblem.from_dict(record["problem"])] = record["algorithm"]
