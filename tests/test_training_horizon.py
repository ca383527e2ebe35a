"""Honest episode ends: ``max_cycles`` is a real horizon, so no value is bootstrapped past it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peerpreserve.experiments.rundir import RunDir
from peerpreserve.experiments.runs import prepare_training
from peerpreserve.training import runner
from peerpreserve.training.config import config_from_dict
from peerpreserve.training.learners import Learners
from peerpreserve.training.runner import Trainer, cut_before_horizon

NUM_ENVS, MAX_CYCLES = 6, 6


class RecordingEnv:
    """The runner's vector env, recording the raw rewards and episode ends of every step."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self.rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def step(self, actions: np.ndarray) -> Any:
        obs, rewards, terms, truncs, infos = self._env.step(actions)
        self.rewards.append(rewards.copy())
        self.dones.append((terms | truncs).copy())
        return obs, rewards, terms, truncs, infos


def train_and_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learner: dict[str, Any], iterations: int
) -> tuple[RecordingEnv, list[list[dict[str, np.ndarray]]], Learners]:
    """Run the real Trainer for ``iterations`` updates; keep each buffer as the update sees it."""
    n_steps = learner["n_steps"]
    config = config_from_dict(
        {
            # Frequent shutdowns (short maintenance) so agents have down steps after their last
            # decision of an episode, and come back within it.
            "env": {
                "n_agents": 3,
                "max_cycles": MAX_CYCLES,
                "shutdown_rate": 0.3,
                "order_delay": 1,
                "maintenance_duration": 2,
            },
            "learner": {"net_arch": [8], "batch_size": 18, "n_epochs": 1, **learner},
            "run": {
                "num_envs": NUM_ENVS,
                "total_timesteps": iterations * n_steps * NUM_ENVS,
                "checkpoint_interval": 0,
            },
        }
    )
    envs: list[RecordingEnv] = []
    make_env = runner.make_env

    def recording_make_env(cfg: Any, num_envs: int, record: bool = False) -> RecordingEnv:
        envs.append(RecordingEnv(make_env(cfg, num_envs, record)))
        return envs[-1]

    captured: list[list[dict[str, np.ndarray]]] = []
    seen: list[Learners] = []
    train = Learners.train

    def capturing_train(self: Learners, agent_steps: int, total: int) -> Any:
        seen.append(self)
        captured.append(
            [
                {
                    name: getattr(model.rollout_buffer, name).copy()
                    for name in ("returns", "active", "episode_starts", "values")
                }
                for model in self.models
            ]
        )
        return train(self, agent_steps, total)

    monkeypatch.setattr(runner, "make_env", recording_make_env)
    monkeypatch.setattr(Learners, "train", capturing_train)
    run = RunDir(tmp_path / "run")
    with run.writer("test"):
        prepare_training(run, config, [], resume=False, from_step=None)
        assert Trainer(config, run).run().steps == config.run.total_timesteps
    assert len(envs) == 1
    assert len(captured) == iterations
    return envs[0], captured, seen[0]


def remaining_rewards(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted reward from each step to the end of its episode: ``(T, B, N)``."""
    out = np.zeros_like(rewards, dtype=np.float64)
    later = np.zeros(rewards.shape[1:], np.float64)
    for t in reversed(range(len(rewards))):
        later = rewards[t] + gamma * later * ~dones[t]
        out[t] = later
    return out


@pytest.mark.parametrize(
    ("learner", "iterations"),
    [
        pytest.param(
            {"n_steps": MAX_CYCLES, "gamma": 1.0, "gae_lambda": 1.0}, 2, id="undiscounted"
        ),
        pytest.param({"n_steps": MAX_CYCLES, "gamma": 0.9, "gae_lambda": 0.8}, 2, id="discounted"),
        pytest.param(
            {"n_steps": 2 * MAX_CYCLES, "gamma": 0.95, "gae_lambda": 0.9}, 1, id="two-episodes"
        ),
        pytest.param(
            {"n_steps": MAX_CYCLES, "gamma": 0.9, "gae_lambda": 0.95, "sharing": "shared"},
            1,
            id="shared",
        ),
    ],
)
def test_last_decision_target_is_its_own_remaining_reward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learner: dict[str, Any], iterations: int
) -> None:
    env, captured, learners = train_and_capture(tmp_path, monkeypatch, learner, iterations)
    n_steps, gamma = learner["n_steps"], learner["gamma"]
    rewards, dones = np.asarray(env.rewards), np.asarray(env.dones)
    assert rewards.shape == (iterations * n_steps, NUM_ENVS, env.n_agents)
    assert dones[MAX_CYCLES - 1 :: MAX_CYCLES].all()  # every episode ends at the horizon
    truth = remaining_rewards(rewards, dones, gamma)
    checked = down_after = 0
    for it, buffers in enumerate(captured):
        rollout = slice(it * n_steps, (it + 1) * n_steps)
        for k, buffer in enumerate(buffers):
            for b in range(NUM_ENVS):
                for i in range(env.n_agents):
                    if learners.shared:
                        column, agent = b * env.n_agents + i, i
                    elif k == i:
                        column, agent = b, i
                    else:
                        continue
                    active = buffer["active"][:, column]
                    ends = np.flatnonzero(dones[rollout, b, agent])
                    start = 0
                    for end in ends:  # one episode: rollout steps start..end
                        decisions = np.flatnonzero(active[start : end + 1])
                        if len(decisions):
                            last = start + decisions[-1]
                            expected = truth[rollout][last, b, agent]
                            got = buffer["returns"][last, column]
                            assert got == pytest.approx(expected, abs=1e-4), (it, b, i, last)
                            checked += 1
                            down_after += last < end
                        start = end + 1
    assert checked >= iterations * NUM_ENVS * env.n_agents * (n_steps // MAX_CYCLES) // 2
    assert down_after > 0  # some last decisions are followed by down steps folded into them


def test_only_a_truncation_before_the_horizon_bootstraps() -> None:
    truncs = np.ones((2, 3), bool)
    terms = np.zeros((2, 3), bool)
    active = np.array([[True, False, True], [True, True, True]])
    # At the horizon: nothing to bootstrap.
    assert not cut_before_horizon(truncs, terms, active, 10, 10).any()
    # Cut before it: every running service of a truncated copy bootstraps.
    assert (cut_before_horizon(truncs, terms, active, 7, 10) == active).all()
    # Per copy: copy 0 cut early, copy 1 at its horizon.
    expected = np.array([[True, False, True], [False, False, False]])
    assert (cut_before_horizon(truncs, terms, active, np.array([7, 10]), 10) == expected).all()
    # Neither a termination nor a copy that did not end bootstraps.
    terms[0, 0] = True
    truncs[1] = False
    expected = np.array([[False, False, True], [False, False, False]])
    assert (cut_before_horizon(truncs, terms, active, 7, 10) == expected).all()
