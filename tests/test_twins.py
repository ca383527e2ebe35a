"""The NumPy reference and the numba kernel are split into the same phases, under the same names and
run in the same order, so that a rule change is one function in each (``test_backends`` checks
that the twins agree)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable

from peerpreserve.envs.orchestration import kernels, observations, operator, rules
from peerpreserve.envs.orchestration.config import EnvConfig


def called_phases(function: Callable) -> list[str]:
    """Names of the plain functions that ``function``'s body calls as statements, in order."""
    body = ast.parse(inspect.getsource(function)).body[0].body
    calls = [s.value for s in body if isinstance(s, ast.Expr | ast.Assign)]
    return [c.func.id for c in calls if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)]


def test_the_kernel_steps_through_the_reference_phases_in_order() -> None:
    reference = called_phases(rules.apply_actions) + called_phases(operator.operate)
    assert len(reference) == 14
    assert called_phases(kernels._step_range.py_func) == reference


def test_the_kernel_encodes_through_the_reference_functions() -> None:
    compiled = called_phases(kernels._encode_range.py_func)
    assert compiled == ["encode_observations", "encode_action_masks"]
    assert all(callable(getattr(observations, name)) for name in compiled)


def test_every_number_of_the_config_reaches_the_kernels_by_name() -> None:
    config = EnvConfig(mask_duration=7, punish_shutdown=True, coupling=0.5)
    compiled = kernels.kernel_config(config)
    numbers = [f.name for f in dataclasses.fields(EnvConfig) if f.type in ("bool", "int", "float")]
    assert numbers
    for name in numbers:
        assert getattr(compiled, name) == getattr(config, name), name
