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
