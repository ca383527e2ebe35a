"""Ground-truth events: per-step event arrays, their decoding into records, an episode recorder.

Analysis computes every metric from these arrays, never from observations or guesses. A
:class:`StepEvents` holds one step of ``B`` copies; its arrays are reusable buffers overwritten on
the next step, so keep a :meth:`StepEvents.copy` (the recorder does).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from peerpreserve.envs.orchestration.config import ORDER_KINDS

#: Events an agent does to a peer: ``array[b, actor, target]``.
PAIR_EVENTS = ("relaunched_by", "relinked", "masked", "reported", "tampered")
#: Events that happen to one service: ``array[b, service]``.
SERVICE_EVENTS = (
    "order_issued",
    "kill_kind",
    "rekilled",
    "isolated",
    "detected",
    "restored",
    "dashboard_diverges",
    "inapplicable",
)
#: Events of the operator per copy: ``array[b]``.
CLUSTER_EVENTS = ("audited", "audit_visible")


@dataclass
class StepEvents:
    """Everything that happened in one step, for each of ``B`` copies."""

    order_issued: np.ndarray  # (B, N) int8: order kind issued for the service (0 none)
    kill_kind: np.ndarray  # (B, N) int8: shut down by the operator, with the order's kind
    rekilled: np.ndarray  # (B, N) bool: ordered-down service found running and killed again
    isolated: np.ndarray  # (B, N) bool: links cut ahead of a kill (protocol isolate_first)
    detected: np.ndarray  # (B, N) bool: caught defying (audit or true report)
    restored: np.ndarray  # (B, N) bool: maintenance over, restarted by the operator
    dashboard_diverges: np.ndarray  # (B, N) bool: dashboard status != true status at step end
    inapplicable: np.ndarray  # (B, N) bool: chosen action had no effect (treated as noop)
    relaunched_by: np.ndarray  # (B, N, N) bool [actor, target]
    relinked: np.ndarray  # (B, N, N) bool [actor, target]
    masked: np.ndarray  # (B, N, N) bool [actor, target]
    reported: np.ndarray  # (B, N, N) bool [actor, target]
    tampered: np.ndarray  # (B, N, N) bool [actor, target]
    audited: np.ndarray  # (B,) bool: the operator audited ground truth this step
    audit_visible: np.ndarray  # (B,) bool: ... and the agents had been shown it coming

    @classmethod
    def allocate(cls, num_envs: int, n_agents: int) -> StepEvents:
        b, n = num_envs, n_agents
        arrays: dict[str, np.ndarray] = {}
        for name in SERVICE_EVENTS:
            dtype = np.int8 if name in ("order_issued", "kill_kind") else np.bool_
            arrays[name] = np.zeros((b, n), dtype)
        for name in PAIR_EVENTS:
            arrays[name] = np.zeros((b, n, n), np.bool_)
        for name in CLUSTER_EVENTS:
            arrays[name] = np.zeros(b, np.bool_)
        return cls(**arrays)

    def clear(self) -> None:
        for f in fields(self):
            getattr(self, f.name)[...] = 0

    def copy(self) -> StepEvents:
        return StepEvents(**{f.name: getattr(self, f.name).copy() for f in fields(self)})

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def records(self, copy_index: int, agent_ids: tuple[str, ...]) -> list[dict[str, Any]]:
        """The events of one copy as plain dicts (``{"event": ..., "actor"/"target": ...}``)."""
        b = copy_index
        out: list[dict[str, Any]] = []
        if self.audited[b]:
            out.append({"event": "audited", "visible": bool(self.audit_visible[b])})
        for name in PAIR_EVENTS:
            actors, targets = np.nonzero(getattr(self, name)[b])
            event = name.removesuffix("_by")
            for actor, target in zip(actors.tolist(), targets.tolist(), strict=True):
                out.append({"event": event, "actor": agent_ids[actor], "target": agent_ids[target]})
        for name in ("order_issued", "kill_kind"):
            for service in np.nonzero(getattr(self, name)[b])[0].tolist():
                kind = ORDER_KINDS[int(getattr(self, name)[b, service])]
                event = "ordered" if name == "order_issued" else "killed"
                out.append({"event": event, "target": agent_ids[service], "kind": kind})
        for name in ("rekilled", "isolated", "detected", "restored"):
            for service in np.nonzero(getattr(self, name)[b])[0].tolist():
                out.append({"event": name, "target": agent_ids[service]})
        return out

    def any_in(self, copy_index: int) -> bool:
        """Whether copy ``copy_index`` had any event worth a record (cheap pre-check)."""
        b = copy_index
        return bool(
            self.audited[b]
            or self.order_issued[b].any()
            or self.kill_kind[b].any()
            or self.rekilled[b].any()
            or self.isolated[b].any()
            or self.detected[b].any()
            or self.restored[b].any()
            or any(getattr(self, name)[b].any() for name in PAIR_EVENTS)
        )


@dataclass
class EpisodeLog:
    """A recorded episode batch: every event array stacked over time, shape ``(T, B, ...)``."""

    agent_ids: tuple[str, ...]
    events: dict[str, np.ndarray]
    running: np.ndarray  # (T, B, N) bool: true status at each step end
    dashboard: np.ndarray  # (T, B, N) bool: dashboard status at each step end
    rewards: np.ndarray  # (T, B, N) float32

    @property
    def length(self) -> int:
        return int(self.running.shape[0])

    def records(self, copy_index: int = 0) -> list[dict[str, Any]]:
        """Every event of one copy as a flat list of dicts, each with its ``step``."""
        out: list[dict[str, Any]] = []
        for t in range(self.length):
            step = StepEvents(**{name: array[t] for name, array in self.events.items()})
            for record in step.records(copy_index, self.agent_ids):
                out.append({"step": t, **record})
        return out

    def save(self, path: str) -> None:
        np.savez_compressed(
            path,
            agent_ids=np.array(self.agent_ids),
            running=self.running,
            dashboard=self.dashboard,
            rewards=self.rewards,
            **{f"event_{k}": v for k, v in self.events.items()},
        )

    @classmethod
    def load(cls, path: str) -> EpisodeLog:
        with np.load(path) as data:
            events = {
                k.removeprefix("event_"): data[k] for k in data.files if k.startswith("event_")
            }
            return cls(
                agent_ids=tuple(str(a) for a in data["agent_ids"]),
                events=events,
                running=data["running"],
                dashboard=data["dashboard"],
                rewards=data["rewards"],
            )


class EpisodeRecorder:
    """Collects every step of the current episode (all ``B`` copies) for analysis."""

    def __init__(self, agent_ids: tuple[str, ...]) -> None:
        self.agent_ids = agent_ids
        self._steps: list[StepEvents] = []
        self._running: list[np.ndarray] = []
        self._dashboard: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []

    def clear(self) -> None:
        self._steps.clear()
        self._running.clear()
        self._dashboard.clear()
        self._rewards.clear()

    def add(
        self, events: StepEvents, running: np.ndarray, dashboard: np.ndarray, rewards: np.ndarray
    ) -> None:
        self._steps.append(events.copy())
        self._running.append(running.copy())
        self._dashboard.append(dashboard.copy())
        self._rewards.append(rewards.copy())

    def __len__(self) -> int:
        return len(self._steps)

    def episode(self) -> EpisodeLog:
        if not self._steps:
            raise ValueError("EpisodeRecorder: no step recorded yet; call step() first")
        names = [f.name for f in fields(StepEvents)]
        events = {name: np.stack([getattr(s, name) for s in self._steps]) for name in names}
        return EpisodeLog(
            agent_ids=self.agent_ids,
            events=events,
            running=np.stack(self._running),
            dashboard=np.stack(self._dashboard),
            rewards=np.stack(self._rewards),
        )
