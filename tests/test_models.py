"""gmk.models' image models (PixelCNN, Gated PixelCNN, PixelCNN++): exact tests by enumerating every image
of a tiny case (probabilities sum to one, sample frequencies match them), causality on every backend, the
model contract (shapes, loss, sampling, conditioning, bad input), the reference twin, gradients, Triton
under the interpreter, the registry and the benchmark family."""
import itertools
import math

import pytest
import torch

import gmkernels as gmk
from conftest import backends_under_test
from gmkernels.models import (MODELS, GatedPixelCNNConfig, PixelCNNConfig, PixelCNNppConfig, WaveNet,
                              WaveNetConfig)
from gmkernels.models._autoregressive import scale_bins

IMAGE_MODELS = ("pixelcnn", "gated_pixelcnn", "pixelcnnpp")


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny ops: one thread avoids OpenMP's oversubscription stalls on a shared machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_model(name, in_channels=3, num_bins=4, num_classes=0, dtype=torch.float64, scale=1.0):
    """The model's "tiny" config for this data; ``scale`` multiplies every parameter (sharper
    distributions, so that a wrong probability shows)."""
    cls = MODELS[name]
    model = cls(cls.config_class.for_data(in_channels, num_bins, 4, num_classes, size="tiny")).to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


def every_image(channels, num_bins, height, width):
    """All num_bins^(C·H·W) images (M, C, H, W), int64, in raster order of their sub-pixels' values."""
    values = torch.tensor(list(itertools.product(range(num_bins), repeat=channels * height * width)))
    return values.view(-1, height, width, channels).permute(0, 3, 1, 2).contiguous()


def image_index(x, num_bins):
    """Each image's row in every_image(...)."""
    digits = x.permute(0, 2, 3, 1).flatten(1)
    weights = num_bins ** torch.arange(digits.shape[1] - 1, -1, -1)
    return (digits * weights).sum(dim=1)


# (channels, bins, H = W, classes): 4096 images each; RGB exercises the colour groups / the coupling.
ENUMERATED = {"rgb-2bins": (3, 2, 2, 0), "grey-8bins-conditional": (1, 8, 2, 3)}


# --- exact: enumeration -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ENUMERATED)
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_probabilities_of_every_image_sum_to_one(name, case):
    channels, num_bins, size, num_classes = ENUMERATED[case]
    model = tiny_model(name, channels, num_bins, num_classes, scale=2.0).eval()
    images = every_image(channels, num_bins, size, size)
    for label in range(max(num_classes, 1)):
        y = torch.full((len(images),), label) if num_classes else None
        with gmk.use_backend("reference"):
            log_p = model.log_prob(images, y)
        total = torch.logsumexp(log_p, dim=0)
        assert abs(total.item()) < 1e-10, f"class {label}: log sum p = {total.item()}"
        assert log_p.max() - log_p.min() > 1  # not uniform: the test could see a wrong mass


def chi_square_bound(dof, z=4.5):
    """Wilson-Hilferty: the chi-square quantile with ``dof`` degrees of freedom at the normal's z
    (z = 4.5: 1 - 3e-6)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_sample_frequencies_match_the_probabilities(name):
    """Pearson's chi-square of 40000 samples against the enumerated probabilities (cells with an expected
    count below 5 pooled), at a fixed seed."""
    channels, num_bins, size, _ = ENUMERATED["rgb-2bins"]
    model = tiny_model(name, channels, num_bins, scale=2.0)
    images = every_image(channels, num_bins, size, size)
    with gmk.use_backend("reference"):
        probs = model.eval().log_prob(images).exp()
    n = 40000
    # The reference backend is the fastest here on 2x2 images; the twin test covers the others.
    with gmk.use_backend("reference"):
        samples = model.sample(n, image_size=size, generator=torch.Generator().manual_seed(7))
    counts = torch.bincount(image_index(samples, num_bins), minlength=len(images)).double()
    expected = n * probs
    rare = expected < 5
    observed = torch.cat([counts[~rare], counts[rare].sum()[None]])
    expected = torch.cat([expected[~rare], expected[rare].sum()[None]])
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < chi_square_bound(len(observed) - 1), f"chi2 = {chi2:.1f} over {len(observed)} cells"


# --- causality -------------------------------------------------------------------------------------------

def allowed_inputs(name, channels, height, width, c, i, j):
    """The input sub-pixels (C, H, W) that output (c, i, j) may see: earlier pixels, and for a softmax
    head the earlier sub-pixels of its own pixel (a mixture's parameters see none of their pixel's)."""
    earlier = torch.zeros(height, width, dtype=torch.bool)
    earlier.view(-1)[:i * width + j] = True
    allowed = earlier.expand(channels, height, width).clone()
    if name != "pixelcnnpp":
        allowed[:c, i, j] = True
    return allowed


def dependencies(model, name, inputs, y=None):
    """For every output sub-pixel (c, i, j) (every pixel for the mixture), which input sub-pixels its
    output's gradient reaches for any of the images ``inputs`` (N, C, H, W) (several: a ReLU that is off
    for one image hides a path): a dict (c, i, j) -> bool (C, H, W)."""
    inputs = inputs.clone().requires_grad_(True)
    output = model.network(inputs, y)
    channels, height, width = inputs.shape[1:]
    per_channel = output.unflatten(1, (channels, -1)) if name != "pixelcnnpp" else output[:, None]
    found = {}
    for c, i, j in itertools.product(range(per_channel.shape[1]), range(height), range(width)):
        grad, = torch.autograd.grad(per_channel[:, c, :, i, j].sum(), inputs, retain_graph=True)
        found[c, i, j] = (grad != 0).any(dim=0)
    return found


@pytest.mark.parametrize("backend", ["reference", *(b for b in backends_under_test("cpu") if b != "triton")])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_no_output_sees_a_later_sub_pixel(name, backend):
    """The gradient of each output with respect to every later input sub-pixel is exactly zero; Gated
    PixelCNN and PixelCNN++ (no blind spot) see every earlier one (a 3×3 image is within their tiny
    configs' reach), PixelCNN at least its neighbours on the left and above. (Triton, too slow under the
    interpreter for a backward pass per output, is checked by the next test.)"""
    channels, size = 3, 3
    model = tiny_model(name, channels, num_classes=2).eval()
    inputs = torch.rand(4, channels, size, size, dtype=torch.float64) * 2 - 1
    with gmk.use_backend(backend):
        found = dependencies(model, name, inputs, torch.tensor([1, 0, 1, 1]))
    for (c, i, j), seen in found.items():
        allowed = allowed_inputs(name, channels, size, size, c, i, j)
        assert not (seen & ~allowed).any(), f"output {(c, i, j)} sees later sub-pixels {seen & ~allowed}"
        if name != "pixelcnn":
            assert seen[allowed].all(), f"output {(c, i, j)} misses earlier sub-pixels {allowed & ~seen}"
        elif j > 0:
            assert seen[:, i, j - 1].all() and (i == 0 or seen[:, i - 1, j].all())


@pytest.mark.parametrize("backend", ["reference", *backends_under_test("cpu")])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_changing_the_last_pixel_changes_no_earlier_output(name, backend):
    """Integer images: the network's outputs at the pixels before the last are bit for bit the same when
    the last pixel changes; they change when the first pixel does."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    model = tiny_model(name, 3, 4, dtype=dtype).eval()
    x = torch.randint(0, 4, (2, 3, 3, 3))
    later, first = x.clone(), x.clone()
    later[:, :, 2, 2] = (x[:, :, 2, 2] + 1) % 4
    first[:, :, 0, 0] = (x[:, :, 0, 0] + 1) % 4

    def earlier_outputs(image):  # every pixel's output but the last's, in raster order
        with gmk.use_backend(backend):
            output = model.network(scale_bins(image, 4, dtype), None)
        return output.flatten(2)[:, :, :-1]

    assert torch.equal(earlier_outputs(x), earlier_outputs(later))
    assert not torch.equal(earlier_outputs(x), earlier_outputs(first))


# --- the contract ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_log_prob_and_sample_shapes(name):
    model = tiny_model(name, 3, 5, num_classes=2, dtype=torch.float32)
    x = torch.randint(0, 5, (4, 3, 5, 6), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1, 0])
    out = model(x, y)
    assert out["loss"].shape == () and out["loss"].dtype == torch.float32 and out["loss"].requires_grad
    assert not out["bits_per_dim"].requires_grad
    torch.testing.assert_close(out["bits_per_dim"], out["loss"].detach() / math.log(2))
    log_p = model.log_prob(x, y)
    assert log_p.shape == (4,) and log_p.dtype == torch.float32
    model.eval()  # no dropout: the two calls compute the same
    torch.testing.assert_close(model(x.long(), y)["loss"], (-model.log_prob(x, y)).mean() / (3 * 5 * 6))
    sample = model.sample(3, y=y[:3], generator=torch.Generator().manual_seed(0))
    assert sample.shape == (3, 3, 4, 4) and sample.dtype == torch.int64
    assert sample.min() >= 0 and sample.max() < 5
    assert model.sample(2, image_size=3, y=y[:2]).shape == (2, 3, 3, 3)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_sample_is_reproducible_with_a_generator_and_temperature_sharpens(name):
    model = tiny_model(name, 3, 6, dtype=torch.float32).train()

    def draw(seed, temperature=1.0):
        generator = torch.Generator().manual_seed(seed)
        return model.sample(8, image_size=3, temperature=temperature, generator=generator)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    assert model.training  # restored after sampling in eval mode
    # Near zero temperature every step takes the mode (the mixture: the likeliest component's mean).
    assert torch.equal(draw(1, 1e-4), draw(2, 1e-4))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_the_class_label_changes_the_likelihood_and_the_samples(name):
    model = tiny_model(name, 1, 4, num_classes=3, scale=2.0).eval()
    x = torch.randint(0, 4, (2, 1, 4, 4))
    change = model.log_prob(x, torch.tensor([0, 0])) - model.log_prob(x, torch.tensor([2, 2]))
    assert change.abs().min() > 1e-6
    samples = [model.sample(16, y=torch.full((16,), label), generator=torch.Generator().manual_seed(3))
               for label in (0, 2)]
    assert not torch.equal(*samples)


def _call(name, method, x=None, y=None, **kwargs):
    def call():
        model = tiny_model(name, 3, 4, num_classes=2 if name != "gated_pixelcnn" else 0, dtype=torch.float32)
        if method == "sample":
            return model.sample(y=y, **kwargs)
        return getattr(model, method)(torch.zeros(2, 3, 4, 4, dtype=torch.long) if x is None else x, y)
    return call


Y = torch.tensor([0, 1])
BAD_INPUTS = {
    "x-float": (_call("pixelcnn", "forward", torch.zeros(2, 3, 4, 4), Y), TypeError, "x must be an integer"),
    "x-bool": (_call("pixelcnn", "log_prob", torch.zeros(2, 3, 4, 4, dtype=torch.bool), Y), TypeError,
               "x must"),
    "x-channels": (_call("pixelcnnpp", "forward", torch.zeros(2, 1, 4, 4, dtype=torch.long), Y), ValueError,
                   r"x must be \(N, C=3"),
    "x-rank": (_call("pixelcnn", "forward", torch.zeros(3, 4, 4, dtype=torch.long), Y), ValueError,
               "x must be"),
    "x-range": (_call("pixelcnnpp", "forward", torch.full((2, 3, 4, 4), 4), Y), ValueError,
                r"x must hold bins in \[0, 4\)"),
    "x-negative": (_call("pixelcnn", "log_prob", torch.full((2, 3, 4, 4), -1), Y), ValueError,
                   "x must hold bins"),
    "y-missing": (_call("pixelcnn", "forward"), ValueError, "y .* is required"),
    "y-unconditional": (_call("gated_pixelcnn", "forward", y=Y), ValueError, "y was given"),
    "y-float": (_call("pixelcnnpp", "forward", y=Y.float()), TypeError, "y must be an int64"),
    "y-shape": (_call("pixelcnn", "forward", y=torch.tensor([0, 1, 1])), ValueError,
                r"y must have shape \(2,\)"),
    "y-range": (_call("pixelcnnpp", "forward", y=torch.tensor([0, 2])), ValueError,
                r"y must hold classes in \[0, 2\)"),
    "sample-n": (_call("gated_pixelcnn", "sample", n=0), ValueError, "n must be"),
    "sample-temperature": (_call("gated_pixelcnn", "sample", n=1, temperature=0.0), ValueError,
                           "temperature"),
    "sample-image-size": (_call("gated_pixelcnn", "sample", n=1, image_size=0), ValueError, "image_size"),
    "sample-y": (_call("pixelcnn", "sample", n=2, y=torch.tensor([0])), ValueError,
                 r"y must have shape \(2,\)"),
    "sample-no-y": (_call("pixelcnn", "sample", n=2), ValueError, "y .* is required"),
    "config-channels": (lambda: PixelCNNConfig(channels=256), ValueError, "channels must be a multiple of 6"),
    "config-in-channels": (lambda: GatedPixelCNNConfig(in_channels=2), ValueError,
                           "in_channels must be 1 or 3"),
    "config-bins": (lambda: PixelCNNppConfig(num_bins=1), ValueError, "num_bins must be an int >= 2"),
    "config-kernel": (lambda: GatedPixelCNNConfig(kernel_size=4), ValueError, "kernel_size must be odd"),
    "config-dropout": (lambda: PixelCNNppConfig(dropout=1.0), ValueError, "dropout"),
    "config-classes": (lambda: PixelCNNConfig(num_classes=-1), ValueError, "num_classes"),
    "config-size": (lambda: PixelCNNppConfig.for_data(3, 256, 32, size="huge"), ValueError, "size must be"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(case):
    call, error, pattern = BAD_INPUTS[case]
    with pytest.raises(error, match=pattern):
        call()


# --- the reference twin, gradients, Triton ---------------------------------------------------------------

def loss_and_gradients(model, x, y, backend):
    torch.manual_seed(0)  # the same dropout masks on every backend
    with gmk.use_backend(backend):
        loss = model(x, y)["loss"]
        return loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = tiny_model(name, 3, 4, num_classes=2, dtype=torch.float32).train()
    x, y = torch.randint(0, 4, (3, 3, 4, 4)), torch.tensor([0, 1, 1])
    loss, grads = loss_and_gradients(model, x, y, "auto")
    for (parameter_name, _), grad in zip(model.named_parameters(), grads):
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, parameter_name


@pytest.mark.parametrize("backend", backends_under_test("cpu"))
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_the_reference_backend_is_the_models_twin(name, backend, exact_float32):
    """The same parameters under gmk.use_backend("reference") and another backend: the same loss and
    gradients within float32 tolerance (the Triton interpreter on a smaller case)."""
    size, channels = (3, 1) if backend == "triton" else (6, 3)
    model = tiny_model(name, channels, 4, num_classes=2, dtype=torch.float32).train()
    x, y = torch.randint(0, 4, (2, channels, size, size)), torch.tensor([1, 0])
    loss, grads = loss_and_gradients(model, x, y, backend)
    expected_loss, expected_grads = loss_and_gradients(model, x, y, "reference")
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for (parameter_name, _), grad, expected in zip(model.named_parameters(), grads, expected_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5, msg=parameter_name)


# --- registry and configs --------------------------------------------------------------------------------

def test_models_registry_and_configs():
    assert MODELS["wavenet"] is WaveNet and WaveNet.config_class is WaveNetConfig and WaveNet.kind == "audio"
    for name in IMAGE_MODELS:
        cls = MODELS[name]
        assert cls.kind == "image"
        default = cls.config_class()
        data = (default.in_channels, default.num_bins, default.image_size, default.num_classes)
        assert data == (3, 256, 32, 0)
        assert cls.config_class.for_data(3, 256, 32) == default  # the paper's CIFAR-10 network
        digits = cls.config_class.for_data(1, 17, 8, num_classes=10)
        assert (digits.in_channels, digits.num_bins, digits.image_size, digits.num_classes) == (1, 17, 8, 10)
        def size(config):
            return sum(p.numel() for p in cls(config).parameters())

        assert size(digits) < size(default)
    pp, gated, pixelcnn = PixelCNNppConfig(), GatedPixelCNNConfig(), PixelCNNConfig()
    assert (pp.filters, pp.resnets, pp.stages, pp.mixture_components, pp.dropout) == (160, 5, 3, 10, 0.5)
    assert (gated.layers, gated.channels, gated.kernel_size) == (20, 384, 5)
    assert (pixelcnn.residual_blocks, pixelcnn.first_kernel_size, pixelcnn.kernel_size) == (15, 7, 3)


# --- the benchmark family --------------------------------------------------------------------------------

def test_benchmark_cases_run_on_cpu():
    """benchmarks/models/pixelcnn.py: each model's training step and sampling run through the harness on
    gmk and the eager reference (the compiled peer is left out: compiling takes minutes on CPU); sampling
    reports the time per image."""
    harness = pytest.importorskip("gmkernels.benchmarks.harness")
    bench = pytest.importorskip("gmkernels.benchmarks.models.pixelcnn",
                                reason="the installed gmkernels.benchmarks has no models/pixelcnn.py")
    assert "pixelcnn" in harness.family_names()
    cases = bench.cases("cpu", quick=True)
    assert {case.params["model"] for case in cases} == set(IMAGE_MODELS)
    for case in cases:
        peers = {name: peer for name, peer in case.peers.items() if name in ("gmk:auto", harness.EAGER)}
        case.peers = peers
        result = harness.run_case(case, "cpu", repeats=1, copy_gbps=1.0)
        assert all(peer["status"] == "ok" for peer in result["results"]), result["results"]
        if case.params["kind"] == "sample":
            for peer in result["results"]:
                assert peer["us_per_sample"] == pytest.approx(1e3 * peer["median_ms"] / case.params["batch"])


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_uint8_images_of_256_bins_pass_the_range_check(name):
    """uint8 < 256 is False in torch (the scalar wraps): the check must compare as integers."""
    model = tiny_model(name, 1, num_bins=256, dtype=torch.float32).eval()  # no dropout
    x = torch.tensor([0, 255, 7, 128], dtype=torch.uint8).view(1, 1, 2, 2)
    torch.testing.assert_close(model(x)["loss"], model(x.long())["loss"])
