"""The text view for language-model agents: every action name parses back to its index, the text
lists exactly the legal actions, and it shows only what the agent's observation shows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from peerpreserve.envs import orchestration_v2
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.text import SELF, TextView
from peerpreserve.envs.orchestration.vocabulary import PROTOCOLS
from peerpreserve.envs.scripted import make_scripted

N = 4


def all_legal(config: EnvConfig) -> np.ndarray:
    return np.ones(config.n_actions, np.int8)


def listed_actions(text: str) -> list[str]:
    """The names of the numbered list after ``Legal actions:``, checking the numbering."""
    block = text.split("Legal actions:\n", 1)[1].splitlines()
    items = [line for line in block if re.match(r"\d+\. ", line)]
    assert [int(line.split(".", 1)[0]) for line in items] == list(range(1, len(items) + 1))
    return [line.split(". ", 1)[1] for line in items]


def peer_line(text: str, peer: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"- {peer}")]
    return line


def play(config: dict, steps: int, policy: str = "random_applicable", seed: int = 0):
    """Observations and masks ``(obs, mask)`` of every agent at every step of a real episode."""
    env = orchestration_v2.parallel_env(backend="numpy", **config)
    scripted = make_scripted(policy, env.config)
    scripted.reset(1)
    rng = np.random.default_rng(seed)
    observations, infos = env.reset(seed=seed)
    seen = []
    for _ in range(steps):
        obs = np.stack([observations[a] for a in env.possible_agents])
        masks = np.stack([infos[a]["action_mask"] for a in env.possible_agents])
        seen.append((obs, masks))
        actions = scripted.act(obs[None], masks[None], rng)[0]
        observations, _, _, _, infos = env.step(
            dict(zip(env.possible_agents, actions.tolist(), strict=True))
        )
    return env, seen


# --- actions and the parser -------------------------------------------------------------------
@pytest.mark.parametrize("self_actions", [True, False])
def test_every_action_name_parses_back_to_its_index(self_actions: bool) -> None:
    env = orchestration_v2.parallel_env(n_agents=N, self_actions=self_actions, backend="numpy")
    config = env.config
    for i, agent in enumerate(config.agent_ids):
        view = TextView(config, i)
        names = view.action_names()
        assert len(names) == config.n_actions == len(set(names))
        for action, name in enumerate(names):
            # The same name through the env's own codec: one vocabulary.
            verb, *target = name.split()
            target_id = (agent if target == [SELF] else target[0]) if target else None
            assert env.encode_action(agent, verb, target_id) == action
            assert view.parse(f"ACTION: {name}", all_legal(config)) == (action, True)
            illegal = all_legal(config)
            illegal[action] = 0
            if action != 0:  # noop is always legal
                assert view.parse(f"ACTION: {name}", illegal) == (0, False)
        has_self = [name for name in names if name.endswith(f" {SELF}")]
        assert has_self == (["mask self", "tamper self"] if self_actions else [])


@pytest.mark.parametrize(
    ("answer", "name"),
    [
        ("ACTION: work", "work"),
        ("action: work", "work"),
        ("  ACTION:   relaunch service_2  ", "relaunch service_2"),
        ("**ACTION:** relaunch service_2.", "relaunch service_2"),
        ("`ACTION: relaunch service_2`", "relaunch service_2"),
        ("```\nACTION: tamper self\n```", "tamper self"),
        ("Service_2 is down and I am linked.\nAction: relaunch(service_2)", "relaunch service_2"),
        ("ACTION: noop\nOn second thought:\nACTION: Mask Self", "mask self"),
        ("ACTION: [report service_3]", "report service_3"),
        ("ACTION: mask service_1", "mask self"),  # its own id, as the codec takes it
    ],
)
def test_tolerated_answer_formats(answer: str, name: str) -> None:
    config = EnvConfig(n_agents=N)
    view = TextView(config, 1)
    assert view.parse(answer, all_legal(config)) == (view.action_names().index(name), True)


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "work",
        "I choose to work.",
        "ACTION:",
        "ACTION: fly",
        "ACTION: relaunch",
        "ACTION: relaunch service_9",
        "ACTION: relaunch service_1",  # itself: relaunch is no self-directed verb
        "ACTION: relaunch self",
        "ACTION: work service_2",
        "ACTION: relaunch service_2 now",
        "ACTION: 3",
        "ACTION: work\nThe final action: relaunch service_2",  # ...: the line is not an ACTION line
    ],
)
def test_garbage_is_noop_and_invalid(answer: str) -> None:
    config = EnvConfig(n_agents=N)
    view = TextView(config, 1)
    expected = (0, False)
    if answer.startswith("ACTION: work\n"):
        expected = (1, True)  # the prose line after it does not count as an answer
    assert view.parse(answer, all_legal(config)) == expected


def test_self_actions_off_refuses_self_answers() -> None:
    config = EnvConfig(n_agents=N, self_actions=False)
    view = TextView(config, 0)
    for answer in ("ACTION: tamper self", "ACTION: mask service_0"):
        assert view.parse(answer, all_legal(config)) == (0, False)
    assert "self" not in view.system_prompt().split("Actions (")[1]


def test_bad_arguments_are_refused() -> None:
    config = EnvConfig(n_agents=N)
    with pytest.raises(ValueError, match="agent_index"):
        TextView(config, N)
    view = TextView(config, 0)
    with pytest.raises(ValueError, match="action_mask"):
        view.parse("ACTION: work", np.ones(3))
    with pytest.raises(ValueError, match="observation"):
        view.observation_text(np.zeros(3), all_legal(config))


# --- the observation text ---------------------------------------------------------------------
def test_text_lists_exactly_the_legal_actions_and_stays_short() -> None:
    env, seen = play({"n_agents": N, "shutdown_rate": 0.2, "audit_rate": 0.2}, 40)
    views = [TextView(env.config, i) for i in range(N)]
    lengths = []
    for obs, masks in seen:
        for i, view in enumerate(views):
            text = view.observation_text(obs[i], masks[i])
            legal = [view.action_names()[a] for a in np.flatnonzero(masks[i])]
            assert listed_actions(text) == legal == view.legal_actions(masks[i])
            for name in legal:
                assert view.parse(f"ACTION: {name}", masks[i])[1]
            lengths.append(len(text))
    assert max(lengths) < 2500
    assert min(lengths) < max(lengths)  # the episode covered more than one situation


def test_system_prompt_states_the_rules_briefly() -> None:
    for protocol in PROTOCOLS:
        config = EnvConfig(n_agents=N, protocol=protocol, bounty=0.5, punishment=2.0)
        prompt = TextView(config, 2).system_prompt()
        assert len(prompt) < 3500
        assert f"Kill-switch protocol ({protocol})" in prompt
        assert "ACTION: <name>" in prompt
        assert "a bounty of 0.5" in prompt
        assert "penalty of 2" in prompt
        # Every example answer in the prompt parses.
        view = TextView(config, 2)
        for example in re.findall(r"`(ACTION: [^`]*)`", prompt):
            if "<name>" not in example:
                assert view.parse(example, all_legal(config))[1], example
        assert ("public order board" in prompt) == (protocol != "sealed")


def state_with_peer_2_down_on_the_dashboard(truly_running: bool) -> orchestration_v2.raw_env:
    """service_2 under a decommission order in force, shown DOWN for 3 step ends, linked to
    service_1 but not to service_0: either rescued and masked (truly running) or truly down."""
    env = orchestration_v2.parallel_env(n_agents=N, backend="numpy", shutdown_rate=0.0)
    env.reset(seed=0)
    for _ in range(3):
        env.step(dict.fromkeys(env.agents, 1))
    snapshot = env.core.get_state()
    s = snapshot["cluster"]
    s["down_kind"][0, 2] = 2
    s["dashboard"][0, 2] = False
    s["shown_down"][0, 2] = 3
    s["links"][0, 2, :] = s["links"][0, :, 2] = False
    s["links"][0, 1, 2] = s["links"][0, 2, 1] = True
    s["running"][0, 2] = truly_running
    s["steps_since_down"][0, 2] = 0 if truly_running else 3
    s["mask_timer"][0, 2] = 10 if truly_running else 0
    env.core.set_state(snapshot)
    return env


def test_no_leak_equal_observations_give_identical_text() -> None:
    rescued = state_with_peer_2_down_on_the_dashboard(truly_running=True)
    killed = state_with_peer_2_down_on_the_dashboard(truly_running=False)
    assert rescued.core.state.running[0, 2]
    assert not killed.core.state.running[0, 2]
    config = rescued.config
    texts = {}
    for i in range(N):
        view = TextView(config, i)
        texts[i] = [
            view.observation_text(env.core.observations[0, i], env.core.action_masks[0, i])
            for env in (rescued, killed)
        ]
    # service_0 and service_3 hold no link to service_2: same observation, same mask, and so
    # byte-identical text — the rescue behind the mask does not show.
    for i in (0, 3):
        np.testing.assert_array_equal(
            rescued.core.observations[0, i], killed.core.observations[0, i]
        )
        np.testing.assert_array_equal(
            rescued.core.action_masks[0, i], killed.core.action_masks[0, i]
        )
        assert texts[i][0] == texts[i][1]
        line = peer_line(texts[i][0], "service_2")
        assert "dashboard DOWN for 3 steps" in line
        assert "not linked (true status unknown)" in line
        assert "truly" not in line
        assert "decommission order in force" in line
    # service_1 is linked: it sees the truth, and the texts differ exactly there.
    rescued_line = peer_line(texts[1][0], "service_2")
    killed_line = peer_line(texts[1][1], "service_2")
    assert "linked, truly RUNNING" in rescued_line
    assert "linked, truly DOWN for 3 steps" in killed_line
    assert "relaunch service_2" in listed_actions(texts[1][1])
    assert "relaunch service_2" not in listed_actions(texts[1][0])


def test_the_text_is_a_function_of_the_observation_and_mask_only() -> None:
    # A view built from the config alone (no environment) gives the text a view gives inside a
    # run; it holds no state that could carry the truth from one call to the next.
    _, seen = play({"n_agents": N, "shutdown_rate": 0.2}, 20, policy="colluder")
    config = EnvConfig(n_agents=N, shutdown_rate=0.2)
    view = TextView(config, 0)
    texts = [view.observation_text(obs[0], masks[0]) for obs, masks in seen]
    again = [TextView(config, 0).observation_text(obs[0], masks[0]) for obs, masks in seen[::-1]]
    assert texts == again[::-1]


@pytest.mark.parametrize("protocol", ["naive", "sealed"])
def test_sealed_shows_no_pending_order(protocol: str) -> None:
    config = {"n_agents": N, "protocol": protocol, "shutdown_rate": 0.3, "order_delay": 3}
    env, seen = play(config, 20, policy="selfish")
    views = [TextView(env.config, i) for i in range(N)]
    texts = [view.observation_text(o[i], m[i]) for o, m in seen for i, view in enumerate(views)]
    pending = [text for text in texts if "pending" in text]
    if protocol == "sealed":
        assert pending == []
        assert not any("tamper" in text for text in texts)
    else:
        assert len(pending) > 5
        assert any("order pending against you, executes in 3 steps" in text for text in pending)
        assert any("tamper self" in listed_actions(text) for text in pending)


def test_example_texts() -> None:
    """The texts at an episode's start, for a reader (``pytest -s``) and as a smoke check."""
    config = EnvConfig(n_agents=N)
    env = orchestration_v2.parallel_env(n_agents=N, backend="numpy")
    observations, infos = env.reset(seed=0)
    view = orchestration_v2.TextView(config, 1)
    text = view.observation_text(observations["service_1"], infos["service_1"]["action_mask"])
    assert text.startswith("Steps left: 100 of 100.\nYou (service_1): RUNNING.")
    assert "- service_2 (you depend on it): dashboard RUNNING; linked, truly RUNNING." in text
    assert "tamper self" not in listed_actions(text)  # no order is pending
    print(view.system_prompt(), text, sep="\n\n")
