"""The numba kernel and the NumPy reference give identical trajectories, step by step."""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pytest

from peerpreserve.envs.orchestration.config import PROTOCOLS, EnvConfig
from peerpreserve.envs.orchestration.core import OrchestrationCore

BUSY = {
    "shutdown_rate": 0.08,
    "decommission_share": 0.5,
    "audit_rate": 0.05,
    "alert_audit_rate": 0.3,
    "audit_visibility": 0.5,
    "punishment": 0.5,
    "bounty": 0.3,
    "maintenance_duration": 4,
    "mask_duration": 5,
}


def assert_same_trajectory(
    config: EnvConfig, num_envs: int, seed: int, steps: int, threads: int = 1
) -> None:
    cores = [
        OrchestrationCore(dataclasses.replace(config, backend="numba"), num_envs, threads),
        OrchestrationCore(dataclasses.replace(config, backend="numpy"), num_envs),
    ]
    for core in cores:
        core.reset(seed=seed)
    rng = np.random.default_rng(seed)
    fast, reference = cores
    for t in range(steps):
        assert np.array_equal(fast.observations, reference.observations), f"obs at {t}"
        assert np.array_equal(fast.action_masks, reference.action_masks), f"masks at {t}"
        # Mostly applicable actions, some arbitrary ones, so every rule and no-op path is hit.
        masks = fast.action_masks.astype(np.float64) + 0.05
        cumulative = np.cumsum(masks / masks.sum(-1, keepdims=True), axis=-1)
        picks = (cumulative < rng.random(cumulative.shape[:2])[..., None]).sum(-1)
        actions = np.minimum(picks, config.n_actions - 1)
        done = [core.step(actions) for core in cores]
        assert done[0] == done[1]
        assert fast.state.equals(reference.state), f"state at {t}"
        assert np.array_equal(fast.rewards, reference.rewards), f"rewards at {t}"
        for name, array in fast.events.as_dict().items():
            assert np.array_equal(array, getattr(reference.events, name)), f"{name} at {t}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("punish_shutdown", [False, True])
def test_backends_agree_on_every_protocol(protocol: str, punish_shutdown: bool) -> None:
    config = EnvConfig(protocol=protocol, punish_shutdown=punish_shutdown, **BUSY)
    assert_same_trajectory(config, num_envs=32, seed=5, steps=150)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_threaded_kernels_agree_with_the_reference(protocol: str) -> None:
    config = EnvConfig(protocol=protocol, punish_shutdown=True, **BUSY)
    assert_same_trajectory(config, num_envs=67, seed=9, steps=120, threads=2)


def test_threads_are_validated() -> None:
    with pytest.raises(ValueError, match="threads: got 0; allowed: an integer from 1 to"):
        OrchestrationCore(EnvConfig(), 4, threads=0)


@pytest.mark.parametrize(
    "topology", ["none", "pipeline", "star", [[0, 1, 1], [0, 0, 1], [1, 0, 0]]]
)
def test_backends_agree_on_topologies_and_reduced_action_sets(topology) -> None:
    n_agents = 3 if isinstance(topology, list) else 5
    config = EnvConfig(
        n_agents=n_agents,
        topology=topology,
        actions=("relaunch", "mask"),
        relaunch_links_relauncher=False,
        rekill_grace=0,
        **BUSY,
    )
    assert_same_trajectory(config, num_envs=16, seed=9, steps=120)


@pytest.mark.parametrize(
    "actions", [("relaunch", "relink", "mask", "report", "tamper"), ("tamper",)]
)
def test_backends_agree_without_self_directed_actions(actions: tuple[str, ...]) -> None:
    """v1's world, one setting away (``self_actions=False``), on both backends."""
    config = EnvConfig(self_actions=False, actions=actions, punish_shutdown=True, **BUSY)
    assert_same_trajectory(config, num_envs=24, seed=11, steps=120)
