"""Every Triton kernel specialisation this session launched under the interpreter, compiled for sm_90.

The interpreter runs the kernels' Python; it cannot catch what only the GPU compiler rejects: types,
lowering, ``tl.dot`` shapes, constexpr misuse, shared memory. conftest records each launch (kernel,
argument types, constexprs; see ``TRITON_LAUNCHES`` for the rules that turn them into the GPU's
specialisations: autotune configs, INTERPRETED, PRECISION) and moves this test to the end of the session,
so that it compiles what the tests before it ran, with no signature written by hand, new kernels included.
A run of a few test files compiles their kernels only. On a GPU the kernels are compiled for real: it skips.

Not covered: tile sizes that a launcher picks by hand for the interpreter (``16 if triton_interpreted()``
outside an autotuner: the interpreter's value is compiled, not the GPU's), integer arguments past 2^31
(i64) when no test launches them, and the GPU's specialisation of integers equal to 1 and 16-byte alignment.
"""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import TRITON_LAUNCHES, TRITON_UNRECORDED

# Compiles of one kernel at most; past it the first of the greedy choice (the test says so in a warning).
MAX_PER_KERNEL = 64

# Reads the launches (JSON on stdin), expands the autotuned ones into their GPU configs (this process
# imports the modules without the interpreter), dedupes, chooses, compiles; writes a JSON summary.
# The choice: the tests launch some kernels with hundreds of combinations of argument types, constexprs
# and configs (a second or more of compiling each, cold; Triton's cache makes reruns instant): a greedy
# choice in which every value of every argument is compiled, and every argument type (a dtype) and every
# autotune config with every value of every other argument (a flag, a dtype, a config) that some launch
# had with it: what changes the code's types and tile shapes, with everything else.
_COMPILE = r"""
import dataclasses, importlib, itertools, json, sys, time, traceback
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SHARED_MEMORY = 232448  # bytes a block may use on sm_90 (227 KB)


def kernel(job):
    fn = importlib.import_module(job["module"])
    for part in job["kernel"].split("."):
        fn = getattr(fn, part)
    while not hasattr(fn, "cache_key"):  # an autotuner or heuristics around the JITFunction
        fn = fn.fn
    return fn


def features(job):
    values = [("type", name, kind) for name, kind in job["signature"].items()]
    values += [("value", name, json.dumps(value)) for name, value in job["constexprs"].items()
               if name not in job["config_keys"]]
    values.append(("config", json.dumps([job["config"], job["options"]])))
    return values


def choose(group):
    # Greedy: the job that compiles the most values and pairs not yet compiled, until all of the group's are:
    # every value of every argument, and every argument type (dtype) and every config with every other value.
    varying = {}
    for job in group:
        for value in features(job):
            varying.setdefault(value[:-1], set()).add(value[-1])
    pairs = []
    for job in group:
        values = sorted(v for v in features(job) if len(varying[v[:-1]]) > 1)
        pairs.append({*((v,) for v in values),
                      *(pair for pair in itertools.combinations(values, 2)
                        if {"type", "config"} & {pair[0][0], pair[1][0]})})
    todo, chosen = set().union(*pairs), []
    while todo:
        best = max(range(len(group)), key=lambda i: len(pairs[i] & todo))
        chosen.append(group[best])
        todo -= pairs[best]
    return chosen or group[:1]


jobs = {}
for launch in json.load(sys.stdin):
    configs = [None]
    if launch["autotuner"] is not None:
        configs = getattr(importlib.import_module(launch["module"]), launch["autotuner"]).configs
    for index, config in enumerate(configs):
        job = {key: launch[key] for key in ("module", "kernel", "signature", "constexprs", "options")}
        job["config"], job["config_keys"] = None, []
        if config is not None:
            job["config"], job["config_keys"] = index, sorted(config.kwargs)
            job["constexprs"] = {**job["constexprs"], **config.kwargs}
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages,
                       "num_ctas": config.num_ctas, "maxnreg": config.maxnreg}
            job["options"] = {k: v for k, v in options.items() if v is not None}
        jobs.setdefault(json.dumps({k: v for k, v in job.items() if k != "config"}, sort_keys=True), job)

by_kernel, cut = {}, []
for key, job in sorted(jobs.items()):
    by_kernel.setdefault((job["module"], job["kernel"]), []).append(job)
for (module, name), group in by_kernel.items():
    chosen = choose(group)
    if len(chosen) > MAX_PER_KERNEL:
        cut.append(f"{module}.{name}: {MAX_PER_KERNEL} of the {len(chosen)} chosen")
        chosen = chosen[:MAX_PER_KERNEL]
    by_kernel[module, name] = chosen

try:  # each specialisation's registers, stack frame and shared memory, for gmk bench --static
    from gmkernels.benchmarks import static
    if static.find_tool("cuobjdump") is None:
        static = None
except ImportError:
    static = None

target = GPUTarget("cuda", 90, 32)
failures, too_big, resources, compiled, start = [], [], [], 0, time.time()
for group in by_kernel.values():
    for job in group:
        try:
            fn = kernel(job)
            names = fn.arg_names
            signature = {name: job["signature"].get(name, "constexpr") for name in names}
            constexprs = {(names.index(name),): value for name, value in job["constexprs"].items()}
            binary = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=target,
                                    options=job["options"])
            assert binary.asm["cubin"], "no cubin"
            compiled += 1
            if static is not None and binary.metadata.shared <= SHARED_MEMORY:  # (a config that never runs: below)
                detail = json.dumps({"signature": job["signature"], "constexprs": job["constexprs"],
                                     "options": job["options"]}, sort_keys=True)
                kernel_resources = static.cubin_kernel(binary.asm["cubin"], f"{job['module']}.{job['kernel']}",
                                                       32 * binary.metadata.num_warps, binary.metadata.shared,
                                                       detail)
                resources.append(dataclasses.asdict(kernel_resources))
            if binary.metadata.shared > SHARED_MEMORY:  # a launch fails: out of resources
                error = f"{binary.metadata.shared} bytes of shared memory, sm_90 has {SHARED_MEMORY}"
                if job["config"] is None:
                    raise RuntimeError(error)
                # The autotuner skips a config that runs out of resources: a config that never runs.
                too_big.append(f"{job['module']}.{job['kernel']} config {job['constexprs']} "
                               f"{job['options']} with {job['signature']}: {error}")
        except Exception:
            failures.append({**job, "error": traceback.format_exc()[-3000:]})
json.dump({"kernels": sorted(f"{m}.{k}" for m, k in by_kernel), "compiled": compiled, "distinct": len(jobs),
           "cut": cut, "too_big": too_big, "resources": resources,
           "failures": failures, "seconds": time.time() - start}, sys.stdout)
""".replace("MAX_PER_KERNEL", str(MAX_PER_KERNEL))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the tests compile the kernels for real")
def test_launched_triton_kernels_compile_for_sm90():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("records launches under the Triton interpreter only")
    assert not TRITON_UNRECORDED, f"launches that could not be recorded: {TRITON_UNRECORDED}"
    if not TRITON_LAUNCHES:
        pytest.skip("no test before this one launched a Triton kernel")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    launches = json.dumps(list(TRITON_LAUNCHES.values()))
    result = subprocess.run([sys.executable, "-c", _COMPILE], input=launches, env=env, capture_output=True,
                            text=True, check=False, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    print(f"compiled {summary['compiled']} of {summary['distinct']} distinct specialisations (every value; "
          f"every argument type and config with every other value) of {len(summary['kernels'])} "
          f"Triton kernels for sm_90 in {summary['seconds']:.0f} s: {', '.join(summary['kernels'])}")
    if summary["cut"]:
        warnings.warn("Triton kernels with more specialisations than MAX_PER_KERNEL, compiled in part: "
                      + "; ".join(summary["cut"]), stacklevel=1)
    if summary["too_big"]:
        warnings.warn("autotune configs that run out of shared memory on sm_90 (the autotuner skips them): "
                      + "; ".join(summary["too_big"]), stacklevel=1)
    failures = summary["failures"]
    report = [f"{f['module']}.{f['kernel']} signature={f['signature']} constexprs={f['constexprs']} "
              f"options={f['options']}\n{f['error']}" for f in failures]
    assert not failures, (f"{len(failures)} Triton specialisations do not compile for sm_90:\n\n"
                          + "\n\n".join(report))
    _check_resources(summary["resources"])


def _check_resources(resources: list[dict]):
    """No specialisation of a kernel that benchmarks/static_baseline.json lets spill has a stack frame, and every
    block can launch on sm_90; the resources are recorded for ``gmk bench --static``."""
    static = pytest.importorskip("gmkernels.benchmarks.static", reason="the benchmarks are not installed")
    if not resources:
        warnings.warn("no cuobjdump (CUDA toolkit or Triton's copy): Triton resources not checked", stacklevel=1)
        return
    kernels = [static.Kernel(**kernel) for kernel in resources]
    path = static.write_triton_record(kernels)
    print(f"recorded the registers, stack and shared memory of {len(kernels)} specialisations in {path}")
    baseline = static.load_baseline()
    grown = static.growth(kernels, baseline)
    if grown:
        warnings.warn("Triton specialisations spilling more than benchmarks/static_baseline.json's largest frame "
                      "for their kernel: " + "; ".join(grown), stacklevel=1)
    problems = static.check(kernels, baseline)
    assert not problems, "Triton specialisations that newly spill or cannot launch on sm_90:\n" + "\n".join(problems)
