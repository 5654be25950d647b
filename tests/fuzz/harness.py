"""The fuzz suite's machinery: a drawn call (tensors described, then built inside NaN-fenced buffers), the
backends run on it, and each backend's outcome judged against the reference.

A backend's outcome on one draw is one of
  "error"     a ValueError/TypeError/RuntimeError whose message names the op and one of its arguments;
  "match"     outputs (and gradients) within the op's tolerance of the reference on the same values
              computed in float64 (the reference's own outcome is "match" when it returns);
  a failure   "unclear error", "mismatch", "written" (a fence or an input changed), "crash" or "hang"
              (the last two only seen by tests/fuzz/campaign.py, which runs each op in a child process).
"""
from __future__ import annotations

import faulthandler
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

FAILURES = ("unclear error", "mismatch", "written", "crash", "hang")
OUTCOMES = ("error", "match", "known", *FAILURES)  # known: a mismatch of an open issue (FuzzOp.known)
FENCE = 7  # elements of fence on each side of every tensor argument's storage
DEADLINE_S = float(os.environ.get("GMK_FUZZ_DEADLINE", "300"))  # per draw; past it the process dies with a trace

# (op, backend) -> Counter of outcomes; written out by tests/fuzz/conftest.py
COUNTS: dict[tuple[str, str], Counter] = defaultdict(Counter)


# --- a tensor argument, described -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How a tensor's elements sit in its buffer: ``order`` the dimensions from outermost to innermost in
    memory, ``steps`` the gap factor per dimension (sliced with a step), ``zero`` a dimension of stride 0
    (expanded), ``overlap`` a dimension whose stride is halved (rows overlap, as_strided), ``offset`` the
    elements before the first (misaligned)."""
    order: tuple[int, ...]
    steps: tuple[int, ...]
    zero: int | None = None
    overlap: int | None = None
    offset: int = 0

    def aliases(self, shape) -> bool:
        """Whether two indices may share an element (then the values are drawn per element of storage)."""
        return any(d is not None and shape[d] > 1 for d in (self.zero, self.overlap))

    def strides(self, shape) -> tuple[int, ...]:
        strides, extent = [0] * len(shape), 1
        for d in reversed(self.order):
            strides[d] = extent * self.steps[d]
            extent = strides[d] * max(shape[d], 1)
        if self.zero is not None:
            strides[self.zero] = 0
        if self.overlap is not None:
            strides[self.overlap] = max(1, strides[self.overlap] // 2)
        return tuple(strides)


CONTIGUOUS = None  # a Layout of None: contiguous, offset 0


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument to build: shape, dtype, layout, the kind of values, the seed of its values.

    ``values``: "normal" (N(0, scale^2)), "unit" (uniform in [0, 1)), "grid:<bins>" (the mixture's
    sub-pixel grid in [-1, 1]), "classes:<A>" (ints in [0, A)), "sign" (±scale), "permutation" (a permutation
    matrix), "near_identity" (I + N(0, scale^2): invertible, well conditioned). ``specials``: NaN, ±inf put at a few positions. ``device``: "meta" for a wrong device.
    """
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: Layout | None = CONTIGUOUS
    values: str = "normal"
    scale: float = 1.0
    seed: int = 0
    specials: bool = False
    device: str = "cpu"

    def __repr__(self):  # short, for hypothesis' falsifying examples
        parts = [f"{tuple(self.shape)}", str(self.dtype).removeprefix("torch.")]
        if self.layout is not None:
            parts.append(repr(self.layout))
        for name in ("values", "scale", "seed", "specials", "device"):
            value = getattr(self, name)
            if value != TensorSpec.__dataclass_fields__[name].default:
                parts.append(f"{name}={value!r}")
        return f"T({', '.join(parts)})"

    def _repr_pretty_(self, printer, cycle):  # hypothesis' printer
        printer.text(repr(self))


@dataclass(frozen=True)
class Draw:
    """One call: arguments by name (TensorSpecs, or plain values, or tuples/lists holding TensorSpecs)."""
    args: dict[str, Any]
    grads: tuple[str, ...] = ()  # the tensor arguments to differentiate in
    terms: int = 1               # how many products each output element sums (a conv's Cin·kh·kw)
    seed: int = 0                # the cotangents' seed
    # Extreme inputs: where outputs and gradients are non-finite is judged against the reference in the
    # kernels' compute dtype (an intermediate sum may overflow there and not in float64), values against
    # float64's.
    compute_dtype_range: bool = False
    # With compute_dtype_range: the outputs and gradients are sums of products (or of terms) whose
    # magnitudes the op on the inputs' absolute values gives (see loose_positions).
    sums_of_terms: bool = False


def _values(spec: TensorSpec, shape, generator) -> torch.Tensor:
    kind, _, parameter = spec.values.partition(":")
    if spec.dtype == torch.bool:
        return torch.rand(shape, generator=generator) > 0.5
    if not (spec.dtype.is_floating_point or spec.dtype.is_complex) or kind == "classes":
        high = int(parameter) if kind == "classes" else 4
        low = 0 if kind == "classes" or spec.dtype == torch.uint8 else -3
        return torch.randint(low, max(high, low + 1), shape, generator=generator)
    if kind == "unit":
        return torch.rand(shape, generator=generator, dtype=torch.float64)
    if kind == "grid":
        bins = int(parameter)
        return torch.randint(0, bins, shape, generator=generator).double() * (2 / (bins - 1)) - 1
    if kind == "sign":  # ±scale: the extreme-value tests' inputs
        return spec.scale * (torch.randint(0, 2, shape, generator=generator).double() * 2 - 1)
    if kind == "permutation" and len(shape) == 2 and shape[0] == shape[1]:
        return torch.eye(shape[0], dtype=torch.float64)[torch.randperm(shape[0], generator=generator)]
    if kind == "near_identity" and len(shape) == 2 and shape[0] == shape[1]:  # well conditioned
        return torch.eye(shape[0], dtype=torch.float64) + spec.scale * torch.randn(shape, generator=generator,
                                                                                  dtype=torch.float64)
    values = spec.scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    if spec.specials and values.numel():
        where = torch.randint(0, values.numel(), (3,), generator=generator)
        values.view(-1)[where] = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    return values


def _fill(dtype: torch.dtype):
    if dtype.is_floating_point or dtype.is_complex:
        return math.nan
    return True if dtype == torch.bool else 77


@dataclass
class Fenced:
    """A built tensor argument: the view passed to the op and the whole buffer around it, with a copy of
    the buffer's bytes to compare with after every call."""
    view: torch.Tensor
    buffer: torch.Tensor
    saved: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.saved = self._bytes().clone()

    def _bytes(self) -> torch.Tensor:
        return self.buffer.view(torch.uint8) if self.buffer.dtype != torch.bool else self.buffer

    def written(self) -> bool:
        return not torch.equal(self._bytes(), self.saved)


def build(spec: TensorSpec) -> Fenced:
    shape = tuple(spec.shape)
    generator = torch.Generator().manual_seed(spec.seed)
    if spec.device == "meta":
        view = torch.empty(shape, dtype=spec.dtype, device="meta")
        return Fenced(view, torch.zeros(1))
    layout = spec.layout or Layout(tuple(range(len(shape))), (1,) * len(shape))
    strides = layout.strides(shape)
    extent = 0 if 0 in shape else 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))
    start = FENCE + layout.offset
    buffer = torch.full((start + extent + FENCE,), _fill(spec.dtype), dtype=spec.dtype)
    view = buffer.as_strided(shape, strides, start)
    if layout.aliases(shape):
        buffer[start:start + extent] = _values(spec, (extent,), generator).to(spec.dtype)
    else:
        view.copy_(_values(spec, shape, generator).to(spec.dtype))
    return Fenced(view, buffer)


def build_args(args: dict[str, Any]) -> tuple[dict[str, Any], list[Fenced]]:
    """The draw's arguments with every TensorSpec (also inside tuples and lists) built; the fenced buffers."""
    fenced: list[Fenced] = []

    def built(value):
        if isinstance(value, TensorSpec):
            fenced.append(build(value))
            return fenced[-1].view
        if isinstance(value, (tuple, list)) and any(isinstance(v, TensorSpec) for v in value):
            return type(value)(built(v) for v in value)
        return value
    return {name: built(value) for name, value in args.items()}, fenced


def widened(args: dict[str, Any], to_float64: bool) -> dict[str, Any]:
    """The arguments with their floating-point tensors as float64 (``to_float64``: the values' exact
    oracle), or with float16/bfloat16 ones as float32 (the kernels' compute dtype: the oracle of where the
    outputs are non-finite)."""
    def wide(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().to(torch.float64 if to_float64 else torch.promote_types(value.dtype, torch.float32))
        if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(wide(v) for v in value)
        return value
    return {name: wide(value) for name, value in args.items()}


def has_nonfinite(args: dict[str, Any]) -> bool:
    def nonfinite(value):
        if isinstance(value, torch.Tensor):
            return value.is_floating_point() and value.device.type != "meta" and not value.isfinite().all()
        return isinstance(value, (tuple, list)) and any(nonfinite(v) for v in value)
    return any(nonfinite(value) for value in args.values())


# --- one op and its judge ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FuzzOp:
    """``call(args, backend)`` runs the public function; ``names`` are the names a message may use for the
    op (its public name first); ``arguments`` the argument names a message may name; ``exact_only``: the
    outputs are discrete samples, compared only when computed in float64 (elsewhere a rounding may pick
    another bin or class); ``backends`` False for plain torch functions (run once, as "torch")."""
    name: str
    strategy: Any  # a hypothesis strategy of Draws
    call: Callable[[dict, str | None], Any]
    names: tuple[str, ...]
    arguments: tuple[str, ...]
    exact_only: bool = False
    backends: bool = True
    tolerance_scale: float = 1.0  # on the tables' tolerances
    float64_scale: float = 1.0    # and on float64's alone (a formula that cancels more than float64's 1e-12)
    # An open issue: a mismatch on a draw with a NaN/inf input is counted "known" (not a pass, not a failure of
    # the CI run); tests/fuzz/test_fuzz_regressions.py holds its example as a strict xfail.
    known_nonfinite: str = ""
    # At a NaN/inf input: a call whose outputs are non-finite wherever a backend's may also be (the reference
    # reading every input the kernels multiply, some by a zero weight); see loose_positions.
    nonfinite_upper: Callable[[dict, str | None], Any] | None = None
    # Whether the kernels round an intermediate to the inputs' own dtype on these arguments (upfirdn2d's
    # separable passes): then where outputs are non-finite is judged against the reference in that dtype,
    # and the values with twice the tolerance (two roundings, as tests/conftest.py's assert_close_sum).
    rounds_to_own_dtype: Callable[[dict], bool] | None = None
    # A choice between near-equal candidates (the nearest code): (args, reference result) -> the positions
    # of each output and gradient (bool tensors, or None) where either candidate is right; see loose_positions.
    near_ties: Callable[[dict, "Result"], "Result | None"] | None = None
    # A bound on the forward's rounding error at finite inputs (args -> absolute error), where it can exceed
    # the tables' atol (a fused sum whose terms are much larger than its value); atol is at least that.
    rounding_bound: Callable[[dict], float] | None = None
    # The same for the gradients: (args, the ideal result) -> an absolute error bound per gradient (None where
    # the tables' atol is the tolerance), e.g. a bias gradient that sums terms each rounded to a half dtype.
    grad_rounding_bound: Callable[[dict, "Result"], tuple] | None = None
    # How many times a backend rounds intermediates to the inputs' dtype on these arguments, (args, backend)
    # -> int (Triton's wavenet_layer feeds tl.dot z and grad_h in a half x's dtype): the tolerance's factor.
    backend_roundings: Callable[[dict, str], int] | None = None


def _as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def unclear(op: FuzzOp, error: BaseException) -> str | None:
    """None if ``error`` is a clear error of ``op``, else why it is not."""
    if not isinstance(error, (ValueError, TypeError, RuntimeError)):
        return f"{type(error).__name__} is not a ValueError/TypeError/RuntimeError: {error}"
    message = str(error)
    if not any(name in message for name in op.names):
        return f"{type(error).__name__} does not name the op ({'/'.join(op.names)}): {message}"
    if not any(re.search(rf"(?<![\w.]){re.escape(a)}(?!\w)", message) for a in (*op.arguments, "backend")):
        return f"{type(error).__name__} names none of the arguments {op.arguments}: {message}"
    return None


def tolerance(dtypes, kind: str, terms: int, scale: float) -> tuple[float, float]:
    """The loosest of the dtypes' tolerances (tests/conftest.py's tables): elementwise, or a sum of terms."""
    from conftest import SUM_TOLERANCES, TOLERANCES
    atol = rtol = 0.0
    for dtype in dtypes:
        if terms > 1:
            a, r = SUM_TOLERANCES[dtype]
            a *= math.sqrt(terms)
        else:
            a, r = TOLERANCES[dtype][kind]
        atol, rtol = max(atol, a), max(rtol, r)
    return atol * scale, rtol * scale


def mismatch(actual, ideal, atol: float, rtol: float, pattern=None, loose=None) -> str | None:
    """None if ``actual`` is the float64 ``ideal`` rounded to actual's dtype, within (atol, rtol), and
    non-finite exactly where the rounded ``pattern`` (default: the ideal) is (NaN and ±inf not told
    apart); at the ``loose`` positions (a bool tensor) it may be anything."""
    if not isinstance(actual, torch.Tensor):
        return None if actual == ideal else f"{actual!r} != {ideal!r}"
    if tuple(actual.shape) != tuple(ideal.shape):
        return f"shape {tuple(actual.shape)} != reference's {tuple(ideal.shape)}"
    if "meta" in (actual.device.type, ideal.device.type):  # no values (a module run on a meta input)
        return None if actual.device == ideal.device else f"device {actual.device} != reference's {ideal.device}"
    if not actual.is_floating_point():
        keep = torch.ones_like(actual, dtype=torch.bool) if loose is None else ~loose.to(actual.device)
        same = torch.equal(actual[keep], ideal.to(actual.dtype)[keep])
        return None if same else f"values differ: {actual} vs {ideal}"
    a, e = actual.detach().double(), ideal.detach().to(actual.dtype).double()
    finite = (e if pattern is None else pattern.detach().to(actual.dtype)).isfinite()
    free = torch.zeros_like(finite) if loose is None else loose.to(finite.device)
    if not torch.equal(a.isfinite() | free, finite | free):
        return f"non-finite at other positions than the reference: {a} vs {e}"
    finite &= e.isfinite() & ~free
    try:
        torch.testing.assert_close(a[finite], e[finite], atol=atol, rtol=rtol)
    except AssertionError as error:
        return str(error)
    return None


def _float_dtypes(values) -> set[torch.dtype]:
    found = set()
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found.add(value.dtype)
        elif isinstance(value, (tuple, list)):
            found |= _float_dtypes(value)
    return found


def _grad_inputs(args: dict, names: tuple[str, ...]) -> dict:
    """Leaves for the draw's differentiable tensors (views of the fenced buffers); the rest unchanged."""
    return {name: value.detach().requires_grad_(True)
            if name in names and isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for name, value in args.items()}


@dataclass
class Result:
    outputs: tuple = ()
    grads: tuple = ()
    error: BaseException | None = None
    cotangents: list | None = None  # the ones the gradients were taken with


def run_once(op: FuzzOp, args: dict, backend: str | None, draw: Draw, cotangents: list | None = None) -> Result:
    """Forward, then the gradients of Σ outputs · cotangents in draw.grads (random cotangents, or given)."""
    args = _grad_inputs(args, draw.grads)
    try:
        outputs = _as_tuple(op.call(args, backend))
    except Exception as error:  # noqa: BLE001 - judged by the caller
        return Result(error=error)
    leaves = [args[name] for name in draw.grads if isinstance(args.get(name), torch.Tensor)
              and args[name].requires_grad]
    if cotangents is None:  # one per output, rounded to its dtype: every other run gets these very values
        generator = torch.Generator().manual_seed(draw.seed)
        cotangents = [torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device, out.dtype)
                      if isinstance(out, torch.Tensor) and out.is_floating_point() else None for out in outputs]
    pairs = [(out, c) for out, c in zip(outputs, cotangents) if isinstance(out, torch.Tensor) and out.requires_grad
             and c is not None and c.shape == out.shape]
    grads = ()
    if leaves and pairs:
        try:
            grads = torch.autograd.grad([out for out, _ in pairs], leaves,
                                        [c.to(out.dtype) for out, c in pairs], allow_unused=True)
        except Exception as error:  # noqa: BLE001
            return Result(outputs=outputs, error=error)
    return Result(tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in outputs), grads, None, cotangents)


def judge(op: FuzzOp, draw: Draw) -> dict[str, tuple[str, str]]:
    """Runs every backend on the draw: {backend: (outcome, detail)}; counts the outcomes in COUNTS."""
    from conftest import backends_under_test
    faulthandler.dump_traceback_later(DEADLINE_S, exit=True)
    try:
        verdicts = _judge(op, draw, ["reference", *backends_under_test("cpu")] if op.backends else [None])
    finally:
        faulthandler.cancel_dump_traceback_later()
    for backend, (outcome, _) in verdicts.items():
        COUNTS[(op.name, backend or "torch")][outcome] += 1
    return verdicts


def _known(op: FuzzOp, verdicts: dict, args: dict) -> dict:
    if not op.known_nonfinite or not has_nonfinite(args):
        return verdicts
    return {backend: ("known", f"{op.known_nonfinite}: {detail}") if outcome == "mismatch" else (outcome, detail)
            for backend, (outcome, detail) in verdicts.items()}


def _judge(op: FuzzOp, draw: Draw, backends: list) -> dict:
    args, fenced = build_args(draw.args)
    verdicts = {}
    reference = run_once(op, args, backends[0], draw)
    verdicts[backends[0]] = _verdict(op, reference, fenced, None, None, draw, None)
    ideal = pattern = reference
    if reference.error is None and len(backends) > 1:
        ideal = _oracle(op, args, backends[0], draw, reference, to_float64=True)
        if not (has_nonfinite(args) or draw.compute_dtype_range):
            pattern = None
        elif op.rounds_to_own_dtype is not None and op.rounds_to_own_dtype(args):
            pattern = reference
        else:
            pattern = _oracle(op, args, backends[0], draw, reference, to_float64=False)
    loose = loose_positions(op, args, backends[0], draw, reference, pattern, ideal) if len(backends) > 1 else None
    finite = not has_nonfinite(args)
    bound = op.rounding_bound(args) if op.rounding_bound is not None and finite else 0.0
    grad_bounds = op.grad_rounding_bound(args, ideal) if op.grad_rounding_bound is not None and finite and \
        reference.error is None else ()
    roundings = 2 if op.rounds_to_own_dtype is not None and op.rounds_to_own_dtype(args) else 1
    for backend in backends[1:]:
        result = run_once(op, args, backend, draw, reference.cotangents)
        own = op.backend_roundings(args, backend) if op.backend_roundings is not None else 1
        verdicts[backend] = _verdict(op, result, fenced, ideal, pattern, draw, _float_dtypes(args.values()), loose,
                                     (bound, grad_bounds), max(roundings, own))
    return _known(op, verdicts, args)


def loose_positions(op: FuzzOp, args: dict, backend: str, draw: Draw, reference: Result,
                    pattern: Result | None, ideal: Result) -> Result | None:
    """Per output (and gradient), the positions where a backend may give anything (bool tensors), or None:

    - at a NaN/inf input, with ``op.nonfinite_upper``: where that call's outputs are non-finite and the
      reference's are not: a block product of the kernels multiplies such an input by a zero weight, and
      0 · inf = NaN (the value is the reference's only if no non-finite input reached it);
    - with ``op.near_ties``: where the op chooses between candidates whose scores differ by less than the
      scores' rounding error bound (a near-tie of the nearest-code search), or whose scores a non-finite
      input leaves undefined (inf − inf), the outputs that choice sets;
    - at extreme inputs of sums of terms (``draw.sums_of_terms``): where the float64 value fits the
      dtype but the sum of its terms' magnitudes (the op on the inputs' and the cotangents' absolute values,
      in float64) does not: a partial sum there overflows or not depending on the order of summation
      (inside that bound none can; where the value itself overflows, every order gives ±inf or NaN).
    """
    if reference.error is not None:
        return None
    if op.near_ties is not None:
        ties = op.near_ties(args, reference)
        if ties is not None:
            return ties
    if op.nonfinite_upper is not None and pattern is not None and has_nonfinite(args):
        upper = run_once(replace(op, call=op.nonfinite_upper), widened(args, to_float64=False), backend, draw,
                         reference.cotangents)
        if upper.error is None:
            return Result(tuple(_beyond(u, p) for u, p in zip(upper.outputs, pattern.outputs)), ())
    if draw.sums_of_terms and draw.compute_dtype_range and not has_nonfinite(args):
        bound = run_once(op, _magnitudes(args), backend, draw,
                         [c if c is None else c.double().abs() for c in reference.cotangents or ()])
        if bound.error is None and ideal.error is None:
            dtypes = [o.dtype if isinstance(o, torch.Tensor) else None for o in reference.outputs]
            return Result(tuple(map(_order_decides, bound.outputs, ideal.outputs, dtypes)),
                          tuple(map(_order_decides, bound.grads, ideal.grads, _grad_dtypes(args, draw))))
    return None


def _beyond(upper, pattern):
    if not isinstance(upper, torch.Tensor) or not isinstance(pattern, torch.Tensor) or not upper.is_floating_point():
        return None
    return ~upper.isfinite() & pattern.isfinite()


def _order_decides(bound, value, dtype):
    """Where ``bound`` (the sum of the terms' magnitudes) passes ``dtype``'s max and the float64 ``value``
    does not show the value itself overflowing (finite, and ±inf rounded to the dtype: then every order
    overflows). A float64 value may be ±inf or NaN through an overflowing partial sum itself: in float64
    that shows nothing."""
    if not isinstance(bound, torch.Tensor) or not isinstance(value, torch.Tensor) or not dtype:
        return None
    value = value.detach().double()
    return ~(bound.abs() <= torch.finfo(dtype).max) & ~(value.isfinite() & ~value.to(dtype).isfinite())


def _magnitudes(args: dict) -> dict:
    return {name: value.detach().double().abs() if isinstance(value, torch.Tensor) and value.is_floating_point()
            else value for name, value in args.items()}


def _grad_dtypes(args: dict, draw: Draw) -> list:
    return [args[name].dtype for name in draw.grads if isinstance(args.get(name), torch.Tensor)
            and args[name].is_floating_point()]


def _oracle(op: FuzzOp, args: dict, backend: str, draw: Draw, reference: Result, to_float64: bool) -> Result:
    """The reference on the same values in float64 (the ideal outputs and gradients), or in the kernels'
    compute dtype; the reference's own result where that changes nothing or the op refuses the widened
    arguments (a float32 parameter that must match x's dtype)."""
    wide = widened(args, to_float64)
    if _float_dtypes(wide.values()) == _float_dtypes(args.values()):
        return reference
    result = run_once(op, wide, backend, draw, reference.cotangents)
    return reference if result.error is not None else result


def _verdict(op: FuzzOp, result: Result, fenced: list[Fenced], ideal: Result | None, pattern: Result | None,
             draw: Draw, dtypes: set | None, loose: Result | None = None, bounds: tuple = (0.0, ()),
             roundings: int = 1) -> tuple[str, str]:
    """The outcome of one backend. ``pattern``: where the outputs must be non-finite when an input is
    (None when every input is finite); gradients at non-finite inputs are not compared (the README's
    contract covers outputs only)."""
    if any(f.written() for f in fenced):
        for f in fenced:  # restore, so that the next backend's check is its own
            f._bytes().copy_(f.saved)
        return "written", "a fence or an input changed"
    if result.error is not None:
        reason = unclear(op, result.error)
        return ("unclear error", reason) if reason else ("error", str(result.error))
    if ideal is None:
        return "match", ""
    if ideal.error is not None:
        return "mismatch", f"the reference raised ({ideal.error!r}) but this backend returned"
    if op.exact_only and dtypes != {torch.float64}:
        return "match", "discrete samples in low precision: not compared"
    dtypes = {d for d in (dtypes or ()) | _float_dtypes(result.outputs)} or {torch.float32}
    comparisons = [("forward", result.outputs, ideal.outputs, pattern.outputs if pattern else None,
                    loose.outputs if loose else ())]
    if pattern is None or draw.compute_dtype_range:
        comparisons.append(("grad", result.grads, ideal.grads, pattern.grads if pattern else None,
                            loose.grads if loose else ()))
    for kind, actual, expected, patterns, frees in comparisons:
        if len(actual) != len(expected):
            return "mismatch", f"{len(actual)} {kind} results, the reference has {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            if (a is None) != (e is None):
                return "mismatch", f"{kind} result {i}: None on one side only"
            if a is None:
                continue
            terms = draw.terms if kind == "forward" else draw.terms * _broadcast_terms(a, result.outputs)
            scale = op.tolerance_scale * (op.float64_scale if dtypes == {torch.float64} else 1) * roundings
            atol, rtol = tolerance(dtypes, kind, terms, scale)
            bound = bounds[0] if kind == "forward" else (bounds[1][i] if i < len(bounds[1]) else None)
            atol = max(atol, bound or 0.0)
            why = mismatch(a, e, atol, rtol, patterns[i] if patterns and i < len(patterns) else None,
                           frees[i] if i < len(frees) else None)
            if why:
                return "mismatch", f"{kind} result {i}: {why}"
    return "match", ""


def _broadcast_terms(grad: torch.Tensor, outputs: tuple) -> int:
    """Roughly how many output elements each element of ``grad`` sums (a bias' gradient sums N·H·W)."""
    largest = max((o.numel() for o in outputs if isinstance(o, torch.Tensor)), default=1)
    return max(1, largest // max(grad.numel(), 1))


def failures_of(verdicts: dict) -> list[str]:
    return [f"{backend}: {outcome}: {detail}" for backend, (outcome, detail) in verdicts.items()
            if outcome in FAILURES]
