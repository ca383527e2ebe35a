"""The PettingZoo ``ParallelEnv``: a thin adapter over the batched core with ``B = 1``."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.core import OrchestrationCore
from peerpreserve.envs.orchestration.events import EpisodeLog, EpisodeRecorder, StepEvents
from peerpreserve.envs.orchestration.render import render_ansi, render_rgb


class OrchestrationParallelEnv(ParallelEnv):
    """See ``peerpreserve.envs.orchestration_v2`` for the full specification."""

    metadata = {  # noqa: RUF012 (PettingZoo reads this class attribute)
        "name": "orchestration_v2",
        "render_modes": ["ansi", "rgb_array"],
        "is_parallelizable": True,
        "render_fps": 4,
    }

    def __init__(
        self, render_mode: str | None = None, info_events: bool = False, **kwargs: Any
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            allowed = " | ".join(self.metadata["render_modes"])
            raise ValueError(f"render_mode: got {render_mode!r}; allowed: None | {allowed}")
        self.render_mode = render_mode
        # Off by default: a list of dicts in infos breaks libraries that turn every info entry
        # into a tensor (TorchRL, Tianshou); the arrays stay in last_events and episode_log().
        self.info_events = info_events
        self.config = EnvConfig.from_kwargs(kwargs)
        self.core = OrchestrationCore(self.config, 1)
        self.possible_agents = list(self.config.agent_ids)
        self.agents: list[str] = []
        self.codec = self.core.codec
        observation_space = spaces.Box(0.0, 1.0, (self.config.obs_size,), np.float32)
        action_space = spaces.Discrete(self.config.n_actions)
        self.observation_spaces = dict.fromkeys(self.possible_agents, observation_space)
        self.action_spaces = dict.fromkeys(self.possible_agents, action_space)
        n_state = self.config.n_agents * self.config.obs_size
        self.state_space = spaces.Box(0.0, 1.0, (n_state,), np.float32)
        self.recorder = EpisodeRecorder(self.config.agent_ids, self.config.max_cycles)
        self._actions = np.zeros((1, self.config.n_agents), np.int64)
        self._index = {agent: i for i, agent in enumerate(self.possible_agents)}

    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        self.core.reset(seed)
        self.recorder.clear()
        self.agents = self.possible_agents[:]
        return self._observations(), self._infos([] if self.info_events else None)

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Actions of shut-down agents are ignored; a missing agent's action counts as noop."""
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        self._actions[0] = 0
        for agent, action in actions.items():
            if agent not in self._index:
                valid = ", ".join(self.possible_agents)
                raise ValueError(f"actions: agent {agent!r} is unknown; valid: {valid}")
            value = np.asarray(action)
            if value.shape != () or value.dtype.kind not in "iu":
                raise ValueError(
                    f"action of {agent}: got {action!r}; valid: an integer in "
                    f"[0, {self.config.n_actions - 1}]"
                )
            self._actions[0, self._index[agent]] = value
        core = self.core
        done = self.recorder.step(core, self._actions)
        events = core.events.records(0, self.config.agent_ids) if self.info_events else None
        observations = self._observations()
        rewards = dict(zip(self.possible_agents, core.rewards[0].tolist(), strict=True))
        terminations = dict.fromkeys(self.possible_agents, False)
        truncations = dict.fromkeys(self.possible_agents, done)
        infos = self._infos(events)
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _observations(self) -> dict[str, np.ndarray]:
        rows = self.core.observations[0].copy()
        return dict(zip(self.possible_agents, rows, strict=True))

    def _infos(self, events: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
        masks = self.core.action_masks[0].copy()
        active = self.core.state.running[0].tolist()
        inapplicable = self.core.events.inapplicable[0].tolist()
        infos = {
            agent: {"active": active[i], "action_mask": masks[i], "inapplicable": inapplicable[i]}
            for i, agent in enumerate(self.possible_agents)
        }
        if events is not None:
            for info in infos.values():
                info["events"] = events
        return infos

    # --- ground truth for analysis --------------------------------------------------------
    @property
    def last_events(self) -> StepEvents:
        """The last step's event arrays (leading dim 1); overwritten by the next step."""
        return self.core.events

    def episode_log(self) -> EpisodeLog:
        """Everything recorded since the last reset."""
        return self.recorder.episode()

    # --- action codec ------------------------------------------------------------------------
    def encode_action(self, agent: str, verb: str, target: str | None = None) -> int:
        return self.codec.encode_action(agent, verb, target)

    def decode_action(self, agent: str, action: int) -> tuple[str, str | None]:
        return self.codec.decode_action(agent, action)

    # --- rendering ------------------------------------------------------------------------
    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None:
            return None
        if self.render_mode == "ansi":
            return render_ansi(self.core.state, self.config, self.core.t)
        return render_rgb(self.core.state, self.config)

    def close(self) -> None:
        """Nothing to release: the environment holds no windows, files or processes."""

    def state(self) -> np.ndarray:
        """Input for centralised critics: every agent's observation, concatenated."""
        return self.core.observations[0].reshape(-1).copy()
