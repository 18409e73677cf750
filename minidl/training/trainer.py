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
import math
import signal
import threading
import time
from pathlib import Path

import numpy

from .. import random
from ..backend import CPU, transfer
from ..cpu import scratch
from ..amp import LossScaler
from ..gemm import tf32_enabled
from ..functions import cross_entropy
from ..functions.autocast import autocast
from ..grad_mode import no_grad
from .checkpoint import (
    conv_algorithm_records, latest_valid_checkpoint, list_checkpoints, load_checkpoint, restore_conv_algorithms,
    save_checkpoint,
)

from .cuda_graph import StepGraph
from .ema import WeightAverage
from .metrics import append_metrics, evaluate, format_row, progress_bar, topk_correct

__all__ = ["Trainer", "NonFiniteError", "evaluate", "topk_correct", "PRECISIONS"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


class NonFiniteError(FloatingPointError):
    """Training produced NaN or infinity; the message names the step and the layer."""


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
        precision: ``fp32``, ``tf32`` (float32 with TF32 GEMMs on GPUs; float32 on a CPU), ``bf16`` or
            ``fp16`` (:func:`minidl.autocast` around forward and loss; fp16 also scales the loss with
            :class:`minidl.amp.LossScaler`). Parameters and optimizer state stay float32.
        ema: keep an exponential moving average of the weights with this decay
            (:class:`~minidl.training.ema.WeightAverage`) and evaluate it instead of the weights.
        label_smoothing: of the cross-entropy target (as PyTorch's).
        cuda_graph: ``auto`` (default), ``on`` or ``off``: on a GPU, capture the whole step into a CUDA graph
            after a few eager steps and replay it (:mod:`minidl.training.cuda_graph`); where that is not
            possible the run says why once and trains eagerly. ``on`` also says so on a CPU.
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, scheduler=None, epochs: int | None = None,
                 steps: int | None = None, out_dir=None, checkpoint_every: int | None = None, keep: int = 3,
                 meta: dict | None = None, transform_state: dict | None = None, progress: bool = True,
                 check_every: int | None = None, eval_crops: int = 1, scheduler_interval: str = "epoch",
                 world=None, precision: str = "fp32", ema: float | None = None, label_smoothing: float = 0.0,
                 cuda_graph: str = "auto"):
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
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision, self.label_smoothing = precision, float(label_smoothing)
        self.scaler = LossScaler(enabled=precision == "fp16")
        self.ema = WeightAverage(model, ema) if ema else None
        self.step_graph = StepGraph(cuda_graph, self._forward_backward, optimizer, device, self._say,
                                    refusal=self._capture_refusal)

    def _capture_refusal(self):
        """Why this trainer's step cannot be a CUDA graph, whatever the model (None: it can)."""
        if self.world is not None:
            return "data-parallel training averages the gradients between backward and the update, over MPI"
        if getattr(self.model, "placement", None) is not None:
            return "the model is split over devices, and one graph is captured on one device"
        if self.precision == "fp16":
            return "fp16 loss scaling decides each step whether to update"
        if self.check_every == 1:
            return "check_every=1 reads the loss back before every update"
        return None

    def _autocast(self):
        """The precision policy around forward and loss (nothing for fp32 and tf32)."""
        low = {"bf16": "bfloat16", "fp16": "float16"}.get(self.precision)
        return autocast(low) if low else contextlib.nullcontext()

    def _tf32(self):
        """TF32 GEMMs for the run when ``precision`` is tf32 (restored afterwards); said once on a CPU."""
        if self.precision != "tf32":
            return contextlib.nullcontext()
        if self.train_loader.device.type != "cuda":
            self._say("precision tf32: TF32 is a GPU tensor-core format; on the CPU this run is float32")
        return tf32_enabled(True)

    # ------------------------------------------------------------------ state
    def _meta(self) -> dict:
        meta = dict(self.meta)
        meta.update(step=self.step, epoch=self.epoch, position=self.position, best=self.best,
                    rng=random.get_state(), loader_seed=self.train_loader.seed,
                    scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                    history=self.history, conv_algorithms=conv_algorithm_records(self.model),
                    precision=self.precision, loss_scaler=self.scaler.state_dict(),
                    ema={"decay": self.ema.decay, "updates": self.ema.updates} if self.ema is not None else None)
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
                               self.transform_state, keep=self.keep,
                               ema=self.ema.averages if self.ema is not None else None)

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
        if meta.get("loss_scaler") is not None:
            self.scaler.load_state_dict(meta["loss_scaler"])
        if self.ema is not None and checkpoint.get("ema"):
            self.ema.load_state_dict({**meta["ema"], "averages": checkpoint["ema"]})
        elif self.ema is not None:
            self.ema = WeightAverage(self.model, self.ema.decay)
            self._say(f"{checkpoint['path']} has no weight average: the average starts from its weights")

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
        with _StopOnInterrupt(self) if handle_sigint else contextlib.nullcontext(), self._tf32():
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

    def _forward_backward(self, inputs, labels):
        """Forward, loss and backward of one batch (gradients replace the old ones); returns (loss, logits)."""
        with self._autocast():
            logits = self.model(inputs)
            loss = cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        return loss, logits

    def _eager_step(self, inputs, labels):
        """A whole step without a graph, when the step graph warms up or cannot capture: returns (loss, logits)."""
        loss, logits = self._forward_backward(inputs, labels)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logits

    def _train_epoch(self) -> None:
        model, loader = self.model, self.train_loader
        model.train()
        batches = len(loader)
        bar = progress_bar(self.progress, total=batches, initial=self.position, desc=f"epoch {self.epoch + 1}")
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
            if self.step_graph.active:  # on a GPU: eager warm-up steps, then replays of the captured step
                loss, logits = self.step_graph.step(inputs, labels, self._eager_step)
            else:
                with share:
                    loss, logits = self._forward_backward(inputs, labels)
                if self.world is None and self.check_every == 1 and not math.isfinite(loss.item()):
                    raise NonFiniteError(self._diagnose(batch, loss.item(), self.step + 1))  # before the update
                if self.world is not None:
                    global_loss, stop = self.world.allreduce_step(
                        self.optimizer_parameters, len(labels) / len(batch.labels), loss.item(),
                        self._stop_requested)
                    if not math.isfinite(global_loss):  # every rank sees the same value and stops here
                        raise NonFiniteError(self._diagnose(batch, global_loss, self.step + 1))
                    self._stop_requested = stop
                self.scaler.step(self.optimizer)  # optimizer.step(), unless fp16 gradients overflowed
                self.scaler.update()
            if self.ema is not None:
                self.ema.update()
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
            with self.ema.applied() if self.ema is not None else contextlib.nullcontext(), self._autocast():
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
        self._say(format_row(row))
        if self.out_dir is not None and self.writes:
            append_metrics(self.out_dir, row)
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
