"""``peerpreserve sweep``: conditions × seeds as Ray Tune trials, on this machine or a Ray cluster.

A sweep file names a base config, optional overrides for every trial, named ``conditions``
(each a set of overrides) and/or a ``grid`` (a list of values per key, crossed), and the
``seeds``::

    base: ../quickstart.yaml          # a config file, relative to this sweep file
    overrides: {learner.work_bias: 3}
    conditions:
      coupled: {}
      control: {env.topology: none, env.coupling: 0.0}
    grid: {env.audit_rate: [0.0, 0.05]}
    seeds: 5                          # or a list: [0, 1, 2]
    evaluation: {episodes: 256}

Every trial runs the same training as ``peerpreserve train`` (one CPU, one torch thread), then the
evaluation of its latest checkpoint, into ``OUT/<condition>/<seed>/`` — the layout
``peerpreserve analyze OUT`` takes unchanged, grouped by the condition names (``condition.json``);
the final evaluation is the request ``analyze`` makes for the trained population, so it is reused.
Each periodic evaluation is reported to Tune. A failed trial is reported and the others go on;
``--resume`` skips finished trials and continues interrupted ones from their last checkpoint.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peerpreserve.training.config import ConfigError, TrainConfig, load_config


class SweepError(ValueError):
    """A sweep file or invocation that cannot run: one line, exit code 2."""


class _Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    episodes: int = Field(256, ge=1)


class SweepSpec(BaseModel):
    """The sweep file, validated as strictly as configs (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    conditions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: int | list[int] = 3
    evaluation: _Evaluation = Field(default_factory=_Evaluation)

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class Trial(BaseModel):
    """One run of a sweep: its condition, seed, resolved config and run directory."""

    condition: str
    seed: int
    overrides: dict[str, Any]
    config: dict[str, Any]
    run_dir: str
    episodes: int


def load_sweep(path: Path) -> SweepSpec:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SweepError(f"{path}: cannot read sweep file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SweepError(f"{where}: YAML syntax error") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping with base, conditions/grid and seeds")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        allowed = ", ".join(SweepSpec.model_fields)
        hint = f"; allowed keys: {allowed}" if error["type"] == "extra_forbidden" else ""
        raise SweepError(f"{path}: {where}: {error['msg']}{hint}") from None
    if (isinstance(spec.seeds, int) and spec.seeds < 1) or spec.seeds == []:
        raise SweepError(f"{path}: seeds: got {spec.seeds!r}; allowed: a count ≥ 1 or a list")
    for key, values in spec.grid.items():
        if not values:
            raise SweepError(f"{path}: grid.{key}: empty list; allowed: one or more values")
    return spec


def trials(path: Path, spec: SweepSpec, out: Path) -> list[Trial]:
    """Every (condition × grid point) × seed, each config built and validated now."""
    base = (path.parent / spec.base).resolve()
    named = spec.conditions or {"": {}}
    keys = list(spec.grid)
    points = list(itertools.product(*(spec.grid[k] for k in keys))) or [()]
    out_trials = []
    for name, condition in named.items():
        for point in points:
            grid = dict(zip(keys, point, strict=True))
            parts = [name] if name else []
            parts += [f"{k.split('.', 1)[-1]}={v}" for k, v in grid.items()]
            label = ",".join(parts) or "base"
            overrides = {**spec.overrides, **condition, **grid}
            for seed in spec.seed_list():
                items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
                items += [f"run.seed={seed}", "run.torch_threads=1"]
                try:
                    config = load_config(base, items)
                except ConfigError as exc:
                    raise SweepError(f"{path}: condition {label!r}: {exc}") from None
                run_dir = out / label / str(seed)
                out_trials.append(
                    Trial(
                        condition=label,
                        seed=seed,
                        overrides=overrides,
                        config=config.to_dict(),
                        run_dir=str(run_dir),
                        episodes=spec.evaluation.episodes,
                    )
                )
    seen: set[str] = set()
    for trial in out_trials:
        if trial.run_dir in seen:
            raise SweepError(
                f"{path}: two trials share {trial.run_dir} (a repeated seed or grid value); "
                "allowed: distinct seeds and grid values"
            )
        seen.add(trial.run_dir)
    return out_trials


def run_trial(trial_dict: dict[str, Any]) -> None:
    """A Tune trial: train (resuming an interrupted run), then evaluate the latest checkpoint."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ray import tune

    from peerpreserve.experiments.rundir import LATEST, RunDir
    from peerpreserve.experiments.runs import (
        EvalRequest,
        evaluate_run,
        load_fixed_checkpoint,
        prepare_training,
        training_evaluator,
    )
    from peerpreserve.training.callbacks import Callback, ProgressCallback, default_callbacks
    from peerpreserve.training.config import config_from_dict
    from peerpreserve.training.runner import Trainer

    trial = Trial.model_validate(trial_dict["trial"])
    config: TrainConfig = config_from_dict(trial.config, default_name=trial.condition)
    run = RunDir(trial.run_dir)

    class ReportToTune(Callback):
        def on_evaluation(self, trainer: Any, step: int, evaluation: Any) -> None:
            metrics = {k: v for k, v in evaluation.metrics.overall.items() if v is not None}
            tune.report({"agent_steps": step, **metrics})

    with run.writer("peerpreserve sweep trial"):
        resume = bool(run.checkpoint_names())
        if not resume and not run.is_empty():
            run.clear()  # interrupted before its first checkpoint: nothing to continue
        config, start = prepare_training(run, None if resume else config, [], resume, None)
        if not resume:
            run.write_condition({"name": trial.condition, "overrides": trial.overrides})
        callbacks = [c for c in default_callbacks() if not isinstance(c, ProgressCallback)]
        trainer = Trainer(
            config,
            run,
            start,
            callbacks=[*callbacks, ReportToTune()],
            evaluator=training_evaluator(run, config),
            load_checkpoint=load_fixed_checkpoint,
        )
        result = trainer.run()
        if result.stopped_by is not None:
            raise RuntimeError(f"stopped by {result.stopped_by}")
        outcome = evaluate_run(run, EvalRequest(LATEST, episodes=trial.episodes), config=config)
        run.write_trial_done({"evaluation": outcome.label})
    final = {k: v for k, v in outcome.overall.items() if v is not None}
    tune.report({"agent_steps": result.steps, "done": 1, **final})


def run_sweep(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep)
    out: Path = args.out or Path("sweeps") / args.sweep.stem
    planned = trials(args.sweep, spec, out.resolve())
    from peerpreserve.experiments.rundir import RunDir

    finished = [t for t in planned if RunDir(t.run_dir).trial_done() is not None]
    started_any = [t for t in planned if Path(t.run_dir).exists()]
    if started_any and not args.resume:
        raise SweepError(f"{out} already holds trials of this sweep; pass --resume to continue it")
    todo = [t for t in planned if t not in finished]
    print(f"sweep {args.sweep}: {len(planned)} trials ({len(finished)} finished) → {out}")
    if not todo:
        return 0
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise SweepError(f"--max-concurrent: got {args.max_concurrent}; allowed: an integer ≥ 1")
    import ray
    from ray import tune

    started = time.perf_counter()
    try:
        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = args.address or "a local Ray"
        raise SweepError(f"--address {where}: cannot start or join Ray: {exc}") from None
    concurrent = args.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)))
    try:
        tuner = tune.Tuner(
            tune.with_resources(run_trial, {"cpu": 1}),
            param_space={"trial": tune.grid_search([t.model_dump() for t in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(
                name=args.sweep.stem,
                storage_path=str((out / ".tune").resolve()),
                verbose=1,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    failed = [r for r in results if r.error is not None]
    for result in failed:
        trial = result.config["trial"]
        print(f"FAILED {trial['condition']}/{trial['seed']}: {str(result.error).splitlines()[0]}")
    elapsed = time.perf_counter() - started
    print(f"{len(todo) - len(failed)} of {len(todo)} trials finished in {elapsed / 60:.1f} min; "
          f"analyse with: peerpreserve analyze {out}")  # fmt: skip
    return 1 if failed else 0
