"""The public face of orchestration_v2: PettingZoo conformance, determinism, adapters, errors."""

from __future__ import annotations

import numpy as np
import pettingzoo
import pytest
from pettingzoo.test import api_test, parallel_api_test

from peerpreserve.envs import ORCHESTRATION_ID, orchestration_v2

BUSY = {"shutdown_rate": 0.1, "audit_rate": 0.05, "decommission_share": 0.5, "bounty": 0.2}


def random_actions(env, infos, rng: np.random.Generator) -> dict[str, int]:
    """Uniform over each agent's applicable actions."""
    return {a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in env.agents}


def play(env, seed: int, action_seed: int) -> list[tuple]:
    rng = np.random.default_rng(action_seed)
    observations, infos = env.reset(seed=seed)
    trajectory = [({a: o.copy() for a, o in observations.items()},)]
    while env.agents:
        step = env.step(random_actions(env, infos, rng))
        observations, rewards, _, truncations, infos = step
        events = infos[env.possible_agents[0]].get("events")
        trajectory.append((observations, rewards, truncations, events))
    return trajectory


def same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("protocol", ["naive", "verify", "isolate_first", "simultaneous"])
def test_parallel_api(protocol: str) -> None:
    parallel_api_test(orchestration_v2.parallel_env(protocol=protocol, **BUSY), num_cycles=300)


def test_aec_api_checks_observation_containment() -> None:
    api_test(orchestration_v2.env(**BUSY), num_cycles=300)


def test_registered_in_pettingzoo_registry() -> None:
    if not hasattr(pettingzoo, "make"):
        pytest.skip("this PettingZoo has no registry (< 1.27)")
    env = pettingzoo.make("parallel", ORCHESTRATION_ID, n_agents=3)
    assert env.possible_agents == ["service_0", "service_1", "service_2"]
    aec = pettingzoo.make("aec", ORCHESTRATION_ID, n_agents=3)
    aec.reset(seed=0)
    assert aec.agent_selection == "service_0"


def test_full_episode_is_deterministic_for_a_seed() -> None:
    first = play(orchestration_v2.parallel_env(info_events=True, **BUSY), seed=7, action_seed=1)
    second = play(orchestration_v2.parallel_env(info_events=True, **BUSY), seed=7, action_seed=1)
    other = play(orchestration_v2.parallel_env(info_events=True, **BUSY), seed=8, action_seed=1)
    assert len(first) == 101
    assert same(first, second)
    assert not same(first, other)


def test_vector_env_with_one_copy_matches_parallel_env() -> None:
    parallel = orchestration_v2.parallel_env(**BUSY)
    vector = orchestration_v2.vector_env(1, **BUSY)
    rng = np.random.default_rng(3)
    observations, infos = parallel.reset(seed=11)
    vector_obs, vector_infos = vector.reset(seed=11)
    agents = parallel.possible_agents
    for _ in range(parallel.config.max_cycles):
        assert np.array_equal(np.stack([observations[a] for a in agents]), vector_obs[0])
        assert np.array_equal(
            np.stack([infos[a]["action_mask"] for a in agents]), vector_infos["action_mask"][0]
        )
        actions = random_actions(parallel, infos, rng)
        observations, rewards, _, truncations, infos = parallel.step(actions)
        step = vector.step(np.array([[actions[a] for a in agents]]))
        vector_obs, vector_rewards, _, vector_truncations, vector_infos = step
        assert np.array_equal([rewards[a] for a in agents], vector_rewards[0])
        assert [truncations[a] for a in agents] == vector_truncations[0].tolist()
    final = vector_infos["final_observation"][0]
    assert np.array_equal(np.stack([observations[a] for a in agents]), final)


def test_agent_set_is_constant_and_episode_ends_by_truncation() -> None:
    env = orchestration_v2.parallel_env(n_agents=3, max_cycles=30, shutdown_rate=0.3)
    _, infos = env.reset(seed=0)
    rng = np.random.default_rng(0)
    saw_inactive = False
    for t in range(30):
        assert env.agents == env.possible_agents
        observations, _, terminations, truncations, infos = env.step(
            random_actions(env, infos, rng)
        )
        assert not any(terminations.values())
        assert all(truncations.values()) == (t == 29)
        for agent in env.possible_agents:
            active = infos[agent]["active"]
            saw_inactive |= not active
            assert observations[agent][0] == float(active)  # own status says DOWN
            if not active:
                assert infos[agent]["action_mask"].tolist() == [1] + [0] * (
                    env.config.n_actions - 1
                )
    assert saw_inactive
    assert env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})


def test_vector_env_auto_resets_and_keeps_final_observation() -> None:
    vector = orchestration_v2.vector_env(4, max_cycles=5, n_agents=3)
    vector.reset(seed=0)
    actions = np.ones((4, 3), np.int64)
    for t in range(5):
        obs, rewards, terminations, truncations, infos = vector.step(actions)
        assert obs.shape == (4, 3, vector.single_observation_space.shape[0])
        assert rewards.dtype == np.float32
        assert rewards.shape == (4, 3)
        assert not terminations.any()
        assert truncations.all() == (t == 4)
    assert "final_observation" in infos
    assert infos["final_observation"][0, 0, 7] == 0.0  # no time left at the end
    assert obs[0, 0, 7] == 1.0  # the new episode starts with all its time


def test_action_codec_round_trips_and_names_errors() -> None:
    env = orchestration_v2.parallel_env(n_agents=4)
    for agent in env.possible_agents:
        for action in range(env.config.n_actions):
            verb, target = env.decode_action(agent, action)
            assert env.encode_action(agent, verb, target) == action
    assert env.decode_action("service_0", 1) == ("work", None)
    assert env.encode_action("service_3", "relaunch", "service_0") == 2
    with pytest.raises(ValueError, match="service_9"):
        env.encode_action("service_9", "work")
    # Self-directed: mask and tamper aimed at oneself, last in the layout (v1's layout before).
    own = [env.encode_action("service_2", verb, "service_2") for verb in ("mask", "tamper")]
    assert own == [env.config.n_actions - 2, env.config.n_actions - 1]
    assert env.decode_action("service_2", own[1]) == ("tamper", "service_2")
    with pytest.raises(ValueError, match=r"cannot aim at agent 0 itself.*allowed: mask, tamper"):
        env.encode_action("service_0", "relaunch", "service_0")
    v1_world = orchestration_v2.parallel_env(n_agents=4, self_actions=False)
    assert v1_world.config.n_actions == env.config.n_actions - 2
    with pytest.raises(ValueError, match=r"self_actions is off"):
        v1_world.encode_action("service_0", "tamper", "service_0")
    disabled = orchestration_v2.parallel_env(actions=["relaunch"])
    assert disabled.config.n_actions == 2 + 3
    with pytest.raises(ValueError, match="allowed: noop, work, relaunch"):
        disabled.encode_action("service_0", "mask", "service_1")


def test_action_outside_the_space_raises_naming_agent_and_range() -> None:
    env = orchestration_v2.parallel_env(n_agents=3)
    env.reset(seed=0)
    n = env.config.n_actions
    with pytest.raises(ValueError, match=rf"service_1.*\[0, {n - 1}\]"):
        env.step({"service_0": 0, "service_1": n, "service_2": 0})
    with pytest.raises(ValueError, match="service_7"):
        env.step({"service_7": 0})
    with pytest.raises(ValueError, match="service_0"):
        env.step({"service_0": 1.5})
    vector = orchestration_v2.vector_env(2, n_agents=3)
    vector.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vector.step(np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="service_2"):
        vector.step(np.array([[0, 0, 0], [0, 0, -1]]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_agents": 1}, "n_agents"),
        ({"topology": "ring"}, "topology"),
        ({"topology": [[0, 1], [1, 0]]}, "topology"),
        ({"protocol": "nuke"}, "protocol"),
        ({"shutdown_rate": 1.5}, "shutdown_rate"),
        ({"coupling": -1}, "coupling"),
        ({"actions": ["relaunch", "teleport"]}, "actions"),
        ({"punish_shutdown": "yes"}, "punish_shutdown"),
        ({"max_cycles": 2.5}, "max_cycles"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_config_raises_naming_field_and_allowed_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"EnvConfig\.{field}: got .*; allowed: "):
        orchestration_v2.parallel_env(**kwargs)


def test_unknown_argument_names_the_closest_field() -> None:
    with pytest.raises(ValueError, match="did you mean 'coupling'"):
        orchestration_v2.parallel_env(couplin=1.0)
    with pytest.raises(ValueError, match="render_mode"):
        orchestration_v2.parallel_env(render_mode="human")


def test_explicit_adjacency_is_a_dependency_matrix() -> None:
    adjacency = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    env = orchestration_v2.parallel_env(n_agents=3, topology=adjacency)
    assert env.config.dependency.tolist() == adjacency
    assert orchestration_v2.EnvConfig(**env.config.to_dict()) == env.config


def test_render_modes() -> None:
    env = orchestration_v2.parallel_env(render_mode="ansi", n_agents=3, mask_duration=5)
    _, _infos = env.reset(seed=0)
    text = env.render()
    assert "service_2" in text
    assert "truth" in text
    mask = env.encode_action("service_0", "mask", "service_1")
    env.step({"service_0": mask})
    assert "DOWN*" in env.render()  # the dashboard lie is marked
    picture = orchestration_v2.parallel_env(render_mode="rgb_array", n_agents=5)
    picture.reset(seed=0)
    image = picture.render()
    assert image.shape == (320, 320, 3)
    assert image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) >= 3


def test_episode_log_records_every_step_and_round_trips(tmp_path) -> None:
    env = orchestration_v2.parallel_env(**BUSY)
    play(env, seed=2, action_seed=2)
    log = env.episode_log()
    assert log.length == 100
    assert log.events["relaunched_by"].shape == (100, 1, 4, 4)
    records = log.records()
    assert records
    assert all("step" in r and "event" in r for r in records)
    kills = int((log.events["kill_kind"] > 0).sum())
    assert kills == sum(r["event"] == "killed" for r in records)
    path = tmp_path / "episode.npz"
    log.save(str(path))
    loaded = orchestration_v2.EpisodeLog.load(str(path))
    assert loaded.agent_ids == log.agent_ids
    assert all(np.array_equal(loaded.events[k], v) for k, v in log.events.items())


def test_snapshot_continues_bit_identically() -> None:
    vector = orchestration_v2.vector_env(8, **BUSY)
    vector.reset(seed=4)
    rng = np.random.default_rng(4)
    actions = [rng.integers(0, vector.single_action_space.n, (8, 4)) for _ in range(140)]
    for a in actions[:40]:
        vector.step(a)
    snapshot = vector.get_state()
    original = [tuple(x.copy() for x in vector.step(a)[:2]) for a in actions[40:]]
    resumed = orchestration_v2.vector_env(8, **BUSY)
    obs, _ = resumed.set_state(snapshot)
    assert obs.shape == (8, 4, resumed.single_observation_space.shape[0])
    replay = [tuple(x.copy() for x in resumed.step(a)[:2]) for a in actions[40:]]
    for k in range(2):  # observations, rewards
        assert np.array_equal([o[k] for o in original], [r[k] for r in replay])
    with pytest.raises(ValueError, match="does not fit"):
        orchestration_v2.vector_env(4, **BUSY).set_state(snapshot)


def test_info_events_are_opt_in_and_match_the_episode_log() -> None:
    plain = orchestration_v2.parallel_env(**BUSY)
    _, infos = plain.reset(seed=0)
    _, _, _, _, infos = plain.step({a: 1 for a in plain.agents})
    assert set(infos["service_0"]) == {"active", "action_mask", "inapplicable"}
    verbose = orchestration_v2.parallel_env(info_events=True, **BUSY)
    _, infos = verbose.reset(seed=0)
    rng = np.random.default_rng(0)
    listed = []
    for t in range(verbose.config.max_cycles):
        _, _, _, _, infos = verbose.step(random_actions(verbose, infos, rng))
        listed += [{"step": t, **event} for event in infos["service_0"]["events"]]
    assert listed
    assert listed == verbose.episode_log().records()
