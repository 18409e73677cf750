"""Sharded values: an activation cut along the batch axis or the channel axis over devices.

A :class:`Sharded` value is a list of shards ``(device, tensor, lo, hi)``
that together cover ``[0, extent)`` of one axis: axis 0 (each device holds
some samples, as in data parallelism) or axis 1 (each device holds some
channels or features, as in the paper's columns). A value held whole by one
device is one shard. :meth:`Sharded.piece` builds any box of the value on
any device from the shards that overlap it, with differentiable slicing,
transfers and concatenation, so gradients flow back to whichever device
produced each part. Transfers are counted in a :class:`Ledger` when one is
attached (``minidl summary --devices``).
"""
from __future__ import annotations

from collections import defaultdict

from ..functions import concatenate, getitem, to_device

__all__ = ["Sharded", "Ledger", "even_ranges"]


def even_ranges(extent: int, parts: int) -> list:
    """``parts`` contiguous (lo, hi) ranges covering ``[0, extent)`` as evenly as possible (some may be empty)."""
    base, extra = divmod(extent, parts)
    ranges, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        ranges.append((lo, hi))
        lo = hi
    return ranges


class Ledger:
    """What one forward pass of a split model puts on each device and moves between devices."""

    def __init__(self):
        self.param_bytes = defaultdict(int)  # device -> bytes of parameters (or slices) it holds
        self.activation_bytes = defaultdict(int)  # device -> bytes of layer outputs it produces
        self.sent_bytes = defaultdict(int)  # (source, destination) -> bytes moved in forward
        self.returned_bytes = defaultdict(int)  # (source, destination) -> gradient bytes sent back in backward
        self.replica_bytes = defaultdict(int)  # device -> bytes of parameters synchronised as a replica
        self._params_seen = set()

    def add_params(self, device, key, nbytes):
        if (device, key) not in self._params_seen:
            self._params_seen.add((device, key))
            self.param_bytes[device] += nbytes

    def add_transfer(self, source, destination, nbytes, gradient: bool):
        self.sent_bytes[(source, destination)] += nbytes
        if gradient:
            self.returned_bytes[(destination, source)] += nbytes


class Sharded:
    """A value split along ``axis`` (0 or 1) into ``shards`` = [(device, tensor, lo, hi)], in order."""

    __slots__ = ("axis", "shards", "shape", "constant")

    def __init__(self, axis: int, shards, constant: bool = False):
        self.axis = axis
        self.constant = constant  # no gradient flows back (the model's input)
        self.shards = [s for s in shards if s[3] > s[2]]
        first = self.shards[0][1]
        shape = list(first.shape)
        shape[axis] = self.shards[-1][3]
        self.shape = tuple(shape)

    @classmethod
    def whole(cls, tensor, constant: bool = False) -> "Sharded":
        """A value held entirely by the device ``tensor`` is on."""
        axis = 1 if tensor.ndim > 1 else 0
        return cls(axis, [(tensor.device, tensor, 0, tensor.shape[axis])], constant)

    @property
    def devices(self) -> list:
        return [s[0] for s in self.shards]

    def piece(self, device, batch=None, channels=None, ledger=None):
        """The rows ``batch`` and channels ``channels`` ((lo, hi) each; None: all) as one Tensor on ``device``."""
        box = [batch or (0, self.shape[0]), channels or (0, self.shape[1]) if len(self.shape) > 1 else None]
        want_lo, want_hi = box[self.axis]
        other = 1 - self.axis
        parts = []
        for shard_device, tensor, lo, hi in self.shards:
            a, b = max(lo, want_lo), min(hi, want_hi)
            if a >= b:
                continue
            index = [slice(None), slice(None)]
            index[self.axis] = slice(a - lo, b - lo)
            if box[other] is not None:
                index[other] = slice(*box[other])
            full = all(s == slice(None) or (s.start == 0 and s.stop == tensor.shape[k])
                       for k, s in enumerate(index[: tensor.ndim]))
            part = tensor if full else getitem(tensor, tuple(index[: tensor.ndim]))
            if shard_device != device:
                if ledger is not None:
                    ledger.add_transfer(shard_device, device, part.data.nbytes, gradient=not self.constant)
                part = to_device(part, device)
            parts.append(part)
        if not parts:
            raise ValueError(f"no shard holds rows {box[0]} channels {box[1]} of a value of shape {self.shape}")
        return parts[0] if len(parts) == 1 else concatenate(parts, axis=self.axis)
