"""One declaration per op: its schema, argument checks, fake, autograd and backends, written once.

From an :class:`Op`:

- ``torch.ops.gmkernels.<name>`` gets its schema (the C++ kernels of ``gmkernels._C`` register themselves
  under the CPU and CUDA dispatch keys), its fake and its autograd;
- ``torch.ops.gmk_triton.<name>`` is made from the family's Triton launcher with the same schema; it runs
  the declared checks (and the Triton dtypes) before launching, and gets the same fake and autograd;
- ``op.run(backend, *args)`` calls the named backend's op; the public function picks the backend with
  ``op.backends.select(...)``.

``check(function, *args)`` is the one Python statement of the op's argument rules: the public function calls
it before choosing a backend (``function`` is its public name) and the Triton op calls it with
``"gmk_triton::<name>"``. The C++ ops keep their own ``TORCH_CHECK``s, the safety net of a direct call.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from .._backend import TRITON_INSTALLED, OpBackends
from .._extension import has_extension

CPP_NAMESPACE, TRITON_NAMESPACE = "gmkernels", "gmk_triton"
_LIBRARIES: dict[str, torch.library.Library] = {}
DECLARED: dict[str, Op] = {}  # every declared op by name (tests walk it)


def triton_family(family: str) -> ModuleType | None:
    """``gmkernels.triton.<family>`` (the launchers), or None where Triton is not installed."""
    return importlib.import_module(f"gmkernels.triton.{family}") if TRITON_INSTALLED else None


def namespace_of(backend: str) -> str:
    return TRITON_NAMESPACE if backend == "triton" else CPP_NAMESPACE


@dataclass(frozen=True)
class Autograd:
    """How an op is differentiated, for both namespaces.

    ``setup_context(ctx, inputs, output)`` as in ``torch.library.register_autograd``;
    ``backward(ops, ctx, *grads)`` where ``ops`` is the namespace of the op being differentiated
    (``torch.ops.gmkernels`` or ``torch.ops.gmk_triton``), so a backward calls its own backend's ops.
    """

    setup_context: Callable
    backward: Callable


class Op:
    """One custom op: ``name``, ``schema`` (the part after the name, e.g. ``"(Tensor x) -> Tensor"``),
    ``check(function, *args)``, ``fake(*args)``, and optionally:

    - ``triton``: the launcher ``(*args) -> outputs`` of the Triton backend (None: no Triton kernel);
    - ``autograd``: an :class:`Autograd`; or ``formula``: the op's outputs written in torch ops, which makes
      the op differentiable by differentiating the formula (the double backward of the backward ops);
    - ``backends``: the dtypes and ``auto`` order of the public function that calls this op;
    - ``cpp``: False for an op with only a Triton kernel;
    - ``dtype_of(*args)``: the tensor whose dtype the Triton dtypes are checked on (the first tensor argument).
    """

    def __init__(self, name: str, schema: str, *, check: Callable, fake: Callable, triton: Callable | None = None,
                 autograd: Autograd | None = None, formula: Callable | None = None,
                 backends: OpBackends | None = None, cpp: bool = True, dtype_of: Callable | None = None):
        if name in DECLARED:
            raise RuntimeError(f"op {name!r} is declared twice")
        DECLARED[name] = self
        self.name, self.schema, self.check, self.fake = name, schema, check, fake
        self.dtype_of = dtype_of or _first_tensor
        self.backends = backends or OpBackends(name)
        self.cpp = cpp and has_extension()
        self.triton = TRITON_INSTALLED and triton is not None
        if self.cpp:
            _define(CPP_NAMESPACE, name, schema)
        if self.triton:
            _define(TRITON_NAMESPACE, name, schema)
            _implement_triton(self, triton)
        for namespace in self.namespaces():
            qualname = f"{namespace}::{name}"
            torch.library.register_fake(qualname, fake, lib=_library(namespace))
            if autograd is not None:
                _register_autograd(qualname, namespace, autograd)
            elif formula is not None:
                _register_formula(qualname, formula)
        # Resolved once, per backend: lookups in torch.ops on every call are measurable on small CPU ops.
        self._overloads = {backend: getattr(getattr(torch.ops, namespace_of(backend)), name).default
                           for backend in ("cpu", "cuda", "triton") if self.has(backend)}
        self.select = self.backends.select

    def namespaces(self) -> list[str]:
        return [namespace for namespace, defined in ((CPP_NAMESPACE, self.cpp), (TRITON_NAMESPACE, self.triton))
                if defined]

    def has(self, backend: str) -> bool:
        """Whether ``backend`` ("cpu", "cuda", "triton") has a kernel of this op in this build."""
        return self.triton if backend == "triton" else self.cpp and backend in ("cpu", "cuda")

    def op(self, backend: str):
        """The op that runs on ``backend``: ``torch.ops.gmkernels.<name>`` or ``torch.ops.gmk_triton.<name>``."""
        overload = self._overloads.get(backend)
        return overload or getattr(getattr(torch.ops, namespace_of(backend)), self.name).default

    def run(self, backend: str, *args):
        overload = self._overloads.get(backend)
        return (overload or self.op(backend))(*args)

    # select(backend, device, dtype): the backend a call runs on, bound in __init__ to the op's
    # OpBackends.select (see gmkernels._backend).


def _library(namespace: str) -> torch.library.Library:
    if namespace not in _LIBRARIES:
        _LIBRARIES[namespace] = torch.library.Library(namespace, "FRAGMENT")  # noqa: TOR901 (kept for the process)
    return _LIBRARIES[namespace]


def _define(namespace: str, name: str, schema: str) -> None:
    """Defines ``namespace::name``; where the C++ library already defines it, checks the schemas agree."""
    qualname = f"{namespace}::{name}"
    declared = torch._C.parse_schema(qualname + schema)
    try:
        existing = torch._C._get_schema(qualname, "")
    except RuntimeError:  # not defined yet
        _library(namespace).define(name + schema)
        return
    if str(existing) != str(declared):
        raise RuntimeError(f"{qualname}: the C++ schema {existing} differs from the declared {declared}")


def _first_tensor(*args) -> torch.Tensor:
    return next(arg for arg in args if isinstance(arg, torch.Tensor))


def _implement_triton(op: Op, launcher: Callable) -> None:
    """The Triton kernel of ``op``: the declared checks and the Triton dtypes, then the launcher."""
    function = f"{TRITON_NAMESPACE}::{op.name}"
    dtypes = op.backends.dtypes.get("triton", frozenset())

    def checked(*args):
        op.check(function, *args)
        tensor = op.dtype_of(*args)
        if tensor.dtype not in dtypes:
            names = ", ".join(sorted(str(dtype).removeprefix("torch.") for dtype in dtypes))
            raise TypeError(f"{function}: {op.name}'s tensors must be {names}, got {tensor.dtype}")
        return launcher(*args)

    _library(TRITON_NAMESPACE).impl(op.name, checked, "CompositeExplicitAutograd")


def _register_autograd(qualname: str, namespace: str, autograd: Autograd) -> None:
    ops = getattr(torch.ops, namespace)

    def backward(ctx, *grads):
        return autograd.backward(ops, ctx, *grads)

    torch.library.register_autograd(qualname, backward, setup_context=autograd.setup_context,
                                    lib=_library(namespace))


def _register_formula(qualname: str, formula: Callable) -> None:
    """Differentiates the op by recomputing ``formula`` (its outputs in torch ops) under autograd."""
    schema = torch._C._get_schema(qualname, "")
    tensor_args = [i for i, argument in enumerate(schema.arguments) if "Tensor" in str(argument.type)]

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*(inputs[i] for i in tensor_args))
        ctx.inputs = [None if i in tensor_args else value for i, value in enumerate(inputs)]

    def backward(ctx, *grads):
        inputs = list(ctx.inputs)
        leaves = []
        for i, saved in zip(tensor_args, ctx.saved_tensors):
            inputs[i] = None if saved is None else saved.detach().requires_grad_(saved.is_floating_point())
            leaves.append(inputs[i])
        with torch.enable_grad():
            outputs = formula(*inputs)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        pairs = [(out, grad) for out, grad in zip(outputs, grads)
                 if out is not None and grad is not None and out.requires_grad]
        differentiable = [leaf for leaf in leaves if leaf is not None and leaf.requires_grad]
        result = iter(torch.autograd.grad([out for out, _ in pairs], differentiable, [grad for _, grad in pairs],
                                          allow_unused=True, create_graph=torch.is_grad_enabled())
                      if pairs and differentiable else [None] * len(differentiable))
        by_leaf = {id(leaf): next(result) for leaf in differentiable}
        return tuple(by_leaf.get(id(value)) if i in tensor_args and value is not None else None
                     for i, value in enumerate(inputs))

    namespace = qualname.split("::")[0]
    torch.library.register_autograd(qualname, backward, setup_context=setup_context, lib=_library(namespace))
