"""Triton kernels of the 1x1 convolution y[n, :, i] = W x[n, :, i] + b (the invertible 1x1
convolutions and actnorm folded into them): the ops gmk_triton::conv1x1{,_backward}, declared in
ops/invconv.py.

Tensors are (N, C, positions) as for the C++ ops; W and b float32. Program (n·blocks + s, o) computes
the (BLOCK_O, BLOCK_S) tile of output channels × positions of sample n with ``tl.dot`` over blocks of
BLOCK_C input channels, in float32 with IEEE products (TF32 would break the flows' invertibility to
1e-5). For Glow's channel counts (≤ 64) a program holds all of W and reads its x tile once.
Backward, for up to FUSED_CHANNELS channels (Glow's 12 to 48): one kernel reads grad_y and x once,
writes grad_x = Wᵀ grad_y and accumulates grad_W = Σ grad_y xᵀ and grad_b = Σ grad_y over the blocks of
positions its program walks; the programs' partial sums (a few per SM) are added here, deterministically.
More channels: grad_x by the forward kernel with Wᵀ, grad_W and grad_b by a batched GEMM and a sum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._common import mma, on_device, strides_3d

BLOCK_S = 64
NUM_WARPS = 4
FUSED_CHANNELS = 64  # the fused backward holds W and a (channels × BLOCK_S) tile of grad_y and x
BACKWARD_WARPS = 8


@triton.jit
def _conv1x1_kernel(x_ptr, w_ptr, b_ptr, y_ptr, cin, cout, inner, blocks_s, s_outer, s_channel, s_inner,
                    HAS_BIAS: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_O: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // blocks_s).to(tl.int64)
    i = ((pid % blocks_s) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)  # i · s_inner may pass 2³¹
    rows = (tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)).to(tl.int64)  # rows · inner may pass 2³¹
    row_mask = rows < cout
    i_mask = i < inner
    acc = tl.zeros((BLOCK_O, BLOCK_S), dtype=tl.float32)
    for c0 in range(0, cin, BLOCK_C):
        cs = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        c_mask = cs < cin
        w = tl.load(w_ptr + rows[:, None] * cin + cs[None, :], mask=row_mask[:, None] & c_mask[None, :],
                    other=0.0)
        x = tl.load(x_ptr + n * s_outer + cs[:, None] * s_channel + i[None, :] * s_inner,
                    mask=c_mask[:, None] & i_mask[None, :], other=0.0).to(tl.float32)
        acc = mma(w, x, acc, "ieee", INTERPRETED)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=row_mask, other=0.0)[:, None]
    y = y_ptr + n * cout * inner + rows[:, None] * inner + i[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & i_mask[None, :])


@triton.jit
def _conv1x1_backward_kernel(grad_y_ptr, x_ptr, w_ptr, grad_x_ptr, grad_w_ptr, grad_b_ptr, cin, cout, inner,
                             blocks_s, total_blocks, blocks_per_program, s_outer, s_channel, s_inner,
                             WANT_X: tl.constexpr, WANT_PARAMS: tl.constexpr, INTERPRETED: tl.constexpr,
                             BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Program p walks blocks [p·blocks_per_program, (p+1)·blocks_per_program) of BLOCK_S positions of
    one sample (block b: sample b // blocks_s); all channels fit in one tile (BLOCK_O ≥ cout,
    BLOCK_C ≥ cin).
    grad_y is contiguous (N, cout, inner); grad_w_ptr (programs, BLOCK_O, BLOCK_C) and grad_b_ptr
    (programs, BLOCK_O) get the program's partial sums."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_O).to(tl.int64)  # output channels (of y)
    cols = tl.arange(0, BLOCK_C).to(tl.int64)  # input channels (of x)
    row_mask = rows < cout
    col_mask = cols < cin
    w_t = tl.load(w_ptr + rows[None, :] * cin + cols[:, None], mask=col_mask[:, None] & row_mask[None, :],
                  other=0.0)  # Wᵀ, (BLOCK_C, BLOCK_O)
    acc_w = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for k in range(0, blocks_per_program):
        block = pid * blocks_per_program + k
        n = (block // blocks_s).to(tl.int64)
        i = ((block % blocks_s) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
        i_mask = (i < inner) & (block < total_blocks)
        g = tl.load(grad_y_ptr + n * cout * inner + rows[:, None] * inner + i[None, :],
                    mask=row_mask[:, None] & i_mask[None, :], other=0.0).to(tl.float32)
        if WANT_X:
            grad_x = mma(w_t, g, tl.zeros((BLOCK_C, BLOCK_S), dtype=tl.float32), "ieee", INTERPRETED)
            tl.store(grad_x_ptr + n * cin * inner + cols[:, None] * inner + i[None, :],
                     grad_x.to(grad_x_ptr.dtype.element_ty), mask=col_mask[:, None] & i_mask[None, :])
        if WANT_PARAMS:
            x = tl.load(x_ptr + n * s_outer + cols[:, None] * s_channel + i[None, :] * s_inner,
                        mask=col_mask[:, None] & i_mask[None, :], other=0.0).to(tl.float32)
            acc_w = mma(g, tl.trans(x), acc_w, "ieee", INTERPRETED)
            acc_b += tl.sum(g, axis=1)
    if WANT_PARAMS:
        tl.store(grad_w_ptr + pid * BLOCK_O * BLOCK_C + rows[:, None] * BLOCK_C + cols[None, :], acc_w)
        tl.store(grad_b_ptr + pid * BLOCK_O + rows, acc_b)


def _block(size: int, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(size)))


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    n, cin, inner = x.shape
    cout = weight.shape[0]
    y = torch.empty(n, cout, inner, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if cin == 0:  # no input channel: y is the bias
        return y.zero_() if bias is None else y.copy_(bias[None, :, None].expand_as(y))
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    block_o, block_c = _block(cout, 64), _block(cin, 64)
    blocks_s = triton.cdiv(inner, BLOCK_S)
    grid = (n * blocks_s, triton.cdiv(cout, block_o))
    with on_device(x):
        _conv1x1_kernel[grid](x, weight, weight if bias is None else bias, y, cin, cout, inner, blocks_s,
                              *strides_3d(x), HAS_BIAS=bias is not None, INTERPRETED=triton_interpreted(),
                              BLOCK_O=block_o, BLOCK_C=block_c, BLOCK_S=BLOCK_S, num_warps=NUM_WARPS)
    return y


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _launch(x, weight, bias)


def _programs(device: torch.device, blocks: int) -> int:
    """How many programs the fused backward runs: two per SM (few partial sums), at most one per block."""
    if device.type != "cuda":
        return max(1, min(blocks, 3))  # the interpreter: a few programs, each walking several blocks
    return max(1, min(blocks, 2 * torch.cuda.get_device_properties(device).multi_processor_count))


def _fused_backward(grad_y, x, weight, want_x: bool, want_params: bool):
    n, cin, inner = x.shape
    cout = weight.shape[0]
    block_o, block_c = _block(cout, FUSED_CHANNELS), _block(cin, FUSED_CHANNELS)
    blocks_s = triton.cdiv(inner, BLOCK_S)
    total_blocks = n * blocks_s
    programs = _programs(x.device, total_blocks)
    per_program = triton.cdiv(total_blocks, programs)
    programs = triton.cdiv(total_blocks, per_program)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if want_x else None
    partial_w = torch.empty(programs, block_o, block_c, dtype=torch.float32, device=x.device)
    partial_b = torch.empty(programs, block_o, dtype=torch.float32, device=x.device)
    with on_device(x):
        _conv1x1_backward_kernel[(programs,)](
            grad_y.contiguous(), x, weight.contiguous(), x if grad_x is None else grad_x, partial_w,
            partial_b, cin, cout, inner, blocks_s, total_blocks, per_program, *strides_3d(x), WANT_X=want_x,
            WANT_PARAMS=want_params, INTERPRETED=triton_interpreted(), BLOCK_O=block_o, BLOCK_C=block_c,
            BLOCK_S=BLOCK_S, num_warps=BACKWARD_WARPS)
    if not want_params:
        return grad_x, None, None
    return grad_x, partial_w.sum(0)[:cout, :cin].contiguous(), partial_b.sum(0)[:cout].contiguous()


def conv1x1_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    want_x, want_weight, want_bias = output_mask
    n, cin, inner = x.shape
    cout = weight.shape[0]
    if 1 <= cin <= FUSED_CHANNELS and cout <= FUSED_CHANNELS and n * inner * cout > 0:
        grad_x, grad_weight, grad_bias = _fused_backward(grad_y, x, weight, want_x, want_weight or want_bias)
        return grad_x, grad_weight if want_weight else None, grad_bias if want_bias else None
    grad_x = _launch(grad_y, weight.t(), None) if want_x else None
    grad_wide = grad_y.float() if want_weight or want_bias else None
    grad_weight = (grad_wide @ x.float().transpose(1, 2)).sum(0) if want_weight else None
    grad_bias = grad_wide.sum((0, 2)) if want_bias else None
    return grad_x, grad_weight, grad_bias
