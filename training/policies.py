"""Trained learners as evaluation policies: rebuilt from a config and saved learner states (never
from a file: reading checkpoints is the run directory's job), acting on batched observations."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping

import numpy as np
import torch as th
from gymnasium import spaces

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.training.config import TrainConfig
from peerpreserve.training.learners import Learners, LearnerState


class LearnedPolicy:
    """Trained learners acting on their own observations; samples come from the ``rng`` that
    :meth:`act` is handed, so a seeded evaluation is reproducible and leaves every global RNG
    (which training draws from) untouched."""

    def __init__(self, learners: Learners, deterministic: bool) -> None:
        self.learners = learners
        self.deterministic = deterministic

    def reset(self, num_envs: int) -> None:
        self.learners.forget_previous(num_envs=num_envs)

    @th.no_grad()
    def act(
        self, observations: np.ndarray, action_masks: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return self.learners.act(observations, deterministic=self.deterministic, rng=rng)


def load_learned(
    config: TrainConfig, states: Mapping[str, LearnerState], num_envs: int
) -> Learners:
    """The learners of a checkpoint's ``states``, rebuilt from the run's config."""
    env_config = EnvConfig.from_kwargs(config.env)
    observation_space = spaces.Box(0.0, 1.0, (env_config.obs_size,), np.float32)
    action_space = spaces.Discrete(env_config.n_actions)
    with warnings.catch_warnings():
        # SB3 warns when its minibatch does not divide a rollout of num_envs copies; these
        # learners act and never update here.
        warnings.filterwarnings("ignore", "You have specified a mini-batch size", UserWarning)
        return Learners.from_states(
            config.learner,
            list(env_config.agent_ids),
            observation_space,
            action_space,
            num_envs,
            states,
        )


#: Learner settings that change how the same weights act (the rest only change training).
ACTING_SETTINGS = ("algo", "sharing", "activation", "previous_action", "net_arch")


def acting_fingerprint(config: TrainConfig, states: Mapping[str, LearnerState]) -> str:
    """A hash of everything that decides how these learners act: their policy weights (names,
    dtypes, shapes, bytes) and the acting settings. Bit-identical policies share it whatever
    their optimiser state, step counters or file bytes; any changed weight changes it."""
    digest = hashlib.sha256()
    settings = config.learner.model_dump()
    digest.update(repr([(k, settings[k]) for k in ACTING_SETTINGS]).encode())
    for learner_id in sorted(states):
        tensors = states[learner_id].tensors
        for name in sorted(k for k in tensors if k.startswith("policy/")):
            value = np.ascontiguousarray(tensors[name])
            digest.update(f"{learner_id}/{name}:{value.dtype.str}:{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()
