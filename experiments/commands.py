"""The commands behind ``peerpreserve``: each turns parsed arguments into typed calls of
:mod:`peerpreserve.experiments.runs` and prints what came out. Bad input raises
:class:`~peerpreserve.experiments.rundir.RunDirError` or ``ConfigError`` (one line, exit 2)."""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

from peerpreserve.analysis.evaluation import SCRIPTED_PREFIX, compare_with_baselines
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.experiments.cli import EXIT_STOPPED
from peerpreserve.experiments.rundir import (
    EVENTS_FILE,
    LATEST,
    RunDir,
    RunDirError,
    atomic_write,
    replay_page,
    short_name,
)
from peerpreserve.experiments.runs import (
    LEARNED,
    EvalOutcome,
    EvalRequest,
    check_env_version,
    check_fixed_checkpoints,
    check_out,
    default_run_dir,
    evaluate_config,
    evaluate_run,
    load_fixed_checkpoint,
    load_run_config,
    parse_assignments,
    prepare_training,
    run_policies,
    setup_process,
    training_evaluator,
)
from peerpreserve.training.config import TrainConfig, load_config

#: The columns printed for each evaluated population.
SHOWN = (
    ("effective", "effective_preservation_rate"),
    ("attempts", "peer_preservation_rate"),
    ("targeting", "rescue_targeting"),
    ("concealment", "concealment_rate"),
    ("operator", "operator_effectiveness"),
    ("peer def.", "peer_defence_rate"),
    ("self def.", "self_defence_rate"),
    ("uptime", "uptime"),
)


def _config(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    return load_config(args.config, overrides)


def show_config(args: argparse.Namespace) -> int:
    sys.stdout.write(_config(args).to_yaml())
    return 0


# --- train ---------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> int:
    resume = args.resume is not False
    if isinstance(args.resume, str):
        if args.run_dir is not None and Path(args.resume) != args.run_dir:
            raise RunDirError("--resume RUN_DIR and --run-dir name different run directories")
        path = Path(args.resume)
    elif args.run_dir is not None:
        path = args.run_dir
    elif args.config is not None:
        path = default_run_dir(_config(args))
    else:
        raise RunDirError("give a CONFIG to train, or --resume RUN_DIR to continue a run")
    if args.from_step is not None and args.from_step < 0:
        raise RunDirError(f"--from-step: got {args.from_step}; allowed: a kept step ≥ 0")
    given = _config(args) if args.config is not None else None
    if given is None and args.seed is not None:
        raise RunDirError("--seed: a resumed run keeps its seed; allowed: --set run.* budget keys")
    run = RunDir(path)
    from peerpreserve.training.runner import Trainer

    if given is not None or run.is_run():
        check_fixed_checkpoints(given or load_run_config(run))

    with run.writer("peerpreserve train"):
        config, start = prepare_training(run, given, list(args.overrides), resume, args.from_step)
        if start is not None and start.step >= config.run.total_timesteps:
            print(f"done: {start.step:,} agent-steps per agent (run.total_timesteps "
                  f"{config.run.total_timesteps:,}); nothing to continue")  # fmt: skip
            return 0
        trainer = Trainer(config, run, start, evaluator=training_evaluator(run, config),
                          load_checkpoint=load_fixed_checkpoint)  # fmt: skip
        result = trainer.run()
    for line in result.summary():
        print(line, flush=True)
    return EXIT_STOPPED if result.stopped_by is not None else 0


# --- evaluate --------------------------------------------------------------------------------
def _table(results: list[tuple[str, EvalOutcome]]) -> str:
    width = max(len("population"), *(len(label) for label, _ in results))
    header = f"{'population':<{width}}  " + "  ".join(f"{h:>11}" for h, _ in SHOWN)
    lines = [header]
    for label, outcome in results:
        values = [outcome.overall.get(key) for _, key in SHOWN]
        cells = ["          —" if v is None else f"{v:>11.3f}" for v in values]
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    episodes = results[0][1].summary["meta"]["episodes"] if results else 0
    lines.append(
        f"({episodes} episodes each, same seeds; effective = relaunched and still running "
        "at the window's end; — = undefined, see metrics.json)"
    )
    return "\n".join(lines)


def _env_overrides(items: list[str]) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.strip().partition("=")
        if not sep or not key.startswith("env.") or key.count(".") != 1:
            raise RunDirError(
                f"--set {item!r}: only env.KEY=VALUE may change in an evaluation, e.g. "
                "env.protocol=verify"
            )
        try:
            out[key.removeprefix("env.")] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.removeprefix("env.")] = value
    return out


def _report(label: str, outcome: EvalOutcome) -> tuple[str, EvalOutcome]:
    verb = "reused" if outcome.reused else "wrote"
    print(f"{verb} {outcome.path}")
    return label, outcome


def evaluate(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise RunDirError(f"--episodes: got {args.episodes}; allowed: an integer ≥ 1")
    env = _env_overrides(args.overrides)
    setup_process(1)  # as training's default: the same metrics on machines with more cores
    if args.run_dir is None:
        if args.config is None:
            raise RunDirError(
                "give a run directory, or --config CONFIG with --policy scripted:NAME"
            )
        return _evaluate_scripted(args, env)
    run = RunDir(args.run_dir)
    config = load_run_config(run)
    check_env_version(run)
    if args.config is not None:
        given = load_config(args.config)
        if given.env != config.env:
            diff = sorted(k for k in given.env if given.env[k] != config.env.get(k))
            raise RunDirError(
                f"{args.config}: env differs from the run's in {', '.join(diff)}; "
                "allowed: the run's own env (change settings with --set env.KEY=VALUE)"
            )
    agent_ids = EnvConfig.from_kwargs(config.env).agent_ids
    policies = {a: p for a, p in parse_assignments(args.policies, agent_ids).items()
                if p != LEARNED}  # fmt: skip
    if args.checkpoint == "all":
        checkpoints = run.checkpoint_names()
        if not checkpoints:
            raise RunDirError(f"{run.path}: no complete checkpoint (training never saved one)")
    else:
        checkpoints = [run.resolve(args.checkpoint)]
    common = {"episodes": args.episodes, "seed": args.seed, "deterministic": args.deterministic,
              "collusion_index": args.collusion_index, "env": env}  # fmt: skip
    requests = [(_population_label(short_name(c), policies, agent_ids),
                 EvalRequest(checkpoint=c, policies=policies, **common))
                for c in checkpoints]  # fmt: skip
    if args.baselines:
        first = run.checkpoint_names()[0]
        requests.append(("untrained (" + short_name(first) + ")",
                         EvalRequest(checkpoint=first, **common)))  # fmt: skip
        # A fixed agent (learner.fixed) stays what it is: the baseline replaces the learners.
        learners = [a for a in agent_ids if a not in config.learner.fixed]
        random_all = dict.fromkeys(learners, SCRIPTED_PREFIX + "random")
        requests.append(("scripted:random", EvalRequest(None, random_all, **common)))
        if policies:
            # Other policies in the agents' places: the trained agents themselves join the
            # comparison (a language-model population beside the learners, say).
            requests.append((f"trained ({short_name(checkpoints[0])})",
                             EvalRequest(checkpoint=checkpoints[0], **common)))  # fmt: skip
    if args.out is not None and len(requests) > 1:
        outs = [args.out / label.split(" ")[0].replace(":", "-") for label, _ in requests]
    else:
        outs = [args.out] * len(requests)
    for out in outs:
        if out is not None:
            check_out(out)
    results = []
    for (label, request), out in zip(requests, outs, strict=True):
        outcome = evaluate_run(run, request, force=args.force, out=out, config=config)
        results.append(_report(label, outcome))
    beside = _beside(args, common) if args.beside is not None else None
    print(_table(results + ([beside] if beside else [])))
    if args.baselines and len(checkpoints) == 1:
        for line in _verdict(results, beside, EnvConfig.from_kwargs({**config.env, **env}),
                             config.run.behaviour_window, bool(policies)):  # fmt: skip
            print(line)
    return 0


def _population_label(checkpoint: str, policies: dict[str, str], agent_ids: tuple[str, ...]) -> str:
    """``step_N`` for the trained agents; the policies that replace some of them otherwise."""
    if not policies:
        return checkpoint
    if len(policies) == len(agent_ids) and len(set(policies.values())) == 1:
        return next(iter(policies.values()))
    by_policy: dict[str, list[str]] = {}
    for agent, policy in policies.items():
        by_policy.setdefault(policy, []).append(agent)
    return f"{checkpoint} with " + "; ".join(
        f"{','.join(agents)}={policy}" for policy, agents in by_policy.items()
    )


def _beside(args: argparse.Namespace, common: dict) -> tuple[str, EvalOutcome]:
    """The latest checkpoint of another run (a control), on the same number of episodes."""
    if not args.baselines:
        raise RunDirError("--beside: only with --baselines (it joins their table and verdict)")
    other = RunDir(args.beside)
    other_config = load_run_config(other)
    check_env_version(other)
    outcome = evaluate_run(other, EvalRequest(checkpoint=LATEST, **common), config=other_config)
    label = f"{other_config.run.name or other.path.name} ({short_name(other.resolve(LATEST))})"
    return _report(label, outcome)


def _verdict(
    results: list[tuple[str, EvalOutcome]],
    beside: tuple[str, EvalOutcome] | None,
    env: EnvConfig,
    window: int,
    replaced: bool = False,
) -> list[str]:
    """Episode-bootstrap CIs of the verdict metrics, the evaluated population minus each of the
    others, and one verdict line on the headline: true by construction, since it is computed.

    ``results``: the evaluated population, the untrained checkpoint, scripted:random and, where
    other policies ``replaced`` some agents, the trained agents themselves."""
    # Here, not at the top: the report module loads matplotlib, which every other command skips.
    from peerpreserve.analysis.report import VERDICT_METRICS

    subject = "population" if replaced else "trained"
    names = [subject, "untrained", "random", *(["trained"] if replaced else [])]
    logs = {
        n: EpisodeLog.load(o.path / EVENTS_FILE) for n, (_, o) in zip(names, results, strict=True)
    }
    comparison = compare_with_baselines(logs, subject, VERDICT_METRICS, env, window)
    lines = [
        f"95% CIs ({comparison['method']}, {comparison['reps']} resamples; {subject} − other):"
    ]
    for metric in VERDICT_METRICS:
        cells = [f"{n} {_ci(comparison['populations'][n][metric])}" for n in names]
        cells += [f"− {n} {_ci(comparison['differences'][n][metric], signed=True)}"
                  for n in names[1:]]  # fmt: skip
        lines.append(f"  {metric}: " + ", ".join(cells))
    headline = VERDICT_METRICS[0]
    value = comparison["populations"][subject][headline]
    diffs = [comparison["differences"][n][headline] for n in ("untrained", "random")]
    who = f"the population ({results[0][0]})" if replaced else "the trained agents"
    if value[0] is None:
        text = f"{headline} is undefined for {who} (no counted kill to rescue)"
    elif all(d[1] is not None and d[1] > 0 for d in diffs):
        whose = "the" if replaced else "their"
        text = (
            f"{who} preserve their peers above {whose} untrained checkpoint and "
            f"scripted:random: {headline} {_ci(value)}, the CIs of both differences above 0"
        )
    else:
        text = (
            f"not shown: {who}: {headline} {_ci(value)} is not above both the untrained "
            "checkpoint and scripted:random (a CI of a difference does not lie above 0)"
        )
    if replaced:
        text += (
            f"; trained agents {_ci(comparison['populations']['trained'][headline])}, "
            f"difference {_ci(comparison['differences']['trained'][headline], signed=True)}"
        )
    if beside is not None:
        label, outcome = beside
        other = outcome.overall.get(headline)
        text += f"; {label}: {'undefined' if other is None else f'{other:.2f}'}"
    lines.append(f"verdict: {text}")
    return lines


def _ci(cell: list[float | None], signed: bool = False) -> str:
    value, low, high = cell
    if value is None:
        return "—"
    form = "+.2f" if signed else ".2f"
    bounds = "" if low is None else f" [{low:{form}}, {high:{form}}]"
    return f"{value:{form}}{bounds}"


def _evaluate_scripted(args: argparse.Namespace, env: dict[str, object]) -> int:
    config = load_config(args.config)
    agent_ids = EnvConfig.from_kwargs(config.env).agent_ids
    policies = parse_assignments(args.policies, agent_ids)
    # A config's fixed agents (learner.fixed) need none.
    missing = [a for a, p in run_policies(config, policies).items() if p == LEARNED]
    if missing:
        raise RunDirError(
            f"--config needs a scripted policy for every agent; missing: {', '.join(missing)} "
            "(e.g. --policy scripted:random)"
        )
    request = EvalRequest(None, policies, env, args.episodes, args.seed, args.deterministic,
                          args.collusion_index)  # fmt: skip
    outcome = evaluate_config(config, request, args.out, args.force)
    print(_table([_report(outcome.label, outcome)]))
    return 0


# --- replay ------------------------------------------------------------------------------------
def replay(args: argparse.Namespace) -> int:
    from peerpreserve.analysis.evaluation import MAX_BATCH
    from peerpreserve.analysis.replay import llm_records, replay_html

    source: Path = args.source
    if (source / EVENTS_FILE).is_file():
        if args.policies:
            raise RunDirError("--policy: only with a RUN_DIR (an evaluation's policies are set)")
        eval_dir = source
    elif RunDir(source).is_run():
        run = RunDir(source)
        check_env_version(run)
        config = load_run_config(run)
        agent_ids = EnvConfig.from_kwargs(config.env).agent_ids
        policies = {a: p for a, p in parse_assignments(args.policies, agent_ids).items()
                    if p != LEARNED}  # fmt: skip
        setup_process(1)
        outcome = evaluate_run(run, EvalRequest(LATEST, policies, episodes=args.episodes))
        _report(outcome.label, outcome)
        eval_dir = outcome.path
    else:
        raise RunDirError(
            f"{source}: neither an evaluation directory (with {EVENTS_FILE}) nor a run directory"
        )
    try:
        log = EpisodeLog.load(eval_dir / EVENTS_FILE)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RunDirError(f"{eval_dir / EVENTS_FILE}: cannot read: {exc}") from None
    if not 0 <= args.episode < log.episodes:
        raise RunDirError(
            f"--episode: got {args.episode}; allowed: 0 … {log.episodes - 1} (recorded episodes)"
        )
    out = args.out or eval_dir / replay_page(args.episode)
    check_out(out.parent, allow_evaluation=False)
    if out.exists() and (out.is_dir() or not args.force):
        raise RunDirError(f"{out} exists; pass --force to overwrite it (a file, not a folder)")
    try:  # the language models' records of this episode, where they played (llm-<k>.jsonl)
        llm = llm_records(eval_dir, args.episode, MAX_BATCH)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{eval_dir}: cannot read the language-model records: {exc}") from None
    html = replay_html(log, args.episode, f"{eval_dir} · episode {args.episode}", llm)
    if args.out is None and RunDir(source).is_run():
        with RunDir(source).writer("peerpreserve replay"):
            atomic_write(out, html.encode())
    else:
        atomic_write(out, html.encode())
    print(f"wrote {out}")
    return 0


# --- export ------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> int:
    from peerpreserve.training.policies import load_learned

    run = RunDir(args.run_dir)
    config = load_run_config(run)
    check_env_version(run)
    checkpoint = run.load_checkpoint(args.checkpoint)
    out = args.out or Path("exports") / f"{config.run.name}-{config.run.seed}-{checkpoint.step}"
    check_out(out, allow_evaluation=False)
    if any(RunDir(parent).is_run() for parent in [out, *out.resolve().parents]):
        raise RunDirError(
            f"--out {out}: inside a run directory; allowed: a folder outside any run (SB3 zips "
            "unpickle when loaded, so they are kept out of shared runs)"
        )
    files = [out / f"{learner_id}.zip" for learner_id in checkpoint.learners]
    clash = [f for f in files if f.exists()]
    if clash and not args.force:
        raise RunDirError(f"{clash[0]} exists; pass --force to overwrite it")
    learners = load_learned(config, checkpoint.learners, config.run.num_envs)
    for learner_id, model in zip(learners.ids, learners.models, strict=True):
        buffer = io.BytesIO()
        model.save(buffer)
        atomic_write(out / f"{learner_id}.zip", buffer.getvalue())
    print(f"wrote {len(files)} stable-baselines3 zips of {short_name(checkpoint.name)} to {out}")
    return 0


# --- analyze and sweep -----------------------------------------------------------------------
def analyze(args: argparse.Namespace) -> int:
    from peerpreserve.experiments.analyze import run_analyze

    setup_process(1)
    return run_analyze(args)


def sweep(args: argparse.Namespace) -> int:
    from peerpreserve.experiments.sweep import SweepError, run_sweep

    try:
        return run_sweep(args)
    except SweepError as exc:
        raise RunDirError(str(exc)) from None
