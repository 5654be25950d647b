"""gmk.models.VAE, VQVAE and the VQ-VAE's prior: the bounds (IWAE ≥ ELBO on the same draws, the KL in closed
form), shapes, class conditioning, config checks, and training and sampling through the loop and the CLI.
Tiny configs: seconds each; the quality runs on the digits are marked slow."""
import json
import math

import pytest
import torch

import gmkernels as gmk
from gmkernels.cli import main as gmk_main
from gmkernels.models import MODELS, VAE, VAEConfig
from gmkernels.models.vae import diagonal_gaussian_kl
from gmkernels.training import sample, train

QUICK = dict(size="tiny", batch_size=8, log_every=1, eval_every=1000, samples=0, threads=1)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n, in_channels=1, num_bins=17, size=8, seed=0):
    return torch.randint(0, num_bins, (n, in_channels, size, size), generator=generator(seed))


def tiny_vae(in_channels=1, num_bins=17, image_size=8, num_classes=0, seed=0, **fields):
    torch.manual_seed(seed)
    config = VAEConfig.for_data(in_channels, num_bins, image_size, num_classes, size="tiny")
    return VAE(VAEConfig(**{**config.__dict__, **fields}))


# --- the VAE's bounds ------------------------------------------------------------------------------------

def test_vae_is_registered_as_an_image_model():
    assert MODELS["vae"] is VAE and VAE.kind == "image" and VAE.config_class is VAEConfig


@pytest.mark.parametrize("in_channels, num_bins, num_classes", [(1, 17, 0), (3, 256, 3)])
def test_iwae_bound_is_the_log_mean_weight_and_never_below_the_mean_log_weight(in_channels, num_bins,
                                                                              num_classes):
    model = tiny_vae(in_channels, num_bins, num_classes=num_classes).double()
    x = images(5, in_channels, num_bins)
    y = torch.arange(5) % num_classes if num_classes else None
    weights = model.log_weights(x, y, num_samples=16, generator=generator(1))
    bound = model.log_prob(x, y, num_samples=16, generator=generator(1))
    assert weights.shape == (16, 5) and bound.shape == (5,) and weights.dtype == torch.float64
    torch.testing.assert_close(bound, torch.logsumexp(weights, 0) - math.log(16), rtol=0, atol=1e-12)
    assert (bound >= weights.mean(0)).all()
    assert (bound > weights.mean(0) + 1e-6).all()  # the weights differ: Jensen's gap is positive
    # more samples, a tighter bound on average (Burda et al. thm 1), here on 400 draws each
    many = [model.log_prob(x, y, num_samples=k, generator=generator(2)).mean() for k in (1, 50)]
    assert many[1] > many[0]


def test_one_sample_bound_is_the_elbo_in_expectation():
    """log_prob(num_samples=1) (the KL by the draw itself) and the ELBO with the KL in closed form agree on
    average over 4000 draws within four standard errors; forward's loss is that ELBO of its own draw."""
    model = tiny_vae().double()
    x, draws = images(2), 4000
    with torch.no_grad():
        single = model.log_weights(x, num_samples=draws, generator=generator(3))  # (draws, 2)
        mean, log_std = model.posterior(x)
        kl = diagonal_gaussian_kl(mean, log_std)
        noise = torch.randn((draws, *mean.shape), dtype=torch.float64, generator=generator(4))
        z = mean + log_std.exp() * noise
        log_likelihood = -model._reconstruction_nll(model.decoder_params(z.flatten(0, 1)),
                                                    x.repeat(draws, 1, 1, 1)).view(draws, 2)
        standard_error = ((single.var(0) + log_likelihood.var(0)) / draws).sqrt()
        assert ((single.mean(0) - (log_likelihood.mean(0) - kl)).abs() < 4 * standard_error).all()
        z = mean + log_std.exp() * torch.randn(mean.shape, dtype=torch.float64, generator=generator(5))
        elbo = -model._reconstruction_nll(model.decoder_params(z), x) - kl
        loss = model(x, generator=generator(5))["loss"]
    torch.testing.assert_close(loss, -elbo.mean() / 64, rtol=1e-12, atol=0)


def test_kl_of_the_diagonal_gaussian_equals_its_monte_carlo_estimate():
    g = generator(6)
    mean = torch.randn(3, 4, dtype=torch.float64, generator=g)
    log_std = 0.5 * torch.randn(3, 4, dtype=torch.float64, generator=g)
    posterior = torch.distributions.Normal(mean, log_std.exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(diagonal_gaussian_kl(mean, log_std),
                               torch.distributions.kl_divergence(posterior, prior).sum(1), rtol=1e-12,
                               atol=1e-12)
    z = posterior.sample((200000,))
    monte_carlo = (posterior.log_prob(z) - prior.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(monte_carlo, diagonal_gaussian_kl(mean, log_std), rtol=0, atol=0.03)


def test_forward_terms_add_up_and_reach_every_parameter():
    model = tiny_vae(num_classes=10)
    x, y = images(6), torch.arange(6)
    terms = model(x, y, generator=generator(7))
    assert set(terms) == {"loss", "bits_per_dim", "reconstruction", "kl"}
    torch.testing.assert_close(terms["loss"].detach(), terms["reconstruction"] + terms["kl"])
    torch.testing.assert_close(terms["bits_per_dim"], terms["loss"].detach() / math.log(2))
    assert terms["kl"] >= 0
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    again = model(x, y, generator=generator(7))["loss"]
    assert torch.equal(again, terms["loss"])  # the draw comes from the generator


def test_class_labels_change_the_decoder_and_the_posterior():
    model = tiny_vae(num_classes=10)
    with torch.no_grad():
        model.class_embedding.weight.normal_()
    x = images(2)
    mean_0, _ = model.posterior(x, torch.tensor([0, 0]))
    mean_1, _ = model.posterior(x, torch.tensor([1, 1]))
    assert not torch.allclose(mean_0, mean_1)
    z = torch.zeros(1, model.config.latent_dim)
    params = [model.decoder_params(z, torch.tensor([label])) for label in (0, 1)]
    assert not torch.allclose(*params)


@pytest.mark.parametrize("in_channels, num_bins", [(1, 17), (3, 256)])
def test_samples_and_reconstructions_are_bins_of_the_data_shape(in_channels, num_bins):
    model = tiny_vae(in_channels, num_bins)
    x = images(3, in_channels, num_bins)
    for out in (model.sample(3, generator=generator(8)), model.reconstruct(x)):
        assert out.shape == x.shape and out.dtype == torch.int64
        assert out.min() >= 0 and out.max() < num_bins
    assert torch.equal(model.sample(3, generator=generator(8)), model.sample(3, generator=generator(8)))
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))  # the posterior mean: deterministic


def test_reconstruction_is_the_mixture_mean_of_a_one_component_decoder():
    """K = 1, C = 1: the mixture's mean is the component's mean, so the reconstruction is its nearest bin."""
    model = tiny_vae(mixtures=1)
    x = images(2)
    with torch.no_grad():
        mean, _ = model.posterior(x)
        means = model.decoder_params(mean)[:, 1:2]  # [logit, mean, log-scale]
    expected = torch.round((means.clamp(-1, 1) + 1) * 8).long()
    assert torch.equal(model.reconstruct(x), expected)


@pytest.mark.parametrize("fields, message", [
    (dict(levels=4), "image_size must be a multiple of 16"),
    (dict(latent_dim=0), "latent_dim must be an int >= 1"),
    (dict(mixtures=0), "mixtures must be an int >= 1"),
    (dict(levels=-1), "levels must be an int >= 0"),
    (dict(in_channels=2), "in_channels must be 1 or 3"),
])
def test_bad_vae_config_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**{**dict(in_channels=1, num_bins=17, image_size=8), **fields})


def test_bad_vae_arguments_are_named():
    model = tiny_vae(num_classes=3)
    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="VAE.log_weights: num_samples must be an int >= 1"):
        model.log_weights(x, y, num_samples=0)
    with pytest.raises(TypeError, match="VAE.forward: x must be an integer tensor"):
        model(x.float(), y)
    with pytest.raises(ValueError, match=r"VAE.forward: x must hold bins in \[0, 17\)"):
        model(x + 17, y)
    with pytest.raises(ValueError, match="VAE.reconstruct: y .* is required"):
        model.reconstruct(x)
    with pytest.raises(ValueError, match="VAE.sample: temperature must be a positive"):
        model.sample(2, y=y, temperature=0)
    with pytest.raises(TypeError, match="VAE.sample: generator must be a torch.Generator"):
        model.sample(2, y=y, generator=3)


# --- training through the loop and the CLI -------------------------------------------------------------

def test_vae_trains_and_samples_through_the_cli(tmp_path, capsys):
    out = tmp_path / "vae"
    assert gmk_main(["train", "vae", "--data", "digits", "--size", "tiny", "--steps", "3", "--batch-size",
                     "8", "--eval-every", "1000", "--samples", "4", "--threads", "1", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and math.isfinite(records[-1]["test_bits_per_dim"])
    assert (out / "samples.png").is_file() and (out / "loss.png").is_file()
    assert gmk_main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()


def test_conditional_vae_run_resumes_exactly(tmp_path):
    whole = train("vae", tmp_path / "whole", data="digits", steps=4, conditional=True, **QUICK)
    train("vae", tmp_path / "half", data="digits", steps=2, conditional=True, **QUICK)
    half = train("vae", tmp_path / "half", resume=True, steps=4)
    states = [gmk.training.checkpoint.load(run)["model_state"] for run in (whole, half)]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])
    assert sample(half, n=3, out=tmp_path / "s.png").is_file()
