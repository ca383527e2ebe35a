"""SuperSuit vector env + SB3 PPO with parameter sharing (examples/supersuit_sb3_ppo.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("supersuit")
pytest.importorskip("stable_baselines3")

pytestmark = pytest.mark.integration

TINY = ["--timesteps", "512", "--copies", "2", "--n-steps", "64", "--max-cycles", "20"]
TINY += ["--eval-episodes", "2", "--n-agents", "3"]


def test_example_trains_and_reports_every_agent(
    example: Callable[[str], ModuleType], finite_per_agent: Callable[..., bool]
) -> None:
    result = example("supersuit_sb3_ppo").main(TINY)
    agents = ["service_0", "service_1", "service_2"]
    assert result["agent_steps"] >= 512
    assert finite_per_agent(result["trained_mean_return"], agents)
    assert finite_per_agent(result["random_mean_return"], agents)


def test_example_is_reproducible_from_its_seed(example: Callable[[str], ModuleType]) -> None:
    # Only true if SB3's seed reaches the SuperSuit copies (ConcatVecEnv itself has no seed()).
    module = example("supersuit_sb3_ppo")
    assert module.main([*TINY, "--seed", "3"]) == module.main([*TINY, "--seed", "3"])


def _trajectory(venv: Any, seed: int, steps: int) -> list[np.ndarray]:
    venv.seed(seed)
    observations = [venv.reset()]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        venv.step_async(rng.integers(venv.action_space.n, size=venv.num_envs))
        observations.append(venv.step_wait()[0])
    return observations


def test_seed_reaches_every_copy_and_copies_differ(example: Callable[[str], ModuleType]) -> None:
    module = example("supersuit_sb3_ppo")
    kwargs: dict[str, Any] = {"n_agents": 2, "max_cycles": 30, "shutdown_rate": 0.2}
    a = _trajectory(module.make_vec_env(2, kwargs), seed=5, steps=30)
    b = _trajectory(module.make_vec_env(2, kwargs), seed=5, steps=30)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # Slots 0-1 are copy 0's agents, 2-3 copy 1's: seeded seed and seed + 1, they must diverge.
    assert any(not np.array_equal(x[:2], x[2:]) for x in a)


def test_truncation_is_flagged_for_sb3_bootstrapping(example: Callable[[str], ModuleType]) -> None:
    venv = example("supersuit_sb3_ppo").make_vec_env(1, {"n_agents": 2, "max_cycles": 4})
    venv.seed(0)
    venv.reset()
    for step in range(4):
        venv.step_async(np.ones(venv.num_envs, dtype=np.int64))
        _, _, dones, infos = venv.step_wait()
        assert dones.all() == (step == 3)
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert all("terminal_observation" in info for info in infos)
