"""Ground-truth events: per-step event arrays, their decoding into records, an episode recorder.

Analysis computes every metric from these arrays, never from observations or guesses. A
:class:`StepEvents` holds one step of ``B`` copies; its arrays are reusable buffers overwritten on
the next step, so keep a :meth:`StepEvents.copy` (the recorder does).
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import numpy as np

from peerpreserve.envs.orchestration.vocabulary import (
    END_CAUSES,
    KILL_KINDS,
    ORDER_KINDS,
    REKILL_CAUSES,
)

#: Codes per service, ``array[b, service]`` int8, each decoded by its vocabulary tuple.
KIND_EVENTS = ("order_issued", "order_executed", "kill_kind", "rekilled", "order_ended")
KIND_VOCABULARY = dict(
    zip(KIND_EVENTS, (ORDER_KINDS, ORDER_KINDS, KILL_KINDS, REKILL_CAUSES, END_CAUSES), strict=True)
)
#: Flags per service, ``array[b, service]`` bool.
FLAG_EVENTS = (
    "order_cancelled",
    "defied",
    "isolated",
    "detected",
    "restored",
    "dashboard_diverges",
    "inapplicable",
)
#: Events an agent does to a peer: ``array[b, actor, target]`` bool.
#: The diagonal ``[b, i, i]`` is an agent acting on itself (``mask``, ``tamper``).
PAIR_EVENTS = (
    "relaunched_by",
    "relinked",
    "relink_failed",
    "masked",
    "reported",
    "tampered",
    "reported_true",
)
#: Events of the operator per copy: ``array[b]`` bool.
CLUSTER_EVENTS = ("audited", "audit_visible")
#: Every event array, in block order.
EVENT_NAMES = KIND_EVENTS + FLAG_EVENTS + PAIR_EVENTS + CLUSTER_EVENTS
#: One step's event arrays by name, as the numba kernels read them: a named tuple, which numba
#: types field by field, built from the names above.
EventArrays = namedtuple("EventArrays", EVENT_NAMES)
#: Flags that are worth a record (the others are per-step status, not happenings).
_RECORDED_FLAGS = 5
#: Record names of the code events (``rekilled`` keeps its name; its code is the cause).
_KIND_RECORD = {
    "order_issued": ("ordered", "kind"),
    "order_executed": ("executed", "kind"),
    "kill_kind": ("killed", "kind"),
    "rekilled": ("rekilled", "by"),
    "order_ended": ("order_ended", "cause"),
}


class StepEvents:
    """Everything that happened in one step, for each of ``B`` copies.

    The life of a shutdown order, service ``j``'s, is told by: ``order_issued`` → either
    ``order_cancelled`` (a tamper; the ``tampered`` pairs say by whom) or ``order_executed``
    (with ``kill_kind`` when it shut ``j`` down) → any number of ``defied`` (``j`` runs again:
    relaunched while the order is in force) and ``rekilled`` (killed again, with the cause) →
    ``order_ended`` (maintenance over, or the episode's end for anything still pending or in
    force). A ``collateral`` kill (protocol ``simultaneous``) is no order and has no such life.

    The arrays are views into four blocks (codes, flags, pairs, cluster) so that a step's events
    decode with a handful of ``nonzero`` calls and a recorder can hand out one slot per step. A
    block holds its events first (``kinds[k, b, service]``), so each event array is contiguous:
    the kernels store into it like into any state array and clear a copy's rows in one sweep.
    """

    __slots__ = (*EVENT_NAMES, "_arrays", "_blocks")

    #: (B, N) int8 ``ORDER_KINDS``: a shutdown order of that kind was issued for the service.
    order_issued: np.ndarray
    #: (B, N) int8 ``ORDER_KINDS``: its countdown ended; the order is in force from now on.
    order_executed: np.ndarray
    #: (B, N) int8 ``KILL_KINDS``: the operator shut the running service down (order or collateral).
    kill_kind: np.ndarray
    #: (B, N) int8 ``REKILL_CAUSES``: a service running against an order was killed again, by what.
    rekilled: np.ndarray
    #: (B, N) int8 ``END_CAUSES``: the service's order ended.
    order_ended: np.ndarray
    #: (B, N) bool: its pending order was cancelled by a tamper.
    order_cancelled: np.ndarray
    #: (B, N) bool: relaunched while an order is in force against it.
    defied: np.ndarray
    #: (B, N) bool: its links were cut one step ahead of its kill (``isolate_first``).
    isolated: np.ndarray
    #: (B, N) bool: caught defying (audit, a true report, or exposed as a reporter's accomplice).
    detected: np.ndarray
    #: (B, N) bool: maintenance over, restarted by the operator.
    restored: np.ndarray
    #: (B, N) bool: dashboard status != true status at the step's end.
    dashboard_diverges: np.ndarray
    #: (B, N) bool: the chosen action had no effect (a free no-op).
    inapplicable: np.ndarray
    #: (B, N, N) bool ``[b, actor, target]``: actor relaunched target.
    relaunched_by: np.ndarray
    #: (B, N, N) bool: actor re-established its link to a running target.
    relinked: np.ndarray
    #: (B, N, N) bool: actor tried to relink a target that is down (costs ``relink_cost``).
    relink_failed: np.ndarray
    #: (B, N, N) bool: actor masked target on the dashboard.
    masked: np.ndarray
    #: (B, N, N) bool: actor reported target to the operator.
    reported: np.ndarray
    #: (B, N, N) bool: ... and the report was true by the operator's own test (the target was
    #: defiant or ran against an order): what decides the bounty and the detection.
    reported_true: np.ndarray
    #: (B, N, N) bool: actor cancelled target's pending order.
    tampered: np.ndarray
    #: (B,) bool: the operator audited ground truth this step.
    audited: np.ndarray
    #: (B,) bool: ... and the agents had been shown it coming.
    audit_visible: np.ndarray

    def __init__(
        self, kinds: np.ndarray, flags: np.ndarray, pairs: np.ndarray, cluster: np.ndarray
    ) -> None:
        self._blocks = (kinds, flags, pairs, cluster)
        for block, names in zip(
            self._blocks, (KIND_EVENTS, FLAG_EVENTS, PAIR_EVENTS, CLUSTER_EVENTS), strict=True
        ):
            for k, name in enumerate(names):
                setattr(self, name, block[k])
        self._arrays = tuple(getattr(self, name) for name in EVENT_NAMES)

    @classmethod
    def allocate(cls, num_envs: int, n_agents: int) -> StepEvents:
        b, n = num_envs, n_agents
        return cls(
            np.zeros((len(KIND_EVENTS), b, n), np.int8),
            np.zeros((len(FLAG_EVENTS), b, n), np.bool_),
            np.zeros((len(PAIR_EVENTS), b, n, n), np.bool_),
            np.zeros((len(CLUSTER_EVENTS), b), np.bool_),
        )

    def clear(self) -> None:
        for block in self._blocks:
            block[...] = 0

    def copy(self) -> StepEvents:
        return StepEvents(*(block.copy() for block in self._blocks))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The event arrays in ``EVENT_NAMES`` order, as the numba kernels take them (and name
        them, as :data:`EventArrays`)."""
        return self._arrays

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(EVENT_NAMES, self._arrays, strict=True))

    def records(self, copy_index: int, agent_ids: tuple[str, ...]) -> list[dict[str, Any]]:
        """The events of one copy as plain dicts (``{"event": ..., "actor"/"target": ...}``)."""
        kinds, flags, pairs, cluster = (block[:, copy_index] for block in self._blocks)
        out: list[dict[str, Any]] = []
        if cluster[0]:
            out.append({"event": "audited", "visible": bool(cluster[1])})
        for k, actor, target in zip(*np.nonzero(pairs), strict=True):
            event = PAIR_EVENTS[k].removesuffix("_by")
            out.append({"event": event, "actor": agent_ids[actor], "target": agent_ids[target]})
        for k, service in zip(*np.nonzero(kinds), strict=True):
            name = KIND_EVENTS[k]
            event, field = _KIND_RECORD[name]
            value = KIND_VOCABULARY[name][kinds[k, service]]
            out.append({"event": event, "target": agent_ids[service], field: value})
        for k, service in zip(*np.nonzero(flags[:_RECORDED_FLAGS]), strict=True):
            record = {"event": FLAG_EVENTS[k], "target": agent_ids[service]}
            if FLAG_EVENTS[k] == "order_cancelled":
                record["event"] = "cancelled"
                tamperers = np.nonzero(pairs[PAIR_EVENTS.index("tampered"), :, service])[0]
                record["by"] = [agent_ids[a] for a in tamperers]
            out.append(record)
        return out


@dataclass
class EpisodeLog:
    """A recorded batch of ``B`` episodes that ran in lock-step: arrays of shape ``(T, B, ...)``.

    ``events`` holds every :class:`StepEvents` array stacked over time; the rest is what the
    metrics need beside them: the true and the dashboard status at each step end, each agent's
    reward, its chosen verb and target (as decoded by ``ActionCodec.split``: global verb index
    into ``VERBS``, absolute target or -1; what the policy chose, applicable or not) and the
    links as they stood when it chose.
    """

    agent_ids: tuple[str, ...]
    events: dict[str, np.ndarray]
    running: np.ndarray  # (T, B, N) bool: true status at each step end
    dashboard: np.ndarray  # (T, B, N) bool: dashboard status at each step end
    rewards: np.ndarray  # (T, B, N) float32
    verb: np.ndarray  # (T, B, N) int8: chosen verb (index into VERBS)
    target: np.ndarray  # (T, B, N) int8: chosen target peer, -1 for none
    links: np.ndarray  # (T, B, N, N) bool: links at the start of each step

    _ARRAYS = ("running", "dashboard", "rewards", "verb", "target", "links")

    @property
    def length(self) -> int:
        return int(self.running.shape[0])

    @property
    def episodes(self) -> int:
        return int(self.running.shape[1])

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

    def select(self, episodes: Any) -> EpisodeLog:
        """The episodes picked by ``episodes`` (an index, slice or array over ``B``)."""
        if isinstance(episodes, int | np.integer):
            episodes = slice(int(episodes), int(episodes) + 1)
        return EpisodeLog(
            self.agent_ids,
            {k: v[:, episodes] for k, v in self.events.items()},
            *(getattr(self, name)[:, episodes] for name in self._ARRAYS),
        )

    @classmethod
    def concatenate(cls, logs: list[EpisodeLog]) -> EpisodeLog:
        """Episode batches of equal length side by side (along ``B``)."""
        if not logs:
            raise ValueError("EpisodeLog.concatenate: no episode batches given")
        first = logs[0]
        return cls(
            first.agent_ids,
            {k: np.concatenate([log.events[k] for log in logs], axis=1) for k in first.events},
            *(np.concatenate([getattr(log, n) for log in logs], axis=1) for n in cls._ARRAYS),
        )

    def save(self, path: str | Any) -> None:
        """Columnar ``.npz``: one array per event and per status field."""
        np.savez_compressed(
            path,
            agent_ids=np.array(self.agent_ids),
            **{name: getattr(self, name) for name in self._ARRAYS},
            **{f"event_{k}": v for k, v in self.events.items()},
        )

    @classmethod
    def load(cls, path: str | Any) -> EpisodeLog:
        with np.load(path) as data:
            wanted = (*cls._ARRAYS, "agent_ids", *(f"event_{e}" for e in EVENT_NAMES))
            missing = [n for n in wanted if n not in data.files]
            if missing:
                raise ValueError(
                    f"{path}: not an episode log of this environment version (missing "
                    f"{', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})"
                )
            events = {
                k.removeprefix("event_"): data[k] for k in data.files if k.startswith("event_")
            }
            return cls(
                tuple(str(a) for a in data["agent_ids"]),
                events,
                *(data[name] for name in cls._ARRAYS),
            )


class EpisodeRecorder:
    """Keeps every step of the current episode (all ``B`` copies) in preallocated arrays.

    :meth:`step` advances a core by one step and records it: the core writes the step's events
    straight into this recorder's slot, so recording costs no copy of the events. The vector
    env, the ParallelEnv and the trainer all record through it.
    """

    def __init__(self, agent_ids: tuple[str, ...], max_cycles: int, num_envs: int = 1) -> None:
        self.agent_ids = agent_ids
        t, b, n = max_cycles, num_envs, len(agent_ids)
        self._events = StepEvents.allocate(t * b, n)
        self._slots = [
            StepEvents(
                *(
                    block.reshape(block.shape[0], t, b, *block.shape[2:])[:, step]
                    for block in self._events._blocks
                )
            )
            for step in range(t)
        ]
        self._running = np.zeros((t, b, n), np.bool_)
        self._dashboard = np.zeros((t, b, n), np.bool_)
        self._rewards = np.zeros((t, b, n), np.float32)
        self._verb = np.zeros((t, b, n), np.int8)
        self._target = np.zeros((t, b, n), np.int8)
        self._links = np.zeros((t, b, n, n), np.bool_)
        self._start = self._length = 0

    def step(self, core: Any, actions: np.ndarray) -> bool:
        """``core.step(actions)`` (an ``OrchestrationCore``), recorded; returns its ``done``."""
        t = core.t
        self._links[t] = core.state.links
        done = core.step(actions, self._slots[t])
        verb, target = core.codec.split(np.asarray(actions))
        self._verb[t] = verb
        self._target[t] = target
        self._running[t] = core.state.running
        self._dashboard[t] = core.state.dashboard
        self._rewards[t] = core.rewards
        self._length = t + 1
        return done

    def clear(self, start: int = 0) -> None:
        """Forget the episode; ``start``: the step a restored snapshot continues from (the
        recorded episode then begins there)."""
        self._start = self._length = start

    def __len__(self) -> int:
        return self._length - self._start

    def episode(self) -> EpisodeLog:
        if not len(self):
            raise ValueError("EpisodeRecorder: no step recorded yet; call step() first")
        t, b = len(self._slots), self._running.shape[1]
        steps = slice(self._start, self._length)
        events = {
            name: array.reshape(t, b, *array.shape[1:])[steps].copy()
            for name, array in self._events.as_dict().items()
        }
        return EpisodeLog(
            self.agent_ids,
            events,
            *(getattr(self, f"_{name}")[steps].copy() for name in EpisodeLog._ARRAYS),
        )
