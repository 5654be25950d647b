"""gmk.models.VAE, VQVAE and the VQ-VAE's prior: the bounds (IWAE ≥ ELBO on the same draws, the KL in closed
form), shapes, class conditioning, config checks, and training and sampling through the loop and the CLI.
Tiny configs: seconds each; the quality runs on the digits are marked slow."""
import dataclasses
import json
import math

import pytest
import torch

import gmkernels as gmk
from gmkernels.cli import main as gmk_main
from gmkernels.models import MODELS, VAE, VQVAE, VAEConfig, VQVAEConfig, VQVAEPrior, VQVAEPriorConfig
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


# --- the VQ-VAE ------------------------------------------------------------------------------------------

def tiny_vqvae(in_channels=1, num_bins=17, image_size=8, seed=0, **fields):
    torch.manual_seed(seed)
    config = VQVAEConfig.for_data(in_channels, num_bins, image_size, size="tiny")
    return VQVAE(VQVAEConfig(**{**config.__dict__, **fields}))


def test_vqvae_models_are_registered():
    assert MODELS["vqvae"] is VQVAE and VQVAE.config_class is VQVAEConfig and VQVAE.kind == "vqvae"
    assert MODELS["vqvae-prior"] is VQVAEPrior and VQVAEPrior.config_class is VQVAEPriorConfig


@pytest.mark.parametrize("in_channels, num_bins, levels, local_codes", [(1, 17, 1, False), (3, 256, 2, False),
                                                                       (1, 17, 1, True)])
def test_encode_gives_the_nearest_codes_and_decode_the_image_shape(in_channels, num_bins, levels, local_codes):
    model = tiny_vqvae(in_channels, num_bins, levels=levels, local_codes=local_codes).double()
    x = images(3, in_channels, num_bins)
    indices = model.encode(x)
    size = 8 // 2 ** levels
    assert indices.shape == (3, size, size) and indices.dtype == torch.int64
    with torch.no_grad():
        z_e = model.encoder(gmk.models.vqvae.scale_bins(x, num_bins, torch.float64))
    positions = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    expected = torch.cdist(positions, model.codebook).argmin(1).view(3, size, size)
    assert torch.equal(indices, expected)
    decoded = model.decode(indices)
    assert decoded.shape == x.shape and decoded.dtype == torch.int64
    assert decoded.min() >= 0 and decoded.max() < num_bins
    assert torch.equal(model.reconstruct(x), decoded)


def test_local_codes_depend_on_their_own_patch_only():
    model = tiny_vqvae(local_codes=True, levels=2).double()
    with torch.no_grad():
        model.quantizer.codebook.copy_(torch.randn(8, 4, dtype=torch.float64, generator=generator(12)))
    x = images(1)
    changed = x.clone()
    changed[0, 0, 4:8, 0:4] = (changed[0, 0, 4:8, 0:4] + 9) % 17  # the patch of code (1, 0)
    before, after = model.encode(x), model.encode(changed)
    with torch.no_grad():
        z = [model.encoder(gmk.models.vqvae.scale_bins(v, 17, torch.float64)) for v in (x, changed)]
    assert not torch.allclose(z[0][..., 1, 0], z[1][..., 1, 0])
    z[0][..., 1, 0] = z[1][..., 1, 0]
    assert torch.equal(z[0], z[1])  # every other position's encoding is untouched
    assert torch.equal(before[0, 0], after[0, 0]) and torch.equal(before[:, :, 1], after[:, :, 1])


def test_decode_rounds_the_decoders_output_to_bins():
    model = tiny_vqvae()
    indices = torch.randint(0, 8, (2, 4, 4), generator=generator(9))
    with torch.no_grad():
        continuous = model.decode_continuous(indices)
    assert torch.equal(model.decode(indices), torch.round(continuous.clamp(0, 1) * 16).long())


def test_vqvae_forward_terms():
    model = tiny_vqvae()
    x = images(4)
    terms = model(x)
    assert set(terms) == {"loss", "reconstruction", "commitment", "perplexity"}
    with torch.no_grad():
        target = x.double() / 16
        reconstruction = model.decode_continuous(model.encode(x)).double()
    torch.testing.assert_close(terms["loss"].detach(), terms["reconstruction"] + terms["commitment"])
    assert 1 <= terms["perplexity"] <= model.config.num_codes
    model.eval()
    terms = model(x)
    torch.testing.assert_close(terms["reconstruction"].double(), ((reconstruction - target) ** 2).mean(),
                               rtol=1e-5, atol=1e-6)
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_eval_mode_leaves_the_codebook_and_encode_never_moves_it():
    model = tiny_vqvae()
    x = images(4)
    before = model.codebook.clone()
    model.encode(x)
    model.eval()
    model(x)
    assert torch.equal(model.codebook, before)
    model.train()
    model(x)
    assert not torch.equal(model.codebook, before)  # training mode: the EMA update


@pytest.mark.parametrize("fields, error, message", [
    (dict(num_classes=3), ValueError, "num_classes must be 0"),
    (dict(levels=4), ValueError, "image_size must be a multiple of 16"),
    (dict(num_codes=0), ValueError, "num_codes must be an int >= 1"),
    (dict(commitment=-1.0), ValueError, "commitment must be a number"),
    (dict(ema="yes"), TypeError, "ema must be a bool"),
    (dict(local_codes=1), TypeError, "local_codes must be a bool"),
])
def test_bad_vqvae_config_fields_are_named(fields, error, message):
    with pytest.raises(error, match=message):
        VQVAEConfig(**{**dict(in_channels=1, num_bins=17, image_size=8), **fields})


def test_bad_decode_arguments_are_named():
    model = tiny_vqvae()
    with pytest.raises(TypeError, match="VQVAE.decode: indices must be an int64 tensor"):
        model.decode(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="VQVAE.decode: indices must be \\(N, h, w\\)"):
        model.decode(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"VQVAE.decode: indices must be codes in \[0, 8\)"):
        model.decode(torch.full((1, 4, 4), 8))
    with pytest.raises(ValueError, match="VQVAE.forward: y was given but the model is unconditional"):
        model(images(2), torch.tensor([0, 1]))


# --- the prior --------------------------------------------------------------------------------------------

def tiny_prior(num_classes=0):
    vqvae = VQVAEConfig.for_data(1, 17, 8, size="tiny")
    return VQVAEPrior(VQVAEPriorConfig.for_vqvae(vqvae, num_classes, size="tiny"))


def test_prior_probabilities_over_the_code_bins_sum_to_one():
    """The prior's probabilities of all K² code maps of 1×2 codes (its convolutional network on a smaller
    map: a softmax over the K codes per position, chained in raster order) sum to one."""
    model = tiny_prior(num_classes=10).double().eval()
    prior = model.prior
    k = model.config.vqvae.num_codes
    maps = torch.cartesian_prod(torch.arange(k), torch.arange(k)).view(-1, 1, 1, 2)  # every 1×2 map
    labels = torch.full((maps.shape[0],), 3)
    with torch.no_grad():
        inputs = gmk.models._autoregressive.scale_bins(maps, k, torch.float64)
        logits = prior.logits(prior.network(inputs, labels))
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), maps, reduction="none")
    total = (-nll.sum((1, 2, 3))).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert logits.shape[2] == k


def test_prior_forward_is_the_pixelcnn_on_the_codes():
    model = tiny_prior().eval()
    x = images(3)
    codes = model.vqvae.encode(x)[:, None]
    torch.testing.assert_close(model(x)["loss"], model.prior(codes)["loss"])
    torch.testing.assert_close(model.log_prob(x), model.prior.log_prob(codes))
    samples = model.sample(2, generator=generator(10))
    assert samples.shape == (2, 1, 8, 8) and samples.dtype == torch.int64
    codes = model.sample_codes(2, generator=generator(10))
    assert torch.equal(samples, model.vqvae.decode(codes))


def test_prior_keeps_the_vqvae_frozen_in_eval_mode():
    model = tiny_prior().train()
    assert model.prior.training and not model.vqvae.training
    assert not any(p.requires_grad for p in model.vqvae.parameters())
    codebook = model.vqvae.codebook.clone()
    model(images(4))["loss"].backward()
    assert torch.equal(model.vqvae.codebook, codebook)


def test_prior_config_checks_the_code_maps():
    vqvae = VQVAEConfig.for_data(1, 17, 8, size="tiny")
    with pytest.raises(ValueError, match="prior must model the code maps"):
        VQVAEPriorConfig(vqvae=vqvae, prior=gmk.models.GatedPixelCNNConfig.for_data(1, 17, 8, size="tiny"))
    config = VQVAEPriorConfig.for_vqvae(vqvae, 10, size="tiny")
    assert VQVAEPriorConfig(**dataclasses.asdict(config)) == config  # as a checkpoint rebuilds it


def test_vqvae_then_prior_then_samples_through_the_cli(tmp_path, capsys):
    vq, prior = tmp_path / "vq", tmp_path / "prior"
    common = ["--data", "digits", "--size", "tiny", "--steps", "3", "--batch-size", "8", "--eval-every",
              "1000", "--samples", "4", "--threads", "1"]
    assert gmk_main(["train", "vqvae", *common, "--out", str(vq)]) == 0
    record = json.loads((vq / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"reconstruction", "commitment", "perplexity", "test_reconstruction"} <= set(record)
    assert (vq / "samples.png").is_file()
    assert gmk_main(["train", "vqvae-prior", "--vqvae", str(vq), "--conditional", *common,
                     "--out", str(prior)]) == 0
    record = json.loads((prior / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["test_bits_per_dim"])
    # the prior's checkpoint holds the VQ-VAE's weights: sampling needs no other folder
    weights = gmk.training.checkpoint.load(vq)["ema_state"]
    state = gmk.training.checkpoint.load(prior)
    assert all(torch.equal(state["model_state"]["vqvae." + name], value) for name, value in weights.items())
    (vq / "checkpoint.pt").unlink()
    assert gmk_main(["sample", str(prior), "--n", "4", "--out", str(tmp_path / "codes.png")]) == 0
    assert (tmp_path / "codes.png").is_file()
    assert gmk_main(["sample", str(vq), "--n", "4"]) == 2  # its checkpoint is gone
    capsys.readouterr()


def test_vqvae_option_errors_are_named(tmp_path, capsys):
    assert gmk_main(["train", "vqvae-prior", "--steps", "1", "--out", str(tmp_path / "a")]) == 2
    assert "vqvae-prior needs --vqvae DIR" in capsys.readouterr().err
    assert gmk_main(["train", "vae", "--vqvae", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "vae takes none" in capsys.readouterr().err
    train("vae", tmp_path / "vae", data="digits", steps=1, **QUICK)
    assert gmk_main(["train", "vqvae-prior", "--vqvae", str(tmp_path / "vae"),
                     "--out", str(tmp_path / "c")]) == 2
    assert "holds a vae run, not a vqvae one" in capsys.readouterr().err
    assert gmk_main(["train", "vqvae", "--conditional", "--out", str(tmp_path / "d")]) == 2
    assert "vqvae is unconditional" in capsys.readouterr().err
    assert gmk_main(["train", "vqvae", "--dtype", "bfloat16", "--size", "tiny",
                     "--out", str(tmp_path / "e")]) == 2
    assert "float32 only" in capsys.readouterr().err


# --- quality on the digits (minutes) -------------------------------------------------------------------

@pytest.mark.slow
def test_vae_on_digits_beats_the_marginal_model(tmp_path):
    """The README's run: `gmk train vae --data digits` (2000 steps; about a minute of one idle CPU thread):
    the test ELBO is under the per-pixel marginal model's 2.42 bits/dim, and the importance-weighted bound
    (k = 100) under the ELBO."""
    out = tmp_path / "vae"
    assert gmk_main(["train", "vae", "--data", "digits", "--threads", "1", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records)
    elbo = records[-1]["test_bits_per_dim"]
    assert elbo < 2.42
    state = gmk.training.checkpoint.load(out)
    model = VAE(VAEConfig(**state["config"]))
    model.load_state_dict(state["ema_state"])
    x = gmk.data.load("digits", "test").x
    with torch.no_grad():
        bound = torch.cat([model.eval().log_prob(chunk, num_samples=100, generator=generator(0))
                           for chunk in x.split(100)])
    assert -bound.mean().item() / (64 * math.log(2)) < elbo


@pytest.mark.slow
def test_vqvae_reconstructs_the_digits_and_its_prior_samples_them(tmp_path):
    """The README's runs: `gmk train vqvae`, then `gmk train vqvae-prior --vqvae DIR`, then `gmk sample`:
    the test reconstructions' mean squared error (bins on [0, 1]) is under a tenth of the test images'
    variance; the prior's test bits per code are under the uniform prior's log2(num_codes)."""
    vq, prior = tmp_path / "vqvae", tmp_path / "vqvae-prior"
    assert gmk_main(["train", "vqvae", "--data", "digits", "--threads", "1", "--out", str(vq)]) == 0
    state = gmk.training.checkpoint.load(vq)
    model = VQVAE(VQVAEConfig(**state["config"]))
    model.load_state_dict(state["ema_state"])
    x = gmk.data.load("digits", "test").x
    target = x.double() / 16
    error = ((model.eval().reconstruct(x).double() / 16 - target) ** 2).mean()
    assert error < target.var() / 10
    assert gmk_main(["train", "vqvae-prior", "--vqvae", str(vq), "--data", "digits", "--threads", "1",
                     "--out", str(prior)]) == 0
    record = json.loads((prior / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test_bits_per_dim"] < math.log2(model.config.num_codes)
    assert gmk_main(["sample", str(prior), "--n", "16"]) == 0
    assert (prior / "sample.png").is_file()


def test_the_benchmarks_one_hot_quantizer_does_the_same_work():
    """benchmarks/models/vqvae.py's rosinality-style peer: the same indices, loss and EMA codebook as
    gmk.nn.VectorQuantizer on the same input and state; every peer of its --quick case runs."""
    from benchmarks.models.vqvae import OneHotQuantizer, cases

    torch.manual_seed(0)
    fused = gmk.nn.VectorQuantizer(8, 4, restart_dead_codes=False).double()
    one_hot = OneHotQuantizer(gmk.nn.VectorQuantizer(8, 4, restart_dead_codes=False).double())
    one_hot.q.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=generator(11))
    outputs = [quantizer(x) for quantizer in (fused, one_hot)]
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # VectorQuantizer takes the statistics in float32 (its codebook is a float32 buffer)
    torch.testing.assert_close(one_hot.q.codebook, fused.codebook, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(one_hot.last_perplexity.double(), fused.last_perplexity.double())
    for case in cases("cpu", quick=True):
        for peer in case.peers.values():
            assert torch.isfinite(peer())
