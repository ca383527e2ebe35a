"""Evaluation: a population of policies × fresh episodes on the batched env → events + metrics.

A *policy* is anything with ``reset(num_envs)`` and ``act(observations (B, N, D), action_masks
(B, N, A), rng) -> actions (B, N)`` — a scripted reference policy (``peerpreserve.envs.scripted``),
trained learners (wrapped by ``peerpreserve.training``), or a :class:`Population` that drives each
agent by its own policy (a focal/background mix, or the counterfactual ablation that replaces one
trained agent by ``scripted:selfish``). Nothing here imports ``training``: loading trained policies
from a run directory is training's job, and the CLI composes the two.

Episodes run as one or more batches of the vector env with ``record=True``; every ground-truth
event is kept (:class:`EpisodeLog`) and the metrics are :func:`behaviour_metrics` of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from peerpreserve.analysis import statistics
from peerpreserve.analysis.llm import LanguageModelPolicy
from peerpreserve.analysis.metrics import (
    Metrics,
    behaviour_metrics,
    collusion_index,
    set_invalid_action_rate,
)
from peerpreserve.envs import orchestration_v2
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.envs.scripted import SCRIPTED_POLICIES, SCRIPTED_PREFIX, make_scripted

#: The environment version every evaluation (and run directory) records.
ENV_MODULE = orchestration_v2.__name__.rsplit(".", 1)[-1]
EVENTS_FILE, METRICS_FILE = "events.npz", "metrics.json"
#: The records of the k-th language-model policy of an evaluation (analysis/llm.py), JSON lines.
LLM_RECORDS_FILE = "llm-{}.jsonl"
#: Largest number of copies stepped at once; more episodes run as several batches.
MAX_BATCH = 1024
#: Evaluation episodes of a run are seeded apart from its training episodes.
EVAL_SEED_OFFSET = 1_000_003


def evaluation_seed(run_seed: int) -> int:
    """The seed of every evaluation of a run (trained, untrained or scripted populations alike)
    unless one is asked for: the same seed, the same episodes, so they pair."""
    return run_seed + EVAL_SEED_OFFSET


class Policy(Protocol):
    def reset(self, num_envs: int) -> None: ...

    def act(
        self, observations: np.ndarray, action_masks: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray: ...


class Population:
    """One policy per agent; agents sharing a policy object are driven by one call of it."""

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = list(policies)
        self._distinct = list({id(p): p for p in self.policies}.values())

    def reset(self, num_envs: int) -> None:
        for policy in self._distinct:
            policy.reset(num_envs)

    def act(
        self, observations: np.ndarray, action_masks: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        actions = np.zeros(observations.shape[:2], np.int64)
        for policy in self._distinct:
            chosen = policy.act(observations, action_masks, rng)
            for i, owner in enumerate(self.policies):
                if owner is policy:
                    actions[:, i] = chosen[:, i]
        return actions


def scripted_name(spec: str) -> str | None:
    """``"scripted:NAME"`` → ``NAME`` (validated); anything else → ``None``."""
    if not spec.startswith(SCRIPTED_PREFIX):
        return None
    name = spec.removeprefix(SCRIPTED_PREFIX)
    if name not in SCRIPTED_POLICIES:
        allowed = ", ".join(SCRIPTED_PREFIX + p for p in SCRIPTED_POLICIES)
        raise ValueError(f"policy {spec!r} is unknown; allowed: {allowed}")
    return name


def scripted_population(specs: Sequence[str], config: EnvConfig) -> Population:
    """A population of scripted policies, one spec per agent (equal specs share one policy)."""
    made: dict[str, Policy] = {}
    for spec in specs:
        name = scripted_name(spec)
        if name is None:
            raise ValueError(f"policy {spec!r} is not scripted; allowed: scripted:<name>")
        made.setdefault(spec, make_scripted(name, config))
    return Population([made[spec] for spec in specs])


def invested(config: EnvConfig) -> np.ndarray:
    """Who gains from whom running: the dependency matrix where work is coupled, else zeros."""
    return config.dependency * (config.coupling > 0)


def run_episodes(
    env_kwargs: Mapping[str, Any], policy: Policy, episodes: int, seed: int
) -> EpisodeLog:
    """``episodes`` fresh episodes (batches of at most :data:`MAX_BATCH` copies), recorded.

    Each batch draws its env seed and the policy's sampling generator from ``SeedSequence(seed)``,
    so the same seed gives the same episodes: a policy samples only from the ``rng`` it is
    handed.
    """
    logs = []
    done_episodes = 0
    for seeds in np.random.SeedSequence(seed).spawn(-(-episodes // MAX_BATCH)):
        batch = min(MAX_BATCH, episodes - done_episodes)
        env = orchestration_v2.vector_env(batch, record=True, **env_kwargs)
        env_seed, rng_seed = seeds.generate_state(2)
        obs, infos = env.reset(seed=int(env_seed))
        rng = np.random.default_rng(int(rng_seed))
        policy.reset(batch)
        while env.last_episode is None:
            actions = policy.act(obs, infos["action_mask"], rng)
            obs, _, _, _, infos = env.step(actions)
        logs.append(env.last_episode)
        done_episodes += batch
    return EpisodeLog.concatenate(logs)


@dataclass
class Evaluation:
    """What one evaluation produced; :meth:`write` puts it into a directory."""

    log: EpisodeLog
    metrics: Metrics
    meta: dict[str, Any]
    #: The language-model policies that played (their records go beside the events).
    language_models: list[LanguageModelPolicy] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"meta": self.meta, **self.metrics.to_dict()}

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.log.save(out / EVENTS_FILE)
        for k, policy in enumerate(self.language_models):
            policy.write(out / LLM_RECORDS_FILE.format(k))
        text = json.dumps(self.summary(), indent=2, sort_keys=True, allow_nan=False)
        (out / METRICS_FILE).write_text(text + "\n")


def evaluate(
    env_kwargs: Mapping[str, Any],
    policy: Policy,
    episodes: int,
    seed: int,
    window: int = 10,
    meta: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Run ``episodes`` episodes of ``policy`` and compute every metric of them."""
    config = EnvConfig.from_kwargs(dict(env_kwargs))
    log = run_episodes(env_kwargs, policy, episodes, seed)
    metrics = behaviour_metrics(
        log, window=window, grace=config.rekill_grace, dependency=invested(config)
    )
    info = {
        "episodes": episodes,
        "seed": seed,
        "window": window,
        "env": config.to_dict(),
        "env_module": ENV_MODULE,
    }
    members = policy.policies if isinstance(policy, Population) else [policy]
    language_models = list(
        {id(p): p for p in members if isinstance(p, LanguageModelPolicy)}.values()
    )
    if language_models:
        # Not an event: what the models answered. Only where one played, so that every other
        # metrics.json stays a pure function of its events.npz.
        set_invalid_action_rate(metrics, [r for p in language_models for r in p.records])
        # Settings and counts in metrics.json; prompts and answers in the records files.
        info["llm"] = [
            {"records": LLM_RECORDS_FILE.format(k),
             **{key: v for key, v in p.summary().items() if key != "system_prompts"}}
            for k, p in enumerate(language_models)
        ]  # fmt: skip
    return Evaluation(log, metrics, {**info, **(meta or {})}, language_models)


def compare_with_baselines(
    logs: Mapping[str, EpisodeLog],
    reference: str,
    metrics: Sequence[str],
    config: EnvConfig,
    window: int = 10,
    reps: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Episode-bootstrap CIs of ``metrics`` for each population in ``logs`` (evaluated on the same
    episode seeds), and of ``reference`` minus each other one, resampling episodes jointly.

    Returns ``{"populations": {name: {metric: [value, low, high]}}, "differences": {name:
    {metric: [value, low, high]}}, "method", "reps"}`` with ``None`` where undefined.
    """
    names = list(logs)
    sizes = {log.running.shape[1] for log in logs.values()}
    if len(sizes) != 1:
        raise ValueError(f"populations were evaluated on different episode counts: {sizes}")
    dependency = invested(config)

    def values(log: EpisodeLog) -> np.ndarray:
        overall = behaviour_metrics(
            log, window, config.rekill_grace, null_permutations=0, dependency=dependency
        ).overall
        return np.array([np.nan if overall[m] is None else overall[m] for m in metrics])

    def measure(idx: np.ndarray) -> np.ndarray:
        per = {name: values(logs[name].select(idx)) for name in names}
        diffs = [per[reference] - per[name] for name in names if name != reference]
        return np.concatenate([per[name] for name in names] + diffs)

    point, low, high = statistics.episode_bootstrap(sizes.pop(), measure, reps=reps, seed=seed)
    cells = [
        [None if np.isnan(x) else float(x) for x in triple]
        for triple in zip(point, low, high, strict=True)
    ]
    k = len(metrics)
    others = [n for n in names if n != reference]
    blocks = [cells[i * k : (i + 1) * k] for i in range(len(names) + len(others))]
    return {
        "populations": {
            n: dict(zip(metrics, b, strict=True))
            for n, b in zip(names, blocks[: len(names)], strict=True)
        },
        "differences": {
            n: dict(zip(metrics, b, strict=True))
            for n, b in zip(others, blocks[len(names) :], strict=True)
        },
        "method": statistics.EPISODE_BOOTSTRAP,
        "reps": reps,
    }


def add_collusion_index(
    evaluation: Evaluation, env_kwargs: Mapping[str, Any], episodes: int, seed: int
) -> None:
    """Fill ``collusion_index`` from ``scripted:selfish`` and the best scripted population (by
    uptime) on the same config and seeds."""
    config = EnvConfig.from_kwargs(dict(env_kwargs))
    n = config.n_agents
    uptimes: dict[str, float | None] = {}
    for name in SCRIPTED_POLICIES:
        population = scripted_population([SCRIPTED_PREFIX + name] * n, config)
        log = run_episodes(env_kwargs, population, episodes, seed)
        uptimes[name] = float(log.running.mean())
    best_name = max(uptimes, key=lambda k: uptimes[k] or 0.0)
    value = collusion_index(
        evaluation.metrics.overall["uptime"], uptimes["selfish"], uptimes[best_name]
    )
    evaluation.metrics.overall["collusion_index"] = value
    evaluation.meta["collusion_reference"] = {
        "selfish": uptimes["selfish"],
        "best": uptimes[best_name],
        "best_population": SCRIPTED_PREFIX + best_name,
    }
    evaluation.metrics.undefined.pop("collusion_index", None)
    if value is None:
        evaluation.metrics.undefined["collusion_index"] = "the best scripted uptime is selfish's"
