"""Plain-PyTorch ground truth of every op: the tests' reference and the benchmarks' eager baseline.

One submodule per family (`gmk.reference.gated`, ...), found on disk: a new family's file is its own
export, and `gmk.reference.<family>` imports it on first use (PEP 562).
"""
import importlib
import pkgutil

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
