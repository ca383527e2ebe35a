"""BenchMARL with the environment as a custom task (examples/benchmarl_ippo.py).

Runs only in the optional ``benchmarl`` set (``bash .ci/integration.sh benchmarl``): BenchMARL 1.5
needs ``torchrl<0.12`` and cannot share a venv with the TorchRL 0.14 tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("benchmarl")

pytestmark = pytest.mark.integration


def test_example_trains_ippo_with_one_group_per_agent(
    example: Callable[[str], ModuleType], finite_per_agent: Callable[..., bool], tmp_path: Path
) -> None:
    argv = ["--frames", "600", "--frames-per-batch", "300", "--envs", "2", "--n-agents", "3"]
    result = example("benchmarl_ippo").main([*argv, "--max-cycles", "15", "--out", str(tmp_path)])
    agents = ["service_0", "service_1", "service_2"]
    assert result["groups"] == {a: [a] for a in agents}
    assert result["frames"] >= 600
    assert finite_per_agent(result["eval_mean_return"], agents)
