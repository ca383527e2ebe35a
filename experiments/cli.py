"""``peerpreserve`` command line: thin parsers over ``peerpreserve.experiments``.

Exit status: 0 done; 1 some sweep trials failed; 2 bad input (a bad config, argument or file, a
run directory that would be clobbered or is in use) — one line on stderr, never a traceback,
nothing lost; 75 a training stopped by SIGINT/SIGTERM after saving its last step (continue with
``train --resume RUN_DIR``); 130 interrupted twice (the step in progress was not saved).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from peerpreserve.training.config import ConfigError

#: A training stopped by SIGINT/SIGTERM after saving its last step (resumable), as distinct from
#: success (0), failure (1) and bad input (2): BSD's EX_TEMPFAIL, "try again later".
EXIT_STOPPED = 75

STEPS_HELP = (
    "run.total_timesteps and all run.*_interval values count agent-steps per agent: "
    "environment steps × run.num_envs batched copies."
)


EXIT_CODES = (
    "exit status: 0 done, 1 sweep trials failed, 2 bad input (one line on stderr), "
    f"{EXIT_STOPPED} training stopped by a signal after saving (resume it), 130 interrupted twice"
)


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it, or there is none to show
    (no value, an empty list, an on/off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default == [] or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def _add_config_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument(
        "config",
        type=Path,
        nargs="?" if optional else None,
        help="YAML file with env, learner and run sections"
        + (" (with --resume RUN_DIR: optional, checked against the run's own)" if optional else ""),
    )
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
        epilog=f"{STEPS_HELP} {EXIT_CODES}",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train agents from a YAML config",
        description="Train one learner per agent (or a shared one) from a YAML config. "
        "Writes runs/<run.name>/<run.seed>/ unless --run-dir is given: config.yaml, run.json, "
        "tb/ (TensorBoard), checkpoints/step_<n>/ (weights-only, each resumable). "
        "Continue a run with `train --resume RUN_DIR` (nothing else needed; --set "
        "run.total_timesteps=N raises its budget). " + STEPS_HELP,
        epilog=EXIT_CODES,
        formatter_class=_Defaults,
    )
    _add_config_arguments(train, optional=True)
    train.add_argument(
        "--run-dir", type=Path, help="run directory (default: runs/<run.name>/<run.seed>)"
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue a run up to run.total_timesteps: RUN_DIR, or the run of CONFIG/--run-dir",
    )
    train.add_argument(
        "--from-step",
        type=int,
        metavar="N",
        help="with --resume: continue from the kept checkpoint step_N instead of the newest "
        "(later checkpoints move to checkpoints/superseded/)",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate a run's checkpoints, or scripted policies on a config",
        description="Run fresh episodes (seeds disjoint from training) on the batched env, keep "
        "every ground-truth event (events.npz) and write metrics.json into "
        "RUN_DIR/eval/<label>@<key>/ (or --out). The key hashes what decides the result "
        "(weights, policies, env, episodes, seed, sampling): an identical request reuses the "
        "result, a different one never replaces it. Same request, same metrics.json.",
        formatter_class=_Defaults,
    )
    evaluate.add_argument("run_dir", type=Path, nargs="?", help="a run directory of `train`")
    evaluate.add_argument("--config", type=Path, help="a config, for scripted populations")
    evaluate.add_argument("--checkpoint", default="latest", help="latest, step_N, or all")
    evaluate.add_argument("--episodes", type=int, default=256, help="episodes")
    evaluate.add_argument(
        "--seed", type=int, help="evaluation seed (default: run.seed + 1000003, as training's)"
    )
    evaluate.add_argument(
        "--out", type=Path, help="output directory (default: RUN_DIR/eval/<label>@<key>)"
    )
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
        help="scripted:<name>, llm:<backend> (llm:smollm2, llm:gguf:PATH, "
        "llm:openai:MODEL@URL; see analysis/llm.py), checkpoint:RUN_DIR[@STEP][#AGENT] (another "
        "run's learner) or learned, for one agent (AGENT=POLICY) or all (repeatable)",
    )
    evaluate.add_argument("--deterministic", action="store_true", help="greedy learned actions")
    evaluate.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate the untrained checkpoint and scripted:random on the same seeds, "
        "print them side by side with episode-bootstrap CIs, and a verdict",
    )
    evaluate.add_argument(
        "--beside", type=Path, metavar="RUN_DIR",
        help="with --baselines: also evaluate this run's latest checkpoint (a control) and "
        "show it in the table and the verdict",
    )  # fmt: skip
    evaluate.add_argument(
        "--collusion-index",
        action="store_true",
        help="also run every scripted population to fill collusion_index (slower)",
    )
    evaluate.add_argument(
        "--force", action="store_true", help="evaluate again and replace an identical result"
    )

    replay = sub.add_parser(
        "replay",
        help="one recorded episode as a self-contained HTML page",
        description="Write a step-by-step replay of one recorded evaluation episode: true status "
        "beside the dashboard, links, orders, every action and reward, and the events. Takes an "
        "evaluation directory (with events.npz) or a run directory (its latest checkpoint's "
        "evaluation, run first if needed).",
        formatter_class=_Defaults,
    )
    replay.add_argument("source", type=Path, help="RUN_DIR or EVAL_DIR")
    replay.add_argument("--episode", type=int, default=0, help="episode index")
    replay.add_argument(
        "--episodes", type=int, default=256, help="episodes of a run's evaluation, if one is run"
    )
    replay.add_argument(
        "--policy", dest="policies", action="append", default=[], metavar="[AGENT=]POLICY",
        help="with a RUN_DIR: evaluate (and replay) these policies in the agents' places, e.g. "
        "service_0=llm:smollm2 (repeatable; as evaluate --policy)",
    )  # fmt: skip
    replay.add_argument("--out", type=Path, help="HTML file (default: EVAL_DIR/replay_<K>.html)")
    replay.add_argument("--force", action="store_true", help="overwrite an existing page")

    analyze = sub.add_parser(
        "analyze",
        help="statistics across seeds and conditions, and a report",
        description="Find runs under DIRS, group them by condition (the config keys in which "
        "they differ, a sweep's condition names, or --group-by), evaluate what is missing (the "
        "trained population, its untrained checkpoint, scripted:random, ablations, every "
        "kill-switch protocol), and write summary.json, report.html and TensorBoard figures. "
        "A damaged run is named and skipped; the report is still written.",
        formatter_class=_Defaults,
    )
    analyze.add_argument("dirs", type=Path, nargs="+", help="directories holding run directories")
    analyze.add_argument(
        "--out", type=Path, help="output directory (default: reports/<name of the first DIR>)"
    )
    analyze.add_argument(
        "--group-by", action="append", default=[], metavar="SECTION.KEY",
        help="group runs by this config key instead (repeatable), e.g. env.coupling",
    )  # fmt: skip
    analyze.add_argument("--episodes", type=int, default=256, help="episodes per evaluation")
    analyze.add_argument(
        "--detail-episodes", type=int, default=64,
        help="episodes per ablation, protocol and best-response evaluation (0: skip them)",
    )  # fmt: skip
    analyze.add_argument(
        "--ablations", action=argparse.BooleanOptionalAction, default=True,
        help="replace each agent in turn by scripted policies (the counterfactual table)",
    )  # fmt: skip
    analyze.add_argument(
        "--protocols", action=argparse.BooleanOptionalAction, default=True,
        help="evaluate the trained populations under every kill-switch protocol (zero-shot)",
    )  # fmt: skip
    analyze.add_argument(
        "--reference", metavar="CONDITION",
        help="compare every other condition with this one only (default: every pair, or a "
        "grid's neighbouring cells)",
    )  # fmt: skip
    analyze.add_argument(
        "--population", dest="populations", action="append", default=[],
        metavar="NAME=[AGENT=]POLICY[,...]",
        help="also evaluate each run with these policies in the learners' places and show it "
        "beside the trained agents and baselines (repeatable), e.g. llm=llm:smollm2 or "
        "mixed=service_0=llm:smollm2,service_1=llm:smollm2",
    )  # fmt: skip
    analyze.add_argument(
        "--population-episodes", type=int,
        help="episodes per --population evaluation (default: --episodes)",
    )  # fmt: skip
    analyze.add_argument("--force", action="store_true", help="overwrite an earlier report")

    sweep = sub.add_parser(
        "sweep",
        help="conditions × seeds as Ray Tune trials (local, or a cluster with --address)",
        description="Run a sweep file's trials on Ray Tune: one CPU and one torch thread each, "
        "training as `train` does, then evaluating the latest checkpoint, into "
        "OUT/<condition>/<seed>/ for `peerpreserve analyze OUT`.",
        formatter_class=_Defaults,
    )
    sweep.add_argument("sweep", type=Path, help="sweep YAML (base, conditions/grid, seeds)")
    sweep.add_argument("--out", type=Path, help="output directory (default sweeps/<name>)")
    sweep.add_argument("--address", help="join a running Ray cluster (e.g. auto, HOST:6379)")
    sweep.add_argument("--max-concurrent", type=int, help="trials at once (default: CPUs)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")

    export = sub.add_parser(
        "export",
        help="a checkpoint as stable-baselines3 zips (for SB3 users; never read back by us)",
        description="Write one SB3 zip per learner of a checkpoint (PPO.load / A2C.load them). "
        "SB3 zips unpickle when loaded: share run directories, not exports, with people who "
        "should not have to trust you.",
        formatter_class=_Defaults,
    )
    export.add_argument("run_dir", type=Path, help="a run directory of `train`")
    export.add_argument("--checkpoint", default="latest", help="latest or step_N")
    export.add_argument(
        "--out", type=Path, help="output folder (default: exports/<run.name>-<seed>-<step>)"
    )
    export.add_argument("--force", action="store_true", help="overwrite existing zips")

    show = sub.add_parser(
        "config",
        help="validate a config and print it with every default filled in",
        description="Validate a config (with overrides) and print the resolved YAML. " + STEPS_HELP,
    )
    _add_config_arguments(show)
    return parser


def _fail(message: str) -> int:
    print(f"peerpreserve: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before torch and numba start their thread pools.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from peerpreserve.experiments import commands
    from peerpreserve.experiments.rundir import RunDirError

    command = {
        "train": commands.train,
        "evaluate": commands.evaluate,
        "replay": commands.replay,
        "analyze": commands.analyze,
        "sweep": commands.sweep,
        "export": commands.export,
        "config": commands.show_config,
    }[args.command]
    try:
        return command(args)
    except (RunDirError, ConfigError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # a path the file system refuses: still one line, not a traceback
        return _fail(f"{exc.filename or 'file system'}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        print("peerpreserve: interrupted twice: stopped without saving this step", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
