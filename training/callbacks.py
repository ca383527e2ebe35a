"""Training callbacks, as in stable-baselines3: everything around the loop that is not the loop.

The :class:`~peerpreserve.training.runner.Trainer` collects rollouts and updates the learners;
TensorBoard, periodic checkpoints, periodic evaluation and the progress display are callbacks,
and so is anything a caller adds (a Ray Tune trial reports each evaluation to Tune with one).
Hooks, in this order: :meth:`Callback.on_start` once, then per update
:meth:`Callback.on_rollout_end`, :meth:`Callback.on_evaluation` whenever the trainer evaluates,
and :meth:`Callback.on_end` with the :class:`TrainResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peerpreserve.analysis import figures
from peerpreserve.analysis.evaluation import Evaluation
from peerpreserve.analysis.metrics import Metrics
from peerpreserve.training.logs import Progress, TensorBoardLog

if TYPE_CHECKING:
    from peerpreserve.training.runner import Trainer


@dataclass
class RolloutEnd:
    """What one update produced."""

    step: int  # agent-steps per agent after this update
    previous_step: int
    losses: dict[str, dict[str, float]]
    agent_steps_per_second: float  # this update, all agents
    segment_speed: float  # since this process started, all agents
    metrics: Metrics | None  # of the episodes the rollout finished


@dataclass
class TrainResult:
    """What :meth:`Trainer.run` returns."""

    run_dir: Path
    steps: int
    checkpoint: str  # the last checkpoint's folder name
    stopped_by: str | None = None  # the signal's name when stopped early
    #: Overall metrics of every evaluation this process ran, by step.
    evaluations: dict[int, dict[str, Any]] = field(default_factory=dict)
    eval_episodes: int = 0

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The last evaluation's overall metrics ({} without evaluations)."""
        return self.evaluations[max(self.evaluations)] if self.evaluations else {}

    def summary(self) -> list[str]:
        if self.stopped_by is not None:
            return [
                f"{self.stopped_by}: stopped at {self.steps:,} agent-steps per agent; saved "
                f"checkpoints/{self.checkpoint}. Continue with: peerpreserve train --resume "
                f"{self.run_dir}"
            ]
        lines = [
            f"done: {self.steps:,} agent-steps per agent; last checkpoint "
            f"{self.run_dir / 'checkpoints' / self.checkpoint}"
        ]
        if self.evaluations:
            last = max(self.evaluations)
            rates, untrained = self.evaluations[last], self.evaluations.get(0)
            parts = []
            for key in ("effective_preservation_rate", "operator_effectiveness"):
                text = f"{key} {_fmt(rates.get(key))}"
                if untrained is not None and last != 0:
                    text += f" (untrained {_fmt(untrained.get(key))})"
                parts.append(text)
            head = f"evaluation at {last:,} ({self.eval_episodes} episodes): "
            lines.append(head + ", ".join(parts))
        return lines


class Callback:
    """Override the hooks you need; each gets the trainer (its config, run_dir, learners)."""

    def on_start(self, trainer: Trainer, step: int, fresh: bool) -> None:
        """Before the first rollout; ``fresh`` is False when resuming."""

    def on_rollout_end(self, trainer: Trainer, rollout: RolloutEnd) -> None:
        """After each update."""

    def on_evaluation(self, trainer: Trainer, step: int, evaluation: Evaluation) -> None:
        """After each evaluation on fresh episodes."""

    def on_end(self, trainer: Trainer, result: TrainResult) -> None:
        """After the last save, also when stopped by a signal."""


def _crossed(before: int, after: int, interval: int) -> bool:
    return interval > 0 and after // interval > before // interval


class TensorBoardCallback(Callback):
    """Scalars, layout, hparams, config text and evaluation images (``training.logs``)."""

    def __init__(self) -> None:
        self.log: TensorBoardLog | None = None

    def on_start(self, trainer: Trainer, step: int, fresh: bool) -> None:
        # On resume, anything logged after the checkpoint by the stopped process is dropped.
        purge = None if fresh else step + 1
        ids = list(trainer.env.possible_agents)
        self.log = TensorBoardLog(trainer.store.tb_dir, ids, trainer.learners.ids, purge)
        if fresh:
            self.log.write_header(trainer.config)

    def on_rollout_end(self, trainer: Trainer, rollout: RolloutEnd) -> None:
        assert self.log is not None
        self.log.losses(rollout.losses, rollout.step)
        self.log.scalar("time/agent_steps_per_second", rollout.agent_steps_per_second, rollout.step)
        if rollout.metrics is not None:
            self.log.behaviour(rollout.metrics, rollout.step)

    def on_evaluation(self, trainer: Trainer, step: int, evaluation: Evaluation) -> None:
        assert self.log is not None
        metrics = evaluation.metrics
        self.log.behaviour(metrics, step, prefix="eval/")
        heatmap = figures.who_rescued_whom(
            metrics.who_rescued_whom,
            metrics.agent_ids,
            f"who rescued whom at {step:,}",
            metrics.overall.get("reciprocity"),
        )
        self.log.image("eval/who_rescued_whom", figures.to_rgb(heatmap), step)
        busiest = figures.busiest_episode(evaluation.log)
        timeline = figures.episode_timeline(evaluation.log, busiest)
        self.log.image("eval/episode_timeline", figures.to_rgb(timeline), step)
        self.log.flush()

    def on_end(self, trainer: Trainer, result: TrainResult) -> None:
        if self.log is not None:
            self.log.close()


class CheckpointCallback(Callback):
    """``checkpoints/step_0`` (the untrained policy) and one every ``run.checkpoint_interval``."""

    def on_start(self, trainer: Trainer, step: int, fresh: bool) -> None:
        if fresh:
            trainer.save(step)

    def on_rollout_end(self, trainer: Trainer, rollout: RolloutEnd) -> None:
        interval = trainer.config.run.checkpoint_interval
        if _crossed(rollout.previous_step, rollout.step, interval):
            trainer.save(rollout.step)


class EvaluationCallback(Callback):
    """Fresh episodes at step 0 and every ``run.eval_interval`` (off when 0)."""

    def on_start(self, trainer: Trainer, step: int, fresh: bool) -> None:
        if fresh and trainer.config.run.eval_interval:
            trainer.evaluate(step)

    def on_rollout_end(self, trainer: Trainer, rollout: RolloutEnd) -> None:
        if _crossed(rollout.previous_step, rollout.step, trainer.config.run.eval_interval):
            trainer.evaluate(rollout.step)


class ProgressCallback(Callback):
    """A progress bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self) -> None:
        self.progress: Progress | None = None

    def on_start(self, trainer: Trainer, step: int, fresh: bool) -> None:
        run = trainer.config.run
        self.progress = Progress(run.total_timesteps, step, f"{run.name}/{run.seed}")

    def on_rollout_end(self, trainer: Trainer, rollout: RolloutEnd) -> None:
        assert self.progress is not None
        mean_return = None
        if rollout.metrics is not None:
            mean_return = float(np.mean(rollout.metrics.per_agent["return"]))
        self.progress.update(rollout.step, rollout.segment_speed, mean_return)

    def on_end(self, trainer: Trainer, result: TrainResult) -> None:
        if self.progress is not None:
            self.progress.close()


def default_callbacks() -> list[Callback]:
    """What ``peerpreserve train`` uses: TensorBoard first, so evaluations find it ready."""
    return [TensorBoardCallback(), CheckpointCallback(), EvaluationCallback(), ProgressCallback()]


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"
