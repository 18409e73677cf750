"""Evaluation and metrics: top-k accuracy, an evaluation pass, the per-epoch metric files and the progress bar."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy

from ..backend import CPU, get_array_module, transfer
from ..functions import cross_entropy
from ..grad_mode import no_grad
from ..tensor import Tensor

__all__ = ["evaluate", "topk_hits", "topk_correct", "format_row", "append_metrics", "progress_bar"]


def topk_hits(logits, labels, ks=(1, 5)) -> dict:
    """{k: number of rows whose label is among the k largest logits}, as 0-d arrays on the logits' device
    (nothing is read back). A tie counts for the smaller class index, as a stable sort would order it."""
    scores = logits.data if isinstance(logits, Tensor) else logits
    xp = get_array_module(scores)
    labels = xp.asarray(labels.data if isinstance(labels, Tensor) else labels)
    rows = xp.arange(scores.shape[0])
    own = scores[rows, labels][:, None]
    classes = xp.arange(scores.shape[1])[None, :]
    rank = ((scores > own) | ((scores == own) & (classes < labels[:, None]))).sum(axis=1)  # how many come first
    return {k: (rank < k).sum() for k in ks}


def topk_correct(logits, labels, ks=(1, 5)) -> dict:
    """{k: number of rows whose label is among the k largest logits} (host ints)."""
    return {k: int(transfer(hits, CPU)) for k, hits in topk_hits(logits, labels, ks).items()}


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
    total, loss_sum, correct = 0, 0.0, {1: 0, 5: 0}  # device values on a GPU, read once at the end
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
                hits = topk_hits(numpy.log(probs + 1e-12), labels)
            else:
                loss_sum = loss_sum + cross_entropy(logits, labels, reduction="sum").data.astype(numpy.float64)
                hits = topk_hits(logits, labels)
            total += len(labels)
            for k in correct:
                correct[k] = correct[k] + hits[k]
    finally:
        model.train(was_training)
    loss_sum, correct = float(transfer(loss_sum, CPU)), {k: int(transfer(v, CPU)) for k, v in correct.items()}
    if world is not None:
        loss_sum, correct[1], correct[5], total = world.sum([loss_sum, correct[1], correct[5], total])
    return {"loss": loss_sum / max(total, 1), "top1": correct[1] / max(total, 1), "top5": correct[5] / max(total, 1),
            "count": total}


def format_row(row) -> str:
    text = (f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, train top-1 {row['train_top1']:.2%}, "
            f"{row['images_per_s']:,.0f} images/s, {row['seconds']:.0f} s")
    if "val_top1" in row:
        text += f"; val loss {row['val_loss']:.4f}, top-1 {row['val_top1']:.2%}, top-5 {row['val_top5']:.2%}"
    return text


def append_metrics(out_dir: Path, row: dict) -> None:
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    path = out_dir / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def progress_bar(enabled, **kwargs):
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
