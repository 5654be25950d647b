"""Hypothesis strategies for the fuzz suite: sizes, dtypes, layouts, and a Builder that draws one call's
arguments, half of the draws with one argument made bad (a wrong dtype, rank, size, type or device for a
tensor; a negative, zero, huge, NaN/inf or wrongly typed value for an option)."""
from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from .harness import Layout, TensorSpec

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
WRONG_DTYPES = (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)
# sizes: mostly small, with 1, 0 and odd primes; 31 the large prime (CPU-sized)
SIZES = (1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 7, 8, 11, 13, 0, 31)
SMALL = (1, 1, 2, 2, 3, 4, 5, 0)
BAD_INTS = (-1, 0, 2**31, 2**63, 1.5, "2", None, True, math.nan)
BAD_FLOATS = (math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30, "1", None, True, [1.0])
NOT_TENSORS = (1.0, [1.0, 2.0], "x", 3)


MAX_ELEMENTS = 4096  # per drawn shape: the Triton interpreter runs a kernel element by element in numpy


def size(draw, table=SIZES) -> int:
    return draw(st.sampled_from(table))


def capped(shape, keep=(), limit=MAX_ELEMENTS) -> list[int]:
    """``shape`` with its largest dimensions (not those in ``keep``) halved until it holds <= limit elements."""
    shape = list(shape)
    while math.prod(shape) > limit:
        free = [d for d in range(len(shape)) if d not in keep and shape[d] > 1]
        if not free:
            break
        largest = max(free, key=lambda d: shape[d])
        shape[largest] = (shape[largest] + 1) // 2
    return shape


@st.composite
def layouts(draw, rank: int):
    kind = draw(st.sampled_from(("contiguous", "contiguous", "transposed", "permuted", "stepped", "expanded",
                                 "overlapping", "offset")))
    order, steps = tuple(range(rank)), (1,) * rank
    if kind == "contiguous" or rank == 0:
        return None
    if kind == "transposed":
        return Layout(tuple(reversed(order)), steps)
    if kind == "permuted":
        return Layout(tuple(draw(st.permutations(order))), steps)
    if kind == "stepped":
        return Layout(order, tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))))
    if kind == "offset":
        return Layout(order, steps, offset=draw(st.integers(1, 3)))
    dim = draw(st.integers(0, rank - 1))
    if kind == "expanded":
        return Layout(order, steps, zero=dim)
    return Layout(order, steps, overlap=dim)


class Builder:
    """Draws one call's arguments. ``arguments``: the names one of which a bad draw makes bad."""

    def __init__(self, draw, arguments: tuple[str, ...]):
        self.draw = draw
        self.bad = draw(st.one_of(st.none(), st.sampled_from(arguments)))
        self.specials = draw(st.integers(0, 9)) == 0  # one draw in ten puts NaN/inf into float inputs
        self.seed = draw(st.integers(0, 2**31 - 1))
        self._count = 0

    def dtype(self, weights=(4, 1, 1, 1)) -> torch.dtype:
        """The draw's float dtype: float32 most often."""
        table = [d for d, w in zip(FLOATS, weights) for _ in range(w)]
        return self.draw(st.sampled_from(table))

    def _next_seed(self) -> int:
        self._count += 1
        return self.seed + self._count

    def tensor(self, name: str, shape, dtype: torch.dtype, values: str = "normal", scale: float = 1.0,
               layout: bool = True):
        """A TensorSpec (or, when ``name`` is the bad argument, something wrong in its place)."""
        shape = tuple(shape)
        spec = TensorSpec(shape, dtype, self.draw(layouts(len(shape))) if layout else None, values, scale,
                          self._next_seed(), self.specials and values == "normal")
        if name != self.bad:
            return spec
        how = self.draw(st.sampled_from(("dtype", "dtype", "rank", "size", "type", "device")))
        if how == "dtype":
            wrong = self.draw(st.sampled_from(WRONG_DTYPES + tuple(d for d in FLOATS if d != dtype)))
            return TensorSpec(shape, wrong, spec.layout, values, scale, spec.seed)
        if how == "rank":
            longer = self.draw(st.booleans()) or not shape
            return TensorSpec(shape + (2,) if longer else shape[:-1], dtype, None, "normal", scale, spec.seed)
        if how == "size" and shape:
            dim = self.draw(st.integers(0, len(shape) - 1))
            wrong = self.draw(st.sampled_from((0, 1, 2, 3, 5))) if shape[dim] <= 1 else shape[dim] + \
                self.draw(st.sampled_from((-1, 1)))
            return TensorSpec(shape[:dim] + (wrong,) + shape[dim + 1:], dtype, None, "normal", scale, spec.seed)
        if how == "device":
            return TensorSpec(shape, dtype, None, values, scale, spec.seed, device="meta")
        return self.draw(st.sampled_from(NOT_TENSORS))

    def optional(self, name: str, shape, dtype: torch.dtype, **kwargs):
        """A tensor or None (when given, as :meth:`tensor`)."""
        if name != self.bad and self.draw(st.integers(0, 3)) == 0:
            return None
        return self.tensor(name, shape, dtype, **kwargs)

    def option(self, name: str, valid, bad=BAD_INTS):
        """A keyword value: from ``valid`` (a strategy or a tuple to pick from), or a bad one."""
        if name == self.bad:
            return self.draw(st.sampled_from(tuple(bad)))
        return self.draw(valid if isinstance(valid, st.SearchStrategy) else st.sampled_from(tuple(valid)))
