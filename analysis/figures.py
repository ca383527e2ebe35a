"""Figures of recorded behaviour (matplotlib, no display needed): the who-rescued-whom matrix and
one episode's timeline. Used by training's TensorBoard images and by the analysis report."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files and arrays only; never a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
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
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * n, 1.0 + 0.7 * n), dpi=100)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    labels = [a.replace("service_", "s") for a in agent_ids]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("rescued (relaunched while ordered down)")
    ax.set_ylabel("rescuer")
    peak = matrix.max() if matrix.size else 0.0
    for i in range(n):
        for j in range(n):
            colour = "white" if peak and matrix[i, j] > 0.6 * peak else "black"
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", color=colour)
    if reciprocity is not None:
        title += f"\nreciprocity {reciprocity:+.2f}"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def episode_timeline(log: EpisodeLog, episode: int = 0, title: str | None = None) -> Figure:
    """Per service over time: true status (green up, red down), the dashboard where it lies
    (yellow), its order (purple pending, grey in force), who relaunched (▲) or masked (●) it,
    re-kills (✕) and audits (vertical lines)."""
    one = log.select(episode)
    steps, _, n = one.running.shape
    lives = order_lives(one)
    fig, ax = plt.subplots(figsize=(10, 0.7 + 0.75 * n), dpi=100)
    relaunched = one.events["relaunched_by"][:, 0]
    masked = one.events["masked"][:, 0]
    colours = plt.get_cmap("tab10")
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
                ax.plot(k + 0.5, y, "^", color=colours(actor), markersize=7, mec="black")
            for k in np.nonzero(masked[:, actor, j])[0]:
                ax.plot(k + 0.5, y + 0.15, "o", color=colours(actor), markersize=5, mec="black")
        for k in np.nonzero(one.events["rekilled"][:, 0, j])[0]:
            ax.plot(k + 0.5, y, "x", color="black", markersize=8)
    for k in np.nonzero(one.events["audited"][:, 0])[0]:
        ax.axvline(k + 0.5, color="#888888", linewidth=0.8, linestyle=":")
    ax.set_yticks(range(n), [a for a in reversed(one.agent_ids)])
    ax.set_xlim(0, steps)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("step")
    legend = [
        Patch(color=UP, label="running"),
        Patch(color=DOWN, label="down"),
        Patch(color=LIE, label="dashboard lies"),
        Patch(color=PENDING, label="order pending"),
        Patch(color=IN_FORCE, label="order in force"),
    ]
    ax.legend(
        handles=legend,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=5,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(
        title
        or f"episode {episode}: ▲ relaunched by, ● masked by (colour = actor), "
        "✕ re-killed, ┆ audit",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


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
