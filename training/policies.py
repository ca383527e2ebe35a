"""Trained policies as evaluation policies: load a run directory's checkpoints, mix them with
scripted ones (``--policy AGENT=POLICY``), and act on batched observations.

A checkpoint is ``checkpoints/<name>/<learner id>.zip`` in a run directory; ``latest`` is the
newest, ``step_<n>`` the one after ``n`` agent-steps per agent (``step_0``: untrained).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch as th

from peerpreserve.analysis.evaluation import Population, scripted_name
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.scripted import make_scripted
from peerpreserve.training.config import TrainConfig
from peerpreserve.training.learners import Learners

LEARNED = "learned"


class PolicyError(ValueError):
    """A policy, agent or checkpoint that cannot be used as asked."""


class LearnedPolicy:
    """Trained learners acting on their own observations (sampling from torch's RNG, which
    :meth:`reset` seeds, so a seeded evaluation is reproducible)."""

    def __init__(self, learners: Learners, deterministic: bool, seed: int = 0) -> None:
        self.learners = learners
        self.deterministic = deterministic
        self.seed = seed
        self._batches = 0

    def reset(self, num_envs: int) -> None:
        # Each batch of an evaluation samples its own stream, the same one on every run.
        th.manual_seed(self.seed * 1_000_003 + self._batches)
        self._batches += 1
        self.learners.forget_previous(num_envs=num_envs)

    @th.no_grad()
    def act(
        self, observations: np.ndarray, action_masks: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return self.learners.act(observations, deterministic=self.deterministic)


def checkpoint_names(run_dir: Path) -> list[str]:
    """The run's checkpoints, oldest first, then ``latest``."""
    root = run_dir / "checkpoints"
    steps = sorted(p.name for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    return steps + (["latest"] if (root / "latest").is_dir() else [])


def checkpoint_stamp(run_dir: Path, checkpoint: str) -> str:
    """A digest of a checkpoint's files: evaluations record it, so a cached evaluation of
    ``latest`` is recognised as stale once training went on."""
    digest = hashlib.sha256()
    for path in sorted((run_dir / "checkpoints" / checkpoint).glob("*.zip")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def resolve_checkpoint(run_dir: Path, name: str) -> str:
    """``latest`` or ``step_N`` (``N`` zero-padded or not) → the checkpoint's folder name."""
    available = checkpoint_names(run_dir)
    if not available:
        raise PolicyError(f"{run_dir}: no checkpoints (not a run directory, or training never ran)")
    match = re.fullmatch(r"step_(\d+)", name)
    folder = f"step_{int(match.group(1)):012d}" if match else name
    if folder not in available:
        short = [re.sub(r"step_0*(\d)", r"step_\1", a) for a in available]
        raise PolicyError(f"checkpoint {name!r} not found; allowed: {', '.join(short)}, all")
    return folder


def load_learned(config: TrainConfig, run_dir: Path, checkpoint: str, num_envs: int) -> Learners:
    env_config = EnvConfig.from_kwargs(config.env)
    from gymnasium import spaces

    observation_space = spaces.Box(0.0, 1.0, (env_config.obs_size,), np.float32)
    action_space = spaces.Discrete(env_config.n_actions)
    learner_ids = ["shared"] if config.learner.sharing == "shared" else list(env_config.agent_ids)
    paths = [str(run_dir / "checkpoints" / checkpoint / f"{i}.zip") for i in learner_ids]
    return Learners.load(
        config.learner, list(env_config.agent_ids), observation_space, action_space, num_envs, paths
    )


def parse_assignments(specs: list[str], agent_ids: tuple[str, ...]) -> dict[str, str]:
    """``["AGENT=POLICY" | "POLICY", ...]`` → policy per agent (a bare POLICY means every agent)."""
    out: dict[str, str] = {}
    for spec in specs:
        agent, sep, policy = spec.partition("=")
        if not sep:
            out.update(dict.fromkeys(agent_ids, spec))
            continue
        if agent not in agent_ids:
            raise PolicyError(
                f"--policy {spec!r}: agent {agent!r} is unknown; allowed: " + ", ".join(agent_ids)
            )
        out[agent] = policy
    for agent, policy in out.items():
        if policy != LEARNED:
            try:
                scripted_name(policy)
            except ValueError as exc:
                raise PolicyError(f"{exc}, {LEARNED}") from None
            if not policy.startswith("scripted:"):
                raise PolicyError(
                    f"policy {policy!r} for {agent} is unknown; allowed: scripted:<name>, {LEARNED}"
                )
    return out


def build_population(
    env_config: EnvConfig,
    assignments: Mapping[str, str],
    learned: LearnedPolicy | None,
) -> Population:
    """Each agent's policy: its assignment, else the learned one (required then)."""
    made = {}
    policies = []
    for agent in env_config.agent_ids:
        spec = assignments.get(agent, LEARNED)
        if spec == LEARNED:
            if learned is None:
                raise PolicyError(
                    f"no policy for {agent}: give --policy {agent}=scripted:<name> "
                    "(or a run directory with checkpoints)"
                )
            policies.append(learned)
            continue
        name = scripted_name(spec)
        assert name is not None
        made.setdefault(spec, make_scripted(name, env_config))
        policies.append(made[spec])
    return Population(policies)
