"""The ``gmk`` command: ``gmk info``, ``gmk bench``."""
from __future__ import annotations

import argparse
import platform
import sys


def _versions() -> dict:
    import torch

    import gmkernels

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "gmkernels": gmkernels.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "CUDA (torch)": torch.version.cuda or "none (CPU build)",
    }


def info_lines() -> list[str]:
    import torch

    import gmkernels

    build = gmkernels.build_info()
    lines = [f"{name:<14}{value}" for name, value in _versions().items()]
    if build["built"]:
        cuda = f"with CUDA {build['cuda_version']}" if build["with_cuda"] else "without CUDA"
        threads = "CPU kernels multi-threaded (OpenMP)" if build.get("openmp") else "CPU kernels single-threaded"
        lines.append(f"{'_C':<14}built {cuda}, against torch {build['torch_version']}; {threads}")
        lines.append(f"{'CUDA archs':<14}{', '.join(build['cuda_archs']) or '-'}")
    else:
        lines.append(f"{'_C':<14}not built ({build['error']})")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            lines.append(f"{'GPU ' + str(index):<14}{torch.cuda.get_device_name(index)} (sm_{major}{minor})")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        lines.append(f"{'backends ' + device:<14}{', '.join(gmkernels.available_backends(device))}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gmk", description="gmkernels: kernels for deep generative models")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, how _C was built, backends per device")
    commands.add_parser("bench", help="run the benchmark suite (gmk bench --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    from .benchmarks.harness import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
