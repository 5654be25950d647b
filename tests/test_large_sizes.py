"""Sizes past 2^31 (issue 18), in little memory.

Index products: every tensor argument of every op (the table of test_input_integrity.py), its last
element stored 2^31 or more elements into its storage along each of its dimensions in turn, gives the
result of the same values passed contiguous, or raises a ValueError/TypeError naming it. The storage
is an anonymous mapping (8 GB of address space for float32, reserved nowhere: MAP_NORESERVE) of which
only the pages holding the argument's few elements are touched: a few KB resident.

Element counts: an op that bounds a size (the Triton convolutions' N·H·W < 2^31) rejects an expanded
(stride-0) x past the bound, naming it, before it allocates anything.

Whole tensors past 2^31 elements (nightly, GMK_LARGE_SIZES=1: a ~4 GB output each): bias_act and
gated_activation on the cpu backend, x of 2^31 + 8192 bfloat16 elements read from an untouched mapping,
their first and last outputs against the reference; cached_conv2d along such a row (its output past 2^31
too; 24 s here). (The CUDA kernels' offsets past 2^31: test_cuda_emulation.py runs the last blocks of such
grids.)

A kernel that computes an offset in 32 bits reads out of range: each case runs in a forked child, so
such a read fails its test (killed by a signal) instead of ending the session; the children that must
not allocate run under an address-space limit.
"""
from __future__ import annotations

import faulthandler
import mmap
import os
import re
import resource
import signal
import traceback

import pytest
import torch

import gmkernels as gmk
from conftest import assert_close, backends_under_test
from test_input_integrity import OPS, SIZES, assert_same_result, backends_of, contiguous_run, run

FAR = 2**31
CHILD_TIMEOUT_S = 120
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; Python has the name from 3.13


def untouched(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` zeros whose pages exist only once touched, not counted against the overcommit limit."""
    pages = mmap.mmap(-1, numel * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    return torch.frombuffer(pages, dtype=dtype, count=numel)


def far(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t``'s values, its last element at offset 2^31 or more of their storage: dimension ``dim``
    outermost in memory, with the smallest stride that puts it there (below 2^31 where the shape allows,
    so that a kernel takes it for a 32-bit int and must widen the product), the others contiguous."""
    other_sizes = t.shape[:dim] + t.shape[dim + 1:]
    others = list(torch.empty(other_sizes).stride())
    within_slice = sum((size - 1) * stride for size, stride in zip(other_sizes, others))
    stride = -(-(FAR - within_slice) // (t.shape[dim] - 1))
    storage = untouched((t.shape[dim] - 1) * stride + within_slice + 1, t.dtype)
    return storage.as_strided(t.shape, [*others[:dim], stride, *others[dim:]]).copy_(t)


def address_space() -> int:
    """This process's virtual memory size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def failure_in_child(check, extra_address_space: int | None = None) -> str | None:
    """Runs ``check()`` in a forked child: None if it returned, else its traceback or the signal that
    killed it. ``extra_address_space``: the bytes the child may map beyond what it inherits."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, exit without running the parent's cleanup
        os.close(read)
        signal.alarm(CHILD_TIMEOUT_S)
        faulthandler.disable()  # a crash is reported by the parent, without the child's stack dump
        try:
            if extra_address_space is not None:
                limit = address_space() + extra_address_space
                resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            torch.set_num_threads(1)
            check()
            message = b""
        except BaseException:  # noqa: BLE001 - every failure goes back to the parent
            message = traceback.format_exc().encode()
        with os.fdopen(write, "wb") as pipe:
            pipe.write(message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"killed by {name}: a read or write out of range (an offset past 2^31 computed in 32 bits?)"
    return message or None


def assert_names(error: Exception, argument: str) -> None:
    named = re.search(rf"\b{re.escape(argument)}\b", str(error))
    assert named, f"the error does not name {argument}: {error}"


def far_cases():
    for op in OPS:
        for name, t in op.make(SIZES["odd"], torch.float32).items():
            for dim in (d for d, size in enumerate(t.shape) if size > 1):
                for backend in backends_of(op):
                    yield pytest.param(op, name, dim, backend,
                                       id=f"{op.name}-{name}-dim{dim}-{backend or 'torch'}")


@pytest.mark.parametrize(("op", "argument", "dim", "backend"), far_cases())
def test_argument_past_2_31(op, argument, dim, backend):
    tensors, (expected_outputs, cotangents, expected_grads) = contiguous_run(op.name, backend)

    def check():
        try:
            viewed = {**tensors, argument: far(tensors[argument], dim)}
            outputs, _, grads = run(op, backend, viewed, cotangents)
        except (ValueError, TypeError) as error:
            assert_names(error, argument)
            return
        assert_same_result(outputs, expected_outputs, "outputs")
        assert_same_result(grads, expected_grads, f"gradients of {op.grads}")

    failure = failure_in_child(check)
    assert failure is None, failure


TRITON = ["triton"] if "triton" in backends_under_test("cpu") else []
PIXEL_BOUND_OPS = {
    "masked_conv2d": lambda x, backend: gmk.masked_conv2d(x, torch.zeros(2, 3, 3, 3), backend=backend),
    "masked_conv2d_gate": lambda x, backend: gmk.masked_conv2d(x, torch.zeros(2, 3, 3, 3), gate="tanh",
                                                                backend=backend),
    "shifted_conv2d": lambda x, backend: gmk.shifted_conv2d(x, torch.zeros(2, 3, 2, 3), backend=backend),
}


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("op", PIXEL_BOUND_OPS)
def test_pixel_count_past_2_31_rejected(op, backend):
    x = torch.zeros(1, 1, 1, 1).expand(1, 3, 2**16, 2**15 + 1)  # N·H·W = 2^31 + 2^16, 4 bytes stored

    def check():
        with pytest.raises(ValueError) as raised:
            PIXEL_BOUND_OPS[op](x, backend)
        assert_names(raised.value, "x")

    failure = failure_in_child(check, extra_address_space=2**30)
    assert failure is None, failure


# --- tensors of more than 2^31 elements (nightly: GMK_LARGE_SIZES=1) -------------------------------------

LARGE_SIZES = os.environ.get("GMK_LARGE_SIZES") == "1"
TAIL = 4096


def past_2_31():
    """x (1, 2, L), bfloat16, of more than 2^31 elements: zeros in an untouched mapping (reading them maps no
    memory) but the last TAIL of each channel, random; channel 1's lie past 2^31 elements."""
    length = FAR // 2 + TAIL
    x = untouched(2 * length, torch.bfloat16).view(1, 2, length)
    x[:, :, -TAIL:] = torch.randn(1, 2, TAIL).bfloat16()
    return x


def bias_act_pairs():
    x, b = past_2_31(), torch.randn(2).bfloat16()
    y = gmk.bias_act(x, b, act="lrelu", clamp=1.5, backend="cpu")
    return [(y[..., part], gmk.bias_act(x[..., part].double(), b.double(), act="lrelu", clamp=1.5,
                                       backend="reference")) for part in (slice(-TAIL, None), slice(0, TAIL))]


def gated_pairs():
    x = past_2_31()
    y = gmk.gated_activation(x, backend="cpu")
    return [(y[..., part], gmk.gated_activation(x[..., part].double(), backend="reference"))
            for part in (slice(-TAIL, None), slice(0, TAIL))]


def cached_conv_pairs():
    """rows (1, 2, 1, L) as past_2_31's x, a 1x3 kernel along the whole row: an output of 2^31 + 8188
    elements, channel 1's last outputs (from rows' channel 1, past 2^31) past 2^31 too."""
    rows = past_2_31().unsqueeze(2)
    weight, bias = torch.randn(2, 2, 1, 3).bfloat16(), torch.randn(2).bfloat16()
    out = gmk.cached_conv2d(rows, weight, bias, count=rows.shape[3] - 2, backend="cpu")

    def expected(part):
        return gmk.cached_conv2d(rows[..., part].double(), weight.double(), bias.double(), count=TAIL - 2,
                                 backend="reference")
    return [(out[..., -(TAIL - 2):], expected(slice(-TAIL, None))),
            (out[..., :TAIL - 2], expected(slice(0, TAIL)))]


PAST_2_31_OPS = {"bias_act": bias_act_pairs, "gated_activation": gated_pairs,
                 "cached_conv2d": cached_conv_pairs}


@pytest.mark.slow
@pytest.mark.skipif(not LARGE_SIZES, reason="allocates a 2^31-element output (~4 GB): GMK_LARGE_SIZES=1 (nightly)")
@pytest.mark.parametrize("op", PAST_2_31_OPS)
def test_more_than_2_31_elements_on_cpu(op):
    """x (1, 2, L) of 2^31 + 8192 bfloat16 elements: the cpu backend's outputs from channel 1's elements past
    2^31 (and its first ones) match the reference on the same values."""

    def check():
        for actual, expected in PAST_2_31_OPS[op]():
            assert_close(actual, expected, torch.bfloat16)

    failure = failure_in_child(check)
    assert failure is None, failure
