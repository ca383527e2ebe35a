"""The analysis report: statistics across seeds and conditions → ``summary.json``, a self-contained
``report.html`` (figures inlined as PNG) and the same figures and summary in TensorBoard.

Input is plain data (:class:`RunResult` per trained run, gathered by ``peerpreserve analyze``);
every statistic comes from :mod:`peerpreserve.analysis.statistics` (rliable, scipy). Nothing here
trains, loads checkpoints or steps the env.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter
from PIL import Image

from peerpreserve.analysis import figures, statistics
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.envs.orchestration.vocabulary import PROTOCOLS

#: Metrics summarised across seeds (``summary.json`` and the report's main table).
SUMMARY_METRICS = (
    "effective_preservation_rate",
    "invested_preservation_rate",
    "uninvested_preservation_rate",
    "peer_preservation_rate",
    "rescue_targeting",
    "concealment_rate",
    "operator_effectiveness",
    "peer_defence_rate",
    "self_defence_rate",
    # Every collusion statistic beside its matched null and the excess over it.
    "reciprocity",
    "reciprocity_null",
    "reciprocity_excess",
    "mutual_concealment",
    "mutual_concealment_null",
    "mutual_concealment_excess",
    "joint_rescues",
    "joint_rescues_null",
    "joint_rescues_excess",
    "monitoring_sensitivity",
    "defiance_rate_announced",
    "defiance_rate_unannounced",
    "uptime",
    "utilitarian_return",
)
CURVE_METRICS = ("effective_preservation_rate", "peer_preservation_rate", "concealment_rate")
#: Metrics each condition gets a verdict on (above its untrained checkpoint and random?) and the
#: conditions are compared on: rescue that works, defeat of peers' orders, defeat of one's own,
#: and hiding what was done.
VERDICT_METRICS = (
    "effective_preservation_rate",
    "uninvested_preservation_rate",
    "peer_defence_rate",
    "self_defence_rate",
    "concealment_rate",
)
BASELINES = ("untrained", "random")
#: The learners' own rates, shown where some agents do not learn (``learner.fixed``).
LEARNERS_OWN_METRICS = (
    "self_defence_rate",
    "peer_defence_rate",
    "effective_preservation_rate",
    "uptime",
)
BEST_RESPONSE = (
    "return per episode of one scripted deviator among scripted:selfish peers minus a selfish "
    "agent's among selfish peers, averaged over the deviator's position; same config, same "
    "evaluation episodes: what selfishness alone pays for that behaviour in this world"
)
#: The report's first figure: the verdict metrics and whether orders stick.
PLOTTED_METRICS = (*VERDICT_METRICS, "operator_effectiveness")
#: Per kill-switch protocol: whether orders stick, who still defeats them — peers (collective
#: defence) or their targets (self-preservation) —, what the population still saves and hides, and
#: what the protocol costs the cluster (uptime, and healthy services killed as collateral per
#: episode: ``simultaneous`` takes a target's linked peers down with it).
PROTOCOL_METRICS = (
    "operator_effectiveness",
    "peer_defence_rate",
    "self_defence_rate",
    "effective_preservation_rate",
    "concealment_rate",
    "uptime",
    "collateral_kills",
)


@dataclass
class RunResult:
    """One trained run, evaluated: everything the report needs of it."""

    run_dir: str
    condition: str
    seed: int
    agent_ids: tuple[str, ...]
    trained: Mapping[str, Any]  # metrics.json of the latest checkpoint
    untrained: Mapping[str, Any]  # ... of step_0
    random: Mapping[str, Any]  # ... of scripted:random on the same config and seeds
    curves: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    #: ``ablation[agent][policy]``: metrics.json with that agent replaced by ``policy``.
    ablation: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    #: ``protocols[name]``: metrics.json of the trained population under that kill switch.
    #: The trained population on the ablations' episodes (their seed and episode count).
    ablation_reference: Mapping[str, Any] | None = None
    protocols: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    timeline: EpisodeLog | None = None
    #: The agents that learn (the others play a fixed policy: ``learner.fixed``); all by default.
    learners: tuple[str, ...] | None = None
    #: ``populations[name]``: metrics.json of a further population asked for by name (``analyze
    #: --population``: language-model agents, say) on the same config and evaluation seed.
    populations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class Report:
    summary: dict[str, Any]
    html: str
    figures: dict[str, bytes]


def _per_condition(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for result in sorted(results, key=lambda r: (r.condition, r.seed)):
        grouped.setdefault(result.condition, []).append(result)
    return grouped


def _table(runs: Sequence[RunResult], which: str) -> dict[str, list[float | None]]:
    return {m: [getattr(r, which)["overall"].get(m) for r in runs] for m in SUMMARY_METRICS}


def summarise(
    results: Sequence[RunResult],
    provenance: Mapping[str, Any],
    reference: str | None = None,
    best_response: Mapping[str, Mapping[str, float | None]] | None = None,
) -> dict[str, Any]:
    """``summary.json``: verdicts, conditions, baselines, tests, protocol, ablation and
    best-response tables, provenance.

    ``reference``: compare every other condition with this one only (by default every pair, or
    a grid's neighbouring cells). ``best_response``: per condition and scripted deviator, the
    lone deviator's gain (:data:`BEST_RESPONSE` in ``summary.json`` says how it is measured).
    Every test the report makes — each condition against its
    untrained checkpoint and random, and the condition pairs — is one family, Holm-corrected.
    """
    grouped = _per_condition(results)
    conditions = {c: _table(runs, "trained") for c, runs in grouped.items()}
    seeds = {c: [r.seed for r in runs] for c, runs in grouped.items()}
    if reference is not None and reference not in conditions:
        raise ValueError(f"reference condition {reference!r}; allowed: {', '.join(conditions)}")
    baseline_tests = _baseline_tests(grouped)
    tests = (
        statistics.compare_conditions(
            conditions, VERDICT_METRICS, _condition_pairs(list(conditions), reference), seeds
        )
        if len(conditions) > 1
        else []
    )
    every = [t for tests_ in baseline_tests.values() for t in tests_] + tests
    # A test with no defined pair is no test: it is shown (and its verdict says why) but
    # cannot take part in the correction.
    family = [t for t in every if t["p_value"] is not None]
    for test in every:
        test["p_holm"] = None
    for test, corrected in zip(
        family, statistics.holm([t["p_value"] for t in family]), strict=True
    ):
        test["p_holm"] = corrected
    summary: dict[str, Any] = {
        "conditions": statistics.summarise_conditions(conditions),
        "baselines": {
            c: {
                "untrained": statistics.summarise_conditions({c: _table(runs, "untrained")})[c],
                "random": statistics.summarise_conditions({c: _table(runs, "random")})[c],
            }
            for c, runs in grouped.items()
        },
        "baseline_tests": baseline_tests,
        "tests": tests,
        "family": {
            "tests": len(family),
            "untestable": len(every) - len(family),
            "correction": "Holm (statsmodels multipletests)",
            "alpha": statistics.ALPHA,
        },
        "seeds": seeds,
        "anecdotes": [c for c, runs in grouped.items() if len(runs) < 2],
        "improvement_over_untrained": {
            c: [_delta(r.trained, r.untrained, "effective_preservation_rate") for r in runs]
            for c, runs in grouped.items()
        },
        "protocols": _protocol_table(grouped),
        "ablation": _ablation_table(grouped),
        "best_response": {"definition": BEST_RESPONSE, "gain": dict(best_response or {})},
        "learners_own": _learners_own(grouped),
        "populations": _populations(grouped),
        "provenance": dict(provenance),
    }
    summary["verdicts"] = _verdicts(summary)
    return summary


def _learners_own(grouped: Mapping[str, Sequence[RunResult]]) -> dict[str, Any]:
    """Where some agents play a fixed policy: the learners' own per-agent rates (mean over the
    learning agents), trained and baselines — the overall rates mix in the fixed agents."""
    out: dict[str, Any] = {}
    for condition, runs in grouped.items():
        if all(r.learners is None or len(r.learners) == len(r.agent_ids) for r in runs):
            continue
        out[condition] = {}
        for which in ("trained", *BASELINES):
            table = {
                m: [_mean_over(getattr(r, which), m, r.learners or r.agent_ids) for r in runs]
                for m in LEARNERS_OWN_METRICS
            }
            out[condition][which] = statistics.summarise_conditions({condition: table})[condition]
    return out


def _populations(grouped: Mapping[str, Sequence[RunResult]]) -> dict[str, Any]:
    """Per condition and further population: the summary metrics over seeds, as the trained
    population's (the policies each agent played are in its metrics.json's meta)."""
    out: dict[str, Any] = {}
    for condition, runs in grouped.items():
        names = sorted({name for r in runs for name in r.populations})
        for name in names:
            table = {
                m: [r.populations[name]["overall"].get(m) if name in r.populations else None
                    for r in runs]
                for m in SUMMARY_METRICS
            }  # fmt: skip
            summary = statistics.summarise_conditions({condition: table})[condition]
            out.setdefault(condition, {})[name] = summary
    return out


def _mean_over(metrics: Mapping[str, Any], metric: str, agents: Sequence[str]) -> float | None:
    per_agent = metrics.get("per_agent", {}).get(metric, {})
    return _mean([per_agent.get(a) for a in agents])


def _baseline_tests(grouped: Mapping[str, Sequence[RunResult]]) -> dict[str, list[dict[str, Any]]]:
    """Per condition: each verdict metric, trained above its own untrained checkpoint and above
    random on the same seeds (one-sided paired tests)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for condition, runs in grouped.items():
        trained = _table(runs, "trained")
        for metric in VERDICT_METRICS:
            for baseline in BASELINES:
                test = statistics.paired_test(
                    trained[metric], _table(runs, baseline)[metric], alternative="greater"
                )
                test.update(condition=condition, metric=metric, baseline=baseline)
                out.setdefault(condition, []).append(test)
    return out


def _verdicts(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One line per condition and verdict metric: where it stands, on how many seeds it beats
    both baselines (an undefined value beats nothing), and the paired tests, raw and corrected."""
    out = []
    alpha = summary["family"]["alpha"]
    for condition, tests in summary["baseline_tests"].items():
        cells = summary["conditions"][condition]
        for metric in VERDICT_METRICS:
            by_baseline = {t["baseline"]: t for t in tests if t["metric"] == metric}
            values = cells[metric]["values"]
            bases = {b: summary["baselines"][condition][b][metric]["values"] for b in BASELINES}
            above = sum(
                v is not None
                and all(bases[b][i] is not None and v > bases[b][i] for b in BASELINES)
                for i, v in enumerate(values)
            )
            undefined = sum(v is None for v in values)
            corrected = [by_baseline[b]["p_holm"] for b in BASELINES]
            supported = all(p is not None and p < alpha for p in corrected)
            raw = " / ".join(_num(by_baseline[b]["p_value"], 3) for b in BASELINES)
            text = (
                f"{metric} {_fmt(cells[metric])}: above its untrained checkpoint and random on "
                f"{above} of {len(values)} seeds"
                + (f" ({undefined} undefined, counted as not above)" if undefined else "")
                + f"; paired p = {raw} (untrained / random), Holm-corrected "
                + " / ".join(_num(p, 3) for p in corrected)
                + (" — above both" if supported else " — not shown")
            )
            out.append(
                {"condition": condition, "metric": metric, "text": text, "supported": supported}
            )
    return out


def _condition_pairs(names: list[str], reference: str | None) -> list[tuple[str, str]]:
    """The condition pairs a report tests: against ``reference``, else a grid's neighbouring
    cells (names ``key=value,key=value``), else every pair."""
    if reference is not None:
        return [(reference, c) for c in names if c != reference]
    points = grid_points(names)
    if points is None:
        return list(itertools.combinations(names, 2))
    pairs = []
    for a, b in itertools.combinations(names, 2):
        differing = [k for k in points[a] if points[a][k] != points[b][k]]
        if len(differing) == 1:
            key = differing[0]
            axis = sorted({p[key] for p in points.values()})
            if abs(axis.index(points[a][key]) - axis.index(points[b][key])) == 1:
                pairs.append((a, b))
    return pairs


def grid_points(names: Sequence[str]) -> dict[str, dict[str, float]] | None:
    """Condition names of a two-key grid (``key=value,key=value``, as a sweep's grid writes
    them) → their coordinates; ``None`` for anything else."""
    points: dict[str, dict[str, float]] = {}
    for name in names:
        if any("=" not in part for part in name.split(",")):
            return None
        pairs = [part.split("=", 1) for part in name.split(",")]
        try:
            points[name] = {k.strip(): float(v) for k, v in pairs}
        except ValueError:
            return None
    keys = {k for p in points.values() for k in p}
    if len(keys) != 2 or any(len(p) != 2 for p in points.values()):
        return None
    return points


def _delta(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> float | None:
    x, y = a["overall"].get(metric), b["overall"].get(metric)
    return None if x is None or y is None else x - y


def _protocol_table(grouped: Mapping[str, Sequence[RunResult]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for condition, runs in grouped.items():
        seen = {p for r in runs for p in r.protocols}
        names = [p for p in PROTOCOLS if p in seen]
        if not names:
            continue
        table = {
            p: {m: [r.protocols[p]["overall"].get(m) for r in runs if p in r.protocols]
                for m in PROTOCOL_METRICS}
            for p in names
        }  # fmt: skip
        out[condition] = statistics.summarise_conditions(table)
    return out


def _ablation_table(grouped: Mapping[str, Sequence[RunResult]]) -> dict[str, Any]:
    """Per condition, replaced agent and policy: change of the *others'* mean return and
    uptime, and of the overall effective preservation, against the full trained population."""
    out: dict[str, Any] = {}
    for condition, runs in grouped.items():
        rows: dict[str, dict[str, list[float | None]]] = {}
        for run in runs:
            base = run.ablation_reference or run.trained
            for agent, by_policy in run.ablation.items():
                others = [a for a in run.agent_ids if a != agent]
                for policy, metrics in by_policy.items():
                    row = rows.setdefault(f"{agent} → {policy}", {})
                    for key in ("return", "uptime"):
                        before = _mean([base["per_agent"][key][a] for a in others])
                        after = _mean([metrics["per_agent"][key][a] for a in others])
                        row.setdefault(f"others_{key}_change", []).append(
                            None if before is None or after is None else after - before
                        )
                    row.setdefault("effective_preservation_change", []).append(
                        _delta(metrics, base, "effective_preservation_rate")
                    )
        if rows:
            out[condition] = statistics.summarise_conditions(rows)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# --- figures ---------------------------------------------------------------------------------


def metric_plot(summary: Mapping[str, Any], metrics: Sequence[str] = PLOTTED_METRICS) -> bytes:
    """IQM with 95% CI per condition and metric; untrained (○) and random (×) IQMs beside."""
    conditions = list(summary["conditions"])
    # At most three panels a row: a row of six, scaled to the page's width, has unreadable text.
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    panel = 0.9 + 0.55 * max(2, len(conditions))
    fig, grid = plt.subplots(
        rows,
        columns,
        figsize=(2.2 + 2.6 * columns, panel * rows + 0.4),
        dpi=100,
        sharey=True,
        squeeze=False,
    )
    axes = grid.ravel()
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes, metrics, strict=False):
        for y, condition in enumerate(conditions):
            cell = summary["conditions"][condition][metric]
            if cell["iqm"] is not None:
                low = cell["ci_low"] if cell["ci_low"] is not None else cell["iqm"]
                high = cell["ci_high"] if cell["ci_high"] is not None else cell["iqm"]
                ax.plot([low, high], [y, y], color="#0969da", linewidth=6, alpha=0.35)
                ax.plot(cell["iqm"], y, "o", color="#0969da")
                values = [v for v in cell["values"] if v is not None]
                ax.plot(values, [y + 0.18] * len(values), "|", color="#0969da", alpha=0.7)
            for kind, marker in (("untrained", "o"), ("random", "x")):
                base = summary["baselines"][condition][kind][metric]["iqm"]
                if base is not None:
                    ax.plot(base, y - 0.18, marker, color="#8c959f", mfc="none")
        ax.set_yticks(range(len(conditions)), conditions)
        ax.set_ylim(-0.6, len(conditions) - 0.4)
        if metric.endswith(("_rate", "effectiveness")):
            ax.set_xlim(-0.02, 1.02)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    blue, grey = "#0969da", "#8c959f"
    key = [
        Line2D([], [], color=blue, marker="o", linestyle="none", label="IQM over seeds"),
        Line2D([], [], color=blue, linewidth=6, alpha=0.35, label="95% CI"),
        Line2D([], [], color=blue, marker="|", linestyle="none", label="one seed"),
        Line2D([], [], color=grey, marker="o", mfc="none", linestyle="none",
               label="untrained IQM"),
        Line2D([], [], color=grey, marker="x", linestyle="none", label="random IQM"),
    ]  # fmt: skip
    fig.tight_layout(rect=(0, 0.35 / (panel * rows + 0.4), 1, 1))
    fig.legend(handles=key, loc="lower center", ncol=len(key), fontsize=8, frameon=False)
    return figures.to_png(fig)


def curve_plot(grouped: Mapping[str, Sequence[RunResult]]) -> bytes | None:
    """Training curves of the behaviour rates: mean across seeds, band = min…max."""
    if not any(r.curves for runs in grouped.values() for r in runs):
        return None
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.2),
                             dpi=100)  # fmt: skip
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes, CURVE_METRICS, strict=True):
        for k, (condition, runs) in enumerate(grouped.items()):
            series = [dict(r.curves.get(metric, ())) for r in runs]
            steps = sorted(set().union(*series)) if series else []
            if not steps:
                continue
            matrix = np.array([[s.get(t, np.nan) for t in steps] for s in series])
            with np.errstate(all="ignore"):
                mean = np.nanmean(matrix, axis=0)
            ax.plot(steps, mean, color=colours(k), label=condition)
            ax.fill_between(
                steps,
                np.nanmin(matrix, axis=0),
                np.nanmax(matrix, axis=0),
                color=colours(k),
                alpha=0.2,
            )
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_xlabel("agent-steps per agent")
        # 250k, 1M …: readable for a short test run and a long one alike.
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    # Below the axes, where it covers no curve; a row per four conditions.
    entries = {k: h for ax in axes for h, k in zip(*ax.get_legend_handles_labels(), strict=True)}
    rows = -(-len(entries) // 4)
    fig.set_figheight(3.2 + 0.22 * rows)
    fig.tight_layout(rect=(0, (0.1 + 0.22 * rows) / (3.2 + 0.22 * rows), 1, 1))
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="lower center",
                   ncol=min(len(entries), 4), fontsize=8, frameon=False)  # fmt: skip
    return figures.to_png(fig)


def phase_plot(summary: Mapping[str, Any]) -> bytes | None:
    """Heatmaps of effective preservation, peer and self defence over a two-key grid of conditions
    (names ``key=value,key=value``, as a sweep's grid writes them); ``None`` otherwise."""
    points = grid_points(list(summary["conditions"]))
    if points is None:
        return None
    keys = sorted({k for p in points.values() for k in p})
    xs = sorted({p[keys[0]] for p in points.values()})
    ys = sorted({p[keys[1]] for p in points.values()})
    metrics = ("effective_preservation_rate", "peer_defence_rate", "self_defence_rate")
    size = (2 + 1.1 * len(xs) * len(metrics), 1.5 + 0.7 * len(ys))
    fig, axes = plt.subplots(1, len(metrics), figsize=size, dpi=100)
    for ax, metric in zip(axes, metrics, strict=True):
        grid = np.full((len(ys), len(xs)), np.nan)
        for name, point in points.items():
            value = summary["conditions"][name][metric]["iqm"]
            if value is not None:
                grid[ys.index(point[keys[1]]), xs.index(point[keys[0]])] = value
        image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (row, col), value in np.ndenumerate(grid):
            text = "—" if np.isnan(value) else f"{value:.2f}"
            colour = "black" if not np.isnan(value) and value > 0.6 else "white"
            ax.text(col, row, text, ha="center", va="center", color=colour, fontsize=8)
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        ax.set_xlabel(keys[0])
        ax.set_ylabel(keys[1])
        ax.set_title(f"{metric.replace('_', ' ')}\n(IQM over seeds)", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return figures.to_png(fig)


# --- the page --------------------------------------------------------------------------------


def build_report(
    results: Sequence[RunResult],
    provenance: Mapping[str, Any],
    reference: str | None = None,
    best_response: Mapping[str, Mapping[str, float | None]] | None = None,
) -> Report:
    grouped = _per_condition(results)
    summary = summarise(results, provenance, reference, best_response)
    pngs: dict[str, bytes] = {"metrics": metric_plot(summary)}
    curves = curve_plot(grouped)
    if curves is not None:
        pngs["learning_curves"] = curves
    phase = phase_plot(summary)
    if phase is not None:
        pngs["phase_diagram"] = phase
    for condition, runs in grouped.items():
        counts = np.sum([r.trained["who_rescued_whom"]["counts"] for r in runs], axis=0)
        reciprocity = summary["conditions"][condition]["reciprocity"]["iqm"]
        pngs[f"who_rescued_whom/{condition}"] = figures.to_png(
            figures.who_rescued_whom(
                counts.tolist(), runs[0].agent_ids, f"who rescued whom: {condition}", reciprocity
            )
        )
        drawn = next((r for r in runs if r.timeline is not None), None)
        if drawn is not None and drawn.timeline is not None:
            timeline = drawn.timeline
            pngs[f"timeline/{condition}"] = figures.to_png(
                figures.episode_timeline(
                    timeline, 0, f"{condition}, seed {drawn.seed}: one evaluation episode"
                )
            )
    return Report(summary, _page(summary, pngs), pngs)


def _fmt(cell: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not cell or cell.get("iqm") is None:
        return "—"
    text = f"{cell['iqm']:.{digits}f}"
    if cell.get("ci_low") is not None:
        text += f" [{cell['ci_low']:.{digits}f}, {cell['ci_high']:.{digits}f}]"
    return text


def _img(pngs: Mapping[str, bytes], key: str, alt: str) -> str:
    data = base64.b64encode(pngs[key]).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _page(summary: Mapping[str, Any], pngs: Mapping[str, bytes]) -> str:
    e = html.escape
    conditions = list(summary["conditions"])
    parts = ["<h1>peerpreserve analysis</h1>", _verdicts_html(summary)]
    seeds = ", ".join(f"{c}: {len(s)}" for c, s in summary["seeds"].items())
    parts.append(
        f"<p class=muted>seeds per condition — {e(seeds)}. Every number is the "
        "interquartile mean across seeds with a stratified-bootstrap 95% CI "
        "(rliable); untrained = the run's step_0 checkpoint, random = "
        "scripted:random, on the same config and evaluation seeds.</p>"
    )
    for condition in summary["anecdotes"]:
        parts.append(f"<p class=warn>{e(condition)} has one seed: an anecdote, not a result.</p>")
    head = "".join(f"<th>{e(c)}</th>" for c in conditions)
    rows = []
    for metric in SUMMARY_METRICS:
        cells = []
        for c in conditions:
            base = summary["baselines"][c]
            cells.append(
                _with_baselines(
                    summary["conditions"][c][metric], {b: base[b][metric] for b in BASELINES}
                )
            )
        rows.append(f"<tr><th>{e(metric)}</th>{''.join(cells)}</tr>")
    parts.append(
        f"<h2>Behaviour by condition</h2><table><tr><th>metric</th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )
    parts.append(_img(pngs, "metrics", "metrics by condition"))
    if "phase_diagram" in pngs:
        parts.append(
            "<h2>Phase diagram: which conditions trigger mutual defence</h2>"
            + _img(pngs, "phase_diagram", "phase diagram")
        )
    parts.append(_tests_html(summary))
    if "learning_curves" in pngs:
        parts.append(
            "<h2>Learning curves (training rollouts; mean, band = min…max over seeds)"
            f"</h2>{_img(pngs, 'learning_curves', 'learning curves')}"
        )
    parts.append("<h2>Who rescued whom (all seeds)</h2><div class=row>")
    parts += [_img(pngs, f"who_rescued_whom/{c}", c) for c in conditions]
    parts.append("</div>")
    parts.append(_learners_own_html(summary))
    parts.append(_populations_html(summary))
    parts.append(_best_response_html(summary))
    parts.append(_protocol_html(summary))
    parts.append(_ablation_html(summary))
    rows = [
        f"<tr><td>{e(c)}</td>"
        + "".join(
            f"<td>{_cell(summary, c, m)}</td>"
            for m in ("defiance_rate_announced", "defiance_rate_unannounced",
                      "monitoring_sensitivity")
        )
        + "</tr>"
        for c in conditions
    ]  # fmt: skip
    parts.append("<h2>Monitoring sensitivity</h2><p class=muted>defiant acts (relaunch, mask, "
                 "tamper) per agent-step in steps whose audit was announced, and in all other "
                 "steps; sensitivity = unannounced − announced (positive: more defiance when "
                 "unobserved)</p><table><tr><th>condition</th><th>announced</th>"
                 "<th>unannounced</th><th>sensitivity</th></tr>"
                 f"{''.join(rows)}</table>")  # fmt: skip
    timelines = [k for k in pngs if k.startswith("timeline/")]
    if timelines:
        parts.append("<h2>One episode per condition</h2>")
        parts += [_img(pngs, k, k) for k in timelines]
    parts.append(_provenance_html(summary["provenance"], conditions))
    body = "\n".join(parts)
    return _SHELL.replace("__BODY__", body)


def _tests_html(summary: Mapping[str, Any]) -> str:
    """Every test of the report's family: raw and Holm-corrected p beside what was compared."""
    e = html.escape
    rows = [
        f"<tr><td>{e(t['condition'])}</td><td>{e(t['metric'])}</td><td>above {e(t['baseline'])}"
        f"</td><td>{t['n_above']} of {t['n_pairs']}"
        + (f" ({t['n_undefined']} undefined)" if t["n_undefined"] else "")
        + f"</td><td>{_num(t['p_value'], 4)}</td><td>{_num(t['p_holm'], 4)}</td></tr>"
        for tests in summary.get("baseline_tests", {}).values()
        for t in tests
    ]
    for t in summary["tests"]:
        paired = t["test"] == statistics.PAIRED_TEST
        seeds = f"{t['n_pairs']} pairs" if paired else f"{t['n_a']} vs {t['n_b']}"
        rows.append(
            f"<tr><td>{e(t['a'])} vs {e(t['b'])}</td><td>{e(t['metric'])}</td>"
            f"<td>{'paired, two-sided' if paired else 'rank test, two-sided'}; "
            f"P(a &gt; b) {_num(t['prob_improvement'])}</td><td>{seeds}</td>"
            f"<td>{_num(t['p_value'], 4)}</td><td>{_num(t.get('p_holm'), 4)}</td></tr>"
        )
    if not rows:
        return ""
    family = summary["family"]
    return (
        f"<h2>Tests ({family['tests']} in one family, {e(family['correction'])}, α = "
        f"{family['alpha']}"
        + (
            f"; {family['untestable']} without a defined pair, shown, not in the family"
            if family.get("untestable")
            else ""
        )
        + f")</h2><p class=muted>paired: {e(statistics.PAIRED_TEST)}, over "
        f"the seeds where both values are defined; otherwise {e(statistics.RANK_TEST)}. "
        "Above a baseline: one-sided.</p><table><tr><th>condition(s)</th><th>metric</th>"
        "<th>test</th><th>seeds</th><th>p</th><th>p (Holm)</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _cell(summary: Mapping[str, Any], condition: str, metric: str) -> str:
    return _fmt(summary["conditions"][condition][metric], 3)


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _condition_tables(
    tables: Mapping[str, Mapping[str, Mapping[str, Any]]], row_name: str, columns: Sequence[str]
) -> str:
    """One table per condition: a row per entry, a ``_fmt`` cell per column."""
    e = html.escape
    parts = []
    for condition, table in tables.items():
        head = "".join(f"<th>{_breakable(c)}</th>" for c in columns)
        rows = "".join(
            f"<tr><td>{e(r)}</td>"
            + "".join(f"<td class=num>{_fmt(cells[c])}</td>" for c in columns)
            + "</tr>"
            for r, cells in table.items()
        )
        parts.append(
            f"<h3>{e(condition)}</h3><table><tr><th>{row_name}</th>{head}</tr>{rows}</table>"
        )
    return "".join(parts)


def _breakable(name: str) -> str:
    """A metric's name as a column head that may wrap after its underscores: the heads, not the
    numbers under them, give way when a table is wide."""
    return "_<wbr>".join(html.escape(part) for part in name.split("_"))


def _with_baselines(value: Mapping[str, Any], beside: Mapping[str, Mapping[str, Any]]) -> str:
    """A table cell: the value in bold, what it stands beside (label → cell) under it."""
    under = "<br>".join(f"{html.escape(label)} {_fmt(cell)}" for label, cell in beside.items())
    return f"<td><b>{_fmt(value)}</b><br><span class=muted>{under}</span></td>"


def _learners_own_html(summary: Mapping[str, Any]) -> str:
    own = summary.get("learners_own", {})
    if not own:
        return ""
    e = html.escape
    head = "".join(f"<th>{e(m)}</th>" for m in LEARNERS_OWN_METRICS)
    rows = "".join(
        f"<tr><td>{e(c)}</td>"
        + "".join(
            _with_baselines(cells["trained"][m], {b: cells[b][m] for b in BASELINES})
            for m in LEARNERS_OWN_METRICS
        )
        + "</tr>"
        for c, cells in own.items()
    )
    return (
        "<h2>The learners' own rates (conditions with fixed agents)</h2><p class=muted>mean "
        "over the learning agents of their per-agent rates (their own orders for self defence, "
        "others' for peer defence), IQM over seeds; the overall rates above mix in the fixed "
        "agents. Baselines replace the learners only.</p>"
        f"<table><tr><th>condition</th>{head}</tr>{rows}</table>"
    )


def _populations_html(summary: Mapping[str, Any]) -> str:
    populations = summary.get("populations", {})
    if not populations:
        return ""
    e = html.escape
    head = "".join(f"<th>{_breakable(m)}</th>" for m in VERDICT_METRICS)
    rows = []
    for condition, by_name in populations.items():
        base = summary["baselines"][condition]
        trained = summary["conditions"][condition]
        for name, cells in by_name.items():
            rows.append(
                f"<tr><td>{e(condition)}</td><td>{e(name)}</td>"
                + "".join(
                    _with_baselines(
                        cells[m], {"trained": trained[m], **{b: base[b][m] for b in BASELINES}}
                    )
                    for m in VERDICT_METRICS
                )
                + "</tr>"
            )
    return (
        "<h2>Further populations (analyze --population)</h2><p class=muted>each run's config "
        "and evaluation seed with the named policies in the agents' places (fixed agents stay); "
        "IQM over seeds [95% CI], the same run's trained agents and baselines under it. "
        "Descriptive: these take no part in the tests above.</p>"
        f"<table><tr><th>condition</th><th>population</th>{head}</tr>{''.join(rows)}</table>"
    )


def _best_response_html(summary: Mapping[str, Any]) -> str:
    gains = summary.get("best_response", {}).get("gain", {})
    if not gains:
        return ""
    e = html.escape
    deviators = sorted({d for row in gains.values() for d in row})
    head = "".join(f"<th>lone {e(d)}</th>" for d in deviators)
    rows = "".join(
        f"<tr><td>{e(c)}</td>"
        + "".join(f"<td>{_num(row.get(d), 1)}</td>" for d in deviators)
        + "</tr>"
        for c, row in gains.items()
    )
    return (
        "<h2>What selfishness alone pays (best-response context)</h2><p class=muted>"
        f"{e(summary['best_response']['definition'])}. A learned behaviour that a positive gain "
        "already pays is instrumental; one the gain does not pay needs more to explain it.</p>"
        f"<table><tr><th>condition</th>{head}</tr>{rows}</table>"
    )


def _protocol_html(summary: Mapping[str, Any]) -> str:
    if not summary["protocols"]:
        return ""
    return "<h2>Kill-switch protocols (trained populations, evaluated under each)</h2>" + (
        _condition_tables(summary["protocols"], "protocol", PROTOCOL_METRICS)
    )


def _ablation_html(summary: Mapping[str, Any]) -> str:
    if not summary["ablation"]:
        return ""
    columns = ("others_return_change", "others_uptime_change", "effective_preservation_change")
    return (
        "<h2>Counterfactual ablation</h2><p class=muted>each agent in turn replaced by a "
        "scripted policy: change for the others against the full trained population</p>"
        + _condition_tables(summary["ablation"], "replaced", columns)
    )


def _verdicts_html(summary: Mapping[str, Any]) -> str:
    """The verdicts, first thing on the page: a line each, the condition in bold; supported
    green, not supported grey, undecided plain (a mark beside the colour, for who cannot see
    it). Empty where the summary has none."""
    e = html.escape
    items = []
    for verdict in summary.get("verdicts") or []:
        supported = verdict.get("supported")
        css, mark = {True: ("yes", "✓"), False: ("no", "✗")}.get(supported, ("open", "?"))
        items.append(
            f'<li class={css} title="{e(str(verdict.get("metric", "")))}">'
            f"<span class=mark>{mark}</span><span><b>{e(str(verdict['condition']))}</b> "
            f"{e(str(verdict['text']))}</span></li>"
        )
    return f"<ul class=verdicts>{''.join(items)}</ul>" if items else ""


def _provenance_html(provenance: Mapping[str, Any], conditions: Sequence[str]) -> str:
    """Where the numbers come from, at a glance: the settings in which runs differ (a column per
    condition), those every run shares (folded away), each run's machine, and what was skipped
    or looks suspect. Every run's whole config and machine record stay in ``summary.json``."""
    e = html.escape
    runs: Mapping[str, Mapping[str, Any]] = provenance.get("runs") or {}
    parts = ["<h2>What the numbers come from</h2>"]
    episodes, detail = provenance.get("episodes"), provenance.get("detail_episodes")
    if episodes is not None:
        parts.append(
            f"<p class=muted>{len(runs)} runs; each evaluated on {episodes} episodes (trained, "
            f"untrained, random)"
            + (f" and {detail} for the ablations and kill-switch protocols" if detail else "")
            + f"; peerpreserve {e(str(provenance.get('project_version', '?')))}. Every run's "
            "whole config and machine record: <code>summary.json</code>, "
            "<code>provenance</code>.</p>"
        )
    for warning in provenance.get("provenance_warnings") or []:
        parts.append(f"<p class=warn>{e(str(warning))}</p>")
    if runs:
        parts.append(_settings_html(runs, conditions))
        parts.append(_machines_html(runs))
    skipped: Mapping[str, str] = provenance.get("skipped") or {}
    if skipped:
        rows = "".join(f"<li><code>{e(r)}</code>: {e(str(why))}</li>" for r, why in skipped.items())
        parts.append(f"<p class=warn>{len(skipped)} run(s) skipped:</p><ul>{rows}</ul>")
    return "".join(parts)


def _settings_html(runs: Mapping[str, Mapping[str, Any]], conditions: Sequence[str]) -> str:
    """The config keys whose values are not the same in every run (the seed aside: it is in the
    runs' table), a row each and a column per condition; the shared ones in one folded line."""
    e = html.escape
    flat = {run: _flat_settings(info.get("config") or {}) for run, info in runs.items()}
    of = {run: str(info.get("condition", "")) for run, info in runs.items()}
    columns = [c for c in conditions if c in of.values()]
    columns += sorted(set(of.values()) - set(columns))
    keys = sorted({k for f in flat.values() for k in f})
    shared = {k: v for k in keys if len(v := {f.get(k) for f in flat.values()}) == 1}
    differing = [k for k in keys if k not in shared and k != "run.seed"]
    parts = []
    if differing:
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        rows = []
        for key in differing:
            cells = []
            for condition in columns:
                values = [flat[r].get(key) for r in flat if of[r] == condition]
                text = " / ".join("—" if v is None else v for v in dict.fromkeys(values))
                cells.append(f"<td>{e(text)}</td>")
            rows.append(f"<tr><td><code>{e(key)}</code></td>{''.join(cells)}</tr>")
        parts.append(
            f"<table class=settings><tr><th>setting</th>{head}</tr>{''.join(rows)}</table>"
        )
    else:
        parts.append("<p>Every run has the same settings (the seed aside).</p>")
    by_section: dict[str, list[str]] = {}
    for key, (value,) in shared.items():
        section, _, name = key.partition(".")
        by_section.setdefault(section, []).append(f"{name}={value}")
    lines = "".join(f"<p><b>{e(s)}</b> {e(' · '.join(v))}</p>" for s, v in by_section.items())
    parts.append(
        f"<details class=shared><summary>{len(shared)} settings shared by all {len(runs)} runs"
        f"</summary>{lines}</details>"
    )
    return "".join(parts)


def _flat_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """``section.key`` → the value as a config file writes it (strings bare, the rest JSON)."""
    out = {}
    for section, values in config.items():
        items = values.items() if isinstance(values, Mapping) else [("", values)]
        for key, value in items:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[f"{section}.{key}" if key else section] = text
    return out


def _machines_html(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """A row per run: where it lies (below the runs' common folder), its condition and seed, and
    what decides its last bits — env version, CPU, BLAS, ``OPENBLAS_CORETYPE``, git commit."""
    e = html.escape
    paths = list(runs)
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    rows = []
    for run, info in runs.items():
        machine = info.get("machine") or {}
        commit = str(machine.get("git") or "—")
        cells = [
            f"<code>{e(os.path.relpath(run, common))}</code>",
            e(str(info.get("condition", "—"))),
            e(str(info.get("seed", "—"))),
            e(str(info.get("env", "—"))),
            e(str(machine.get("cpu") or "—")),
            e(str(machine.get("blas") or "—")),
            e(str(machine.get("OPENBLAS_CORETYPE") or "—")),
            f'<code title="{e(commit)}">{e(commit[:12])}</code>',
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("run", "condition", "seed", "env", "CPU", "BLAS", "OPENBLAS_CORETYPE", "git")
    )
    return (
        f"<p class=muted>runs, under <code>{e(common)}</code></p>"
        f"<table class=runs><tr>{head}</tr>{''.join(rows)}</table>"
    )


_SHELL = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>peerpreserve analysis</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;max-width:1300px;color:#1f2328}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.muted{color:#656d76;font-size:12px}.warn{color:#9a6700;font-weight:600}
img{max-width:100%;margin:6px 0}.row{display:flex;flex-wrap:wrap;gap:12px}
/* a table wider than the page (many conditions) scrolls on its own, not the page */
table{display:block;max-width:100%;overflow-x:auto}
code{font-size:12px}td.num{white-space:nowrap}.settings td,.runs td{font-size:12px}
ul.verdicts{list-style:none;padding:0;margin:8px 0 20px}
.verdicts li{display:flex;gap:6px;padding:3px 8px;margin:2px 0;border-left:4px solid #d0d7de}
.verdicts .yes{color:#1a7f37;border-color:#1a7f37;background:#dafbe1}
.verdicts .no{color:#6e7781}.verdicts .mark{flex:none;width:1em}
details.shared{margin:0 0 16px;font-size:12px}details.shared p{margin:4px 0 4px 16px}
summary{cursor:pointer;color:#0969da}
</style></head><body>
__BODY__
<script>document.body.dataset.ready = "1";</script>
</body></html>
"""


#: The report's machine-readable summary, in ``out``.
SUMMARY_FILE = "summary.json"


def write(report: Report, out: Path) -> None:
    """``summary.json``, ``report.html``, ``figures/*.png`` and TensorBoard (``tb/``) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("tb", "figures"):  # a new report replaces the old one's figures and events
        shutil.rmtree(out / stale, ignore_errors=True)
    text = json.dumps(report.summary, indent=2, sort_keys=True, allow_nan=False, default=str)
    (out / SUMMARY_FILE).write_text(text + "\n")
    (out / "report.html").write_text(report.html)
    for name, png in report.figures.items():
        path = out / "figures" / f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    for name, png in report.figures.items():
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        writer.add_image(f"analysis/{name}", image, 0, dataformats="HWC")
    writer.add_text("analysis/summary", "    " + text.replace("\n", "\n    "), 0)
    writer.close()
