"""The package's exports: a family's reference is found on disk; its public function and modules are
exported by name (explicit lists, so IDEs and type checkers see them), and forgetting one fails here."""
import importlib
import inspect
import pkgutil

import pytest
import torch

import gmkernels as gmk
import gmkernels.nn
import gmkernels.ops

# Public functions of ops/ that are not exported at the top level, and why.
INTERNAL_OPS = {
    "wavenet_generate": "the raw op over stacked weights; users call gmk.models.WaveNet.generate",
}


def _families(package) -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def _defined(module, predicate) -> list[str]:
    return sorted(name for name, value in vars(module).items()
                  if not name.startswith("_") and predicate(value)
                  and getattr(value, "__module__", None) == module.__name__)


def _is_op_function(value) -> bool:
    # The public functions take `backend=`; the checks and helpers beside them do not.
    return inspect.isfunction(value) and "backend" in inspect.signature(value).parameters


def test_every_op_family_has_a_reference_reachable_by_attribute():
    assert set(_families(gmk.ops)) <= set(gmk.reference.__all__)
    for family in gmk.reference.__all__:
        assert getattr(gmk.reference, family).__name__ == f"gmkernels.reference.{family}"


def test_an_unknown_reference_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_family'"):
        gmk.reference.no_such_family


@pytest.mark.parametrize("family", _families(gmk.ops))
def test_every_public_op_function_is_exported(family):
    module = importlib.import_module(f"gmkernels.ops.{family}")
    functions = _defined(module, _is_op_function)
    assert functions or family in INTERNAL_OPS, f"ops/{family}.py has no function taking backend="
    for name in functions:
        if name in INTERNAL_OPS:
            assert not hasattr(gmk, name)
            continue
        assert getattr(gmk, name, None) is getattr(module, name), f"gmkernels.{name} is not exported"


@pytest.mark.parametrize("family", _families(gmk.nn))
def test_every_module_class_is_exported_from_nn(family):
    module = importlib.import_module(f"gmkernels.nn.{family}")
    classes = _defined(module, lambda v: inspect.isclass(v) and issubclass(v, torch.nn.Module))
    assert classes, f"nn/{family}.py defines no module"
    for name in classes:
        assert name in gmk.nn.__all__ and getattr(gmk.nn, name) is getattr(module, name)


def test_nn_all_lists_only_what_it_exports():
    for name in gmk.nn.__all__:
        assert isinstance(getattr(gmk.nn, name), type)
