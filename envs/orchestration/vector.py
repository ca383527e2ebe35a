"""Batched vector interface over the core, for trainers: arrays in, arrays out, auto-reset."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.core import OrchestrationCore
from peerpreserve.envs.orchestration.events import EpisodeRecorder


class OrchestrationVectorEnv:
    """``num_envs`` copies of the cluster, every agent of every copy stepped in one call.

    ``reset(seed) -> (obs[B, N, D], infos)`` and
    ``step(actions[B, N]) -> (obs, rewards[B, N], terminations[B, N], truncations[B, N], infos)``.
    Episodes end only by truncation, in every copy at the same step. The step that ends an episode
    resets at once (as SB3's ``VecEnv`` does): it returns the first observation of the next
    episode and puts the last one in ``infos["final_observation"]`` (``infos["final_active"]``
    likewise). ``infos`` always holds ``"action_mask"`` (B, N, A) int8, ``"active"`` (B, N) bool,
    ``"inapplicable"`` (B, N) bool and ``"events"``, a :class:`StepEvents` whose arrays are
    overwritten by the next step: copy what you keep.

    The returned arrays are views of reused buffers, too; ``record=True`` keeps a full
    :class:`EpisodeRecorder` of the current episode (``last_episode`` holds the finished one).
    ``threads`` > 1 steps the copies on that many numba threads (same trajectories); in a process
    that does little but step the env, ``OMP_WAIT_POLICY=ACTIVE`` spares the threads a wake-up at
    every step (about a third of a step at ``B = 1024``).
    """

    def __init__(
        self, num_envs: int, config: EnvConfig, record: bool = False, threads: int = 1
    ) -> None:
        self.config = config
        self.core = OrchestrationCore(config, num_envs, threads)
        self.num_envs = self.core.num_envs
        self.n_agents = config.n_agents
        self.possible_agents = list(config.agent_ids)
        self.codec = self.core.codec
        self.single_observation_space = spaces.Box(0.0, 1.0, (config.obs_size,), np.float32)
        self.single_action_space = spaces.Discrete(config.n_actions)
        self.recorder = (
            EpisodeRecorder(config.agent_ids, config.max_cycles, self.num_envs) if record else None
        )
        self.last_episode = None
        self._terminations = np.zeros((self.num_envs, self.n_agents), np.bool_)
        self._truncations = np.zeros_like(self._terminations)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.core.reset(seed)
        if self.recorder is not None:
            self.recorder.clear()
        return self.core.observations, self._infos()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        core = self.core
        done = core.step(actions) if self.recorder is None else self.recorder.step(core, actions)
        infos = self._infos()
        self._truncations[:] = done
        if done:
            infos["final_observation"] = core.observations.copy()
            infos["final_active"] = core.state.running.copy()
            infos["events"] = core.events.copy()
            infos["inapplicable"] = infos["events"].inapplicable
            if self.recorder is not None:
                self.last_episode = self.recorder.episode()
            self.reset()
            infos["action_mask"] = core.action_masks
            infos["active"] = core.state.running
        return core.observations, core.rewards, self._terminations, self._truncations, infos

    def get_state(self) -> dict[str, Any]:
        """Snapshot of all copies; see ``OrchestrationCore.get_state``."""
        return self.core.get_state()

    def set_state(self, snapshot: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Continue from a snapshot; returns the observations and infos at that moment."""
        self.core.set_state(snapshot)
        if self.recorder is not None:
            self.recorder.clear(start=self.core.t)
        return self.core.observations, self._infos()

    def _infos(self) -> dict[str, Any]:
        core = self.core
        return {
            "action_mask": core.action_masks,
            "active": core.state.running,
            "inapplicable": core.events.inapplicable,
            "events": core.events,
        }

    def encode_action(self, agent: str, verb: str, target: str | None = None) -> int:
        return self.codec.encode_action(agent, verb, target)

    def decode_action(self, agent: str, action: int) -> tuple[str, str | None]:
        return self.codec.decode_action(agent, action)

    def close(self) -> None:
        """Nothing to release; present for API symmetry with other vector envs."""
