"""The ``minidl`` command line: ``train``, ``eval``, ``predict``, ``summary``, ``plugins``, ``data pack``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _cmd_plugins(args) -> int:
    from .plugins import get_plugin_manager

    manager = get_plugin_manager()
    errors = []
    try:
        manager.build_all()
    except Exception as e:  # a name clash: still list what loaded, then fail
        errors.append(str(e))
    plugins = [info.as_dict() for info in manager.plugins.values()]
    inactive = _inactive_conv_algorithms()
    for info in plugins:  # registered, but unable to compute anything here (a package or a GPU missing)
        info["inactive"] = {n: inactive[n] for n in info["registered"].get("conv_algorithms", ()) if n in inactive}
    if args.json:
        print(json.dumps({"plugins": plugins, "errors": errors}, indent=2, sort_keys=True))
    else:
        for info in plugins:
            status = info["status"] + (f" ({info['error']})" if info["error"] else "")
            print(f"{info['name']}  [{info['package']} {info['version']}]  {status}")
            for kind, names in info["registered"].items():
                if names:
                    print(f"    {kind}: {', '.join(names)}")
            for name, reason in info["inactive"].items():
                print(f"    not usable here: {name}: {reason}")
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def _inactive_conv_algorithms() -> dict:
    """name -> why, for the conv algorithms that compute nothing in this environment (``unavailable()``)."""
    from .functions.conv_algorithm import conv_algorithms

    try:
        algorithms = conv_algorithms()
    except Exception:  # a name clash: already reported by the caller
        return {}
    inactive = {}
    for name, algorithm in algorithms.items():
        check = getattr(algorithm, "unavailable", None)  # optional for algorithms that do not subclass
        reason = check() if callable(check) else None
        if reason:
            inactive[name] = str(reason)
    return inactive


def _cmd_summary(args) -> int:
    from .builder import build_model
    from .summary import format_table, summarize

    model = build_model(args.model, devices=args.devices, strategy=args.strategy)
    if args.conv_algorithm is not None:
        from .training.recipe import apply_conv_algorithm

        apply_conv_algorithm(model, args.conv_algorithm)
    summary = summarize(model, batch=args.batch, device=args.device)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def _cmd_train(args) -> int:
    from .parallel.mpi import world as mpi_world
    from .training.plots import filter_grid, plot_curves
    from .training.recipe import prepare
    from .training.trainer import NonFiniteError

    world = mpi_world()
    if not str(args.device).startswith("cuda"):
        from .cpu import tune_heap

        tune_heap()  # process-wide, which is ours to decide here: see minidl.cpu.tune_heap

    trainer = prepare(args.model, data=args.data, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, device=args.device, out=args.out, seed=args.seed, preset=args.preset,
                      workers=args.workers, checkpoint_every=args.checkpoint_every, keep=args.keep,
                      progress=not args.no_progress, ten_crop=args.ten_crop, devices=args.devices,
                      strategy=args.strategy, world=world, resume=args.resume, conv_algorithm=args.conv_algorithm,
                      precision=args.precision, cuda_graph=args.cuda_graph)
    if world is not None and world.is_root:
        batch = trainer.train_loader.batch_size
        lr = trainer.optimizer.defaults["lr"]
        print(f"data parallel over {world.size} MPI processes: global batch {batch} "
              f"({batch // world.size}{'+' if batch % world.size else ''} per process), lr {lr:g} "
              "(not scaled: each update uses the global batch's mean gradient)")
    try:
        trainer.fit(resume=args.resume, handle_sigint=True)  # Ctrl-C: finish the step, checkpoint, stop
    except NonFiniteError as e:
        print(f"minidl train: stopped: {e}", file=sys.stderr)
        return 3
    if world is not None and not world.is_root:
        return 0  # rank 0 writes the plots
    out = Path(args.out)
    made = [out / "metrics.jsonl", out / "metrics.csv"]
    if (out / "metrics.jsonl").exists():
        curves = plot_curves(out / "metrics.jsonl", out / "curves.png")
        made += [curves] if curves else []
    convs = [n for n in trainer.model.nodes if n.type == "conv2d"]
    if convs:
        made.append(filter_grid(convs[0].module.weight.data, out / "filters.png"))
    from .training.checkpoint import list_checkpoints

    made += list_checkpoints(out / "checkpoints")[-1:]
    print("wrote: " + ", ".join(str(p) for p in made if p is not None and Path(p).exists()))
    return 0


def _restore_model(path, device):
    """(model in eval mode, the loaded checkpoint) for eval and predict; a run's weight average when it kept one."""
    from .serialization import load

    loaded = load(path, device)
    if loaded.model is None:
        raise ValueError(f"{path}: has no model spec, so the model cannot be rebuilt")
    loaded.use_average()
    loaded.model.eval()
    return loaded.model, loaded


def _cmd_eval(args) -> int:
    from .data import DataLoader
    from .data.pack import available_cores
    from .training.recipe import checkpoint_eval_pipeline, open_dataset
    from .training.trainer import evaluate

    model, loaded = _restore_model(args.checkpoint, args.device)
    meta = loaded.meta
    dataset = open_dataset(args.data or meta["data"]["spec"], args.split, meta["data"].get("image_size"),
                           model.input_shape[0])
    crops = 10 if args.ten_crop else 1
    loader = DataLoader(dataset, max(1, args.batch_size // crops), shuffle=False, drop_last=False,
                        transform=checkpoint_eval_pipeline(meta, loaded.transform_state, args.ten_crop),
                        workers=args.workers or available_cores(), device=args.device)
    result = evaluate(model, loader, crops=crops)
    result.update(checkpoint=str(args.checkpoint), step=meta["step"], ten_crop=args.ten_crop)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.checkpoint} (step {meta['step']}) on {result['count']} {args.split} images"
              f"{' with ten crops' if args.ten_crop else ''}: top-1 {result['top1']:.2%}, "
              f"top-5 {result['top5']:.2%}, loss {result['loss']:.4f}")
    return 0


def _cmd_predict(args) -> int:
    import numpy

    from .data import decode_image
    from .grad_mode import no_grad
    from .tensor import tensor
    from .training.recipe import checkpoint_eval_pipeline

    model, loaded = _restore_model(args.checkpoint, args.device)
    meta = loaded.meta
    classes = meta["data"].get("classes") or [str(i) for i in range(model.nodes[-1].output_shape[0])]
    pipeline = checkpoint_eval_pipeline(meta, loaded.transform_state)
    c, h, w = model.input_shape
    size = meta["data"].get("image_size") or max(h, w)  # decoded as in training: short side to size, centre crop
    for path in args.images:
        try:
            array = decode_image(path, size, c).transpose(2, 0, 1)[None]  # (1, C, size, size)
        except Exception as e:  # Pillow raises many types for unreadable files
            print(f"{path}: cannot read image: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        with no_grad():
            probs = model(tensor(pipeline(array, None), device=args.device)).softmax(axis=1).numpy()[0]
        top = numpy.argsort(-probs)[: args.top]
        print(f"{path}:")
        for rank, k in enumerate(top, 1):
            print(f"  {rank}. {classes[k]:<20s} {probs[k]:7.2%}")
    return 0


def _cmd_data_pack(args) -> int:
    from .data.pack import available_cores, pack_folder

    workers = args.workers or available_cores()
    print(f"packing {args.folder} into {args.out}: {args.size}x{args.size} JPEGs at quality {args.quality}, "
          f"{workers} processes")
    summary = pack_folder(args.folder, args.out, size=args.size, quality=args.quality, workers=workers,
                          grayscale=args.grayscale, progress=not args.no_progress)
    for split, result in summary.items():
        skipped = len(result["skipped"])
        print(f"{split}: {result['images']} images -> {result['path']} ({result['path'].stat().st_size:,} bytes)"
              + (f"; {skipped} unreadable image{'s' if skipped != 1 else ''} skipped (listed above)" if skipped
                 else ""))
    return 0


def _batch_size(text):
    """``--batch``: a positive int, or ``dynamic`` (None) for a size chosen at run time."""
    if text == "dynamic":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}")


def _cmd_export(args) -> int:
    from .onnx import export

    metadata = {}
    if Path(args.model).suffix in (".yaml", ".yml"):
        from .builder import build_model

        model = build_model(args.model)
        print(f"minidl export: {args.model} is a model file: its weights are freshly initialized", file=sys.stderr)
    else:
        model, loaded = _restore_model(args.model, None)
        metadata = {"minidl.checkpoint": Path(args.model).name, "minidl.step": loaded.meta.get("step", "")}
        if "data" in loaded.meta:  # how inputs were prepared (normalization, classes) for whoever deploys it
            metadata["minidl.data"] = json.dumps(loaded.meta["data"], sort_keys=True)
    shape = (args.batch,) + tuple(model.input_shape)
    try:
        path = export(model, args.output, shape, opset=args.opset, metadata=metadata)
    except ImportError as e:  # the onnx package is an extra
        print(f"minidl export: error: {e}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    batch = "N" if args.batch is None else args.batch
    print(f"wrote {path} ({size / 2**20:.1f} MiB): {model.name}, opset {args.opset}, input 'input' "
          f"{'x'.join(map(str, (batch,) + tuple(model.input_shape)))}, output {model.output!r}")
    return 0


def _conv_algorithm_option(parser) -> None:
    parser.add_argument("--conv-algorithm", help="algorithm of every convolution without its own: a name from "
                                                 "`minidl plugins` (im2col_gemm, winograd, ...) or auto (time each "
                                                 "once per shape); default: the model file's, else the rule")


def _device_split_options(parser) -> None:
    parser.add_argument("--devices", help="devices to split the model over, e.g. cpu:0,cpu:1 or cuda:0,cuda:1 "
                                          "(default: the model file's devices:)")
    parser.add_argument("--strategy", help="device strategy: single, columns, data_parallel, hybrid, or a plugin's "
                                           "(default: the model file's strategy:)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="minidl", description="minidl: a small plugin-based deep-learning framework")
    parser.add_argument("--version", action="version", version=f"minidl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list plugins, their packages, status and what they register")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_plugins)

    p = sub.add_parser("summary", help="per-layer output shape, parameters, MACs, device, conv algorithm and "
                                       "activation memory")
    p.add_argument("model", help="model YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--batch", type=int, default=1, help="batch size for shapes and activation memory")
    p.add_argument("--device", help="the device whose convolution algorithms to show, e.g. cuda:0 "
                                    "(default: where the model is)")
    _conv_algorithm_option(p)
    _device_split_options(p)
    p.set_defaults(run=_cmd_summary)

    p = sub.add_parser("train", help="train a model file on a dataset (checkpoints, metrics, plots)")
    p.add_argument("model", help="model YAML file (its train: section gives the defaults)")
    p.add_argument("--data", help="dataset name (fashion-mnist, ...) or path (IDX dir, image folder, .npz)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="stop after this many optimizer steps instead")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    _device_split_options(p)
    _conv_algorithm_option(p)
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"],
                   help="fp32, tf32 (GPU tensor cores), bf16 or fp16 (mixed precision with float32 master weights; "
                        "fp16 scales the loss); default: the model file's train: precision, else fp32")
    p.add_argument("--cuda-graph", choices=["auto", "on", "off"],
                   help="on a GPU, capture the training step into a CUDA graph after a few eager steps and replay "
                        "it (auto: when possible, saying why not; off: never); default: the model file's "
                        "train: cuda_graph, else auto")
    p.add_argument("--out", default="runs/latest", help="output directory (default: runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("--seed", type=int)
    p.add_argument("--preset", choices=["paper"], help="the AlexNet paper's optimizer, schedule and init")
    p.add_argument("--workers", type=int, help="data loading threads")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    p.add_argument("--keep", type=int, help="checkpoints kept (default 3)")
    p.add_argument("--ten-crop", action="store_true", help="validate with the paper's ten crops")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, loss")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="dataset (default: the one it was trained on)")
    p.add_argument("--split", default="test")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's ten crops")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--workers", type=int, help="data loading threads (default: every core)")
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("predict", help="top-5 classes with probabilities for image files")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_cmd_predict)

    data = sub.add_parser("data", help="prepare datasets: `minidl data pack FOLDER OUT`")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("pack", help="decode an image folder once into a packed dataset (OUT/<split>.mdlpack)")
    p.add_argument("folder", help="image folder: FOLDER/train/<class>/<image> and FOLDER/val/<class>/<image> "
                                  "(or FOLDER/<class>/<image>)")
    p.add_argument("out", help="output directory; --data OUT trains from it")
    p.add_argument("--size", type=int, default=256, help="side of the stored square images (default 256: the "
                                                         "short side resized to it, centre-cropped)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, help="decoding processes (default: every core)")
    p.add_argument("--grayscale", action="store_true", help="store one channel instead of RGB")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_data_pack)

    p = sub.add_parser("export", help="write a checkpoint's (or a model file's) model as an ONNX file")
    p.add_argument("model", help="checkpoint (.safetensors) or model YAML file (fresh weights)")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--batch", type=_batch_size, default=None, metavar="N|dynamic",
                   help="batch size the file is fixed to, or dynamic (default): any batch size")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (13 or later; default 17)")
    p.set_defaults(run=_cmd_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # `minidl summary ... | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, FileNotFoundError, KeyError) as e:  # ModelError, CheckpointError, missing data...
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"minidl {args.command}: error: {message}", file=sys.stderr)
        _abort_other_ranks(2)
        return 2
    except BaseException:
        _abort_other_ranks(1)
        raise


def _abort_other_ranks(code: int) -> None:
    """Under MPI, an error on this rank ends the whole job instead of leaving the others waiting."""
    from .parallel.mpi import launched_ranks, world

    if launched_ranks() > 1:
        import traceback

        try:
            current = world()
        except RuntimeError:  # mpi4py missing: nothing to abort through
            return
        sys.stderr.write(f"minidl: rank {current.rank} of {current.size} failed; aborting every rank\n")
        if sys.exc_info()[0] not in (None, ValueError, FileNotFoundError, KeyError):
            traceback.print_exc()
        sys.stderr.flush()
        current.abort(code)


if __name__ == "__main__":
    sys.exit(main())
