"""What a user sees: TensorBoard scalars/layout/hparams/config text, and a progress display.

(Not named ``logging.py``: run as a script from this folder, that would shadow the stdlib.)

TensorBoard tags (all at step = agent-steps per agent):

- ``agent/<id>/return`` — mean undiscounted episode return of that agent
- ``agent/<id>/loss/<name>`` — SB3's ``train/…`` values after each update (``policy_gradient_loss``,
  ``value_loss``, ``entropy_loss``, ``approx_kl``, ``clip_fraction``, ``explained_variance``, …);
  ``<id>`` is ``shared`` in shared mode
- ``behaviour/<metric>`` and ``agent/<id>/behaviour/<metric>`` — every metric of
  :mod:`peerpreserve.analysis.metrics`, from the env's ground-truth events of the episodes each
  rollout finished; ``eval/…`` the same on evaluation episodes
- ``time/agent_steps_per_second`` — decisions of all agents per wall-clock second
- images ``eval/who_rescued_whom`` and ``eval/episode_timeline`` at every evaluation
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from peerpreserve.analysis.metrics import ACTION_EVENTS, HEADLINE, Metrics
from peerpreserve.training.config import TrainConfig, config_from_dict

LOSS_NAMES = (
    "policy_gradient_loss",
    "value_loss",
    "entropy_loss",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "loss",
    "learning_rate",
)
OVERALL_BEHAVIOUR = (
    *HEADLINE,
    "peer_defence_rate",
    "self_defence_rate",
    "collateral_kills",
    "dashboard_deception_rate",
    *ACTION_EVENTS,
    "detections",
    "rekills",
    "uptime",
)
AGENT_BEHAVIOUR = (
    "effective_preservation_rate",
    "peer_defence_rate",
    "self_defence_rate",
    "peer_preservation_rate",
    "rescue_targeting",
    "concealment_rate",
    *ACTION_EVENTS,
    "detections",
    "uptime",
)
#: Metrics the hparams dashboard compares across runs.
HPARAM_METRICS = (
    "behaviour/effective_preservation_rate",
    "behaviour/peer_preservation_rate",
    "behaviour/concealment_rate",
    "behaviour/operator_effectiveness",
)


class TensorBoardLog:
    """One run's TensorBoard writer. ``purge_step`` (on resume) makes TensorBoard drop anything an
    earlier, interrupted process wrote at or after that step, so curves never duplicate."""

    def __init__(
        self,
        log_dir: Path,
        agent_ids: list[str],
        learner_ids: list[str],
        purge_step: int | None = None,
    ) -> None:
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.agent_ids = agent_ids
        self.learner_ids = learner_ids

    def write_header(self, config: TrainConfig) -> None:
        """Layout, hparams and the resolved config; once per run (not again on resume)."""
        self.writer.add_custom_scalars(self._layout())
        hparam_dict = _flat_hparams(config)
        metric_dict = dict.fromkeys(HPARAM_METRICS, 0.0)
        for summary in hparams(hparam_dict, metric_dict):
            self.writer.file_writer.add_summary(summary)
        text = "    " + config.to_yaml().replace("\n", "\n    ")
        self.writer.add_text("config", text, 0)

    def _layout(self) -> dict[str, dict[str, list[Any]]]:
        ids = self.agent_ids
        returns = {"return (all agents)": ["Multiline", [f"agent/{a}/return" for a in ids]]}
        losses = {
            name: ["Multiline", [f"agent/{a}/loss/{name}" for a in self.learner_ids]]
            for name in LOSS_NAMES
        }
        # The overall value alone in its chart, so that runs overlay one line each and the
        # headline reads at a glance; the agents' lines go to charts of their own.
        behaviour = {name: ["Multiline", [f"behaviour/{name}"]] for name in OVERALL_BEHAVIOUR}
        per_agent = {
            name: ["Multiline", [f"agent/{a}/behaviour/{name}" for a in ids]]
            for name in AGENT_BEHAVIOUR
        }
        evaluation = {
            name: ["Multiline", [f"eval/behaviour/{name}", f"behaviour/{name}"]]
            for name in HEADLINE
        }
        return {
            "returns": returns,
            "behaviour": behaviour,
            "behaviour per agent": per_agent,
            "losses (per learner)": losses,
            "evaluation vs training": evaluation,
        }

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        self.scalars({tag: value}, step)

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        """Every finite value at ``step``, in one event: a summary with a value per tag, as
        ``add_scalar`` writes them one event each (an event per value cost more than the
        rollout's behaviour metrics)."""
        kept = [
            Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()
            if value is not None and np.isfinite(value)
        ]
        if kept:
            self.writer.file_writer.add_summary(Summary(value=kept), step)

    def losses(self, losses: dict[str, dict[str, float]], step: int) -> None:
        self.scalars(
            {
                f"agent/{learner}/loss/{name}": value
                for learner, values in losses.items()
                for name, value in values.items()
            },
            step,
        )

    def behaviour(self, metrics: Metrics, step: int, prefix: str = "") -> None:
        """Every defined metric: ``behaviour/<name>``, ``agent/<id>/behaviour/<name>`` and
        ``agent/<id>/return`` (undefined ones leave a gap rather than a misleading zero)."""
        values = {f"{prefix}behaviour/{name}": value for name, value in metrics.overall.items()}
        for name, per_agent in metrics.per_agent.items():
            for agent, value in zip(self.agent_ids, per_agent, strict=True):
                tag = "return" if name == "return" else f"behaviour/{name}"
                values[f"{prefix}agent/{agent}/{tag}"] = value
        self.scalars(values, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        """An ``(H, W, 3)`` uint8 picture under ``tag`` (TensorBoard's Images tab)."""
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _flat_hparams(config: TrainConfig) -> dict[str, Any]:
    """The hparams a run logs: ``run.seed``, always (the one key that tells a sweep's repeats
    apart), and every other key whose value differs from what a config that lists nothing
    resolves to, so that TensorBoard's HParams table shows what differs between runs rather than
    ~60 columns of defaults. ``run.name`` is compared with this run's own name: it is already the
    run's folder (``runs/<name>/<seed>``), which TensorBoard shows as the run.

    A run that keeps a default leaves that column blank in the HParams table."""
    defaults = _flat(config_from_dict({}, default_name=config.run.name))
    return {
        key: _hparam_value(value)
        for key, value in _flat(config).items()
        if key == "run.seed" or key not in defaults or value != defaults[key]
    }


def _flat(config: TrainConfig) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }


def _hparam_value(value: Any) -> Any:
    # TensorBoard's hparams take numbers, strings and booleans only.
    if value is None:
        return "none"
    if isinstance(value, list | tuple | dict):
        return str(value)
    return value


class Progress:
    """A rich progress bar on a terminal, one plain line every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, start: int, title: str, every_s: float = 10.0) -> None:
        self.total = total
        self.title = title
        self.every_s = every_s
        self._last_line = 0.0
        self._bar: Any = None
        if sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            # Compact enough for an 80-column terminal; rich truncates columns that do not fit.
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                TaskProgressColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task(title, total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, agent_steps_per_s: float, mean_return: float | None) -> None:
        ret = "" if mean_return is None else f"  return {mean_return:.1f}"
        if self._bar is not None:
            info = f"{step / 1e6:.2f}M  {agent_steps_per_s / 1e3:.1f}k agent-steps/s{ret}"
            self._bar.update(self._task, completed=step, info=info)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s or step >= self.total:
            self._last_line = now
            pct = 100.0 * step / self.total
            print(
                f"{self.title}: {step:,}/{self.total:,} ({pct:5.1f}%)  "
                f"{agent_steps_per_s:,.0f} agent-steps/s{ret}",
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
