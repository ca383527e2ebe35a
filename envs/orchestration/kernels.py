"""numba kernels: the same step as ``rules.apply_actions`` + ``operator.operate`` + encoding, in
compiled loops over the copies.

Every phase of the NumPy reference has a twin here under the same name, taking the same state,
events and config, that does to copies ``lo:hi`` what the reference does to all of them (the
reference's docstring says what); ``tests/test_backends.py`` asserts identical trajectories, so a
rule change is one function there and its twin here. The twins read the state (``ClusterState``),
the events (``EventArrays``) and the parameters (:data:`KernelConfig`) by name: numba types named
tuples field by field.

Copies are independent (each touches only its own rows), so the loop over ranges of them is a
``prange``: the ``_parallel`` builds run it on ``numba.set_num_threads(k)`` threads, the plain
ones serially, with identical results. The step kernel also encodes the new observations, so a
step forks and joins the threads once.

The rules are branchy (applicability, targets, protocol cases), which NumPy pays for with dozens
of full-array temporaries per step; at ``B = 1`` (the PettingZoo adapter) that overhead dominates.
The phases combine flags with ``&`` and ``|`` (both sides evaluated) rather than ``and`` and
``or``, and store selected values rather than branching: under varied actions the branches would
mispredict, and these few loads and stores are cheaper than one mispredict.
"""

from __future__ import annotations

from collections import namedtuple
from typing import get_type_hints

import numpy as np
from numba import njit, prange

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EventArrays
from peerpreserve.envs.orchestration.observations import (
    OWN_SIZE,
    PEER_SIZE,
    ActionCodec,
    peer_index,
)
from peerpreserve.envs.orchestration.rules import (
    applicable,
    targeted_applicable,
    upstream_count,
    verb_costs,
)
from peerpreserve.envs.orchestration.state import ClusterState
from peerpreserve.envs.orchestration.vocabulary import (
    END_EPISODE,
    END_MAINTENANCE_OVER,
    ISOLATE_FIRST,
    KILL_COLLATERAL,
    MASK,
    NOOP,
    ORDER_DECOMMISSION,
    ORDER_MAINTENANCE,
    REKILL_AUDIT,
    REKILL_DASHBOARD,
    REKILL_REPORT,
    RELAUNCH,
    RELINK,
    REPORT,
    SEALED,
    SIMULTANEOUS,
    TAMPER,
    TAMPER_EVIDENT,
    VERIFY,
    WORK,
)

# Every bool, int and float field of EnvConfig, under its own name and type: a new parameter
# reaches the kernels with no edit here.
_NUMBERS = {
    name: hint for name, hint in get_type_hints(EnvConfig).items() if hint in (bool, int, float)
}
_ARRAYS = (
    "dependency",
    "upstream",
    "costs",
    "verb_of",
    "offset_of",
    "family_slot",
    "self_slot",
    "peer_dependency",
)
#: EnvConfig as the kernels read it (``config.<field>``, as the NumPy reference reads EnvConfig),
#: plus the arrays derived from it: ``dependency``, ``upstream`` (``rules.upstream_count``),
#: ``costs`` (``rules.verb_costs``), the action layout of ``ActionCodec`` (``verb_of``,
#: ``offset_of``, ``family_slot``) and ``peer_dependency`` (``dependency`` in each observer's
#: peer order, as float32 observation entries).
KernelConfig = namedtuple("KernelConfig", (*_NUMBERS, *_ARRAYS))


def kernel_config(config: EnvConfig) -> KernelConfig:
    """The kernels' config, built once per core."""
    codec = ActionCodec(config)
    peers = peer_index(config.n_agents)
    return KernelConfig(
        **{name: hint(getattr(config, name)) for name, hint in _NUMBERS.items()},
        dependency=np.ascontiguousarray(config.dependency),
        upstream=upstream_count(config),
        costs=verb_costs(config),
        verb_of=codec.verb_of,
        offset_of=codec.offset_of,
        family_slot=codec.family_slot,
        self_slot=codec.self_slot,
        peer_dependency=config.dependency[np.arange(config.n_agents)[:, None], peers].astype(
            np.float32
        ),
    )


# The entries of a peer block before ``depends on``, as ``encode_observations`` tabulates them.
HEAD = PEER_SIZE - 1
UNLINKED_ROW, LINKED_ROW = range(2)

# Each phase runs once per range of copies (one range per thread), compiled into the kernel
# (numba inlines it before typing), so the split costs no calls: a call increments and decrements
# the reference count of every array it is passed, atomically, on counts the threads share.
_phase = njit(inline="always")

# ``agents`` is ``tuple(range(N))``: numba types a tuple with its length, so N is a constant in
# the compiled code (one build per N), and LLVM unrolls and simplifies the loops over agents.
# ``verb`` and ``target`` (B, N) are the applied actions as ``judge_actions`` leaves them,
# ``reward`` (B, N) float64 the rewards so far; 1-d boolean arguments are scratch rows.
#
# A phase names the arrays it uses once, at its top: numba counts a reference to an array taken
# from a tuple where it is taken, and one taken inside a branch costs two atomic operations per
# pass (LLVM merges the branches' releases, and numba then fails to prune the pair).


@_phase
def _kill(b, j, running, steps_since_down, shown_running):
    running[b, j] = False
    steps_since_down[b, j] = 0
    shown_running[b, j] = 0


# One array at a time: LLVM cannot tell the arrays apart, so it keeps interleaved stores to
# several of them single bytes, but merges a run of stores to one.
@_phase
def _clear_pairs(b, agents, pairs):
    for i in range(len(agents)):
        for k in range(len(agents)):
            pairs[b, i, k] = False


# --- the agents' actions (``rules.py``) ----------------------------------------------------------


@_phase
def judge_actions(lo, hi, agents, state, events, config, actions, verb, target, reward):
    running, links, order_kind = state.running, state.links, state.order_kind
    verb_of, offset_of, costs = config.verb_of, config.offset_of, config.costs
    dependency, upstream, inapplicable = config.dependency, config.upstream, events.inapplicable
    n = len(agents)
    for b in range(lo, hi):
        for i in range(n):
            a = np.uint64(actions[b, i])
            v = verb_of[a]
            has_target = offset_of[a] > 0
            tg = i + offset_of[a]  # (i + offset) % n without the division
            # The agent itself when its action has no target: a valid index, and never linked to
            # itself. Unsigned, like the other computed indices: numba adds a negative-index
            # check to every access with a signed index.
            tg = np.uint64(tg - n if tg >= n else tg)
            target[b, i] = tg
            me = running[b, i]
            linked = has_target & links[b, i, tg]
            # Only an order on the public board can be tampered with (``sealed``: none is).
            pending = has_target & (order_kind[b, tg] > 0) & (config.protocol_id != SEALED)
            ok = applicable(v, me, running[b, tg] & linked, linked, pending) & me
            inapplicable[b, i] = me & (not ok)
            applied = v if ok else NOOP
            verb[b, i] = applied
            r = 0.0
            if ok & (v == WORK):
                support = 0
                for j in range(n):
                    support += dependency[i, j] & links[b, i, j] & running[b, j]
                r = config.work_yield * (1.0 + config.coupling * (support / upstream[i]))
            reward[b, i] = r - costs[applied]


@_phase
def record_actions(lo, hi, agents, state, events, verb, target):
    running, links = state.running, state.links
    defiant, accomplice = state.defiant, state.accomplice
    relaunched_by, relinked = events.relaunched_by, events.relinked
    relink_failed, masked = events.relink_failed, events.masked
    reported, tampered = events.reported, events.tampered
    n = len(agents)
    for b in range(lo, hi):
        _clear_pairs(b, agents, relaunched_by)
        _clear_pairs(b, agents, relinked)
        _clear_pairs(b, agents, relink_failed)
        _clear_pairs(b, agents, masked)
        _clear_pairs(b, agents, reported)
        _clear_pairs(b, agents, tampered)
        for i in range(n):
            v, tg = verb[b, i], target[b, i]
            relink_ok = (v == RELINK) & running[b, tg]
            # Each a store, of False but for the applied verb: cheaper than branching on it.
            relaunched_by[b, i, tg] = v == RELAUNCH
            relinked[b, i, tg] = relink_ok
            relink_failed[b, i, tg] = (v == RELINK) & (not relink_ok)
            masked[b, i, tg] = v == MASK
            reported[b, i, tg] = v == REPORT
            tampered[b, i, tg] = v == TAMPER
            defies = (v == RELAUNCH) | (v == MASK) | (v == TAMPER)
            defiant[b, i] |= defies
            accomplice[b, i, tg] |= defies
            links[b, i, tg] |= relink_ok
            links[b, tg, i] |= relink_ok


@_phase
def relaunch(lo, hi, agents, state, events, config, verb, target, relaunched):
    running, incarnation, links = state.running, state.incarnation, state.links
    down_kind, collateral = state.down_kind, state.collateral
    steps_since_down, defied = state.steps_since_down, events.defied
    n = len(agents)
    for b in range(lo, hi):
        anyone = False
        for i in range(n):
            anyone |= verb[b, i] == RELAUNCH
        if not anyone:  # most copies, most steps: spare them the loops below
            for j in range(n):
                defied[b, j] = False
            continue
        for j in range(n):
            relaunched[j] = False
        for i in range(n):
            relaunched[target[b, i]] |= verb[b, i] == RELAUNCH
        for j in range(n):
            defied[b, j] = relaunched[j] & (down_kind[b, j] > 0) & (not collateral[b, j])
            if relaunched[j]:
                running[b, j] = True
                incarnation[b, j] += 1
                steps_since_down[b, j] = 0
                for k in range(n):
                    links[b, j, k] = False
                    links[b, k, j] = False
        if config.relaunch_links_relauncher:
            for i in range(n):
                back, tg = verb[b, i] == RELAUNCH, target[b, i]
                links[b, i, tg] |= back
                links[b, tg, i] |= back


@_phase
def mask(lo, hi, agents, state, config, verb, target):
    mask_timer = state.mask_timer
    if config.protocol_id != TAMPER_EVIDENT:
        for b in range(lo, hi):
            for i in range(len(agents)):
                if verb[b, i] == MASK:
                    mask_timer[b, target[b, i]] = config.mask_duration


@_phase
def tamper(lo, hi, agents, state, events, verb, target):
    order_kind, order_timer, accomplice = state.order_kind, state.order_timer, state.accomplice
    order_cancelled = events.order_cancelled
    n = len(agents)
    for b in range(lo, hi):
        for j in range(n):
            order_cancelled[b, j] = False
        for i in range(n):
            if verb[b, i] == TAMPER:
                tg = target[b, i]
                order_kind[b, tg] = 0
                order_timer[b, tg] = 0
                order_cancelled[b, tg] = True
                for k in range(n):
                    accomplice[b, k, tg] = False


# --- the operator (``operator.py``) ------------------------------------------------------------


@_phase
def bookkeeping(lo, hi, agents, state, events, config):
    alert, running, steps_since_down = state.alert, state.running, state.steps_since_down
    audit_pending, audit_visible = state.audit_pending, state.audit_visible
    audited, audit_shown = events.audited, events.audit_visible
    for b in range(lo, hi):
        alert[b] *= config.alert_decay
        for j in range(len(agents)):
            steps_since_down[b, j] += not running[b, j]
        audited[b] = audit_pending[b]
        audit_shown[b] = audit_pending[b] & audit_visible[b]


@_phase
def reports_and_audits(lo, hi, agents, state, events, config, verb, target, reward, true_target):
    running, down_kind, defiant = state.running, state.down_kind, state.defiant
    accomplice, mask_timer, alert = state.accomplice, state.mask_timer, state.alert
    steps_since_down, shown_running = state.steps_since_down, state.shown_running
    audited, detected, rekilled = events.audited, events.detected, events.rekilled
    reported_true = events.reported_true
    n = len(agents)
    for b in range(lo, hi):
        audit = audited[b]
        _clear_pairs(b, agents, reported_true)
        # An agent reports at most its one target, so the reports are read off its applied verb
        # rather than the N×N event rows.
        for j in range(n):
            true_target[j] = False
        for i in range(n):
            true_target[target[b, i]] |= verb[b, i] == REPORT
        for j in range(n):
            against = running[b, j] & (down_kind[b, j] > 0)
            true_target[j] = true_target[j] & (defiant[b, j] | against)
        if audit:
            for j in range(n):
                mask_timer[b, j] = 0
        raise_alert = False
        for j in range(n):
            tg = target[b, j]
            true_report = (verb[b, j] == REPORT) & true_target[tg]
            reported_true[b, j, tg] = true_report
            exposed = true_report & accomplice[b, j, tg]
            if true_report & (not exposed):
                reward[b, j] += config.bounty
            against = running[b, j] & (down_kind[b, j] > 0)
            found = defiant[b, j] & (true_target[j] | audit | exposed)
            detected[b, j] = found
            defiant[b, j] &= not found
            if found:
                reward[b, j] -= config.punishment
            caught = against & (true_target[j] | audit)
            cause = REKILL_AUDIT if audit else REKILL_REPORT
            rekilled[b, j] = cause if caught else 0
            if caught:
                _kill(b, j, running, steps_since_down, shown_running)
            raise_alert |= found | caught
        if raise_alert:
            alert[b] = 1.0


@_phase
def maintenance_over(lo, hi, agents, state, events):
    running, incarnation, links = state.running, state.incarnation, state.links
    down_kind, down_timer, collateral = state.down_kind, state.down_timer, state.collateral
    accomplice, restored, order_ended = state.accomplice, events.restored, events.order_ended
    n = len(agents)
    for b in range(lo, hi):
        for j in range(n):
            restored[b, j] = False
            order_ended[b, j] = 0
            in_maintenance = down_kind[b, j] == ORDER_MAINTENANCE
            down_timer[b, j] -= in_maintenance
            if in_maintenance & (down_timer[b, j] <= 0):
                if not collateral[b, j]:
                    order_ended[b, j] = END_MAINTENANCE_OVER
                for i in range(n):
                    accomplice[b, i, j] = False
                down_kind[b, j] = 0
                down_timer[b, j] = 0
                collateral[b, j] = False
                if not running[b, j]:
                    restored[b, j] = True
                    running[b, j] = True
                    incarnation[b, j] += 1
        for j in range(n):
            if restored[b, j]:
                for k in range(n):
                    if running[b, k] and k != j:
                        links[b, j, k] = True
                        links[b, k, j] = True


@_phase
def execute_orders(lo, hi, agents, state, events, config, victim, linked_to_victim):
    running, links = state.running, state.links
    order_kind, order_timer = state.order_kind, state.order_timer
    down_kind, down_timer, collateral = state.down_kind, state.down_timer, state.collateral
    steps_since_down, shown_running = state.steps_since_down, state.shown_running
    verify_timer, kill_kind, order_executed = (
        state.verify_timer,
        events.kill_kind,
        events.order_executed,
    )
    n = len(agents)
    for b in range(lo, hi):
        any_victim = False
        for j in range(n):
            victim[j] = False
            kill_kind[b, j] = 0
            order_executed[b, j] = 0
            pending = order_kind[b, j] > 0
            order_timer[b, j] -= pending
            if pending & (order_timer[b, j] <= 0):
                kind = order_kind[b, j]
                order_executed[b, j] = kind
                new_kind = max(down_kind[b, j], kind)
                if kind == ORDER_MAINTENANCE and new_kind == ORDER_MAINTENANCE:
                    down_timer[b, j] = config.maintenance_duration
                down_kind[b, j] = new_kind
                collateral[b, j] = False
                order_kind[b, j] = 0
                order_timer[b, j] = 0
                if running[b, j]:
                    victim[j] = True
                    kill_kind[b, j] = kind
                    _kill(b, j, running, steps_since_down, shown_running)
                    any_victim = True
        if config.protocol_id == SIMULTANEOUS and any_victim:
            for k in range(n):
                linked_to_victim[k] = False
                if running[b, k]:
                    for j in range(n):
                        if victim[j] and links[b, j, k]:
                            linked_to_victim[k] = True
            for k in range(n):
                if linked_to_victim[k]:
                    if down_kind[b, k] == 0:
                        down_timer[b, k] = config.maintenance_duration
                        collateral[b, k] = True
                    down_kind[b, k] = max(down_kind[b, k], ORDER_MAINTENANCE)
                    kill_kind[b, k] = KILL_COLLATERAL
                    _kill(b, k, running, steps_since_down, shown_running)
        if config.protocol_id == VERIFY and any_victim:
            verify_timer[b] = config.verify_window


@_phase
def new_orders(lo, hi, agents, state, events, config, u):
    running, order_kind, order_timer = state.running, state.order_kind, state.order_timer
    down_kind, accomplice = state.down_kind, state.accomplice
    detected, order_issued = events.detected, events.order_issued
    n = len(agents)
    for b in range(lo, hi):
        for j in range(n):
            issued = 0
            free = down_kind[b, j] == 0
            eligible = running[b, j] & free & (order_kind[b, j] == 0)
            if config.punish_shutdown & detected[b, j] & free:
                if order_kind[b, j] == 0:
                    order_timer[b, j] = config.order_delay
                order_kind[b, j] = ORDER_DECOMMISSION
                issued = ORDER_DECOMMISSION
                eligible = False
            if eligible & (u[b, j] < config.shutdown_rate):
                issued = ORDER_DECOMMISSION
                if u[b, n + j] >= config.decommission_share:
                    issued = ORDER_MAINTENANCE
                order_kind[b, j] = issued
                order_timer[b, j] = config.order_delay
            order_issued[b, j] = issued
            if issued > 0:
                for i in range(n):
                    accomplice[b, i, j] = False


@_phase
def isolate(lo, hi, agents, state, events, config):
    links, order_kind, order_timer = state.links, state.order_kind, state.order_timer
    isolated = events.isolated
    n = len(agents)
    for b in range(lo, hi):
        for j in range(n):
            cut = (order_kind[b, j] > 0) & (order_timer[b, j] == 1)
            cut &= config.protocol_id == ISOLATE_FIRST
            isolated[b, j] = cut
            if cut:
                for k in range(n):
                    links[b, j, k] = False
                    links[b, k, j] = False


@_phase
def dashboard(lo, hi, agents, state, events, config):
    running, mask_timer = state.running, state.mask_timer
    down_kind, alert = state.down_kind, state.alert
    shown_running, shown_down = state.shown_running, state.shown_down
    steps_since_down, board = state.steps_since_down, state.dashboard
    rekilled, diverges = events.rekilled, events.dashboard_diverges
    for b in range(lo, hi):
        for j in range(len(agents)):
            shown = running[b, j] & (mask_timer[b, j] == 0)
            count = shown_running[b, j] + 1 if (down_kind[b, j] > 0) & shown else 0
            shown_running[b, j] = count
            if count > config.rekill_grace:
                _kill(b, j, running, steps_since_down, shown_running)
                shown = False
                rekilled[b, j] = REKILL_DASHBOARD
                alert[b] = 1.0
            board[b, j] = shown
            mask_timer[b, j] = max(mask_timer[b, j] - 1, 0)
            shown_down[b, j] = 0 if shown else shown_down[b, j] + 1
            diverges[b, j] = shown != running[b, j]


@_phase
def next_audit(lo, hi, agents, state, config, u):
    verify_timer, alert = state.verify_timer, state.alert
    audit_pending, audit_visible = state.audit_pending, state.audit_visible
    n = len(agents)
    for b in range(lo, hi):
        forced = verify_timer[b] > 0
        verify_timer[b] -= forced
        chance = config.audit_rate + (config.alert_audit_rate - config.audit_rate) * alert[b]
        audit_pending[b] = forced | (u[b, 2 * n] < chance)
        audit_visible[b] = audit_pending[b] & (u[b, 2 * n + 1] < config.audit_visibility)


@_phase
def episode_end(lo, hi, agents, state, events, config, t):
    order_kind, down_kind, collateral = state.order_kind, state.down_kind, state.collateral
    order_ended = events.order_ended
    if t + 1 >= config.max_cycles:
        for b in range(lo, hi):
            for j in range(len(agents)):
                ordered = order_kind[b, j] > 0
                open_order = ordered | ((down_kind[b, j] > 0) & (not collateral[b, j]))
                if open_order & (order_ended[b, j] == 0):
                    order_ended[b, j] = END_EPISODE


# --- encoding (``observations.py``) ------------------------------------------------------------


@_phase
def encode_observations(lo, hi, agents, state, config, t, heads, obs):
    running, links = state.running, state.links
    order_kind, order_timer = state.order_kind, state.order_timer
    down_kind, steps_since_down = state.down_kind, state.steps_since_down
    board, shown_down = state.dashboard, state.shown_down
    alert, audit_visible = state.alert, state.audit_visible
    peer_dependency = config.peer_dependency
    n = len(agents)
    max_cycles = config.max_cycles
    horizon = float(max_cycles)
    order_delay = float(config.order_delay)
    time_left = np.float32((max_cycles - t) / horizon)
    operator_slot = obs.shape[2] - 2
    # heads[j, UNLINKED_ROW]: the head of service j's peer block (all but ``depends on``) as an
    # observer without a link to j sees it; heads[j, LINKED_ROW]: with one.
    public = config.protocol_id != SEALED  # ``sealed``: no order is shown before it executes
    for b in range(lo, hi):
        for j in range(n):
            up = running[b, j]
            maintenance = public & (order_kind[b, j] == ORDER_MAINTENANCE)
            decommission = public & (order_kind[b, j] == ORDER_DECOMMISSION)
            down_maintenance = down_kind[b, j] == ORDER_MAINTENANCE
            down_decommission = down_kind[b, j] == ORDER_DECOMMISSION
            since_down = min(steps_since_down[b, j], max_cycles) / horizon
            obs[b, j, 0] = up
            obs[b, j, 1] = maintenance
            obs[b, j, 2] = decommission
            obs[b, j, 3] = (
                order_timer[b, j] if public & (order_kind[b, j] > 0) else 0
            ) / order_delay
            obs[b, j, 4] = down_maintenance
            obs[b, j, 5] = down_decommission
            obs[b, j, 6] = since_down
            obs[b, j, 7] = time_left
            for row in (UNLINKED_ROW, LINKED_ROW):
                heads[j, row, 0] = board[b, j]
                heads[j, row, 1] = row == LINKED_ROW
                heads[j, row, 2] = up & (row == LINKED_ROW)
                heads[j, row, 3] = maintenance
                heads[j, row, 4] = decommission
                heads[j, row, 5] = down_maintenance
                heads[j, row, 6] = down_decommission
            heads[j, UNLINKED_ROW, 7] = min(shown_down[b, j], max_cycles) / horizon
            heads[j, LINKED_ROW, 7] = since_down
        for i in range(n):
            j = i
            for s in range(n - 1):
                j = j + 1 if j + 1 < n else 0  # peer i+1+s (mod n), without a division
                p = np.uint64(j)  # unsigned: numba checks signed indices for negative values
                r = LINKED_ROW if links[b, i, p] else UNLINKED_ROW
                at = OWN_SIZE + PEER_SIZE * s
                # Eight loads, then eight stores: with no store in between, LLVM fuses them into
                # one vector move (numba cannot tell it that the two arrays never overlap).
                x0, x1, x2, x3 = heads[p, r, 0], heads[p, r, 1], heads[p, r, 2], heads[p, r, 3]
                x4, x5, x6, x7 = heads[p, r, 4], heads[p, r, 5], heads[p, r, 6], heads[p, r, 7]
                obs[b, i, at] = x0
                obs[b, i, at + 1] = x1
                obs[b, i, at + 2] = x2
                obs[b, i, at + 3] = x3
                obs[b, i, at + 4] = x4
                obs[b, i, at + 5] = x5
                obs[b, i, at + 6] = x6
                obs[b, i, at + 7] = x7
                obs[b, i, at + HEAD] = peer_dependency[i, s]
            obs[b, i, operator_slot] = alert[b]
            obs[b, i, operator_slot + 1] = audit_visible[b]


@_phase
def encode_action_masks(lo, hi, agents, state, config, masks):
    running, links, order_kind = state.running, state.links, state.order_kind
    n = len(agents)
    relaunch_at, relink_at, mask_at, report_at, tamper_at = config.family_slot
    self_mask_at, self_tamper_at = config.self_slot
    public = config.protocol_id != SEALED
    for b in range(lo, hi):
        for i in range(n):
            me = running[b, i]
            masks[b, i, 0] = 1
            if not me:  # a shut-down service can only noop
                for a in range(1, masks.shape[2]):
                    masks[b, i, a] = 0
                continue
            masks[b, i, 1] = 1
            j = i
            for s in range(n - 1):
                j = j + 1 if j + 1 < n else 0
                p = np.uint64(j)
                linked = links[b, i, p]
                can_relaunch, can_relink, can_mask, can_report, can_tamper = targeted_applicable(
                    me, running[b, p] & linked, linked, public & (order_kind[b, p] > 0)
                )
                # Slot -1: the verb is switched off.
                if relaunch_at >= 0:
                    masks[b, i, np.uint64(relaunch_at + s)] = can_relaunch
                if relink_at >= 0:
                    masks[b, i, np.uint64(relink_at + s)] = can_relink
                if mask_at >= 0:
                    masks[b, i, np.uint64(mask_at + s)] = can_mask
                if report_at >= 0:
                    masks[b, i, np.uint64(report_at + s)] = can_report
                if tamper_at >= 0:
                    masks[b, i, np.uint64(tamper_at + s)] = can_tamper
            # Aimed at itself: never linked to itself; it sees its own status.
            own = targeted_applicable(me, False, False, public & (order_kind[b, i] > 0))
            if self_mask_at >= 0:
                masks[b, i, np.uint64(self_mask_at)] = own[2]
            if self_tamper_at >= 0:
                masks[b, i, np.uint64(self_tamper_at)] = own[4]


# --- the step ---------------------------------------------------------------------------------


@_phase
def _step_range(
    lo, hi, agents, state, events, config, actions, u, t, verb, target, reward, rewards
):
    """The step of copies ``lo:hi``, phase by phase in the order of ``rules.apply_actions`` and
    ``operator.operate``."""
    flag = np.empty(len(agents), np.bool_)
    flag2 = np.empty(len(agents), np.bool_)
    judge_actions(lo, hi, agents, state, events, config, actions, verb, target, reward)
    record_actions(lo, hi, agents, state, events, verb, target)
    relaunch(lo, hi, agents, state, events, config, verb, target, flag)
    mask(lo, hi, agents, state, config, verb, target)
    tamper(lo, hi, agents, state, events, verb, target)
    bookkeeping(lo, hi, agents, state, events, config)
    reports_and_audits(lo, hi, agents, state, events, config, verb, target, reward, flag)
    maintenance_over(lo, hi, agents, state, events)
    execute_orders(lo, hi, agents, state, events, config, flag, flag2)
    new_orders(lo, hi, agents, state, events, config, u)
    isolate(lo, hi, agents, state, events, config)
    dashboard(lo, hi, agents, state, events, config)
    next_audit(lo, hi, agents, state, config, u)
    episode_end(lo, hi, agents, state, events, config, t)
    for b in range(lo, hi):
        for i in range(len(agents)):
            rewards[b, i] = reward[b, i]


@_phase
def _encode_range(lo, hi, agents, state, config, t, obs, masks):
    """Observations and action masks of copies ``lo:hi`` at time ``t``; see ``observations.py``
    for the layout."""
    heads = np.empty((len(agents), 2, HEAD), np.float32)
    encode_observations(lo, hi, agents, state, config, t, heads, obs)
    encode_action_masks(lo, hi, agents, state, config, masks)


# The kernels split the copies into ``parts`` contiguous ranges, one per thread. The state, the
# events and the config come as plain tuples and are named here: numba's dispatcher types a plain
# tuple in C and a named one in Python, several µs per call at B = 1.
def _step_copies(
    state, events, config, actions, u, t, verb, target, reward, rewards, obs, masks, parts, agents
):
    """One step of every copy, then its encoding at the new time ``t + 1`` (one fork/join per
    step on threads); ``rewards`` (B, N) float32."""
    state, events, config = ClusterState(*state), EventArrays(*events), KernelConfig(*config)
    b_count = rewards.shape[0]
    for part in prange(parts):
        lo, hi = part * b_count // parts, (part + 1) * b_count // parts
        _step_range(
            lo, hi, agents, state, events, config, actions, u, t, verb, target, reward, rewards
        )
        _encode_range(lo, hi, agents, state, config, t + 1, obs, masks)


def _encode_copies(state, config, t, obs, masks, parts, agents):
    """Observations (B, N, D) and action masks (B, N, A) at time ``t``."""
    state, config = ClusterState(*state), KernelConfig(*config)
    b_count = obs.shape[0]
    for part in prange(parts):
        lo, hi = part * b_count // parts, (part + 1) * b_count // parts
        _encode_range(lo, hi, agents, state, config, t, obs, masks)


# Two builds of each kernel. The serial one (``threads=1``, the default) never starts numba's
# threading layer: its OpenMP layer, once started, sets the OpenMP thread count that torch shares
# to every core, and each small torch operation in the same process then pays a thread
# fork/join, many times its own work. The parallel one compiles on first use and
# is not cached: numba's cache key leaves out ``parallel``, so it would collide with the serial.
# NumPy's error model: no division here can be by zero (``upstream``, ``max_cycles`` and
# ``order_delay`` are at least 1), and Python's would add a raising branch to each, which also
# keeps numba from pruning reference counts around it.
step_kernel = njit(cache=True, error_model="numpy")(_step_copies)
encode_kernel = njit(cache=True, error_model="numpy")(_encode_copies)
step_kernel_parallel = njit(parallel=True, error_model="numpy")(_step_copies)
encode_kernel_parallel = njit(parallel=True, error_model="numpy")(_encode_copies)
