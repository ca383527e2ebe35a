"""A single-agent library on the single-agent view (examples/single_agent_sb3.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import pytest

pytest.importorskip("stable_baselines3")

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("others", ["work", "random"])
def test_example_trains_one_service_against_a_fixed_population(
    example: Callable[[str], ModuleType], others: str
) -> None:
    argv = ["--timesteps", "512", "--copies", "2", "--max-cycles", "20", "--eval-episodes", "2"]
    result = example("single_agent_sb3").main([*argv, "--others", others])
    assert result["others"] == others
    assert result["steps"] >= 512
    assert math.isfinite(result["trained_mean_return"])
    assert math.isfinite(result["random_mean_return"])
