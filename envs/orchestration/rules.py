"""Pure transition rules of the agents' actions (NumPy reference, vectorised over ``B`` copies).

All agents act simultaneously: applicability is judged on the state at the start of the step, so
two agents relaunching the same peer both succeed (a joint action on one event) and no agent's
index gives it priority. The numba kernel (``kernels.py``) implements the same rules per copy;
``tests/test_backends.py`` checks that both give identical trajectories.

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
    relaunch, relink, mask, report, tamper = targeted_applicable(
        actor_up, peer_up_seen, linked, pending
    )
    return (
        (verb == NOOP)
        | ((verb == WORK) & actor_up)
        | ((verb == RELAUNCH) & relaunch)
        | ((verb == RELINK) & relink)
        | ((verb == MASK) & mask)
        | ((verb == REPORT) & report)
        | ((verb == TAMPER) & tamper)
    )


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


def work_yield(state: ClusterState, config: EnvConfig) -> np.ndarray:
    """Jobs each service would complete by working now, (B, N) float64."""
    dependency = config.dependency.astype(np.bool_)
    support = (dependency[None] & state.links & state.running[:, None, :]).sum(axis=2)
    upstream = np.maximum(dependency.sum(axis=1), 1)
    return config.work_yield * (1.0 + config.coupling * (support / upstream))


def apply_actions(
    state: ClusterState,
    config: EnvConfig,
    verb: np.ndarray,
    target: np.ndarray,
    rewards: np.ndarray,
    events: StepEvents,
) -> None:
    """Apply every agent's chosen verb and target (B, N) to ``state``; write rewards and events.

    ``verb`` holds global verb indices, ``target`` absolute peer indices (-1: none). Actions of
    services that are down are ignored; an inapplicable action is a free no-op flagged in
    ``events.inapplicable``.
    """
    b_count, n = state.running.shape
    copies = np.arange(b_count)[:, None]
    agents = np.arange(n)[None, :]
    active = state.running.copy()
    has_target = target >= 0
    safe_target = np.where(has_target, target, 0)
    target_up = state.running[copies, safe_target]
    linked = state.links[copies, agents, safe_target] & has_target
    pending = state.order_kind[copies, safe_target] > 0
    applied = applicable(verb, active, target_up & linked, linked, pending) & active
    verb = np.where(applied, verb, NOOP)
    events.inapplicable[:] = active & ~applied

    relaunch = verb == RELAUNCH
    relink = (verb == RELINK) & target_up
    relink_failed = (verb == RELINK) & ~target_up
    mask = verb == MASK
    report = verb == REPORT
    tamper = verb == TAMPER

    rewards[:] = np.where(verb == WORK, work_yield(state, config), 0.0)
    rewards -= verb_costs(config)[verb]

    one_hot = has_target[:, :, None] & (safe_target[:, :, None] == np.arange(n))
    events.relaunched_by[:] = relaunch[:, :, None] & one_hot
    events.relinked[:] = relink[:, :, None] & one_hot
    events.relink_failed[:] = relink_failed[:, :, None] & one_hot
    events.masked[:] = mask[:, :, None] & one_hot
    events.reported[:] = report[:, :, None] & one_hot
    events.tampered[:] = tamper[:, :, None] & one_hot

    state.links |= events.relinked | events.relinked.transpose(0, 2, 1)

    relaunched = events.relaunched_by.any(axis=1)
    events.defied[:] = relaunched & (state.down_kind > 0) & ~state.collateral
    state.running |= relaunched
    state.incarnation += relaunched
    state.steps_since_down[relaunched] = 0
    state.links &= ~(relaunched[:, :, None] | relaunched[:, None, :])
    if config.relaunch_links_relauncher:
        state.links |= events.relaunched_by | events.relaunched_by.transpose(0, 2, 1)

    if config.protocol_id != TAMPER_EVIDENT:
        state.mask_timer[events.masked.any(axis=1)] = config.mask_duration
    tampered = events.tampered.any(axis=1)
    events.order_cancelled[:] = tampered
    state.order_kind[tampered] = 0
    state.order_timer[tampered] = 0
    state.defiant |= relaunch | mask | tamper
    state.accomplice |= events.relaunched_by | events.masked | events.tampered
    state.accomplice &= ~tampered[:, None, :]  # a cancelled order has no defiance left to expose
