"""From a model file (its ``train:`` section) and command-line overrides to a ready Trainer.

Also the AlexNet paper's recipe as a preset (``--preset paper``): SGD with
momentum 0.9 and weight decay 5e-4 in the paper's form, lr 0.01 divided by
10 when the validation error stops improving, weights N(0, 0.01) and biases 1
in conv2, conv4, conv5 and the hidden fully connected layers (0 elsewhere).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

from .. import random
from ..backend import as_device, cuda_device_count
from ..builder import build_model, load_spec
from ..data import DataLoader
from ..data.images import MissingSplitError
from ..data.pack import available_cores
from ..data.packed import PackedDataset, is_packed
from ..data.pixels import MeanImage, Normalize
from ..data.transforms import CenterCrop, Compose, RandomCrop, TenCrop
from ..functions.conv_algorithm import AUTO, get_algorithm
from ..nn.init import constant, normal
from ..plugins import get_plugin_manager, registry
from ..yaml_loader import plain
from .checkpoint import CheckpointError, list_checkpoints, read_transform_state
from .trainer import Trainer

__all__ = ["PAPER_PRESET", "apply_paper_init", "open_dataset", "make_transforms", "eval_transforms",
           "checkpoint_eval_pipeline", "prepare"]

PAPER_PRESET = {
    "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "form": "paper"},
    "scheduler": {"type": "reduce_on_plateau", "mode": "min", "factor": 0.1, "patience": 3},
    "batch_size": 128,
}


def apply_paper_init(model) -> None:
    """The paper's initialization: N(0, 0.01) weights; bias 1 in conv 2, 4, 5 and every fully connected layer
    but the last; bias 0 elsewhere."""
    convs = [n for n in model.nodes if n.type == "conv2d"]
    fcs = [n for n in model.nodes if n.type == "linear"]
    ones = {convs[i].name for i in (1, 3, 4) if i < len(convs)} | {n.name for n in fcs[:-1]}
    for node in convs + fcs:
        layer = node.module
        layer.weight.data = normal(0.01)(layer.weight.shape, layer.weight.dtype, layer.weight.device)
        if layer.bias is not None:
            value = 1.0 if node.name in ones else 0.0
            layer.bias.data = constant(value)(layer.bias.shape, layer.bias.dtype, layer.bias.device)


def open_dataset(data, split: str, image_size: int | None = None, channels: int = 3):
    """A dataset from a registered name ("fashion-mnist"), a mapping ({type: npz, path: ...}) or a path
    (an IDX directory, an .npz file, a packed dataset, or an image folder decoded to ``image_size``).

    A packed dataset must have been packed at ``image_size`` when one is given.
    """
    datasets = registry("datasets")
    if isinstance(data, dict):
        options = {k: v for k, v in data.items() if k != "type"}
        if data["type"] in ("image_folder", "imagefolder") and image_size is not None:
            options.setdefault("size", image_size)
        dataset = datasets.create(data["type"], split=split, **options)
    elif data in datasets:
        dataset = datasets.create(data, split=split)
    else:
        path = Path(str(data))
        if path.suffix == ".npz":
            dataset = datasets.create("npz", path=str(path), split=split)
        elif is_packed(path):
            dataset = datasets.create("packed", path=str(path), split=split)
        elif path.is_dir() and any(path.glob("*-images-idx3-ubyte*")):
            dataset = datasets.create("fashion-mnist", split=split, root=str(path))
        elif path.is_dir():
            dataset = datasets.create("image_folder", root=str(path), split=split, size=image_size or 256,
                                      grayscale=channels == 1)
        else:
            raise ValueError(f"--data {data!r}: not a registered dataset ({', '.join(datasets.names())}), "
                             "an existing directory, a packed dataset or an .npz file")
    if isinstance(dataset, PackedDataset) and image_size is not None and dataset.size != image_size:
        raise ValueError(f"{dataset.name}: packed at {dataset.size}x{dataset.size}, but the model's "
                         f"train.image_size is {image_size}: pack again with --size {image_size}")
    return dataset


def make_transforms(specs) -> list:
    """Transform objects from ``[{type: random_crop, size: 28, padding: 2}, ...]``."""
    transforms = registry("transforms")
    return [transforms.create(s["type"], **{k: v for k, v in s.items() if k != "type"}) for s in specs or []]


def eval_transforms(train_transforms, ten_crop: bool = False) -> list:
    """The deterministic counterpart of a training pipeline: random crops become centre (or ten) crops,
    flips and colour noise are dropped, normalization is kept."""
    out = []
    for t in train_transforms:
        if isinstance(t, RandomCrop):
            out.append(TenCrop(t.size, t.padding) if ten_crop else _center(t))
        elif not t.random:
            out.append(t)
    if ten_crop and not any(isinstance(t, TenCrop) for t in out):
        raise ValueError("ten-crop evaluation needs a random_crop in the training augmentation")
    return [t for t in out if t is not None]


def _normalizes(transforms) -> bool:
    return any(isinstance(t, (Normalize, MeanImage)) for t in transforms)


def checkpoint_eval_pipeline(meta: dict, transform_state: dict, ten_crop: bool = False) -> Compose:
    """The evaluation transforms of a training run, rebuilt from its checkpoint (``minidl eval``/``predict``)."""
    data = meta["data"]
    transforms = make_transforms(data.get("train_transforms"))
    if data.get("normalize") and not _normalizes(transforms):
        transforms.append(Normalize(**data["normalize"]))
    pipeline = Compose(transforms)
    pipeline.load_state_dict(transform_state)
    return Compose(eval_transforms(pipeline.transforms, ten_crop=ten_crop))


def _center(crop: RandomCrop):
    return None if crop.padding else CenterCrop(crop.size)


def _saved_transform_state(out) -> dict | None:
    """The statistics stored with a run (in its newest readable checkpoint), for ``--resume``."""
    for path in reversed(list_checkpoints(Path(out) / "checkpoints")) if out is not None else ():
        try:
            return read_transform_state(path)
        except CheckpointError:
            continue
    return None


def _check_data_fits(model, model_path, train_set, pipeline) -> None:
    """Clear errors, before training starts, for data the model cannot take."""
    shape = tuple(train_set.sample_shape)
    out = pipeline.output_shape(shape)
    if out is not None and tuple(out) != tuple(model.input_shape):
        if out == shape:
            raise ValueError(f"data samples are {shape} but {model_path} expects {tuple(model.input_shape)} "
                             "(a crop in train.augmentation, or train.image_size for image folders, would fit them)")
        raise ValueError(f"data samples are {shape}, and {out} after train.augmentation, but {model_path} "
                         f"expects {tuple(model.input_shape)}")
    classes = len(getattr(train_set, "classes", ()) or ())
    output = tuple(getattr(model.nodes[-1], "output_shape", ()) or ()) if getattr(model, "nodes", None) else ()
    outputs = output[0] if len(output) == 1 else None  # a classifier's (classes,) output
    if outputs is not None and classes > outputs:
        raise ValueError(f"the data has {classes} classes but {model_path} has {outputs} outputs")


def apply_conv_algorithm(model, request) -> None:
    """Give every convolution layer of ``model`` without an ``algorithm:`` of its own the algorithm ``request``
    (a registered name, or ``"auto"`` to time the supporting ones once per shape); None changes nothing."""
    if request is None:
        return
    if request != AUTO:
        get_algorithm(request)  # an unknown name fails now, naming the known ones
    for _, module in model.named_modules():
        if hasattr(module, "algorithm_choices") and getattr(module, "algorithm", None) is None:
            module.algorithm = request


def _seed_initialization(model_path, seed) -> None:
    """Seed the generators before the model is built, so the run's seed also decides the initial weights."""
    if seed is None:
        train = load_spec(model_path)[0].get("train")
        seed = train.get("seed", 0) if isinstance(train, dict) else 0
    random.manual_seed(seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)  # checked later


def prepare(model_path, data=None, epochs=None, steps=None, batch_size=None, lr=None, device="cpu", out=None,
            seed=None, preset=None, workers=None, checkpoint_every=None, keep=None, progress=True,
            ten_crop=False, devices=None, strategy=None, world=None, resume=False, conv_algorithm=None,
            precision=None, cuda_graph=None) -> Trainer:
    """Build the model, data, optimizer and scheduler for ``minidl train`` and return the Trainer.

    ``devices``/``strategy`` (default: the model file's) split the model over
    devices; batches are then loaded onto the first of them. With an MPI
    ``world``, training is data-parallel over its processes (each on GPU
    ``local_rank`` when ``device`` is a CUDA device). The data statistics the
    augmentation needs (mean image, channel means) are computed from the
    training data once; with ``resume`` they come from the run's checkpoint. ``conv_algorithm``
    (default: ``train: {conv_algorithm: ...}``) is the algorithm of every
    convolution layer that does not name its own (see :func:`apply_conv_algorithm`).
    ``precision`` (default: ``train: {precision: ...}``, else fp32) is the
    trainer's precision policy, and ``cuda_graph`` (default: ``train: {cuda_graph: ...}``, else auto)
    whether a GPU run replays its step as a CUDA graph.
    """
    if world is not None and str(device).startswith("cuda") and devices is None:
        device = f"cuda:{world.local_rank % cuda_device_count()}"
    _seed_initialization(model_path, seed)
    model = build_model(model_path, device=device if devices is None else None, devices=devices, strategy=strategy)
    train = plain(model.spec.get("train", {}))  # plain dicts: a copy that drops the YAML locations
    preset = preset or train.get("preset")
    if preset is not None:
        if preset != "paper":
            raise ValueError(f"unknown preset {preset!r}; known: paper")
        for key, value in PAPER_PRESET.items():
            if key == "batch_size":
                train.setdefault(key, value)
            else:
                train[key] = copy.deepcopy(value)
        apply_paper_init(model)
    apply_conv_algorithm(model, conv_algorithm or train.get("conv_algorithm"))
    seed = seed if seed is not None else train.get("seed", 0)
    random.manual_seed(seed)
    device = model.placement.home if model.placement is not None else as_device(device)
    model.to(device)

    data = data or train.get("data")
    if data is None:
        raise ValueError(f"{model_path}: no data: pass --data NAME|PATH or add train.data to the model file")
    image_size, channels = train.get("image_size"), model.input_shape[0]
    train_set = open_dataset(data, "train", image_size, channels)
    try:
        test_set = open_dataset(data, "test", image_size, channels)
    except MissingSplitError as e:  # an image folder without a val split: train without validation
        warnings.warn(f"no validation data, training without it: {e}", stacklevel=2)
        test_set = None
    augmentation = make_transforms(train.get("augmentation"))
    if not _normalizes(augmentation):
        augmentation.append(Normalize())  # per-channel mean and std of the training data
    pipeline = Compose(augmentation)
    _check_data_fits(model, model_path, train_set, pipeline)
    saved = _saved_transform_state(out) if resume else None
    if saved:
        pipeline.load_state_dict(saved)
    pipeline.fit(train_set)  # computes only what the saved state did not give
    batch_size = batch_size or train.get("batch_size", 128)
    decodes = hasattr(train_set, "read_windows")
    workers = workers or train.get("workers") or (available_cores() if decodes else 2)
    train_loader = DataLoader(train_set, batch_size, shuffle=True, drop_last=True, transform=pipeline, seed=seed,
                              workers=workers, device=device)
    evaluation = eval_transforms(augmentation, ten_crop=ten_crop)
    crops = 10 if ten_crop else 1
    val_loader = None if test_set is None else DataLoader(
        test_set, max(1, train.get("eval_batch_size", 500) // crops), shuffle=False, drop_last=False,
        transform=Compose(evaluation), seed=seed, workers=workers, device=device)

    optimizer_spec = dict(train.get("optimizer", {"type": "sgd", "lr": 0.01, "momentum": 0.9}))
    if lr is not None:
        optimizer_spec["lr"] = lr
    optimizer = registry("optimizers").create(optimizer_spec.pop("type"), list(model.parameters()),
                                              **optimizer_spec)
    epochs = epochs if epochs is not None else (None if steps is not None else train.get("epochs", 10))
    steps = steps if steps is not None else train.get("steps")
    interval = train.get("scheduler_interval", "epoch")
    scheduler = None
    if "scheduler" in train:
        spec = dict(train["scheduler"])
        kind = spec.pop("type")
        if kind == "cosine" and "t_max" not in spec:
            total = steps if steps is not None else epochs * (len(train_loader) if interval == "step" else 1)
            spec["t_max"] = max(1, total - spec.get("warmup_steps", 0))
        scheduler = registry("schedulers").create(kind, optimizer, **spec)

    manager = get_plugin_manager()
    meta = {
        "model_spec": plain(model.spec),
        "model_file": str(model_path),
        "data": {"spec": plain(data), "classes": list(getattr(train_set, "classes", [])),
                 "image_size": image_size, "train_transforms": plain(train.get("augmentation", [])),
                 "normalize": next(({"mean": t.mean, "std": t.std} for t in augmentation
                                    if isinstance(t, Normalize)), None)},
        "plugins": {name: {"package": p.package, "version": p.version, "status": p.status}
                    for name, p in manager.plugins.items()},
        "seed": seed,
    }
    return Trainer(model, optimizer, train_loader, val_loader, scheduler, epochs=epochs, steps=steps, out_dir=out,
                   checkpoint_every=checkpoint_every, keep=keep or train.get("keep_checkpoints", 3), meta=meta,
                   transform_state=pipeline.state_dict(), progress=progress, eval_crops=crops,
                   scheduler_interval=interval, world=world, precision=precision or train.get("precision", "fp32"),
                   ema=train.get("ema"), label_smoothing=train.get("label_smoothing", 0.0),
                   cuda_graph=cuda_graph or train.get("cuda_graph", "auto"))
