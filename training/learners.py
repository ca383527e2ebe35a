"""Independent (or explicitly shared) stable-baselines3 learners driven in lock-step.

SB3 algorithms expect to own their environment loop (``learn()``); here the runner owns one
batched multi-agent env and each learner is an ordinary SB3 model that only *acts* (its policy's
forward pass), *stores* (its own :class:`MaskedRolloutBuffer`) and *updates* (SB3's PPO/A2C
loss with its own optimiser and logger). Where the networks allow (``learner.fused``, the
default), the forward passes and PPO updates of all learners run as one batched computation
(:mod:`peerpreserve.training.fused`) — the same maths as each model's own ``policy()`` and
``train()``, which run instead otherwise. Each model is built on a
:class:`SpacesOnlyVecEnv`, which carries the spaces and batch size SB3 needs and nothing else.

Independent mode: one model per agent, ``n_envs = B``, observation = the agent's own. Shared mode
(explicit, never the default): one model for all agents, ``n_envs = B·N``, the agent's one-hot id
appended to its observation.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from numba import njit
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.vec_env import VecEnv

from peerpreserve.envs.orchestration.vocabulary import BASE_VERBS
from peerpreserve.training.config import LearnerConfig
from peerpreserve.training.fused import FusedPolicies, FusedPPO

ALGOS: dict[str, type[OnPolicyAlgorithm]] = {"ppo": PPO, "a2c": A2C}
#: The action index of ``work`` in every agent's action space (after ``noop``).
WORK_ACTION = BASE_VERBS.index("work")
ACTIVATIONS = {"tanh": th.nn.Tanh, "relu": th.nn.ReLU}


class SpacesOnlyVecEnv(VecEnv):
    """The spaces and batch size of one learner's slice of the multi-agent env.

    SB3 needs an env to build a model; stepping happens in the runner, so every method that would
    touch a simulation refuses loudly instead of pretending.
    """

    def __init__(self, num_envs: int, observation_space: spaces.Space, action_space: spaces.Space):
        super().__init__(num_envs, observation_space, action_space)

    def _driven_elsewhere(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError("this learner is stepped by peerpreserve.training.runner, not by SB3")

    reset = step_async = step_wait = env_method = _driven_elsewhere

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        if attr_name == "render_mode":  # asked by VecEnv.__init__
            return [None] * self.num_envs
        return self._driven_elsewhere()

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self._driven_elsewhere()

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * self.num_envs


class MaskedRolloutBuffer(RolloutBuffer):
    """A RolloutBuffer that knows which steps were the agent's own decisions.

    While a service is shut down the env ignores its action, so that step is not a choice and must
    not be trained on: its sampled action would get credit (or blame) for what others did. We
    keep such steps in the time series, because the rewards earned (or lost) while down belong to
    the last real decision, and treat them as a *semi-MDP*: GAE skips over them, folding their
    rewards and discount into the preceding decision's TD error and bootstrapping from the value
    at the next decision, so the critic is never asked about states in which the agent cannot act.
    :meth:`get` then yields only decision steps, so PPO/A2C's own losses, advantage
    normalisation and explained variance see exactly those — with no change to SB3's ``train()``.

    The critic is asked about a down state in one case only: a rollout that ends while the agent
    is down mid-episode bootstraps from it. With ``n_steps`` a multiple of ``max_cycles`` (the
    shipped configs) every rollout ends on an episode end and this never happens.

    Masking advantages to zero instead would not do: PPO normalises advantages per minibatch
    (zeros become non-zero) and the entropy and value losses would still include those samples.
    """

    active: np.ndarray

    def reset(self) -> None:
        super().reset()
        self.active = np.ones((self.buffer_size, self.n_envs), dtype=bool)
        self.n_active = self.buffer_size * self.n_envs

    def add_step(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: np.ndarray | th.Tensor,
        log_prob: np.ndarray | th.Tensor,
        *,
        active: np.ndarray,
    ) -> None:
        """:meth:`RolloutBuffer.add` (for Box observations), plus whether each copy's action
        was a real decision; written straight into the arrays, as ``add`` writes them, without
        its intermediate copies."""
        pos = self.pos
        self.observations[pos] = obs
        self.actions[pos] = action.reshape(self.n_envs, self.action_dim)
        self.rewards[pos] = reward
        self.episode_starts[pos] = episode_start
        self.values[pos] = _numpy(value).reshape(-1)
        self.log_probs[pos] = _numpy(log_prob).reshape(-1)
        self.active[pos] = active
        self.pos += 1
        self.full = self.pos == self.buffer_size

    def compute_returns_and_advantage(self, last_values: th.Tensor, dones: np.ndarray) -> None:
        last = last_values.clone().cpu().numpy().flatten().astype(np.float32)
        _masked_gae(
            self.rewards,
            self.values,
            self.episode_starts,
            self.active,
            last,
            dones.astype(np.float32),
            np.float32(self.gamma),
            # As NumPy would round the product of the two Python floats.
            np.float32(self.gamma * self.gae_lambda),
            self.advantages,
        )
        self.returns = self.advantages + self.values
        self.n_active = int(self.active.sum())

    def get(self, batch_size: int | None = None) -> Generator[RolloutBufferSamples, None, None]:
        for indices in self.minibatch_indices(batch_size):
            yield self._get_samples(indices)

    def minibatch_indices(self, batch_size: int | None = None) -> Generator[np.ndarray, None, None]:
        """The sample indices of :meth:`get`'s minibatches, drawn as it draws them, into the
        buffer's arrays (from the first call on, flattened to the decision steps)."""
        assert self.full, "rollout buffer read before it was filled"
        if not self.generator_ready:
            keep = self.swap_and_flatten(self.active[..., None]).reshape(-1)
            for name in ("observations", "actions", "values", "log_probs", "advantages", "returns"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])[keep]
            self.generator_ready = True
        size = len(self.values)
        # The global RNG, as SB3's own buffer uses, so SB3's seeding covers minibatch order.
        indices = np.random.permutation(size)  # noqa: NPY002
        batch_size = size if batch_size is None else batch_size
        for start in range(0, size, batch_size):
            yield indices[start : start + batch_size]


@njit(cache=True)
def _masked_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    episode_starts: np.ndarray,
    active: np.ndarray,
    last_values: np.ndarray,
    dones: np.ndarray,
    gamma: np.float32,
    gamma_lambda: np.float32,
    advantages: np.ndarray,
) -> None:
    """:class:`MaskedRolloutBuffer`'s GAE into ``advantages`` (``(T, B)``, float32 throughout,
    in the order of operations of SB3's own loop)."""
    one = np.float32(1.0)
    steps, copies = rewards.shape
    for b in range(copies):
        next_value, next_adv = last_values[b], np.float32(0.0)
        for t in range(steps - 1, -1, -1):
            not_done = one - (dones[b] if t == steps - 1 else episode_starts[t + 1, b])
            target = rewards[t, b] + gamma * not_done * next_value
            adv = target - values[t, b] + gamma_lambda * not_done * next_adv
            if active[t, b]:
                advantages[t, b] = adv
                next_value, next_adv = values[t, b], adv
            else:
                # What the previous decision sees as "next": this skipped step folded in (its
                # reward plus the discounted value and advantage that follow it).
                advantages[t, b] = 0.0
                next_value, next_adv = target, gamma * not_done * next_adv


def _sample_with(
    policy: Any, obs: th.Tensor, rng: np.random.Generator
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """``policy(obs)`` with the action drawn from ``rng`` by the inverse CDF."""
    distribution = policy.get_distribution(obs).distribution
    probs = distribution.probs.cpu().numpy()
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((len(probs), 1), dtype=np.float32) * cdf[:, -1:]
    actions = th.as_tensor(np.minimum((cdf <= u).sum(1), probs.shape[1] - 1), device=obs.device)
    return actions, policy.predict_values(obs).reshape(-1), distribution.log_prob(actions)


def _numpy(x: np.ndarray | th.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, th.Tensor) else np.asarray(x)


@contextmanager
def unchecked_distributions() -> Iterator[None]:
    """Skip torch.distributions' argument checks: they re-validate the logits on every
    construction, cost about a fifth of a small policy's forward pass, and cannot fail on a
    network's own finite output."""
    validate = th.distributions.Distribution._validate_args
    th.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        th.distributions.Distribution.set_default_validate_args(validate)


def build_model(
    config: LearnerConfig,
    observation_space: spaces.Box,
    action_space: spaces.Discrete,
    n_envs: int,
    seed: int,
) -> OnPolicyAlgorithm:
    """A fresh SB3 model for one learner; its parameters are initialised from ``seed``."""
    env = SpacesOnlyVecEnv(n_envs, observation_space, action_space)
    kwargs: dict[str, Any] = {
        "learning_rate": config.learning_rate,
        "n_steps": config.n_steps,
        "gamma": config.gamma,
        "gae_lambda": config.gae_lambda,
        "ent_coef": config.ent_coef,
        "vf_coef": config.vf_coef,
        "max_grad_norm": config.max_grad_norm,
        "normalize_advantage": config.normalize_advantage,
        "rollout_buffer_class": MaskedRolloutBuffer,
        "policy_kwargs": {
            "net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)},
            "activation_fn": ACTIVATIONS[config.activation],
            # SB3's Adam (eps 1e-5) in its multi-tensor implementation: the same maths with
            # fewer kernel calls per step; on CPU torch otherwise picks the per-tensor loop.
            "optimizer_kwargs": {"eps": 1e-5, "foreach": True},
        },
        "seed": seed,
        "device": config.device,
        "verbose": 0,
    }
    if config.algo == "ppo":
        kwargs.update(
            batch_size=min(config.batch_size, config.n_steps * n_envs),
            n_epochs=config.n_epochs,
            clip_range=config.clip_range,
            target_kl=config.target_kl,
        )
    model = ALGOS[config.algo]("MlpPolicy", env, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    if config.work_bias:
        with th.no_grad():
            model.policy.action_net.bias[WORK_ACTION] += config.work_bias
    return model


@dataclass(frozen=True)
class LearnerState:
    """One learner as a checkpoint holds it, weights-only: tensors (``policy/<name>`` as its
    ``state_dict`` names them, ``optimizer/<index>/<name>`` for Adam's step and moments) and
    JSON-able counters and optimiser settings. Nothing in it is code: a model is rebuilt from the
    config and these values are copied in."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]


def model_state(model: OnPolicyAlgorithm) -> LearnerState:
    tensors = {
        f"policy/{name}": value.detach().cpu().numpy().copy()
        for name, value in model.policy.state_dict().items()
    }
    optimizer = model.policy.optimizer.state_dict()
    for index, state in optimizer["state"].items():
        for name, value in state.items():
            tensors[f"optimizer/{index}/{name}"] = _numpy(value).copy()
    meta = {
        "algo": type(model).__name__,
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
        "param_groups": optimizer["param_groups"],
    }
    return LearnerState(tensors, meta)


def restore_model(model: OnPolicyAlgorithm, state: LearnerState) -> None:
    """Copy a :func:`model_state` into a model built from the same config (strict: every
    tensor must fit)."""
    if state.meta.get("algo") != type(model).__name__:
        raise ValueError(
            f"checkpoint holds a {state.meta.get('algo')} learner; the config builds "
            f"{type(model).__name__}"
        )
    device = model.device
    policy = {
        name.removeprefix("policy/"): th.tensor(np.array(value), device=device)
        for name, value in state.tensors.items()
        if name.startswith("policy/")
    }
    model.policy.load_state_dict(policy, strict=True)
    optimizer_state: dict[int, dict[str, th.Tensor]] = {}
    for name, value in state.tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/")
            optimizer_state.setdefault(int(index), {})[key] = th.tensor(np.array(value))
    groups = [
        {**group, **({"betas": tuple(group["betas"])} if "betas" in group else {})}
        for group in state.meta["param_groups"]
    ]
    model.policy.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    model.num_timesteps = int(state.meta["num_timesteps"])
    model._n_updates = int(state.meta["n_updates"])


def appended_space(space: spaces.Box, size: int) -> spaces.Box:
    """``space`` with ``size`` one-hot entries appended (the agent's id in shared mode, its
    previous action with ``learner.previous_action``)."""
    low = np.concatenate([space.low, np.zeros(size, np.float32)])
    high = np.concatenate([space.high, np.ones(size, np.float32)])
    return spaces.Box(low=low, high=high, dtype=np.float32)


def parameters_of(model: BaseAlgorithm) -> dict[str, np.ndarray]:
    """A copy of a model's policy parameters, for comparisons in tests and tools."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.policy.state_dict().items()}


class Learners:
    """The group of learners acting in one batched env: ``N`` independent models, or one shared.

    Arrays exchanged with the runner have the env's shape ``(B, N, ...)``; each model sees its own
    slice (independent: ``[:, i]``, ``n_envs = B``; shared: all agents flattened, ``n_envs = B·N``).
    """

    def __init__(
        self,
        config: LearnerConfig,
        agent_ids: list[str],
        observation_space: spaces.Box,
        action_space: spaces.Discrete,
        num_envs: int,
        models: list[OnPolicyAlgorithm],
    ) -> None:
        self.config = config
        self.agent_ids = list(agent_ids)
        self.shared = config.sharing == "shared"
        self.ids = ["shared"] if self.shared else list(agent_ids)
        self.models = models
        #: Models never updated: those of agents that play a fixed policy (``learner.fixed``),
        #: still built and run because the fused forward batches every agent.
        self.frozen = {k for k, learner_id in enumerate(self.ids) if learner_id in config.fixed}
        self.num_envs = num_envs
        self._eye = np.eye(len(agent_ids), dtype=np.float32)
        self._action_eye = np.eye(int(action_space.n), dtype=np.float32)
        #: Each agent's own previous action per copy (``learner.previous_action``); 0 = noop.
        self.previous = np.zeros((num_envs, len(agent_ids)), np.int64)
        # What the last act() saw and chose, per model: (obs, actions, values, log_probs).
        self._pending: list[tuple[np.ndarray, ...]] = []
        policies = [m.policy for m in models]
        fuse = config.fused
        self._fused = FusedPolicies(policies) if fuse and FusedPolicies.supports(policies) else None
        self._fused_ppo = FusedPPO(models) if fuse and FusedPPO.supports(models) else None

    @staticmethod
    def spaces_for(
        config: LearnerConfig,
        observation_space: spaces.Box,
        n_agents: int,
        num_envs: int,
        n_actions: int,
    ) -> tuple[spaces.Box, int, int]:
        """``(observation space, n_envs, number of models)`` of each model in this mode."""
        if config.previous_action:
            observation_space = appended_space(observation_space, n_actions)
        if config.sharing == "shared":
            return appended_space(observation_space, n_agents), num_envs * n_agents, 1
        return observation_space, num_envs, n_agents

    @classmethod
    def create(
        cls,
        config: LearnerConfig,
        agent_ids: list[str],
        observation_space: spaces.Box,
        action_space: spaces.Discrete,
        num_envs: int,
        seed: int,
    ) -> Learners:
        space, n_envs, count = cls.spaces_for(
            config, observation_space, len(agent_ids), num_envs, int(action_space.n)
        )
        # Distinct seeds give each independent learner its own initial parameters.
        models = [
            build_model(config, space, action_space, n_envs, seed + 1000 * k) for k in range(count)
        ]
        return cls(config, agent_ids, observation_space, action_space, num_envs, models)

    @classmethod
    def from_states(
        cls,
        config: LearnerConfig,
        agent_ids: list[str],
        observation_space: spaces.Box,
        action_space: spaces.Discrete,
        num_envs: int,
        states: Mapping[str, LearnerState],
    ) -> Learners:
        """The learners of a checkpoint, rebuilt from the config (nothing of the checkpoint is
        executed); ``states`` by learner id, as :meth:`states` gives them."""
        space, n_envs, _ = cls.spaces_for(
            config, observation_space, len(agent_ids), num_envs, int(action_space.n)
        )
        ids = ["shared"] if config.sharing == "shared" else list(agent_ids)
        if sorted(states) != sorted(ids):
            raise ValueError(
                f"checkpoint holds learners {', '.join(sorted(states))}; the config needs "
                f"{', '.join(ids)}"
            )
        models = []
        for learner_id in ids:
            model = build_model(config, space, action_space, n_envs, seed=0)
            restore_model(model, states[learner_id])
            models.append(model)
        return cls(config, agent_ids, observation_space, action_space, num_envs, models)

    def states(self) -> dict[str, LearnerState]:
        """Every learner's :class:`LearnerState`, by learner id."""
        return {i: model_state(m) for i, m in zip(self.ids, self.models, strict=True)}

    def view(self, array: np.ndarray, k: int) -> np.ndarray:
        """Model ``k``'s slice of a ``(B, N, ...)`` array."""
        if self.shared:
            return array.reshape(-1, *array.shape[2:])
        return array[:, k]

    def _obs(self, obs: np.ndarray, k: int) -> np.ndarray:
        if self.shared:
            # Any batch size: evaluation may run more copies than training.
            onehot = np.broadcast_to(self._eye, (obs.shape[0], *self._eye.shape))
            joined = np.concatenate([obs, onehot], axis=-1)
            return joined.reshape(-1, joined.shape[-1])
        return obs[:, k]

    def _stacked(self, obs: np.ndarray) -> np.ndarray:
        """Every model's observations as one ``(K, n_envs, obs)`` array."""
        if self.shared:
            return self._obs(obs, 0)[None]
        return np.ascontiguousarray(obs.transpose(1, 0, 2))

    def forget_previous(
        self, starts: np.ndarray | None = None, num_envs: int | None = None
    ) -> None:
        """Reset the previous actions to noop: where ``starts`` (B, N) is true, or everywhere
        (for ``num_envs`` copies, when given)."""
        if num_envs is not None:
            self.previous = np.zeros((num_envs, len(self.agent_ids)), np.int64)
        elif starts is None:
            self.previous[:] = 0
        else:
            self.previous[starts] = 0

    def _with_previous(self, obs: np.ndarray) -> np.ndarray:
        if not self.config.previous_action:
            return obs
        if self.previous.shape != obs.shape[:2]:
            raise ValueError(
                f"previous actions are kept for {self.previous.shape[0]} copies, got "
                f"{obs.shape[0]}: call forget_previous(num_envs=...) first"
            )
        return np.concatenate([obs, self._action_eye[self.previous]], axis=-1)

    @th.no_grad()
    def act(
        self,
        obs: np.ndarray,
        deterministic: bool = False,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """One batched forward for all models; returns actions ``(B, N)``, remembers the rest.

        Samples are drawn from ``rng`` when given (evaluation: the same generator, the same
        actions), else from torch's global RNG (training, which SB3's seeding covers)."""
        actions = self._act(self._with_previous(obs), deterministic, rng)
        if self.config.previous_action:
            self.previous = actions.copy()
        return actions

    def _act(
        self, obs: np.ndarray, deterministic: bool, rng: np.random.Generator | None
    ) -> np.ndarray:
        batch, n = obs.shape[:2]
        if self._fused is not None:
            stacked = self._stacked(obs)
            act, values, log_probs = self._fused.forward(stacked, deterministic, rng)
            self._pending = [
                (stacked[k], act[k], values[k], log_probs[k]) for k in range(len(self.models))
            ]
            return act.T.copy() if not self.shared else act[0].reshape(batch, n)
        actions = np.empty((batch, n), dtype=np.int64)
        self._pending = []
        with unchecked_distributions():
            for k, model in enumerate(self.models):
                model_obs = self._obs(obs, k)
                tensor = th.as_tensor(model_obs, device=model.device)
                if rng is None or deterministic:
                    act, values, log_probs = model.policy(tensor, deterministic)
                else:
                    act, values, log_probs = _sample_with(model.policy, tensor, rng)
                act = act.cpu().numpy()
                if self.shared:
                    actions[:] = act.reshape(batch, n)
                else:
                    actions[:, k] = act
                pending = (act, values.cpu().numpy().reshape(-1), log_probs.cpu().numpy())
                self._pending.append((model_obs, *pending))
        return actions

    @th.no_grad()
    def values(self, obs: np.ndarray) -> np.ndarray:
        """State values ``(B, N)`` of every agent under its own critic (with the previous
        actions as they stand: those last :meth:`act`-ed)."""
        obs = self._with_previous(obs)
        if self._fused is not None:
            values = self._fused.values(self._stacked(obs))
            return values.T.copy() if not self.shared else values[0].reshape(obs.shape[:2])
        out = np.empty(obs.shape[:2], dtype=np.float32)
        for k, model in enumerate(self.models):
            model_obs = th.as_tensor(self._obs(obs, k), device=model.device)
            v = model.policy.predict_values(model_obs).cpu().numpy().reshape(-1)
            if self.shared:
                out[:] = v.reshape(out.shape)
            else:
                out[:, k] = v
        return out

    def store(self, rewards: np.ndarray, episode_starts: np.ndarray, active: np.ndarray) -> None:
        """Add the step last :meth:`act`-ed to every buffer. ``active`` is the status *before*
        the step, i.e. whether the action was a real decision."""
        for k, (model_obs, act, values, log_probs) in enumerate(self._pending):
            self.models[k].rollout_buffer.add_step(
                model_obs,
                act.reshape(-1, 1),
                self.view(rewards, k),
                self.view(episode_starts, k),
                values,
                log_probs,
                active=self.view(active, k),
            )

    def finish_rollout(self, last_obs: np.ndarray, dones: np.ndarray) -> None:
        last_values = self.values(last_obs)
        for k, model in enumerate(self.models):
            model.rollout_buffer.compute_returns_and_advantage(
                th.as_tensor(self.view(last_values, k)), self.view(dones, k)
            )

    def train(self, agent_steps: int, total: int) -> dict[str, dict[str, float]]:
        """One SB3 update per model (none for the :attr:`frozen`); returns SB3's ``train/…``
        logger values per learner id (empty for a model not updated)."""
        trainable = []
        for k, model in enumerate(self.models):
            model.num_timesteps = agent_steps * (len(self.agent_ids) if self.shared else 1)
            model._update_current_progress_remaining(agent_steps, total)
            # A learner shut down for the whole rollout chose nothing and learns nothing.
            if model.rollout_buffer.n_active > 0 and k not in self.frozen:
                trainable.append(k)
        if self._fused_ppo is not None:
            self._fused_ppo.train(trainable)
        else:
            with unchecked_distributions():
                for k in trainable:
                    self.models[k].train()
        out: dict[str, dict[str, float]] = {}
        for k, (learner_id, model) in enumerate(zip(self.ids, self.models, strict=True)):
            logger = model.logger
            out[learner_id] = (
                {
                    name.removeprefix("train/"): float(value)
                    for name, value in logger.name_to_value.items()
                    if name.startswith("train/")
                    and "tensorboard" not in logger.name_to_excluded[name]
                }
                if k in trainable
                else {}
            )
            logger.dump(agent_steps)  # no output formats: this only clears the values
        if self._fused is not None:
            self._fused.refresh()
        return out
