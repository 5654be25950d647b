"""gmk.upfirdn2d and its helpers: the reference against a direct sum, every backend against the float64
reference (forward and gradients of every order), the helpers' and modules' meanings, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

import gmkernels as gmk
import gmkernels.ops.upfirdn2d as ops
import gmkernels.reference.upfirdn2d as reference
from conftest import assert_close_sum, backends_under_test, noncontiguous, supported_dtypes

BACKENDS = [name for name in backends_under_test("cpu") if name in ops.UPFIRDN2D.backends.dtypes]
FLOAT64_BACKENDS = [name for name in BACKENDS if torch.float64 in supported_dtypes(name)]
TAPS_4 = [1.0, 3.0, 3.0, 1.0]
TAPS_12 = [0.1, -0.4, 0.7, 1.3, 2.0, 2.9, 2.9, 2.0, 1.3, 0.7, -0.4, 0.1]


def direct(x, f, up, down, padding, flip_filter=False, gain=1.0):
    """out[oy, ox] = gain Σ_{j,k} w[j, k] U(oy·down_y + j − pad_y0, ox·down_x + k − pad_x0), U the
    zero-stuffed image, w the flipped filter (unflipped with flip_filter): the definition, term by term."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    f2 = torch.outer(f, f) if f.dim() == 1 else f
    w = f2 if flip_filter else f2.flip([0, 1])
    fh, fw = w.shape
    n, c, h, wd = x.shape
    oh, ow = (h * upy + py0 + py1 - fh) // downy + 1, (wd * upx + px0 + px1 - fw) // downx + 1
    stuffed = torch.zeros(n, c, h * upy, wd * upx, dtype=x.dtype)
    stuffed[:, :, ::upy, ::upx] = x
    out = torch.zeros(n, c, oh, ow, dtype=x.dtype)
    for oy in range(oh):
        for ox in range(ow):
            for j in range(fh):
                for k in range(fw):
                    r, s = oy * downy + j - py0, ox * downx + k - px0
                    if 0 <= r < h * upy and 0 <= s < wd * upx:
                        out[:, :, oy, ox] += w[j, k] * stuffed[:, :, r, s]
    return gain * out


CONFIGS = [  # (up, down, padding, taps)
    ((1, 1), (1, 1), (0, 0, 0, 0), TAPS_4), ((2, 2), (1, 1), (2, 1, 2, 1), TAPS_4),
    ((1, 1), (2, 2), (1, 1, 1, 1), TAPS_4), ((4, 4), (1, 1), (3, 2, 5, 4), TAPS_12),
    ((1, 1), (4, 4), (4, 4, 4, 4), TAPS_12), ((2, 1), (1, 2), (-1, 3, 2, -2), TAPS_4),
    ((2, 2), (2, 2), (1, 2, 0, 3), TAPS_12), ((1, 1), (1, 1), (-2, 0, 1, -1), [2.0]),
]


@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize(("up", "down", "padding", "taps"), CONFIGS)
def test_reference_is_the_definition(up, down, padding, taps, separable):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    taps = torch.tensor(taps, dtype=torch.float64)
    f = taps if separable else torch.outer(taps, taps)
    for flip, gain in ((False, 1.0), (True, 2.5)):
        expected = direct(x, taps if separable else f, up, down, padding, flip, gain)
        torch.testing.assert_close(reference.upfirdn2d(x, f, up, down, padding, flip, gain), expected)


def test_asymmetric_filter_is_convolved_not_correlated():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 1  # an impulse: the output is the filter itself under convolution
    f = torch.arange(9, dtype=torch.float64).reshape(3, 3)
    torch.testing.assert_close(gmk.filter2d(x, f)[0, 0, 1:4, 1:4], f)
    torch.testing.assert_close(gmk.filter2d(x, f, flip_filter=True)[0, 0, 1:4, 1:4], f.flip([0, 1]))


# --- every backend against the float64 reference ------------------------------------------------------

def grad_output(y):
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(y.device, y.dtype)


def check_backend(x, f, backend, layout=None, **kwargs):
    stored = x if layout is None else layout(x)
    leaf = stored.detach().requires_grad_()
    y = gmk.upfirdn2d(leaf, f, backend=backend, **kwargs)
    grad_y = grad_output(y)  # the gradient's layout follows grad_y's, as the output's follows x's
    grad, = torch.autograd.grad(y, leaf, grad_y if layout is None else layout(grad_y))
    leaf64 = x.double().requires_grad_()
    y64 = gmk.upfirdn2d(leaf64, f.double(), backend="reference", **kwargs)
    grad64, = torch.autograd.grad(y64, leaf64, grad_output(y64).to(y.dtype).double())
    assert (y.dtype, y.shape) == (x.dtype, y64.shape)
    taps = f.numel() if f.dim() == 2 else f.numel() ** 2
    roundings = 2 if f.dim() == 1 else 1  # the separable passes round in between
    assert_close_sum(y, y64, x.dtype, taps, roundings)
    assert_close_sum(grad, grad64, x.dtype, taps, roundings)
    if layout is channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last) and grad.is_contiguous(
            memory_format=torch.channels_last)
    return y


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


FILTERS = {"4x4": gmk.setup_filter(TAPS_4), "12-separable": gmk.setup_filter(TAPS_12),
           "3x5-asymmetric": torch.randn(3, 5), "1x1": torch.tensor([[1.7]])}


@pytest.mark.parametrize("f", FILTERS.values(), ids=FILTERS.keys())
@pytest.mark.parametrize(("up", "down", "padding", "taps"), CONFIGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference(backend, up, down, padding, taps, f):
    # the configuration's padding on top of the filter's full reach (fw - 1, fh - 1 on each side)
    fh, fw = (f.shape[0], f.shape[0]) if f.dim() == 1 else f.shape
    pads = (padding[0] + fw - 1, padding[1] + fw - 1, padding[2] + fh - 1, padding[3] + fh - 1)
    check_backend(torch.randn(2, 3, 7, 5), f, backend, up=up, down=down, padding=pads, gain=1.3)
    check_backend(torch.randn(1, 2, 6, 9), f, backend, up=up, down=down, padding=pads, flip_filter=True)


@pytest.mark.parametrize("layout", [channels_last, noncontiguous])
@pytest.mark.parametrize(("up", "down"), [(1, 1), (2, 1), (1, 2), (4, 1), (1, 4)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend, up, down, layout):
    f = FILTERS["4x4"] if up * down < 4 else FILTERS["12-separable"]
    check_backend(torch.randn(2, 5, 9, 11), f, backend, layout=layout, up=up, down=down,
                  padding=resampling_padding(f.shape[-1], up, down))


@pytest.mark.parametrize(("up", "down", "padding"), [(1, 1, (1, 2, 2, 1)), (2, 1, (2, 1, 3, 0)),
                                                     ((1, 2), (3, 2), (0, 1, 4, 2)), ((3, 1), (1, 1), -1)])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpu"])
def test_wide_images_in_row_strips(backend, up, down, padding):
    """A wide image (3001 columns): the CPU planar kernel splits each plane into strips of a few output rows
    (its buffers sized for the cache; never a whole plane), the last one partial; every strip boundary and
    the rows a tap reads across it match the reference."""
    f = FILTERS["3x5-asymmetric"]
    check_backend(torch.randn(1, 2, 37, 3001), f, backend, up=up, down=down, padding=padding, gain=1.1)
    check_backend(torch.randn(2, 1, 23, 2003), FILTERS["12-separable"], backend, up=up, down=down, padding=padding)


def resampling_padding(taps: int, up: int, down: int) -> tuple[int, int, int, int]:
    """upsample2d's / downsample2d's padding (output up × or 1/down × the input's size)."""
    pad0, pad1 = ((taps + up - 1) // 2, (taps - up) // 2) if up > 1 else ((taps - down + 1) // 2, (taps - down) // 2)
    return pad0, pad1, pad0, pad1


@pytest.mark.parametrize("f", [FILTERS["4x4"], FILTERS["12-separable"]], ids=["4x4", "12-separable"])
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)])
def test_dtypes(backend, dtype, f):
    x = torch.randn(2, 3, 8, 7).to(dtype)
    check_backend(x, f, backend, up=2, padding=resampling_padding(f.shape[-1], 2, 1))
    check_backend(x, f, backend, down=2, padding=resampling_padding(f.shape[-1], 1, 2))


@pytest.mark.parametrize("backend", ["reference", *FLOAT64_BACKENDS])
def test_gradcheck_and_gradgradcheck(backend):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    for f, up, down, padding in ((torch.randn(3, 2, dtype=torch.float64), (2, 1), (1, 2), (1, 2, 0, 1)),
                                 (torch.randn(4, dtype=torch.float64), 1, 2, 1)):
        function = lambda x: gmk.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=0.7,  # noqa: E731
                                            backend=backend)
        assert torch.autograd.gradcheck(function, (x,))
        assert torch.autograd.gradgradcheck(function, (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_third_derivative_matches_reference(backend):
    """Float64 where the backend has it, else float32 against the float64 reference."""
    dtype = torch.float64 if backend in FLOAT64_BACKENDS else torch.float32
    f = gmk.setup_filter(TAPS_4)
    x = torch.randn(1, 2, 6, 5, dtype=dtype)
    results = []
    for name in ("reference", backend):
        leaf = x.clone().to(torch.float64 if name == "reference" else dtype).requires_grad_()
        y = gmk.upsample2d(leaf, f, backend=name)
        g, = torch.autograd.grad((y ** 3).sum(), leaf, create_graph=True)
        g2, = torch.autograd.grad((g ** 2).sum(), leaf, create_graph=True)
        g3, = torch.autograd.grad((g2 ** 2).sum(), leaf)
        results.append((g, g2, g3))
    for got, expected in zip(*reversed(results)):
        assert_close_sum(got, expected, dtype, f.numel() ** 3)


# --- helpers and modules -------------------------------------------------------------------------------

def test_setup_filter():
    f = gmk.setup_filter(TAPS_4)
    torch.testing.assert_close(f, torch.outer(torch.tensor(TAPS_4), torch.tensor(TAPS_4)) / 64)
    assert f.dtype == torch.float32
    assert gmk.setup_filter(TAPS_12).shape == (12,)  # 8 taps or more: separable
    assert gmk.setup_filter(TAPS_12, separable=False).shape == (12, 12)
    torch.testing.assert_close(gmk.setup_filter(TAPS_12).sum(), torch.tensor(1.0))
    torch.testing.assert_close(gmk.setup_filter([1, 2], normalize=False, gain=4), torch.tensor([[4.0, 8], [8, 16]]))
    torch.testing.assert_close(gmk.setup_filter([1.0, 2.0, 5.0], flip_filter=True, normalize=False,
                                                separable=True), torch.tensor([5.0, 2, 1]))
    torch.testing.assert_close(gmk.setup_filter(None), torch.ones(1, 1))
    # a scalar is one tap, made 2-D by its outer product (the original's rule)
    torch.testing.assert_close(gmk.setup_filter(3.0, normalize=False), torch.full((1, 1), 9.0))


@pytest.mark.parametrize(("taps", "kwargs", "pattern"), [
    ([1.0, float("nan")], {}, r"f must be finite"),
    ([[1.0, float("inf")]], {"normalize": False}, r"f must be finite"),
    ([1.0, -1.0], {}, r"normalize=True divides by the taps' sum"),
    ([1.0, 2.0], {"normalize": False, "gain": 1e38}, r"scaled by gain"),
])
def test_setup_filter_refuses_nonfinite_taps(taps, kwargs, pattern):
    """A filter is made once: a NaN/inf tap (or one made by normalising taps that sum to 0) is refused there
    (nn.Downsample2d(taps=[1, nan]) reached the kernels, whose gradients then differed; fuzz campaign)."""
    with pytest.raises(ValueError, match=pattern):
        gmk.setup_filter(taps, **kwargs)
    for module in (gmk.nn.Upsample2d, gmk.nn.Downsample2d, gmk.nn.Blur):
        if not kwargs:
            with pytest.raises(ValueError, match=rf"{module.__name__}: taps: .*{pattern}"):
                module(taps)


@pytest.mark.parametrize("backend", ["reference", "auto"])  # the helpers' padding rules; backends: above
def test_resampling_helpers_keep_sizes_and_dc(backend):
    x = torch.full((2, 3, 24, 20), 0.5)
    for f in (gmk.setup_filter(TAPS_4), gmk.setup_filter(TAPS_12)):
        taps = f.shape[-1]
        results = {"up": gmk.upsample2d(x, f, backend=backend), "down": gmk.downsample2d(x, f, backend=backend),
                   "same": gmk.filter2d(x, f, backend=backend)}
        assert [tuple(y.shape) for y in results.values()] == [(2, 3, 48, 40), (2, 3, 12, 10), (2, 3, 24, 20)]
        borders = {"up": taps, "down": taps // 4 + 1, "same": taps // 2 + 1}  # the filter's reach in outputs
        for kind, y in results.items():  # a normalised filter keeps a constant image away from the borders
            border = borders[kind]
            inside = y[:, :, border:-border, border:-border]
            assert_close_sum(inside, torch.full_like(inside, 0.5), torch.float32, f.numel(), 2)
    assert gmk.upsample2d(x, None, up=(2, 3)).shape == (2, 3, 72, 40)  # (x, y) factors
    assert gmk.downsample2d(x, None, down=(3, 2), padding=1).shape == (2, 3, 13, 7)
    assert gmk.filter2d(x, FILTERS["3x5-asymmetric"], padding=(1, 0)).shape == (2, 3, 24, 22)


def test_modules_match_functions_and_rosinality():
    x = torch.randn(2, 3, 8, 8)
    f = gmk.setup_filter(TAPS_4)
    torch.testing.assert_close(gmk.nn.Upsample2d()(x), gmk.upsample2d(x, f))
    torch.testing.assert_close(gmk.nn.Downsample2d(factor=2)(x), gmk.downsample2d(x, f))
    # rosinality's Upsample(kernel, factor=2): upfirdn2d(x, make_kernel(k) * 4, up=2, pad=(2, 1))
    torch.testing.assert_close(gmk.nn.Upsample2d()(x), gmk.upfirdn2d(x, f * 4, up=2, padding=(2, 1, 2, 1)))
    # rosinality's Blur(kernel, pad=(2, 1), upsample_factor=2)
    blur = gmk.nn.Blur(TAPS_4, padding=(2, 1, 2, 1), upsample_factor=2)
    torch.testing.assert_close(blur(x), reference.upfirdn2d(x, f * 4, (1, 1), (1, 1), (2, 1, 2, 1)))
    assert "factor=2" in repr(gmk.nn.Upsample2d()) and "padding" in repr(blur)
    assert gmk.nn.Upsample2d().filter.requires_grad is False


# --- bad input -----------------------------------------------------------------------------------------

F4 = gmk.setup_filter(TAPS_4)
BAD_INPUTS = {
    "filter-rank-3": (dict(f=torch.ones(2, 2, 2)), ValueError, r"\bf\b"),
    "filter-empty": (dict(f=torch.ones(0)), ValueError, r"\bf\b"),
    "filter-integer": (dict(f=torch.ones(2, 2, dtype=torch.int64)), TypeError, r"\bf\b"),
    "filter-requires-grad": (dict(f=torch.ones(2, 2, requires_grad=True)), ValueError, r"\bf\b"),
    "filter-device": (dict(f=torch.ones(2, 2, device="meta")), ValueError, r"\bf\b"),
    "padding-empties-output": (dict(f=F4, padding=-3), ValueError, "padding"),
    "padding-three": (dict(f=F4, padding=(1, 2, 3)), ValueError, "padding"),
    "padding-float": (dict(f=F4, padding=1.5), ValueError, "padding"),
    "up-zero": (dict(f=F4, up=0), ValueError, r"\bup\b"),
    "down-bool": (dict(f=F4, down=True), ValueError, r"\bdown\b"),
    "down-triple": (dict(f=F4, down=(1, 2, 3)), ValueError, r"\bdown\b"),
    "flip-not-bool": (dict(f=F4, flip_filter=1), TypeError, "flip_filter"),
    "gain-nan": (dict(f=F4, gain=float("nan")), ValueError, "gain"),
    "negative-gain-separable": (dict(f=torch.ones(9), gain=-1.0), ValueError, "gain"),
    "backend": (dict(f=F4, backend="fast"), ValueError, "backend"),
}


@pytest.mark.parametrize(("kwargs", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        gmk.upfirdn2d(torch.randn(2, 3, 5, 5), **kwargs)


@pytest.mark.parametrize(("x", "pattern"), [(torch.randn(3, 5, 5), r"\bx\b"), ([1.0], r"\bx\b"),
                                            (torch.ones(1, 1, 4, 4, dtype=torch.int32), r"\bx\b")])
def test_bad_x(x, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        gmk.upfirdn2d(x, F4)


def test_setup_filter_rejects_rank_3():
    with pytest.raises(ValueError, match=r"\bf\b"):
        gmk.setup_filter(torch.ones(2, 2, 2))


def test_modules_reject_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        gmk.nn.Upsample2d(factor=0)
    with pytest.raises(ValueError, match="padding"):
        gmk.nn.Blur(padding=(1, 2, 3))
    with pytest.raises(ValueError, match="input"):
        gmk.nn.Downsample2d()(torch.randn(3, 8, 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_narrower_than_the_factors(backend):
    """Images of one or two pixels under down 4 / up 4: the phases past the image hold only padding."""
    for height, width in ((1, 1), (1, 2), (2, 1), (3, 2)):
        x = noncontiguous(torch.randn(2, 3, height, width))
        check_backend(x, FILTERS["4x4"], backend, down=(4, 3), padding=(3, 2, 2, 3))
        check_backend(x, FILTERS["3x5-asymmetric"], backend, up=(4, 2), down=(1, 3), padding=(4, 1, 2, 0))


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_empty_batch(backend):
    assert gmk.upsample2d(torch.randn(0, 3, 4, 4), F4, backend=backend).shape == (0, 3, 8, 8)


# --- the low-level op ----------------------------------------------------------------------------------

LOW_LEVEL_OPS = [pytest.param(namespace, id=namespace) for namespace, backend in
                 (("gmkernels", "cpu"), ("gmk_triton", "triton")) if backend in BACKENDS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [None, channels_last])
@pytest.mark.parametrize(("up", "down", "padding"), [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 2), (2, 1), (1, 0, 2, 3))])
@pytest.mark.parametrize("namespace", LOW_LEVEL_OPS)
def test_opcheck(namespace, up, down, padding, layout, dtype):
    x = torch.randn(2, 3, 6, 5, dtype=dtype)
    x = x if layout is None else layout(x)
    torch.library.opcheck(getattr(torch.ops, namespace).upfirdn2d,
                          (x.requires_grad_(), F4, list(up), list(down), list(padding), False, 1.5))


# Bad input in the op's form (x, f, up, down, padding, flip_filter, gain), bad for the public function too:
# every entry point raises the same exception type naming the argument (tests/test_bad_inputs.py's pattern).
OP_BAD_ARGS = {
    "x-3d": (lambda x: (x[0], F4, [1, 1], [1, 1], [0] * 4, False, 1.0), ValueError, "x"),
    "x-integer": (lambda x: (x.long(), F4, [1, 1], [1, 1], [0] * 4, False, 1.0), TypeError, "x"),
    "f-3d": (lambda x: (x, F4[None], [1, 1], [1, 1], [0] * 4, False, 1.0), ValueError, "f"),
    "f-integer": (lambda x: (x, F4.long(), [1, 1], [1, 1], [0] * 4, False, 1.0), TypeError, "f"),
    "up-zero": (lambda x: (x, F4, [0, 1], [1, 1], [0] * 4, False, 1.0), ValueError, "up"),
    "down-zero": (lambda x: (x, F4, [1, 1], [1, 0], [0] * 4, False, 1.0), ValueError, "down"),
    "padding-empties": (lambda x: (x, F4, [1, 1], [1, 1], [-2] * 4, False, 1.0), ValueError, "padding"),
    "gain-nan": (lambda x: (x, F4, [1, 1], [1, 1], [0] * 4, False, float("nan")), ValueError, "gain"),
}


def _public_upfirdn2d(x, f, up, down, padding, flip_filter, gain):
    return gmk.upfirdn2d(x, f, up=tuple(up), down=tuple(down), padding=tuple(padding), flip_filter=flip_filter,
                         gain=gain)


@pytest.mark.parametrize(("make_args", "error", "name"), OP_BAD_ARGS.values(), ids=OP_BAD_ARGS.keys())
def test_every_entry_point_rejects_bad_input_naming_it(make_args, error, name):
    args = make_args(torch.randn(2, 3, 5, 5))
    for function in [_public_upfirdn2d] + [getattr(torch.ops, p.values[0]).upfirdn2d for p in LOW_LEVEL_OPS]:
        with pytest.raises(error, match=rf"\b{name}\b"):
            function(*args)


@pytest.mark.skipif(not gmk.has_extension(), reason="the cpu backend needs gmkernels._C")
def test_torch_compile_keeps_the_op_in_one_graph():
    """fullgraph=True fails on any graph break; the generated code calls the C++ op, forward and backward."""
    from torch._inductor.utils import run_and_get_code

    def loss(x):
        return gmk.upsample2d(x, F4, backend="cpu").square().sum()

    def loss_and_grad(function, x):
        x = x.detach().requires_grad_()
        value = function(x)
        return value, *torch.autograd.grad(value, x)

    x = torch.randn(2, 3, 5, 4)
    torch._dynamo.reset()
    results, code = run_and_get_code(loss_and_grad, torch.compile(loss, fullgraph=True), x)
    for result, expected in zip(results, loss_and_grad(loss, x), strict=True):
        assert_close_sum(result, expected, torch.float32, 64)
    assert "".join(code).count("gmkernels.upfirdn2d.default") >= 2


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [None, channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backends_match_reference(backend, dtype, layout):
    assert backend in gmk.available_backends("cuda")
    for f in (FILTERS["4x4"], FILTERS["12-separable"]):
        f = f.cuda()
        for up, down in ((2, 1), (1, 2), (4, 1), (1, 4)):
            padding = resampling_padding(f.shape[-1], up, down)
            x = torch.randn(4, 33, 17, 9, device="cuda", dtype=dtype)
            check_backend(x, f, backend, layout=layout, up=up, down=down, padding=padding)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_never_written(backend):
    """Forward, backward and double backward on expanded and transposed views leave them as they were."""
    x = torch.randn(1, 3, 1, 6).expand(2, 3, 5, 6).transpose(2, 3)
    f = torch.randn(3, 4).t()
    grad_y = torch.randn(2, 1, 12, 11).expand(2, 3, 12, 11)
    before = [t.clone() for t in (x, f, grad_y)]
    leaf = x.detach().requires_grad_()
    y = gmk.upfirdn2d(leaf, f, up=2, padding=(1, 2, 2, 1), backend=backend)
    assert y.shape == grad_y.shape
    grad_leaf = grad_y.detach().requires_grad_()  # the gradient is linear in grad_y, constant in x
    grad, = torch.autograd.grad(y, leaf, grad_leaf, create_graph=True)
    torch.autograd.grad(grad.square().sum(), grad_leaf)
    assert_close_sum(y, gmk.upfirdn2d(x.double(), f.double(), up=2, padding=(1, 2, 2, 1), backend="reference"),
                     torch.float32, f.numel())
    for t, copy in zip((x, f, grad_y), before):
        assert torch.equal(t, copy)


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend needs gmkernels._C")
@pytest.mark.parametrize("layout", [None, channels_last])
def test_cpu_splits_large_tensors_across_threads(two_threads, layout):
    """Planes (NCHW) and rows (channels_last) split across threads: the same results."""
    x = torch.randn(4, 64, 33, 35)
    for up, down in ((2, 1), (1, 2)):
        check_backend(x, FILTERS["4x4"], "cpu", layout=layout, up=up, down=down,
                      padding=resampling_padding(4, up, down))


def test_the_benchmark_cases_run_on_cpu():
    """benchmarks/ops/gan.py (bias_act, R1, upfirdn2d): every case's gmk and eager peers run on CPU."""
    harness = pytest.importorskip("gmkernels.benchmarks.harness")
    bench = pytest.importorskip("gmkernels.benchmarks.ops.gan")
    assert "gan" in harness.family_names()
    for case in bench.cases("cpu", quick=True):
        case.peers = {name: peer for name, peer in case.peers.items() if name != harness.COMPILED}
        result = harness.run_case(case, "cpu", repeats=1, copy_gbps=1.0)
        by_peer = {peer["peer"]: peer for peer in result["results"]}
        assert by_peer[harness.EAGER]["status"] == "ok", case.name
        if "cpu" in BACKENDS:
            assert by_peer["gmk:cpu"]["status"] == "ok", case.name
