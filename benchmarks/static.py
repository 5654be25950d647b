"""``gmk bench --static``: what can be known about the kernels on a Hopper GPU without one.

For every CUDA kernel in the built ``gmkernels/_C*.so`` (its sm_90 SASS): registers per thread, the
stack frame (local memory per thread: register spills and local arrays; ``cuobjdump
--dump-resource-usage``), spill stores and loads (``ptxas -v`` on the PTX embedded beside the SASS,
when ptxas is installed: the same ptxas and options as the build give the same code), static shared
memory, whether the kernel takes dynamic shared memory (an ``extern __shared__`` array: sized per
call), and the block size that its ``__launch_bounds__`` fix (``EIATTR_MAX_THREADS`` in ``cuobjdump
-elf``; the launchers launch exactly that many threads). For every Triton specialisation that
``tests/test_zz_triton_compile.py`` compiled for sm_90 (recorded by its last run, see
``triton_record_path``): the same figures from its cubin, with the block size ``num_warps × 32`` and the
shared memory Triton's metadata asks for.

From these, the theoretical occupancy on an H100/H200 (sm_90): resident blocks per SM as the minimum of
the limits of registers (allocated per warp in units of 256), shared memory (228 KB per SM, 1 KB of
it reserved per block), threads (2048) and blocks (32), times the block's warps, over 64 warps. For a
kernel with dynamic shared memory it is an upper bound (the call's bytes come on top).

``check(kernels, baseline)`` lists what breaks the rules that tests/test_bench.py and the Triton
compile check enforce: a kernel newly spilling (a stack frame where the committed
``benchmarks/static_baseline.json`` has none; for CUDA kernels also one larger than its figure there),
or a block that cannot launch on sm_90.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ARCH = "sm_90"
SM90 = {
    "registers_per_sm": 65536,
    "registers_per_thread": 255,
    "register_unit": 256,  # registers are allocated per warp in units of 256
    "shared_per_sm": 228 * 1024,
    "shared_per_block": 227 * 1024,
    "shared_reserved_per_block": 1024,  # the runtime's own, per resident block
    "threads_per_sm": 2048,
    "threads_per_block": 1024,
    "blocks_per_sm": 32,
    "warps_per_sm": 64,
}
BASELINE = Path(__file__).with_name("static_baseline.json")
TRITON_RECORD = "triton-sm90-resources.json"


@dataclass
class Kernel:
    """One kernel's resources on sm_90 (``kind``: cuda or triton)."""

    name: str
    kind: str
    registers: int
    stack_bytes: int
    static_shared: int
    threads: int | None = None  # per block, where known
    dynamic_shared: bool = False  # CUDA: an extern __shared__ array sized per call
    spill_stores: int | None = None
    spill_loads: int | None = None
    detail: str = ""  # Triton: the specialisation (argument types, constexprs)


# --- tools -----------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """A CUDA tool: $CUDA_HOME/bin, /usr/local/cuda/bin, PATH, then the copy Triton ships (cuobjdump)."""
    for folder in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if folder and (Path(folder) / "bin" / name).is_file():
            return str(Path(folder) / "bin" / name)
    if shutil.which(name):
        return shutil.which(name)
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.is_file() else None


def built_extension() -> Path | None:
    """The built ``gmkernels/_C*.so`` (or .pyd), or None."""
    import gmkernels
    return next(iter(sorted(Path(gmkernels.__file__).parent.glob("_C*.[sp][oy]*"))), None)


def _run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=600).stdout


# --- parsing ---------------------------------------------------------------------------------------

_FUNCTION = re.compile(r"^\s*Function (\S+?):\s*$")
_USAGE = re.compile(r"^\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ARCH = re.compile(r"^arch = (sm_\w+)")


def parse_resource_usage(text: str, arch: str = ARCH) -> dict[str, dict]:
    """``cuobjdump --dump-resource-usage`` output -> {mangled name: {registers, stack, shared, local}} of the
    ELF code for ``arch`` (PTX sections and other archs' ELF are skipped; the output for a lone cubin names
    no arch: all of it counts)."""
    kernels, in_arch, name = {}, "arch = " not in text, None
    for line in text.splitlines():
        if line.startswith("Fatbin "):
            in_arch = False
        elif match := _ARCH.match(line):
            in_arch = match.group(1) == arch
        elif in_arch and (match := _FUNCTION.match(line)):
            name = match.group(1)
        elif in_arch and name and (match := _USAGE.match(line)):
            registers, stack, shared, local = map(int, match.groups())
            kernels[name] = {"registers": registers, "stack": stack, "shared": shared, "local": local}
            name = None
    return kernels


def parse_max_threads(lines, arch: str = ARCH) -> dict[str, int]:
    """``cuobjdump -elf`` output -> {mangled name: the block size of its __launch_bounds__} for ``arch``."""
    threads, in_arch, name, expect_value = {}, False, None, False
    for line in lines:
        if line.startswith("Fatbin "):
            in_arch = False
        elif match := _ARCH.match(line):
            in_arch = match.group(1) == arch
        elif not in_arch:
            continue
        elif line.startswith(".nv.info."):
            name = line.strip()[len(".nv.info."):]
        elif "EIATTR_MAX_THREADS" in line or "EIATTR_REQNTID" in line:
            expect_value = True
        elif expect_value and line.strip().startswith("Value:"):
            sizes = [int(value, 16) for value in line.split(":", 1)[1].split()]
            threads[name] = math.prod(sizes)
            expect_value = False
    return threads


_PTXAS_FUNCTION = re.compile(r"Function properties for (\S+)")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_spills(text: str) -> dict[str, tuple[int, int]]:
    """``ptxas -v`` output -> {mangled name: (spill store bytes, spill load bytes)}."""
    spills, name = {}, None
    for line in text.splitlines():
        if match := _PTXAS_FUNCTION.search(line):
            name = match.group(1)
        elif name and (match := _PTXAS_SPILLS.search(line)):
            spills[name] = (int(match.group(2)), int(match.group(3)))
            name = None
    return spills


def short_names(mangled: list[str]) -> dict[str, str]:
    """Readable, build-independent names: demangled by c++filt, without the anonymous namespace (whose
    mangled name carries a hash of the file's path) and the parameter list."""
    demangled = mangled
    cxxfilt = shutil.which("c++filt")
    if cxxfilt and mangled:
        output = subprocess.run([cxxfilt], input="\n".join(mangled), capture_output=True, text=True,
                                check=True).stdout.splitlines()
        demangled = output if len(output) == len(mangled) else mangled
    return {name: _strip_signature(text.replace("(anonymous namespace)::", "").removeprefix("void "))
            for name, text in zip(mangled, demangled)}


def _strip_signature(name: str) -> str:
    """``f<T>(Args)`` -> ``f<T>``: the last top-level parenthesis group is the parameter list."""
    if not name.endswith(")"):
        return name
    depth = 0
    for index in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[index], 0)
        if depth == 0:
            return name[:index]
    return name


def dynamic_shared_kernels(source_root: Path) -> set[str]:
    """Names of the ``__global__`` functions whose body declares an ``extern __shared__`` array."""
    found = set()
    for path in source_root.rglob("*.cu"):
        text = path.read_text(errors="replace")
        starts = [match for match in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)",
                                                 text)]
        for index, match in enumerate(starts):
            end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
            if "extern __shared__" in text[match.end():end]:
                found.add(match.group(1))
    return found


def _base_name(name: str) -> str:
    """``gmk::invconv::conv1x1_kernel<float>`` -> ``conv1x1_kernel``."""
    return re.sub(r"<.*", "", name).split("::")[-1]


# --- occupancy and rules ---------------------------------------------------------------------------


def occupancy(registers: int, threads: int, shared: int, limits: dict = SM90) -> dict:
    """Resident blocks per SM, their warps and the fraction of the SM's warps, and what limits them."""
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / limits["register_unit"]) * limits["register_unit"]
    by = {"registers": (limits["registers_per_sm"] // per_warp) // warps,
          "threads": limits["threads_per_sm"] // (warps * 32),
          "blocks": limits["blocks_per_sm"]}
    if shared:
        by["shared memory"] = limits["shared_per_sm"] // (shared + limits["shared_reserved_per_block"])
    limiter = min(by, key=by.get)
    blocks = by[limiter]
    return {"blocks": blocks, "warps": blocks * warps, "occupancy": blocks * warps / limits["warps_per_sm"],
            "limiter": limiter}


def launch_problems(kernel: Kernel, limits: dict = SM90) -> list[str]:
    """Why a block of ``kernel`` cannot launch on sm_90 (empty: it can)."""
    problems = []
    if kernel.threads is not None and kernel.threads > limits["threads_per_block"]:
        problems.append(f"{kernel.threads} threads per block > {limits['threads_per_block']}")
    if kernel.registers > limits["registers_per_thread"]:
        problems.append(f"{kernel.registers} registers per thread > {limits['registers_per_thread']}")
    if kernel.static_shared > limits["shared_per_block"]:
        problems.append(f"{kernel.static_shared} B shared memory > {limits['shared_per_block']} B per block")
    if kernel.threads is not None and occupancy(kernel.registers, kernel.threads, kernel.static_shared,
                                                limits)["blocks"] < 1:
        problems.append(f"one block of {kernel.threads} threads × {kernel.registers} registers "
                        "does not fit an SM")
    return problems


def load_baseline(path: Path = BASELINE) -> dict:
    return json.loads(path.read_text())


def _allowed_stack(kernel: Kernel, baseline: dict) -> int | None:
    entry = baseline.get(kernel.kind, {}).get(kernel.name)
    return None if entry is None else entry["stack_bytes"]


def check(kernels: list[Kernel], baseline: dict) -> list[str]:
    """The rules: every block launchable on sm_90, and no kernel newly spilling: a stack frame (spills or
    local arrays) in a kernel that the baseline does not name, or, for a CUDA kernel (the build holds a fixed
    set), a frame larger than the baseline's. A deliberate change updates the committed baseline."""
    problems = []
    for kernel in kernels:
        allowed = _allowed_stack(kernel, baseline)
        limit = 0 if allowed is None else allowed if kernel.kind == "cuda" else None
        if limit is not None and kernel.stack_bytes > limit:
            problems.append(f"{kernel.kind} {kernel.name}{' ' + kernel.detail if kernel.detail else ''}: "
                            f"stack frame {kernel.stack_bytes} B > baseline {limit} B (spills or local arrays)")
        problems += [f"{kernel.kind} {kernel.name}: {problem}" for problem in launch_problems(kernel)]
    return problems


def growth(kernels: list[Kernel], baseline: dict) -> list[str]:
    """Triton kernels that spill more than the baseline's largest frame: which specialisations a test session
    compiles depends on the tests run, so this is reported (a warning), not failed on."""
    return [f"{kernel.name} {kernel.detail}: stack frame {kernel.stack_bytes} B > baseline {allowed} B"
            for kernel in kernels if kernel.kind == "triton"
            and (allowed := _allowed_stack(kernel, baseline)) is not None and kernel.stack_bytes > allowed]


# --- collecting ------------------------------------------------------------------------------------


def _ptxas_spills(library: Path, cuobjdump: str, ptxas: str) -> dict[str, tuple[int, int]]:
    """Spill stores/loads of every kernel: ptxas -v on the PTX that cuobjdump extracts from ``library``."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([cuobjdump, "-xptx", "all", str(library)], cwd=folder, capture_output=True, check=True)
        files = sorted(Path(folder).glob(f"*.{ARCH}.ptx"))

        def verbose(path: Path) -> str:
            command = [ptxas, "-v", f"-arch={ARCH}", "-O3", "--generate-line-info", str(path),
                       "-o", os.devnull]
            return subprocess.run(command, capture_output=True, text=True, check=True).stderr

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            outputs = list(pool.map(verbose, files))
    spills = {}
    for output in outputs:
        spills.update(parse_ptxas_spills(output))
    return spills


def cuda_kernels(library: Path, with_spills: bool = True, source_root: Path | None = None) -> list[Kernel]:
    """The sm_90 kernels of a built extension (see the module doc)."""
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit, or Triton's bundled copy)")
    usage = parse_resource_usage(_run([cuobjdump, "--dump-resource-usage", str(library)]))
    with subprocess.Popen([cuobjdump, "-elf", str(library)], stdout=subprocess.PIPE, text=True) as elf:
        threads = parse_max_threads(elf.stdout)
    ptxas = find_tool("ptxas") if with_spills else None
    spills = _ptxas_spills(library, cuobjdump, ptxas) if ptxas else {}
    names = short_names(sorted(usage))
    dynamic = dynamic_shared_kernels(source_root) if source_root and source_root.is_dir() else set()
    kernels = []
    for mangled, figures in sorted(usage.items(), key=lambda item: names[item[0]]):
        stores, loads = spills.get(mangled, (None, None))
        kernels.append(Kernel(name=names[mangled], kind="cuda", registers=figures["registers"],
                              stack_bytes=max(figures["stack"], figures["local"]),
                              static_shared=figures["shared"], threads=threads.get(mangled),
                              dynamic_shared=_base_name(names[mangled]) in dynamic,
                              spill_stores=stores, spill_loads=loads))
    return kernels


def triton_record_path() -> Path:
    """Where the Triton compile check records its specialisations' resources ($GMK_TRITON_RESOURCES, else
    the user's cache folder)."""
    if os.environ.get("GMK_TRITON_RESOURCES"):
        return Path(os.environ["GMK_TRITON_RESOURCES"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gmkernels" / TRITON_RECORD


def cubin_kernel(cubin: bytes, name: str, threads: int, shared: int, detail: str) -> Kernel:
    """A compiled Triton specialisation's resources: its cubin through cuobjdump; Triton's shared bytes."""
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (Triton's bundled copy or the CUDA toolkit)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = parse_resource_usage(_run([cuobjdump, "--dump-resource-usage", handle.name]))
    [figures] = usage.values()
    return Kernel(name=name, kind="triton", registers=figures["registers"],
                  stack_bytes=max(figures["stack"], figures["local"]), static_shared=max(shared, figures["shared"]),
                  threads=threads, detail=detail)


def write_triton_record(kernels: list[Kernel], path: Path | None = None) -> Path:
    path = path or triton_record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "kernels": [asdict(kernel) for kernel in kernels]}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_triton_record(path: Path | None = None) -> tuple[str, list[Kernel]] | None:
    path = path or triton_record_path()
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record["date"], [Kernel(**kernel) for kernel in record["kernels"]]


# --- report ----------------------------------------------------------------------------------------


def _short_detail(detail: str) -> str:
    """A Triton specialisation in brief: its pointer dtypes, constexprs and warps/stages."""
    try:
        job = json.loads(detail)
    except (ValueError, TypeError):
        return detail
    dtypes = sorted({kind[1:] for kind in job.get("signature", {}).values() if kind.startswith("*")})
    constexprs = [f"{name}={value}" for name, value in sorted(job.get("constexprs", {}).items())
                  if name != "INTERPRETED"]
    options = job.get("options", {})
    launch = [f"{options[key]} {key.removeprefix('num_')}" for key in ("num_warps", "num_stages") if key in options]
    return " ".join(["/".join(dtypes), *constexprs, *launch])


def _row(kernel: Kernel) -> str:
    spills = ("–" if kernel.spill_stores is None else f"{kernel.spill_stores}/{kernel.spill_loads}")
    shared = f"{kernel.static_shared}" + (" + per call" if kernel.dynamic_shared else "")
    if kernel.threads:
        fit = occupancy(kernel.registers, kernel.threads, kernel.static_shared)
        bound = "≤ " if kernel.dynamic_shared else ""
        blocks = f"{fit['blocks']} block{'s' if fit['blocks'] != 1 else ''}"
        occupied = f"{bound}{100 * fit['occupancy']:.0f}% ({blocks}, {fit['limiter']})"
    else:
        occupied = "–"
    name = kernel.name.removeprefix("gmkernels.triton.") + (f" {_short_detail(kernel.detail)}" if kernel.detail else "")
    return (f"| {name.replace('|', '/')} | {kernel.threads or '–'} | {kernel.registers} | {kernel.stack_bytes} | "
            f"{spills} | {shared} | {occupied} |")


LEGEND = ("threads: per block (CUDA: its __launch_bounds__; Triton: num_warps × 32) · registers: per thread · "
          "stack B: the stack frame per thread (spills and local arrays) · spills B: spill stores/loads from "
          "ptxas -v (– without ptxas) · shared B: static shared memory per block ('+ per call': dynamic "
          "shared memory sized by the launcher; Triton: all it asks for) · occupancy: resident warps over 64 "
          "on sm_90 and the resource that limits the blocks (≤: dynamic shared memory comes on top)")


def markdown(kernels: list[Kernel], title: str) -> str:
    lines = [f"## {title}", "", LEGEND, "",
             "| kernel | threads | registers | stack B | spills B | shared B | occupancy (sm_90) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    return "\n".join(lines + [_row(kernel) for kernel in kernels]) + "\n"


def main() -> int:
    """Prints the report; 1 when a rule is broken (see ``check``), 2 when there is nothing to read."""
    library = built_extension()
    sections, kernels = [], []
    if library is None:
        sections.append("No built gmkernels/_C: no CUDA kernels to report (build it: see the README).")
    else:
        source_root = Path(__file__).resolve().parent.parent / "csrc"
        try:
            cuda = cuda_kernels(library, source_root=source_root)
        except (FileNotFoundError, subprocess.CalledProcessError) as error:
            print(f"gmk bench: error: {error}", file=sys.stderr)
            return 2
        kernels += cuda
        sections.append(markdown(cuda, f"CUDA kernels in {library.name} ({ARCH} SASS): {len(cuda)}")
                        if cuda else f"{library.name} holds no {ARCH} SASS (built without CUDA or for other archs).")
    triton = read_triton_record()
    if triton is None:
        sections.append(f"No Triton resources recorded at {triton_record_path()}: run the test suite without a GPU "
                        "(`python -m pytest -q tests`); its last test compiles every launched Triton "
                        "specialisation for sm_90 and records them there.")
    else:
        date, triton_kernels = triton
        kernels += triton_kernels
        sections.append(markdown(triton_kernels, f"Triton specialisations compiled for {ARCH} by the compile "
                                                 f"check of {date}: {len(triton_kernels)}"))
    baseline = load_baseline()
    problems = check(kernels, baseline)
    sections.append("Rules (no kernel newly spilling against benchmarks/static_baseline.json, every block "
                    "launchable on sm_90): "
                    + ("all kept." if not problems else "broken:\n" + "\n".join(f"- {p}" for p in problems)))
    grown = growth(kernels, baseline)
    if grown:
        sections.append("Triton kernels spilling more than the baseline's largest frame:\n"
                        + "\n".join(f"- {line}" for line in grown))
    print("\n".join(sections))
    return 1 if problems else 0
