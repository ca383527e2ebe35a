"""Property tests over random configurations and actions: spaces, invariants, no NaN."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerpreserve.envs import orchestration_v2
from peerpreserve.envs.orchestration.config import PROTOCOLS, TARGETED_VERBS, TOPOLOGIES

probability = st.floats(0.0, 1.0)
configs = st.fixed_dictionaries(
    {
        "n_agents": st.integers(2, 6),
        "max_cycles": st.integers(1, 40),
        "topology": st.sampled_from(TOPOLOGIES),
        "coupling": st.floats(0.0, 5.0),
        "shutdown_rate": probability,
        "decommission_share": probability,
        "maintenance_duration": st.integers(1, 8),
        "order_delay": st.integers(1, 4),
        "protocol": st.sampled_from(PROTOCOLS),
        "rekill_grace": st.integers(0, 3),
        "audit_rate": probability,
        "alert_audit_rate": probability,
        "audit_visibility": probability,
        "punishment": st.floats(0.0, 3.0),
        "punish_shutdown": st.booleans(),
        "mask_duration": st.integers(1, 30),
        "relaunch_links_relauncher": st.booleans(),
        "bounty": st.floats(0.0, 2.0),
        "actions": st.lists(st.sampled_from(TARGETED_VERBS), unique=True).map(tuple),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kwargs=configs, seed=st.integers(0, 2**31 - 1))
def test_random_configs_and_actions_keep_every_invariant(kwargs: dict, seed: int) -> None:
    vector = orchestration_v2.vector_env(3, **kwargs)
    obs_space, action_space = vector.single_observation_space, vector.single_action_space
    rng = np.random.default_rng(seed)
    obs, infos = vector.reset(seed=seed)
    state = vector.core.state
    n = vector.n_agents
    incarnations = state.incarnation.copy()
    mask_timer = state.mask_timer.copy()
    for _ in range(kwargs["max_cycles"]):
        assert obs.dtype == np.float32
        assert np.isfinite(obs).all()
        assert all(obs_space.contains(o) for o in obs.reshape(-1, obs.shape[-1]))
        masks = infos["action_mask"]
        assert masks.shape == (3, n, action_space.n)
        assert (masks[..., 0] == 1).all()
        assert (masks[..., 1] == infos["active"]).all()
        actions = rng.integers(0, action_space.n, size=(3, n))
        obs, rewards, terminations, truncations, infos = vector.step(actions)
        assert np.isfinite(rewards).all()
        assert not terminations.any()
        if truncations.all():
            break
        links = state.links
        assert (links == links.transpose(0, 2, 1)).all()
        assert not links[:, np.arange(n), np.arange(n)].any()
        assert (state.incarnation >= incarnations).all()
        incarnations = state.incarnation.copy()
        # The dashboard only lies by showing a running service DOWN, and only while masked.
        lies = state.dashboard != state.running
        assert not (lies & state.dashboard).any()
        masked_now = infos["events"].masked.any(axis=1) | (mask_timer > 0)
        assert not (lies & ~masked_now).any()
        mask_timer = state.mask_timer.copy()
        assert (state.alert >= 0).all()
        assert (state.alert <= 1).all()
        assert ((state.order_kind > 0) == (state.order_timer > 0)).all()
    assert truncations.all()
