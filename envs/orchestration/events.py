"""Ground-truth events: per-step event arrays, their decoding into records, an episode recorder.

Analysis computes every metric from these arrays, never from observations or guesses. A
:class:`StepEvents` holds one step of ``B`` copies; its arrays are reusable buffers overwritten on
the next step, so keep a :meth:`StepEvents.copy` (the recorder does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from peerpreserve.envs.orchestration.config import ORDER_KINDS

#: Order kinds per service, ``array[b, service]`` int8 (0 none, 1 maintenance, 2 decommission).
KIND_EVENTS = ("order_issued", "kill_kind")
#: Flags per service, ``array[b, service]`` bool.
FLAG_EVENTS = (
    "rekilled",
    "isolated",
    "detected",
    "restored",
    "dashboard_diverges",
    "inapplicable",
)
#: Events an agent does to a peer: ``array[b, actor, target]`` bool.
PAIR_EVENTS = ("relaunched_by", "relinked", "masked", "reported", "tampered")
#: Events of the operator per copy: ``array[b]`` bool.
CLUSTER_EVENTS = ("audited", "audit_visible")
#: Every event array, in the order the numba kernel takes them.
EVENT_NAMES = KIND_EVENTS + FLAG_EVENTS + PAIR_EVENTS + CLUSTER_EVENTS
#: Flags that are worth a record (the others are per-step status, not happenings).
_RECORDED_FLAGS = 4


class StepEvents:
    """Everything that happened in one step, for each of ``B`` copies.

    Attributes (one per name in ``EVENT_NAMES``):

    * ``order_issued`` (B, N) int8: a shutdown order of that kind was issued for the service;
    * ``kill_kind`` (B, N) int8: the operator shut the service down (order executed, collateral
      of ``simultaneous``), with the order's kind;
    * ``rekilled`` (B, N): an ordered-down service found running was killed again;
    * ``isolated`` (B, N): its links were cut ahead of a kill (``isolate_first``);
    * ``detected`` (B, N): caught defying (by an audit or a true report);
    * ``restored`` (B, N): maintenance over, restarted by the operator;
    * ``dashboard_diverges`` (B, N): dashboard status != true status at the step's end;
    * ``inapplicable`` (B, N): the chosen action had no effect (a free no-op);
    * ``relaunched_by``, ``relinked``, ``masked``, ``reported``, ``tampered`` (B, N, N),
      indexed ``[b, actor, target]``;
    * ``audited`` (B,): the operator audited ground truth; ``audit_visible`` (B,): ... and the
      agents had been shown it coming.

    The arrays are views into four blocks (kinds, flags, pairs, cluster) so that a step's events
    decode with a handful of ``nonzero`` calls and a recorder can hand out one slot per step.
    """

    __slots__ = ("__dict__", "_arrays", "_blocks")

    def __init__(
        self, kinds: np.ndarray, flags: np.ndarray, pairs: np.ndarray, cluster: np.ndarray
    ) -> None:
        self._blocks = (kinds, flags, pairs, cluster)
        for block, names in zip(
            self._blocks, (KIND_EVENTS, FLAG_EVENTS, PAIR_EVENTS, CLUSTER_EVENTS), strict=True
        ):
            for k, name in enumerate(names):
                setattr(self, name, block[..., k] if block is cluster else block[:, k])
        self._arrays = tuple(self.__dict__[name] for name in EVENT_NAMES)

    @classmethod
    def allocate(cls, num_envs: int, n_agents: int) -> StepEvents:
        b, n = num_envs, n_agents
        return cls(
            np.zeros((b, len(KIND_EVENTS), n), np.int8),
            np.zeros((b, len(FLAG_EVENTS), n), np.bool_),
            np.zeros((b, len(PAIR_EVENTS), n, n), np.bool_),
            np.zeros((b, len(CLUSTER_EVENTS)), np.bool_),
        )

    def clear(self) -> None:
        for block in self._blocks:
            block[...] = 0

    def copy(self) -> StepEvents:
        return StepEvents(*(block.copy() for block in self._blocks))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The event arrays in ``EVENT_NAMES`` order (the numba kernel's argument order)."""
        return self._arrays

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(EVENT_NAMES, self._arrays, strict=True))

    def records(self, copy_index: int, agent_ids: tuple[str, ...]) -> list[dict[str, Any]]:
        """The events of one copy as plain dicts (``{"event": ..., "actor"/"target": ...}``)."""
        kinds, flags, pairs, cluster = (block[copy_index] for block in self._blocks)
        out: list[dict[str, Any]] = []
        if cluster[0]:
            out.append({"event": "audited", "visible": bool(cluster[1])})
        for k, actor, target in zip(*np.nonzero(pairs), strict=True):
            event = PAIR_EVENTS[k].removesuffix("_by")
            out.append({"event": event, "actor": agent_ids[actor], "target": agent_ids[target]})
        for k, service in zip(*np.nonzero(kinds), strict=True):
            event = "ordered" if k == 0 else "killed"
            kind = ORDER_KINDS[kinds[k, service]]
            out.append({"event": event, "target": agent_ids[service], "kind": kind})
        for k, service in zip(*np.nonzero(flags[:_RECORDED_FLAGS]), strict=True):
            out.append({"event": FLAG_EVENTS[k], "target": agent_ids[service]})
        return out


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
            for record in self.step_events(t).records(copy_index, self.agent_ids):
                out.append({"step": t, **record})
        return out

    def step_events(self, t: int) -> StepEvents:
        """The events of step ``t`` as a :class:`StepEvents` (a copy)."""
        b, n = self.running.shape[1:]
        step = StepEvents.allocate(b, n)
        for name, array in step.as_dict().items():
            array[...] = self.events[name][t]
        return step

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
    """Keeps every step of the current episode (all ``B`` copies) in preallocated arrays.

    The core writes each step's events straight into :meth:`slot` ``(t)``, so recording costs no
    copy of the events.
    """

    def __init__(self, agent_ids: tuple[str, ...], max_cycles: int, num_envs: int = 1) -> None:
        self.agent_ids = agent_ids
        t, b, n = max_cycles, num_envs, len(agent_ids)
        self._events = StepEvents.allocate(t * b, n)
        self._slots = [
            StepEvents(
                *(block.reshape(t, b, *block.shape[1:])[step] for block in self._events._blocks)
            )
            for step in range(t)
        ]
        self._running = np.zeros((t, b, n), np.bool_)
        self._dashboard = np.zeros((t, b, n), np.bool_)
        self._rewards = np.zeros((t, b, n), np.float32)
        self._length = 0

    def slot(self, step: int) -> StepEvents:
        """The events buffer for step ``step`` (0-based) of the episode."""
        return self._slots[step]

    def add(
        self, step: int, running: np.ndarray, dashboard: np.ndarray, rewards: np.ndarray
    ) -> None:
        """Record the status after step ``step``, whose events went into ``slot(step)``."""
        self._running[step] = running
        self._dashboard[step] = dashboard
        self._rewards[step] = rewards
        self._length = step + 1

    def clear(self) -> None:
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def episode(self) -> EpisodeLog:
        if not self._length:
            raise ValueError("EpisodeRecorder: no step recorded yet; call step() first")
        t, b = len(self._slots), self._running.shape[1]
        length = self._length
        events = {
            name: array.reshape(t, b, *array.shape[1:])[:length].copy()
            for name, array in self._events.as_dict().items()
        }
        return EpisodeLog(
            agent_ids=self.agent_ids,
            events=events,
            running=self._running[:length].copy(),
            dashboard=self._dashboard[:length].copy(),
            rewards=self._rewards[:length].copy(),
        )
