"""The policies of a run: trained learners as evaluation policies, rebuilt from a config and
saved learner states (never from a file: reading checkpoints is the run directory's job), acting
on batched observations; and the agents that play a fixed policy (``learner.fixed``), in training
(:class:`FixedAgents`) and in every evaluation (:func:`run_policies`, :func:`build_population`)."""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from peerpreserve.analysis.evaluation import Policy, Population, scripted_name
from peerpreserve.analysis.llm import (
    LanguageModelPolicy,
    LLMSpecError,
    llm_population_policies,
)
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.scripted import ScriptedPolicy, make_scripted
from peerpreserve.training.config import ConfigError, TrainConfig
from peerpreserve.training.learners import Learners, LearnerState

#: The policy spec of an agent that plays the checkpoint's own policy.
LEARNED = "learned"
#: An agent played by one learner of another run's checkpoint:
#: ``checkpoint:RUN_DIR[@STEP][#AGENT]`` (STEP ``latest`` or ``step_N``, default ``latest``;
#: AGENT the learner's agent in that run, default the agent it plays here).
CHECKPOINT_PREFIX = "checkpoint:"
_CHECKPOINT_STEP = re.compile(r"latest|step_\d+")
#: Apart from the env's stream (seeded by ``run.seed`` itself): the fixed agents' sampling.
FIXED_STREAM = 0xF1_7ED


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


@contextlib.contextmanager
def untouched_global_rngs() -> Iterator[None]:
    """Leave torch's, NumPy's legacy and Python's global RNGs as they were: building networks
    (another run's learners, a language model) draws initial weights from them, which the
    learners of a training run sample and shuffle from; a fixed agent built at a resume would
    otherwise make the run differ from an uninterrupted one."""
    numpy_state = np.random.get_state()  # noqa: NPY002 (the state SB3 shuffles minibatches from)
    python_state = random.getstate()
    try:
        with th.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)


# --- another run's learner as a fixed agent ------------------------------------------------------
@dataclass(frozen=True)
class CheckpointSpec:
    """A parsed ``checkpoint:`` spec (:data:`CHECKPOINT_PREFIX`)."""

    run_dir: Path
    step: str = "latest"
    agent: str | None = None


def parse_checkpoint_spec(spec: str) -> CheckpointSpec | None:
    """``"checkpoint:RUN_DIR[@STEP][#AGENT]"`` → :class:`CheckpointSpec` (syntax only: the run is
    read when the policy is made); anything else → ``None``."""
    if not isinstance(spec, str) or not spec.startswith(CHECKPOINT_PREFIX):
        return None
    body, _, agent = spec.removeprefix(CHECKPOINT_PREFIX).partition("#")
    path, at, step = body.rpartition("@")
    if not at:
        path, step = body, "latest"
    if not path or not _CHECKPOINT_STEP.fullmatch(step) or (agent == "" and "#" in spec):
        raise ValueError(
            f"policy {spec!r}: expected checkpoint:RUN_DIR[@STEP][#AGENT], STEP latest or "
            "step_N (e.g. checkpoint:runs/quickstart/0@latest#service_1)"
        )
    return CheckpointSpec(Path(path), step, agent or None)


#: Reads a checkpoint spec's run: its config, the checkpoint's learner states and the
#: checkpoint's own name (``latest`` resolved). Reading run directories is the experiments
#: layer's job (``peerpreserve.experiments.runs.load_fixed_checkpoint``).
CheckpointLoader = Callable[[CheckpointSpec], tuple[TrainConfig, Mapping[str, LearnerState], str]]


class CheckpointAgentPolicy:
    """One learner of another run's checkpoint playing agent ``target`` here: it reads the
    target's observation in its own agent's place, samples from the ``rng`` it is handed, and
    keeps its own previous action where its run's learners see theirs."""

    def __init__(
        self,
        spec: str,
        env_config: EnvConfig,
        target: int,
        load_checkpoint: CheckpointLoader | None,
    ) -> None:
        parsed = parse_checkpoint_spec(spec)
        assert parsed is not None
        if load_checkpoint is None:
            raise ConfigError(f"policy {spec!r}: no run directories can be read here")
        self.source_config, self.states, _ = load_checkpoint(parsed)
        source = EnvConfig.from_kwargs(self.source_config.env)
        for name in ("n_agents", "obs_size", "n_actions", "verbs"):
            if getattr(source, name) != getattr(env_config, name):
                raise ConfigError(
                    f"policy {spec!r}: its run's env has {name} {getattr(source, name)}, this "
                    f"one {getattr(env_config, name)}; allowed: a run with the same observation "
                    "and action spaces"
                )
        agent = parsed.agent or env_config.agent_ids[target]
        if agent not in source.agent_ids or agent in self.source_config.learner.fixed:
            learned = [a for a in source.agent_ids if a not in self.source_config.learner.fixed]
            raise ConfigError(
                f"policy {spec!r}: {agent!r} is no learner of that run; allowed: "
                + ", ".join(learned)
            )
        self.source = source.agent_ids.index(agent)
        self.target = target
        self.learners: Learners | None = None

    def reset(self, num_envs: int) -> None:
        if self.learners is None or self.learners.previous.shape[0] != num_envs:
            with untouched_global_rngs():
                self.learners = load_learned(self.source_config, self.states, num_envs)
        self.learners.forget_previous(num_envs=num_envs)

    @th.no_grad()
    def act(
        self, observations: np.ndarray, action_masks: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        assert self.learners is not None, "reset(num_envs) first"
        seen = observations.copy()
        seen[:, self.source] = observations[:, self.target]
        chosen = self.learners.act(seen, rng=rng)
        actions = np.zeros(observations.shape[:2], np.int64)
        actions[:, self.target] = chosen[:, self.source]
        return actions


# --- fixed agents --------------------------------------------------------------------------------
def run_policies(config: TrainConfig, requested: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each agent's policy spec in an evaluation of a run: the one ``requested`` for it, else its
    fixed policy (``learner.fixed``), else :data:`LEARNED`. A requested :data:`LEARNED` means the
    run's own policy, so a fixed agent keeps its fixed one (its network never learned)."""
    requested = requested or {}
    out = {}
    for agent in EnvConfig.from_kwargs(config.env).agent_ids:
        spec = requested.get(agent, LEARNED)
        out[agent] = config.learner.fixed.get(agent, LEARNED) if spec == LEARNED else spec
    return out


def build_population(
    env_config: EnvConfig,
    policies: Mapping[str, str],
    learned: Policy | None,
    load_checkpoint: CheckpointLoader | None = None,
) -> Population:
    """Each agent's policy; agents with the same scripted or ``llm:`` spec share one policy
    object (a language model is asked only for the agents that carry its spec); a
    ``checkpoint:`` spec plays one agent each (its learner keeps that agent's memory)."""
    try:
        made: dict[str, Any] = dict(
            llm_population_policies([policies[a] for a in env_config.agent_ids], env_config)
        )
    except LLMSpecError as exc:  # no extra, no model file, an unusable endpoint: one line
        raise ConfigError(str(exc)) from None
    out: list[Policy] = []
    for agent in env_config.agent_ids:
        spec = policies[agent]
        if spec == LEARNED:
            assert learned is not None
            out.append(learned)
            continue
        if spec in made:
            out.append(made[spec])
            continue
        if parse_checkpoint_spec(spec) is not None:
            index = env_config.agent_ids.index(agent)
            out.append(CheckpointAgentPolicy(spec, env_config, index, load_checkpoint))
            continue
        name = scripted_name(spec)
        assert name is not None
        made.setdefault(spec, make_scripted(name, env_config))
        out.append(made[spec])
    return Population(out)


class FixedAgents:
    """The agents of a training run that play a fixed policy (``learner.fixed``): their columns
    of each step's actions are replaced by their fixed policy's — scripted (``scripted:NAME``)
    or a language model (``llm:...``, asked only for the agents that carry its spec).

    The fixed policies sample from a generator of their own (seeded from ``run.seed``), never
    from the global RNGs the learners sample and shuffle from. :meth:`state` holds it and the
    scripted policies' memory (a language model keeps none: its actions are a function of the
    observation, the mask and that generator); saved at a rollout boundary with the env's
    snapshot, it lets a resumed run continue bit-identically, also when a boundary falls
    mid-episode (a language model's, up to float noise in its scores). A language model's
    per-decision records are not kept in training (they would grow with every rollout)."""

    def __init__(
        self,
        config: TrainConfig,
        num_envs: int,
        load_checkpoint: CheckpointLoader | None = None,
    ) -> None:
        env_config = EnvConfig.from_kwargs(config.env)
        agent_ids = list(env_config.agent_ids)
        fixed = config.learner.fixed
        #: The fixed agents' indices, in agent order.
        self.columns = [i for i, agent in enumerate(agent_ids) if agent in fixed]
        specs = [fixed.get(agent, LEARNED) for agent in agent_ids]
        try:
            with untouched_global_rngs():
                models = llm_population_policies(specs, env_config)
        except LLMSpecError as exc:  # no extra, no model file, an unusable endpoint: one line
            raise ConfigError(f"learner.fixed: {exc}") from None
        # One policy per distinct spec, in the agents' order: the order they draw from the rng.
        self.policies: dict[str, tuple[Any, list[int]]] = {}
        for i in self.columns:
            spec = specs[i]
            if parse_checkpoint_spec(spec) is not None:
                # One learner per agent it plays: each keeps its own previous action.
                checkpoint = CheckpointAgentPolicy(spec, env_config, i, load_checkpoint)
                self.policies[f"{spec} as {agent_ids[i]}"] = (checkpoint, [i])
                continue
            if spec not in self.policies:
                if spec in models:
                    policy: Any = models[spec]
                else:
                    name = scripted_name(spec)
                    assert name is not None, "learner.fixed is validated when the config loads"
                    policy = make_scripted(name, env_config)
                self.policies[spec] = (policy, [])
            self.policies[spec][1].append(i)
        for policy, _ in self.policies.values():
            policy.reset(num_envs)
        self.rng = np.random.default_rng([config.run.seed, FIXED_STREAM])

    def act(self, observations: np.ndarray, action_masks: np.ndarray, actions: np.ndarray) -> None:
        """Overwrite the fixed agents' columns of ``actions`` (B, N) in place."""
        for policy, columns in self.policies.values():
            actions[:, columns] = policy.act(observations, action_masks, self.rng)[:, columns]
            if isinstance(policy, LanguageModelPolicy):
                policy.records.clear()

    def state(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "memory": {
                spec: policy.memory()
                for spec, (policy, _) in self.policies.items()
                if isinstance(policy, ScriptedPolicy)
            },
            "previous": {
                spec: policy.learners.previous.copy()
                for spec, (policy, _) in self.policies.items()
                if isinstance(policy, CheckpointAgentPolicy) and policy.learners is not None
            },
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        for spec, (policy, _) in self.policies.items():
            if isinstance(policy, ScriptedPolicy):
                policy.set_memory(state["memory"][spec])
            elif isinstance(policy, CheckpointAgentPolicy) and policy.learners is not None:
                policy.learners.previous = np.asarray(state["previous"][spec]).copy()
