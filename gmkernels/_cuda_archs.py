"""Which GPUs the CUDA kernels compiled into gmkernels._C can run on.

``build_info()["cuda_archs"]`` names what ``_C`` holds: ``"8.0"`` is machine code (SASS) for sm_80,
``"9.0+PTX"`` is SASS for sm_90 and PTX for compute_90; an ``a`` suffix (``"9.0a"``) marks code that uses
arch-specific features, an ``f`` suffix (``"10.0f"``) family-specific code.

- SASS for sm_Mm runs on GPUs of the same major version M with a minor version >= m (``a``: on sm_Mm only).
- PTX for compute_Mm is compiled by the driver when ``_C`` loads, for any GPU of capability >= M.m
  (``a``: sm_Mm only; ``f``: the same major version), never for an older one: PTX for 9.0 cannot run on 8.x.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class CompiledArch:
    major: int
    minor: int
    suffix: str  # "", "a" (arch-specific) or "f" (family-specific)
    ptx: bool

    @property
    def name(self) -> str:
        return f"{self.major}.{self.minor}{self.suffix}"

    def sass_runs_on(self, capability: tuple[int, int]) -> bool:
        if self.suffix == "a":
            return capability == (self.major, self.minor)
        return capability[0] == self.major and capability[1] >= self.minor

    def ptx_runs_on(self, capability: tuple[int, int]) -> bool:
        if not self.ptx:
            return False
        if self.suffix == "a":
            return capability == (self.major, self.minor)
        if self.suffix == "f":
            return capability[0] == self.major and capability[1] >= self.minor
        return capability >= (self.major, self.minor)


def parse_arch(name: str) -> CompiledArch:
    """``"9.0a+PTX"`` -> CompiledArch(9, 0, "a", ptx=True)."""
    match = re.fullmatch(r"(\d+)\.(\d)([af]?)(\+PTX)?", name)
    if match is None:
        raise ValueError(f"parse_arch: expected an arch such as '8.0', '9.0a' or '12.0+PTX', got {name!r}")
    return CompiledArch(int(match[1]), int(match[2]), match[3], match[4] is not None)


def kernel_image_for(capability: tuple[int, int], arch_names: list[str]) -> str | None:
    """What a GPU of ``capability`` runs from ``_C``: ``"SASS 8.0"``, ``"PTX 9.0"`` (compiled by the driver
    at load), or None when nothing in ``_C`` can run on it. SASS is preferred, the newest that fits."""
    archs = sorted((parse_arch(name) for name in arch_names), key=lambda arch: (arch.major, arch.minor),
                   reverse=True)
    for arch in archs:
        if arch.sass_runs_on(capability):
            return f"SASS {arch.name}"
    for arch in archs:
        if arch.ptx_runs_on(capability):
            return f"PTX {arch.name}"
    return None


def describe_contents(arch_names: list[str]) -> str:
    """``["8.0", "9.0+PTX"]`` -> ``"SASS for 8.0, 9.0 and PTX for 9.0"``."""
    archs = [parse_arch(name) for name in arch_names]
    sass = ", ".join(arch.name for arch in archs)
    ptx = ", ".join(arch.name for arch in archs if arch.ptx)
    return f"SASS for {sass}" + (f" and PTX for {ptx}" if ptx else " and no PTX")


def no_kernel_reason(capability: tuple[int, int], arch_names: list[str]) -> str:
    major, minor = capability
    return (f"gmkernels._C holds no kernel for sm_{major}{minor}: it was built with {describe_contents(arch_names)} "
            f"(SASS runs only on its own major version, PTX only on the same or newer GPUs); rebuild it with "
            f"GMK_CUDA_ARCHS=\"{major}.{minor}\" (README: Building)")
