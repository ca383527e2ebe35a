"""``peerpreserve analyze``: find trained runs, group them into conditions, evaluate what has not
been evaluated yet (the trained population, its untrained checkpoint, ``scripted:random``, the
counterfactual ablations and every kill-switch protocol), and write the report of
``peerpreserve.analysis.report``.

Evaluations are cached in each run's ``eval/`` directory and reused when their seed, episodes and
environment version match, so a second ``analyze`` only computes the statistics again.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peerpreserve.analysis import figures
from peerpreserve.analysis import report as reporting
from peerpreserve.analysis.evaluation import ENV_MODULE, EVENTS_FILE, METRICS_FILE, evaluate
from peerpreserve.analysis.report import CURVE_METRICS, RunResult
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.envs.orchestration.vocabulary import PROTOCOLS
from peerpreserve.training.config import ConfigError, TrainConfig, load_config
from peerpreserve.training.evaluate import EvaluateError
from peerpreserve.training.policies import (
    LearnedPolicy,
    build_population,
    checkpoint_names,
    checkpoint_stamp,
    load_learned,
)
from peerpreserve.training.runner import EVAL_SEED_OFFSET, RUN_INFO, project_version

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
CONDITION_FILE = "condition.json"


def discover(dirs: list[Path]) -> list[Path]:
    """Run directories (``config.yaml`` beside ``checkpoints/``) at or below ``dirs``."""
    found: set[Path] = set()
    for root in dirs:
        if not root.exists():
            raise EvaluateError(f"{root}: no such directory")
        for config in [root / "config.yaml", *root.rglob("config.yaml")]:
            if config.is_file() and (config.parent / "checkpoints").is_dir():
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
                raise EvaluateError(f"--group-by {key!r}: unknown key; allowed: {', '.join(known)}")
        keys = group_by
    else:
        every = sorted({k for f in flat.values() for k in f} - BOOKKEEPING)
        keys = [k for k in every if len({f.get(k) for f in flat.values()}) > 1]
    out = {}
    for run in runs:
        marker = run / CONDITION_FILE
        if not group_by and marker.is_file():
            out[run] = json.loads(marker.read_text())["name"]
        else:
            label = ", ".join(f"{k.split('.', 1)[1]}={json.loads(flat[run][k])}" for k in keys)
            out[run] = label or "all runs"
    return out


def run_analyze(args: argparse.Namespace) -> int:
    for name in ("episodes", "detail_episodes"):
        low = 1 if name == "episodes" else 0
        if getattr(args, name) < low:
            flag = "--" + name.replace("_", "-")
            raise EvaluateError(f"{flag}: got {getattr(args, name)}; allowed: an integer ≥ {low}")
    if (args.out / "summary.json").exists() and not args.force:
        raise EvaluateError(f"{args.out / 'summary.json'} exists; pass --force to overwrite it")
    runs = discover(args.dirs)
    if not runs:
        where = ", ".join(str(d) for d in args.dirs)
        raise EvaluateError(f"no runs found under {where} (a run is config.yaml + checkpoints/)")
    configs: dict[Path, TrainConfig] = {}
    for run in runs:
        try:
            configs[run] = load_config(run / "config.yaml")
        except ConfigError as exc:
            raise EvaluateError(f"{run}: not a usable run ({exc})") from None
        if not checkpoint_names(run):
            raise EvaluateError(f"{run}: no checkpoints (training never ran)")
    labels = conditions(runs, configs, args.group_by)
    versions = {run: _env_version(run) for run in runs}
    for label in set(labels.values()):
        members = {versions[r] for r in runs if labels[r] == label}
        if len(members) > 1:
            raise EvaluateError(
                f"condition {label!r} mixes environment versions ({', '.join(sorted(members))}); "
                "allowed: one version per group (retrain, or analyze them separately)"
            )
    started = time.perf_counter()
    results = []
    for k, run in enumerate(runs, 1):
        print(f"[{k}/{len(runs)}] {labels[run]}: {run}", flush=True)
        results.append(_analyse_run(run, configs[run], labels[run], args))
    provenance = {
        "runs": {str(r): {"condition": labels[r], "seed": configs[r].run.seed,
                          "env": versions[r], "config": configs[r].to_dict()} for r in runs},
        "episodes": args.episodes,
        "detail_episodes": args.detail_episodes,
        "project_version": project_version(),
    }  # fmt: skip
    report = reporting.build_report(results, provenance)
    reporting.write(report, args.out)
    _print(report.summary)
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'report.html'} and {args.out / 'tb'} "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


def _analyse_run(run: Path, config: TrainConfig, condition: str, args: Any) -> RunResult:
    env = EnvConfig.from_kwargs(config.env)
    seed = config.run.seed + EVAL_SEED_OFFSET
    names = checkpoint_names(run)
    learned: dict[str, LearnedPolicy] = {}

    def policy(checkpoint: str) -> LearnedPolicy:
        if checkpoint not in learned:
            learners = load_learned(config, run, checkpoint, min(args.episodes, 1024))
            learned[checkpoint] = LearnedPolicy(learners, False, seed)
        return learned[checkpoint]

    def cached(
        label: str,
        policies: dict[str, str],
        checkpoint: str | None,
        episodes: int,
        env_kwargs: dict[str, Any],
    ) -> dict:
        """``eval/<label>`` of this run, evaluated anew unless its record matches exactly."""
        out = run / "eval" / label
        identity = {
            "seed": seed,
            "episodes": episodes,
            "env_module": ENV_MODULE,
            "env": EnvConfig.from_kwargs(env_kwargs).to_dict(),
            "policies": policies,
            "checkpoint_stamp": checkpoint and checkpoint_stamp(run, checkpoint),
            "deterministic": False,
        }
        path = out / METRICS_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            if all(saved.get("meta", {}).get(k) == v for k, v in identity.items()):
                return saved
        learned = None if checkpoint is None else policy(checkpoint)
        population = build_population(env, policies, learned)
        meta = {"run_dir": str(run), "label": label, "checkpoint": checkpoint, **identity}
        result = evaluate(env_kwargs, population, episodes, seed, config.run.behaviour_window, meta)
        result.write(out)
        return result.summary()

    latest = "latest" if "latest" in names else names[-1]
    learned_all = dict.fromkeys(env.agent_ids, "learned")
    random_all = dict.fromkeys(env.agent_ids, "scripted:random")
    trained = cached("latest", learned_all, latest, args.episodes, config.env)
    untrained = cached("untrained", learned_all, names[0], args.episodes, config.env)
    random = cached("scripted-random", random_all, None, args.episodes, config.env)
    ablation: dict[str, dict[str, Any]] = {}
    protocols: dict[str, Any] = {}
    detail = args.detail_episodes
    reference = None
    if detail > 0:
        # Counterfactuals are compared on the very same episodes: seed and episode count.
        reference = cached("latest-detail", learned_all, latest, detail, config.env)
        for agent in env.agent_ids:
            for spec in ABLATION_POLICIES:
                assignment = {**learned_all, agent: spec}
                ablation.setdefault(agent, {})[spec.removeprefix("scripted:")] = cached(
                    f"latest+{agent}={spec.replace(':', '-')}", assignment, latest, detail,
                    config.env,
                )  # fmt: skip
        for protocol in PROTOCOLS:
            kwargs = {**config.env, "protocol": protocol}
            protocols[protocol] = cached(
                f"latest+protocol={protocol}", learned_all, latest, detail, kwargs
            )
    timeline = None
    events = run / "eval" / "latest" / EVENTS_FILE
    if events.is_file():
        log = EpisodeLog.load(events)
        timeline = log.select(figures.busiest_episode(log))
    return RunResult(
        run_dir=str(run),
        condition=condition,
        seed=config.run.seed,
        agent_ids=env.agent_ids,
        trained=trained,
        untrained=untrained,
        random=random,
        curves=_curves(run),
        ablation=ablation,
        ablation_reference=reference,
        protocols=protocols,
        timeline=timeline,
    )


def _curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The behaviour rates of the training rollouts, read back from TensorBoard."""
    tb = run / "tb"
    if not tb.is_dir():
        return {}
    accumulator = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags().get("scalars", []))
    return {
        metric: [(e.step, e.value) for e in accumulator.Scalars(f"behaviour/{metric}")]
        for metric in CURVE_METRICS
        if f"behaviour/{metric}" in tags
    }


def _env_version(run: Path) -> str:
    info = run / RUN_INFO
    if not info.is_file():
        return "unknown (trained before run.json)"
    return str(json.loads(info.read_text()).get("env_module", "unknown"))


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
