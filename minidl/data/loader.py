"""DataLoader: shuffled batches with background prefetch, deterministic under a seed, resumable.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the
augmentation of batch ``b`` draws from ``(seed, e, b)``, so a run, a resumed
run and a run with more prefetch threads see the same batches bit for bit.
Batches are prepared by worker threads (decoding with Pillow and NumPy work
release the GIL) while the model trains on the previous ones.
"""
from __future__ import annotations

import collections
import concurrent.futures

import numpy

from ..backend import as_device
from ..tensor import Tensor
from .transforms import Compose, to_float

__all__ = ["DataLoader", "Batch"]

Batch = collections.namedtuple("Batch", "inputs labels index")


class DataLoader:
    """Batches of ``(inputs Tensor (B, C, H, W) float32 on device, labels int64 array, batch index)``.

    Args:
        dataset: has ``len()`` and ``get_batch(indices)``.
        batch_size: images per batch.
        shuffle: a new permutation every epoch (from ``seed`` and the epoch).
        drop_last: drop the last incomplete batch (training) or keep it (evaluation).
        transform: a callable ``(images, rng) -> images`` or a list of them.
        seed: the seed of every random choice the loader makes.
        workers: threads preparing batches; ``prefetch`` batches are kept ready.
        device: where the inputs go ("cpu", "cuda:0"); copies happen in the workers.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, drop_last: bool = True, transform=None,
                 seed: int = 0, workers: int = 1, prefetch: int = 2, device=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(transform, (list, tuple)):
            transform = Compose(transform)
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.transform = transform
        self.seed, self.workers, self.prefetch = seed, max(1, workers), max(1, prefetch)
        self.device = as_device(device)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int):
        """The sample order of ``epoch`` (the same every time it is asked for)."""
        n = len(self.dataset)
        if not self.shuffle:
            return numpy.arange(n)
        return numpy.random.default_rng([self.seed, epoch]).permutation(n)

    def _make(self, epoch: int, index: int, indices):
        images, labels = self.dataset.get_batch(indices)
        if self.transform is not None:
            images = self.transform(images, numpy.random.default_rng([self.seed, epoch, index, 1]))
        images = to_float(images)
        return Batch(Tensor(numpy.ascontiguousarray(images), device=self.device), labels, index)  # copies to a GPU

    def epoch(self, epoch: int, start: int = 0):
        """Iterate over the batches of ``epoch``, beginning at batch ``start`` (to resume mid-epoch)."""
        order = self.order(epoch)
        count = len(self)
        chunks = ((b, order[b * self.batch_size:(b + 1) * self.batch_size]) for b in range(start, count))
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="minidl-loader") as pool:
            pending = collections.deque()
            for b, indices in chunks:
                pending.append(pool.submit(self._make, epoch, b, indices))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def __iter__(self):
        return self.epoch(0)
