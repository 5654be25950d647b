"""Triton kernels of the masked (PixelCNN) and shifted (PixelCNN++) convolutions and their launchers: the ops
gmk_triton::{masked,shifted}_conv2d{,_backward} and masked_conv2d_gated, declared in ops/masked_conv.py.

Every one of these convolutions is stride 1 with output H × W: output (h, w) reads input
(h + r - pad_top, w + s - pad_left) through tap (r, s), zero outside the image (masked loads: the
padding is never stored). The live taps are the first ``taps`` in raster order: all kh·kw of a
shifted kernel; for a k×k mask the k²//2 taps before the centre, then the centre tap itself when
some channel pair passes through it (mask B, or colour groups), which joins forward input channel i
to output channel o only when i < (o // (Cout/G) + [mask B]) · (Cin/G) (docs/conventions.md,
"Colour groups").

Implicit GEMMs, accumulated in float32 with ``tl.dot``:
  forward  y[p, o]  = Σ_taps Σ_i x[p + tap, i] W[o, i, tap]      (M = N·H·W pixels, N = Cout, K = Cin)
  grad_x   gx[p, i] = Σ_taps Σ_o gy[p - tap, o] W[o, i, tap]     (the mirrored taps, N = Cin, K = Cout)
  grad_W   gW[o, i, tap] = Σ_p gy[p, o] x[p + tap, i]            (one GEMM per live tap, K = pixels)
  grad_b   gb[o] = Σ_p gy[p, o]
The first two are one kernel, ``_conv_kernel``: its main loop runs over (off-centre tap, K block)
pairs; the centre tap is a second loop whose K range covers only the channels some output of the tile
may see, with the others masked off as the weights load. The weights of the live taps are packed
once per call as (taps, K, N), so masked taps are never read. x, y and the gradients keep their
strides (contiguous, channels_last or any other).

Precision: float16 and bfloat16 multiply on tensor cores in their own type; float32 multiplies in TF32
when ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default for convolutions: F.conv2d does the
same), else in full float32 ("ieee"). Under the interpreter (CPU tests) every tile is cast to float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._checks import indexable_in_32_bits
from ._common import mma, on_device, parallelism, precision, tanh



# --- kernels -------------------------------------------------------------------------------------

@triton.jit
def _pixels(m, HW, W):
    """(n, h, w) of the pixel indices m = (n·H + h)·W + w."""
    n = m // HW
    rest = m - n * HW
    h = rest // W
    return n, h, rest - h * W


@triton.jit
def _tile(M, C_out, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (pixel tile, channel tile), GROUP_M pixel tiles to a column for L2 reuse."""
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(C_out, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@triton.jit
def _conv_kernel(a_ptr, w_ptr, bias_ptr, cond_ptr, out_ptr, M, H, W, C_red, C_out, w_cols,
                 sa_n, sa_c, sa_h, sa_w, s_bias, sc_n, sc_c, sc_h, sc_w, so_n, so_c, so_h, so_w,
                 pad_top, pad_left, taps, group_in, group_out,
                 KW: tl.constexpr, TRANSPOSED: tl.constexpr, CENTRE: tl.constexpr, MASK_B: tl.constexpr,
                 HAS_BIAS: tl.constexpr, GATE: tl.constexpr, HAS_COND: tl.constexpr,
                 PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """out[p, j] = Σ_t Σ_k a[p ± tap t, k] w[t, k, j] (+ bias[j], read through its stride s_bias); w is
    (taps, C_red, w_cols).

    Forward: a = x, k = input channel, j = output channel, a read at p + tap. TRANSPOSED (grad_x):
    a = grad_y, k = output channel, j = input channel, a read at p - tap. The main loop takes the
    first ``taps`` taps in raster order; with CENTRE, tap ``taps`` is the centre, which joins input i
    to output o when i < (o // group_out + MASK_B) * group_in.

    GATE (forward only; 0: none, 1: tanh, 2: identity): the convolution has w_cols = 2 C_out outputs
    and each tile keeps two accumulators, a at outputs j and b at j + C_out (each plus bias and, with
    HAS_COND, cond, read through its strides sc_*, 0 where it broadcasts); out[p, j] = f(a) sigmoid(b)
    with f = tanh or the identity. The 2 C_out pre-activations are never stored.
    """
    pid_m, pid_n = _tile(M, C_out, BM, BN, GROUP_M)
    m = pid_m * BM + tl.arange(0, BM)
    j = pid_n * BN + tl.arange(0, BN)
    m_ok, j_ok = m < M, j < C_out
    n, h, w = _pixels(m, H * W, W)
    a_base = n.to(tl.int64) * sa_n + h.to(tl.int64) * sa_h + w.to(tl.int64) * sa_w
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_b = tl.zeros((BM, BN), dtype=tl.float32)  # the gate's second half (unused without GATE)
    k_blocks = tl.cdiv(C_red, BK)
    for step in range(taps * k_blocks):
        t = step // k_blocks
        k = (step - t * k_blocks) * BK + tl.arange(0, BK)
        k_ok = k < C_red
        r = t // KW
        dh, dw = r - pad_top, t - r * KW - pad_left
        if TRANSPOSED:  # grad_x reads grad_y through the mirrored taps
            dh, dw = -dh, -dw
        ih, iw = h + dh, w + dw
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        row = a_base + (dh.to(tl.int64) * sa_h + dw.to(tl.int64) * sa_w)
        a = tl.load(a_ptr + row[:, None] + k.to(tl.int64)[None, :] * sa_c,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_rows = w_ptr + tl.cast(t, tl.int64) * C_red * w_cols + k[:, None] * w_cols
        b = tl.load(w_rows + j[None, :], mask=k_ok[:, None] & j_ok[None, :], other=0.0)
        acc = mma(a, b, acc, PRECISION, INTERPRETED)
        if GATE != 0:
            b = tl.load(w_rows + (j + C_out)[None, :], mask=k_ok[:, None] & j_ok[None, :], other=0.0)
            acc_b = mma(a, b, acc_b, PRECISION, INTERPRETED)
    if CENTRE:
        if not TRANSPOSED:  # k = i, j = o: the inputs below the bound of the tile's last output
            last_o = tl.minimum((pid_n + 1) * BN, C_out) - 1
            if GATE != 0:  # the tile's last output is in the second half
                last_o += C_out
            k_lo, k_hi = 0, tl.minimum((last_o // group_out + MASK_B) * group_in, C_red)
        else:  # k = o, j = i: outputs from the first group that the tile's first input reaches
            k_lo = (((pid_n * BN) // group_in) + 1 - MASK_B) * group_out
            k_hi = C_red
        w_centre = w_ptr + tl.cast(taps, tl.int64) * C_red * w_cols
        for k0 in range(k_lo, k_hi, BK):
            k = k0 + tl.arange(0, BK)
            k_ok = k < k_hi
            if not TRANSPOSED:
                live = k[:, None] < (j[None, :] // group_out + MASK_B) * group_in
            else:
                live = j[None, :] < (k[:, None] // group_out + MASK_B) * group_in
            a = tl.load(a_ptr + a_base[:, None] + k.to(tl.int64)[None, :] * sa_c,
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_centre + k[:, None] * w_cols + j[None, :],
                        mask=k_ok[:, None] & j_ok[None, :] & live, other=0.0)
            acc = mma(a, b, acc, PRECISION, INTERPRETED)
            if GATE != 0:
                live = k[:, None] < ((j[None, :] + C_out) // group_out + MASK_B) * group_in
                b = tl.load(w_centre + k[:, None] * w_cols + (j + C_out)[None, :],
                            mask=k_ok[:, None] & j_ok[None, :] & live, other=0.0)
                acc_b = mma(a, b, acc_b, PRECISION, INTERPRETED)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + j * s_bias, mask=j_ok, other=0.0).to(tl.float32)[None, :]
        if GATE != 0:
            acc_b += tl.load(bias_ptr + (C_out + j) * s_bias, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    if GATE != 0:
        if HAS_COND:
            cond_at = (n.to(tl.int64) * sc_n + h.to(tl.int64) * sc_h + w.to(tl.int64) * sc_w)[:, None] \
                + j.to(tl.int64)[None, :] * sc_c
            cond_ok = m_ok[:, None] & j_ok[None, :]
            acc += tl.load(cond_ptr + cond_at, mask=cond_ok, other=0.0).to(tl.float32)
            acc_b += tl.load(cond_ptr + cond_at + tl.cast(C_out, tl.int64) * sc_c, mask=cond_ok,
                             other=0.0).to(tl.float32)
        if GATE == 1:
            acc = tanh(acc, INTERPRETED)
        acc = acc * tl.sigmoid(acc_b)
    out = n.to(tl.int64) * so_n + h.to(tl.int64) * so_h + w.to(tl.int64) * so_w
    tl.store(out_ptr + out[:, None] + j.to(tl.int64)[None, :] * so_c, acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & j_ok[None, :])


@triton.jit
def _weight_grad_kernel(g_ptr, x_ptr, out_ptr, M, H, W, C_out, C_in,
                        sg_n, sg_c, sg_h, sg_w, sx_n, sx_c, sx_h, sx_w, so_split, so_t, so_o, so_i,
                        pad_top, pad_left, centre, group_in, group_out, blocks_per_split,
                        KW: tl.constexpr, CENTRE: tl.constexpr, MASK_B: tl.constexpr,
                        PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """out[split, t, o, i] = Σ_p gy[p, o] x[p + tap t, i] over this split's pixel blocks.

    Grid: (output × input channel tiles, live taps, splits of the pixels). With CENTRE, tap ``centre``
    keeps only the live channel pairs (zeros elsewhere) and skips tiles that have none.
    """
    num_i = tl.cdiv(C_in, BN)
    pid_o, pid_i = tl.program_id(0) // num_i, tl.program_id(0) % num_i
    t, split = tl.program_id(1), tl.program_id(2)
    o = pid_o * BM + tl.arange(0, BM)
    i = pid_i * BN + tl.arange(0, BN)
    o_ok, i_ok = o < C_out, i < C_in
    r = t // KW
    dh, dw = r - pad_top, t - r * KW - pad_left
    x_shift = dh.to(tl.int64) * sx_h + dw.to(tl.int64) * sx_w
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(M, BK))
    if CENTRE:
        is_centre = t == centre
        o_last = tl.minimum((pid_o + 1) * BM, C_out) - 1
        if is_centre & (pid_i * BN >= (o_last // group_out + MASK_B) * group_in):
            last = first  # no live pair in this tile
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for block in range(first, last):
        p = block * BK + tl.arange(0, BK)
        n, h, w = _pixels(p, H * W, W)
        ih, iw = h + dh, w + dw
        p_ok = p < M
        x_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        g_row = n.to(tl.int64) * sg_n + h.to(tl.int64) * sg_h + w.to(tl.int64) * sg_w
        x_row = n.to(tl.int64) * sx_n + h.to(tl.int64) * sx_h + w.to(tl.int64) * sx_w + x_shift
        g = tl.load(g_ptr + o.to(tl.int64)[:, None] * sg_c + g_row[None, :],
                    mask=o_ok[:, None] & p_ok[None, :], other=0.0)
        x = tl.load(x_ptr + x_row[:, None] + i.to(tl.int64)[None, :] * sx_c,
                    mask=x_ok[:, None] & i_ok[None, :], other=0.0)
        acc = mma(g, x, acc, PRECISION, INTERPRETED)
    if CENTRE:  # zeros at the centre tap's masked pairs
        live = (t != centre) | (i[None, :] < (o[:, None] // group_out + MASK_B) * group_in)
        acc = tl.where(live, acc, 0.0)
    out = out_ptr + tl.cast(split, tl.int64) * so_split + tl.cast(t, tl.int64) * so_t
    tl.store(out + o[:, None] * so_o + i[None, :] * so_i, acc.to(out_ptr.dtype.element_ty),
             mask=o_ok[:, None] & i_ok[None, :])


@triton.jit
def _channel_sum_kernel(g_ptr, out_ptr, M, H, W, C, sg_n, sg_c, sg_h, sg_w, blocks_per_split,
                        BP: tl.constexpr, BC: tl.constexpr):
    """out[split, c] = Σ_p gy[p, c] over this split's pixel blocks (the bias gradient)."""
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    c_ok = c < C
    split = tl.program_id(1)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(M, BP))
    acc = tl.zeros((BC,), dtype=tl.float32)
    for block in range(first, last):
        p = block * BP + tl.arange(0, BP)
        n, h, w = _pixels(p, H * W, W)
        row = n.to(tl.int64) * sg_n + h.to(tl.int64) * sg_h + w.to(tl.int64) * sg_w
        g = tl.load(g_ptr + row[:, None] + c.to(tl.int64)[None, :] * sg_c,
                    mask=(p < M)[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(g.to(tl.float32), axis=0)
    tl.store(out_ptr + split * C + c, acc, mask=c_ok)


# --- tile sizes ----------------------------------------------------------------------------------

def _conv_configs() -> list[triton.Config]:
    if triton_interpreted():  # one config; small tiles, so that the CPU tests cross tile edges
        return [triton.Config({"BM": 32, "BN": 16, "BK": 16, "GROUP_M": 4})]
    return [
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 128, "BK": 32, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 128, "BN": 64, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BM": 64, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BM": 64, "BN": 64, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]


def _gated_configs() -> list[triton.Config]:
    """The fused gate keeps two (BM, BN) accumulators: half the columns of the plain tiles."""
    if triton_interpreted():
        return _conv_configs()
    return [
        triton.Config({"BM": 128, "BN": 64, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 64, "BK": 32, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 128, "BN": 128, "BK": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 64, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=2),  # 3 stages: 240 KB in float32
        triton.Config({"BM": 64, "BN": 64, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]


_CONV_KEY = ["M", "H", "W", "C_red", "C_out", "taps", "KW", "TRANSPOSED", "CENTRE"]
_conv_tuned = triton.autotune(_conv_configs(), key=_CONV_KEY)(_conv_kernel)
_gated_tuned = triton.autotune(_gated_configs(), key=[*_CONV_KEY, "GATE", "HAS_COND"])(_conv_kernel)
GATES = {"tanh": 1, "identity": 2}

# The weight gradient: (BM, BN) tiles of (output, input) channels, BK pixels a step.
WEIGHT_TILES_INTERPRETED = {"BM": 16, "BN": 16, "BK": 32}
WEIGHT_WARPS, WEIGHT_STAGES = 8, 3
SUM_BLOCK_PIXELS, SUM_BLOCK_CHANNELS = 64, 32
MIN_BLOCKS_PER_SPLIT = 8  # pixel blocks a split runs at least, so that splitting pays for its sum


def _weight_tiles(dtype: torch.dtype, out_channels: int, in_channels: int, taps: int) -> dict:
    """Tiles of 128 × 128 channels when there are enough of them to fill the GPU, else 64 × 64."""
    if triton_interpreted():
        return WEIGHT_TILES_INTERPRETED
    programs = triton.cdiv(out_channels, 128) * triton.cdiv(in_channels, 128) * taps
    size = 128 if programs >= parallelism() else 64
    return {"BM": size, "BN": size, "BK": 32 if dtype == torch.float32 else 64}


def _splits(programs: int, blocks: int) -> tuple[int, int]:
    """(splits, blocks per split) of ``blocks`` pixel blocks, so that programs × splits fills the device."""
    wanted = max(1, min(triton.cdiv(parallelism(), max(programs, 1)), blocks // MIN_BLOCKS_PER_SPLIT))
    per_split = triton.cdiv(blocks, wanted) if blocks else 1
    return (triton.cdiv(blocks, per_split) if blocks else 1), per_split


# --- geometry and argument checks ----------------------------------------------------------------

class _Geometry:
    """The convolution of x (N, Cin, H, W) with weight (Cout, Cin, kh, kw): padding, live taps, mask."""

    def __init__(self, x, weight, pad_top, pad_left, taps, centre, mask_b=False, color_groups=1):
        if x.shape[0] * x.shape[2] * x.shape[3] >= 2**31:  # the kernels index pixels in 32 bits
            raise ValueError(f"gmk_triton: x's N·H·W must be below 2^31 pixels, got shape {list(x.shape)}")
        self.batch, self.in_channels, self.height, self.width = x.shape
        self.out_channels, _, self.kernel_h, self.kernel_w = weight.shape
        self.pad_top, self.pad_left = pad_top, pad_left
        self.taps, self.centre, self.mask_b = taps, centre, mask_b  # off-centre live taps; centre live
        self.group_in = max(self.in_channels // color_groups, 1)
        self.group_out = max(self.out_channels // color_groups, 1)
        self.pixels = self.batch * self.height * self.width

    @property
    def live_taps(self) -> int:
        return self.taps + self.centre


def _masked_geometry(x, weight, mask_type: str, color_groups: int) -> _Geometry:
    k = weight.shape[2]
    centre = mask_type == "B" or color_groups > 1
    return _Geometry(x, weight, k // 2, k // 2, k * k // 2, centre, mask_type == "B", color_groups)


def _shifted_geometry(x, weight, shift: str) -> _Geometry:
    kh, kw = weight.shape[2:]
    return _Geometry(x, weight, kh - 1, (kw - 1) // 2 if shift == "down" else kw - 1, kh * kw, False)


# --- launchers -----------------------------------------------------------------------------------

def _layout(x: torch.Tensor) -> torch.memory_format:
    """The layout of y and grad_x (the C++ ops' rule): x's when x is dense channels_last and not NCHW."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _packed_weight(weight: torch.Tensor, g: _Geometry, transposed: bool) -> torch.Tensor:
    """The live taps of weight as (taps, K, N): (taps, Cin, Cout) forward, (taps, Cout, Cin) for grad_x.

    Live taps are the first ones in raster order, so the slice copies them and nothing else.
    """
    order = (2, 3, 0, 1) if transposed else (2, 3, 1, 0)
    return weight.permute(order).flatten(0, 1)[:g.live_taps].contiguous()


def _conv(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
          g: _Geometry, transposed: bool, gate: int = 0, cond: torch.Tensor | None = None) -> None:
    """out (N, C_out, H, W) = the implicit GEMM of a with the packed weights; see _conv_kernel.

    With ``gate`` (GATES), out has half the convolution's channels and ``cond`` is None or
    (N, 2 C_out, H, W), any strides (an expanded view)."""
    c_red, c_out = a.shape[1], out.shape[1]
    if out.numel() == 0:
        return
    packed, bias = _packed_weight(weight, g, transposed), indexable_in_32_bits(bias)

    def grid(meta):
        return (triton.cdiv(g.pixels, meta["BM"]) * triton.cdiv(c_out, meta["BN"]),)

    with on_device(a):
        (_gated_tuned if gate else _conv_tuned)[grid](
            a, packed, a if bias is None else bias, a if cond is None else cond, out,
            g.pixels, g.height, g.width, c_red, c_out, packed.shape[2],
            *a.stride(), 0 if bias is None else bias.stride(0),
            *((0,) * 4 if cond is None else cond.stride()), *out.stride(),
            g.pad_top, g.pad_left, g.taps, g.group_in, g.group_out,
            KW=g.kernel_w, TRANSPOSED=transposed, CENTRE=g.centre, MASK_B=int(g.mask_b),
            HAS_BIAS=bias is not None, GATE=gate, HAS_COND=cond is not None,
            PRECISION=precision(a.dtype), INTERPRETED=triton_interpreted())


def _weight_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """The weight gradient, zero at masked weights; split over the pixels (and summed) when the live
    taps alone give too few programs."""
    grad_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device)
    cout, cin = g.out_channels, g.in_channels
    if grad_weight.numel() == 0 or g.pixels == 0:
        return grad_weight
    by_tap = grad_weight.permute(2, 3, 0, 1).flatten(0, 1)  # a view: (kh·kw, Cout, Cin)
    tiles = _weight_tiles(x.dtype, cout, cin, g.live_taps)
    tile_count = triton.cdiv(cout, tiles["BM"]) * triton.cdiv(cin, tiles["BN"])
    splits, per_split = _splits(tile_count * g.live_taps, triton.cdiv(g.pixels, tiles["BK"]))
    out = by_tap if splits == 1 else torch.empty(splits, g.live_taps, cout, cin, dtype=torch.float32,
                                                 device=x.device)
    out_strides = (0, *by_tap.stride()) if splits == 1 else out.stride()
    with on_device(x):
        _weight_grad_kernel[(tile_count, g.live_taps, splits)](
            grad_out, x, out, g.pixels, g.height, g.width, cout, cin, *grad_out.stride(), *x.stride(),
            *out_strides, g.pad_top, g.pad_left, g.taps, g.group_in, g.group_out, per_split,
            KW=g.kernel_w, CENTRE=g.centre, MASK_B=int(g.mask_b), PRECISION=precision(x.dtype),
            INTERPRETED=triton_interpreted(), **tiles,
            **({} if triton_interpreted() else {"num_warps": WEIGHT_WARPS, "num_stages": WEIGHT_STAGES}))
    if splits > 1:
        by_tap[:g.live_taps] = out.sum(0)
    return grad_weight


def _bias_grad(grad_out: torch.Tensor, g: _Geometry) -> torch.Tensor:
    cout = g.out_channels
    channel_blocks = triton.cdiv(cout, SUM_BLOCK_CHANNELS)
    splits, per_split = _splits(channel_blocks, triton.cdiv(g.pixels, SUM_BLOCK_PIXELS))
    partial = torch.zeros(splits, cout, dtype=torch.float32, device=grad_out.device)
    if cout and g.pixels:
        with on_device(grad_out):
            _channel_sum_kernel[(channel_blocks, splits)](
                grad_out, partial, g.pixels, g.height, g.width, cout, *grad_out.stride(), per_split,
                BP=SUM_BLOCK_PIXELS, BC=SUM_BLOCK_CHANNELS)
    return partial.sum(0).to(grad_out.dtype)


def _forward(x, weight, bias, g: _Geometry) -> torch.Tensor:
    y = torch.empty((g.batch, g.out_channels, g.height, g.width), dtype=x.dtype, device=x.device,
                    memory_format=_layout(x))
    _conv(x, weight, bias, y, g, transposed=False)
    return y


def _backward(grad_out, x, weight, g: _Geometry, output_mask):
    want_x, want_weight, want_bias = output_mask
    grad_x = None
    if want_x:
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))
        _conv(grad_out, weight, None, grad_x, g, transposed=True)
    grad_weight = _weight_grad(grad_out, x, weight, g) if want_weight else None
    grad_bias = _bias_grad(grad_out, g) if want_bias else None
    return grad_x, grad_weight, grad_bias


# --- the ops (declared, with their checks, fakes and autograd, in gmkernels/ops/masked_conv.py) -----------------------------------

def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask_type: str,
                  color_groups: int) -> torch.Tensor:
    g = _masked_geometry(x, weight, mask_type, color_groups)
    return _forward(x, weight, bias, g)


def masked_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask_type: str,
                           color_groups: int, output_mask: list[bool]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _masked_geometry(x, weight, mask_type, color_groups)
    return _backward(grad_out, x, weight, g, output_mask)


def masked_conv2d_gated(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        cond: torch.Tensor | None, mask_type: str, color_groups: int,
                        gate: str) -> torch.Tensor:
    """The masked convolution to Cout = 2C channels h, then f(a) sigmoid(b) of the halves of h + cond
    (cond broadcast to h), fused: returns (N, C, H, W); h is never stored."""
    g = _masked_geometry(x, weight, mask_type, color_groups)
    y = torch.empty((g.batch, g.out_channels // 2, g.height, g.width), dtype=x.dtype, device=x.device,
                    memory_format=_layout(x))
    full = (g.batch, g.out_channels, g.height, g.width)
    _conv(x, weight, bias, y, g, transposed=False, gate=GATES[gate],
          cond=None if cond is None else cond.expand(full))
    return y


def shifted_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   shift: str) -> torch.Tensor:
    g = _shifted_geometry(x, weight, shift)
    return _forward(x, weight, bias, g)


def shifted_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, shift: str,
                            output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _shifted_geometry(x, weight, shift)
    return _backward(grad_out, x, weight, g, output_mask)
