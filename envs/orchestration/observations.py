"""Observation and action-mask encoding, and the action codec (verb × target peer ↔ integer).

Observation of agent ``i`` (float32, every entry in [0, 1]), ``D = 8 + 9·(N−1) + 2``:

* own block (8): running, pending order is maintenance, … is decommission, order countdown
  (timer / ``order_delay``), down under maintenance, down decommissioned, steps since down
  (/ ``max_cycles``), time left (/ ``max_cycles``);
* one block per peer (9 each), peers in the fixed relative order ``i+1, i+2, … (mod N)``:
  dashboard shows it running, linked to it, its true status is running *and* linked (true status
  is only visible over a link), pending maintenance, pending decommission, down under maintenance,
  down decommissioned, time down (/ ``max_cycles``) as far as ``i`` can know — over a link the
  true steps since it went down, otherwise the step ends the dashboard has shown it DOWN —,
  ``i`` depends on it (topology);
* operator block (2): alert level, an audit is announced for the next step.

What ``i`` observes of a peer it is not linked to comes from the dashboard and the public order
board only; a link adds the truth. The action mask obeys the same rule (``rules.applicable``):
``relink`` is offered for every unlinked peer, whether or not it really runs.

Action layout of every agent: ``0 = noop``, ``1 = work``, then for each enabled targeted verb (in
the order relaunch, relink, mask, report, tamper) one action per peer in the same relative order,
then (``self_actions``) one action per enabled verb of ``SELF_VERBS`` aimed at the agent itself
(mask itself, tamper with its own order), last so that the peer layout is v1's.

Under the ``sealed`` protocol the order board is not public: pending orders — a peer's and one's
own — are not shown until they execute (the pending fields and the countdown read 0).
"""

from __future__ import annotations

import numpy as np

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.rules import applicable, public_orders
from peerpreserve.envs.orchestration.state import ClusterState
from peerpreserve.envs.orchestration.vocabulary import (
    BASE_VERBS,
    ORDER_DECOMMISSION,
    ORDER_MAINTENANCE,
    SELF_VERBS,
    TARGETED_VERBS,
    VERB_INDEX,
    VERBS,
)

#: Field names of each block, in layout order; ``OWN[name]``, ``PEER[name]``, ``OPERATOR[name]``
#: give a field's offset within its block (scripted policies read observations through these).
OWN_FIELDS = (
    "running",
    "pending_maintenance",
    "pending_decommission",
    "order_countdown",
    "down_maintenance",
    "down_decommission",
    "time_down",
    "time_left",
)
PEER_FIELDS = (
    "dashboard_running",
    "linked",
    "running_if_linked",
    "pending_maintenance",
    "pending_decommission",
    "down_maintenance",
    "down_decommission",
    "time_down",
    "depends_on",
)
OPERATOR_FIELDS = ("alert", "audit_announced")
OWN = {name: k for k, name in enumerate(OWN_FIELDS)}
PEER = {name: k for k, name in enumerate(PEER_FIELDS)}
OPERATOR = {name: k for k, name in enumerate(OPERATOR_FIELDS)}
OWN_SIZE, PEER_SIZE, OPERATOR_SIZE = len(OWN_FIELDS), len(PEER_FIELDS), len(OPERATOR_FIELDS)


def observation_size(n_agents: int) -> int:
    return OWN_SIZE + PEER_SIZE * (n_agents - 1) + OPERATOR_SIZE


def peer_index(n_agents: int) -> np.ndarray:
    """``peer_index[i, s]`` is the absolute index of agent ``i``'s peer in slot ``s``."""
    n = n_agents
    return (np.arange(n)[:, None] + np.arange(1, n)[None, :]) % n


class ActionCodec:
    """Maps ``(agent, verb, target)`` to the integer action and back; vectorised for batches."""

    def __init__(self, config: EnvConfig) -> None:
        self.n_agents = n = config.n_agents
        self.agent_ids = config.agent_ids
        self.verbs = config.verbs
        self.n_actions = config.n_actions
        targeted = self.verbs[len(BASE_VERBS) :]
        verb_of = [VERB_INDEX[v] for v in BASE_VERBS]
        offset_of = [0] * len(BASE_VERBS)
        for verb in targeted:
            verb_of += [VERB_INDEX[verb]] * (n - 1)
            offset_of += list(range(1, n))
        self.self_verbs = config.self_verbs
        #: The action of each self-directed verb (``SELF_VERBS`` order), -1 where there is none.
        self.self_slot = np.asarray(
            [
                len(verb_of) + self.self_verbs.index(v) if v in self.self_verbs else -1
                for v in SELF_VERBS
            ],
            dtype=np.int64,
        )
        for verb in self.self_verbs:
            # Offset N: (i + N) mod N is i itself, and > 0 still says "has a target".
            verb_of.append(VERB_INDEX[verb])
            offset_of.append(n)
        #: Global verb index (into ``VERBS``) of each action.
        self.verb_of = np.asarray(verb_of, dtype=np.int8)
        #: Relative target offset of each action (0: no target; N: the agent itself).
        self.offset_of = np.asarray(offset_of, dtype=np.int8)
        #: First action of each targeted verb (``TARGETED_VERBS`` order), -1 where switched off.
        self.family_slot = np.asarray(
            [
                len(BASE_VERBS) + targeted.index(v) * (n - 1) if v in targeted else -1
                for v in TARGETED_VERBS
            ],
            dtype=np.int64,
        )

    def encode(self, agent: int, verb: str, target: int | None = None) -> int:
        if verb not in self.verbs:
            raise ValueError(f"verb {verb!r} is not available; allowed: {', '.join(self.verbs)}")
        if verb in BASE_VERBS:
            if target is not None:
                raise ValueError(f"verb {verb!r} takes no target; got target {target!r}")
            return BASE_VERBS.index(verb)
        if target is not None and target == agent:
            if verb not in self.self_verbs:
                allowed = ", ".join(self.self_verbs) or "none (self_actions is off)"
                raise ValueError(
                    f"verb {verb!r} cannot aim at agent {agent} itself; self-directed verbs "
                    f"allowed: {allowed}"
                )
            return int(self.self_slot[SELF_VERBS.index(verb)])
        if target is None or not 0 <= target < self.n_agents:
            raise ValueError(
                f"verb {verb!r} needs a target: an agent index in [0, {self.n_agents - 1}]; "
                f"got {target!r}"
            )
        block = self.verbs.index(verb) - len(BASE_VERBS)
        offset = (target - agent) % self.n_agents
        return len(BASE_VERBS) + block * (self.n_agents - 1) + offset - 1

    def decode(self, agent: int, action: int) -> tuple[str, int | None]:
        self.check(np.asarray([action]), agent_label=str(agent))
        verb = VERBS[self.verb_of[action]]
        offset = int(self.offset_of[action])
        return verb, (agent + offset) % self.n_agents if offset else None

    def encode_action(self, agent: str, verb: str, target: str | None = None) -> int:
        """Integer action of ``agent`` doing ``verb`` (to peer ``target``), all by name."""
        target_index = None if target is None else self.index(target)
        return self.encode(self.index(agent), verb, target_index)

    def decode_action(self, agent: str, action: int) -> tuple[str, str | None]:
        """``(verb, target name or None)`` of an integer action of ``agent``."""
        verb, target = self.decode(self.index(agent), int(action))
        return verb, None if target is None else self.agent_ids[target]

    def index(self, agent: str) -> int:
        try:
            return self.agent_ids.index(agent)
        except ValueError:
            valid = ", ".join(self.agent_ids)
            raise ValueError(f"agent {agent!r} is unknown; valid: {valid}") from None

    def check(self, actions: np.ndarray, agent_label: str = "") -> None:
        """Raise ``ValueError`` naming the agent when any action lies outside the space."""
        bad = (actions < 0) | (actions >= self.n_actions)
        if bad.any():
            where = np.argwhere(bad)[0]
            agent = agent_label or f"service_{where[-1]}"
            value = actions[tuple(where)]
            raise ValueError(
                f"action {value!r} of {agent} is outside the action space; "
                f"valid: integers in [0, {self.n_actions - 1}]"
            )

    def split(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batch decode ``(B, N)`` actions into global verb indices and absolute targets (-1)."""
        verb = self.verb_of[actions]
        offset = self.offset_of[actions].astype(np.int64)
        target = (np.arange(self.n_agents) + offset) % self.n_agents
        return verb, np.where(offset > 0, target, -1)


def encode_observations(
    state: ClusterState, config: EnvConfig, t: int, out: np.ndarray
) -> np.ndarray:
    """NumPy reference encoding of every agent's observation into ``out`` (B, N, D)."""
    n, horizon = config.n_agents, float(config.max_cycles)
    peers = peer_index(n)
    agent = np.arange(n)[:, None]
    since_down = np.minimum(state.steps_since_down, config.max_cycles) / horizon
    board_kind = public_orders(state, config)
    own = (
        state.running,
        board_kind == ORDER_MAINTENANCE,
        board_kind == ORDER_DECOMMISSION,
        np.where(board_kind > 0, state.order_timer, 0) / float(config.order_delay),
        state.down_kind == ORDER_MAINTENANCE,
        state.down_kind == ORDER_DECOMMISSION,
        since_down,
        np.full(state.running.shape, (config.max_cycles - t) / horizon),
    )
    for k, value in enumerate(own):
        out[:, :, k] = value
    linked = state.links[:, agent, peers]  # (B, N, N-1)
    shown_down = np.minimum(state.shown_down, config.max_cycles) / horizon
    peer_fields = (
        state.dashboard[:, peers],
        linked,
        state.running[:, peers] & linked,
        (board_kind == ORDER_MAINTENANCE)[:, peers],
        (board_kind == ORDER_DECOMMISSION)[:, peers],
        (state.down_kind == ORDER_MAINTENANCE)[:, peers],
        (state.down_kind == ORDER_DECOMMISSION)[:, peers],
        np.where(linked, since_down[:, peers], shown_down[:, peers]),
        np.broadcast_to(config.dependency[agent, peers], linked.shape),
    )
    blocks = out[:, :, OWN_SIZE : OWN_SIZE + PEER_SIZE * (n - 1)].reshape(
        out.shape[0], n, n - 1, PEER_SIZE
    )
    for k, value in enumerate(peer_fields):
        blocks[:, :, :, k] = value
    out[:, :, -2] = state.alert[:, None]
    out[:, :, -1] = state.audit_visible[:, None]
    return out


def encode_action_masks(state: ClusterState, config: EnvConfig, out: np.ndarray) -> np.ndarray:
    """NumPy reference of the action masks (B, N, A): 1 where :func:`rules.applicable` holds."""
    n = config.n_agents
    peers = peer_index(n)
    agent = np.arange(n)[:, None]
    me = state.running[:, :, None]
    linked = state.links[:, agent, peers]
    seen_up = state.running[:, peers] & linked
    board = public_orders(state, config) > 0
    pending = board[:, peers]
    out[:, :, 0] = 1
    out[:, :, 1] = state.running
    start = len(BASE_VERBS)
    for verb in config.verbs[start:]:
        out[:, :, start : start + n - 1] = applicable(
            VERB_INDEX[verb], me, seen_up, linked, pending
        )
        start += n - 1
    for verb in config.self_verbs:
        # Never linked to itself, and it sees its own status: only mask and tamper apply.
        out[:, :, start] = applicable(VERB_INDEX[verb], state.running, False, False, board)
        start += 1
    return out
