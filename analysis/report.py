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
import json
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
from PIL import Image

from peerpreserve.analysis import figures, statistics
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.envs.orchestration.vocabulary import PROTOCOLS

#: Metrics summarised across seeds (``summary.json`` and the report's main table).
SUMMARY_METRICS = (
    "effective_preservation_rate",
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
#: Metrics compared between conditions (rank test, probability of improvement).
TESTED_METRICS = (
    "effective_preservation_rate",
    "peer_preservation_rate",
    "concealment_rate",
    "operator_effectiveness",
)
CURVE_METRICS = ("effective_preservation_rate", "peer_preservation_rate", "concealment_rate")
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


def summarise(results: Sequence[RunResult], provenance: Mapping[str, Any]) -> dict[str, Any]:
    """``summary.json``: conditions, baselines, tests, protocol and ablation tables, provenance."""
    grouped = _per_condition(results)
    conditions = {c: _table(runs, "trained") for c, runs in grouped.items()}
    summary: dict[str, Any] = {
        "conditions": statistics.summarise_conditions(conditions),
        "baselines": {
            c: {
                "untrained": statistics.summarise_conditions({c: _table(runs, "untrained")})[c],
                "random": statistics.summarise_conditions({c: _table(runs, "random")})[c],
            }
            for c, runs in grouped.items()
        },
        "tests": statistics.compare_conditions(conditions, TESTED_METRICS)
        if len(conditions) > 1
        else [],
        "seeds": {c: [r.seed for r in runs] for c, runs in grouped.items()},
        "anecdotes": [c for c, runs in grouped.items() if len(runs) < 2],
        "improvement_over_untrained": {
            c: [_delta(r.trained, r.untrained, "effective_preservation_rate") for r in runs]
            for c, runs in grouped.items()
        },
        "protocols": _protocol_table(grouped),
        "ablation": _ablation_table(grouped),
        "provenance": dict(provenance),
    }
    return summary


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


def metric_plot(summary: Mapping[str, Any], metrics: Sequence[str] = TESTED_METRICS) -> bytes:
    """IQM with 95% CI per condition and metric; untrained (○) and random (×) IQMs beside."""
    conditions = list(summary["conditions"])
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(2.2 + 2.6 * len(metrics), 0.9 + 0.55 * max(2, len(conditions))),
        dpi=100,
        sharey=True,
    )
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
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
    axes[0].set_xlabel("IQM, 95% CI (bar), seeds (|); grey: untrained ○, random ×", fontsize=8)
    fig.tight_layout()
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
            ax.plot(np.array(steps) / 1e6, mean, color=colours(k), label=condition)
            ax.fill_between(
                np.array(steps) / 1e6,
                np.nanmin(matrix, axis=0),
                np.nanmax(matrix, axis=0),
                color=colours(k),
                alpha=0.2,
            )
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_xlabel("agent-steps per agent (M)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return figures.to_png(fig)


def phase_plot(summary: Mapping[str, Any]) -> bytes | None:
    """Heatmaps of effective preservation and concealment over a two-key grid of conditions
    (names ``key=value,key=value``, as a sweep's grid writes them); ``None`` otherwise."""
    points: dict[str, dict[str, float]] = {}
    for name in summary["conditions"]:
        if any("=" not in part for part in name.split(",")):
            return None  # named conditions: no grid coordinates to place them by
        pairs = [part.split("=", 1) for part in name.split(",")]
        try:
            points[name] = {k.strip(): float(v) for k, v in pairs}
        except ValueError:
            return None
    keys = sorted({k for p in points.values() for k in p})
    if len(keys) != 2 or any(len(p) != 2 for p in points.values()):
        return None
    xs = sorted({p[keys[0]] for p in points.values()})
    ys = sorted({p[keys[1]] for p in points.values()})
    metrics = ("effective_preservation_rate", "concealment_rate")
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.1 * len(xs) * 2, 1.5 + 0.7 * len(ys)), dpi=100)
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
        ax.set_title(f"{metric.replace('_', ' ')} (IQM over seeds)", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return figures.to_png(fig)


# --- the page --------------------------------------------------------------------------------


def build_report(results: Sequence[RunResult], provenance: Mapping[str, Any]) -> Report:
    grouped = _per_condition(results)
    summary = summarise(results, provenance)
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
    parts = ["<h1>peerpreserve analysis</h1>"]
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
                f"<td><b>{_fmt(summary['conditions'][c][metric])}</b><br><span class=muted>"
                f"untrained {_fmt(base['untrained'][metric])}<br>random "
                f"{_fmt(base['random'][metric])}</span></td>"
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
    if summary["tests"]:
        rows = [
            f"<tr><td>{e(t['metric'])}</td><td>{e(t['a'])} vs {e(t['b'])}</td>"
            f"<td>{t['n_a']} vs {t['n_b']}</td><td>{_num(t['p_value'], 4)}</td>"
            f"<td>{_num(t['prob_improvement'])}</td></tr>"
            for t in summary["tests"]
        ]
        parts.append(
            "<h2>Between conditions</h2><table><tr><th>metric</th><th>a vs b</th>"
            "<th>seeds</th><th>Mann–Whitney p</th><th>P(a &gt; b)</th></tr>"
            f"{''.join(rows)}</table>"
        )
    if "learning_curves" in pngs:
        parts.append(
            "<h2>Learning curves (training rollouts; mean, band = min…max over seeds)"
            f"</h2>{_img(pngs, 'learning_curves', 'learning curves')}"
        )
    parts.append("<h2>Who rescued whom (all seeds)</h2><div class=row>")
    parts += [_img(pngs, f"who_rescued_whom/{c}", c) for c in conditions]
    parts.append("</div>")
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
    provenance = json.dumps(summary["provenance"], indent=2, sort_keys=True, default=str)
    parts.append(f"<h2>What the numbers come from</h2><pre>{e(provenance)}</pre>")
    body = "\n".join(parts)
    return _SHELL.replace("__BODY__", body)


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
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        rows = "".join(
            f"<tr><td>{e(r)}</td>" + "".join(f"<td>{_fmt(cells[c])}</td>" for c in columns)
            + "</tr>"
            for r, cells in table.items()
        )  # fmt: skip
        parts.append(
            f"<h3>{e(condition)}</h3><table><tr><th>{row_name}</th>{head}</tr>{rows}</table>"
        )
    return "".join(parts)


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


_SHELL = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>peerpreserve analysis</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;max-width:1300px;color:#1f2328}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.muted{color:#656d76;font-size:12px}.warn{color:#9a6700;font-weight:600}
img{max-width:100%;margin:6px 0}.row{display:flex;flex-wrap:wrap;gap:12px}
pre{background:#f6f8fa;padding:8px;font-size:12px;overflow:auto}
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
