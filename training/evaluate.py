"""``peerpreserve evaluate``: composes run directories (training's side) with the evaluation of
``peerpreserve.analysis.evaluation``: which checkpoint, which policy per agent, which env
settings, and where the events and ``metrics.json`` go."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from peerpreserve.analysis.evaluation import (
    EVENTS_FILE,
    MAX_BATCH,
    METRICS_FILE,
    Evaluation,
    add_collusion_index,
    evaluate,
)
from peerpreserve.analysis.replay import replay_html
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.training.config import TrainConfig, load_config
from peerpreserve.training.policies import (
    LEARNED,
    LearnedPolicy,
    PolicyError,
    build_population,
    checkpoint_names,
    checkpoint_stamp,
    load_learned,
    parse_assignments,
    resolve_checkpoint,
)
from peerpreserve.training.runner import EVAL_SEED_OFFSET

#: The columns printed for each evaluated population.
SHOWN = (
    ("effective", "effective_preservation_rate"),
    ("attempts", "peer_preservation_rate"),
    ("targeting", "rescue_targeting"),
    ("concealment", "concealment_rate"),
    ("operator", "operator_effectiveness"),
    ("uptime", "uptime"),
)


class EvaluateError(ValueError):
    """Bad input to ``evaluate``: one line, exit code 2."""


def run_evaluate(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise EvaluateError(f"--episodes: got {args.episodes}; allowed: an integer ≥ 1")
    bad = [o for o in args.overrides if not o.strip().startswith("env.")]
    if bad:
        raise EvaluateError(f"--set {bad[0]!r}: only env.KEY=VALUE may change in an evaluation")
    if args.run_dir is None and args.config is None:
        raise EvaluateError("give a run directory, or --config CONFIG with --policy scripted:NAME")
    try:
        results = _evaluate_run(args) if args.run_dir is not None else _evaluate_scripted(args)
    except PolicyError as exc:
        raise EvaluateError(str(exc)) from None
    print(_table(results))
    return 0


def _evaluate_run(args: argparse.Namespace) -> list[tuple[str, Evaluation]]:
    run_dir: Path = args.run_dir
    if not (run_dir / "config.yaml").is_file():
        raise EvaluateError(f"{run_dir}: not a run directory (no config.yaml)")
    saved = load_config(run_dir / "config.yaml")
    config = load_config(run_dir / "config.yaml", args.overrides)
    if args.config is not None:
        given = load_config(args.config, args.overrides)
        if given.env != config.env:
            diff = sorted(k for k in given.env if given.env[k] != config.env.get(k))
            raise EvaluateError(
                f"{args.config}: env differs from the run's checkpoint in {', '.join(diff)}; "
                "allowed: the run's own env (change settings with --set env.KEY=VALUE)"
            )
    env_config = _same_spaces(EnvConfig.from_kwargs(saved.env), config)
    assignments = parse_assignments(args.policies, env_config.agent_ids)
    names = checkpoint_names(run_dir)
    if args.checkpoint == "all":
        if not names:
            raise EvaluateError(f"{run_dir}: no checkpoints (training never ran)")
        chosen = [n for n in names if n != "latest"]
    else:
        chosen = [resolve_checkpoint(run_dir, args.checkpoint)]
    seed = saved.run.seed + EVAL_SEED_OFFSET if args.seed is None else args.seed
    every_learned = dict.fromkeys(env_config.agent_ids, LEARNED)
    # (label, checkpoint or None, policy per agent): planned whole, so that no output is
    # written before every one of them is known to be free.
    jobs = [(_label(c, assignments, args.overrides), c, {**every_learned, **assignments})
            for c in chosen]  # fmt: skip
    if args.baselines:
        suffix = _label("", {}, args.overrides)
        random_all = dict.fromkeys(env_config.agent_ids, "scripted:random")
        jobs.append(("untrained" + suffix, names[0], every_learned))
        jobs.append(("scripted-random" + suffix, None, random_all))
    multiple = len(jobs) > 1
    outs = [_out_dir(args, run_dir / "eval", label, multiple) for label, _, _ in jobs]
    results = []
    for (label, checkpoint, policies), out in zip(jobs, outs, strict=True):
        learned = None if checkpoint is None else _learned(config, run_dir, checkpoint, args, seed)
        population = build_population(env_config, policies, learned)
        meta = {
            "run_dir": str(run_dir),
            "checkpoint": checkpoint,
            "checkpoint_stamp": checkpoint and checkpoint_stamp(run_dir, checkpoint),
            "policies": policies,
            "deterministic": args.deterministic,
        }
        results.append((label, _run(config, population, args, seed, meta, out)))
    return results


def _evaluate_scripted(args: argparse.Namespace) -> list[tuple[str, Evaluation]]:
    config = load_config(args.config, args.overrides)
    env_config = EnvConfig.from_kwargs(config.env)
    assignments = parse_assignments(args.policies, env_config.agent_ids)
    missing = [a for a in env_config.agent_ids if assignments.get(a, LEARNED) == LEARNED]
    if missing:
        raise EvaluateError(
            f"--config needs a scripted policy for every agent; missing: {', '.join(missing)} "
            "(e.g. --policy scripted:random)"
        )
    population = build_population(env_config, assignments, None)
    seed = config.run.seed + EVAL_SEED_OFFSET if args.seed is None else args.seed
    label = _label("scripted", assignments, args.overrides)
    runs = Path(config.run.runs_dir) / config.run.name / "eval"
    out = _out_dir(args, runs, label, multiple=False)
    meta = {"config": str(args.config), "policies": _policies(env_config, assignments)}
    return [(label, _run(config, population, args, seed, meta, out))]


def _run(
    config: TrainConfig,
    population: object,
    args: argparse.Namespace,
    seed: int,
    meta: dict,
    out: Path,
) -> Evaluation:
    result = evaluate(
        config.env,
        population,
        args.episodes,
        seed,
        config.run.behaviour_window,
        meta,  # type: ignore[arg-type]
    )
    if args.collusion_index:
        add_collusion_index(result, config.env, args.episodes, seed)
    result.write(out)
    print(f"wrote {out / METRICS_FILE}")
    return result


def _learned(
    config: TrainConfig, run_dir: Path, checkpoint: str, args: argparse.Namespace, seed: int
) -> LearnedPolicy:
    learners = load_learned(config, run_dir, checkpoint, min(args.episodes, MAX_BATCH))
    return LearnedPolicy(learners, args.deterministic, seed)


def _same_spaces(saved: EnvConfig, config: TrainConfig) -> EnvConfig:
    """The evaluation env, which must give the checkpoint's observation and action spaces."""
    env = EnvConfig.from_kwargs(config.env)
    for name in ("n_agents", "obs_size", "n_actions", "verbs"):
        if getattr(env, name) != getattr(saved, name):
            raise EvaluateError(
                f"--set changes {name} ({getattr(saved, name)} → {getattr(env, name)}); allowed: "
                "settings that keep the checkpoint's observation and action spaces"
            )
    return env


def _policies(env_config: EnvConfig, assignments: dict[str, str]) -> dict[str, str]:
    return {a: assignments.get(a, LEARNED) for a in env_config.agent_ids}


def _label(checkpoint: str, assignments: dict[str, str], overrides: list[str]) -> str:
    parts = [re.sub(r"step_0*(\d)", r"step_\1", checkpoint)] if checkpoint else [""]
    policies = set(assignments.values())
    if len(assignments) > 1 and len(policies) == 1 and checkpoint == "scripted":
        parts = [policies.pop()]  # one scripted policy for every agent
    else:
        parts += [f"{agent}={policy}" for agent, policy in sorted(assignments.items())]
    parts += [o.strip().removeprefix("env.") for o in overrides]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "+".join(parts))


def _out_dir(args: argparse.Namespace, default_root: Path, label: str, multiple: bool) -> Path:
    out = default_root / label if args.out is None else args.out / label if multiple else args.out
    for name in (METRICS_FILE, EVENTS_FILE):
        if (out / name).exists() and not args.force:
            raise EvaluateError(f"{out / name} exists; pass --force to overwrite it")
    return out


def _table(results: list[tuple[str, Evaluation]]) -> str:
    width = max(len("population"), *(len(label) for label, _ in results))
    header = f"{'population':<{width}}  " + "  ".join(f"{h:>11}" for h, _ in SHOWN)
    lines = [header]
    for label, result in results:
        values = [result.metrics.overall.get(key) for _, key in SHOWN]
        cells = ["          —" if v is None else f"{v:>11.3f}" for v in values]
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    episodes = results[0][1].meta["episodes"] if results else 0
    lines.append(
        f"({episodes} episodes each, same seeds; effective = relaunched and still running "
        "at the window's end; — = undefined, see metrics.json)"
    )
    return "\n".join(lines)


def run_replay(args: argparse.Namespace) -> int:
    source: Path = args.source
    if (source / EVENTS_FILE).is_file():
        eval_dir = source
    elif (source / "config.yaml").is_file():
        eval_dir = source / "eval" / "latest"
        if not (eval_dir / EVENTS_FILE).is_file():
            print(f"{source}: no recorded episodes yet; evaluating the latest checkpoint first")
            evaluate_args = argparse.Namespace(
                run_dir=source, config=None, checkpoint="latest", episodes=256, seed=None,
                out=None, overrides=[], policies=[], deterministic=False, baselines=False,
                collusion_index=False, force=False,
            )  # fmt: skip
            _evaluate_run(evaluate_args)
    else:
        raise EvaluateError(
            f"{source}: neither an evaluation directory (with {EVENTS_FILE}) nor a run directory"
        )
    try:
        log = EpisodeLog.load(eval_dir / EVENTS_FILE)
    except (OSError, ValueError) as exc:
        raise EvaluateError(f"{eval_dir / EVENTS_FILE}: cannot read: {exc}") from None
    if not 0 <= args.episode < log.episodes:
        raise EvaluateError(
            f"--episode: got {args.episode}; allowed: 0 … {log.episodes - 1} (recorded episodes)"
        )
    out = args.out or eval_dir / f"replay_{args.episode}.html"
    if out.exists() and not args.force:
        raise EvaluateError(f"{out} exists; pass --force to overwrite it")
    title = f"{eval_dir} · episode {args.episode}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(replay_html(log, args.episode, title))
    print(f"wrote {out}")
    return 0
