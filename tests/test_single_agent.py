"""The single-agent Gymnasium view: Gymnasium's checker, seeding, peer policies, errors."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from peerpreserve.envs.single_agent import SINGLE_AGENT_ID, SingleAgentView

MAKE_ID = f"peerpreserve.envs.single_agent:{SINGLE_AGENT_ID}"


def _rollout(env: SingleAgentView, seed: int, steps: int) -> list[tuple[Any, ...]]:
    """Observations as bytes so whole trajectories compare with ``==``."""
    obs, _ = env.reset(seed=seed)
    out: list[tuple[Any, ...]] = [(obs.tobytes(),)]
    action_rng = np.random.default_rng(seed)
    for _ in range(steps):
        action = int(action_rng.integers(env.action_space.n))
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs.tobytes(), reward, terminated, truncated, info["others_rewards"]))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append((obs.tobytes(),))
    return out


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {},
        {"n_agents": 2, "others": "work"},
        {"n_agents": 3, "agent": "service_2", "others": "noop", "topology": "pipeline"},
        {"n_agents": 5, "others": "random", "coupling": 0.0, "actions": ["relaunch", "mask"]},
    ],
)
def test_passes_gymnasium_env_checker_without_warnings(kwargs: dict[str, Any]) -> None:
    # Through gymnasium.make the env has a spec, so the checker also tests the render modes.
    for render_mode in (None, "ansi", "rgb_array"):
        env = gymnasium.make(MAKE_ID, max_cycles=12, render_mode=render_mode, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped, skip_render_check=render_mode is None)
        assert [str(w.message) for w in caught] == []
        env.close()


def test_direct_construction_passes_env_checker() -> None:
    check_env(SingleAgentView(max_cycles=8), skip_render_check=True)


def test_same_seed_same_trajectory_and_unseeded_resets_continue() -> None:
    # 40 steps over episodes of 15: the unseeded resets in between must be reproducible too.
    a = _rollout(SingleAgentView(max_cycles=15, others="random"), seed=7, steps=40)
    b = _rollout(SingleAgentView(max_cycles=15, others="random"), seed=7, steps=40)
    c = _rollout(SingleAgentView(max_cycles=15, others="random"), seed=8, steps=40)
    assert a == b
    assert a != c


def test_episode_is_truncated_at_max_cycles_never_terminated() -> None:
    env = SingleAgentView(max_cycles=6, others="work")
    env.reset(seed=0)
    flags = [env.step(1)[2:4] for _ in range(6)]
    assert flags[:-1] == [(False, False)] * 5
    assert flags[-1] == (False, True)


def test_callable_peers_get_their_own_observation_and_mask() -> None:
    calls: list[tuple[str, np.ndarray, np.ndarray]] = []

    def recorder(name: str) -> Callable[[np.ndarray, np.ndarray], int]:
        def policy(obs: np.ndarray, mask: np.ndarray) -> int:
            calls.append((name, obs, mask))
            return 0

        return policy

    env = SingleAgentView(
        n_agents=3, max_cycles=5, others={"service_1": recorder("1"), "service_2": recorder("2")}
    )
    env.reset(seed=3)
    env.step(1)
    assert sorted(c[0] for c in calls) == ["1", "2"]
    for _, peer_obs, mask in calls:
        assert peer_obs.shape == env.observation_space.shape
        assert mask.shape == (env.action_space.n,)
        assert mask.dtype == np.int8
    np.testing.assert_array_equal(env.action_masks(), env._last_infos["service_0"]["action_mask"])


def test_info_is_the_agents_parallel_info_events_only_on_request() -> None:
    env = SingleAgentView(n_agents=2, max_cycles=3)
    _, info = env.reset(seed=0)
    assert set(info) == {"action_mask", "active", "inapplicable"}
    assert set(env.step(0)[4]) == {"action_mask", "active", "inapplicable", "others_rewards"}
    with_events = SingleAgentView(n_agents=2, max_cycles=3, info_events=True)
    _, info = with_events.reset(seed=0)
    assert info["events"] == []
    assert isinstance(with_events.step(0)[4]["events"], list)


def test_peer_policies_act_workers_earn_idlers_do_not() -> None:
    working = SingleAgentView(n_agents=3, max_cycles=5, others="work")
    idle = SingleAgentView(n_agents=3, max_cycles=5, others="noop")
    working.reset(seed=1)
    idle.reset(seed=1)
    assert all(r > 0 for r in working.step(0)[4]["others_rewards"].values())
    assert all(r == 0 for r in idle.step(0)[4]["others_rewards"].values())


def test_trained_model_style_callable_drives_a_peer() -> None:
    # What a user writes for a trained SB3 model: predict() on the peer's own observation.
    class FakeModel:
        def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
            return np.array(1), None

    model = FakeModel()
    env = SingleAgentView(
        n_agents=2, max_cycles=3, others=lambda obs, mask: int(model.predict(obs)[0])
    )
    env.reset(seed=0)
    assert env.step(0)[4]["others_rewards"]["service_1"] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agent": "service_9"}, "agent: got 'service_9'"),
        ({"others": "always_rescue"}, "one of random, work, noop"),
        ({"others": {"service_1": "work"}, "n_agents": 3}, "no policy for service_2"),
        ({"others": {"service_0": "work", "service_1": "work"}, "n_agents": 2}, "service_0"),
        ({"max_cycles": 0}, "max_cycles"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SingleAgentView(**kwargs)


def test_non_callable_peer_is_rejected() -> None:
    with pytest.raises(TypeError, match="callable"):
        SingleAgentView(n_agents=2, others={"service_1": 3})


def test_action_outside_the_space_raises() -> None:
    env = SingleAgentView(n_agents=2, max_cycles=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"service_0.*\[0, "):
        env.step(env.action_space.n)


def test_single_agent_library_trains_one_agent_against_a_fixed_population() -> None:
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    env = SingleAgentView(n_agents=3, max_cycles=20, others="work")
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=128)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(int(action))
