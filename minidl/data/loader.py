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

On a GPU, a dataset held in memory (Fashion-MNIST's arrays) is copied to the
device once and each batch is gathered there (crops, padding and flips in one
gather) before the array transforms (``resident``); other datasets' uint8
batches cross from pinned host memory on each worker's own CUDA stream, which
also runs the array transforms, so copies and transforms overlap the
training step (:mod:`minidl.data.staging`). The random draws are the same
host draws in every case: a GPU batch equals the CPU batch.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading

import numpy

from ..backend import as_device, get_array_module, transfer
from ..tensor import Tensor
from . import staging
from .datasets import in_memory
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
    """Reusable host batches by (shape, dtype): a batch's uint8 array is recycled once it has been converted.

    For a GPU they are pinned, and each comes back with the event recorded after its asynchronous copy;
    ``take`` waits on it before the buffer is refilled (hazard (a) of :mod:`minidl.data.staging`).
    """

    def __init__(self, device):
        self._pinned = device if device.is_cuda else None
        self._free = collections.defaultdict(list)
        self._lock = threading.Lock()

    def take(self, shape, dtype):
        with self._lock:
            free = self._free[(shape, numpy.dtype(dtype))]
            array, copied = free.pop() if free else (None, None)
        if copied is not None:
            copied.synchronize()  # in a worker thread: the previous copy out of this buffer is done
        if array is not None:
            return array
        return numpy.empty(shape, dtype) if self._pinned is None else staging.pinned_empty(self._pinned, shape, dtype)

    def give(self, array, copied=None):
        with self._lock:
            self._free[(array.shape, array.dtype)].append((array, copied))


_RESIDENT_SHARE = 8  # resident="auto" copies a dataset of at most 1/8 of the GPU's memory (and half its free memory)


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
        resident: for a dataset held in memory (an ``ArrayDataset`` such as Fashion-MNIST, or
            a ``Subset`` of one), copy its whole image array to the device once, at the first
            batch, and gather each batch's crops and flips from it there. ``"auto"`` (default):
            on a GPU, when the array takes at most 1/8 of the GPU's memory and half of its free
            memory; never on the CPU. ``True``: always (on the CPU, batches are then gathered
            straight from the dataset's arrays, with the same result); an error for a dataset
            that is not in memory. ``False``: never. The batches are the same bit for bit.

    Iterating over the loader (``for x, y in loader``) gives one epoch in its
    order; each new iteration is the next epoch, unless ``set_epoch(e)`` chose
    one. ``epoch(e, start)`` iterates over a given epoch from a given batch.

    On a GPU, each batch is made on a CUDA stream of its worker's and handed
    over without a host wait: the iterating thread's current stream waits
    for it. Batches are allocated for the stream that is current where the
    iteration starts; use them there. Labels stay an int64 host array.

        loader = DataLoader(fashion_mnist("train"), 128, transform=[RandomCrop(28, padding=2), HorizontalFlip()],
                            device="cuda:0")          # resident: 47 MB copied once, batches gathered there
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, drop_last: bool = True, transform=None,
                 seed: int = 0, workers: int = 1, prefetch: int = 2, device=None, to_float: bool = True,
                 resident="auto"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (resident == "auto" or resident is True or resident is False):
            raise ValueError(f"DataLoader: resident must be 'auto', True or False, got {resident!r}")
        memory = in_memory(dataset)
        if resident is True and memory is None:
            raise ValueError(
                f"DataLoader: resident=True needs a dataset held in memory as arrays (an ArrayDataset, or a Subset "
                f"of one); {getattr(dataset, 'name', type(dataset).__name__)!r} ({type(dataset).__name__}) is not: "
                "use resident='auto' or False")
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
        self.resident = resident
        self.next_epoch = 0
        self._buffers = _Buffers(self.device)
        self._memory = memory  # (images, labels, rows) of an in-memory dataset, else None
        self._resident = {}  # device -> whether batches are gathered from the dataset's arrays there
        self._on_device = {}  # device -> (the dataset's images there, the event after their copy)
        self._upload_lock = threading.Lock()
        self._streams = staging.CopyStreams(self.device)  # on a GPU: the workers' copy streams

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

    @property
    def is_resident(self) -> bool:
        """Whether batches are gathered from the dataset's whole arrays on the loader's device (for
        ``resident="auto"`` on a GPU, decided by the GPU's memory when first asked)."""
        device = self.device
        if device not in self._resident:
            if self._memory is None or self.resident is False:
                self._resident[device] = False
            elif self.resident is True:
                self._resident[device] = True
            elif not device.is_cuda:
                self._resident[device] = False
            else:
                with device.context():
                    free, total = device.xp.cuda.Device(device.index).mem_info
                self._resident[device] = self._memory[0].nbytes <= min(total // _RESIDENT_SHARE, free // 2)
        return self._resident[device]

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

    def _resident_batch(self, indices, rng, images):
        """(the batch's windows gathered from ``images``, the dataset's whole array on its device; labels)."""
        _, labels, rows = self._memory
        rows = indices if rows is None else rows[indices]
        windows = self._plan(len(indices), images.shape[1:], rng).over(rows)
        return gather(windows, images), labels[rows]

    def _array_stage(self, images, rng):
        for t in self._arrays:
            images = t(images, rng)
        if self.to_float:
            images = to_float(images)
        return get_array_module(images).ascontiguousarray(images)

    def _make(self, epoch: int, index: int, indices, consumer=None):
        """(the batch, the event its consumer's stream waits on: None on the CPU)."""
        rng = numpy.random.default_rng([self.seed, epoch, index, 1])
        if self.device.is_cuda:
            return self._make_on_gpu(index, indices, rng, consumer)
        if self.is_resident:  # resident=True on the CPU: the windows straight from the dataset's arrays
            host, labels = self._resident_batch(indices, rng, self._memory[0])
            buffer = None
        else:
            host, labels, buffer = self._host_batch(indices, rng)
        with self.device.context():  # the rest is array code on the batch's device
            images = self._array_stage(transfer(host, self.device), rng)
        if buffer is not None and not (isinstance(images, numpy.ndarray) and numpy.may_share_memory(images, buffer)):
            self._buffers.give(buffer)  # converted or copied away: the buffer can take the next batch
        return Batch(Tensor(images, device=self.device), labels, index), None

    def _device_images(self, stream):
        """The dataset's whole image array on the loader's GPU, copied by the first worker to ask (on its stream);
        ``stream`` waits for that copy."""
        device = self.device
        with self._upload_lock:
            if device not in self._on_device:
                images = device.xp.asarray(self._memory[0])  # on ``stream``, staged through pinned memory
                self._on_device[device] = images, staging.record(device, stream)
        images, copied = self._on_device[device]
        stream.wait_event(copied)
        return images

    def _make_on_gpu(self, index, indices, rng, consumer):
        """Make a batch on a copy stream of its own (see :mod:`minidl.data.staging` for the two hazards)."""
        device = self.device
        with device.context():
            stream = self._streams.take()
            try:
                with stream:
                    if self.is_resident:
                        images, labels = self._resident_batch(indices, rng, self._device_images(stream))
                    else:
                        host, labels, buffer = self._host_batch(indices, rng)
                        if buffer is None:  # an in-memory batch in pageable memory: stage it in a pinned buffer
                            buffer = self._buffers.take(host.shape, host.dtype)
                            buffer[...] = host
                        images = device.xp.empty(buffer.shape, buffer.dtype)
                        images.set(buffer, stream)  # asynchronous: the buffer is pinned
                        self._buffers.give(buffer, staging.record(device, stream))  # hazard (a)
                    images = staging.for_consumer(device, self._array_stage(images, rng), consumer, stream)
                    ready = staging.record(device, stream)
            finally:
                self._streams.give(stream)
        return Batch(Tensor(images, device=device), labels, index), ready

    def _hand_over(self, made):
        batch, ready = made
        if ready is not None:
            staging.wait(self.device, ready)  # the consumer's stream waits for the batch; the host does not
        return batch

    def _abandon(self, future) -> None:
        """A batch made but never handed over still has its copy queued into the consumer stream's memory:
        that stream waits for it before the memory can be reused (hazard (b))."""
        try:
            self._hand_over(future.result())
        except Exception:  # the batch failed: its error was, or will be, raised where it was read
            pass

    def epoch(self, epoch: int, start: int = 0):
        """Iterate over the batches of ``epoch``, beginning at batch ``start`` (to resume mid-epoch)."""
        order = self.order(epoch)
        count = len(self)
        chunks = ((b, order[b * self.batch_size:(b + 1) * self.batch_size]) for b in range(start, count))
        in_flight = self.workers + self.prefetch
        consumer = staging.consumer_stream(self.device) if self.device.is_cuda else None
        self.is_resident  # decided here, once, before any worker asks
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="minidl-loader") as pool:
            pending = collections.deque()
            try:
                for b, indices in chunks:
                    pending.append(pool.submit(self._make, epoch, b, indices, consumer))
                    if len(pending) >= in_flight:
                        yield self._hand_over(pending.popleft().result())
                while pending:
                    yield self._hand_over(pending.popleft().result())
            finally:  # stopped early (break, error): drop the batches nobody will read
                for future in pending:
                    if not future.cancel() and consumer is not None:
                        self._abandon(future)

    def __iter__(self):
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return self.epoch(epoch)
