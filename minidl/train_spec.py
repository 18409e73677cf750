"""The ``train:`` section of a model file: validated like layers, against the registries.

    train:
      epochs: 15
      batch_size: 128
      optimizer: {type: sgd, lr: 0.02, momentum: 0.9, weight_decay: 5.0e-4}
      scheduler: {type: cosine, t_max: 15, warmup_steps: 1}
      data: {type: fashion-mnist}
      augmentation: [{type: random_crop, size: 28, padding: 2}, {type: hflip}]
      image_size: 256                  # image files: short side to 256, centre crop 256x256
      seed: 0
      scheduler_interval: step         # or epoch (the default)
      conv_algorithm: auto             # or a registered algorithm's name (default: the rule)
      precision: bf16                  # fp32 (default), tf32, bf16 or fp16 (see minidl.autocast)
      ema: 0.999                       # evaluate a moving average of the weights
      label_smoothing: 0.1
      cuda_graph: auto                 # on a GPU, replay the captured step (auto, on or off)
"""
from __future__ import annotations

import difflib

from .plugins import registry
from .spec import ModelError, check_params, schema_of, where
from .yaml_loader import LocatedDict

__all__ = ["TRAIN_KEYS", "validate_train_spec"]

TRAIN_KEYS = {
    "epochs": int, "steps": int, "batch_size": int, "seed": int, "eval_batch_size": int,
    "optimizer": dict, "scheduler": dict, "data": dict, "augmentation": list, "preset": str,
    "keep_checkpoints": int, "scheduler_interval": str, "workers": int, "image_size": int, "conv_algorithm": str,
    "precision": str, "ema": float, "label_smoothing": float, "cuda_graph": str,
}
_CHOICES = {"precision": ("fp32", "tf32", "bf16", "fp16"), "scheduler_interval": ("epoch", "step"),
            "cuda_graph": ("auto", "on", "off")}
_OPEN_UNIT = {"ema": "between 0 and 1 (exclusive), e.g. 0.999", "label_smoothing": "in [0, 1), e.g. 0.1"}
_COMPONENTS = {  # key -> (registry kind, leading positional parameters the framework passes)
    "optimizer": ("optimizers", 1),
    "scheduler": ("schedulers", 1),
    "data": ("datasets", 0),
}


def _component(spec, kind, skip, source, what):
    if not isinstance(spec.get("type"), str):
        raise ModelError(f"{what} needs a 'type' naming a registered {kind[:-1]}", source, where(spec))
    reg = registry(kind)
    try:
        entry = reg[spec["type"]]
    except KeyError as e:
        raise ModelError(str(e.args[0]), source, where(spec, "type")) from None
    given = {k: v for k, v in spec.items() if k != "type"}
    if isinstance(spec, LocatedDict):
        located = LocatedDict(spec.mark)
        located.update(given)
        located.key_marks = {k: m for k, m in spec.key_marks.items() if k != "type"}
        located.value_marks = {k: m for k, m in spec.value_marks.items() if k != "type"}
        given = located
    check_params(given, schema_of(entry, skip=skip), f"{what} {entry.name}", source, {})


def validate_train_spec(train, source: str, mark=None) -> None:
    """Raise :class:`ModelError` (with file:line:column) for anything wrong in a ``train:`` mapping."""
    if not isinstance(train, dict):
        raise ModelError("'train' must be a mapping", source, mark)
    for key, value in train.items():
        if key not in TRAIN_KEYS:
            close = difflib.get_close_matches(str(key), TRAIN_KEYS, n=1)
            raise ModelError(f"unknown key {key!r} in train", source, where(train, key),
                             hint=f"did you mean {close[0]!r}?" if close else f"known: {', '.join(TRAIN_KEYS)}")
        if key == "cuda_graph" and isinstance(value, bool):  # YAML 1.1 reads a bare on/off as a boolean
            value = train[key] = "on" if value else "off"
        expected = TRAIN_KEYS[key]
        ok = isinstance(value, expected) and not (expected in (int, float) and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ModelError(f"train.{key} must be {expected.__name__}, got {value!r}", source, where(train, key))
        if expected is int and value < 0:
            raise ModelError(f"train.{key} must be >= 0, got {value}", source, where(train, key))
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ModelError(f"train.{key} must be one of {', '.join(_CHOICES[key])}, got {value!r}", source,
                             where(train, key))
        if key in _OPEN_UNIT and not (0 <= value < 1 and (value > 0 or key != "ema")):
            raise ModelError(f"train.{key} must be {_OPEN_UNIT[key]}, got {value!r}", source, where(train, key))
    if "conv_algorithm" in train and train["conv_algorithm"] != "auto":
        algorithms = registry("conv_algorithms")
        if train["conv_algorithm"] not in algorithms:
            raise ModelError(algorithms.unknown_message(train["conv_algorithm"]) + ", or 'auto'", source,
                             where(train, "conv_algorithm"))
    for key, (kind, skip) in _COMPONENTS.items():
        if key in train:
            _component(train[key], kind, skip, source, f"train.{key}")
    for i, item in enumerate(train.get("augmentation", [])):
        if not isinstance(item, dict):
            raise ModelError(f"train.augmentation[{i}] must be a mapping with a 'type'", source,
                             where(train["augmentation"], i))
        _component(item, "transforms", 0, source, f"train.augmentation[{i}]")
