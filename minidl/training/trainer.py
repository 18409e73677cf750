"""The training loop: epochs or steps, metrics, progress, checkpoints, resume, and a stop on Ctrl-C.

    trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=15, out_dir="runs/mini")
    history = trainer.fit()

Every epoch it evaluates top-1/top-5 accuracy and loss, steps the scheduler,
appends a row to ``metrics.jsonl`` and ``metrics.csv``, and writes a
checkpoint (keeping the newest ``keep``). A non-finite loss stops training
with the step and the first layer whose output is not finite; the last good
checkpoint is never replaced by a bad one. With ``fit(handle_sigint=True)``
(``minidl train``), Ctrl-C finishes the current step, writes a checkpoint and
stops. ``fit(resume=True)`` continues from the newest valid checkpoint in
``out_dir``, bit for bit on the CPU (checkpoints record each convolution's
algorithm, and resuming uses the same ones).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy

from .. import random
from ..backend import CPU, transfer
from ..cpu import scratch
from ..functions import cross_entropy
from ..grad_mode import no_grad
from ..tensor import Tensor
from .checkpoint import (
    conv_algorithm_records, latest_valid_checkpoint, list_checkpoints, load_checkpoint, restore_conv_algorithms,
    save_checkpoint,
)

__all__ = ["Trainer", "NonFiniteError", "evaluate", "topk_correct"]


class NonFiniteError(FloatingPointError):
    """Training produced NaN or infinity; the message names the step and the layer."""


def topk_correct(logits, labels, ks=(1, 5)) -> dict:
    """{k: number of rows whose label is among the k largest logits} (host ints)."""
    scores = transfer(logits.data if isinstance(logits, Tensor) else logits, CPU)
    labels = numpy.asarray(transfer(labels, CPU))
    result = {}
    order = numpy.argsort(-scores, axis=1, kind="stable")
    for k in ks:
        k_eff = min(k, scores.shape[1])
        result[k] = int((order[:, :k_eff] == labels[:, None]).any(axis=1).sum())
    return result


@no_grad()
def evaluate(model, loader, crops: int = 1, world=None) -> dict:
    """Loss, top-1 and top-5 accuracy of ``model`` (in eval mode) over ``loader``.

    With ``crops`` > 1 (ten-crop evaluation), each image's ``crops`` rows of
    logits are averaged as softmax probabilities, as in the paper. With an
    MPI ``world`` each process evaluates its share of every batch and the
    totals are summed.
    """
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, {1: 0, 5: 0}
    try:
        for batch in loader.epoch(0):
            inputs, labels = batch.inputs, batch.labels
            if world is not None:
                lo, hi = world.share(len(labels))
                inputs, labels = inputs[lo * crops:hi * crops], labels[lo:hi]
                if hi <= lo:
                    continue
            logits = model(inputs)
            if crops > 1:
                probs = logits.softmax(axis=1).numpy().reshape(len(labels), crops, -1).mean(axis=1)
                loss_sum += float(-numpy.log(probs[numpy.arange(len(labels)), labels] + 1e-12).sum())
                hits = topk_correct(numpy.log(probs + 1e-12), labels)
            else:
                loss_sum += float(cross_entropy(logits, labels, reduction="sum").item())
                hits = topk_correct(logits, labels)
            total += len(labels)
            for k in correct:
                correct[k] += hits[k]
    finally:
        model.train(was_training)
    if world is not None:
        loss_sum, correct[1], correct[5], total = world.sum([loss_sum, correct[1], correct[5], total])
    return {"loss": loss_sum / max(total, 1), "top1": correct[1] / max(total, 1), "top5": correct[5] / max(total, 1),
            "count": total}


class Trainer:
    """Trains ``model`` with ``optimizer`` on ``train_loader`` (see the module docstring).

    Args:
        scheduler: stepped once per epoch (``reduce_on_plateau`` gets the
            validation top-1 error), or after every step with
            ``scheduler_interval="step"``.
        epochs / steps: stop after this many epochs, or this many optimizer steps.
        out_dir: where checkpoints, metrics and plots go (None: nothing is written).
        checkpoint_every: also checkpoint every this many steps (besides each epoch end).
        keep: checkpoints kept.
        meta: extra JSON-able metadata stored in checkpoints (model spec, data, plugins).
        transform_state: arrays stored with checkpoints (e.g. a mean image).
        progress: show a tqdm progress bar.
        check_every: read the loss back from the device every this many steps
            (1 on the CPU; larger on a GPU to avoid stalling it).
        world: an MPI world (:func:`minidl.parallel.mpi.world`): train data-parallel
            over its processes (see :mod:`minidl.parallel.mpi`); rank 0 alone writes.
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, scheduler=None, epochs: int | None = None,
                 steps: int | None = None, out_dir=None, checkpoint_every: int | None = None, keep: int = 3,
                 meta: dict | None = None, transform_state: dict | None = None, progress: bool = True,
                 check_every: int | None = None, eval_crops: int = 1, scheduler_interval: str = "epoch",
                 world=None):
        if epochs is None and steps is None:
            raise ValueError("Trainer: give epochs or steps")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs, self.max_steps = epochs, steps
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every, self.keep = checkpoint_every, keep
        self.meta = dict(meta or {})
        self.transform_state = transform_state or {}
        self.world = world
        self.writes = world is None or world.is_root  # only rank 0 writes files and prints
        self.progress = progress and self.writes
        device = train_loader.device
        self.check_every = check_every or (1 if device.type == "cpu" else 50)
        self.eval_crops = eval_crops
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        plateau = getattr(scheduler, "needs_metric", False)
        self.step_scheduler_each_step = scheduler is not None and scheduler_interval == "step" and not plateau
        self.step = 0
        self.epoch = 0
        self.position = 0  # next batch within the epoch
        self.best = None
        self.history = []
        self._stop_requested = False
        self.optimizer_parameters = [p for group in optimizer.param_groups for p in group["params"]]

    # ------------------------------------------------------------------ state
    def _meta(self) -> dict:
        meta = dict(self.meta)
        meta.update(step=self.step, epoch=self.epoch, position=self.position, best=self.best,
                    rng=random.get_state(), loader_seed=self.train_loader.seed,
                    scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                    history=self.history, conv_algorithms=conv_algorithm_records(self.model))
        return meta

    def save(self) -> Path | None:
        """Checkpoint now (refusing if any parameter is not finite)."""
        if self.out_dir is None or not self.writes:
            return None
        for name, p in self.model.named_parameters():
            if not numpy.isfinite(transfer(p.data, CPU)).all():
                raise NonFiniteError(f"step {self.step}: parameter {name} is not finite; "
                                     "not overwriting the last good checkpoint")
        return save_checkpoint(self.out_dir / "checkpoints", self.step, self.model, self.optimizer, self._meta(),
                               self.transform_state, keep=self.keep)

    def restore(self, checkpoint: dict) -> None:
        """Load model, optimizer, scheduler, RNG and position from a loaded checkpoint."""
        self.model.load_state_dict(checkpoint["model"])
        if checkpoint["optimizer"] is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        meta = checkpoint["meta"]
        self.step, self.epoch, self.position = meta["step"], meta["epoch"], meta["position"]
        self.best, self.history = meta.get("best"), meta.get("history", [])
        if self.scheduler is not None and meta.get("scheduler") is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        random.set_state(meta["rng"])
        restore_conv_algorithms(self.model, meta.get("conv_algorithms", []))  # the same arithmetic as before

    # ----------------------------------------------------------------- running
    def fit(self, resume: bool = False, handle_sigint: bool = False) -> list:
        """Train; returns the per-epoch metrics history.

        With ``handle_sigint=True`` (what ``minidl train`` passes), the first
        Ctrl-C finishes the current step, writes a checkpoint and stops; a
        second one interrupts at once. The process's SIGINT handler is
        swapped only for the duration of ``fit`` and only when asked: by
        default Ctrl-C raises KeyboardInterrupt as usual (a library does not
        take over its caller's signals).
        """
        if self.out_dir is not None:
            if resume:
                checkpoint = self._checkpoint_to_resume()
                if checkpoint is not None:
                    self.restore(checkpoint)
                    self._say(f"resumed from {checkpoint['path']} (epoch {self.epoch}, step {self.step})")
            elif list_checkpoints(self.out_dir / "checkpoints"):
                raise ValueError(f"{self.out_dir} already has checkpoints: resume them (--resume) or choose another "
                                 "output directory; a new run would overwrite them")
        if self.out_dir is not None and self.writes:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.world is not None:
            self.world.broadcast_parameters(self.model)
        with _StopOnInterrupt(self) if handle_sigint else contextlib.nullcontext():
            while not self._done():
                self._train_epoch()
                if self._stop_requested:
                    self.save()
                    self._say(f"interrupted: checkpoint written at step {self.step}")
                    break
        scratch.clear()  # training is over: the pooled host buffers go back to the allocator
        return self.history

    def _checkpoint_to_resume(self):
        """The newest valid checkpoint; under MPI the one rank 0 picked, read by every rank."""
        if self.world is None:
            return latest_valid_checkpoint(self.out_dir / "checkpoints")
        checkpoint = latest_valid_checkpoint(self.out_dir / "checkpoints") if self.world.is_root else None
        path = self.world.broadcast_json(str(checkpoint["path"]) if checkpoint is not None else None)
        if checkpoint is None and path is not None:
            checkpoint = load_checkpoint(path)
        return checkpoint

    def _say(self, text: str) -> None:
        if self.writes:
            print(text)

    def _done(self) -> bool:
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        return self.epochs is not None and self.epoch >= self.epochs

    def _train_epoch(self) -> None:
        model, loader = self.model, self.train_loader
        model.train()
        batches = len(loader)
        bar = _progress(self.progress, total=batches, initial=self.position, desc=f"epoch {self.epoch + 1}")
        seen = correct = 0
        loss_sum = 0.0
        pending = []  # (loss tensor, logits, labels) not yet read back from the device
        started = time.perf_counter()
        for batch in loader.epoch(self.epoch, start=self.position):
            inputs, labels = batch.inputs, batch.labels
            share = contextlib.nullcontext()
            if self.world is not None:  # this process's rows of the global batch
                lo, hi = self.world.share(len(labels))
                inputs, labels = inputs[lo:hi], labels[lo:hi]
                share = random.batch_shard(lo, hi, len(batch.labels))
            with share:
                logits = model(inputs)
            loss = cross_entropy(logits, labels)
            if self.world is None and self.check_every == 1 and not math.isfinite(loss.item()):
                raise NonFiniteError(self._diagnose(batch, loss.item(), self.step + 1))  # before the update
            self.optimizer.zero_grad()
            loss.backward()
            if self.world is not None:
                global_loss, stop = self.world.allreduce_step(
                    self.optimizer_parameters, len(labels) / len(batch.labels), loss.item(), self._stop_requested)
                if not math.isfinite(global_loss):  # every rank sees the same value and stops here
                    raise NonFiniteError(self._diagnose(batch, global_loss, self.step + 1))
                self._stop_requested = stop
            self.optimizer.step()
            if self.step_scheduler_each_step:
                self.scheduler.step()
            self.step += 1
            self.position = batch.index + 1
            pending.append((loss, logits, labels))
            if len(pending) >= self.check_every or self.position == batches:
                for p_loss, p_logits, p_labels in pending:
                    value = float(p_loss.item())
                    if not math.isfinite(value):
                        raise NonFiniteError(self._diagnose(batch, value, self.step))
                    loss_sum += value * len(p_labels)
                    correct += topk_correct(p_logits, p_labels, ks=(1,))[1]
                    seen += len(p_labels)
                pending.clear()
                rate = seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.2%}",
                                img_s=f"{rate:,.0f}")
            bar.update(1)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.position < batches:
                self.save()
            if self._stop_requested or (self.max_steps is not None and self.step >= self.max_steps):
                break
        bar.close()
        seconds = time.perf_counter() - started
        if self.world is not None:
            loss_sum, correct, seen = self.world.sum([loss_sum, correct, seen])
        if self.position < batches:  # stopped mid-epoch (steps reached or interrupted)
            if not self._stop_requested:
                self.save()
            return
        self._end_epoch(loss_sum / max(seen, 1), correct / max(seen, 1), seen / max(seconds, 1e-9), seconds)

    def _end_epoch(self, train_loss, train_top1, images_per_s, seconds) -> None:
        row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": train_loss, "train_top1": train_top1, "images_per_s": images_per_s,
               "seconds": seconds}
        if self.val_loader is not None:
            result = evaluate(self.model, self.val_loader, crops=self.eval_crops, world=self.world)
            row.update(val_loss=result["loss"], val_top1=result["top1"], val_top5=result["top5"])
            if self.best is None or result["top1"] > self.best:
                self.best = result["top1"]
        if self.scheduler is not None and not self.step_scheduler_each_step:
            if getattr(self.scheduler, "needs_metric", False):
                self.scheduler.step(1.0 - row.get("val_top1", row["train_top1"]))
            else:
                self.scheduler.step()
        self.history.append(row)
        self.epoch += 1
        self.position = 0
        self._say(_format_row(row))
        if self.out_dir is not None and self.writes:
            _append_metrics(self.out_dir, row)
            self.save()

    def _diagnose(self, batch, value, step) -> str:
        """Name the first parameter, or else the first layer output, that is not finite on this batch."""
        for name, p in self.model.named_parameters():
            if not numpy.isfinite(transfer(p.data, CPU)).all():
                return f"step {step}: loss is {value}; parameter {name} is not finite"
        if not numpy.isfinite(transfer(batch.inputs.data, CPU)).all():
            return f"step {step}: loss is {value}; the input batch {batch.index} itself is not finite (check the data)"
        nodes = getattr(self.model, "nodes", None)
        if nodes and getattr(self.model, "sequential", False):
            with no_grad():
                x = batch.inputs
                for node in nodes:
                    x = node.module(x)
                    if not numpy.isfinite(transfer(x.data, CPU)).all():
                        return (f"step {step}: loss is {value}; first non-finite output at layer "
                                f"{node.index} {node.name!r} ({node.type})")
        return f"step {step}: loss is {value} (the model's outputs are finite: check the labels and the loss)"


def _format_row(row) -> str:
    text = (f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, train top-1 {row['train_top1']:.2%}, "
            f"{row['images_per_s']:,.0f} images/s, {row['seconds']:.0f} s")
    if "val_top1" in row:
        text += f"; val loss {row['val_loss']:.4f}, top-1 {row['val_top1']:.2%}, top-5 {row['val_top5']:.2%}"
    return text


def _append_metrics(out_dir: Path, row: dict) -> None:
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    path = out_dir / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _progress(enabled, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(unit="batch", dynamic_ncols=True, leave=False, **kwargs)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


class _StopOnInterrupt:
    """Turn the first Ctrl-C into "finish this step, checkpoint, stop" (a second one interrupts at once)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.trainer._stop_requested:
            raise KeyboardInterrupt
        self.trainer._stop_requested = True
        print("\nstopping after this step (Ctrl-C again to abort without a checkpoint)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False
