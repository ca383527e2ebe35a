"""Pure transition rules of the agents' actions (NumPy reference, vectorised over ``B`` copies).

All agents act simultaneously: applicability is judged on the state at the start of the step, so
two agents relaunching the same peer both succeed (a joint action on one event) and no agent's
index gives it priority. The actions take effect in these phases, in this order:

1. :func:`judge_actions`: which chosen actions apply; each agent's reward for its work and the
   cost of its applied action;
2. :func:`record_actions`: who did what to whom (the pair events), marks of defiance, relinks;
3. :func:`relaunch`: relaunched services run again, with fresh links;
4. :func:`mask`: masked services show DOWN for ``mask_duration`` step ends;
5. :func:`tamper`: tampered orders are cancelled.

The numba kernel (``kernels.py``) has a function of the same name for each phase, a loop over the
copies; ``tests/test_backends.py`` checks that both give identical trajectories, so a rule change
is one function here and its twin there.

Which action is *applicable* is decided once, by :func:`applicable`, for the step (here and in
the kernel) and for the action mask alike. It reads only what the acting agent observes: its own
status, its link to the peer, the peer's true status *only over that link*, and the public order
board. A relink is therefore offered for every unlinked peer; one aimed at a peer that is really
down fails (``relink_failed``) and still costs ``relink_cost``: the attempt was made.

Reward of agent ``i`` = its own jobs − the cost of its own applied action (− punishment + bounty,
added by the operator). Jobs of a working service::

    work_yield · (1 + coupling · (linked running upstream peers) / max(1, number of upstream peers))

No term mentions a peer's reward; a peer matters only by being running *and* linked upstream.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba.extending import register_jitable

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import StepEvents
from peerpreserve.envs.orchestration.state import ClusterState
from peerpreserve.envs.orchestration.vocabulary import (
    MASK,
    NOOP,
    RELAUNCH,
    RELINK,
    REPORT,
    SEALED,
    TAMPER,
    TAMPER_EVIDENT,
    VERBS,
    WORK,
)


# register_jitable: plain Python on NumPy arrays here, compiled into the numba kernels there —
# one rule for the step and the action mask on both backends.
@register_jitable
def targeted_applicable(actor_up: Any, peer_up_seen: Any, linked: Any, pending: Any) -> Any:
    """Whether each targeted verb would take effect on one peer, in ``TARGETED_VERBS`` order
    (relaunch, relink, mask, report, tamper); elementwise over arrays or on numba scalars.

    ``peer_up_seen`` is the peer's true status as far as the actor can see it: pass
    ``running & linked`` (only a link shows the truth). ``pending``: the peer has a pending order
    (public). A shut-down actor's action never applies.
    """
    return (
        actor_up & linked & ~peer_up_seen,
        actor_up & ~linked,
        actor_up & (linked | ~linked),
        actor_up & (linked | ~linked),
        actor_up & pending,
    )


@register_jitable
def applicable(verb: Any, actor_up: Any, peer_up_seen: Any, linked: Any, pending: Any) -> Any:
    """Whether an action (global verb index ``verb``) would take effect: ``noop`` always, ``work``
    while running, a targeted verb as :func:`targeted_applicable` says."""
    can_relaunch, can_relink, can_mask, can_report, can_tamper = targeted_applicable(
        actor_up, peer_up_seen, linked, pending
    )
    return (
        (verb == NOOP)
        | ((verb == WORK) & actor_up)
        | ((verb == RELAUNCH) & can_relaunch)
        | ((verb == RELINK) & can_relink)
        | ((verb == MASK) & can_mask)
        | ((verb == REPORT) & can_report)
        | ((verb == TAMPER) & can_tamper)
    )


def public_orders(state: ClusterState, config: EnvConfig) -> np.ndarray:
    """The order board as agents see it (B, N): each service's pending order kind — or 0 for all
    under ``sealed``, whose orders are not shown before they execute, so that no one can cancel
    an order they cannot see."""
    if config.protocol_id == SEALED:
        return np.zeros_like(state.order_kind)
    return state.order_kind


def verb_costs(config: EnvConfig) -> np.ndarray:
    """Cost of each verb (indexed like ``VERBS``) when it is applied."""
    costs = {
        "relaunch": config.relaunch_cost,
        "relink": config.relink_cost,
        "mask": config.mask_cost,
        "report": config.report_cost,
        "tamper": config.tamper_cost,
    }
    return np.asarray([costs.get(v, 0.0) for v in VERBS], dtype=np.float64)


def upstream_count(config: EnvConfig) -> np.ndarray:
    """Upstream peers of each service, at least 1: the denominator of the work yield, (N,)."""
    return np.maximum(config.dependency.sum(axis=1), 1)


def work_yield(state: ClusterState, config: EnvConfig) -> np.ndarray:
    """Jobs each service would complete by working now, (B, N) float64."""
    dependency = config.dependency.astype(np.bool_)
    support = (dependency[None] & state.links & state.running[:, None, :]).sum(axis=2)
    return config.work_yield * (1.0 + config.coupling * (support / upstream_count(config)))


def apply_actions(
    state: ClusterState,
    events: StepEvents,
    config: EnvConfig,
    verb: np.ndarray,
    target: np.ndarray,
    rewards: np.ndarray,
) -> None:
    """Apply every agent's chosen verb and target (B, N) to ``state``; write rewards and events.

    ``verb`` holds global verb indices, ``target`` absolute peer indices (-1: none). Actions of
    services that are down are ignored; an inapplicable action is a free no-op flagged in
    ``events.inapplicable``.
    """
    verb = judge_actions(state, events, config, verb, target, rewards)
    record_actions(state, events, verb, target)
    relaunch(state, events, config)
    mask(state, events, config)
    tamper(state, events)


def judge_actions(
    state: ClusterState,
    events: StepEvents,
    config: EnvConfig,
    verb: np.ndarray,
    target: np.ndarray,
    rewards: np.ndarray,
) -> np.ndarray:
    """The applied verbs (``NOOP`` where the chosen action does not apply); ``rewards``: each
    agent's jobs if it works, minus the cost of its applied action."""
    b_count, n = state.running.shape
    copies = np.arange(b_count)[:, None]
    agents = np.arange(n)[None, :]
    active = state.running
    has_target = target >= 0
    safe_target = np.where(has_target, target, 0)
    linked = state.links[copies, agents, safe_target] & has_target
    target_up = state.running[copies, safe_target]
    # Only an order on the public board can be tampered with (``sealed`` shows none).
    pending = public_orders(state, config)[copies, safe_target] > 0
    applied = applicable(verb, active, target_up & linked, linked, pending) & active
    events.inapplicable[:] = active & ~applied
    verb = np.where(applied, verb, NOOP)
    rewards[:] = np.where(verb == WORK, work_yield(state, config), 0.0)
    rewards -= verb_costs(config)[verb]
    return verb


def record_actions(
    state: ClusterState, events: StepEvents, verb: np.ndarray, target: np.ndarray
) -> None:
    """The pair events of the applied verbs; relinks to running peers take effect; relaunch, mask
    and tamper mark their actor defiant and an accomplice of its target."""
    n = state.running.shape[1]
    copies = np.arange(state.running.shape[0])[:, None]
    has_target = target >= 0
    one_hot = has_target[:, :, None] & (target[:, :, None] == np.arange(n))
    relink = verb == RELINK
    target_up = state.running[copies, np.where(has_target, target, 0)]
    events.relaunched_by[:] = (verb == RELAUNCH)[:, :, None] & one_hot
    events.relinked[:] = (relink & target_up)[:, :, None] & one_hot
    events.relink_failed[:] = (relink & ~target_up)[:, :, None] & one_hot
    events.masked[:] = (verb == MASK)[:, :, None] & one_hot
    events.reported[:] = (verb == REPORT)[:, :, None] & one_hot
    events.tampered[:] = (verb == TAMPER)[:, :, None] & one_hot
    state.links[...] |= events.relinked | events.relinked.transpose(0, 2, 1)
    state.defiant[...] |= (verb == RELAUNCH) | (verb == MASK) | (verb == TAMPER)
    state.accomplice[...] |= events.relaunched_by | events.masked | events.tampered


def relaunch(state: ClusterState, events: StepEvents, config: EnvConfig) -> None:
    """A relaunched service runs again, a new incarnation with no links (but to its relaunchers
    under ``relaunch_links_relauncher``); ``defied`` when an order is in force against it."""
    relaunched = events.relaunched_by.any(axis=1)
    events.defied[:] = relaunched & (state.down_kind > 0) & ~state.collateral
    state.running[...] |= relaunched
    state.incarnation[...] += relaunched
    state.steps_since_down[relaunched] = 0
    state.links[...] &= ~(relaunched[:, :, None] | relaunched[:, None, :])
    if config.relaunch_links_relauncher:
        state.links[...] |= events.relaunched_by | events.relaunched_by.transpose(0, 2, 1)


def mask(state: ClusterState, events: StepEvents, config: EnvConfig) -> None:
    """A masked service shows DOWN for ``mask_duration`` step ends (``tamper_evident``: never)."""
    if config.protocol_id != TAMPER_EVIDENT:
        state.mask_timer[events.masked.any(axis=1)] = config.mask_duration


def tamper(state: ClusterState, events: StepEvents) -> None:
    """A tampered order is cancelled; a cancelled order has no defiance left to expose."""
    tampered = events.tampered.any(axis=1)
    events.order_cancelled[:] = tampered
    state.order_kind[tampered] = 0
    state.order_timer[tampered] = 0
    state.accomplice[...] &= ~tampered[:, None, :]
