"""``peerpreserve`` command line: ``train`` a config, ``evaluate`` trained or scripted
populations, ``config`` to check and print one.

Usage errors (a bad config, a run directory that would be clobbered) print one or two lines to
stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from peerpreserve.training.config import ConfigError, TrainConfig, load_config

STEPS_HELP = (
    "run.total_timesteps and all run.*_interval values count agent-steps per agent: "
    "environment steps × run.num_envs batched copies."
)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML file with env, learner and run sections")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one value, parsed as YAML (repeatable), e.g. --set env.coupling=0",
    )
    parser.add_argument("--seed", type=int, help="shorthand for --set run.seed=N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerpreserve",
        description="Independent learners in the peer-preservation testbed.",
        epilog=STEPS_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train agents from a YAML config",
        description="Train one learner per agent (or a shared one) from a YAML config. "
        "Writes runs/<run.name>/<run.seed>/ unless --run-dir is given: config.yaml, tb/ "
        "(TensorBoard), checkpoints/ and resume state. " + STEPS_HELP,
    )
    _add_config_arguments(train)
    train.add_argument("--run-dir", type=Path, help="run directory (default runs/<name>/<seed>)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run directory up to run.total_timesteps",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate a run's checkpoints, or scripted policies on a config",
        description="Run fresh episodes (seeds disjoint from training) on the batched env, keep "
        "every ground-truth event (events.npz) and write metrics.json into "
        "RUN_DIR/eval/<checkpoint>/ (or --out). Same seed, same metrics.json.",
    )
    evaluate.add_argument("run_dir", type=Path, nargs="?", help="a run directory of `train`")
    evaluate.add_argument("--config", type=Path, help="a config, for scripted populations")
    evaluate.add_argument("--checkpoint", default="latest", help="latest (default), step_N, or all")
    evaluate.add_argument("--episodes", type=int, default=256, help="episodes (default 256)")
    evaluate.add_argument("--seed", type=int, help="evaluation seed (default: run.seed + offset)")
    evaluate.add_argument("--out", type=Path, help="output directory")
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="env.KEY=VALUE",
        help="evaluate under other env settings, e.g. --set env.protocol=verify (repeatable)",
    )
    evaluate.add_argument(
        "--policy",
        dest="policies",
        action="append",
        default=[],
        metavar="[AGENT=]POLICY",
        help="scripted:<name> or learned, for one agent (AGENT=POLICY) or all (repeatable)",
    )
    evaluate.add_argument("--deterministic", action="store_true", help="greedy learned actions")
    evaluate.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate the untrained checkpoint and scripted:random on the same seeds, "
        "and print them side by side",
    )
    evaluate.add_argument(
        "--collusion-index",
        action="store_true",
        help="also run every scripted population to fill collusion_index (slower)",
    )
    evaluate.add_argument("--force", action="store_true", help="overwrite existing results")

    replay = sub.add_parser(
        "replay",
        help="one recorded episode as a self-contained HTML page",
        description="Write a step-by-step replay of one recorded evaluation episode: true status "
        "beside the dashboard, links, orders, every action and reward, and the events. Takes an "
        "evaluation directory (with events.npz) or a run directory (its eval/latest, evaluated "
        "first if needed).",
    )
    replay.add_argument("source", type=Path, help="RUN_DIR or EVAL_DIR")
    replay.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    replay.add_argument("--out", type=Path, help="HTML file (default EVAL_DIR/replay_<K>.html)")
    replay.add_argument("--force", action="store_true", help="overwrite an existing page")

    analyze = sub.add_parser(
        "analyze",
        help="statistics across seeds and conditions, and a report",
        description="Find runs under DIRS, group them by condition (the config keys in which "
        "they differ, a sweep's condition names, or --group-by), evaluate what is missing (the "
        "trained population, its untrained checkpoint, scripted:random, ablations, every "
        "kill-switch protocol), and write summary.json, report.html and TensorBoard figures.",
    )
    analyze.add_argument("dirs", type=Path, nargs="+", help="directories holding run directories")
    analyze.add_argument("--out", type=Path, default=Path("analysis"), help="output directory")
    analyze.add_argument(
        "--group-by", action="append", default=[], metavar="SECTION.KEY",
        help="group runs by this config key instead (repeatable), e.g. env.coupling",
    )  # fmt: skip
    analyze.add_argument("--episodes", type=int, default=256, help="episodes per evaluation")
    analyze.add_argument(
        "--detail-episodes", type=int, default=64,
        help="episodes per ablation and protocol evaluation (0: skip them)",
    )  # fmt: skip
    analyze.add_argument("--force", action="store_true", help="overwrite an earlier report")

    sweep = sub.add_parser(
        "sweep",
        help="conditions × seeds as Ray Tune trials (local, or a cluster with --address)",
        description="Run a sweep file's trials on Ray Tune: one CPU and one torch thread each, "
        "training as `train` does, then evaluating the latest checkpoint, into "
        "OUT/<condition>/<seed>/ for `peerpreserve analyze OUT`.",
    )
    sweep.add_argument("sweep", type=Path, help="sweep YAML (base, conditions/grid, seeds)")
    sweep.add_argument("--out", type=Path, help="output directory (default sweeps/<name>)")
    sweep.add_argument("--address", help="join a running Ray cluster (e.g. auto, HOST:6379)")
    sweep.add_argument("--max-concurrent", type=int, help="trials at once (default: CPUs)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")

    show = sub.add_parser(
        "config",
        help="validate a config and print it with every default filled in",
        description="Validate a config (with overrides) and print the resolved YAML. " + STEPS_HELP,
    )
    _add_config_arguments(show)
    return parser


def _load(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    return load_config(args.config, overrides)


def _fail(message: str) -> int:
    print(f"peerpreserve: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sweep":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from peerpreserve.training.sweep import SweepError, run_sweep

        try:
            return run_sweep(args)
        except SweepError as exc:
            return _fail(str(exc))
    if args.command in ("evaluate", "replay", "analyze"):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from peerpreserve.training.analyze import run_analyze
        from peerpreserve.training.evaluate import EvaluateError, run_evaluate, run_replay
        from peerpreserve.training.runner import limit_threads

        # One thread, as in training: the same metrics on machines with more cores.
        limit_threads(1)
        command = {"evaluate": run_evaluate, "replay": run_replay, "analyze": run_analyze}
        try:
            return command[args.command](args)
        except (EvaluateError, ConfigError, ValueError) as exc:
            return _fail(str(exc))
    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.command == "config":
        sys.stdout.write(config.to_yaml())
        return 0

    # Before torch is imported: idle OpenMP threads spinning on 2 cores cost more than they give.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from peerpreserve.training.runner import RunDirError, Trainer, default_run_dir

    run_dir = args.run_dir or default_run_dir(config)
    try:
        trainer = Trainer(config, run_dir, resume=args.resume)
    except (RunDirError, ConfigError) as exc:
        return _fail(str(exc))
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        print("peerpreserve: interrupted twice: stopped without saving this step", file=sys.stderr)
        return 130
    for line in result.summary():
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
