"""The benchmark suite runs end to end on CPU and writes a complete record, table, plots and CSV rows; the
reader's side (summary, warnings, CSV, plots, --list, --compare) and --static's parsing and rules."""
import importlib.util
import json
import shutil
import warnings

import pytest
import torch

gmk = pytest.importorskip("gmkernels", reason="gmkernels is not importable (not installed or not built)")

from gmkernels.benchmarks.harness import COMPILED, EAGER, main  # noqa: E402
from gmkernels.benchmarks.ops import gated  # noqa: E402

ENVIRONMENT_FIELDS = ("date", "device", "device_name", "git_commit", "versions", "build_info",
                      "copy_bandwidth_gbps", "timer")


def test_cpu_quick_run_writes_record_and_table(tmp_path, capsys):
    argv = ["--device", "cpu", "--quick", "--ops", "gated", "--out", str(tmp_path), "--repeats", "5"]
    assert main(argv) == 0

    [record_path] = tmp_path.glob("*.json")
    assert record_path.name.startswith("cpu-")
    record = json.loads(record_path.read_text())
    environment = record["environment"]
    assert all(field in environment for field in ENVIRONMENT_FIELDS)
    assert environment["versions"]["gmkernels"] == gmk.__version__
    assert environment["copy_bandwidth_gbps"] > 0

    gmk_peers = {f"gmk:{backend}" for backend in gmk.available_backends("cpu") if backend != "reference"}
    expected_cases = [case.name for case in gated.cases("cpu", quick=True)]
    assert [case["name"] for case in record["cases"]] == expected_cases
    for case in record["cases"]:
        assert case["bytes"] > 0
        results = {result["peer"]: result for result in case["results"]}
        assert len(results) == len(case["results"])
        assert set(results) == gmk_peers | {EAGER, COMPILED}
        assert results[EAGER]["status"] == "ok"
        assert results[EAGER]["speedup_vs_eager"] == pytest.approx(1.0)
        for result in results.values():
            if result["status"] == "ok":
                assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
                assert result["gbps"] > 0
            else:
                assert result["reason"]

    table = record_path.with_suffix(".md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == sum(len(case["results"]) for case in record["cases"])
    assert table in capsys.readouterr().out
    assert table.index("## Summary") < table.index("## All peers")
    assert sum(line.startswith("- ") and " · " in line for line in table.splitlines()) == len(expected_cases)
    assert environment["cpu_count"] >= 1 and environment["timer_resolution_ms"] > 0
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / f"{record_path.stem}-speedup.png").is_file()
    csv_lines = (tmp_path / "all_benchmark_data.csv").read_text().splitlines()
    ran = sum(result["status"] == "ok" for case in record["cases"] for result in case["results"])
    assert len(csv_lines) == 1 + ran


def test_flops_and_the_fastest_of_several_baselines():
    """A case with flops reports TFLOP/s; a tuple baseline counts its fastest peer that ran."""
    import time

    from gmkernels.benchmarks.harness import Case, markdown_table, run_case, skipped_peer

    def sleeper(ms):
        return lambda: time.sleep(ms / 1e3)

    peers = {"gmk:fast": sleeper(1), "slow layout": sleeper(4), "fast layout": sleeper(2),
             "broken layout": skipped_peer("not here"), COMPILED: sleeper(3)}
    case = Case(name="sleeps", family="test", params={}, bytes=10**6, flops=10**9, peers=peers,
                baseline=("slow layout", "fast layout", "broken layout"))
    result = run_case(case, "cpu", repeats=3, copy_gbps=1.0)
    by_peer = {r["peer"]: r for r in result["results"]}
    fast = by_peer["gmk:fast"]
    assert fast["tflops"] == pytest.approx(1e9 / (fast["median_ms"] * 1e9))
    assert fast["speedup_vs_eager"] == pytest.approx(by_peer["fast layout"]["median_ms"] / fast["median_ms"])
    assert by_peer["fast layout"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert by_peer["broken layout"]["status"] == "skipped"
    record = {"environment": {"device": "cpu", "device_name": "test", "date": "", "git_commit": "unknown",
                              "git_dirty": None, "copy_bandwidth_gbps": 1.0, "timer": "",
                              "versions": {"gmkernels": "", "torch": "", "triton": "", "cuda": ""}},
              "cases": [result]}
    table = markdown_table(record)
    assert "TFLOP/s" in table and f"{fast['tflops']:.2f}" in table


# --- the reader's side: summary, warnings, CSV, plots, --list, --compare, --static ------------------

def _result(peer, median, p20=None, p80=None, fraction=0.5, **extra):
    p20 = median if p20 is None else p20
    p80 = median if p80 is None else p80
    return {"peer": peer, "status": "ok", "median_ms": median, "p20_ms": p20, "p80_ms": p80, "min_ms": p20,
            "max_ms": p80, "timed_calls": 10, "gbps": 1.0, "fraction_of_copy_bandwidth": fraction, "tflops": None,
            "peak_mib": None, "launch_ms": None, "speedup_vs_eager": None, "speedup_vs_compiled": None, **extra}


def _record(cases, device="cpu", load=0.5, cores=2):
    environment = {"device": device, "device_name": "test device", "date": "2026-12-03T00:00:00+00:00",
                   "git_commit": "0123456789abcdef", "git_dirty": False, "copy_bandwidth_gbps": 10.0,
                   "timer": "test", "cpu_count": cores, "load_1min": load, "torch_threads": 1,
                   "timer_resolution_ms": 1e-6,
                   "versions": {"gmkernels": gmk.__version__, "torch": "t", "triton": "t", "cuda": None}}
    return {"schema": 2, "environment": environment, "settings": {}, "cases": cases}


def _case(name, results, load=0.5, family="gated", **extra):
    return {"name": name, "family": family, "params": {"direction": "forward"}, "bytes": 10**6, "flops": None,
            "baseline": EAGER, "compiled_baseline": COMPILED, "samples": None, "streams": 1, "load_1min": load,
            "results": results, **extra}


def test_summary_line_gives_the_gmk_time_its_spread_and_ratios():
    from gmkernels.benchmarks import report

    case = _case("op", [_result("gmk:cpu", 1.0, 0.95, 1.05), _result(EAGER, 3.0, 2.9, 3.1),
                        _result(COMPILED, 2.0, 1.9, 2.1), _result("cuDNN", 1.5, 1.45, 1.55),
                        _result("gmk:slow", 4.0)])
    record = _record([case])
    line = report.summary_line(case, record["environment"])
    assert line == "- op: gmk:cpu 1 ms (p20–p80 0.95–1.05) · 3.00× eager · 2.00× compile · 1.50× cuDNN"
    text = report.markdown(record)
    assert text.index("## Summary") < text.index(line) < text.index("## All peers") < text.index("Columns:")
    assert report.CPU_NOTE in text
    assert report.CPU_NOTE not in report.markdown(_record([case], device="cuda"))
    for column in report.COLUMNS:
        assert f"**{column}**" in report.legend()


def test_untrusted_figures_carry_warnings_in_the_case_row_and_the_summary():
    from gmkernels.benchmarks import report

    noisy = _case("noisy", [_result("gmk:cpu", 1.0, 0.5, 3.0), _result(EAGER, 2.0)])
    loaded = _case("loaded", [_result("gmk:cpu", 1.0), _result(EAGER, 2.0)], load=6.0)
    cached = _case("cached", [_result("gmk:cpu", 1.0, fraction=1.02), _result(EAGER, 2.0)])
    sliced = _case("sliced", [_result("gmk:cpu", 8.0, quantum_ms=8), _result(EAGER, 0.3)])
    tiny = _case("tiny", [_result("gmk:cpu", 5e-5), _result(EAGER, 1e-4)])
    clean = _case("clean", [_result("gmk:cpu", 1.0), _result(EAGER, 2.0)])
    record = _record([noisy, loaded, cached, sliced, tiny, clean])
    expected = {"noisy": "spread 250% of the median", "loaded": "machine loaded (load 6.0 on 2 cores)",
                "cached": "above copy bandwidth", "sliced": "whole 8 ms time slices", "tiny": "timer's resolution"}
    text = report.markdown(record)
    for case in record["cases"]:
        line = report.summary_line(case, record["environment"])
        row = next(r for r in text.splitlines() if r.startswith(f"| {case['name']} | gmk:cpu"))
        if case["name"] in expected:
            assert report.WARNING_MARK in line and expected[case["name"]] in line
            assert expected[case["name"]] in row
        else:
            assert report.WARNING_MARK not in line and report.WARNING_MARK not in row
    assert "5 of 6 cases carry warnings" in text
    assert "| >100 |" in next(r for r in text.splitlines() if r.startswith("| cached | gmk:cpu"))


def test_time_slices_are_recognised_and_real_times_are_not():
    from gmkernels.benchmarks.harness import time_slice_ms

    assert time_slice_ms([8.01, 16.02, 7.99, 8.0, 24.1, 8.05, 3.1]) == 8
    assert time_slice_ms([4.02, 8.0, 3.99, 12.05]) == 4
    torch.manual_seed(0)
    real = (1 + 5 * torch.rand(50, dtype=torch.float64)).tolist()
    assert time_slice_ms(real) is None
    assert time_slice_ms([0.3, 0.31, 0.29]) is None


def test_long_csv_gets_one_row_per_case_and_peer_per_run(tmp_path):
    import csv

    from gmkernels.benchmarks import report

    record = _record([_case("op", [_result("gmk:cpu", 1.0, 0.9, 1.2), _result(EAGER, 2.0),
                                   {"peer": COMPILED, "status": "skipped", "reason": "no"}])])
    path = tmp_path / report.CSV_NAME
    report.append_csv(record, path)
    report.append_csv(record, path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 4 and list(rows[0]) == list(report.CSV_FIELDS)
    first = rows[0]
    assert (first["kernel"], first["provider"], first["mode"], first["metric"], first["unit"]) == (
        "gated", "gmk:cpu", "forward", "time", "ms")
    assert (float(first["p20"]), float(first["p50"]), float(first["p80"])) == (0.9, 1.0, 1.2)
    assert first["gpu"] == "test device" and first["commit"] == "0123456789abcdef"


def test_plots_are_written_beside_the_record(tmp_path):
    pytest.importorskip("matplotlib")
    from gmkernels.benchmarks import plots

    op = _case("op", [_result("gmk:cpu", 1.0, 0.9, 1.1), _result(EAGER, 2.0), _result(COMPILED, 0.5)])
    model = _case("model train", [_result("gmk:auto", 10.0), _result(EAGER, 12.0)], family="pixelcnn",
                  params={"kind": "training", "batch": 8})
    paths = plots.write_plots(_record([op, model]), tmp_path, "run")
    assert sorted(path.name for path in paths) == ["run-bandwidth.png", "run-models.png", "run-speedup.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.speedup_rows(op, _record([op])["environment"])["eager"][0] == pytest.approx(2.0)


def test_list_prints_the_cases_without_timing_them(capsys, monkeypatch):
    from gmkernels.benchmarks import harness

    monkeypatch.setattr(harness, "_timings_ms", lambda *args: pytest.fail("--list timed a call"))
    assert main(["--list", "--device", "cpu", "--quick", "--ops", "gated"]) == 0
    out = capsys.readouterr().out
    for case in gated.cases("cpu", quick=True):
        assert case.name in out
    assert f"{len(gated.cases('cpu', quick=True))} cases" in out


def _write(path, record):
    path.write_text(json.dumps(record))
    return path


def test_compare_exit_status_follows_the_threshold(tmp_path, capsys):
    old = _write(tmp_path / "old.json", _record([_case("op", [_result("gmk:cpu", 1.0), _result(EAGER, 2.0)])]))
    new = _write(tmp_path / "new.json", _record([_case("op", [_result("gmk:cpu", 1.08), _result(EAGER, 3.0)])]))
    assert main(["--compare", str(old), str(new)]) == 0
    assert "| op | gmk:cpu | 1 | 1.08 | 1.080 |" in capsys.readouterr().out
    assert main(["--compare", str(old), str(new), "--fail-above", "5%"]) == 1
    assert "slower by 8.0%" in capsys.readouterr().out
    assert main(["--compare", str(old), str(new), "--fail-above", "10%"]) == 0  # eager's +50% is torch's
    assert main(["--compare", str(new), str(old), "--fail-above", "0.05"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--compare", "missing.json", "missing.json"], "cannot read missing.json"),
    (["--compare", "{bad}", "{bad}"], "is not JSON"),
    (["--compare", "{notrecord}", "{notrecord}"], "is not a gmk bench record"),
    (["--fail-above", "5%"], "--fail-above needs --compare"),
    (["--compare", "a", "b", "--fail-above", "five"], "not a percentage"),
    (["--ops", "nonsense"], "unknown op families"),
])
def test_command_line_mistakes_give_one_line_and_a_nonzero_exit(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "{bad}").write_text("{not json")
    (tmp_path / "{notrecord}").write_text("[1, 2]")
    try:
        status = main(argv)
    except SystemExit as exit:
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# A recorded snippet of `cuobjdump --dump-resource-usage` (nvcc 13, two archs, PTX first), `cuobjdump -elf`
# and `ptxas -v`.
RESOURCE_USAGE = """
Fatbin ptx code:
================
arch = sm_90
code version = [9,0]

Fatbin elf code:
================
arch = sm_80
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN3gmk7example48_GLOBAL__N__1db75e20_15_example_cuda_cu_6a44a71a8kernel_aIfEEvNS0_4ArgsE:
  REG:99 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN3gmk7example48_GLOBAL__N__1db75e20_15_example_cuda_cu_6a44a71a8kernel_aIfEEvNS0_4ArgsE:
  REG:40 STACK:0 SHARED:1056 LOCAL:0 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN3gmk7example48_GLOBAL__N__1db75e20_15_example_cuda_cu_6a44a71a8kernel_bIfEEvNS0_4ArgsE:
  REG:128 STACK:24 SHARED:0 LOCAL:0 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
ELF = """Fatbin elf code:
================
arch = sm_90
.nv.info._ZN3gmk7example48_GLOBAL__N__1db75e20_15_example_cuda_cu_6a44a71a8kernel_aIfEEvNS0_4ArgsE
\t<0x10>
\tAttribute:\tEIATTR_MAX_THREADS
\tFormat:\tEIFMT_SVAL
\tValue:\t0x100 0x1 0x1 
.nv.info._ZN3gmk7example48_GLOBAL__N__1db75e20_15_example_cuda_cu_6a44a71a8kernel_bIfEEvNS0_4ArgsE
\tAttribute:\tEIATTR_REQNTID
\tFormat:\tEIFMT_SVAL
\tValue:\t0x20 0x4 0x1 
"""
PTXAS = """ptxas info    : Function properties for _ZN3gmk7example48_GLOBAL__N__1db75e20_15_example_cuda_cu_6a44a71a8kernel_bIfEEvNS0_4ArgsE
    24 bytes stack frame, 36 bytes spill stores, 52 bytes spill loads
"""
KERNEL_A = "_ZN3gmk7example48_GLOBAL__N__1db75e20_15_example_cuda_cu_6a44a71a8kernel_aIfEEvNS0_4ArgsE"
KERNEL_B = KERNEL_A.replace("kernel_a", "kernel_b")


def test_static_parses_recorded_cuobjdump_and_ptxas_output():
    from gmkernels.benchmarks import static

    usage = static.parse_resource_usage(RESOURCE_USAGE)
    assert usage == {KERNEL_A: {"registers": 40, "stack": 0, "shared": 1056, "local": 0},
                     KERNEL_B: {"registers": 128, "stack": 24, "shared": 0, "local": 0}}
    assert static.parse_resource_usage(RESOURCE_USAGE, arch="sm_80")[KERNEL_A]["registers"] == 99
    assert static.parse_max_threads(ELF.splitlines()) == {KERNEL_A: 256, KERNEL_B: 128}
    assert static.parse_ptxas_spills(PTXAS) == {KERNEL_B: (36, 52)}
    cubin = RESOURCE_USAGE[RESOURCE_USAGE.rindex("Resource usage:"):]  # a lone cubin's output names no arch
    assert static.parse_resource_usage(cubin) == usage
    names = static.short_names([KERNEL_A])
    if names[KERNEL_A] != KERNEL_A:  # c++filt present
        assert names[KERNEL_A] == "gmk::example::kernel_a<float>"
    assert static._strip_signature("f<int (*)(int)>(Args, int)") == "f<int (*)(int)>"


def test_static_occupancy_and_launch_limits_of_sm90():
    from gmkernels.benchmarks import static

    # 40 registers: 1280 per warp, 51 warps -> 6 blocks of 8 warps: 48 of 64 warps.
    assert static.occupancy(40, 256, 1056) == {"blocks": 6, "warps": 48, "occupancy": 0.75, "limiter": "registers"}
    assert static.occupancy(32, 256, 0)["occupancy"] == 1.0
    assert static.occupancy(16, 32, 0) == {"blocks": 32, "warps": 32, "occupancy": 0.5, "limiter": "blocks"}
    # 100 KB of shared memory: 2 blocks fit 228 KB with the 1 KB reserved per block.
    assert static.occupancy(32, 128, 100 * 1024)["blocks"] == 2
    assert static.occupancy(32, 128, 100 * 1024)["limiter"] == "shared memory"
    fine = static.Kernel("fine", "cuda", registers=64, stack_bytes=0, static_shared=48 * 1024, threads=1024)
    assert static.launch_problems(fine) == []
    too_many = static.Kernel("big", "triton", registers=128, stack_bytes=0, static_shared=228 * 1024, threads=1024)
    problems = " ".join(static.launch_problems(too_many))
    assert "shared memory" in problems and "does not fit an SM" in problems
    spilling = static.Kernel("spills", "cuda", registers=255, stack_bytes=16, static_shared=0, threads=256)
    assert static.check([spilling], {"cuda": {"spills": {"stack_bytes": 16}}}) == []
    assert "stack frame 16 B > baseline 0 B" in static.check([spilling], {"cuda": {}})[0]
    assert "stack frame 16 B > baseline 8 B" in static.check([spilling], {"cuda": {"spills": {"stack_bytes": 8}}})[0]
    triton = static.Kernel("tk", "triton", registers=255, stack_bytes=100, static_shared=0, threads=128, detail="d")
    assert static.check([triton], {"triton": {"tk": {"stack_bytes": 8}}}) == []  # it spilled before: not new
    assert static.growth([triton], {"triton": {"tk": {"stack_bytes": 8}}}) == ["tk d: stack frame 100 B > baseline 8 B"]
    assert "stack frame 100 B > baseline 0 B" in static.check([triton], {"triton": {}})[0]


def test_no_built_cuda_kernel_newly_spills_or_exceeds_sm90_limits():
    """The built _C's sm_90 kernels against benchmarks/static_baseline.json (what `gmk bench --static` checks)."""
    from gmkernels.benchmarks import static

    library = static.built_extension()
    if library is None or static.find_tool("cuobjdump") is None or shutil.which("c++filt") is None:
        pytest.skip("needs the built _C, cuobjdump and c++filt (the baseline names kernels demangled)")
    kernels = static.cuda_kernels(library, with_spills=False)
    if not kernels:
        pytest.skip(f"{library.name} holds no sm_90 code")
    assert all(kernel.threads for kernel in kernels), "a kernel without __launch_bounds__"
    assert static.check(kernels, static.load_baseline()) == []
    stale = set(static.load_baseline()["cuda"]) - {kernel.name for kernel in kernels}
    if stale:
        warnings.warn(f"benchmarks/static_baseline.json names kernels the build no longer has: {sorted(stale)}",
                      stacklevel=1)


def test_pytest_benchmark_gets_the_harness_timings_replayed():
    from gmkernels.benchmarks.test_benchmarks import ReplayClock

    clock = ReplayClock([0.5, 0.25, 2.0])
    durations = []
    for _ in range(3):  # pytest-benchmark's runner: start = timer(); target(); end = timer()
        start = clock()
        durations.append(clock() - start)
    assert durations == [0.5, 0.25, 2.0]
