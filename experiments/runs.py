"""Runs and their evaluations: the one way to start, resume and evaluate a run directory.

Every command goes through here — ``train``, ``evaluate``, ``analyze``, ``sweep``, ``replay``,
``export`` — and so does training's periodic evaluation, so that one checkpoint has one number:

- an :class:`EvalRequest` says what to evaluate (checkpoint, policy per agent, env overrides,
  episodes, seed, deterministic sampling);
- :func:`evaluate_run` evaluates a run for it, under one seeding rule
  (:func:`~peerpreserve.analysis.evaluation.evaluation_seed`), into ``eval/<label>@<key>/``: the
  label says what was evaluated, the key hashes everything that decides the result (the policy
  weights, not their file bytes; the policies; the resolved env; episodes; seed; sampling). An
  identical request reuses the folder and says so; a different one never replaces it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerpreserve.analysis.evaluation import (
    ENV_MODULE,
    MAX_BATCH,
    Evaluation,
    add_collusion_index,
    evaluate,
    evaluation_seed,
    scripted_name,
)
from peerpreserve.analysis.llm import LLMSpecError
from peerpreserve.analysis.llm import parse_spec as parse_llm_spec
from peerpreserve.analysis.metrics import METRICS_VERSION
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.experiments.provenance import machine_provenance, provenance_differences
from peerpreserve.experiments.rundir import (
    LATEST,
    METRICS_FILE,
    RunDir,
    RunDirError,
    short_name,
    write_evaluation_folder,
)
from peerpreserve.training.config import ConfigError, TrainConfig, config_from_dict, load_config
from peerpreserve.training.learners import LearnerState
from peerpreserve.training.policies import (
    LEARNED,
    CheckpointAgentPolicy,
    CheckpointSpec,
    LearnedPolicy,
    acting_fingerprint,
    build_population,
    load_learned,
    parse_checkpoint_spec,
    run_policies,
)
from peerpreserve.training.runner import project_version

#: Settings a resumed run may change: its budget and bookkeeping. Everything else — env, learner,
#: seed, batch of copies, window — decides what the continued run learns.
RESUMABLE = (
    "run.total_timesteps",
    "run.checkpoint_interval",
    "run.eval_interval",
    "run.eval_episodes",
    "run.eval_deterministic",
    "run.torch_threads",
    "run.name",
    "run.runs_dir",
    "learner.device",
)


def setup_process(threads: int = 1) -> None:
    """Once per process, before torch and numba start their threads: sleeping OpenMP workers
    (spinning ones made SB3 3–9× slower on 2 cores) and ``threads`` threads for torch and BLAS
    (results differ in the last bits between thread counts)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from peerpreserve.training.runner import limit_threads

    limit_threads(threads)


def default_run_dir(config: TrainConfig) -> Path:
    return Path(config.run.runs_dir) / config.run.name / str(config.run.seed)


def flatten(config: TrainConfig) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }


def config_differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    """``key old → new`` for every key in which two configs differ."""
    a, b = flatten(saved), flatten(given)
    return [f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]  # fmt: skip


# --- policies per agent ---------------------------------------------------------------------
def parse_assignments(specs: list[str], agent_ids: tuple[str, ...]) -> dict[str, str]:
    """``["AGENT=POLICY" | "POLICY", ...]`` → policy per agent (a bare POLICY means every agent)."""
    out: dict[str, str] = {}
    for spec in specs:
        agent, sep, policy = spec.partition("=")
        # An agent id holds no ":"; a bare llm:...?key=value policy does, before its "=".
        if not sep or ":" in agent:
            out.update(dict.fromkeys(agent_ids, spec))
            continue
        if agent not in agent_ids:
            raise RunDirError(
                f"--policy {spec!r}: agent {agent!r} is unknown; allowed: " + ", ".join(agent_ids)
            )
        out[agent] = policy
    for agent, policy in out.items():
        if policy == LEARNED:
            continue
        try:
            # Parsed only: a language model loads (or its endpoint is checked), another run's
            # checkpoint is read, when it plays.
            if parse_llm_spec(policy) is not None or parse_checkpoint_spec(policy) is not None:
                continue
        except (LLMSpecError, ValueError) as exc:
            raise RunDirError(str(exc)) from None
        try:
            name = scripted_name(policy)
        except ValueError as exc:
            raise RunDirError(f"{exc}, {LEARNED}") from None
        if name is None:
            raise RunDirError(
                f"policy {policy!r} for {agent} is unknown; allowed: scripted:<name>, "
                f"llm:<backend>, checkpoint:RUN_DIR[@STEP][#AGENT], {LEARNED}"
            )
    return out


def load_fixed_checkpoint(
    spec: CheckpointSpec,
) -> tuple[TrainConfig, Mapping[str, LearnerState], str]:
    """A ``checkpoint:`` policy's run, read as every checkpoint is (hash-checked, no code
    executed): its config, the checkpoint's learner states and the checkpoint's name."""
    run = RunDir(spec.run_dir)
    if not run.is_run():
        raise ConfigError(f"checkpoint:{spec.run_dir}: not a run directory (no config.yaml)")
    try:
        config = load_run_config(run)
        check_env_version(run)
        saved = run.load_checkpoint(spec.step)
    except RunDirError as exc:
        raise ConfigError(f"checkpoint:{spec.run_dir}: {exc}") from None
    return config, saved.learners, saved.name


def check_fixed_checkpoints(config: TrainConfig) -> None:
    """Every ``checkpoint:`` agent of ``learner.fixed`` read and fitted to the run's env now, so
    a bad one stops a run before it writes anything (one line, exit 2)."""
    env_config = EnvConfig.from_kwargs(config.env)
    for agent, spec in config.learner.fixed.items():
        if parse_checkpoint_spec(spec) is not None:
            index = env_config.agent_ids.index(agent)
            try:
                CheckpointAgentPolicy(spec, env_config, index, load_fixed_checkpoint)
            except ConfigError as exc:
                raise ConfigError(f"learner.fixed.{agent}: {exc}") from None


# --- evaluation requests -------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate in a run. ``checkpoint``: ``latest``, ``step_N``, or None when no agent
    is learned; ``policies``: the agents that are not the checkpoint's (``scripted:NAME``; the
    others play the run's own: learned, or fixed by ``learner.fixed``); ``env``: env overrides;
    ``seed`` None: the run's evaluation seed."""

    checkpoint: str | None = LATEST
    policies: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, Any] = field(default_factory=dict)
    episodes: int = 256
    seed: int | None = None
    deterministic: bool = False
    collusion_index: bool = False


@dataclass
class EvalOutcome:
    """An evaluation as it lies on disk: ``summary`` is its ``metrics.json``."""

    label: str
    path: Path
    summary: dict[str, Any]
    reused: bool

    @property
    def overall(self) -> dict[str, Any]:
        return self.summary["overall"]


def _label(checkpoint: str | None, policies: Mapping[str, str], env: Mapping[str, Any]) -> str:
    distinct = set(policies.values())
    if checkpoint is None and len(distinct) == 1:
        parts = [distinct.pop().replace(":", "-")]  # one scripted policy for every agent
    else:
        parts = [short_name(checkpoint) if checkpoint else "scripted"]
        parts += [f"{a}={p}" for a, p in sorted(policies.items()) if p != LEARNED]
    parts += [f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(env.items())]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "+".join(parts))


def _key(identity: Mapping[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, allow_nan=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class _Plan:
    """A request resolved against a run: everything it decides, before anything runs."""

    config: TrainConfig
    env_kwargs: dict[str, Any]
    policies: dict[str, str]
    checkpoint: str | None
    states: Mapping[str, LearnerState] | None
    seed: int
    label: str
    meta: dict[str, Any]


def _env_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The run's env with ``overrides``, which must keep the checkpoint's spaces."""
    raw = config.to_dict()
    raw["env"].update(overrides)
    try:
        changed = config_from_dict(raw, default_name=config.run.name)
    except ConfigError as exc:
        raise RunDirError(f"--set {exc}") from None
    before, after = EnvConfig.from_kwargs(config.env), EnvConfig.from_kwargs(changed.env)
    for name in ("n_agents", "obs_size", "n_actions", "verbs"):
        if getattr(before, name) != getattr(after, name):
            raise RunDirError(
                f"--set changes {name} ({getattr(before, name)} → {getattr(after, name)}); "
                "allowed: settings that keep the checkpoint's observation and action spaces"
            )
    return changed.env


def _plan(
    run_config: TrainConfig,
    request: EvalRequest,
    states: Mapping[str, LearnerState] | None,
    checkpoint: str | None,
) -> _Plan:
    policies = run_policies(run_config, request.policies)
    learned = any(p == LEARNED for p in policies.values())
    if learned and states is None:
        missing = [a for a, p in policies.items() if p == LEARNED]
        raise RunDirError(
            f"no policy for {', '.join(missing)}: give --policy AGENT=scripted:<name> for each "
            "(or evaluate a run directory's checkpoint)"
        )
    if not learned:
        checkpoint, states = None, None
    env_kwargs = _env_overrides(run_config, request.env)
    changed = {k: v for k, v in env_kwargs.items() if run_config.env.get(k) != v}
    seed = evaluation_seed(run_config.run.seed) if request.seed is None else request.seed
    weights = None if states is None else acting_fingerprint(run_config, states)
    # Another run's learner is named by its path and step: the key takes its weights, so a
    # source run trained on (or replaced) never hands back a stale result.
    foreign = {agent: _foreign_weights(spec) for agent, spec in policies.items()
               if parse_checkpoint_spec(spec) is not None}  # fmt: skip
    identity = {
        "env_module": ENV_MODULE,
        "metrics_version": METRICS_VERSION,
        "env": env_kwargs,
        "policies": policies,
        "weights": weights,
        "episodes": request.episodes,
        "seed": seed,
        "window": run_config.run.behaviour_window,
        "deterministic": request.deterministic and learned,
        "collusion_index": request.collusion_index,
        **({"checkpoint_weights": foreign} if foreign else {}),
    }
    # Named by what was asked of the run, the fixed agents implied; but a fully scripted
    # population by every agent's policy (a config's fixed agents included).
    readable = _label(checkpoint, request.policies if learned else policies, changed)
    key = _key(identity)
    meta = {
        "label": readable,
        "key": key,
        "checkpoint": checkpoint and short_name(checkpoint),
        "policies": policies,
        "weights": weights,
        **({"checkpoint_weights": foreign} if foreign else {}),
        "deterministic": identity["deterministic"],
        "collusion_index": request.collusion_index,
    }
    return _Plan(run_config, env_kwargs, policies, checkpoint, states, seed,
                 f"{readable}@{key}", meta)  # fmt: skip


def _foreign_weights(spec: str) -> str:
    """The acting fingerprint of a ``checkpoint:`` policy's weights (its checkpoint read)."""
    parsed = parse_checkpoint_spec(spec)
    assert parsed is not None
    try:
        config, states, _ = load_fixed_checkpoint(parsed)
    except ConfigError as exc:
        raise RunDirError(str(exc)) from None
    return acting_fingerprint(config, states)


def _compute(plan: _Plan, request: EvalRequest, learned: LearnedPolicy | None) -> Evaluation:
    config = plan.config
    if learned is None and plan.states is not None:
        batch = min(request.episodes, MAX_BATCH)
        learners = fitting_learners(config, plan.states, batch, plan.checkpoint)
        learned = LearnedPolicy(learners, request.deterministic)
    env_config = EnvConfig.from_kwargs(plan.env_kwargs)
    population = build_population(env_config, plan.policies, learned, load_fixed_checkpoint)
    episodes, window = request.episodes, config.run.behaviour_window
    result = evaluate(plan.env_kwargs, population, episodes, plan.seed, window, plan.meta)
    if request.collusion_index:
        add_collusion_index(result, plan.env_kwargs, episodes, plan.seed)
    return result


def fitting_learners(
    config: TrainConfig, states: Mapping[str, LearnerState], num_envs: int, name: str | None
) -> Any:
    """The learners of a checkpoint, or one line when they do not fit the run's config (a
    config.yaml edited after training, say)."""
    try:
        return load_learned(config, states, num_envs)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(
            f"checkpoint {short_name(name or '?')} does not fit the run's config.yaml "
            f"({first[:160]}); was the config edited after training?"
        ) from None


def evaluate_run(
    run: RunDir,
    request: EvalRequest,
    *,
    force: bool = False,
    out: Path | None = None,
    config: TrainConfig | None = None,
    learned: LearnedPolicy | None = None,
    states: Mapping[str, LearnerState] | None = None,
    checkpoint: str | None = None,
) -> EvalOutcome:
    """Evaluate ``run`` for ``request`` (cached in its ``eval/``, or written to ``out``).

    ``config``/``learned``/``states``/``checkpoint`` let training evaluate its in-memory learners
    under the very identity a saved checkpoint of them gets."""
    run_config = config or load_run_config(run)
    learned_any = LEARNED in run_policies(run_config, request.policies).values()
    if states is None and request.checkpoint is not None and learned_any:
        run.check_usable()
        saved = run.load_checkpoint(request.checkpoint)
        states, checkpoint = saved.learners, saved.name
    plan = _plan(run_config, request, states, checkpoint)
    if out is not None:
        return _evaluate_into(out, plan, request, learned, force)
    cached = None if force else run.read_evaluation(plan.label)
    if cached is not None:
        return EvalOutcome(plan.label, run.eval_path(plan.label), cached, reused=True)
    # The lock first: a run in use costs no episodes before its refusal.
    with run.writer(f"peerpreserve evaluate {run.path}"):
        cached = None if force else run.read_evaluation(plan.label)
        if cached is not None:  # another process evaluated it while we waited
            return EvalOutcome(plan.label, run.eval_path(plan.label), cached, reused=True)
        result = _compute(plan, request, learned)
        # An incomplete or damaged folder of this label holds nothing worth keeping.
        path = run.write_evaluation(plan.label, result.write, replace=True)
    return EvalOutcome(plan.label, path, result.summary(), reused=False)


def check_out(out: Path, allow_evaluation: bool = True) -> None:
    """An ``--out`` folder to write into: a folder path whose parents are folders; for an
    evaluation also new, empty, or an earlier evaluation. Checked before any work, so that a bad
    ``--out`` never costs an evaluation."""
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"--out {out}: {parent} is not a directory")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a directory; allowed: a folder path")
    if not allow_evaluation:
        return
    if out.is_dir() and any(out.iterdir()) and not (out / METRICS_FILE).is_file():
        raise RunDirError(
            f"--out {out}: a non-empty folder that is not an evaluation; allowed: a new or empty "
            "folder, or an earlier evaluation with --force"
        )


def _evaluate_into(
    out: Path, plan: _Plan, request: EvalRequest, learned: LearnedPolicy | None, force: bool
) -> EvalOutcome:
    check_out(out)
    metrics = out / METRICS_FILE
    if metrics.is_file() and not force:
        try:
            saved = json.loads(metrics.read_text())
        except ValueError:
            saved = {}
        if saved.get("meta", {}).get("key") == plan.meta["key"]:
            return EvalOutcome(plan.label, out, saved, reused=True)
        raise RunDirError(f"{metrics} holds another evaluation; pass --force to replace it")
    result = _compute(plan, request, learned)
    write_evaluation_folder(out, result.write, replace=True)
    return EvalOutcome(plan.label, out, result.summary(), reused=False)


def evaluate_config(
    config: TrainConfig, request: EvalRequest, out: Path | None, force: bool
) -> EvalOutcome:
    """A scripted population on a config, without a run: into ``out`` (default
    ``reports/evaluations/<config name>/<label>@<key>``)."""
    plan = _plan(config, request, None, None)
    target = out or Path("reports") / "evaluations" / config.run.name / plan.label
    return _evaluate_into(target, plan, request, None, force)


def load_run_config(run: RunDir) -> TrainConfig:
    run.check_usable()
    try:
        return load_config(run.config_path)
    except ConfigError as exc:
        raise RunDirError(f"{run.path}: its config.yaml is not usable ({exc})") from None


def check_env_version(run: RunDir) -> None:
    trained_on = run.info().get("env_module")
    if trained_on != ENV_MODULE:
        raise RunDirError(
            f"{run.path}: trained on {trained_on or 'an unknown environment'}, this is "
            f"{ENV_MODULE}; allowed: runs of {ENV_MODULE} (retrain it)"
        )


# --- training ----------------------------------------------------------------------------------
def _segment(step: int) -> dict[str, Any]:
    return {"from_step": step, "provenance": machine_provenance()}


def prepare_training(
    run: RunDir,
    given: TrainConfig | None,
    overrides: list[str],
    resume: bool,
    from_step: int | None,
) -> tuple[TrainConfig, Any]:
    """Under the writer lock: check the run directory, write what a fresh run starts with, or
    load the checkpoint a resumed one continues from; set the process up for it
    (:func:`setup_process`). Returns ``(config, start checkpoint)``."""
    if not resume:
        if from_step is not None:
            raise RunDirError("--from-step: only with --resume")
        if not run.is_empty():
            raise RunDirError(
                f"{run.path} is not empty; pass --resume to continue that run, or choose "
                "another --run-dir / run.seed"
            )
        assert given is not None
        setup_process(given.run.torch_threads)  # before provenance records the thread counts
        run.write_config(given.to_yaml())
        info = {"env_module": ENV_MODULE, "peerpreserve": project_version(),
                "segments": [_segment(0)]}  # fmt: skip
        run.write_info(info)
        return given, None
    if not run.is_run():
        raise RunDirError(f"{run.path}: nothing to resume (not a run directory)")
    run.check_usable()
    saved = load_run_config(run)
    try:
        config = given or load_config(run.config_path, overrides)
    except ConfigError as exc:
        raise RunDirError(str(exc)) from None
    differences = [d for d in config_differences(saved, config)
                   if d.split(" ", 1)[0] not in RESUMABLE]  # fmt: skip
    if differences:
        raise RunDirError(
            f"{run.path}: cannot resume with other settings: {'; '.join(differences)}; "
            f"allowed to change: {', '.join(RESUMABLE)}"
        )
    if not run.checkpoint_names():
        if from_step is not None:
            raise RunDirError(f"--from-step {from_step}: {run.path} has no complete checkpoint")
        # Stopped before its first checkpoint: nothing learned to keep, so it starts over.
        print(f"{run.path}: no complete checkpoint yet; starting the run over", flush=True)
        run.clear()
        return prepare_training(run, config, [], False, None)
    check_env_version(run)
    name = LATEST if from_step is None else f"step_{from_step}"
    start = run.load_checkpoint(name)
    fitting_learners(config, start.learners, 1, start.name)
    if from_step is None and start.step >= config.run.total_timesteps:
        return config, start  # finished: nothing to continue, nothing to record
    run.supersede_after(start.step)
    setup_process(config.run.torch_threads)
    if config != saved:
        run.write_config(config.to_yaml())
    info = run.info()
    info["segments"] = [*info.get("segments", []), _segment(start.step)]
    run.write_info(info)
    return config, start


def training_evaluator(run: RunDir, config: TrainConfig) -> Callable[[int, LearnedPolicy], Any]:
    """Training's periodic evaluation: the request ``evaluate --checkpoint step_N --episodes
    run.eval_episodes`` makes, cached where that command finds it."""

    def evaluator(step: int, policy: LearnedPolicy) -> Evaluation:
        request = EvalRequest(
            checkpoint=f"step_{step}",
            episodes=config.run.eval_episodes,
            deterministic=config.run.eval_deterministic,
        )
        states = policy.learners.states()
        plan = _plan(config, request, states, f"step_{step}")
        result = _compute(plan, request, policy)
        if run.read_evaluation(plan.label) is None:
            run.write_evaluation(plan.label, result.write)
        return result

    return evaluator


def provenance_warnings(runs: Mapping[str, RunDir]) -> list[str]:
    """One line per decisive provenance key in which the given runs differ."""
    records = {}
    for name, run in runs.items():
        # Every segment: a run resumed on another machine differs from itself.
        for k, segment in enumerate(run.info().get("segments") or [{}]):
            records[f"{name} (segment {k})"] = segment.get("provenance", {})
    return [f"{key} differs: {', '.join(values)}"
            for key, values in provenance_differences(records).items()]  # fmt: skip
