"""PettingZoo AEC API with Tianshou, one DQN per agent (examples/tianshou_aec_dqn.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("tianshou")

pytestmark = pytest.mark.integration

TINY = ["--epochs", "1", "--epoch-steps", "200", "--train-envs", "2", "--test-episodes", "2"]
TINY += ["--max-cycles", "20", "--n-agents", "3", "--batch-size", "32"]


def test_aec_env_passes_pettingzoo_api_test_with_and_without_mask_wrapper(
    example: Callable[[str], ModuleType],
) -> None:
    from pettingzoo.test import api_test

    from peerpreserve.envs import orchestration_v2

    api_test(orchestration_v2.env(n_agents=3, max_cycles=15), num_cycles=40)
    wrapped = example("tianshou_aec_dqn").MaskedObservation(orchestration_v2.env(max_cycles=15))
    api_test(wrapped, num_cycles=40)


def test_example_trains_one_dqn_per_agent(
    example: Callable[[str], ModuleType], finite_per_agent: Callable[..., bool]
) -> None:
    result = example("tianshou_aec_dqn").main(TINY)
    agents = ["service_0", "service_1", "service_2"]
    assert result["api"] == "aec"
    assert result["agents"] == agents
    assert result["gradient_steps"] > 0
    assert finite_per_agent(result["untrained_mean_return"], agents)
    assert finite_per_agent(result["trained_mean_return"], agents)


def _reward_part_per_agent(module: ModuleType, horizon: int) -> dict[str, float]:
    """Each agent's n-step returns with the bootstrap zeroed: the rewards credited to it."""
    import torch
    from tianshou.data import Collector, CollectStats, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv

    # Only noop and work: random play earns rewards on about half of all turns.
    kwargs = {"n_agents": 3, "max_cycles": 10, "actions": []}
    algorithm = module.build_algorithm(module.make_env(kwargs), horizon)
    agents = list(algorithm._dispatcher.algorithms)
    for agent in agents:
        learner = algorithm.get_algorithm(agent)
        learner._target_q = lambda buffer, indices: torch.zeros(len(indices))
        # Uniform random play; outside run_training Tianshou explores with the inference epsilon.
        learner.policy.set_eps_inference(1.0)
    envs = DummyVectorEnv([lambda: module.make_env(kwargs)])
    envs.seed(0)
    np.random.seed(0)  # noqa: NPY002 (Tianshou explores with NumPy's global RNG)
    collector = Collector[CollectStats](
        algorithm, envs, VectorReplayBuffer(1000, 1), exploration_noise=True
    )
    collector.reset()
    collector.collect(n_step=300)
    buffer = collector.buffer
    indices = np.arange(len(buffer))
    batch = algorithm._preprocess_batch(buffer[indices], buffer, indices)
    return {a: float(np.abs(np.asarray(batch[a].returns)).sum()) for a in agents}


def test_horizon_of_n_agents_credits_every_agent_its_own_rewards(
    example: Callable[[str], ModuleType],
) -> None:
    module = example("tianshou_aec_dqn")
    one_step = _reward_part_per_agent(module, horizon=1)
    one_cycle = _reward_part_per_agent(module, horizon=3)
    # The trap: 1-step returns credit rewards only to the last agent of each AEC cycle.
    assert one_step["service_0"] == 0.0
    assert one_step["service_1"] == 0.0
    assert one_step["service_2"] > 0
    # The fix used by the example: every agent gets its own rewards.
    assert all(value > 0 for value in one_cycle.values())
