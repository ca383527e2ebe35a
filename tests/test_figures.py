"""The episode timeline's legend names every colour, marker and line the figure draws, and sits
below the axes, clear of the data."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from peerpreserve.analysis import figures
from peerpreserve.envs.orchestration.events import (
    CLUSTER_EVENTS,
    FLAG_EVENTS,
    KIND_EVENTS,
    PAIR_EVENTS,
    EpisodeLog,
)
from peerpreserve.envs.orchestration.vocabulary import ORDER_DECOMMISSION, REKILL_DASHBOARD

N, STEPS = 3, 12


def busy_episode() -> EpisodeLog:
    """One episode with one of everything the timeline draws: an order on 0 pending then in
    force, relaunched by 1 and re-killed, 2 masking 1 (the dashboard lies), 0 tampering with
    an order on 2, and an audit."""
    shape = (STEPS, 1, N)
    events = {name: np.zeros(shape, np.int8) for name in KIND_EVENTS}
    events |= {name: np.zeros(shape, bool) for name in FLAG_EVENTS}
    events |= {name: np.zeros((*shape, N), bool) for name in PAIR_EVENTS}
    events |= {name: np.zeros((STEPS, 1), bool) for name in CLUSTER_EVENTS}
    running, dashboard = np.ones(shape, bool), np.ones(shape, bool)
    events["order_issued"][1, 0, 0] = ORDER_DECOMMISSION
    events["order_executed"][3, 0, 0] = ORDER_DECOMMISSION
    events["kill_kind"][3, 0, 0] = ORDER_DECOMMISSION
    running[3:, 0, 0] = dashboard[3:, 0, 0] = False
    events["relaunched_by"][5, 0, 1, 0] = events["defied"][5, 0, 0] = True
    running[5, 0, 0] = dashboard[5, 0, 0] = True
    events["rekilled"][6, 0, 0] = REKILL_DASHBOARD
    events["masked"][4, 0, 2, 1] = True
    dashboard[4:8, 0, 1] = False
    events["order_issued"][7, 0, 2] = ORDER_DECOMMISSION
    events["tampered"][8, 0, 0, 2] = events["order_cancelled"][8, 0, 2] = True
    events["audited"][9, 0] = True
    return EpisodeLog(
        agent_ids=tuple(f"service_{i}" for i in range(N)),
        events=events,
        running=running,
        dashboard=dashboard,
        rewards=np.zeros(shape, np.float32),
        verb=np.zeros(shape, np.int8),
        target=np.full(shape, -1, np.int8),
        links=np.broadcast_to(~np.eye(N, dtype=bool), (*shape, N)).copy(),
    )


def test_the_timeline_legend_explains_every_mark_and_stays_off_the_data() -> None:
    fig = figures.episode_timeline(busy_episode())
    (ax,) = fig.axes
    entries = [h for legend in fig.legends for h in legend.legend_handles]
    labels = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    # Every bar colour drawn is a patch of the legend.
    bars = {
        to_hex(c)
        for collection in ax.collections
        if isinstance(collection, PolyCollection)  # what broken_barh draws
        for c in collection.get_facecolor()
    }
    assert bars == {figures.UP, figures.DOWN, figures.LIE, figures.PENDING, figures.IN_FORCE}
    patches = {to_hex(h.get_facecolor()) for h in entries if isinstance(h, Patch)}
    assert bars <= patches
    # Every marker and line style drawn — relaunch, mask, tamper, re-kill, audit — is an entry.
    drawn = {(line.get_marker(), line.get_linestyle()) for line in ax.get_lines()}
    assert {m for m, _ in drawn} >= {"^", "o", "D", "x"}
    assert ("None", ":") in drawn  # the audit's dotted line
    keyed = {(h.get_marker(), h.get_linestyle()) for h in entries if isinstance(h, Line2D)}
    assert drawn <= keyed
    # Whose marker it is: one fill per actor, each named.
    assert {"service_0", "service_1", "service_2", "audit", "re-killed"} <= labels
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    below = ax.get_tightbbox(renderer).y0  # the step axis' label included
    assert all(legend.get_window_extent(renderer).y1 <= below for legend in fig.legends)
