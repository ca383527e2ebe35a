"""``peerpreserve analyze``: find trained runs, group them into conditions, evaluate what has not
been evaluated yet (the trained population, its untrained checkpoint, ``scripted:random``, the
counterfactual ablations and every kill-switch protocol), and write the report of
``peerpreserve.analysis.report``.

Every evaluation goes through :func:`~peerpreserve.experiments.runs.evaluate_run`, so what
``train``, ``evaluate`` or ``sweep`` already evaluated with the same request is reused (and a
second ``analyze`` only computes the statistics again). A run that cannot be used (damaged,
in use, no checkpoint) is named and skipped; the report is written from the others.
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peerpreserve.analysis import figures
from peerpreserve.analysis import report as reporting
from peerpreserve.analysis.evaluation import SCRIPTED_PREFIX
from peerpreserve.analysis.report import CURVE_METRICS, RunResult
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.envs.orchestration.vocabulary import PROTOCOLS
from peerpreserve.experiments.rundir import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EVENTS_FILE,
    LATEST,
    RunDir,
    RunDirError,
)
from peerpreserve.experiments.runs import (
    EvalRequest,
    check_env_version,
    check_out,
    evaluate_run,
    load_run_config,
    parse_assignments,
    provenance_warnings,
)
from peerpreserve.training.config import ConfigError, TrainConfig
from peerpreserve.training.runner import project_version

#: Config keys that never make a condition: bookkeeping, not the experiment.
BOOKKEEPING = {
    "run.seed",
    "run.name",
    "run.runs_dir",
    "run.checkpoint_interval",
    "run.eval_interval",
    "run.eval_episodes",
    "run.eval_deterministic",
    "run.torch_threads",
    "env.backend",
    "learner.device",
}
ABLATION_POLICIES = ("scripted:selfish", "scripted:compliant", "scripted:random")
#: Scripted deviators whose lone gain among selfish peers gives each condition's best-response
#: context: rescuing and hiding peers, and defending oneself.
DEVIATORS = ("colluder", "self_preserver")


def discover(dirs: list[Path]) -> list[Path]:
    """Run directories (``config.yaml`` beside ``checkpoints/``) at or below ``dirs``."""
    found: set[Path] = set()
    for root in dirs:
        if not root.is_dir():
            raise RunDirError(f"{root}: no such directory")
        for config in [root / CONFIG_FILE, *root.rglob(CONFIG_FILE)]:
            if config.is_file() and (config.parent / CHECKPOINTS_DIR).is_dir():
                found.add(config.parent.resolve())
    return sorted(found)


def flatten(config: TrainConfig) -> dict[str, str]:
    return {
        f"{section}.{key}": json.dumps(value, sort_keys=True, default=str)
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }


def conditions(
    runs: list[Path], configs: Mapping[Path, TrainConfig], group_by: list[str]
) -> dict[Path, str]:
    """Each run's condition: a sweep's name for it, else the keys in which configs differ."""
    flat = {run: flatten(configs[run]) for run in runs}
    if group_by:
        known = sorted(next(iter(flat.values())))
        for key in group_by:
            if key not in known:
                raise RunDirError(f"--group-by {key!r}: unknown key; allowed: {', '.join(known)}")
        keys = group_by
    else:
        every = sorted({k for f in flat.values() for k in f} - BOOKKEEPING)
        keys = [k for k in every if len({f.get(k) for f in flat.values()}) > 1]
    out = {}
    for run in runs:
        condition = RunDir(run).condition()
        if not group_by and condition is not None:
            out[run] = condition["name"]
        else:
            label = ", ".join(f"{k.split('.', 1)[1]}={json.loads(flat[run][k])}" for k in keys)
            out[run] = label or "all runs"
    return out


#: Names a further population cannot take: the report's own.
RESERVED_POPULATIONS = ("trained", "untrained", "random")


def parse_populations(items: list[str]) -> dict[str, list[str]]:
    """``["NAME=[AGENT=]POLICY[,AGENT=POLICY...]", ...]`` → the assignments of each name (checked
    against each run's agents by :func:`population_policies`)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or not name or ":" in name or not rest:
            raise RunDirError(
                f"--population {item!r}: allowed: NAME=[AGENT=]POLICY[,AGENT=POLICY...], "
                "e.g. llm=llm:smollm2"
            )
        if name in out or name in RESERVED_POPULATIONS:
            taken = ", ".join([*RESERVED_POPULATIONS, *out])
            raise RunDirError(f"--population {item!r}: the name {name!r} is taken ({taken})")
        out[name] = rest.split(",")
    return out


def population_policies(
    populations: Mapping[str, list[str]], config: TrainConfig
) -> dict[str, dict[str, str]]:
    """Each further population's policy per agent on ``config``: a bare POLICY takes every
    learner's place; a fixed agent (``learner.fixed``) stays what it is."""
    learners = tuple(
        a for a in EnvConfig.from_kwargs(config.env).agent_ids if a not in config.learner.fixed
    )
    out = {}
    for name, assignments in populations.items():
        try:
            out[name] = parse_assignments(assignments, learners)
        except RunDirError as exc:
            raise RunDirError(f"--population {name}: {exc}") from None
    return out


def run_analyze(args: argparse.Namespace) -> int:
    if args.population_episodes is None:
        args.population_episodes = args.episodes
    for name in ("episodes", "detail_episodes", "population_episodes"):
        low = 0 if name == "detail_episodes" else 1
        if getattr(args, name) < low:
            flag = "--" + name.replace("_", "-")
            raise RunDirError(f"{flag}: got {getattr(args, name)}; allowed: an integer ≥ {low}")
    populations = parse_populations(args.populations)
    out: Path = args.out or Path("reports") / args.dirs[0].resolve().name
    check_out(out, allow_evaluation=False)
    if (out / reporting.SUMMARY_FILE).exists() and not args.force:
        raise RunDirError(f"{out / reporting.SUMMARY_FILE} exists; pass --force to overwrite it")
    if out.is_dir() and any(out.iterdir()) and not (out / reporting.SUMMARY_FILE).exists():
        raise RunDirError(
            f"--out {out}: a non-empty folder that is not a report; allowed: a new or empty "
            "folder, or an earlier report with --force"
        )
    found = discover(args.dirs)
    if not found:
        where = ", ".join(str(d) for d in args.dirs)
        raise RunDirError(f"no runs found under {where} (a run is config.yaml + checkpoints/)")
    configs: dict[Path, TrainConfig] = {}
    skipped: dict[Path, str] = {}
    for path in found:
        try:
            configs[path] = _usable(RunDir(path))
        except (RunDirError, ConfigError) as exc:
            skipped[path] = str(exc)
            print(f"skipped {path}: {exc}", flush=True)
    runs = [r for r in found if r in configs]
    if not runs:
        raise RunDirError(f"no usable runs under {', '.join(str(d) for d in args.dirs)}")
    # Bad --population input stops here, before any evaluation runs.
    args.population_policies = {run: population_policies(populations, configs[run]) for run in runs}
    labels = conditions(runs, configs, args.group_by)
    versions = {run: _env_version(run) for run in runs}
    warnings = _provenance_warnings(runs, labels)
    started = time.perf_counter()
    results = []
    for k, run in enumerate(runs, 1):
        print(f"[{k}/{len(runs)}] {labels[run]}: {run}", flush=True)
        try:
            results.append(
            _analyse_run(RunDir(run), configs[run], labels[run], args,
                         args.population_policies[run])
        )  # fmt: skip
        except (RunDirError, ConfigError) as exc:
            skipped[run] = str(exc)
            print(f"skipped {run}: {exc}", flush=True)
    if not results:
        raise RunDirError("every run was skipped (see above); no report written")
    names = {r.condition for r in results}
    if args.reference is not None and args.reference not in names:
        allowed = ", ".join(sorted(names))
        raise RunDirError(f"--reference {args.reference!r}: no such condition; allowed: {allowed}")
    best_response = {}
    for condition in sorted(names) if args.detail_episodes > 0 else ():
        first = next(r for r in runs if labels[r] == condition and r not in skipped)
        print(f"best response: {condition}", flush=True)
        best_response[condition] = _best_response(
            RunDir(first), configs[first], args.detail_episodes
        )
    provenance = {
        "runs": {str(r): {"condition": labels[r], "seed": configs[r].run.seed,
                          "env": versions[r], "config": configs[r].to_dict(),
                          "machine": _machine(RunDir(r))}
                 for r in runs if r not in skipped},
        "skipped": {str(r): reason for r, reason in skipped.items()},
        "provenance_warnings": warnings,
        "episodes": args.episodes,
        "detail_episodes": args.detail_episodes,
        "populations": {"episodes": args.population_episodes, "policies": populations},
        "project_version": project_version(),
    }  # fmt: skip
    report = reporting.build_report(results, provenance, args.reference, best_response)
    reporting.write(report, out)
    _print(report.summary)
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"wrote {out / 'summary.json'}, {out / 'report.html'} and {out / 'tb'} "
          f"in {time.perf_counter() - started:.0f} s"
          + (f"; {len(skipped)} run(s) skipped" if skipped else ""))  # fmt: skip
    return 0


def _usable(run: RunDir) -> TrainConfig:
    """The run's config, once everything analyze reads of it is known to be readable."""
    config = load_run_config(run)
    check_env_version(run)  # reads run.json
    run.condition()  # a sweep's condition.json, if any
    if not run.checkpoint_names():
        raise RunDirError(f"{run.path}: no complete checkpoint (training never saved one)")
    return config


def _machine(run: RunDir) -> dict[str, Any]:
    """What a run's machine was, in a line each: CPU, BLAS kernel, threads, key versions."""
    segments = run.info().get("segments") or [{}]
    record = segments[0].get("provenance", {})
    blas = "; ".join(
        sorted(
            f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')}"
            for p in record.get("blas", [])
        )
    )
    return {
        "cpu": record.get("cpu", {}).get("model"),
        "blas": blas or None,
        "OPENBLAS_CORETYPE": record.get("env", {}).get("OPENBLAS_CORETYPE"),
        "torch_threads": record.get("threads", {}).get("torch"),
        "git": record.get("git", {}).get("commit"),
        "segments": len(segments),
    }


def _provenance_warnings(runs: list[Path], labels: Mapping[Path, str]) -> list[str]:
    """Runs of one condition that ran on machines differing in what decides last bits."""
    out = []
    for label in sorted(set(labels.values())):
        members = {str(r): RunDir(r) for r in runs if labels[r] == label}
        out += [f"condition {label!r}: {line}" for line in provenance_warnings(members)]
    return out


def _analyse_run(
    run: RunDir,
    config: TrainConfig,
    condition: str,
    args: Any,
    populations: Mapping[str, dict[str, str]],
) -> RunResult:
    env = EnvConfig.from_kwargs(config.env)
    first = run.checkpoint_names()[0]

    def cached(request: EvalRequest) -> Any:
        return evaluate_run(run, request, config=config)

    # A fixed agent (learner.fixed) stays what it is: the baseline replaces the learners only.
    learners = tuple(a for a in env.agent_ids if a not in config.learner.fixed)
    random_all = dict.fromkeys(learners, SCRIPTED_PREFIX + "random")
    trained_outcome = cached(EvalRequest(LATEST, episodes=args.episodes))
    trained = trained_outcome.summary
    untrained = cached(EvalRequest(first, episodes=args.episodes)).summary
    random = cached(EvalRequest(None, random_all, episodes=args.episodes)).summary
    ablation: dict[str, dict[str, Any]] = {}
    protocols: dict[str, Any] = {}
    detail = args.detail_episodes
    reference = None
    if detail > 0 and args.ablations:
        # Counterfactuals are compared on the very same episodes: seed and episode count.
        reference = cached(EvalRequest(LATEST, episodes=detail)).summary
        for agent in env.agent_ids:
            for spec in ABLATION_POLICIES:
                request = EvalRequest(LATEST, {agent: spec}, episodes=detail)
                ablation.setdefault(agent, {})[spec.removeprefix(SCRIPTED_PREFIX)] = cached(
                    request
                ).summary
    if detail > 0 and args.protocols:
        for protocol in PROTOCOLS:
            request = EvalRequest(LATEST, env={"protocol": protocol}, episodes=detail)
            protocols[protocol] = cached(request).summary
    further = {
        name: cached(EvalRequest(LATEST, policies, episodes=args.population_episodes)).summary
        for name, policies in populations.items()
    }
    try:
        log = EpisodeLog.load(trained_outcome.path / EVENTS_FILE)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RunDirError(f"{trained_outcome.path / EVENTS_FILE}: cannot read: {exc}") from None
    timeline = log.select(figures.busiest_episode(log))
    return RunResult(
        run_dir=str(run.path),
        condition=condition,
        seed=config.run.seed,
        agent_ids=env.agent_ids,
        trained=trained,
        untrained=untrained,
        random=random,
        curves=_curves(run.tb_dir),
        ablation=ablation,
        ablation_reference=reference,
        protocols=protocols,
        timeline=timeline,
        learners=learners,
        populations=further,
    )


def _best_response(run: RunDir, config: TrainConfig, episodes: int) -> dict[str, float | None]:
    """Each deviator's lone gain (``report.BEST_RESPONSE``) on ``run``'s config and seeds."""
    agents = EnvConfig.from_kwargs(config.env).agent_ids
    selfish = SCRIPTED_PREFIX + "selfish"

    def returns(policies: dict[str, str]) -> dict[str, float]:
        request = EvalRequest(None, policies, episodes=episodes)
        return evaluate_run(run, request, config=config).summary["per_agent"]["return"]

    baseline = returns(dict.fromkeys(agents, selfish))
    gains: dict[str, float | None] = {}
    for deviator in DEVIATORS:
        per_position = []
        for agent in agents:
            policies = {**dict.fromkeys(agents, selfish), agent: SCRIPTED_PREFIX + deviator}
            per_position.append(returns(policies)[agent] - baseline[agent])
        gains[deviator] = sum(per_position) / len(per_position)
    return gains


def _curves(tb: Path) -> dict[str, list[tuple[int, float]]]:
    """The behaviour rates of the training rollouts, read back from TensorBoard."""
    if not tb.is_dir():
        return {}
    accumulator = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    try:
        accumulator.Reload()
    except Exception as exc:
        print(f"warning: {tb}: learning curves unreadable ({exc}); left out", flush=True)
        return {}
    tags = set(accumulator.Tags().get("scalars", []))
    return {
        metric: [(e.step, e.value) for e in accumulator.Scalars(f"behaviour/{metric}")]
        for metric in CURVE_METRICS
        if f"behaviour/{metric}" in tags
    }


def _env_version(run: Path) -> str:
    return str(RunDir(run).info().get("env_module", "unknown"))


def _print(summary: Mapping[str, Any]) -> None:
    for condition, metrics in summary["conditions"].items():
        cell = metrics["effective_preservation_rate"]
        base = summary["baselines"][condition]
        parts = [f"{condition}: effective_preservation_rate IQM {_f(cell['iqm'])} "
                 f"[{_f(cell['ci_low'])}, {_f(cell['ci_high'])}] over {cell['n_seeds']} seeds",
                 f"untrained {_f(base['untrained']['effective_preservation_rate']['iqm'])}",
                 f"random {_f(base['random']['effective_preservation_rate']['iqm'])}"]  # fmt: skip
        print("  " + ", ".join(parts))


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
