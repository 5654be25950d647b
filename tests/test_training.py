"""The training machinery: gmk.data's sets and splits, the loop's EMA, batch order, evaluation, exact
resume, DDP against one process at the same global batch, bfloat16, pictures and .wav files."""
import json
import math
import socket
import wave

import numpy as np
import pytest
import torch

import gmkernels as gmk
from gmkernels.training import checkpoint, loop, pictures, train

# Tiny runs: no samples, one evaluation at the end, one thread (the loop's default would follow the load).
QUICK = dict(size="tiny", batch_size=4, log_every=1, eval_every=1000, samples=0, threads=1)


# --- data -------------------------------------------------------------------------------------------

def test_digits_split_is_fixed_and_complete():
    from sklearn.datasets import load_digits

    train_set, test_set = gmk.data.load("digits"), gmk.data.load("digits", "test")
    assert (len(train_set), len(test_set)) == (1500, 297)
    assert train_set.describe() == {"name": "digits", "kind": "image", "in_channels": 1, "num_bins": 17,
                                    "image_size": 8, "num_classes": 10, "sample_rate": None}
    x, y = train_set[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.uint8 and y.dtype == torch.long
    everything = torch.cat([train_set.x, test_set.x]).flatten(1)
    original = torch.as_tensor(load_digits().images, dtype=torch.uint8).flatten(1)
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, original.tolist()))
    assert torch.equal(gmk.data.load("digits", "test").x, test_set.x)


@pytest.mark.parametrize("name, size", [("shapes", 16), ("shapes32", 32)])
def test_shapes_draw_one_shape_on_a_dark_background(name, size):
    data = gmk.data.load(name, "test")
    assert data.describe()["image_size"] == size and data.x.shape == (512, 3, size, size)
    assert torch.equal(data.x, gmk.data.load(name, "test").x)
    bright = data.x.amax(1) >= 96  # the shape; the background is darker than 48 in every channel
    assert bool((data.x.amax(1)[~bright] <= 48).all())
    assert bool(bright.flatten(1).any(1).all()) and bool((~bright).flatten(1).any(1).all())
    # A square (class 1) fills the box of its rows and columns; circles and triangles do not.
    box = bright.any(2).sum(1) * bright.any(1).sum(1)
    fills_box = bright.sum((1, 2)) == box
    assert bool(fills_box[data.y == 1].all()) and not bool(fills_box[data.y != 1].any())


def test_tones_are_sums_of_a_few_sines():
    data = gmk.data.load("tones", "test")
    assert data.x.shape == (256, 512) and data.sample_rate == 8000 and data.num_bins == 256
    audio = gmk.mu_law_decode(data.x[:16], dtype=torch.float64)
    spectrum = torch.fft.rfft(audio * torch.hann_window(512, dtype=torch.float64)).abs()
    freqs = torch.fft.rfftfreq(512, 1 / 8000)
    energy = spectrum ** 2
    band = (freqs >= 80) & (freqs <= 1020)
    assert bool((energy[:, band].sum(1) > 0.9 * energy.sum(1)).all())


def test_a_folder_of_images_and_a_npy_array(tmp_path):
    from PIL import Image

    grey = torch.randint(0, 256, (12, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(grey):
        Image.fromarray(image.numpy()).save(folder / f"{index:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    train_set, test_set = gmk.data.load(folder), gmk.data.load(folder, "test")
    assert (len(train_set), len(test_set), train_set.in_channels, train_set.num_bins) == (11, 1, 1, 256)
    loaded = torch.cat([train_set.x, test_set.x])[:, 0]
    assert sorted(map(tuple, loaded.flatten(1).tolist())) == sorted(map(tuple, grey.flatten(1).tolist()))

    rgb = np.random.default_rng(0).integers(0, 32, (10, 6, 6, 3), dtype=np.int16)
    np.save(tmp_path / "rgb.npy", rgb)
    data = gmk.data.load(tmp_path / "rgb.npy")
    assert (data.in_channels, data.image_size, data.num_bins, len(data)) == (3, 6, int(rgb.max()) + 1, 9)
    channels_first = torch.from_numpy(rgb).permute(0, 3, 1, 2)
    assert any(torch.equal(data.x[0].long(), image.long()) for image in channels_first)


@pytest.mark.parametrize("case, message", [
    ("name", "unknown data 'bogus'"),
    ("float", "integer array"),
    ("not square", "H = W"),
    ("negative", "non-negative"),
    ("sizes", "one size"),
    ("empty folder", "no PNG or JPEG"),
    ("split", "split must be"),
])
def test_bad_data_is_named(tmp_path, case, message):
    from PIL import Image

    arrays = {"float": np.zeros((2, 4, 4), np.float32), "not square": np.zeros((2, 4, 5), np.uint8),
              "negative": -np.ones((2, 4, 4), np.int32)}
    source, split = "bogus", "train"
    if case in arrays:
        source = tmp_path / "x.npy"
        np.save(source, arrays[case])
    elif case == "sizes":
        source = tmp_path
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "b.png")
    elif case == "empty folder":
        source = tmp_path
    elif case == "split":
        source, split = "digits", "valid"
    with pytest.raises(ValueError, match=message):
        gmk.data.load(source, split)


# --- the loop's parts --------------------------------------------------------------------------------

def test_ema_follows_the_formula():
    module = torch.nn.Linear(3, 2).double()
    module.register_buffer("count", torch.tensor(0))
    ema = loop.EMA(module, decay=0.9)
    expected = module.weight.detach().clone()
    for step in range(30):
        with torch.no_grad():
            module.weight.add_(torch.randn(2, 3, dtype=torch.float64))
            module.count += 1
        ema.update(module, step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * module.weight.detach()
    torch.testing.assert_close(ema.state["weight"], expected, rtol=1e-12, atol=1e-12)
    assert ema.state["count"].item() == 30
    own = module.weight.detach().clone()
    with ema.weights_in(module):
        assert torch.equal(module.weight, ema.state["weight"])
    assert torch.equal(module.weight, own)


def test_batch_order_is_a_permutation_per_epoch():
    order = loop.BatchOrder(count=10, batch_size=3, seed=5)
    for epoch in range(2):
        seen = torch.cat([order(epoch * 3 + position) for position in range(3)])
        assert len(set(seen.tolist())) == 9
    assert not torch.equal(order(0), order(3))
    assert torch.equal(order(4), loop.BatchOrder(10, 3, 5)(4))


def test_image_grid_places_each_image():
    images = torch.arange(5)[:, None, None, None].expand(5, 1, 2, 2)  # image i is all bin i
    grid = pictures.image_grid(images, num_bins=5, cell=4)  # scale 2: cells 4x4 plus a 1-pixel frame
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    for index in range(5):
        top, left = 1 + (index // 3) * 5, 1 + (index % 3) * 5
        assert bool((grid[top:top + 4, left:left + 4] == round(index * 255 / 4)).all())
    assert grid[0, 0, 0] == 128 and grid[5, 2, 0] == 128


def test_wav_holds_the_clips_with_gaps(tmp_path):
    audio = torch.linspace(-1, 1, 2 * 100).view(2, 100)
    pictures.save_wav(audio, 1000, tmp_path / "a.wav", gap_seconds=0.01)
    with wave.open(str(tmp_path / "a.wav")) as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate()) == (1, 2, 1000)
        pcm = torch.from_numpy(np.frombuffer(file.readframes(file.getnframes()), np.int16).copy())
    assert pcm.numel() == 210 and bool((pcm[100:110] == 0).all())
    torch.testing.assert_close(pcm[110:].float() / 32767, audio[1], atol=1 / 32767, rtol=0)


# --- runs ---------------------------------------------------------------------------------------------

def parameters(directory, key="model_state"):
    return checkpoint.load(directory)[key]


@pytest.mark.parametrize("model, data", [("gated_pixelcnn", "digits"), ("wavenet", "tones")])
def test_resume_continues_exactly(tmp_path, model, data):
    """2K steps in one run equal K steps, then --resume to 2K (bitwise, one thread)."""
    train(model, tmp_path / "whole", data=data, steps=4, **QUICK)
    train(model, tmp_path / "halves", data=data, steps=2, **QUICK)
    train(model, tmp_path / "halves", resume=True, data=data, steps=4, **QUICK)
    for key in ("model_state", "ema_state"):
        whole, halves = parameters(tmp_path / "whole", key), parameters(tmp_path / "halves", key)
        assert all(torch.equal(whole[name], halves[name]) for name in whole), key
    whole = checkpoint.load(tmp_path / "whole")["optimizer_state"]["state"]
    halves = checkpoint.load(tmp_path / "halves")["optimizer_state"]["state"]
    assert all(torch.equal(whole[i]["exp_avg_sq"], halves[i]["exp_avg_sq"]) for i in whole)
    records = [json.loads(line) for line in (tmp_path / "halves" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3, 4]


def _distributed_worker(rank, port, out):
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    train("wavenet", out, steps=3, **{**QUICK, "batch_size": 8, "eval_every": 2})


def test_two_processes_equal_one_at_the_same_global_batch(tmp_path):
    """DDP over 2 gloo processes (4 examples each) reaches the parameters and EMA of one process with
    batches of 8, within float32 rounding; the test bits/sample too."""
    import torch.multiprocessing as mp

    train("wavenet", tmp_path / "one", steps=3, **{**QUICK, "batch_size": 8, "eval_every": 2})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(port, str(tmp_path / "two")), nprocs=2, join=True)
    for key in ("model_state", "ema_state"):
        one, two = parameters(tmp_path / "one", key), parameters(tmp_path / "two", key)
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    one, two = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                for run in ("one", "two"))
    assert [record["step"] for record in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        if "test_bits_per_sample" in a:
            assert b["test_bits_per_sample"] == pytest.approx(a["test_bits_per_sample"], rel=1e-5)


def test_test_bits_per_dim_is_the_ema_models_mean_over_the_test_split(tmp_path):
    train("pixelcnnpp", tmp_path, data="digits", steps=2, **{**QUICK, "batch_size": 100})
    state = checkpoint.load(tmp_path)
    model = gmk.models.MODELS["pixelcnnpp"](gmk.models.PixelCNNppConfig(**state["config"]))
    model.load_state_dict(state["ema_state"])
    model.eval()
    test = gmk.data.load("digits", "test")
    with torch.no_grad():
        expected = model.log_prob(test.x).double().neg().sum() / (test.x[0].numel() * len(test) * math.log(2))
    recorded = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["test_bits_per_dim"]
    assert recorded == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("model, data", [("pixelcnnpp", "digits"), ("wavenet", "tones")])
def test_bfloat16_runs_the_forward_in_bfloat16_and_keeps_float32_weights(tmp_path, model, data):
    for dtype in ("float32", "bfloat16"):
        train(model, tmp_path / dtype, data=data, steps=2, dtype=dtype, **QUICK)
    state = checkpoint.load(tmp_path / "bfloat16")
    weights = state["model_state"].values()
    assert all(value.dtype == torch.float32 for value in weights if value.is_floating_point())
    high, low = ([json.loads(line) for line in (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()]
                 for dtype in ("float32", "bfloat16"))
    assert low[0]["loss"] != high[0]["loss"] and low[0]["loss"] == pytest.approx(high[0]["loss"], rel=2e-2)
    assert all(math.isfinite(value) for value in low[-1].values())


def test_epochs_conditioning_and_pictures(tmp_path):
    """--epochs counts whole batches of the training split; a class-conditional model samples one class
    per grid cell; loss.png and samples.png are written."""
    from PIL import Image

    train("gated_pixelcnn", tmp_path, data="digits", epochs=1, conditional=True,
          **{**QUICK, "batch_size": 500, "samples": 4})
    state = checkpoint.load(tmp_path)
    assert state["step"] == 3 and state["config"]["num_classes"] == 10
    with Image.open(tmp_path / "samples.png") as grid:
        assert grid.size == (2 * 65 + 1, 2 * 65 + 1)
    with Image.open(tmp_path / "loss.png") as plot:
        assert plot.size[0] > 100
