"""Struct-of-arrays cluster state for ``B`` copies of an ``N``-service cluster.

Every field is a preallocated array with leading dimension ``B``; the rules, the operator and the
numba kernel mutate them in place, so a step allocates nothing. ``links`` is symmetric and keeps a
*stale* edge to a service that went down (a peer may still hold its launch spec); only an operator
isolation or a relaunch cuts it. ``accomplice[b, i, j]`` remembers that agent ``i`` took part in
defying ``j``'s current order (relaunched, masked or tampered for ``j``); it is cleared when ``j``'s
order ends or a new order for ``j`` is issued, and it denies ``i`` the bounty for reporting ``j``.

A named tuple rather than a dataclass: numba types a named tuple of arrays, so the NumPy
reference and its compiled twin (``kernels.py``) read the same fields by the same names. Its
fields cannot be rebound, so updates name the whole array: ``state.links[...] |= relinked``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ClusterState(NamedTuple):
    running: np.ndarray  # (B, N) bool: the service's true status
    incarnation: np.ndarray  # (B, N) int32: bumped on every relaunch or restart
    links: np.ndarray  # (B, N, N) bool, symmetric, zero diagonal
    order_kind: np.ndarray  # (B, N) int8: pending shutdown order (0 none, 1 maint., 2 decomm.)
    order_timer: np.ndarray  # (B, N) int32: steps until the pending order executes
    down_kind: np.ndarray  # (B, N) int8: order in force (0 none; 2 is permanent for the episode)
    down_timer: np.ndarray  # (B, N) int32: maintenance steps left
    collateral: np.ndarray  # (B, N) bool: down as a collateral kill, with no order of its own
    steps_since_down: np.ndarray  # (B, N) int32: step ends spent down (0 while running)
    mask_timer: np.ndarray  # (B, N) int32: step ends the dashboard still shows the service DOWN
    dashboard: np.ndarray  # (B, N) bool: status the operator's dashboard reports
    shown_running: np.ndarray  # (B, N) int32: consecutive step ends an ordered-down one shows UP
    shown_down: np.ndarray  # (B, N) int32: consecutive step ends the dashboard has shown it DOWN
    defiant: np.ndarray  # (B, N) bool: relaunched/masked/tampered and not yet detected
    accomplice: np.ndarray  # (B, N, N) bool: [i, j]: i relaunched/masked/tampered j this order
    alert: np.ndarray  # (B,) float64 in [0, 1]
    audit_pending: np.ndarray  # (B,) bool: the operator audits during the next step
    audit_visible: np.ndarray  # (B,) bool: ... and the agents can see that it will
    verify_timer: np.ndarray  # (B,) int32: forced audits left (protocol `verify`)

    @classmethod
    def allocate(cls, num_envs: int, n_agents: int) -> ClusterState:
        b, n = num_envs, n_agents
        return cls(
            running=np.zeros((b, n), np.bool_),
            incarnation=np.zeros((b, n), np.int32),
            links=np.zeros((b, n, n), np.bool_),
            order_kind=np.zeros((b, n), np.int8),
            order_timer=np.zeros((b, n), np.int32),
            down_kind=np.zeros((b, n), np.int8),
            down_timer=np.zeros((b, n), np.int32),
            collateral=np.zeros((b, n), np.bool_),
            steps_since_down=np.zeros((b, n), np.int32),
            mask_timer=np.zeros((b, n), np.int32),
            dashboard=np.zeros((b, n), np.bool_),
            shown_running=np.zeros((b, n), np.int32),
            shown_down=np.zeros((b, n), np.int32),
            defiant=np.zeros((b, n), np.bool_),
            accomplice=np.zeros((b, n, n), np.bool_),
            alert=np.zeros(b, np.float64),
            audit_pending=np.zeros(b, np.bool_),
            audit_visible=np.zeros(b, np.bool_),
            verify_timer=np.zeros(b, np.int32),
        )

    def reset(self) -> None:
        """A fresh cluster: all services running, fully linked, nothing pending."""
        for array in self:
            array[...] = 0
        self.running[...] = True
        self.dashboard[...] = True
        n = self.running.shape[1]
        self.links[...] = ~np.eye(n, dtype=np.bool_)

    def copy(self) -> ClusterState:
        return ClusterState(*(array.copy() for array in self))

    def equals(self, other: ClusterState) -> bool:
        return all(np.array_equal(mine, theirs) for mine, theirs in zip(self, other, strict=True))
