"""gmk.models.WaveNet, µ-law, and WaveNet generation: the cached loop against recomputing the whole
receptive field, every backend against the cached loop, the CUDA kernel's plan (host code), opcheck,
bad configurations and inputs, and a small WaveNet that learns a mixture of tones."""
import math

import pytest
import torch

import gmkernels as gmk
import gmkernels.ops.wavenet_generate as generate_ops
import gmkernels.reference.wavenet_generate as reference
from conftest import backends_under_test, noncontiguous
from gmkernels.models import WaveNet, WaveNetConfig

BACKENDS = [name for name in backends_under_test("cpu") if name == "reference" or generate_ops.GENERATE.has(name)]
HEADS = ("softmax", "logistic_mixture")


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny ops (one generation step, one training step): on a shared machine a single
    thread avoids OpenMP's oversubscription stalls (measured: up to 20x slower with 2 threads)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def small_config(head="softmax", kernel_size=2, cond=True, **overrides):
    """L = 6 (dilations 1, 2, 4 twice), small R, S, H, A: every path of the network, quick to run.
    ``cond``: True (local and global conditioning), False, or one of "local+global", "global", "none"."""
    cond = {True: "local+global", False: "none"}.get(cond, cond)
    options = dict(layers=6, stacks=2, kernel_size=kernel_size, residual_channels=8, skip_channels=12,
                   num_classes=16, head_channels=10, head=head, mixture_components=3,
                   cond_channels=3 if cond == "local+global" else 0,
                   global_cond_channels=0 if cond == "none" else 2, residual_scale=0.7)
    return WaveNetConfig(**{**options, **overrides})


def generation_inputs(model, batch, steps, dtype=torch.float64):
    """The generation op's inputs for ``model``: weights, per-layer conditioning, uniform noise."""
    c = model.config
    like = {"dtype": dtype, "device": model.embedding.weight.device}
    cond = torch.randn(batch, c.cond_channels, steps, **like) if c.cond_channels else None
    global_cond = torch.randn(batch, c.global_cond_channels, **like) if c.global_cond_channels else None
    noise = {**like, "dtype": torch.float64 if dtype == torch.float64 else torch.float32}
    uniform = torch.rand(batch, steps, reference.uniforms_per_sample(c.head), **noise)
    return model.generation_weights(), model.layer_cond(cond, global_cond), uniform


def options(config):
    return dict(start_class=config.start_class, residual_scale=config.residual_scale, head=config.head,
                log_scale_min=config.log_scale_min)


def cached_loop(config, weights, layer_cond, uniform, temperature=1.0):
    return reference.wavenet_generate(reference.GenerationWeights(*weights), config.dilations, layer_cond,
                                      uniform, config.start_class, config.residual_scale, temperature,
                                      config.head, config.log_scale_min)


# --- µ-law ---------------------------------------------------------------------------------------

def test_mu_law_round_trip_and_convention():
    classes = torch.arange(256)
    audio = gmk.mu_law_decode(classes, dtype=torch.float64)
    assert torch.equal(gmk.mu_law_encode(audio), classes)
    assert audio[0].item() == pytest.approx(-1, abs=1e-12) and audio[-1].item() == pytest.approx(1, abs=1e-12)
    assert (audio.diff() > 0).all()
    assert gmk.mu_law_encode(torch.tensor([-1.0, 0.0, 1.0, -7.0, 7.0])).tolist() == [0, 128, 255, 0, 255]
    x = torch.linspace(-1, 1, 1001, dtype=torch.float64)  # torchaudio's mu_law_encoding, written out
    expected = ((torch.sign(x) * torch.log1p(255 * x.abs()) / math.log(256) + 1) / 2 * 255 + 0.5).long()
    assert torch.equal(gmk.mu_law_encode(x), expected)
    assert (gmk.mu_law_decode(gmk.mu_law_encode(x)) - x).abs().max() < 0.032  # the widest bin, at ±1


def test_mu_law_bad_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        gmk.mu_law_encode(torch.zeros(3), num_classes=1)
    with pytest.raises(TypeError, match="audio"):
        gmk.mu_law_encode(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="classes must lie in"):
        gmk.mu_law_decode(torch.tensor([0, 256]))
    with pytest.raises(TypeError, match="classes"):
        gmk.mu_law_decode(torch.zeros(3))


# --- configuration and training forward --------------------------------------------------------------

def test_config_defaults_are_nv_wavenet():
    config = WaveNetConfig()
    assert config.dilations == tuple(2 ** i for i in range(8)) * 2
    sizes = (config.layers, config.residual_channels, config.skip_channels, config.num_classes)
    assert sizes == (16, 64, 256, 256)
    assert config.hidden_channels == 256 and config.outputs == 256 and config.start_class == 128
    assert config.receptive_field == 2 * 255 + 1
    assert WaveNetConfig(layers=10, stacks=1, kernel_size=3).dilations == tuple(2 ** i for i in range(10))
    assert WaveNetConfig(head="logistic_mixture", mixture_components=10).outputs == 30


@pytest.mark.parametrize("field, value", [
    ("kernel_size", 0), ("layers", 0), ("layers", 2.0), ("stacks", 3), ("residual_channels", 0),
    ("skip_channels", -1), ("num_classes", 1), ("head", "sigmoid"), ("head_channels", 0),
    ("mixture_components", 0), ("cond_channels", -1), ("residual_scale", float("nan"))])
def test_bad_config_names_the_field(field, value):
    fields = {"layers": 4, field: value}
    with pytest.raises(ValueError, match=field if field != "stacks" else "stacks must divide layers"):
        WaveNetConfig(**fields)


@pytest.mark.parametrize("head", HEADS)
def test_forward_is_the_reference_network(head):
    """The training loss is the cross-entropy (or mixture NLL) of the reference network's output."""
    config = small_config(head)
    model = WaveNet(config).double()
    x = torch.randint(0, config.num_classes, (2, 30))
    cond, global_cond = torch.randn(2, 3, 30, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    inputs = torch.cat([torch.full((2, 1), config.start_class), x[:, :-1]], dim=1)
    with torch.no_grad():
        output = reference.network_output(model.generation_weights(), config.dilations, inputs,
                                          model.layer_cond(cond, global_cond), config.residual_scale)
    if head == "softmax":
        expected = torch.nn.functional.cross_entropy(output, x)
    else:
        levels = (2 * x.double() / (config.num_classes - 1) - 1)[:, None]
        expected = gmk.reference.logistic_mixture.discretized_logistic_mixture_nll(
            output, levels, config.num_classes, config.log_scale_min).mean()
    with gmk.use_backend("reference"):
        loss = model(x, cond, global_cond)
    torch.testing.assert_close(loss["loss"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss["bits_per_sample"], expected / math.log(2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.log_prob(x, cond, global_cond).sum() / x.numel(), -expected)


def check_forward_and_gradients(backend, steps):
    """The loss and every parameter's gradient on ``backend`` (run twice) equal the reference's; the
    parameters are left unchanged."""
    config = small_config()
    model = WaveNet(config).double()
    x = torch.randint(0, config.num_classes, (2, steps))
    cond, global_cond = torch.randn(2, 3, steps, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    results = {}
    parameters = list(model.parameters())
    saved = [p.detach().clone() for p in parameters]
    for name in (backend, backend, "reference"):
        with gmk.use_backend(name):
            loss = model(x, cond, global_cond)["loss"]
        # The last layer's residual 1x1 feeds nothing (as in nv-wavenet): no gradient, or zero.
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
        results[name] = (loss, [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)])
    assert all(torch.equal(p, s) for p, s in zip(parameters, saved))
    torch.testing.assert_close(results[backend][0], results["reference"][0], rtol=1e-10, atol=1e-12)
    for actual, expected in zip(results[backend][1], results["reference"][1]):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", [name for name in backends_under_test("cpu") if name != "triton"])
def test_forward_and_gradients_on_every_backend(backend):
    check_forward_and_gradients(backend, 25)


@pytest.mark.parametrize("backend", [name for name in backends_under_test("cpu") if name != "triton"])
def test_issue18_item2_forward_and_gradients_of_one_step(backend):
    """T = 1: the CPU layer wrote into its conv_bias (the model's parameters) and read it back corrupted."""
    check_forward_and_gradients(backend, 1)


def test_forward_is_causal():
    """The loss at step t depends on x[:t + 1] only: changing the future leaves the past's NLL alone."""
    config = small_config(cond=False)
    model = WaveNet(config).double()
    x = torch.randint(0, config.num_classes, (2, 40))
    changed = x.clone()
    changed[:, 23:] = torch.randint(0, config.num_classes, (2, 17))
    with torch.no_grad():
        before, after = model.nll(x), model.nll(changed)
    torch.testing.assert_close(before[:, :23], after[:, :23], rtol=0, atol=0)
    assert not torch.allclose(before[:, 23:], after[:, 23:])


def test_forward_bad_inputs():
    model = WaveNet(small_config())
    x = torch.randint(0, 16, (2, 10))
    cond, global_cond = torch.randn(2, 3, 10), torch.randn(2, 2)
    with pytest.raises(TypeError, match="x must be µ-law classes"):
        model(x.float(), cond, global_cond)
    with pytest.raises(ValueError, match=r"x must hold classes in \[0, 16\)"):
        model(x + 10, cond, global_cond)
    with pytest.raises(ValueError, match="cond is required"):
        model(x, None, global_cond)
    with pytest.raises(ValueError, match=r"cond must be \(N=2, C=3, T=10\)"):
        model(x, cond[:, :, :9], global_cond)
    with pytest.raises(ValueError, match=r"global_cond must be \(N=2, G=2\)"):
        model(x, cond, global_cond[:1])
    with pytest.raises(ValueError, match="global_cond was given"):
        WaveNet(small_config(cond=False))(x, None, global_cond)


# --- generation: the cached loop, the backends, the model's generate ---------------------------------

@pytest.mark.parametrize("head, kernel_size, cond", [
    *((head, k, "local+global") for head in HEADS for k in (1, 2, 3)),
    ("softmax", 2, "none"), ("logistic_mixture", 2, "global")])
def test_cached_loop_matches_recompute(head, kernel_size, cond):
    """O(L) per sample with ring buffers = the whole network run on all samples so far, at every step."""
    config = small_config(head, kernel_size, cond=cond)
    model = WaveNet(config).double()
    weights, layer_cond, uniform = generation_inputs(model, batch=2, steps=40)
    args = (weights, config.dilations, layer_cond, uniform, config.start_class, config.residual_scale, 0.8,
            config.head, config.log_scale_min)
    samples = reference.wavenet_generate(*args)
    assert torch.equal(samples, reference.wavenet_generate_by_recompute(*args))
    assert samples.dtype == torch.long and samples.shape == (2, 40)
    assert samples.min() >= 0 and samples.max() < config.num_classes
    assert len(samples.unique()) > 3


def test_sampling_rule_is_the_inverse_cdf():
    """Bin c is drawn for u in [cdf(c - 1), cdf(c)); temperature sharpens; the mixture's level is rounded."""
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)).expand(7, 4)
    u = torch.tensor([0.0, 0.09, 0.11, 0.29, 0.31, 0.61, 0.99999], dtype=torch.float64)
    assert reference.categorical(logits, u, 1.0).tolist() == [0, 0, 1, 1, 2, 3, 3]
    assert reference.categorical(logits[1:], u[1:], 1e-2).tolist() == [3] * 6
    # A sharp logistic at the level 2·5/15 - 1 of 16 classes: u = 1/2 draws exactly its mean.
    mixture = torch.tensor([[5.0, 0.0, 2 * 5 / 15 - 1, -1.0, -7.0, 0.0]], dtype=torch.float64)  # K = 2
    u = torch.tensor([[0.9, 0.5]], dtype=torch.float64)
    assert reference.sample_output(mixture, u, "logistic_mixture", 16, 1.0, -7.0).tolist() == [5]


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head, kernel_size, cond", [
    ("softmax", 2, "local+global"), ("logistic_mixture", 3, "global"), ("softmax", 1, "none")])
def test_backend_matches_cached_loop(backend, dtype, head, kernel_size, cond):
    """Same noise, same samples. Backends compute in float32 (float64) from weights stored in ``dtype``:
    the reference runs on those weights converted to the compute type."""
    config = small_config(head, kernel_size, cond)
    model = WaveNet(config).to(dtype)
    weights, layer_cond, uniform = generation_inputs(model, batch=3, steps=40, dtype=dtype)
    samples = generate_ops.wavenet_generate(weights, config.dilations, uniform, layer_cond, backend=backend,
                                            temperature=0.9, **options(config))
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    expected = cached_loop(config, [w.to(compute) for w in weights],
                           None if layer_cond is None else layer_cond.to(compute), uniform, 0.9)
    assert torch.equal(samples, expected)


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "triton"])
def test_backend_large_batch(backend):
    """19 elements: the CPU kernel steps groups of 8 (and a group of 3) in parallel."""
    config = small_config("softmax", 3, "local+global")
    weights, layer_cond, uniform = generation_inputs(WaveNet(config).double(), batch=19, steps=15)
    samples = generate_ops.wavenet_generate(weights, config.dilations, uniform, layer_cond, backend=backend,
                                            **options(config))
    assert torch.equal(samples, cached_loop(config, weights, layer_cond, uniform))


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "triton"])
def test_backend_takes_any_strides(backend):
    """Weights, conditioning and noise stored transposed with gaps (NaN in the gaps) give the same samples."""
    config = small_config("logistic_mixture", 2)
    weights, layer_cond, uniform = generation_inputs(WaveNet(config).double(), batch=2, steps=30)
    expected = cached_loop(config, weights, layer_cond, uniform)
    strided = [noncontiguous(w) for w in weights]
    samples = generate_ops.wavenet_generate(strided, config.dilations, noncontiguous(uniform),
                                            noncontiguous(layer_cond), backend=backend, **options(config))
    assert torch.equal(samples, expected)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not installed")
@pytest.mark.parametrize("head, kernel_size, cond, steps", [("softmax", 2, "local+global", 40),
                                                            ("logistic_mixture", 3, "global", 12)])
def test_triton_matches_cached_loop(head, kernel_size, cond, steps):
    config = small_config(head, kernel_size, cond)
    model = WaveNet(config)
    weights, layer_cond, uniform = generation_inputs(model, batch=2, steps=steps, dtype=torch.float32)
    samples = generate_ops.wavenet_generate(weights, config.dilations, uniform, layer_cond, backend="triton",
                                            **options(config))
    assert torch.equal(samples, cached_loop(config, weights, layer_cond, uniform))


@pytest.mark.parametrize("backend", ["reference"] + [name for name in BACKENDS if name != "triton"])
def test_model_generate_draws_with_the_generator(backend):
    config = small_config()
    model = WaveNet(config)
    cond, global_cond = torch.randn(2, 3, 50), torch.randn(2, 2)

    def draw(seed, **kwargs):
        return model.generate(30, cond, global_cond, batch_size=2, backend=backend,
                              generator=torch.Generator().manual_seed(seed), **kwargs)

    first = draw(0)
    assert first.shape == (2, 30) and first.dtype == torch.long
    assert torch.equal(first, draw(0)) and not torch.equal(first, draw(1))
    assert torch.equal(first, model.generate(30, cond, global_cond, batch_size=2, backend="reference",
                                             generator=torch.Generator().manual_seed(0)))
    cold = draw(0, temperature=1e-6)  # nearly greedy: the same sample whatever the noise
    assert torch.equal(cold, draw(1, temperature=1e-6))
    audio = model.sample(2, 30, cond=cond, global_cond=global_cond, backend=backend)
    assert audio.shape == (2, 30) and audio.abs().max() <= 1


def test_generate_bad_inputs():
    model = WaveNet(small_config())
    cond, global_cond = torch.randn(1, 3, 20), torch.randn(1, 2)
    with pytest.raises(ValueError, match="num_samples"):
        model.generate(0, cond, global_cond)
    with pytest.raises(ValueError, match="batch_size"):
        model.generate(5, cond, global_cond, batch_size=0)
    with pytest.raises(ValueError, match=r"cond must be \(N=1, C=3, T>=21\)"):
        model.generate(21, cond, global_cond)
    with pytest.raises(ValueError, match=r"cond must be \(N=2"):
        model.generate(5, cond, global_cond, batch_size=2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(5, cond, global_cond, temperature=0.0)
    with pytest.raises(ValueError, match="backend 'cuda' was requested"):
        model.generate(5, cond, global_cond, backend="cuda")


def _op_inputs():
    config = small_config(cond=False)
    model = WaveNet(config)
    weights, _, uniform = generation_inputs(model, batch=2, steps=5, dtype=torch.float32)
    return config, weights, uniform


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("change, match", [
    (lambda w, d, u: (w, [1, 0, 4, 1, 2, 4], u), "dilations must be >= 1"),
    (lambda w, d, u: (w, d[:5], u), "dilations must be a list of L=6"),
    (lambda w, d, u: (w._replace(conv_weight=w.conv_weight[..., :0]), d, u), "kernel size"),
    (lambda w, d, u: (w._replace(res_weight=w.res_weight[:, :7]), d, u), "res_weight must have shape"),
    (lambda w, d, u: (w._replace(skip_weight=w.skip_weight[:, :, :7]), d, u), "skip_weight must be"),
    (lambda w, d, u: (w._replace(head_weight1=w.head_weight1[:, :11]), d, u), "head_weight1 must be"),
    (lambda w, d, u: (w._replace(head_weight2=w.head_weight2[:15], head_bias2=w.head_bias2[:15]), d, u),
     "head_weight2 must have A=16 rows"),
    (lambda w, d, u: (w._replace(res_bias=w.res_bias.double()), d, u),
     "res_bias must have embedding's dtype"),
    (lambda w, d, u: (w, d, u.double()), "uniform must be a torch.float32"),
    (lambda w, d, u: (w, d, u[..., None]), r"uniform must be \(N, T, 1\)"),
])
def test_generation_op_bad_inputs_name_the_argument(backend, change, match):
    config, weights, uniform = _op_inputs()
    weights, dilations, uniform = change(weights, list(config.dilations), uniform)
    with pytest.raises((ValueError, TypeError), match=match):
        generate_ops.wavenet_generate(weights, dilations, uniform, backend=backend, **options(config))


@pytest.mark.skipif(not gmk.has_extension(), reason="the C++ extension is not built")
@pytest.mark.parametrize("change, match", [
    (lambda args: args.__setitem__(13, [1, 2, 0, 1, 2, 4]), "dilations must be >= 1"),
    (lambda args: args.__setitem__(3, args[3][:, :7]), "res_weight must have shape"),
    (lambda args: args.__setitem__(1, args[1][..., :0]), "kernel size"),
    (lambda args: args.__setitem__(14, 16), r"start_class must be in \[0, 16\)"),
    (lambda args: args.__setitem__(17, "sigmoid"), "head must be"),
])
def test_cpp_op_checks_its_arguments(change, match):
    config, weights, uniform = _op_inputs()
    args = [*weights, None, uniform, list(config.dilations), config.start_class, 1.0, 1.0, "softmax", -7.0]
    change(args)
    with pytest.raises((ValueError, RuntimeError), match=match):
        torch.ops.gmkernels.wavenet_generate(*args)


@pytest.mark.parametrize("namespace", ["gmkernels", "gmk_triton"])
def test_opcheck(namespace):
    if namespace == "gmkernels" and not gmk.has_extension():
        pytest.skip("the C++ extension is not built")
    if namespace == "gmk_triton" and "triton" not in BACKENDS:
        pytest.skip("Triton cannot run here")
    config = small_config("logistic_mixture", 3)
    weights, layer_cond, uniform = generation_inputs(WaveNet(config), batch=2, steps=3, dtype=torch.float32)
    op = getattr(torch.ops, namespace).wavenet_generate
    torch.library.opcheck(op, (*weights, layer_cond, uniform, list(config.dilations), config.start_class, 0.7,
                               1.0, "logistic_mixture", -7.0))


# --- the persistent CUDA kernel's plan (host code) -----------------------------------------------------

needs_extension = pytest.mark.skipif(not gmk.has_extension(), reason="the C++ extension is not built")


def nv_wavenet_plan(**overrides):
    sizes = dict(residual_channels=64, skip_channels=256, hidden_channels=256, outputs=256, layers=16,
                 kernel_size=2, batch=1, element_size=4)
    return generate_ops.cuda_plan(**{**sizes, **overrides})


NV_WAVENET_WEIGHTS = 16 * (2 * 64 * 64 * 2 + 128 + 64 * 64 + 64 + 256 * 64 + 256) + 2 * (256 * 256 + 256)


@needs_extension
def test_cuda_plan_of_nv_wavenet_default_on_the_block_kernel():
    plan = nv_wavenet_plan(compute_capability=80)  # no clusters before Hopper
    assert plan["cluster_size"] == 0 and plan["batch_per_block"] == 1 and not plan["weights_in_shared"]
    assert plan["weight_bytes"] == 4 * NV_WAVENET_WEIGHTS  # 2.4 MB: streamed from L2 at every step
    assert plan["shared_bytes"] == 4 * (4 * 64 + 256 + 256 + 256 + 1)
    assert nv_wavenet_plan(batch=64)["batch_per_block"] == 1  # 64 elements: one per block, on 64 SMs
    assert nv_wavenet_plan(batch=132 * 8)["batch_per_block"] == 8
    assert nv_wavenet_plan(batch=132 * 4 + 1)["batch_per_block"] == 4


@needs_extension
def test_cuda_plan_keeps_nv_wavenet_on_chip_in_a_cluster():
    """Batch 1 on Hopper: 16 blocks hold 1/16 of every weight each (float32), 8 in float16."""
    plan = nv_wavenet_plan()
    assert plan["cluster_size"] == 16 and plan["weights_in_shared"]
    share = 16 * (2 * 64 * 8 + 8 + 64 * 4 + 4 + 64 * 16 + 16) + 2 * (256 * 16 + 16)
    activations = 2 * 64 + 3 * 256 + 8 + 16 + 16 * 64 + 16 * 8 + 2  # ... + taps, conditioning, uniforms
    assert plan["shared_bytes"] == (4 * activations + 15) // 16 * 16 + 4 * share and 16 * 4 * share == 4 * NV_WAVENET_WEIGHTS
    assert nv_wavenet_plan(element_size=2)["cluster_size"] == 8
    assert nv_wavenet_plan(batch=8)["cluster_size"] == 16  # 8 clusters of 16 on 132 SMs
    assert nv_wavenet_plan(batch=9)["cluster_size"] == 0  # not all resident at once: the block kernel
    assert nv_wavenet_plan(residual_channels=128)["cluster_size"] == 0  # 7.3 MB: no cluster holds it
    assert nv_wavenet_plan(skip_channels=250)["cluster_size"] == 0  # only C = 2 divides: 1.2 MB per block
    # The tests' small network: C = 2 is the only size dividing R, S, H, P = 8, 12, 10, 16.
    assert nv_wavenet_plan(residual_channels=8, skip_channels=12, hidden_channels=10, outputs=16,
                           layers=6)["cluster_size"] == 2


@needs_extension
def test_cuda_plan_stages_small_weights_in_shared_memory():
    plan = nv_wavenet_plan(residual_channels=16, skip_channels=32, hidden_channels=32, outputs=256, layers=8,
                           element_size=2, compute_capability=80)
    assert plan["weights_in_shared"]
    assert plan["shared_bytes"] >= plan["weight_bytes"] > 0


@needs_extension
@pytest.mark.parametrize("overrides, name", [
    (dict(outputs=65536), "num_classes=65536"),
    (dict(outputs=3 * 20000, head="logistic_mixture"), "3 \\* mixture_components=60000"),
    (dict(residual_channels=16384), "residual_channels=16384"),
    (dict(skip_channels=60000), "skip_channels=60000"),
    (dict(hidden_channels=60000), "head_channels=60000"),
])
def test_cuda_plan_rejects_what_does_not_fit_and_names_it(overrides, name):
    with pytest.raises(ValueError, match=f"{name} is too large for the persistent kernel"):
        nv_wavenet_plan(**overrides)
    with pytest.raises(ValueError, match="shared memory"):
        nv_wavenet_plan(**overrides, max_shared_bytes=48 * 1024)
    nv_wavenet_plan(max_shared_bytes=48 * 1024)  # the default configuration fits even in 48 KiB


# --- GPU -----------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("head, kernel_size, batch", [("softmax", 2, 3), ("logistic_mixture", 3, 2),
                                                      ("softmax", 2, 300)])
def test_gpu_backend_matches_cached_loop(backend, head, kernel_size, batch):
    """float32 on the GPU = the float32 cached loop on the CPU; batch 300 fills blocks of several elements."""
    if backend not in gmk.available_backends("cuda"):
        pytest.skip(f"{backend} cannot run here")
    config = small_config(head, kernel_size)
    model = WaveNet(config)
    weights, layer_cond, uniform = generation_inputs(model, batch=batch, steps=40, dtype=torch.float32)
    expected = cached_loop(config, weights, layer_cond, uniform)
    samples = generate_ops.wavenet_generate([w.cuda() for w in weights], config.dilations, uniform.cuda(),
                                            layer_cond.cuda(), backend=backend, **options(config))
    mismatched = (samples.cpu() != expected).any(dim=1).float().mean().item()
    assert mismatched <= (0 if batch < 10 else 0.02)  # a rare class boundary within float32 rounding


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [2, 9])
def test_gpu_nv_wavenet_default_matches_cached_loop(batch):
    """nv-wavenet's network: batch 2 runs the cluster kernel (16 blocks per element on Hopper), batch 9
    the block kernel with the weights streamed from L2."""
    if "cuda" not in gmk.available_backends("cuda"):
        pytest.skip("cuda cannot run here")
    config = WaveNetConfig()
    model = WaveNet(config)
    weights, layer_cond, uniform = generation_inputs(model, batch=batch, steps=40, dtype=torch.float32)
    expected = cached_loop(config, weights, layer_cond, uniform)
    samples = generate_ops.wavenet_generate([w.cuda() for w in weights], config.dilations, uniform.cuda(),
                                            backend="cuda", **options(config))
    assert (samples.cpu() != expected).any(dim=1).float().mean().item() <= 0.2  # a rare float32 boundary


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_generation(backend, dtype):
    """Half weights (computed in float32): the kernels run and draw valid classes."""
    config = small_config()
    model = WaveNet(config).cuda().to(dtype)
    first = model.generate(200, torch.randn(4, 3, 200, device="cuda"), torch.randn(4, 2, device="cuda"),
                           batch_size=4, backend=backend)
    assert first.shape == (4, 200) and first.min() >= 0 and first.max() < config.num_classes


@pytest.mark.gpu
@pytest.mark.parametrize("namespace, cond", [("gmkernels", "local+global"), ("gmkernels", "none"),
                                             ("gmk_triton", "global")])
def test_opcheck_gpu(namespace, cond):
    if namespace == "gmkernels" and "cuda" not in gmk.available_backends("cuda"):
        pytest.skip("the CUDA kernels are not built")
    config = small_config("softmax", 2, cond)
    model = WaveNet(config).cuda()
    weights, layer_cond, uniform = generation_inputs(model, batch=2, steps=5, dtype=torch.float32)
    torch.library.opcheck(getattr(torch.ops, namespace).wavenet_generate,
                          (*weights, layer_cond, uniform, list(config.dilations), config.start_class, 0.7, 1.0,
                           "softmax", -7.0))


@pytest.mark.gpu
def test_cuda_rejects_a_configuration_too_large_for_the_kernel():
    config = WaveNetConfig(layers=2, stacks=1, residual_channels=8, skip_channels=8, head_channels=8,
                           num_classes=65536)
    model = WaveNet(config).cuda()
    with pytest.raises(ValueError, match="num_classes=65536 is too large"):
        model.generate(4, backend="cuda")


# --- learning ------------------------------------------------------------------------------------------

def test_trained_wavenet_generates_the_tones():
    """A small WaveNet trained 200 steps on two µ-law tones (8 kHz) generates audio whose spectrum
    peaks at those tones, and puts most of its power there."""
    rate, tones = 8000, (440.0, 1240.0)
    data = torch.Generator().manual_seed(0)

    def batch(n, steps):
        start = torch.randint(0, 100_000, (n, 1), generator=data).double()
        t = (start + torch.arange(steps, dtype=torch.float64)) / rate
        return gmk.mu_law_encode(sum(0.35 * torch.sin(2 * math.pi * f * t) for f in tones))

    torch.manual_seed(0)
    config = WaveNetConfig(layers=6, stacks=1, residual_channels=24, skip_channels=48, head_channels=64)
    model = WaveNet(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model(batch(8, 256))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3  # nats per sample; 5.5 (ln 256) untrained

    audio = model.sample(1, rate // 2 + 1000, generator=torch.Generator().manual_seed(1))[0, 1000:].double()
    window = torch.hann_window(audio.numel(), dtype=torch.float64)
    spectrum = torch.fft.rfft((audio - audio.mean()) * window).abs()
    freqs = torch.fft.rfftfreq(audio.numel(), 1 / rate, dtype=torch.float64)
    strongest = freqs[spectrum.argmax()].item()
    assert min(abs(strongest - f) for f in tones) <= 10
    for f in tones:  # each tone is a peak: its bin beats everything outside ±50 Hz of both tones
        near = (freqs - f).abs() <= 10
        away = torch.stack([(freqs - g).abs() > 50 for g in tones]).all(dim=0)
        assert spectrum[near].max() > 5 * spectrum[away].max()
    in_tones = sum(spectrum[(freqs - f).abs() <= 30].pow(2).sum() for f in tones) / spectrum.pow(2).sum()
    assert in_tones > 0.5


# --- the benchmark family ------------------------------------------------------------------------------

def test_benchmark_cases_run_on_cpu():
    """benchmarks/models/wavenet.py: its training peers compute the same gradients, its generation peers
    the same samples, and the harness reports µs per sample and real-time factors."""
    harness = pytest.importorskip("gmkernels.benchmarks.harness")
    # gmkernels.benchmarks is the installed checkout's benchmarks/ (setup.py package_dir), which may be
    # another worktree's, without this family.
    bench = pytest.importorskip("gmkernels.benchmarks.models.wavenet",
                                reason="the installed gmkernels.benchmarks has no models/")

    assert "wavenet" in harness.family_names()
    cases = bench.cases("cpu", quick=True)
    assert {case.params["kind"] for case in cases} == {"training", "generation"}
    for case in cases:
        if case.params["kind"] == "training":
            eager = case.peers[harness.EAGER]()
            for name, peer in case.peers.items():
                if name.startswith("gmk:") and name != "gmk:triton":
                    for actual, expected in zip(peer(), eager):  # None: a gradient of zero
                        if actual is not None or expected is not None:
                            reference_grad = torch.zeros_like(actual) if expected is None else expected
                            actual = torch.zeros_like(expected) if actual is None else actual
                            torch.testing.assert_close(actual, reference_grad, rtol=1e-4, atol=1e-5)
            continue
        outputs = {name: peer() for name, peer in case.peers.items()
                   if name in (harness.EAGER, "gmk:cpu")}
        assert all(torch.equal(output, outputs[harness.EAGER]) for output in outputs.values())
        case.peers = {name: peer for name, peer in case.peers.items() if name in outputs}
        result = harness.run_case(case, "cpu", repeats=2, copy_gbps=1.0)
        for peer in result["results"]:
            assert peer["status"] == "ok"
            assert peer["us_per_sample"] == pytest.approx(1e3 * peer["median_ms"] / case.params["steps"])
            assert peer["samples_per_s"] == pytest.approx(case.samples / (peer["median_ms"] / 1e3))
            assert set(peer["realtime_factor"]) == {"16000", "24000"}
