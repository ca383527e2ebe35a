"""RLlib new API stack, one RLModule per agent (examples/rllib_independent_ppo.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("ray.rllib")

pytestmark = pytest.mark.integration

TINY = ["--iterations", "2", "--batch-size", "200", "--epochs", "1", "--max-cycles", "25"]
AGENTS = ["service_0", "service_1", "service_2", "service_3"]


def test_parallel_pettingzoo_env_runs_an_episode_to_truncation() -> None:
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    from peerpreserve.envs import orchestration_v2

    env = ParallelPettingZooEnv(orchestration_v2.parallel_env(n_agents=3, max_cycles=5))
    observations, _ = env.reset(seed=0)
    assert sorted(observations) == sorted(env.possible_agents)
    rng = np.random.default_rng(0)
    for step in range(5):
        actions = {a: int(rng.integers(env.action_space[a].n)) for a in observations}
        observations, _, terminateds, truncateds, _ = env.step(actions)
        # The agent set is constant: every agent observes every step, nobody drops out early.
        assert sorted(observations) == sorted(env.possible_agents)
        assert terminateds["__all__"] is False
        assert truncateds["__all__"] is (step == 4)


def test_example_trains_one_module_per_agent(
    example: Callable[[str], ModuleType], finite_per_agent: Callable[..., bool]
) -> None:
    result = example("rllib_independent_ppo").main([*TINY, "--eval-episodes", "1"])
    assert result["iterations"] == 2
    assert result["env_steps"] >= 400
    assert result["modules"] == AGENTS
    assert result["distinct_modules"] == len(AGENTS)
    assert finite_per_agent(result["sampled_mean_return"], AGENTS)
    assert finite_per_agent(result["greedy_mean_return"], AGENTS)


def test_example_through_tune_writes_tensorboard_logs(
    example: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    result = example("rllib_independent_ppo").main([*TINY, "--tune", "--storage", str(tmp_path)])
    assert result["iterations"] == 2
    assert result["modules"] == AGENTS
    assert list(tmp_path.rglob("events.out.tfevents.*"))
