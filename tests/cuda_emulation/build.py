"""Builds our CUDA kernels as host C++ against shim.h into one shared library, for the CPU tests.

Two constructs of the CUDA language have no macro form, so each ``.cu`` is rewritten first (the
rewrite keeps every line where it was, and ``#line`` points diagnostics at the original file):

- ``kernel<targs><<<grid, block, smem, stream>>>(args)`` becomes
  ``::gmk_emu::launch<&kernel<targs>>(grid, block, smem, stream)(args)`` (or, where ``kernel`` is a
  variable, no __global__ function of the file, ``::gmk_emu::launch_pointer(kernel, grid, ...)(args)``);
- ``extern __shared__ [__align__(n)] T name[];`` becomes
  ``T* const name = static_cast<T*>(::gmk_emu::dynamic_shared(n));`` (the launch's dynamic bytes);
- ``__shared__ [__align__(n)] T name[dims];`` becomes a reference into the block's shared arena:
  ``static ::gmk_emu::SharedTag name_tag; using name_type = T[dims];
  name_type& name = ::gmk_emu::shared<name_type, n>(name_tag);``.

The library is compiled with g++ (``$CXX`` if set), with UBSan's alignment, bounds and integer
checks where the compiler has UBSan's runtime, and cached under ``$GMK_EMULATION_CACHE`` (default
``~/.cache/gmkernels/cuda_emulation``) by a hash of every input, so a session builds it once and later
sessions not at all.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
# The .cu files with entry points in entry_points.cpp, and the emulator's own test kernels.
KERNEL_SOURCES = (CSRC / "gated/gated_cuda.cu", CSRC / "logistic_mixture/logistic_mixture_cuda.cu",
                  CSRC / "masked_conv/masked_conv_cuda.cu", CSRC / "actnorm/actnorm_cuda.cu",
                  CSRC / "coupling/coupling_cuda.cu", CSRC / "invconv/invconv_cuda.cu",
                  CSRC / "causal_conv/causal_conv_cuda.cu", CSRC / "wavenet_generate/wavenet_generate_cuda.cu",
                  HERE / "selftest.cu")
KERNEL_SOURCES += (CSRC / "bias_act/bias_act_cuda.cu", CSRC / "upfirdn2d/upfirdn2d_cuda.cu")  # issue 13
KERNEL_SOURCES += (CSRC / "cached_conv/cached_conv_cuda.cu",)
KERNEL_SOURCES += (CSRC / "vector_quantize/vector_quantize_cuda.cu",)  # issue 14
EMULATOR_SOURCES = ("emulator.cpp", "entry_points.cpp")
LIBRARY = "libgmk_cuda_emulation.so"
FLAGS = ["-std=c++17", "-O2", "-g0", "-fPIC", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas",
         "-DGMK_WITH_CUDA", "-DGMK_CUDA_EMULATION", f"-I{HERE / 'include'}", f"-I{HERE}", f"-I{CSRC}",
         f"-I{CSRC / 'include'}"]
# UBSan, where the compiler has its runtime: misaligned (vector) accesses, indices past fixed-size arrays,
# integer overflow. It reports on stderr and carries on; the tests read stderr.
SANITIZER = ["-fsanitize=alignment,bounds,shift,integer-divide-by-zero,signed-integer-overflow,vla-bound,"
             "null,return,bool,enum"]

# One declaration on one line: __shared__ [__align__(n)] type name[dims]...;
_SHARED = re.compile(r"__shared__[ \t]+(?:__align__\(\s*(\d+)\s*\)[ \t]+)?"  # alignment
                     r"([^;{}()\[\]\n]*?)[ \t]*\b(\w+)[ \t]*"              # type, name
                     r"((?:\[[^\]\n]*\])*)[ \t]*;")                       # dimensions
# extern __shared__ [__align__(n)] type name[];
_EXTERN_SHARED = re.compile(r"extern[ \t]+__shared__[ \t]+(?:__align__\(\s*(\d+)\s*\)[ \t]+)?"
                            r"([^;{}()\[\]\n]*?)[ \t]*\b(\w+)[ \t]*\[[ \t]*\][ \t]*;")


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _rewrite_launches(text: str) -> str:
    """``kernel<targs><<<config>>>(`` -> ``::gmk_emu::launch<&kernel<targs>>(config)(``."""
    out, pos = [], 0
    while (start := text.find("<<<", pos)) >= 0:
        end = text.find(">>>", start)
        if end < 0:
            raise ValueError("<<< without >>>")
        # Walk back over the kernel's template arguments (balanced <>) and its name.
        i = start
        while text[i - 1].isspace():
            i -= 1
        if text[i - 1] == ">":
            depth = 0
            while True:
                i -= 1
                depth += {">": 1, "<": -1}.get(text[i], 0)
                if depth == 0:
                    break
        while text[i - 1].isalnum() or text[i - 1] in "_:":
            i -= 1
        kernel = text[i:start].strip()
        if not re.match(r"[\w:]+\s*(<.*>)?$", kernel, re.S):
            raise ValueError(f"cannot parse the kernel of a launch: {kernel!r}")
        out.append(text[pos:i])
        if "<" not in kernel and not re.search(r"__global__[^;{]*\b" + re.escape(kernel) + r"\s*\(", text):
            # A variable (a parameter) holding the kernel: not a constant expression.
            out.append(f"::gmk_emu::launch_pointer({kernel}, {text[start + 3:end]})")
        else:
            out.append(f"::gmk_emu::launch<&{kernel}>({text[start + 3:end]})")
        pos = end + 3
    out.append(text[pos:])
    return "".join(out)


def _rewrite_shared(text: str) -> str:
    def declaration(m):
        align, type_, name, dims = m.group(1) or "0", m.group(2).strip(), m.group(3), m.group(4)
        if not type_ or type_.startswith("extern"):
            raise ValueError(f"unsupported __shared__ declaration: {m.group(0)!r}")
        return (f"static ::gmk_emu::SharedTag {name}_gmk_tag; using {name}_gmk_type = {type_}{dims}; "
                f"{name}_gmk_type& {name} = ::gmk_emu::shared<{name}_gmk_type, {align}>({name}_gmk_tag);")
    def dynamic(m):
        align, type_, name = m.group(1) or "0", m.group(2).strip(), m.group(3)
        return f"{type_}* const {name} = static_cast<{type_}*>(::gmk_emu::dynamic_shared({align}));"
    return _SHARED.sub(declaration, _EXTERN_SHARED.sub(dynamic, text))


def rewrite(source: Path) -> str:
    """The host C++ text of a .cu file (see the module's docstring)."""
    text = source.read_text()
    rewritten = _rewrite_shared(_rewrite_launches(text))
    assert rewritten.count("\n") == text.count("\n"), "the rewrite must keep every line where it was"
    return f'#include "shim.h"\n#line 1 "{source}"\n{rewritten}'


@functools.cache
def flags(cxx: str) -> list[str]:
    """FLAGS, and SANITIZER if the compiler links a shared library with it."""
    with tempfile.TemporaryDirectory() as work:
        probe = Path(work) / "probe.cpp"
        probe.write_text("int f(int a, int b) { return a / b; }\n")
        command = [cxx, *FLAGS, *SANITIZER, "-shared", str(probe), "-o", str(probe.with_suffix(".so"))]
        linked = subprocess.run(command, capture_output=True).returncode == 0
    return FLAGS + (SANITIZER if linked else [])


def _inputs_hash(cxx: str) -> str:
    digest = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    digest.update(f"{cxx}\n{version}\n{flags(cxx)}\n".encode())
    files = [p for p in CSRC.rglob("*") if p.suffix in (".h", ".cu")]
    files += [p for p in HERE.rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".py")]
    for path in sorted(files):
        digest.update(f"{path.relative_to(ROOT)}\n".encode() + path.read_bytes())
    return digest.hexdigest()[:20]


def _cache_dir() -> Path:
    if "GMK_EMULATION_CACHE" in os.environ:
        return Path(os.environ["GMK_EMULATION_CACHE"])
    home = Path.home() / ".cache" / "gmkernels" / "cuda_emulation"
    try:
        home.mkdir(parents=True, exist_ok=True)
        return home
    except OSError:
        return Path(tempfile.gettempdir()) / "gmkernels-cuda-emulation"


def build() -> Path:
    """The path of the library, compiled unless the cache holds it. Raises RuntimeError with g++'s
    messages when a source does not compile."""
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (g++ or $CXX)")
    target = _cache_dir() / _inputs_hash(cxx) / LIBRARY
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        work = Path(work)
        sources = []
        for source in KERNEL_SOURCES:
            generated = work / (source.stem + ".cpp")
            generated.write_text(rewrite(source))
            sources.append(generated)
        sources += [HERE / name for name in EMULATOR_SOURCES]
        jobs = [(source, work / f"{i}.o") for i, source in enumerate(sources)]
        processes = [subprocess.Popen([cxx, *flags(cxx), "-c", str(s), "-o", str(o)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for s, o in jobs]
        errors = [p.communicate()[0] for p in processes]
        if any(p.returncode for p in processes):
            raise RuntimeError("emulation build failed:\n" + "\n".join(e for e in errors if e))
        library = work / LIBRARY
        link = subprocess.run([cxx, *flags(cxx), "-shared", *(str(o) for _, o in jobs), "-o", str(library)],
                              capture_output=True, text=True)
        if link.returncode:
            raise RuntimeError("emulation link failed:\n" + link.stdout + link.stderr)
        os.replace(library, target)  # atomic: concurrent sessions see the whole library or none
    _prune(target.parent.parent, keep=4)
    return target


def _prune(cache: Path, keep: int):
    """Deletes all but the `keep` newest builds (one per source version) from the cache."""
    builds = sorted((p for p in cache.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)
