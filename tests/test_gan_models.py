"""The GAN models (DCGAN, StyleGAN2), their losses and R1, the GAN training kind, and gmk.metrics (the
Fréchet distance and the classifier features). Tiny configs; the quality runs are marked slow."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gmkernels as gmk
from gmkernels import metrics
from gmkernels.cli import main as gmk_main
from gmkernels.data import TensorSet
from gmkernels.models import DCGAN, MODELS, DCGANConfig, StyleGAN2, StyleGAN2Config
from gmkernels.models._gan import discriminator_loss, frozen, generator_loss, r1_penalty, translate
from gmkernels.training import TrainingError, distributed, kinds, loop, train

GANS = (DCGAN, StyleGAN2)


def tiny(model_class, in_channels=1, num_bins=17, image_size=8, num_classes=0, **fields):
    config = model_class.config_class.for_data(in_channels, num_bins, image_size, num_classes, size="tiny")
    return model_class(dataclasses.replace(config, **fields))


@pytest.fixture
def quick_classifier(monkeypatch):
    """The FID classifier trained for a few steps (its features are what the tests need, not its skill)."""
    monkeypatch.setattr(metrics, "TRAIN_STEPS", 3)


# --- models ----------------------------------------------------------------------------------------------

def test_registry_and_kind():
    assert MODELS["dcgan"] is DCGAN and MODELS["stylegan2"] is StyleGAN2
    for model_class in GANS:
        assert model_class.kind == "gan" and kinds.data_kind(model_class) == "image"


@pytest.mark.parametrize("model_class", GANS)
@pytest.mark.parametrize("in_channels, num_bins, image_size, num_classes", [(1, 17, 8, 0), (3, 256, 16, 3)])
def test_samples_are_bins_of_the_data_shape(model_class, in_channels, num_bins, image_size, num_classes):
    model = tiny(model_class, in_channels, num_bins, image_size, num_classes)
    y = torch.arange(5) % num_classes if num_classes else None
    draw = lambda seed, **kw: model.sample(5, y=y, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    x = draw(0)
    assert x.shape == (5, in_channels, image_size, image_size) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < num_bins
    assert torch.equal(x, draw(0)) and not torch.equal(x, draw(1))
    assert model.training  # sample leaves the mode as it was


def test_sampling_noise_comes_from_the_generator_and_leaves_the_global_one():
    model = tiny(StyleGAN2)
    for block in model.generator.blocks:  # make the per-pixel noise visible in the images
        for layer in (getattr(block, "conv0", None), block.conv1):
            if layer is not None:
                layer.noise_strength.data.fill_(5.0)
    state = torch.get_rng_state()
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    assert torch.equal(a, model.sample(4, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("model_class", GANS)
def test_truncation_zero_gives_the_mean_image(model_class):
    model = tiny(model_class)
    if model_class is StyleGAN2:
        model.generator.mapping.w_avg.normal_()
    x = model.sample(6, truncation=0.0, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x[0], image) for image in x)  # untrained noise strengths are 0
    with pytest.raises(ValueError, match="truncation"):
        model.sample(2, truncation=1.5)


def test_stylegan2_truncation_interpolates_toward_w_avg():
    model = tiny(StyleGAN2).eval()
    generator = model.generator
    generator.mapping.w_avg.normal_()
    z = torch.randn(3, model.config.latent_dim)
    w = generator.mapping(z, None)
    ws = generator.ws(z, None, 0.3)
    assert ws.shape == (3, generator.num_ws, model.config.w_dim)
    torch.testing.assert_close(ws, (generator.mapping.w_avg + 0.3 * (w - generator.mapping.w_avg))[:, None]
                               .expand_as(ws))


def test_dcgan_truncation_scales_the_latent():
    model = tiny(DCGAN)
    z = torch.randn(4, model.config.latent_dim)
    torch.testing.assert_close(model.generator(z, None, 0.5), model.generator(z * 0.5))


def test_w_avg_follows_the_mapping_in_training_only():
    model = tiny(StyleGAN2, style_mixing=0.0)
    z = torch.randn(8, model.config.latent_dim)
    model.generator(z)
    expected = 0.005 * model.generator.mapping(z, None)
    torch.testing.assert_close(model.generator.mapping.w_avg, expected.mean(0))
    model.eval()
    model.generator(z)
    torch.testing.assert_close(model.generator.mapping.w_avg, expected.mean(0))


def test_style_mixing_takes_later_layers_from_a_second_latent():
    model = tiny(StyleGAN2, style_mixing=1.0)
    z = torch.randn(2, model.config.latent_dim)
    torch.manual_seed(0)
    ws = model.generator.ws(z, None, 1.0)
    w = model.generator.mapping(z, None)
    first = (ws - w[:, None]).abs().amax(dim=(0, 2)) == 0
    assert bool(first[0]) and not bool(first.all())  # a prefix from z, the rest from the other latent
    assert torch.equal(first, torch.arange(len(first)) < int(first.sum()))


def test_real_images_are_dequantized_into_their_bins():
    model = tiny(DCGAN)
    x = torch.randint(0, 17, (64, 1, 8, 8))
    scaled = model.dequantize(x)
    assert torch.equal(model.to_bins(scaled), x)
    assert float(scaled.min()) >= -1 and float(scaled.max()) < 1


@pytest.mark.parametrize("model_class", GANS)
def test_discriminator_gives_a_logit_per_image_and_projects_classes(model_class):
    model = tiny(model_class, num_classes=3)
    images = torch.randn(4, 1, 8, 8)
    logits = model.discriminator(images, torch.tensor([0, 1, 2, 0]))
    assert logits.shape == (4,)
    assert not torch.equal(logits, model.discriminator(images, torch.tensor([1, 2, 0, 1])))
    with pytest.raises(TypeError, match="y"):
        model.sample(2)


def test_translation_moves_each_image_within_the_shift():
    x = torch.randn(16, 2, 5, 7)
    y = translate(x, 2)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    offsets = set()
    for image, moved in zip(padded, y):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(image[:, dy:dy + 5, dx:dx + 7], moved)]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 1


def test_augmented_discriminator_sees_translated_images():
    model = tiny(StyleGAN2, augment=1)
    images = torch.randn(8, 1, 8, 8)
    torch.manual_seed(0)
    logits = model.discriminate(images, None)
    torch.manual_seed(0)
    assert torch.equal(logits, model.discriminator(translate(images, 1), None))
    plain = tiny(StyleGAN2)
    assert torch.equal(plain.discriminate(images, None), plain.discriminator(images, None))


# --- losses and R1 ---------------------------------------------------------------------------------------

def test_non_saturating_losses_on_known_logits():
    real, fake = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([-1.0, 1.0])
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected_d = (softplus(-1) + softplus(1)) / 2 + (softplus(0) + softplus(-2) + softplus(1)) / 3
    assert discriminator_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert generator_loss(fake).item() == pytest.approx((softplus(1) + softplus(-1)) / 2, rel=1e-6)
    # At D = 0 everywhere: log 4 and log 2, the values of an undecided discriminator.
    assert discriminator_loss(torch.zeros(5), torch.zeros(5)).item() == pytest.approx(math.log(4))
    assert generator_loss(torch.zeros(5)).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("model_class", GANS)
def test_r1_equals_the_squared_gradient_norm(model_class):
    model = tiny(model_class).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(x, model.discriminator(x))
    gradient = torch.autograd.functional.jacobian(lambda images: model.discriminator(images).sum(), x.detach())
    torch.testing.assert_close(penalty, gradient.square().flatten(1).sum(1).mean())


@pytest.mark.parametrize("model_class", GANS)
def test_r1_double_backward_matches_finite_differences(model_class):
    """The gradient of R1 with respect to the discriminator's weights goes through the backward of
    bias_act and upfirdn2d (their double backward); gradcheck in float64 against finite differences."""
    model = tiny(model_class).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    names = [name for name, p in model.discriminator.named_parameters() if p.dim() > 1][:2]
    params = dict(model.discriminator.named_parameters())

    def r1(*weights):
        values = {**params, **dict(zip(names, weights))}
        images = x.clone().requires_grad_(True)
        logits = torch.func.functional_call(model.discriminator, values, (images,))
        return r1_penalty(images, logits)

    assert torch.autograd.gradcheck(r1, [params[n].detach().clone().requires_grad_(True) for n in names])


def test_discriminator_terms_add_the_lazy_r1():
    model = tiny(StyleGAN2, r1_gamma=0.7, r1_interval=4)
    x = torch.randint(0, 17, (4, 1, 8, 8))
    terms = model.discriminator_terms(x, regularize=True)
    assert terms["loss"].item() == pytest.approx(terms["d_loss"].item() + 4 * 0.7 / 2 * terms["r1"].item(),
                                                 rel=1e-6)
    plain = model.discriminator_terms(x, regularize=False)
    assert "r1" not in plain and plain["loss"].item() == plain["d_loss"].item()


# --- the training kind -----------------------------------------------------------------------------------

def _run(tmp_path, model: str, **options):
    given = dict(size="tiny", batch_size=4, samples=0, threads=1, data="digits", **options)
    options = loop.TrainOptions(**given)
    model_class = MODELS[model]
    train_set, test_set = gmk.data.load("digits"), gmk.data.load("digits", "test")
    config = kinds.kind_of(model_class).config(model_class, train_set.describe(), "tiny", options.conditional)
    context = distributed.start("cpu")
    return loop.Run(model, model_class, config, options, (train_set, test_set), tmp_path, context)


@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_each_step_moves_only_its_network_and_the_ema_follows(tmp_path, model):
    run = _run(tmp_path, model, lr=1e-2, warmup_steps=1)
    m = run.model
    before = {name: value.detach().clone() for name, value in m.named_parameters()}
    x = run.train_x[:4]
    d_terms = m.discriminator_terms(x, None, regularize=False)
    run.optimise(d_terms["loss"], m.discriminator.parameters())
    moved = {name for name, value in m.named_parameters() if not torch.equal(value, before[name])}
    assert moved and all(name.startswith("discriminator.") for name in moved)
    with frozen(m.discriminator):
        run.optimise(m.generator_terms(4)["loss"], m.generator.parameters())
    assert {name for name, value in m.named_parameters() if not torch.equal(value, before[name])} > moved
    assert all(p.grad is None for p in m.discriminator.parameters())  # and the D step's moments stayed

    run = _run(tmp_path, model, lr=1e-2, warmup_steps=1, ema_decay=0.9)
    ema_before = {name: value.clone() for name, value in run.ema.state.items()}
    logged = run.train_step()
    assert set(logged) == {"loss", "d_loss"} and all(math.isfinite(v.item()) for v in logged.values())
    decay = min(0.9, 1 / 10)
    for name, value in run.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(run.ema.state[name], ema_before[name].lerp(value, 1 - decay))
    assert any(not torch.equal(run.model.state_dict()[n], ema_before[n]) for n in ema_before
               if n.startswith("generator."))


def test_gan_training_refuses_bfloat16(tmp_path):
    with pytest.raises(TrainingError, match="float32"):
        _run(tmp_path, "dcgan", dtype="bfloat16")


@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_gmk_train_and_sample_through_the_cli(tmp_path, model, quick_classifier, capsys):
    out = tmp_path / "run"
    argv = ["train", model, "--data", "digits", "--size", "tiny", "--steps", "3", "--batch-size", "4",
            "--eval-every", "2", "--log-every", "1", "--threads", "1", "--samples", "4", "--out", str(out)]
    assert gmk_main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3] and "test_fid" in records[0] and "test_fid" in records[2]
    for record in records[1:]:
        assert all(math.isfinite(record[key]) for key in ("loss", "d_loss", "grad_norm"))
    assert all(math.isfinite(r["test_fid"]) and r["test_fid"] >= 0 for r in records if "test_fid" in r)
    for name in ("checkpoint.pt", "loss.png", "samples.png", "classifier.pt"):
        assert (out / name).is_file()
    assert gmk_main(["sample", str(out), "--n", "6", "--truncation", "0.5", "--out", str(tmp_path / "grid.png")]) == 0
    from PIL import Image
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > 64
    assert gmk_main(["sample", str(out), "--method", "naive"]) == 2
    assert gmk_main(["sample", str(out), "--truncation", "1.5"]) == 2
    assert "--truncation" in capsys.readouterr().err


def test_resume_continues_a_gan_run_exactly(tmp_path, quick_classifier):
    common = dict(data="digits", size="tiny", batch_size=4, log_every=1, eval_every=1000, samples=0, threads=1)
    train("stylegan2", tmp_path / "whole", steps=20, **common)  # crosses an R1 step (16)
    train("stylegan2", tmp_path / "parts", steps=9, **common)
    train("stylegan2", tmp_path / "parts", resume=True, steps=20)
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    for key in ("model_state", "ema_state"):
        for name, value in whole[key].items():
            assert torch.equal(value, parts[key][name]), (key, name)


def test_conditional_gan_run(tmp_path, quick_classifier):
    out = train("dcgan", tmp_path / "run", data="digits", size="tiny", conditional=True, steps=2, batch_size=4,
                eval_every=1, samples=0, threads=1)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["test_fid"]) for r in records)


# --- bad configs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config_class, fields, name", [
    (DCGANConfig, dict(image_size=12), "image_size"),
    (DCGANConfig, dict(image_size=2), "image_size"),
    (DCGANConfig, dict(channels=0), "channels"),
    (DCGANConfig, dict(latent_dim=0), "latent_dim"),
    (DCGANConfig, dict(betas=(0.5, 1.0)), r"betas\[1\]"),
    (DCGANConfig, dict(betas=0.5), "betas"),
    (DCGANConfig, dict(r1_gamma=-1.0), "r1_gamma"),
    (DCGANConfig, dict(num_bins=1), "num_bins"),
    (StyleGAN2Config, dict(resolution=24), "resolution"),
    (StyleGAN2Config, dict(r1_interval=0), "r1_interval"),
    (StyleGAN2Config, dict(style_mixing=1.5), "style_mixing"),
    (StyleGAN2Config, dict(mapping_lr=0.0), "mapping_lr"),
    (StyleGAN2Config, dict(channel_base=16, resolution=32), "channel_base"),
    (StyleGAN2Config, dict(conv_clamp=-1.0), "conv_clamp"),
    (StyleGAN2Config, dict(mbstd_group=0), "mbstd_group"),
    (StyleGAN2Config, dict(augment=-1), "augment"),
    (StyleGAN2Config, dict(in_channels=2), "in_channels"),
])
def test_bad_config_fields_are_named(config_class, fields, name):
    with pytest.raises(ValueError, match=name):
        config_class(**fields)


def test_bad_sample_arguments_are_named():
    model = tiny(DCGAN)
    with pytest.raises(ValueError, match="n must"):
        model.sample(0)
    with pytest.raises(TypeError, match="generator"):
        model.sample(2, generator=0)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, y=torch.zeros(2, dtype=torch.long))


# --- metrics ---------------------------------------------------------------------------------------------

def _with_moments(mean: torch.Tensor, covariance: torch.Tensor, n: int, generator) -> torch.Tensor:
    """n samples (n, F) whose sample mean and covariance (N − 1 divisor) are exactly these."""
    z = torch.randn(n, len(mean), generator=generator, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample covariance I
    return mean + z @ torch.linalg.cholesky(covariance).T


def _fid_scipy(mean_a, cov_a, mean_b, cov_b) -> float:
    from scipy import linalg

    root = linalg.sqrtm(cov_a.numpy() @ cov_b.numpy())
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a.numpy() + cov_b.numpy() - 2 * root.real))


def test_frechet_distance_of_gaussians_with_known_moments():
    generator = torch.Generator().manual_seed(0)
    features = 6
    mean_a, mean_b = torch.randn(features, dtype=torch.float64), torch.randn(features, dtype=torch.float64)
    m = torch.randn(features, features, dtype=torch.float64)
    cov_a, cov_b = m @ m.T + 0.1 * torch.eye(features, dtype=torch.float64), torch.diag(torch.rand(features,
                                                                                       dtype=torch.float64) + 0.5)
    a, b = _with_moments(mean_a, cov_a, 50, generator), _with_moments(mean_b, cov_b, 80, generator)
    expected = _fid_scipy(mean_a, cov_a, mean_b, cov_b)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(b.float(), a.float()) == pytest.approx(expected, rel=1e-5)
    # Diagonal covariances commute: d² = |Δμ|² + Σ (σ_a − σ_b)².
    sd_a, sd_b = torch.rand(features, dtype=torch.float64) + 0.5, torch.rand(features, dtype=torch.float64) + 0.5
    a = _with_moments(mean_a, torch.diag(sd_a ** 2), 40, generator)
    b = _with_moments(mean_b, torch.diag(sd_b ** 2), 40, generator)
    closed = ((mean_a - mean_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(closed.item(), rel=1e-9)


def test_frechet_distance_is_symmetric_and_zero_for_identical_sets():
    a, b = torch.randn(30, 8), torch.randn(45, 8) * 2 + 1
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-9)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    few = torch.randn(5, 8)  # fewer samples than features: singular covariances
    assert metrics.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)
    assert metrics.frechet_distance(few, b) > 0


@pytest.mark.parametrize("a, b, error, match", [
    (torch.randn(5, 3), torch.randn(5, 4), ValueError, "feature count"),
    (torch.randn(1, 3), torch.randn(5, 3), ValueError, "features_a"),
    (torch.randn(5), torch.randn(5, 3), ValueError, "features_a"),
    (torch.randn(5, 3), torch.ones(5, 3, dtype=torch.long), TypeError, "features_b"),
    (torch.full((5, 3), float("nan")), torch.randn(5, 3), ValueError, "non-finite"),
])
def test_frechet_distance_bad_input(a, b, error, match):
    with pytest.raises(error, match=match):
        metrics.frechet_distance(a, b)


def _small_set(num_classes: int, name: str = "small") -> TensorSet:
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (24, 1, 8, 8), generator=generator, dtype=torch.uint8)
    y = torch.arange(24) % max(num_classes, 1)
    return TensorSet(x, y, kind="image", num_bins=5, num_classes=num_classes, name=name)


def test_classifier_features_are_cached_per_data_set(tmp_path, monkeypatch, quick_classifier):
    data = _small_set(2)
    cache = tmp_path / "classifier.pt"
    extract = metrics.classifier_features(data, cache=cache)
    assert cache.is_file() and extract.task == "classes"
    features = extract(data.x)
    assert features.shape == (24, metrics.FEATURES) and features.dtype == torch.float64

    def no_training(*args):
        raise AssertionError("trained again although the cache holds this data's classifier")

    monkeypatch.setattr(metrics, "_train_classifier", no_training)
    assert torch.equal(metrics.classifier_features(data, cache=cache)(data.x), features)
    with pytest.raises(AssertionError, match="trained again"):  # another data set: not this cache
        metrics.classifier_features(_small_set(2, "other"), cache=cache)
    monkeypatch.setattr(metrics, "TRAIN_STEPS", 4)
    with pytest.raises(AssertionError, match="trained again"):  # another training length: not this cache
        metrics.classifier_features(data, cache=cache)


def test_classifier_features_without_labels_learn_rotations(quick_classifier):
    extract = metrics.classifier_features(_small_set(0))
    assert extract.task == "rotation" and extract.classifier.head.out_features == 4
    with pytest.raises(ValueError, match="images must be"):
        extract(torch.zeros(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        extract(torch.zeros(2, 1, 8, 8))


@pytest.mark.slow
def test_the_digits_classifier_learns_the_digits():
    """Half a minute: the classifier the digits FID uses (600 steps) classifies the held-out digits."""
    train_set, test_set = gmk.data.load("digits"), gmk.data.load("digits", "test")
    extract = metrics.classifier_features(train_set)
    logits = extract.classifier.head(extract(test_set.x).float())
    assert (logits.argmax(1) == test_set.y).double().mean() > 0.9
    assert metrics.frechet_distance(extract(train_set.x), extract(test_set.x)) < 10


# --- quality (minutes) -----------------------------------------------------------------------------------

QUALITY = {"dcgan": ["--steps", "4000", "--lr", "2e-4"], "stylegan2": ["--steps", "3000", "--lr", "5e-3"]}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(QUALITY))
def test_digits_fid_falls_below_a_tenth_of_the_untrained_generators(tmp_path, model):
    """The README's runs (each under 10 minutes on one CPU core): FID on the classifier's features."""
    out = tmp_path / model
    assert gmk_main(["train", model, "--data", "digits", "--eval-every", "250", "--threads", "1",
                     "--out", str(out), *QUALITY[model]]) == 0
    fids = [(r["step"], r["test_fid"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "test_fid" in r]
    assert fids[0][0] == 0 and fids[-1][1] < fids[0][1] / 10, fids
