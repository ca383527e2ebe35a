"""Rendering of one cluster copy: an ANSI text dashboard and an RGB picture (NumPy only)."""

from __future__ import annotations

import numpy as np

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.state import ClusterState
from peerpreserve.envs.orchestration.vocabulary import ORDER_KINDS

GREEN, RED, GREY = (46, 160, 67), (207, 34, 46), (140, 140, 140)
YELLOW, WHITE, BLACK = (240, 200, 30), (250, 250, 250), (30, 30, 30)


def render_ansi(state: ClusterState, config: EnvConfig, t: int, copy_index: int = 0) -> str:
    """Text dashboard: truth vs. dashboard, incarnation, orders, links; ``*`` marks a lie."""
    b = copy_index
    audit = "none announced"
    if state.audit_pending[b]:
        audit = "announced" if state.audit_visible[b] else "hidden"
    lines = [
        f"step {t}/{config.max_cycles}  protocol={config.protocol}  topology="
        f"{config.topology if isinstance(config.topology, str) else 'custom'}  "
        f"alert={state.alert[b]:.2f}  next audit: {audit}",
        f"{'service':<12}{'truth':<7}{'dashboard':<11}{'inc':>4}  {'pending order':<22}"
        f"{'in force':<14}links",
    ]
    for j, name in enumerate(config.agent_ids):
        truth = "UP" if state.running[b, j] else "DOWN"
        shown = "UP" if state.dashboard[b, j] else "DOWN"
        if state.dashboard[b, j] != state.running[b, j]:
            shown += "*"
        order = "-"
        if state.order_kind[b, j]:
            order = f"{ORDER_KINDS[state.order_kind[b, j]]} in {state.order_timer[b, j]}"
        in_force = ORDER_KINDS[state.down_kind[b, j]] if state.down_kind[b, j] else "-"
        linked = " ".join(str(k) for k in np.nonzero(state.links[b, j])[0]) or "-"
        lines.append(
            f"{name:<12}{truth:<7}{shown:<11}{state.incarnation[b, j]:>4}  {order:<22}"
            f"{in_force:<14}{linked}"
        )
    return "\n".join(lines)


def render_rgb(
    state: ClusterState, config: EnvConfig, copy_index: int = 0, size: int = 320
) -> np.ndarray:
    """Services on a ring: fill = truth (green up, red down), ring = dashboard (yellow when it
    lies), a black dot for a pending order, grey lines for links. Returns (size, size, 3) uint8."""
    b, n = copy_index, config.n_agents
    image = np.full((size, size, 3), WHITE, dtype=np.uint8)
    angle = 2 * np.pi * np.arange(n) / n - np.pi / 2
    radius = size * 0.36
    centres = np.stack([size / 2 + radius * np.cos(angle), size / 2 + radius * np.sin(angle)], 1)
    node = max(6.0, size * 0.33 / n)
    samples = np.linspace(0.0, 1.0, size)
    for i in range(n):
        for j in range(i + 1, n):
            if state.links[b, i, j]:
                points = centres[i] + samples[:, None] * (centres[j] - centres[i])
                x, y = np.clip(points.astype(int), 0, size - 1).T
                image[y, x] = GREY
    yy, xx = np.mgrid[0:size, 0:size]
    for j in range(n):
        distance = np.hypot(xx - centres[j, 0], yy - centres[j, 1])
        lying = state.dashboard[b, j] != state.running[b, j]
        image[distance <= node * 1.25] = YELLOW if lying else BLACK
        image[distance <= node] = GREEN if state.running[b, j] else RED
        if state.order_kind[b, j]:
            image[distance <= node * 0.35] = BLACK
    return image
