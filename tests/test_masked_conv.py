"""gmk.masked_conv2d, gmk.shifted_conv2d, gmk.conv_mask: every backend against the float64 reference,
forward and the three gradients; the masks, causality, the fused gate, the modules and the C++ ops."""
import functools
import math

import pytest
import torch

import gmkernels as gmk
import gmkernels.ops.masked_conv as masked_conv_ops
import gmkernels.reference.masked_conv as reference
from conftest import (assert_close, assert_close_sum, backends_under_test, misaligned, noncontiguous,
                      supported_dtypes)


pytestmark = pytest.mark.usefixtures("exact_float32")


# The backends that run here and have these ops.
BACKENDS = [name for name in backends_under_test("cpu") if name == "reference" or masked_conv_ops.MASKED_CONV.has(name)]
MASK_TYPES = ("A", "B")

def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


LAYOUTS = {"contiguous": None, "channels_last": channels_last, "noncontiguous": noncontiguous}


def run(op, x, weight, bias, grad_y, **kwargs):
    """op's y and the gradients of x, weight, bias (bias may be None)."""
    leaves = [t.detach().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    y = op(*leaves[:2], leaves[2] if bias is not None else None, **kwargs)
    return y, torch.autograd.grad(y, leaves, grad_y)


def check_backend(op, x, weight, bias, *, backend, layout=None, grad_layout=None, **kwargs):
    """``backend`` matches the reference run in float64 on the same values: y and the three gradients.

    ``layout`` re-stores x and ``grad_layout`` grad_y before the backend sees them.
    """
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    grad_y = torch.randn(n, cout, h, w, dtype=x.dtype, device=x.device)
    stored_x = x if layout is None else layout(x)
    stored_grad_y = grad_y if grad_layout is None else grad_layout(grad_y)
    y, grads = run(op, stored_x, weight, bias, stored_grad_y, backend=backend, **kwargs)
    as64 = [None if t is None else t.double() for t in (x, weight, bias, grad_y)]
    y64, grads64 = run(op, *as64, backend="reference", **kwargs)
    assert (y.dtype, y.device) == (x.dtype, x.device)
    assert_close_sum(y, y64, x.dtype, cin * kh * kw)
    terms = (cout * kh * kw, n * h * w, n * h * w)[:len(grads)]  # x, weight, bias
    for grad, grad64, terms in zip(grads, grads64, terms, strict=True):
        assert grad.dtype == x.dtype
        assert_close_sum(grad, grad64, x.dtype, terms)
    return y, grads


# --- the masks ---------------------------------------------------------------------------------

# k = 1 with mask A masks every tap: rejected (test_bad_input_raises_naming_the_argument).
@pytest.mark.parametrize(("k", "mask_type"), [(1, "B"), *((k, m) for k in (3, 5, 7) for m in MASK_TYPES)])
def test_conv_mask_keeps_the_taps_before_the_centre(k, mask_type):
    mask = gmk.conv_mask(k, mask_type, 4, 2)
    assert mask.shape == (2, 4, k, k) and mask.dtype == torch.float32
    assert torch.equal(mask, mask[:1, :1].expand_as(mask))  # one pattern for every channel pair
    taps = mask[0, 0]
    assert int(taps.sum()) == (k * k - 1) // 2 + (mask_type == "B")
    raster = torch.arange(k * k).view(k, k)
    centre = k * k // 2
    assert torch.equal(taps.bool(), raster < centre if mask_type == "A" else raster <= centre)


# Which input colour group output group g sees at the centre tap: row g, column h.
CENTRE_GROUPS = {"A": [[0, 0, 0], [1, 0, 0], [1, 1, 0]], "B": [[1, 0, 0], [1, 1, 0], [1, 1, 1]]}


@pytest.mark.parametrize("mask_type", MASK_TYPES)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv_mask_colour_groups(k, mask_type):
    mask = gmk.conv_mask(k, mask_type, in_channels=6, out_channels=9, color_groups=3)
    c = k // 2
    groups = torch.tensor(CENTRE_GROUPS[mask_type], dtype=torch.float32)
    assert torch.equal(mask[:, :, c, c], groups.repeat_interleave(3, 0).repeat_interleave(2, 1))
    off_centre = gmk.conv_mask(k, "B", 6, 9)
    off_centre[:, :, c, c] = 0
    centre_free = mask.clone()
    centre_free[:, :, c, c] = 0
    assert torch.equal(centre_free, off_centre)  # off-centre taps see every group


# --- every backend against the reference ----------------------------------------------------------

# (mask_type, color_groups, k, Cin, Cout, H, W): every k, odd sizes, channel counts not multiples of 8.
MASKED_CASES = [
    ("B", 1, 1, 3, 6, 5, 7), ("A", 3, 1, 6, 9, 3, 5), ("B", 3, 1, 9, 3, 4, 3),
    ("A", 1, 3, 3, 15, 5, 7), ("B", 3, 3, 15, 6, 7, 5), ("A", 3, 3, 3, 9, 1, 9),
    ("B", 1, 5, 9, 6, 7, 9), ("A", 3, 5, 6, 15, 5, 3),
    ("A", 1, 7, 15, 9, 9, 7), ("B", 3, 7, 9, 9, 3, 11),
]


def backend_dtype_layouts():
    """(backend, dtype, layout) to test: every combination, but Triton's half types only contiguous (the
    interpreter is slow; the layouts are strides to the kernels, the same for every dtype)."""
    return [pytest.param(backend, dtype, layout, id=f"{backend}-{str(dtype)[6:]}-{name}")
            for backend in BACKENDS for dtype in supported_dtypes(backend)
            for name, layout in LAYOUTS.items()
            if backend != "triton" or dtype == torch.float32 or layout is None]


@pytest.mark.parametrize(("mask_type", "groups", "k", "cin", "cout", "h", "w"), MASKED_CASES)
@pytest.mark.parametrize(("backend", "dtype", "layout"), backend_dtype_layouts())
def test_masked_conv_matches_reference(backend, dtype, mask_type, groups, k, cin, cout, h, w, layout):
    x = torch.randn(2, cin, h, w, dtype=dtype)
    weight, bias = torch.randn(cout, cin, k, k, dtype=dtype), torch.randn(cout, dtype=dtype)
    y, _ = check_backend(gmk.masked_conv2d, x, weight, bias, backend=backend, layout=layout,
                         mask_type=mask_type, color_groups=groups)
    if layout is channels_last and min(cin, cout, h * w) > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)


# (shift, kh, kw, Cin, Cout, H, W)
SHIFTED_CASES = [
    ("down", 2, 3, 3, 6, 5, 7), ("down", 1, 1, 6, 9, 3, 4), ("down", 3, 5, 9, 15, 7, 3),
    ("down_right", 2, 2, 6, 3, 5, 7), ("down_right", 1, 3, 15, 6, 4, 5), ("down_right", 3, 1, 3, 9, 7, 2),
]


@pytest.mark.parametrize(("shift", "kh", "kw", "cin", "cout", "h", "w"), SHIFTED_CASES)
@pytest.mark.parametrize(("backend", "dtype", "layout"), backend_dtype_layouts())
def test_shifted_conv_matches_reference(backend, dtype, shift, kh, kw, cin, cout, h, w, layout):
    x = torch.randn(2, cin, h, w, dtype=dtype)
    weight, bias = torch.randn(cout, cin, kh, kw, dtype=dtype), torch.randn(cout, dtype=dtype)
    check_backend(gmk.shifted_conv2d, x, weight, bias, backend=backend, layout=layout, shift=shift)


GRAD_LAYOUTS = {"x-nchw-grad-nhwc": (None, channels_last), "x-nhwc-grad-nchw": (channels_last, None),
                "x-nhwc-grad-noncontiguous": (channels_last, noncontiguous)}


@pytest.mark.parametrize(("layout", "grad_layout"), GRAD_LAYOUTS.values(), ids=GRAD_LAYOUTS.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_layouts(backend, layout, grad_layout):
    x, weight = torch.randn(2, 6, 5, 7), torch.randn(9, 6, 3, 3)
    check_backend(gmk.masked_conv2d, x, weight, None, backend=backend, layout=layout, grad_layout=grad_layout,
                  mask_type="A", color_groups=3)
    check_backend(gmk.shifted_conv2d, x, weight[:, :, :2], None, backend=backend, layout=layout,
                  grad_layout=grad_layout)


# (x's shape, weight's shape): no samples, no rows, no columns, no input channels, no output channels. y is
# the bias alone in each (F.conv2d rejects or, with Cin = 0, mis-shapes the last four: the reference
# handles them).
EMPTY_SHAPES = [((0, 3, 5, 5), (6, 3, 3, 3)), ((2, 3, 0, 4), (6, 3, 3, 3)), ((2, 3, 4, 0), (6, 3, 3, 3)),
                ((2, 0, 4, 5), (6, 0, 3, 3)), ((2, 3, 4, 5), (0, 3, 3, 3))]


@pytest.mark.parametrize("op", [gmk.masked_conv2d, gmk.shifted_conv2d], ids=["masked", "shifted"])
@pytest.mark.parametrize(("x_shape", "weight_shape"), EMPTY_SHAPES)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_items5_11_empty_sizes(backend, x_shape, weight_shape, op):
    """Every backend, the reference too (it returned Cin channels for Cin = 0 and raised torch's errors)."""
    x, weight, bias = torch.randn(x_shape), torch.randn(weight_shape), torch.randn(weight_shape[0])
    grad_y = torch.randn(x_shape[0], weight_shape[0], *x_shape[2:])
    y, (grad_x, grad_weight, grad_bias) = run(op, x, weight, bias, grad_y, backend=backend)
    assert torch.equal(y, bias.view(-1, 1, 1).expand(y.shape))
    assert torch.equal(grad_x, torch.zeros_like(x)) and torch.equal(grad_weight, torch.zeros_like(weight))
    torch.testing.assert_close(grad_bias, grad_y.sum((0, 2, 3)))


@pytest.mark.parametrize("mask_type", MASK_TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_colour_groups_across_channel_tiles(backend, mask_type):
    """Groups of 11 channels: the GPU kernels' channel tiles (16 wide in the interpreter) cut through them."""
    x, weight, bias = torch.randn(2, 33, 4, 5), torch.randn(33, 33, 3, 3), torch.randn(33)
    check_backend(gmk.masked_conv2d, x, weight, bias, backend=backend, mask_type=mask_type, color_groups=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_pixels_few_taps(backend):
    """Few taps and channels over many pixels: the Triton weight and bias gradients split the pixels and
    sum the parts."""
    x, weight, bias = torch.randn(2, 3, 31, 33), torch.randn(6, 3, 1, 1), torch.randn(6)
    check_backend(gmk.masked_conv2d, x, weight, bias, backend=backend, mask_type="B", color_groups=3)
    check_backend(gmk.shifted_conv2d, x, torch.randn(6, 3, 1, 2), bias, backend=backend,
                  shift="down_right")


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name == "cpu"])
def test_large_image_runs_in_bands(backend):
    """Columns over the band budget (T * Cin * W values a row) are built a few rows at a time."""
    x, weight = torch.randn(1, 64, 80, 70), torch.randn(4, 64, 7, 7)
    check_backend(gmk.masked_conv2d, x, weight, None, backend=backend, mask_type="B")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", [name for name in BACKENDS if name == "cpu"])
def test_batch_runs_in_blocks_of_whole_samples(backend, layout):
    """Small images are batched into one GEMM per block of whole samples: 25 * 64 * 48 * 48 column
    values a sample, so 1 << 22 hold 1 sample a block and a batch of 3 makes 3 blocks; at 24 * 24, 4
    samples fit a block and a batch of 9 makes blocks of 4, 4 and 1."""
    for n, size in ((3, 48), (9, 24)):
        x, weight, bias = torch.randn(n, 64, size, size), torch.randn(5, 64, 7, 7), torch.randn(5)
        check_backend(gmk.masked_conv2d, x, weight, bias, backend=backend, mask_type="B",
                      layout=LAYOUTS[layout], grad_layout=LAYOUTS[layout])


# --- the masked weights ---------------------------------------------------------------------------

@pytest.mark.parametrize(("mask_type", "groups"), [("A", 1), ("B", 3), ("A", 3)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_weights_are_never_read_and_get_zero_gradient(backend, mask_type, groups):
    """NaN in every masked weight: a backend that multiplied by them would return NaN."""
    x, weight, bias = torch.randn(2, 6, 5, 7), torch.randn(9, 6, 5, 5), torch.randn(9)
    mask = gmk.conv_mask(5, mask_type, 6, 9, groups).bool()
    poisoned = weight.masked_fill(~mask, float("nan"))
    kwargs = {"mask_type": mask_type, "color_groups": groups}
    grad_y = torch.randn(2, 9, 5, 7)
    y, (_, grad_weight, _) = run(gmk.masked_conv2d, x, poisoned, bias, grad_y, backend=backend, **kwargs)
    y_ref, (_, grad_ref, _) = run(gmk.masked_conv2d, x, weight, bias, grad_y, backend="reference", **kwargs)
    assert y.isfinite().all()
    assert_close_sum(y, y_ref, torch.float32, 6 * 25)
    assert torch.equal(grad_weight[~mask], torch.zeros((~mask).sum().item()))
    assert torch.equal(grad_ref[~mask], torch.zeros((~mask).sum().item()))


# --- causality, through autograd on random inputs --------------------------------------------------

def receptive_field(mask, pad_top, pad_left, out_channels, h, w, i, j):
    """The x[c, i', j'] that output (i, j), channels ``out_channels``, reads through nonzero mask entries."""
    cout, cin, kh, kw = mask.shape
    field = torch.zeros(cin, h, w, dtype=torch.bool)
    for r in range(kh):
        for s in range(kw):
            ii, jj = i + r - pad_top, j + s - pad_left
            if 0 <= ii < h and 0 <= jj < w:
                field[:, ii, jj] |= mask[out_channels, :, r, s].bool().any(0)
    return field


def dependence(op, x, weight, out_channels, i, j, **kwargs):
    """Where the output at (i, j), channels ``out_channels``, depends on x: its gradient is nonzero."""
    x = x.detach().requires_grad_()
    y = op(x, weight, **kwargs)
    (grad,) = torch.autograd.grad(y[0, out_channels, i, j].sum(), x)
    return grad[0] != 0


OUT_GROUPS = {"R": slice(0, 3), "G": slice(3, 6), "B": slice(6, 9), "all": slice(0, 9)}


@pytest.mark.parametrize("out_group", OUT_GROUPS.values(), ids=OUT_GROUPS.keys())
@pytest.mark.parametrize(("mask_type", "groups"), [("A", 1), ("B", 1), ("A", 3), ("B", 3)])
@pytest.mark.parametrize(("backend", "position"), [  # Triton (interpreted, slow) at an inner pixel only
    (backend, position) for backend in ["reference", *BACKENDS] for position in [(0, 0), (2, 3), (4, 6)]
    if backend != "triton" or position == (2, 3)])
def test_masked_conv_is_causal(backend, mask_type, groups, out_group, position):
    """Exactly the taps before the pixel in raster order, the pixel itself for mask B, and at the pixel
    only the earlier colour groups (and the output's own for mask B)."""
    x, weight = torch.randn(2, 6, 5, 7), torch.randn(9, 6, 5, 5)
    seen = dependence(gmk.masked_conv2d, x, weight, out_group, *position, mask_type=mask_type,
                      color_groups=groups, backend=backend)
    mask = reference.conv_mask(5, mask_type, 6, 9, groups)
    assert torch.equal(seen, receptive_field(mask, 2, 2, out_group, 5, 7, *position))
    i, j = position
    later = torch.arange(5 * 7).view(5, 7) > i * 7 + j
    assert not seen[:, later].any()


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_stacked_masks_keep_colour_causality(backend):
    """Mask A, then two mask B layers (PixelCNN): output group g at a pixel sees its input groups < g."""
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    weights = [torch.randn(6, 3, 3, 3), torch.randn(6, 6, 3, 3), torch.randn(3, 6, 3, 3)]
    h = x
    for weight, mask_type in zip(weights, "ABB"):
        h = torch.tanh(gmk.masked_conv2d(h, weight, mask_type=mask_type, color_groups=3, backend=backend))
    for g in range(3):
        (grad,) = torch.autograd.grad(h[0, g, 3, 2], x, retain_graph=True)
        assert torch.equal(grad[0, :, 3, 2] != 0, torch.arange(3) < g)
        assert not grad[0, :, 3, 3:].any() and not grad[0, :, 4:].any()


@pytest.mark.parametrize("position", [(0, 0), (3, 2), (4, 6)])
@pytest.mark.parametrize(("shift", "kh", "kw"), [("down", 2, 3), ("down", 3, 5), ("down_right", 2, 2),
                                                 ("down_right", 3, 4)])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_shifted_conv_sees_no_later_row_or_column(backend, shift, kh, kw, position):
    x, weight = torch.randn(2, 3, 5, 7), torch.randn(4, 3, kh, kw)
    seen = dependence(gmk.shifted_conv2d, x, weight, slice(None), *position, shift=shift, backend=backend)
    left = (kw - 1) // 2 if shift == "down" else kw - 1
    expected = receptive_field(torch.ones(4, 3, kh, kw), kh - 1, left, slice(None), 5, 7, *position)
    assert torch.equal(seen, expected)
    i, j = position
    assert not seen[:, i + 1:].any()
    if shift == "down_right":
        assert not seen[:, :, j + 1:].any()


def strided(bias):
    """bias's values in every other element of a buffer (NaN between)."""
    return noncontiguous(bias)


def expanded(bias):
    """One value, expanded (stride 0)."""
    return bias[:1].expand(bias.shape)


@pytest.mark.parametrize("layout", [strided, expanded])
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_item3_bias_of_any_strides(backend, layout):
    """The Triton kernels loaded bias + j whatever its stride."""
    x, weight, bias = torch.randn(2, 6, 5, 4), torch.randn(9, 6, 3, 3), torch.randn(9)
    check_backend(gmk.masked_conv2d, x, weight, layout(bias), backend=backend, mask_type="A", color_groups=3)
    check_backend(gmk.shifted_conv2d, x, weight[:, :, :2], layout(bias), backend=backend, shift="down")


# --- the fused gate -------------------------------------------------------------------------------

@pytest.mark.parametrize("cond_kind", [None, "global", "local"])
@pytest.mark.parametrize("gate", ["tanh", "identity"])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_gate_equals_conv_then_gated_activation(backend, gate, cond_kind):
    x, weight, bias = torch.randn(2, 6, 5, 7), torch.randn(12, 6, 3, 3), torch.randn(12)
    cond = {None: None, "global": torch.randn(2, 12, 1, 1), "local": torch.randn(2, 12, 5, 7)}[cond_kind]
    kwargs = {"mask_type": "B", "backend": backend}

    def fused(x, weight, bias, cond=None):
        return gmk.masked_conv2d(x, weight, bias, gate=gate, cond=cond, **kwargs)

    def unfused(x, weight, bias, cond=None):
        return gmk.gated_activation(gmk.masked_conv2d(x, weight, bias, **kwargs), cond, activation=gate,
                                    backend=backend)

    leaves = [x, weight, bias] + ([cond] if cond is not None else [])
    grad_y = torch.randn(2, 6, 5, 7)
    results = []
    for function in (fused, unfused):
        inputs = [t.clone().requires_grad_() for t in leaves]
        y = function(*inputs)
        results.append((y, *torch.autograd.grad(y, inputs, grad_y)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)
    assert results[0][0].shape == (2, 6, 5, 7)


# The fused Triton op against the float64 reference: (mask_type, color_groups, k, Cin, 2C, H, W). The last
# case has C = 18 gated channels, two of the interpreter's 16-wide channel tiles. The gate takes one colour
# group (test_issue18_gate_with_colour_groups_is_rejected).
FUSED_CASES = [("A", 1, 3, 3, 8, 5, 7), ("B", 1, 3, 6, 6, 4, 5), ("B", 1, 1, 3, 12, 3, 5),
               ("B", 1, 5, 5, 4, 5, 3), ("B", 1, 3, 6, 36, 3, 4)]
COND_KINDS = ("none", "global", "local")


def fused_cases():
    """Every case in float32; bfloat16 for two of them (the interpreter is slow)."""
    return [pytest.param(*case, dtype, id=f"{case[0]}{case[1]}-k{case[2]}-{case[4]}-{str(dtype)[6:]}")
            for i, case in enumerate(FUSED_CASES) for dtype in (torch.float32, torch.bfloat16)
            if dtype == torch.float32 or i in (1, 4)]


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton backend")
@pytest.mark.parametrize("cond_kind", COND_KINDS)
@pytest.mark.parametrize("gate", ["tanh", "identity"])
@pytest.mark.parametrize(("mask_type", "groups", "k", "cin", "cout", "h", "w", "dtype"), fused_cases())
def test_fused_triton_gate_matches_reference(mask_type, groups, k, cin, cout, h, w, dtype, gate, cond_kind):
    """The Triton backend's fused gate (gmk_triton::masked_conv2d_gated) against the reference conv then
    gated_activation in float64: y and the gradients of x, weight, bias and cond."""
    n = 2
    x = torch.randn(n, cin, h, w, dtype=dtype)
    weight = (torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k / 2)).to(dtype)  # h of unit size
    bias = torch.randn(cout, dtype=dtype)
    cond = {"none": None, "global": torch.randn(n, cout, 1, 1, dtype=dtype),
            "local": torch.randn(n, cout, h, w, dtype=dtype)}[cond_kind]
    grad_y = torch.randn(n, cout // 2, h, w, dtype=dtype)

    def run_gated(backend, tensors):
        leaves = [t.detach().requires_grad_() for t in tensors if t is not None]
        x, weight, bias, *rest = leaves
        y = gmk.masked_conv2d(x, weight, bias, mask_type=mask_type, color_groups=groups, gate=gate,
                              cond=rest[0] if rest else None, backend=backend)
        return y, torch.autograd.grad(y, leaves, grad_y.to(y.dtype))

    y, grads = run_gated("triton", (x, weight, bias, cond))
    as64 = [None if t is None else t.double() for t in (x, weight, bias, cond)]
    y64, grads64 = run_gated("reference", as64)
    assert y.dtype == dtype and y.shape == (n, cout // 2, h, w)
    assert_close(y, y64, dtype)  # computed in float32, rounded once
    # grad_h, rounded to dtype, is summed by the convolution's backward (and into cond's gradient): the
    # gated activation's gradient tolerance, growing like sqrt(terms).
    cond_terms = 0 if cond is None else h * w // cond[0, 0].numel()  # a global cond sums H·W per element
    terms = (cout * k * k, n * h * w, n * h * w, cond_terms)
    for grad, grad64, terms in zip(grads, grads64, terms[:len(grads)], strict=True):
        assert grad.dtype == dtype
        assert_close(grad, grad64, dtype, "grad", terms=terms)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton backend")
@pytest.mark.parametrize("layout", [strided, expanded])
def test_issue18_item3_fused_gate_bias_of_any_strides(layout):
    """The fused gate reads bias[j] and bias[C + j] through the bias's stride."""
    x, weight, bias = torch.randn(2, 3, 5, 4), torch.randn(8, 3, 3, 3) / 4, torch.randn(8)
    cond = torch.randn(2, 8, 1, 1)
    y = gmk.masked_conv2d(x, weight, layout(bias), gate="tanh", cond=cond, backend="triton")
    y64 = gmk.masked_conv2d(x.double(), weight.double(), layout(bias.double()), gate="tanh",
                            cond=cond.double(), backend="reference")
    assert_close(y, y64, torch.float32)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton backend")
def test_triton_gate_runs_the_fused_op():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    x, weight, cond = torch.randn(2, 6, 4, 5), torch.randn(12, 6, 3, 3), torch.randn(2, 12, 1, 1)
    with Ops() as ops:
        y = gmk.masked_conv2d(x, weight, mask_type="B", gate="tanh", cond=cond, backend="triton")
    assert "gmk_triton.masked_conv2d_gated" in ops.names
    assert not ops.names & {"gmk_triton.masked_conv2d", "gmk_triton.gated"}
    assert y.shape == (2, 6, 4, 5)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton backend")
def test_fused_triton_gate_opcheck():
    x = channels_last(torch.randn(2, 6, 4, 5)).requires_grad_()
    weight, bias = torch.randn(12, 6, 3, 3, requires_grad=True), torch.randn(12, requires_grad=True)
    op = torch.ops.gmk_triton.masked_conv2d_gated
    torch.library.opcheck(op, (x, weight, bias, torch.randn(2, 12, 1, 1, requires_grad=True), "A", 1, "tanh"))
    torch.library.opcheck(op, (x.detach(), weight, None, None, "B", 1, "identity"))


# Malformed arguments to the fused op: (x, weight, bias, cond, mask_type, color_groups, activation), the
# exception, what it names.
_X, _W = torch.randn(2, 6, 5, 5), torch.randn(8, 6, 3, 3)
GATED_BAD_ARGS = {
    "gate": ((_X, _W, None, None, "B", 1, "relu"), ValueError, "gate"),
    "odd-cout": ((_X, _W[:7], None, None, "B", 1, "tanh"), ValueError, "output channels"),
    "cond-shape": ((_X, _W, None, torch.randn(2, 4, 1, 1), "B", 1, "tanh"), ValueError, "cond"),
    "cond-dtype": ((_X, _W, None, torch.randn(2, 8, 1, 1).double(), "B", 1, "tanh"), TypeError, "cond"),
    "cond-device": ((_X, _W, None, torch.empty(2, 8, 1, 1, device="meta"), "B", 1, "tanh"), ValueError,
                    "cond"),
    "mask-type": ((_X, _W, None, None, "C", 1, "tanh"), ValueError, "mask_type"),
    "groups": ((_X, _W, None, None, "B", 4, "tanh"), ValueError, "color_groups"),
}


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton backend")
@pytest.mark.parametrize(("args", "error", "pattern"), GATED_BAD_ARGS.values(), ids=GATED_BAD_ARGS.keys())
def test_fused_triton_gate_bad_args(args, error, pattern):
    cond = args[3]
    if cond is not None and cond.device != args[0].device:  # the dispatcher sends a meta cond to the fake
        call = functools.partial(masked_conv_ops.check_masked_gated, "gmk_triton::masked_conv2d_gated", *args)
    else:
        call = functools.partial(torch.ops.gmk_triton.masked_conv2d_gated, *args)
    with pytest.raises(error, match=pattern):
        call()


# --- modules --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_masked_conv_module_loads_a_conv2d_state_dict(bias):
    conv = torch.nn.Conv2d(6, 12, 5, padding=2, bias=bias)
    module = gmk.nn.MaskedConv2d(6, 12, 5, mask_type="A", bias=bias, gate="tanh")
    shapes = [{key: value.shape for key, value in m.state_dict().items()} for m in (module, conv)]
    assert shapes[0] == shapes[1]
    module.load_state_dict(conv.state_dict())
    x, cond = torch.randn(2, 6, 5, 7), torch.randn(2, 12, 1, 1)
    expected = gmk.gated_activation(reference.masked_conv2d(x, conv.weight, conv.bias, "A", 1), cond)
    torch.testing.assert_close(module(x, cond), expected)
    assert "mask_type='A'" in repr(module)


def test_shifted_conv_module_loads_a_conv2d_state_dict():
    conv = torch.nn.Conv2d(6, 4, (2, 3))
    module = gmk.nn.ShiftedConv2d(6, 4, (2, 3), shift="down")
    module.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(module(x), reference.shifted_conv2d(x, conv.weight, conv.bias, "down"))
    assert gmk.nn.ShiftedConv2d(3, 3, 2, shift="down_right").weight.shape == (3, 3, 2, 2)


def test_modules_initialise_like_conv2d():
    """kaiming_uniform(a=sqrt(5)): weights and bias uniform in ±1/sqrt(fan_in)."""
    for module in (gmk.nn.MaskedConv2d(16, 32, 5), gmk.nn.ShiftedConv2d(16, 32, (2, 3))):
        bound = 1 / math.sqrt(module.weight[0].numel())
        for parameter in (module.weight, module.bias):
            assert parameter.abs().max() <= bound and parameter.abs().max() > 0.9 * bound


# --- the C++ ops ----------------------------------------------------------------------------------

# The low-level ops' namespaces: the C++ ops, and the Triton ops where they run (in the interpreter here).
NAMESPACES = [*(["gmkernels"] if gmk.has_extension() else []), *(["gmk_triton"] if "triton" in BACKENDS else [])]


@pytest.mark.parametrize(("namespace", "layout"), [  # the Triton ops (interpreted, slow) channels_last only
    pytest.param(namespace, layout, id=f"{namespace}-{name}") for namespace in NAMESPACES
    for name, layout in (("contiguous", None), ("channels_last", channels_last))
    if namespace != "gmk_triton" or layout is not None])
def test_opcheck(namespace, layout):
    ops = getattr(torch.ops, namespace)
    x = torch.randn(2, 6, 5, 7)
    x = (x if layout is None else layout(x)).requires_grad_()
    weight, bias = torch.randn(9, 6, 3, 3, requires_grad=True), torch.randn(9, requires_grad=True)
    weight_2x3 = torch.randn(9, 6, 2, 3, requires_grad=True)
    grad_y = torch.randn(2, 9, 5, 7)
    torch.library.opcheck(ops.masked_conv2d, (x, weight, bias, "A", 3))
    torch.library.opcheck(ops.masked_conv2d, (x, weight, None, "B", 1))
    torch.library.opcheck(ops.shifted_conv2d, (x, weight_2x3, bias, "down"))
    for output_mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(ops.masked_conv2d_backward,
                              (grad_y, x.detach(), weight.detach(), "B", 3, output_mask))
        torch.library.opcheck(ops.shifted_conv2d_backward,
                              (grad_y, x.detach(), weight.detach()[:, :, :2, :2], "down_right", output_mask))


@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu") if b in gmk.available_backends()])
def test_gradcheck(backend):
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    def masked(x, weight, bias):
        return gmk.masked_conv2d(x, weight, bias, mask_type="A", color_groups=3, backend=backend)

    def shifted(x, weight, bias):
        return gmk.shifted_conv2d(x, weight[:, :, :2], bias, shift="down", backend=backend)

    assert torch.autograd.gradcheck(masked, (x, weight, bias))
    assert torch.autograd.gradcheck(shifted, (x, weight, bias))


def test_auto_picks_cpu_and_named_gpu_backends_raise():
    x, weight = torch.randn(1, 3, 4, 4), torch.randn(3, 3, 3, 3)
    if gmk.has_extension():
        assert masked_conv_ops.MASKED_CONV.select("auto", x.device, x.dtype) == "cpu"
    for backend in [name for name in ("cuda", "triton") if name not in gmk.available_backends("cpu")]:
        with pytest.raises(ValueError, match=f"backend '{backend}'"):
            gmk.masked_conv2d(x, weight, backend=backend)
        with pytest.raises(ValueError, match=f"backend '{backend}'"):
            gmk.shifted_conv2d(x, weight, backend=backend)


@pytest.mark.skipif(not gmk.has_extension(), reason="the cpu backend needs gmkernels._C")
def test_torch_compile_keeps_the_ops_in_one_graph():
    from torch._inductor.utils import run_and_get_code

    def loss(x, weight, bias):
        h = gmk.masked_conv2d(x, weight, bias, mask_type="A", color_groups=3, backend="cpu")
        return gmk.shifted_conv2d(h, weight[:, :, :2], bias, backend="cpu").square().sum()

    def loss_and_grads(function, *inputs):
        inputs = [t.detach().requires_grad_() for t in inputs]
        value = function(*inputs)
        return value, *torch.autograd.grad(value, inputs)

    inputs = (torch.randn(2, 6, 5, 5), torch.randn(6, 6, 3, 3), torch.randn(6))
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    results, code = run_and_get_code(loss_and_grads, compiled, *inputs)
    for result, expected in zip(results, loss_and_grads(loss, *inputs), strict=True):
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)
    code = "".join(code)
    assert "gmkernels.masked_conv2d_backward.default" in code and "gmkernels.shifted_conv2d.default" in code


# --- bad input ------------------------------------------------------------------------------------

def _masked(x=(2, 6, 5, 5), weight=(9, 6, 3, 3), **kwargs):
    """A call of masked_conv2d; x and weight given as shapes (random float32) or as tensors."""
    x, weight = (torch.randn(t) if isinstance(t, tuple) else t for t in (x, weight))
    return lambda: gmk.masked_conv2d(x, weight, **kwargs)


def _shifted(x=(2, 6, 5, 5), weight=(9, 6, 2, 3), **kwargs):
    x, weight = (torch.randn(t) if isinstance(t, tuple) else t for t in (x, weight))
    return lambda: gmk.shifted_conv2d(x, weight, **kwargs)


# (the call, the exception, what its message names)
BAD_INPUTS = {
    "even-k": (_masked(weight=(9, 6, 4, 4)), ValueError, "weight"),
    "not-square": (_masked(weight=(9, 6, 3, 5)), ValueError, "weight"),
    "weight-cin": (_masked(weight=(9, 5, 3, 3)), ValueError, "weight"),
    "weight-3d": (_masked(weight=(9, 6, 3)), ValueError, "weight"),
    "x-3d": (_masked(x=(6, 5, 5)), ValueError, r"\bx\b"),
    "x-integer": (_masked(x=torch.ones(2, 6, 5, 5, dtype=torch.int64)), TypeError, r"\bx\b"),
    "x-not-tensor": (_masked(x=[[1.0]]), TypeError, r"\bx\b"),
    "weight-dtype": (_masked(weight=torch.randn(9, 6, 3, 3).double()), TypeError, "weight"),
    "weight-device": (_masked(weight=torch.empty(9, 6, 3, 3, device="meta")), ValueError, "weight"),
    "bias-shape": (_masked(bias=torch.randn(8)), ValueError, "bias"),
    "bias-device": (_masked(bias=torch.empty(9, device="meta")), ValueError, "bias"),
    "groups-cin": (_masked(x=(2, 4, 5, 5), weight=(9, 4, 3, 3), color_groups=3), ValueError, "color_groups"),
    "groups-cout": (_masked(weight=(8, 6, 3, 3), color_groups=3), ValueError, "color_groups"),
    "groups-zero": (_masked(color_groups=0), ValueError, "color_groups"),
    "groups-float": (_masked(color_groups=3.0), TypeError, "color_groups"),
    "mask-type": (_masked(mask_type="C"), ValueError, "mask_type"),
    "mask-a-1x1": (_masked(weight=(9, 6, 1, 1), mask_type="A"), ValueError, "mask_type 'A'"),
    "gate": (_masked(gate="relu"), ValueError, "gate"),
    "gate-odd-cout": (_masked(gate="tanh"), ValueError, "gate"),
    "cond-without-gate": (_masked(cond=torch.randn(2, 9, 1, 1)), ValueError, "cond"),
    "cond-shape": (_masked(weight=(8, 6, 3, 3), gate="tanh", cond=torch.randn(2, 4, 1, 1)), ValueError,
                   "cond"),
    "backend": (_masked(backend="fastest"), ValueError, "backend"),
    "shift": (_shifted(shift="up"), ValueError, "shift"),
    "shift-down-even-kw": (_shifted(weight=(9, 6, 2, 2)), ValueError, "shift 'down'"),
    "shift-weight-cin": (_shifted(weight=(9, 3, 2, 3)), ValueError, "weight"),
    "conv-mask-even": (lambda: gmk.conv_mask(4, "A", 3, 3), ValueError, "kernel_size"),
    "conv-mask-groups": (lambda: gmk.conv_mask(3, "A", 4, 3, color_groups=3), ValueError, "color_groups"),
    "conv-mask-type": (lambda: gmk.conv_mask(3, "b", 3, 3), ValueError, "mask_type"),
    "module-gate": (lambda: gmk.nn.MaskedConv2d(3, 6, 3, gate="sigmoid"), ValueError, "gate"),
    "module-even-k": (lambda: gmk.nn.MaskedConv2d(3, 6, 4), ValueError, "MaskedConv2d: kernel_size"),
    "module-shift": (lambda: gmk.nn.ShiftedConv2d(3, 6, 2, shift="left"), ValueError, "shift"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _low_level(op, *args):
    return lambda namespace: getattr(getattr(torch.ops, namespace), op)(*args)


# Malformed arguments to the low-level ops (C++ and Triton), which check them too: (the call, the exception, what it names).
X, W, GRAD_Y, ALL = torch.randn(2, 6, 5, 5), torch.randn(9, 6, 3, 3), torch.randn(2, 9, 5, 5), [True] * 3
LOW_LEVEL_BAD_ARGS = {
    "even-k": (_low_level("masked_conv2d", X, W[:, :, :2, :2], None, "B", 1), ValueError, "weight"),
    "mask-type": (_low_level("masked_conv2d", X, W, None, "C", 1), ValueError, "mask_type"),
    "groups": (_low_level("masked_conv2d", X, W, None, "B", 4), ValueError, "color_groups"),
    "mask-a-1x1": (_low_level("masked_conv2d", X, W[:, :, :1, :1], None, "A", 1), ValueError,
                   "mask_type 'A'"),
    "bias-shape": (_low_level("masked_conv2d", X, W, torch.randn(3), "B", 1), ValueError, "bias"),
    "weight-dtype": (_low_level("masked_conv2d", X, W.double(), None, "B", 1), TypeError, "weight"),
    "x-integer": (_low_level("masked_conv2d", X.long(), W.long(), None, "B", 1), TypeError, r"\bx\b"),
    "x-3d": (_low_level("masked_conv2d", X[0], W, None, "B", 1), ValueError, r"\bx\b"),
    "grad-out-shape": (_low_level("masked_conv2d_backward", GRAD_Y[:, :3], X, W, "B", 1, ALL), ValueError,
                       "grad_out"),
    "grad-out-dtype": (_low_level("masked_conv2d_backward", GRAD_Y.double(), X, W, "B", 1, ALL), TypeError,
                       "grad_out"),
    "shift": (_low_level("shifted_conv2d", X, W, None, "up"), ValueError, "shift"),
    "shift-down-even-kw": (_low_level("shifted_conv2d", X, W[:, :, :, :2], None, "down"), ValueError,
                           "shift 'down'"),
    "shift-backward-weight": (_low_level("shifted_conv2d_backward", GRAD_Y, X, W[:, :3], "down", ALL),
                              ValueError, "weight"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), LOW_LEVEL_BAD_ARGS.values(),
                         ids=LOW_LEVEL_BAD_ARGS.keys())
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_low_level_bad_args_raise_naming_the_argument(namespace, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(namespace)


# --- on a GPU: the CUDA and Triton kernels on CUDA tensors ---------------------------------------

GPU_BACKENDS = ("cuda", "triton")
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Larger cases than MASKED_CASES: several position tiles (not a multiple of 128), channel counts
# that are multiples of 8 (the 16-byte loads) and not multiples of the 64-wide channel tiles.
GPU_MASKED_CASES = MASKED_CASES + [("A", 1, 7, 64, 72, 17, 19), ("B", 3, 5, 96, 120, 9, 31),
                                   ("B", 1, 3, 130, 66, 8, 8)]


def gpu_inputs(shape_x, shape_w, dtype, bias=True):
    x = torch.randn(shape_x, dtype=dtype, device="cuda")
    weight = torch.randn(shape_w, dtype=dtype, device="cuda")
    return x, weight, torch.randn(shape_w[0], dtype=dtype, device="cuda") if bias else None


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize(("mask_type", "groups", "k", "cin", "cout", "h", "w"), GPU_MASKED_CASES)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_masked_conv_matches_reference(backend, dtype, mask_type, groups, k, cin, cout, h, w, layout):
    x, weight, bias = gpu_inputs((3, cin, h, w), (cout, cin, k, k), dtype)
    check_backend(gmk.masked_conv2d, x, weight, bias, backend=backend, layout=layout, mask_type=mask_type,
                  color_groups=groups)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize(("shift", "kh", "kw", "cin", "cout", "h", "w"),
                         SHIFTED_CASES + [("down", 2, 3, 80, 160, 16, 16), ("down_right", 2, 2, 160, 80, 15, 17)])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_shifted_conv_matches_reference(backend, dtype, shift, kh, kw, cin, cout, h, w, layout):
    x, weight, bias = gpu_inputs((2, cin, h, w), (cout, cin, kh, kw), dtype)
    check_backend(gmk.shifted_conv2d, x, weight, bias, backend=backend, layout=layout, shift=shift)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_misaligned_and_bias_free(backend):
    """Inputs one element past an aligned address: the kernels must not take their 16-byte loads."""
    x, weight, _ = gpu_inputs((2, 64, 9, 11), (64, 64, 3, 3), torch.bfloat16, bias=False)
    check_backend(gmk.masked_conv2d, misaligned(channels_last(x)), misaligned(weight), None, backend=backend,
                  mask_type="B", color_groups=1)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_weight_gradient_over_many_positions(backend):
    """32k positions: the weight gradient is split over the positions and the parts summed."""
    x, weight, bias = gpu_inputs((32, 64, 32, 32), (64, 64, 5, 5), torch.float32)
    check_backend(gmk.masked_conv2d, x, weight, bias, backend=backend, mask_type="A", color_groups=1)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_tf32_when_allowed(backend):
    """With TF32 allowed (as for cuDNN), float32 runs on tensor cores: TF32's 10-bit mantissa."""
    torch.backends.cudnn.allow_tf32 = True
    x, weight, bias = gpu_inputs((4, 64, 16, 16), (128, 64, 5, 5), torch.float32)
    y = gmk.masked_conv2d(x, weight, bias, mask_type="B", backend=backend)
    expected = gmk.masked_conv2d(x.double(), weight.double(), bias.double(), mask_type="B", backend="reference")
    assert_close_sum(y.to(torch.bfloat16), expected, torch.bfloat16, 64 * 13)  # bf16 has TF32's precision


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_masked_weights_are_never_read(backend):
    x, weight, bias = gpu_inputs((2, 6, 5, 7), (9, 6, 5, 5), torch.float32)
    mask = gmk.conv_mask(5, "A", 6, 9, 3).bool().cuda()
    kwargs = {"mask_type": "A", "color_groups": 3}
    grad_y = torch.randn(2, 9, 5, 7, device="cuda")
    y, (_, grad_weight, _) = run(gmk.masked_conv2d, x, weight.masked_fill(~mask, float("nan")), bias, grad_y,
                                 backend=backend, **kwargs)
    assert y.isfinite().all() and torch.equal(grad_weight[~mask], torch.zeros_like(grad_weight[~mask]))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [None, channels_last], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("namespace", ["gmkernels", "gmk_triton"])
def test_gpu_opcheck(namespace, layout):
    ops = getattr(torch.ops, namespace)
    x, weight, bias = gpu_inputs((2, 6, 5, 7), (9, 6, 3, 3), torch.float32)
    x = x if layout is None else layout(x)
    grad_y = torch.randn(2, 9, 5, 7, device="cuda")
    torch.library.opcheck(ops.masked_conv2d, (x.requires_grad_(), weight.requires_grad_(), bias, "A", 3))
    torch.library.opcheck(ops.shifted_conv2d, (x, weight[:, :, :2].detach().requires_grad_(), bias, "down"))
    torch.library.opcheck(ops.masked_conv2d_backward, (grad_y, x.detach(), weight.detach(), "B", 3,
                                                       [True, True, True]))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_no_host_sync(backend):
    x, weight, bias = gpu_inputs((2, 16, 8, 8), (32, 16, 3, 3), torch.bfloat16)
    weight_2x3 = torch.randn(8, 32, 2, 3, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = gmk.masked_conv2d(*leaves, mask_type="A", color_groups=1, backend=backend)
        y = gmk.shifted_conv2d(y, weight_2x3, None, shift="down", backend=backend)
        y.float().square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("cond_kind", ["none", "global", "local"])
@pytest.mark.parametrize("gate", ["tanh", "identity"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_gate_matches_reference(backend, gate, cond_kind):
    """The fused gate (Triton) and conv-then-gate (CUDA) against the float64 reference."""
    x, weight, bias = gpu_inputs((2, 48, 9, 13), (96, 48, 5, 5), torch.float32)
    cond = {"none": None, "global": torch.randn(2, 96, 1, 1, device="cuda"),
            "local": torch.randn(2, 96, 9, 13, device="cuda")}[cond_kind]
    grad_y = torch.randn(2, 48, 9, 13, device="cuda")

    def forward_backward(*tensors, **kwargs):
        leaves = [t.detach().requires_grad_() for t in tensors if t is not None]
        it = iter(leaves)
        args = [None if t is None else next(it) for t in tensors]
        y = gmk.masked_conv2d(*args[:3], mask_type="A", gate=gate, cond=args[3], **kwargs)
        return y, torch.autograd.grad(y, leaves, grad_y.to(y.dtype))

    y, grads = forward_backward(x, weight, bias, cond, backend=backend)
    y64, grads64 = forward_backward(*(None if t is None else t.double() for t in (x, weight, bias, cond)),
                                    backend="reference")
    assert_close_sum(y, y64, torch.float32, 48 * 12)
    for grad, grad64 in zip(grads, grads64, strict=True):
        assert_close_sum(grad, grad64, torch.float32, 2 * 9 * 13 * 96)


def test_issue18_gate_with_colour_groups_is_rejected():
    """The fused gate pairs channels j and j + C: with colour groups they lie in different groups, and an R
    output would see the pixel's own G input (found by the PixelCNN models' enumerated probabilities)."""
    x, weight = torch.randn(1, 3, 4, 4), torch.randn(12, 3, 3, 3)
    with pytest.raises(ValueError, match="gate needs color_groups=1"):
        gmk.masked_conv2d(x, weight, mask_type="A", color_groups=3, gate="tanh")
    with pytest.raises(ValueError, match="MaskedConv2d: gate needs color_groups=1"):
        gmk.nn.MaskedConv2d(3, 12, 3, mask_type="A", color_groups=3, gate="tanh")
    if "triton" in BACKENDS:
        with pytest.raises(ValueError, match="gate needs color_groups=1"):
            torch.ops.gmk_triton.masked_conv2d_gated(x, weight, None, None, "A", 3, "tanh")
