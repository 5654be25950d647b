"""The benchmark suite runs end to end on CPU and writes a complete record and table."""
import json

import pytest

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
