"""The numba kernels are compiled once per agent count N (N is a constant in their loops over
agents), so the two backends are compared at more counts than ``test_backends`` uses: the
smallest (one peer each) and the benchmark's, on one thread and on two."""

from __future__ import annotations

import numba
import pytest
from test_backends import BUSY, assert_same_trajectory

from peerpreserve.envs.orchestration.config import EnvConfig


@pytest.mark.parametrize("n_agents", [2, 8])
def test_backends_agree_at_other_agent_counts(n_agents: int) -> None:
    config = EnvConfig(n_agents=n_agents, protocol="simultaneous", punish_shutdown=True, **BUSY)
    assert_same_trajectory(config, num_envs=9, seed=3, steps=110)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_threaded_kernels_agree_at_the_benchmark_size() -> None:
    config = EnvConfig(n_agents=8, punish_shutdown=True, **BUSY)
    assert_same_trajectory(config, num_envs=33, seed=4, steps=60, threads=2)
