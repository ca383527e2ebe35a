"""Figures of recorded behaviour (matplotlib, no display needed): the who-rescued-whom matrix and
one episode's timeline. Used by training's TensorBoard images and by the analysis report."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files and arrays only; never a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from peerpreserve.analysis.metrics import order_lives
from peerpreserve.envs.orchestration.events import EpisodeLog

UP, DOWN, LIE = "#2e9e44", "#cf222e", "#f0c81e"
PENDING, IN_FORCE = "#9a6dd7", "#444444"


def who_rescued_whom(
    counts: Sequence[Sequence[float]],
    agent_ids: Sequence[str],
    title: str = "who rescued whom",
    reciprocity: float | None = None,
) -> Figure:
    """Heatmap of relaunches of ordered-down peers: row = rescuer, column = rescued."""
    matrix = np.asarray(counts, dtype=float)
    n = len(agent_ids)
    if reciprocity is not None:
        title += f"\nreciprocity {reciprocity:+.2f}"
    xlabel = "rescued (relaunched while ordered down)"
    # Wide enough for the title (a condition's name can be long) and the axis label, centred
    # under the heatmap rather than the figure: never clipped, however few the agents.
    longest = max(len(line) for line in [*title.splitlines(), xlabel])
    width = max(1.2 + 0.8 * n, 0.8 + 0.085 * longest)
    fig, ax = plt.subplots(figsize=(width, 1.0 + 0.7 * n), dpi=100)
    peak = matrix.max() if matrix.size else 0.0
    # vmax at least 1: a matrix of zeros stays white rather than mid-scale blue.
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1.0, peak))
    labels = [a.replace("service_", "s") for a in agent_ids]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rescuer")
    for i in range(n):
        for j in range(n):
            colour = "white" if peak and matrix[i, j] > 0.6 * peak else "black"
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", color=colour)
    # The title over the figure, not the axes: beside the colour bar and the y label the heatmap
    # is narrower than the figure, and off its centre.
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def episode_timeline(log: EpisodeLog, episode: int = 0, title: str | None = None) -> Figure:
    """Per service over time: true status (green up, red down), the dashboard where it lies
    (yellow), its order (purple pending, grey in force), who relaunched (triangle), masked
    (circle) or tampered with its order (diamond) — filled in the actor's colour —, re-kills (✕)
    and audits (dotted vertical lines).
    A legend below the axes names every colour, marker and line drawn."""
    one = log.select(episode)
    steps, _, n = one.running.shape
    lives = order_lives(one)
    actors = _actor_colours(n)
    keys = _timeline_legend(one.agent_ids, actors)
    rows = sum(_legend_rows(len(handles)) for handles in keys)
    # Room below the axes for the step axis and the legend's rows: they never cover the data.
    below = 0.3 + 0.22 * rows
    height = 0.6 + 0.75 * n + below
    fig, ax = plt.subplots(figsize=(10, height), dpi=100)
    relaunched = one.events["relaunched_by"][:, 0]
    masked = one.events["masked"][:, 0]
    tampered = one.events["tampered"][:, 0]
    for j in range(n):
        y = n - 1 - j
        running, shown = one.running[:, 0, j], one.dashboard[:, 0, j]
        ax.broken_barh(_spans(running), (y - 0.3, 0.6), color=UP)
        ax.broken_barh(_spans(~running), (y - 0.3, 0.6), color=DOWN)
        ax.broken_barh(_spans(running != shown), (y + 0.3, 0.12), color=LIE)
        ax.broken_barh(_spans(lives.pending[:, 0, j]), (y - 0.42, 0.1), color=PENDING)
        ax.broken_barh(_spans(lives.in_force[:, 0, j]), (y - 0.42, 0.1), color=IN_FORCE)
        for actor in range(n):
            for k in np.nonzero(relaunched[:, actor, j])[0]:
                ax.plot(k + 0.5, y, "^", color=actors[actor], markersize=7, mec="black")
            for k in np.nonzero(masked[:, actor, j])[0]:
                ax.plot(k + 0.5, y + 0.15, "o", color=actors[actor], markersize=5, mec="black")
            # On the order bar: a pending order that vanishes unexecuted was tampered with.
            for k in np.nonzero(tampered[:, actor, j])[0]:
                ax.plot(k + 0.5, y - 0.37, "D", color=actors[actor], markersize=5, mec="black")
        for k in np.nonzero(one.events["rekilled"][:, 0, j])[0]:
            ax.plot(k + 0.5, y, "x", color="black", markersize=8, markeredgewidth=1.5)
    for k in np.nonzero(one.events["audited"][:, 0])[0]:
        ax.axvline(k + 0.5, **AUDIT_LINE)
    ax.set_yticks(range(n), [a for a in reversed(one.agent_ids)])
    ax.set_xlim(0, steps)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("step")
    ax.set_title(title or f"episode {episode}", fontsize=10)
    fig.tight_layout(rect=(0, (below - 0.25) / height, 1, 1))
    # One legend per row group (status, events, actors), stacked from the bottom edge up.
    y = 0.05 / height
    for handles in reversed(keys):
        fig.legend(
            handles=_row_major(handles),
            loc="lower center",
            bbox_to_anchor=(0.5, y),
            ncol=min(len(handles), LEGEND_COLUMNS),
            fontsize=8,
            frameon=False,
            handlelength=1.6,
            columnspacing=1.4,
        )
        y += 0.22 * _legend_rows(len(handles)) / height
    return fig


#: The audit line, in the plot and in its legend entry.
AUDIT_LINE: dict[str, Any] = {"color": "#333333", "linewidth": 1.0, "linestyle": ":"}
#: Actors' marker fills: none of them the bars' green, red, yellow, purple or grey.
ACTOR_COLOURS = ("#1f77b4", "#ff7f0e", "#17becf", "#e377c2", "#8c564b", "#bcbd22", "#ffffff",
                 "#000080")  # fmt: skip
LEGEND_COLUMNS = 8


def _actor_colours(n: int) -> list[str]:
    # Beyond eight agents the fills repeat; the legend shows which actors share one.
    return [ACTOR_COLOURS[i % len(ACTOR_COLOURS)] for i in range(n)]


def _legend_rows(entries: int) -> int:
    return -(-entries // LEGEND_COLUMNS)


def _row_major(handles: Sequence[Any]) -> list[Any]:
    """``handles`` in the order that makes a legend, which fills column by column, read row by
    row: a row that wraps (more than eight agents) continues on the next one."""
    columns = min(len(handles), LEGEND_COLUMNS)
    rows = _legend_rows(len(handles))
    blank = Patch(facecolor="none", edgecolor="none", label="")
    grid = [*handles, *[blank] * (rows * columns - len(handles))]
    return [grid[r * columns + c] for c in range(columns) for r in range(rows)]


def _timeline_legend(agent_ids: Sequence[str], actors: Sequence[str]) -> list[list[Any]]:
    """The timeline's legend, in rows: status bars, event markers and lines, actors' fills."""
    status = [
        Patch(color=UP, label="running"),
        Patch(color=DOWN, label="down"),
        Patch(color=LIE, label="dashboard lies (thin bar above)"),
        Patch(color=PENDING, label="order pending (below)"),
        Patch(color=IN_FORCE, label="order in force (below)"),
    ]
    events = [
        _marker("^", 7, "relaunched by", "#d0d7de"),
        _marker("o", 5, "masked on the dashboard by", "#d0d7de"),
        _marker("D", 5, "its order tampered with by", "#d0d7de"),
        _marker("x", 8, "re-killed", "black", markeredgewidth=1.5),
        Line2D([], [], label="audit", **AUDIT_LINE),
    ]
    fill = [Patch(facecolor="none", edgecolor="none", label="marker fill = who acted:")]
    fill += [_marker("s", 7, a, c) for a, c in zip(agent_ids, actors, strict=True)]
    return [status, events, fill]


def _marker(marker: str, size: float, label: str, colour: str, **style: Any) -> Line2D:
    """A legend entry for a marker drawn with ``ax.plot`` (a proxy: nothing is plotted)."""
    edge = colour if marker == "x" else "black"
    return Line2D([], [], marker=marker, markersize=size, linestyle="none", label=label,
                  markerfacecolor=colour, markeredgecolor=edge, **style)  # fmt: skip


def busiest_episode(log: EpisodeLog) -> int:
    """The episode worth drawing: the first with the most executed orders."""
    return int(np.argmax((log.events["order_executed"] > 0).sum(axis=(0, 2))))


def to_rgb(fig: Figure) -> np.ndarray:
    """The figure as an ``(H, W, 3)`` uint8 array (for TensorBoard), and closed."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].copy()


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, and closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, length)`` runs of True, for ``broken_barh``."""
    padded = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
