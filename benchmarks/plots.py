"""PNG plots of a record, written beside it (matplotlib's object API with the Agg canvas: no display).

- ``<stem>-speedup.png``: per family (one panel each), gmk's speedup over eager and over torch.compile
  per case, on a log axis with 1× marked: bars right of the line are cases where gmk wins. The whisker
  spans the ratio's spread (the baseline's p20 over gmk's p80 to the baseline's p80 over gmk's p20);
  a hatched bar carries a warning (see report.py).
- ``<stem>-bandwidth.png``: memory-bound op cases (no FLOPs counted, or fewer than
  ``MEMORY_BOUND_FLOP_PER_BYTE``), the fraction of the run's copy bandwidth per peer.
- ``<stem>-models.png``: model training steps: the step time and the samples (images, clips) per
  second of every peer.
"""
from __future__ import annotations

from pathlib import Path

from . import report

MEMORY_BOUND_FLOP_PER_BYTE = 4.0
DPI = 80
COLORS = {"gmk": "#1f77b4", "eager": "#ff7f0e", "compile": "#2ca02c", "other": "#7f7f7f"}


def _figure(rows: int, height_per_row: float, width: float = 9.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, max(2.5, height_per_row * rows)), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _ratio_and_spread(baseline: dict | None, mine: dict) -> tuple[float, float, float] | None:
    if baseline is None:
        return None
    return (baseline["median_ms"] / mine["median_ms"], baseline["p20_ms"] / mine["p80_ms"],
            baseline["p80_ms"] / mine["p20_ms"])


def speedup_rows(case: dict, environment: dict) -> dict:
    """gmk's speedups of one case: {"eager": (ratio, low, high), "compile": ..., "warned": bool}."""
    mine = report.gmk_result(case)
    if mine is None:
        return {}
    eager = report.fastest(case, case.get("baseline", report.EAGER))
    compiled = report.fastest(case, case.get("compiled_baseline", report.COMPILED))
    warned = any(report.timing_warnings(result, case, environment)
                 for result in (mine, eager, compiled) if result)
    return {"eager": _ratio_and_spread(eager, mine), "compile": _ratio_and_spread(compiled, mine),
            "warned": warned}


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _speedup_panel(axes, family: str, cases: list[dict], environment: dict) -> None:
    rows = [(case["name"], speedup_rows(case, environment)) for case in cases]
    rows = [(name, row) for name, row in rows if row]
    height = 0.38
    for offset, key in ((-height / 2, "eager"), (height / 2, "compile")):
        for index, (_, row) in enumerate(rows):
            if row[key] is None:
                continue
            ratio, low, high = row[key]
            axes.barh(index + offset, ratio - 1, left=1.0, height=height, color=COLORS[key],
                      hatch="//" if row["warned"] else None, edgecolor="black" if row["warned"] else None,
                      label=f"× {key}" if index == next(i for i, (_, r) in enumerate(rows) if r[key]) else None)
            axes.plot([low, high], [index + offset] * 2, color="black", linewidth=0.8)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    extremes = [value for _, row in rows for key in ("eager", "compile") if row[key] for value in row[key]]
    axes.set_xlim(min([0.5, *extremes]) / 1.2, max([2.0, *extremes]) * 1.2)
    _ratio_axis(axes)
    axes.set_yticks(range(len(rows)), [_short(name) for name, _ in rows], fontsize=7)
    axes.invert_yaxis()
    axes.set_title(f"{family}: gmk's speedup (right of 1: gmk faster; hatched: warning)", fontsize=9)
    if rows:
        axes.legend(fontsize=7, loc="lower right")


def _save(figure, path: Path, environment: dict) -> Path:
    """Lays out and writes the figure (on CPU with a title saying what the figures are); with Pillow, as a
    64-colour PNG (a third of the size: the plots are committed beside the records)."""
    top = 1.0
    if environment["device"] == "cpu":
        figure.suptitle("CPU run: exercises the suite, not the library's performance", fontsize=9,
                        color="#a00")
        top = 1 - 0.4 / figure.get_figheight()
    figure.tight_layout(rect=(0, 0, 1, top))
    figure.savefig(path)
    try:
        from PIL import Image
    except ImportError:
        return path
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)
    return path


def _ratio_axis(axes) -> None:
    """A log axis labelled 0.5×, 1×, 2×, ... without the minor ticks' labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
    axes.xaxis.set_minor_formatter(NullFormatter())


def speedup_plot(record: dict, path: Path) -> Path | None:
    families = {}
    for case in record["cases"]:
        if report.gmk_result(case) is not None:
            families.setdefault(case["family"], []).append(case)
    if not families:
        return None
    figure = _figure(sum(len(cases) + 2 for cases in families.values()), 0.36)
    heights = [len(cases) + 2 for cases in families.values()]
    grid = figure.add_gridspec(len(families), 1, height_ratios=heights)
    for index, (family, cases) in enumerate(families.items()):
        _speedup_panel(figure.add_subplot(grid[index]), family, cases, record["environment"])
    return _save(figure, path, record["environment"])


def _memory_bound(case: dict, models: set[str]) -> bool:
    return case["family"] not in models and (not case.get("flops") or case["flops"] / case["bytes"]
                                              < MEMORY_BOUND_FLOP_PER_BYTE)


def _peer_color(peer: str) -> str:
    if peer.startswith(report.GMK_PREFIX):
        return COLORS["gmk"]
    return {report.EAGER: COLORS["eager"], report.COMPILED: COLORS["compile"]}.get(peer, COLORS["other"])


def bandwidth_plot(record: dict, path: Path, models: set[str]) -> Path | None:
    cases = [case for case in record["cases"] if _memory_bound(case, models)]
    bars = [(case["name"], result) for case in cases for result in case["results"]
            if result["status"] == "ok"]
    if not bars:
        return None
    figure = _figure(len(bars), 0.22)
    axes = figure.add_subplot()
    for index, (_, result) in enumerate(bars):
        axes.barh(index, 100 * result["fraction_of_copy_bandwidth"], color=_peer_color(result["peer"]))
    axes.axvline(100, color="black", linewidth=1)
    axes.set_yticks(range(len(bars)), [_short(f"{name} · {result['peer']}", 70) for name, result in bars],
                    fontsize=6)
    axes.invert_yaxis()
    axes.set_xlabel(f"% of copy bandwidth ({record['environment']['copy_bandwidth_gbps']:.0f} GB/s); "
                    "past 100: cached data or a mistimed call")
    axes.set_title("memory-bound ops (blue: gmk, orange: eager, green: torch.compile)", fontsize=9)
    return _save(figure, path, record["environment"])


def _training_cases(record: dict, models: set[str]) -> list[dict]:
    return [case for case in record["cases"] if case["family"] in models
            and (case.get("params") or {}).get("kind") == "training"]


def models_plot(record: dict, path: Path, models: set[str]) -> Path | None:
    cases = _training_cases(record, models)
    bars = [(case, result) for case in cases for result in case["results"] if result["status"] == "ok"]
    if not bars:
        return None
    figure = _figure(len(bars), 0.3, width=11)
    time_axes, rate_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    labels = [f"{_short(case['name'], 28)} · {_short(result['peer'], 24)}" for case, result in bars]
    for index, (case, result) in enumerate(bars):
        color = _peer_color(result["peer"])
        time_axes.barh(index, result["median_ms"], color=color,
                       xerr=[[result["median_ms"] - result["p20_ms"]],
                             [result["p80_ms"] - result["median_ms"]]])
        rate_axes.barh(index, case["params"]["batch"] / (result["median_ms"] / 1e3), color=color)
    for axes, label in ((time_axes, "training step, ms (p20–p80)"), (rate_axes, "samples/s")):
        axes.set_yticks(range(len(bars)), labels, fontsize=7)
        axes.invert_yaxis()
        axes.set_xlabel(label)
    rate_axes.set_yticklabels([])
    time_axes.set_title("model training steps (blue: gmk)", fontsize=9)
    return _save(figure, path, record["environment"])


def write_plots(record: dict, out_dir: Path, stem: str) -> list[Path]:
    """The plots of the record that have data, as PNGs beside it; none without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    from .harness import _family_modules
    models = {name for name, module in _family_modules().items() if ".models." in module}
    written = [speedup_plot(record, out_dir / f"{stem}-speedup.png"),
               bandwidth_plot(record, out_dir / f"{stem}-bandwidth.png", models),
               models_plot(record, out_dir / f"{stem}-models.png", models)]
    return [path for path in written if path is not None]
