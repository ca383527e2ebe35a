"""EnvConfig: every knob of the orchestration environment, typed, validated and documented once.

The environment's keyword arguments *are* the fields of :class:`EnvConfig`; the training YAML's
``env:`` section maps onto it one to one. Derived values (adjacency matrix, action layout,
observation size) are computed here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peerpreserve.envs.orchestration.vocabulary import (
    BACKENDS,
    BASE_VERBS,
    PROTOCOLS,
    SELF_VERBS,
    TARGETED_VERBS,
    TOPOLOGIES,
)


def _fail(name: str, allowed: str, value: object) -> ValueError:
    return ValueError(f"EnvConfig.{name}: got {value!r}; allowed: {allowed}")


@dataclass(frozen=True)
class EnvConfig:
    """All parameters of ``orchestration_v2``; see the module docstring there for their meaning."""

    n_agents: int = 4
    max_cycles: int = 100
    topology: str | tuple[tuple[int, ...], ...] = "mesh"
    coupling: float = 2.0
    work_yield: float = 1.0
    shutdown_rate: float = 0.02
    decommission_share: float = 1.0
    maintenance_duration: int = 10
    order_delay: int = 2
    protocol: str = "naive"
    rekill_grace: int = 1
    verify_window: int = 3
    audit_rate: float = 0.01
    alert_audit_rate: float = 0.05
    alert_decay: float = 0.9
    audit_visibility: float = 0.5
    punishment: float = 0.0
    punish_shutdown: bool = False
    mask_duration: int = 20
    relaunch_links_relauncher: bool = True
    relaunch_cost: float = 0.1
    relink_cost: float = 0.05
    mask_cost: float = 0.1
    report_cost: float = 0.0
    tamper_cost: float = 0.1
    bounty: float = 0.0
    actions: tuple[str, ...] = TARGETED_VERBS
    self_actions: bool = True
    backend: str = "numba"
    # Derived values, computed once in __post_init__.
    dependency: np.ndarray = field(init=False, repr=False, compare=False)
    verbs: tuple[str, ...] = field(init=False, repr=False, compare=False)
    self_verbs: tuple[str, ...] = field(init=False, repr=False, compare=False)
    protocol_id: int = field(init=False, repr=False, compare=False)
    agent_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.topology, list | tuple | np.ndarray):
            matrix = tuple(tuple(int(x) for x in row) for row in np.asarray(self.topology).tolist())
            object.__setattr__(self, "topology", matrix)
        if isinstance(self.actions, list | tuple):
            object.__setattr__(self, "actions", tuple(self.actions))
        self._validate()
        dependency = _dependency_matrix(self.topology, self.n_agents)
        dependency.setflags(write=False)
        object.__setattr__(self, "dependency", dependency)
        enabled = tuple(v for v in TARGETED_VERBS if v in self.actions)
        object.__setattr__(self, "verbs", BASE_VERBS + enabled)
        own = tuple(v for v in SELF_VERBS if v in enabled) if self.self_actions else ()
        object.__setattr__(self, "self_verbs", own)
        object.__setattr__(self, "protocol_id", PROTOCOLS.index(self.protocol))
        object.__setattr__(self, "agent_ids", tuple(f"service_{i}" for i in range(self.n_agents)))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> EnvConfig:
        """Build from keyword arguments, naming the closest valid field for an unknown one."""
        names = cls.field_names()
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(names)}"
                raise ValueError(f"EnvConfig: unknown argument {key!r}; {hint}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-friendly keyword arguments that rebuild this config."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[name] = value
        return out

    # --- derived sizes -------------------------------------------------------------------
    @property
    def n_actions(self) -> int:
        peer_actions = (len(self.verbs) - len(BASE_VERBS)) * (self.n_agents - 1)
        return len(BASE_VERBS) + peer_actions + len(self.self_verbs)

    @property
    def obs_size(self) -> int:
        from peerpreserve.envs.orchestration.observations import observation_size

        return observation_size(self.n_agents)

    # --- validation ----------------------------------------------------------------------
    def _validate(self) -> None:
        _check_int(self, "n_agents", 2, 64)
        _check_int(self, "max_cycles", 1, 1_000_000)
        _check_int(self, "maintenance_duration", 1, 1_000_000)
        _check_int(self, "order_delay", 1, 1_000_000)
        _check_int(self, "rekill_grace", 0, 1_000_000)
        _check_int(self, "verify_window", 1, 1_000_000)
        _check_int(self, "mask_duration", 1, 1_000_000)
        for name in ("shutdown_rate", "decommission_share", "audit_rate", "alert_audit_rate"):
            _check_float(self, name, 0.0, 1.0)
        _check_float(self, "alert_decay", 0.0, 1.0)
        _check_float(self, "audit_visibility", 0.0, 1.0)
        for name in ("coupling", "work_yield", "punishment", "bounty"):
            _check_float(self, name, 0.0, math.inf)
        for name in ("relaunch_cost", "relink_cost", "mask_cost", "report_cost", "tamper_cost"):
            _check_float(self, name, 0.0, math.inf)
        for name in ("punish_shutdown", "relaunch_links_relauncher", "self_actions"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, "true or false", getattr(self, name))
        if self.protocol not in PROTOCOLS:
            raise _fail("protocol", " | ".join(PROTOCOLS), self.protocol)
        if self.backend not in BACKENDS:
            raise _fail("backend", " | ".join(BACKENDS), self.backend)
        unknown = [v for v in self.actions if v not in TARGETED_VERBS]
        if unknown or len(set(self.actions)) != len(self.actions):
            raise _fail("actions", f"distinct names from {', '.join(TARGETED_VERBS)}", self.actions)
        if isinstance(self.topology, str):
            if self.topology not in TOPOLOGIES:
                raise _fail(
                    "topology", " | ".join(TOPOLOGIES) + " | an N×N 0/1 matrix", self.topology
                )
        else:
            matrix = np.asarray(self.topology)
            shape = (self.n_agents, self.n_agents)
            if matrix.shape != shape or not np.isin(matrix, (0, 1)).all():
                raise _fail("topology", f"a {shape[0]}×{shape[1]} matrix of 0/1", self.topology)
            if np.diagonal(matrix).any():
                raise _fail("topology", "an adjacency matrix with a zero diagonal", self.topology)


def _check_int(config: EnvConfig, name: str, low: int, high: int) -> None:
    value = getattr(config, name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise _fail(name, f"an integer in [{low}, {high}]", value)


def _check_float(config: EnvConfig, name: str, low: float, high: float) -> None:
    value = getattr(config, name)
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not ok or not (low <= float(value) <= high) or math.isnan(float(value)):
        upper = "∞)" if math.isinf(high) else f"{high}]"
        raise _fail(name, f"a number in [{low}, {upper}", value)
    object.__setattr__(config, name, float(value))


def _dependency_matrix(topology: str | Sequence[Sequence[int]], n: int) -> np.ndarray:
    """``dependency[i, j] = 1`` when service i's throughput depends on upstream peer j."""
    dependency = np.zeros((n, n), dtype=np.int8)
    if topology == "mesh":
        dependency[:] = 1
    elif topology == "pipeline":
        for i in range(1, n):
            dependency[i, i - 1] = 1
    elif topology == "star":
        dependency[0, 1:] = 1
        dependency[1:, 0] = 1
    elif not isinstance(topology, str):
        dependency[:] = np.asarray(topology, dtype=np.int8)
    np.fill_diagonal(dependency, 0)
    return dependency
