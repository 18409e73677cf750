"""DataLoader: shuffled batches with background prefetch, deterministic under a seed, resumable.

    loader = DataLoader(dataset, 128, transform=[RandomCrop(227), HorizontalFlip(), MeanImage()], workers=8)
    for x, y in loader:          # epoch 0; the next ``for`` is epoch 1, and so on
        ...
    loader.set_epoch(5)          # or choose the epoch, as with PyTorch's samplers
    for batch in loader.epoch(5, start=40):   # resume in the middle of epoch 5
        batch.inputs, batch.labels, batch.index

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the
augmentation of batch ``b`` draws from ``(seed, e, b)``, so a run, a resumed
run and a run with more worker threads see the same batches bit for bit.

How a batch is made (in a worker thread; decoding with Pillow and NumPy copies
release the GIL): the pipeline's leading crops and flips are planned, each
image is decoded once and its planned windows are copied, on uint8, into a
preallocated (K, C, h, w) batch; that batch goes to the device, and the rest
of the pipeline (float conversion, colour noise, normalization) is array
code that runs there.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading

import numpy

from ..backend import as_device, get_array_module, transfer
from ..tensor import Tensor
from .transforms import Compose, to_float
from .windows import Windows, gather

__all__ = ["DataLoader", "Batch"]


class Batch(collections.namedtuple("Batch", "inputs labels")):
    """``(inputs, labels)``, so ``x, y = batch`` works; ``batch.index`` is its position in the epoch.

    inputs: a Tensor (B, C, H, W) (B*crops rows with ten-crop evaluation) on the loader's device;
    labels: int64 array (B,) on the host.
    """

    def __new__(cls, inputs, labels, index: int = 0):
        batch = super().__new__(cls, inputs, labels)
        batch.index = index
        return batch


class _Buffers:
    """Reusable host batches by (shape, dtype): a batch's uint8 array is recycled once it has been converted."""

    def __init__(self):
        self._free = collections.defaultdict(list)
        self._lock = threading.Lock()

    def take(self, shape, dtype):
        with self._lock:
            free = self._free[(shape, numpy.dtype(dtype))]
            if free:
                return free.pop()
        return numpy.empty(shape, dtype)

    def give(self, array):
        with self._lock:
            self._free[(array.shape, array.dtype)].append(array)


class DataLoader:
    """Batches of ``(inputs, labels)`` with ``.index`` (see :class:`Batch` and the module docstring).

    Args:
        dataset: has ``len()``, ``sample_shape`` and ``get_batch(indices)`` (or ``read_windows``).
        batch_size: images per batch.
        shuffle: a new permutation every epoch (from ``seed`` and the epoch).
        drop_last: drop the last incomplete batch (training) or keep it (evaluation).
        transform: a callable ``(images, rng) -> images`` or a list of them; leading crops and
            flips run on uint8 while decoding, the rest on the batch's device.
        seed: the seed of every random choice the loader makes.
        workers: threads making batches; ``workers + prefetch`` batches are in flight.
        device: where the inputs go ("cpu", "cuda:0"); the uint8 batch is copied there.
        to_float: end with float32 inputs (uint8 turned into [0, 1]); False leaves the
            pipeline's output as it is (the uint8 crops, when it has only crops and flips).

    Iterating over the loader (``for x, y in loader``) gives one epoch in its
    order; each new iteration is the next epoch, unless ``set_epoch(e)`` chose
    one. ``epoch(e, start)`` iterates over a given epoch from a given batch.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, drop_last: bool = True, transform=None,
                 seed: int = 0, workers: int = 1, prefetch: int = 2, device=None, to_float: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(transform, (list, tuple)):
            transform = Compose(transform)
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        if not isinstance(transform, Compose):
            transform = Compose([] if transform is None else [transform])
        self.transform = transform
        self._windows, self._arrays = transform.split()
        self.seed, self.workers, self.prefetch = seed, max(1, workers), max(1, prefetch)
        self.device = as_device(device)
        self.to_float = to_float
        self.next_epoch = 0
        self._buffers = _Buffers()

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int):
        """The sample order of ``epoch`` (the same every time it is asked for)."""
        n = len(self.dataset)
        if not self.shuffle:
            return numpy.arange(n)
        return numpy.random.default_rng([self.seed, epoch]).permutation(n)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` give ``epoch`` (later ones continue from there)."""
        self.next_epoch = int(epoch)

    def _plan(self, count: int, shape, rng) -> Windows:
        windows = Windows.whole(count, shape[1], shape[2])
        for t in self._windows:
            windows = t.plan(windows, rng)
        return windows

    def _host_batch(self, indices, rng):
        """(the batch with its leading crops and flips applied, on the host; labels; pooled buffer or None)."""
        if not hasattr(self.dataset, "read_windows"):  # in memory: gather the windows from the whole images
            images, labels = self.dataset.get_batch(indices)
            if self._windows:
                images = gather(self._plan(len(indices), images.shape[1:], rng), images)
            return images, labels, None
        shape = self.dataset.sample_shape
        windows = self._plan(len(indices), shape, rng)
        buffer = self._buffers.take((len(windows), shape[0], windows.height, windows.width),
                                    getattr(self.dataset, "dtype", numpy.uint8))
        labels = self.dataset.read_windows(indices, windows, buffer)  # decodes straight into the crops
        return buffer, labels, buffer

    def _make(self, epoch: int, index: int, indices):
        rng = numpy.random.default_rng([self.seed, epoch, index, 1])
        host, labels, buffer = self._host_batch(indices, rng)
        with self.device.context():  # the rest is array code on the batch's device
            images = transfer(host, self.device)  # the uint8 crops go to the device
            for t in self._arrays:
                images = t(images, rng)
            if self.to_float:
                images = to_float(images)
            images = get_array_module(images).ascontiguousarray(images)
        if buffer is not None and not (isinstance(images, numpy.ndarray) and numpy.may_share_memory(images, buffer)):
            self._buffers.give(buffer)  # converted or copied away: the buffer can take the next batch
        return Batch(Tensor(images, device=self.device), labels, index)

    def epoch(self, epoch: int, start: int = 0):
        """Iterate over the batches of ``epoch``, beginning at batch ``start`` (to resume mid-epoch)."""
        order = self.order(epoch)
        count = len(self)
        chunks = ((b, order[b * self.batch_size:(b + 1) * self.batch_size]) for b in range(start, count))
        in_flight = self.workers + self.prefetch
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="minidl-loader") as pool:
            pending = collections.deque()
            try:
                for b, indices in chunks:
                    pending.append(pool.submit(self._make, epoch, b, indices))
                    if len(pending) >= in_flight:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # stopped early (break, error): drop the batches nobody will read
                for future in pending:
                    future.cancel()

    def __iter__(self):
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return self.epoch(epoch)
