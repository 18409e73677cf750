"""Random ops: dropout."""
from __future__ import annotations

from .. import random
from ..tensor import Tensor, _wrap

__all__ = ["dropout"]


def dropout(x, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by 1/(1-p).

    Identity when ``training`` is False (so evaluation needs no rescaling).
    The mask comes from :mod:`minidl.random` on ``x``'s device, so
    ``mdl.random.manual_seed`` makes it reproducible.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    keep = random.uniform(x.shape, x.dtype, x.device) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * _wrap(mask, x.device)
