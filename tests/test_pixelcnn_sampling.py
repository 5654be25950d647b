"""Cached sampling of the image models (issue 17, Ramachandran et al. 2017): the same images as naive
sampling for the same generator, for every model, grey and RGB, with and without class conditioning, on
many seeds, odd image sizes and several resolutions (PixelCNN++'s stride-2 stages); the same through CUDA
graphs (on CUDA, and emulated on CPU: recorded aten calls replayed on the same tensors)."""
import functools
import weakref

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import gmkernels as gmk
from gmkernels.models import _autoregressive
from gmkernels.models.pixelcnn_pp import CachedPixelCNNpp as PixelCNNppCached
from gmkernels.models.vqvae import VQVAEPrior, VQVAEPriorConfig
from gmkernels.training import checkpoint as gmk_checkpoint
from gmkernels.models import (GatedPixelCNN, GatedPixelCNNConfig, PixelCNN, PixelCNNConfig, PixelCNNpp,
                              PixelCNNppConfig)


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def build(name, in_channels, num_classes, dtype=torch.float64, **sizes):
    """A small model with every parameter doubled (sharper distributions: a wrong output moves samples)."""
    common = dict(in_channels=in_channels, num_bins=8, image_size=5, num_classes=num_classes)
    if name == "pixelcnn":
        defaults = dict(channels=4 * in_channels, residual_blocks=2, first_kernel_size=5,
                        output_channels=4 * in_channels, dropout=0.1)
        model = PixelCNN(PixelCNNConfig(**common, **{**defaults, **sizes}))
    elif name == "gated_pixelcnn":
        defaults = dict(channels=4 * in_channels, layers=3, kernel_size=5, output_channels=4 * in_channels,
                        dropout=0.1)
        model = GatedPixelCNN(GatedPixelCNNConfig(**common, **{**defaults, **sizes}))
    else:
        defaults = dict(filters=4, resnets=2, stages=3, mixture_components=2, dropout=0.1)
        model = PixelCNNpp(PixelCNNppConfig(**common, **{**defaults, **sizes}))
    model = model.to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(2.0)
    return model


def both_methods(model, n, seed, **kwargs):
    return [model.sample(n, generator=torch.Generator().manual_seed(seed), method=method, **kwargs)
            for method in ("naive", "cached")]


MODELS = ("pixelcnn", "gated_pixelcnn", "pixelcnnpp")
DATA = {"grey": (1, 0), "rgb": (3, 0), "grey-conditional": (1, 3), "rgb-conditional": (3, 2)}


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("name", MODELS)
def test_cached_sampling_gives_the_naive_images(name, data):
    in_channels, num_classes = DATA[data]
    model = build(name, in_channels, num_classes)
    y = torch.arange(3) % num_classes if num_classes else None
    for seed in range(6):
        naive, cached = both_methods(model, 3, seed, y=y)
        assert torch.equal(naive, cached), f"seed {seed}"
        assert naive.unique().numel() > 2  # the samples vary: a wrong cache would show


@pytest.mark.parametrize("size", [1, 2, 4, 7, 9])
@pytest.mark.parametrize("name", MODELS)
def test_cached_sampling_at_other_image_sizes(name, size):
    """Odd sizes leave a half-width column and row at PixelCNN++'s coarser resolutions; size 1 is the first
    pixel alone (the zero rows of the shifts)."""
    model = build(name, 3, 0)
    for seed in range(2):
        naive, cached = both_methods(model, 2, seed, image_size=size)
        assert torch.equal(naive, cached), f"seed {seed}"


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_cached_pixelcnnpp_at_each_number_of_stages(stages):
    model = build("pixelcnnpp", 3, 2, stages=stages, resnets=1)
    y = torch.tensor([0, 1])
    for seed in range(2):
        naive, cached = both_methods(model, 2, seed, y=y, image_size=9)
        assert torch.equal(naive, cached), f"seed {seed}"


@pytest.mark.parametrize("name", MODELS)
def test_cached_sampling_in_float32_and_at_a_temperature(name):
    """float32: the two methods' outputs differ by rounding only, which moves no sample on these seeds."""
    model = build(name, 3, 0, dtype=torch.float32)
    for seed, temperature in ((0, 1.0), (1, 0.7), (2, 1.6)):
        naive, cached = both_methods(model, 4, seed, temperature=temperature)
        assert torch.equal(naive, cached), f"seed {seed}, temperature {temperature}"


OP_BACKENDS = [backend for backend in gmk.available_backends("cpu") if backend in ("cpu", "triton")]


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_cached_sampling_on_the_cached_conv_op(name, backend, monkeypatch):
    """The path GPUs take: every cached convolution through gmk's cached_conv2d op (here its CPU kernel or
    Triton under the interpreter) rather than ATen's."""
    original = _autoregressive.CachedConv.__init__

    def on_the_op(self, *args):
        original(self, *args)
        self.backend, self.aten = backend, False

    monkeypatch.setattr(_autoregressive.CachedConv, "__init__", on_the_op)
    dtype = torch.float64 if backend == "cpu" else torch.float32
    model = build(name, 3, 2, dtype=dtype)
    y = torch.tensor([1, 0])
    for seed in range(2):
        naive, cached = both_methods(model, 2, seed, y=y, image_size=5)
        assert torch.equal(naive, cached), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_cached_sampling_on_cuda(name):
    model = build(name, 3, 2, dtype=torch.float32).cuda()
    y = torch.tensor([1, 0], device="cuda")
    for seed in range(3):
        naive, cached = [model.sample(2, y=y, generator=torch.Generator("cuda").manual_seed(seed),
                                      method=method) for method in ("naive", "cached")]
        assert torch.equal(naive, cached), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_cuda_graphs_give_the_eager_and_naive_images_on_cuda(name, monkeypatch):
    """graph=True (the CUDA graphs of the per-pixel steps and row updates) against graph=False and naive,
    on an image tall enough that every kind of row of 3-stage PixelCNN++ is captured, then replayed; torch
    checks that no tensor a graph reads from outside its pool is freed before a replay."""
    monkeypatch.setattr(_autoregressive, "cuda_graph", functools.partial(_autoregressive.cuda_graph,
                                                                         check_inputs=True))
    model = build(name, 3, 2, dtype=torch.float32).cuda()
    y = torch.tensor([1, 0], device="cuda")
    for seed in range(2):
        images = {}
        for method, graph in (("naive", False), ("cached", False), ("cached", True), ("cached", "auto")):
            generator = torch.Generator("cuda").manual_seed(seed)
            images[method, graph] = model.sample(2, y=y, image_size=11, generator=generator, method=method,
                                                 graph=graph)
        naive = images.pop(("naive", False))
        assert all(torch.equal(naive, other) for other in images.values()), f"seed {seed}"


# --- CUDA graphs emulated on CPU ----------------------------------------------------------------------------

# What a stream capture refuses or records wrongly: a value read back to the host, a data-dependent shape,
# random numbers (the noise is drawn outside the graphs), and a host tensor copied in: a Python list index
# (lift_fresh of a list; a Python scalar assigned, lift_fresh of a 0-d tensor here, is a fill on CUDA).
NOT_IN_A_GRAPH = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                  torch.ops.aten.uniform_.default, torch.ops.aten.normal_.default,
                  torch.ops.aten.random_.default, torch.ops.aten.bernoulli_.float,
                  torch.ops.aten.bernoulli.default}


class Made:
    """A recorded call's argument: leaf ``leaf`` of what recorded call ``call`` returned."""

    def __init__(self, call: int, leaf: int):
        self.call, self.leaf = call, leaf


class RecordedGraph(TorchDispatchMode):
    """A CUDA graph's semantics on CPU: ``step`` runs once while its aten calls are recorded; a replay runs
    the recorded calls again (the Python code is not run again). Like a graph it keeps the tensors its calls
    made (its memory pool: functional results are copied back into them; views and in-place results are
    made again from their inputs); it holds the tensors it reads from outside weakly: one freed since the
    capture fails the replay (on CUDA its memory could hold anything by then, or, from another graph's
    pool, torch's check_input_liveness fails it)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.made = {}  # id of a tensor a recorded call returned -> Made
        self.seen = []  # every tensor seen while recording, so that no id is reused meanwhile

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        assert func not in NOT_IN_A_GRAPH, f"{func} in a captured step"
        assert func != torch.ops.aten.lift_fresh.default or args[0].dim() == 0, "lift_fresh of a host tensor"
        out = func(*args, **kwargs)
        leaves = pytree.tree_leaves(out)
        assert all(isinstance(t, torch.Tensor) for t in leaves), f"{func} returns a host value"
        schema = func._schema
        if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            kind = "write"
        else:
            kind = "view" if any(r.alias_info is not None for r in schema.returns) else "new"
        # lift_fresh's input, a Python scalar made a tensor outside the mode, is a constant of the graph
        constant = func == torch.ops.aten.lift_fresh.default
        inputs = (args, kwargs) if constant else pytree.tree_map(self._reference, (args, kwargs))
        for leaf, t in enumerate(leaves):
            self.made[id(t)] = Made(len(self.calls), leaf)
        self.seen += leaves
        self.calls.append((func, kind, inputs, leaves if kind == "new" else None))
        return out

    def _reference(self, value):
        if not isinstance(value, torch.Tensor):
            return value
        self.seen.append(value)
        if id(value) in self.made:
            return self.made[id(value)]
        return weakref.ref(value)

    def end(self) -> None:
        self.made, self.seen = {}, []

    def replay(self) -> None:
        results = []

        def resolve(value):
            if isinstance(value, Made):
                return results[value.call][value.leaf]
            if isinstance(value, weakref.ref):
                tensor = value()
                assert tensor is not None, "a graph reads a tensor freed since its capture"
                return tensor
            return value

        for func, kind, inputs, kept in self.calls:
            args, kwargs = pytree.tree_map(resolve, inputs)
            leaves = pytree.tree_leaves(func(*args, **kwargs))
            if kind == "new":
                for target, value in zip(kept, leaves):
                    target.copy_(value)
                leaves = kept
            results.append(leaves)


class EmulatedGraphs:
    """The ``capture`` of _sample_cached on CPU (it stands for gmkernels.models._autoregressive.cuda_graph),
    counting the captures and replays."""

    def __init__(self):
        self.captures = self.replays = 0

    def __call__(self, step):
        graph = RecordedGraph()
        with graph:
            step()
        graph.end()
        self.captures += 1

        def replay():
            self.replays += 1
            graph.replay()
        return replay


def emulated_graph_samples(model, n, seed, y=None, image_size=5):
    graphs = EmulatedGraphs()
    x = torch.zeros(n, model.config.in_channels, image_size, image_size, dtype=torch.long)
    with torch.no_grad():
        model.eval()._sample_cached(x, y, 1.0, torch.Generator().manual_seed(seed), capture=graphs)
    return x, graphs


@pytest.mark.parametrize("data", ["grey", "rgb-conditional"])
@pytest.mark.parametrize("name", MODELS)
def test_emulated_cuda_graphs_give_the_naive_images(name, data):
    """Every step after the first 2 rows captured once per kind and replayed after (9 rows: PixelCNN++'s
    3 stages have 3 kinds of row after row 0), as on CUDA: the same images as naive sampling."""
    in_channels, num_classes = DATA[data]
    model = build(name, in_channels, num_classes)
    y = torch.arange(2) % num_classes if num_classes else None
    for seed in range(2):
        naive = model.sample(2, y=y, image_size=9, generator=torch.Generator().manual_seed(seed),
                             method="naive")
        graphed, graphs = emulated_graph_samples(model, 2, seed, y, image_size=9)
        assert torch.equal(naive, graphed), f"seed {seed}"
        kinds = 3 if name == "pixelcnnpp" else 1
        steps = len(model.sampling_steps)
        assert graphs.captures == kinds * (1 + 9 * steps)
        assert graphs.replays == (9 - _autoregressive.WARMUP_ROWS - kinds) * (1 + 9 * steps)


def test_emulated_graphs_catch_a_row_key_that_merges_kinds_of_row(monkeypatch):
    """The emulation can fail: PixelCNN++ keying its rows by the first row alone replays a graph captured at
    an even row at the odd rows (its coarser resolutions would run there)."""
    model = build("pixelcnnpp", 3, 0)
    naive = [model.sample(2, image_size=9, generator=torch.Generator().manual_seed(seed), method="naive")
             for seed in range(3)]
    monkeypatch.setattr(PixelCNNppCached, "row_key", lambda self, i: i == 0)
    assert any(not torch.equal(images, emulated_graph_samples(model, 2, seed, image_size=9)[0])
               for seed, images in enumerate(naive))


def test_the_emulation_replays_on_the_captured_tensors_and_fails_on_a_freed_one():
    graphs, state, out = EmulatedGraphs(), {"x": torch.ones(3)}, torch.zeros(3)
    replay = graphs(lambda: out.copy_(state["x"] * 2 + torch.arange(3)))
    assert out.tolist() == [2, 3, 4]
    state["x"].fill_(5)
    replay()
    assert out.tolist() == [10, 11, 12]
    state["x"] = torch.zeros(3)  # the captured tensor freed (on CUDA its memory reused)
    with pytest.raises(AssertionError, match="freed since its capture"):
        replay()


def test_emulated_graphs_refuse_a_list_index(monkeypatch):
    """Indexing by a Python list copies it to the device: a capture refuses it, and so does the emulation."""
    monkeypatch.setattr(_autoregressive, "channel_slice", list)
    with pytest.raises(AssertionError, match="lift_fresh"):
        emulated_graph_samples(build("pixelcnn", 3, 0), 1, 0)


@pytest.mark.parametrize(("graph", "method", "match"), [
    ("yes", "cached", "graph must be True, False or 'auto'"), (1, "cached", "graph must be"),
    (None, "cached", "graph must be"), (True, "cached", "graph=True needs the model on a CUDA device"),
    (True, "naive", "graph=True needs method='cached'")])
def test_a_bad_graph_option_raises_naming_it(graph, method, match):
    model = build("pixelcnn", 1, 0)
    with pytest.raises(ValueError, match=match):
        model.sample(1, method=method, graph=graph)


def test_a_bad_generator_raises_naming_it():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        build("pixelcnnpp", 1, 0).sample(1, generator=3)


def test_graph_false_and_auto_on_cpu_sample_eagerly(monkeypatch):
    model = build("gated_pixelcnn", 1, 0)
    expected = model.sample(2, generator=torch.Generator().manual_seed(3), graph=False)

    def no_capture(step):
        raise AssertionError("a graph was captured on CPU")

    monkeypatch.setattr(_autoregressive, "cuda_graph", no_capture)
    assert torch.equal(model.sample(2, generator=torch.Generator().manual_seed(3), graph="auto"), expected)


@pytest.mark.parametrize("name", MODELS)
def test_cached_is_the_default_and_never_runs_the_whole_network(name, monkeypatch):
    model = build(name, 1, 0).train()
    naive = model.sample(2, generator=torch.Generator().manual_seed(5), method="naive")

    def whole_network(*args):
        raise AssertionError("the whole network ran")

    monkeypatch.setattr(model, "network", whole_network)
    assert torch.equal(model.sample(2, generator=torch.Generator().manual_seed(5)), naive)
    assert model.training  # restored after sampling in eval mode


@pytest.mark.parametrize("method", ["fast", "", None, 1])
def test_a_bad_method_raises_naming_it(method):
    model = build("pixelcnn", 1, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        model.sample(1, method=method)


# --- gmk sample --method --------------------------------------------------------------------------------

def gmk(*args) -> int:
    from gmkernels.cli import main

    try:
        return main([str(arg) for arg in args])
    except SystemExit as exit_:
        return exit_.code


TINY = ["--size", "tiny", "--batch-size", "4", "--eval-every", "1000", "--threads", "1"]


def _grids_by_method(run, tmp_path, seed: int) -> dict[str, bytes]:
    """The PNG bytes `gmk sample RUN --n 4 --seed SEED --method M` writes, per method."""
    grids = {}
    for method in ("cached", "naive"):
        out = tmp_path / f"{method}.png"
        assert gmk("sample", run, "--n", 4, "--seed", seed, "--method", method, "--out", out) == 0
        grids[method] = out.read_bytes()
    return grids


def test_gmk_sample_method_cached_and_naive_write_the_same_grid(tmp_path):
    run = tmp_path / "run"
    assert gmk("train", "pixelcnnpp", "--data", "digits", "--conditional", "--steps", "1", "--samples", "0",
               "--out", run, *TINY) == 0
    grids = _grids_by_method(run, tmp_path, seed=2)
    assert grids["cached"] == grids["naive"]
    assert gmk("sample", run, "--n", 4, "--seed", 2, "--out", tmp_path / "default.png") == 0
    assert (tmp_path / "default.png").read_bytes() == grids["cached"]


def test_gmk_sample_method_for_the_vqvae_prior(tmp_path):
    """The VQ-VAE prior is a Gated PixelCNN over code maps: --method naive and cached decode the same
    code maps (the same grid), and match its model's sample(method=...)."""
    vq, prior = tmp_path / "vq", tmp_path / "prior"
    common = ["--data", "digits", "--steps", "1", "--samples", "0", *TINY]
    assert gmk("train", "vqvae", *common, "--out", vq) == 0
    assert gmk("train", "vqvae-prior", "--vqvae", vq, "--conditional", *common, "--out", prior) == 0
    grids = _grids_by_method(prior, tmp_path, seed=3)
    assert grids["cached"] == grids["naive"]
    state = gmk_checkpoint.load(prior)
    model = VQVAEPrior(VQVAEPriorConfig(**state["config"]))
    model.load_state_dict(state["ema_state"])
    y = torch.arange(4) % model.config.num_classes
    codes = [model.eval().sample_codes(4, y=y, generator=torch.Generator().manual_seed(3), method=method)
             for method in ("cached", "naive")]
    assert torch.equal(*codes) and codes[0].unique().numel() > 1


@pytest.mark.parametrize(("model", "data"), [("wavenet", "tones"), ("glow", "digits")])
def test_gmk_sample_method_is_for_pixelcnn_models_only(model, data, tmp_path, capsys):
    run = tmp_path / model
    assert gmk("train", model, "--data", data, "--steps", "1", "--samples", "0", "--out", run, *TINY) == 0
    assert gmk("sample", run, "--method", "naive") == 2
    assert "--method chooses how a PixelCNN model" in capsys.readouterr().err
    assert gmk("sample", run, "--method", "fast") == 2
    assert "invalid choice" in capsys.readouterr().err


# --- the benchmark ---------------------------------------------------------------------------------------

def test_the_sampling_benchmark_runs_through_the_harness():
    harness = pytest.importorskip("gmkernels.benchmarks.harness")
    bench = pytest.importorskip("gmkernels.benchmarks.models.pixelcnn_sampling")
    assert "pixelcnn_sampling" in harness.family_names()
    cases = bench.cases("cpu", quick=True)
    assert {case.params["model"] for case in cases} == set(MODELS)
    for case in cases[:2] + cases[-1:]:
        result = harness.run_case(case, "cpu", repeats=1, copy_gbps=1.0)
        by_peer = {peer["peer"]: peer for peer in result["results"]}
        assert set(by_peer) == {"gmk:cached", "naive"} and all(p["status"] == "ok" for p in by_peer.values())
        assert by_peer["naive"]["speedup_vs_eager"] == 1.0
        assert by_peer["gmk:cached"]["samples_per_s"] == pytest.approx(
            case.params["batch"] / (by_peer["gmk:cached"]["median_ms"] / 1e3))


def test_the_sampling_benchmark_measures_both_methods_once(capsys):
    bench = pytest.importorskip("gmkernels.benchmarks.models.pixelcnn_sampling")
    rows = bench.measure("digits", "cpu", (2,), ("gated_pixelcnn",), image_size=3)
    assert len(rows) == 1 and rows[0]["same_images"]
    assert rows[0]["speedup"] == pytest.approx(rows[0]["naive_s"] / rows[0]["cached_s"])
    assert "| gated_pixelcnn | 1×3×3, 17 levels | 2 |" in bench.markdown(rows, bench._environment("cpu"))


def test_the_sampling_benchmark_table_shows_graphs_when_timed():
    """On CUDA the rows hold the graph method too (graph_s): its images/s and speedup get their columns."""
    bench = pytest.importorskip("gmkernels.benchmarks.models.pixelcnn_sampling")
    row = {"model": "pixelcnnpp", "batch": 16, "image_size": 32, "in_channels": 3, "num_bins": 256,
           "naive_images_per_s": 0.5, "cached_images_per_s": 20.0, "speedup": 40.0, "graph_s": 0.16,
           "graph_images_per_s": 100.0, "graph_speedup": 200.0, "same_images": True, "load_before": 0.5,
           "load_after": 0.75}
    environment = {"device_name": "a GPU", "threads": 1, "torch": "2", "commit": "abc"}
    table = bench.markdown([row], environment).splitlines()
    assert "| cached + graphs images/s | speedup (graphs) |" in table[2]
    assert table[3].count("|") == table[2].count("|") == table[4].count("|")
    assert "| 20 | 40.0× | 100 | 200.0× | True |" in table[4]
    cpu_row = {key: value for key, value in row.items() if not key.startswith("graph")}
    assert "graphs" not in bench.markdown([cpu_row], environment)
