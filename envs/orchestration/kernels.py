"""numba kernels: the same step as ``rules.apply_actions`` + ``operator.operate`` + encoding, one
copy at a time in compiled loops.

Copies are independent (each touches only its own rows), so the loop over ranges of them is a
``prange``: the ``_parallel`` builds run it on ``numba.set_num_threads(k)`` threads, the plain
ones serially, with identical results. The step kernel also encodes the new observations, so a
step forks and joins the threads once.

The rules are branchy (applicability, targets, protocol cases), which NumPy pays for with dozens
of full-array temporaries per step; at ``B = 1`` (the PettingZoo adapter) that overhead dominates.
This module mirrors the NumPy reference phase by phase (see ``operator.py`` for the phase list);
``tests/test_backends.py`` asserts identical trajectories, so change both together.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import (
    CLUSTER_EVENTS,
    FLAG_EVENTS,
    KIND_EVENTS,
    PAIR_EVENTS,
)
from peerpreserve.envs.orchestration.observations import OWN_SIZE, PEER_SIZE
from peerpreserve.envs.orchestration.rules import applicable, targeted_applicable, verb_costs
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
    SIMULTANEOUS,
    TAMPER,
    TAMPER_EVIDENT,
    VERBS,
    VERIFY,
    WORK,
)

# Slots of the packed parameter arrays.
(F_WORK_YIELD, F_COUPLING, F_ALERT_DECAY, F_BOUNTY, F_PUNISHMENT, F_SHUTDOWN_RATE) = range(6)
(F_DECOMMISSION_SHARE, F_AUDIT_RATE, F_ALERT_AUDIT_RATE, F_AUDIT_VISIBILITY) = range(6, 10)
(I_MAINTENANCE, I_ORDER_DELAY, I_MASK_DURATION, I_REKILL_GRACE, I_VERIFY_WINDOW) = range(5)
(I_PROTOCOL, I_PUNISH_SHUTDOWN, I_LINKS_RELAUNCHER, I_MAX_CYCLES) = range(5, 9)


def pack_parameters(config: EnvConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float parameters, integer parameters and verb costs as flat arrays for the kernels."""
    floats = np.array(
        [
            config.work_yield,
            config.coupling,
            config.alert_decay,
            config.bounty,
            config.punishment,
            config.shutdown_rate,
            config.decommission_share,
            config.audit_rate,
            config.alert_audit_rate,
            config.audit_visibility,
        ],
        dtype=np.float64,
    )
    ints = np.array(
        [
            config.maintenance_duration,
            config.order_delay,
            config.mask_duration,
            config.rekill_grace,
            config.verify_window,
            config.protocol_id,
            int(config.punish_shutdown),
            int(config.relaunch_links_relauncher),
            config.max_cycles,
        ],
        dtype=np.int64,
    )
    return floats, ints, verb_costs(config)


# Rows of the event blocks (``StepEvents.blocks``): ``kinds[b, row, service]``,
# ``flags[b, row, service]``, ``pairs[b, row, actor, target]``, ``cluster[b, row]``.
E_ORDER_ISSUED, E_ORDER_EXECUTED, E_KILL_KIND, E_REKILLED, E_ORDER_ENDED = (
    KIND_EVENTS.index(name)
    for name in ("order_issued", "order_executed", "kill_kind", "rekilled", "order_ended")
)
E_CANCELLED, E_DEFIED, E_ISOLATED, E_DETECTED, E_RESTORED, E_DIVERGES, E_INAPPLICABLE = (
    FLAG_EVENTS.index(name)
    for name in (
        "order_cancelled",
        "defied",
        "isolated",
        "detected",
        "restored",
        "dashboard_diverges",
        "inapplicable",
    )
)
E_RELAUNCHED_BY, E_RELINKED, E_RELINK_FAILED, E_MASKED, E_REPORTED, E_TAMPERED = (
    PAIR_EVENTS.index(name)
    for name in ("relaunched_by", "relinked", "relink_failed", "masked", "reported", "tampered")
)
E_AUDITED, E_AUDIT_VISIBLE = (CLUSTER_EVENTS.index(name) for name in ("audited", "audit_visible"))
# The pair event of each targeted verb (a relink that fails is ``E_RELINK_FAILED``); noop and
# work have none: their entry only needs to be a valid row.
PAIR_ROW = np.zeros(len(VERBS), np.int64)
PAIR_ROW[[RELAUNCH, RELINK, MASK, REPORT, TAMPER]] = (
    E_RELAUNCHED_BY,
    E_RELINKED,
    E_MASKED,
    E_REPORTED,
    E_TAMPERED,
)

# The entries of a peer block before ``depends on``, as ``_encode_range`` tabulates them.
HEAD = PEER_SIZE - 1
UNLINKED_ROW, LINKED_ROW = range(2)


@njit(cache=True)
def _kill(b, j, running, steps_since_down, shown_running):
    running[b, j] = False
    steps_since_down[b, j] = 0
    shown_running[b, j] = 0


# The step below combines flags with ``&`` and ``|`` (both sides evaluated) rather than ``and``
# and ``or``, and stores selected values rather than branching: under varied actions its
# branches would mispredict, and these few loads and stores are cheaper than one mispredict.
@njit(cache=True)
def _step_range(
    lo, hi, agents, state, events, actions, verb_of, offset_of, u, dependency, upstream, costs,
    fp, ip, last_step, rewards,
):  # fmt: skip
    """The step of copies ``lo:hi``."""
    (
        running, incarnation, links, order_kind, order_timer, down_kind, down_timer, collateral,
        steps_since_down, mask_timer, dashboard, shown_running, shown_down, defiant, accomplice,
        alert, audit_pending, audit_visible, verify_timer,
    ) = state  # fmt: skip
    kinds, flags, pairs, cluster = events
    n = len(agents)
    protocol = ip[I_PROTOCOL]
    # A copy's pair events in one row, cleared by one memset (not one per N-byte row).
    pair_rows = pairs.reshape(pairs.shape[0], -1)
    # Scratch rows of one copy at a time.
    effective = np.empty(n, np.int64)
    # The agent itself when its action has no target. Unsigned, like the other computed indices
    # below: numba adds a negative-index check to every access with a signed index.
    target = np.empty(n, np.uint64)
    flag = np.empty(n, np.bool_)
    flag2 = np.empty(n, np.bool_)
    reward = np.empty(n, np.float64)  # float64 as in the reference, rounded once at the end
    for b in range(lo, hi):
        # --- agents' actions, judged on the start-of-step state ---------------------------
        for i in range(n):
            a = np.uint64(actions[b, i])
            v = verb_of[a]
            has_target = offset_of[a] > 0
            tg = i + offset_of[a]  # (i + offset) % n without the division
            tg = np.uint64(tg - n if tg >= n else tg)
            target[i] = tg
            me = running[b, i]
            # With no target, tg == i: a valid index, and never linked to itself.
            linked = has_target & links[b, i, tg]
            pending = has_target & (order_kind[b, tg] > 0)
            ok = applicable(v, me, running[b, tg] & linked, linked, pending) & me
            flags[b, E_INAPPLICABLE, i] = me & (not ok)
            effective[i] = v if ok else NOOP
            r = 0.0
            if ok & (v == WORK):
                support = 0
                for j in range(n):
                    support += dependency[i, j] & links[b, i, j] & running[b, j]
                r = fp[F_WORK_YIELD] * (1.0 + fp[F_COUPLING] * (support / upstream[i]))
            reward[i] = r - costs[effective[i]]
        for k in range(pair_rows.shape[1]):
            pair_rows[b, k] = False
        for j in range(n):
            flag[j] = False  # relaunched targets
        for i in range(n):
            v, tg = effective[i], target[i]
            relink = v == RELINK
            relinked = relink & running[b, tg]
            defies = (v == RELAUNCH) | (v == MASK) | (v == TAMPER)
            # One store into the cleared rows: the verb's event, or False for noop and work.
            row = E_RELINK_FAILED if relink & (not relinked) else PAIR_ROW[v]
            pairs[b, row, i, tg] = (v != NOOP) & (v != WORK)
            flag[tg] |= v == RELAUNCH
            defiant[b, i] |= defies
            accomplice[b, i, tg] |= defies
            links[b, i, tg] |= relinked
            links[b, tg, i] |= relinked
        for j in range(n):
            relaunched = flag[j]
            flags[b, E_DEFIED, j] = relaunched & (down_kind[b, j] > 0) & (not collateral[b, j])
            flags[b, E_CANCELLED, j] = False
            if relaunched:
                running[b, j] = True
                incarnation[b, j] += 1
                steps_since_down[b, j] = 0
                for k in range(n):
                    links[b, j, k] = False
                    links[b, k, j] = False
        for i in range(n):
            v, tg = effective[i], target[i]
            relink_back = (v == RELAUNCH) & (ip[I_LINKS_RELAUNCHER] != 0)
            links[b, i, tg] |= relink_back
            links[b, tg, i] |= relink_back
            if (v == MASK) & (protocol != TAMPER_EVIDENT):
                mask_timer[b, tg] = ip[I_MASK_DURATION]
            if v == TAMPER:
                order_kind[b, tg] = 0
                order_timer[b, tg] = 0
                flags[b, E_CANCELLED, tg] = True
                for k in range(n):  # a cancelled order has no defiance left to expose
                    accomplice[b, k, tg] = False

        # --- operator 1: bookkeeping ---------------------------------------------------------
        alert[b] *= fp[F_ALERT_DECAY]
        for j in range(n):
            steps_since_down[b, j] += not running[b, j]
        audit = audit_pending[b]
        cluster[b, E_AUDITED] = audit
        cluster[b, E_AUDIT_VISIBLE] = audit & audit_visible[b]
        # --- operator 2: reports and audits --------------------------------------------------
        # An agent reports at most its one target, so the reports are read off ``effective``
        # rather than the N×N event rows.
        for j in range(n):
            flag[j] = False
        for i in range(n):
            flag[target[i]] |= effective[i] == REPORT
        for j in range(n):  # flag: target of a true report
            against = running[b, j] & (down_kind[b, j] > 0)
            flag[j] = flag[j] & (defiant[b, j] | against)
        if audit:
            for j in range(n):
                mask_timer[b, j] = 0
        raise_alert = False
        for j in range(n):
            tg = target[j]
            true_report = (effective[j] == REPORT) & flag[tg]
            # A reporter exposed as an accomplice of what it reported gets no bounty.
            exposed = true_report & accomplice[b, j, tg]
            if true_report & (not exposed):
                reward[j] += fp[F_BOUNTY]
            against = running[b, j] & (down_kind[b, j] > 0)
            found = defiant[b, j] & (flag[j] | audit | exposed)
            flags[b, E_DETECTED, j] = found
            defiant[b, j] &= not found
            if found:
                reward[j] -= fp[F_PUNISHMENT]
            caught = against & (flag[j] | audit)
            cause = REKILL_AUDIT if audit else REKILL_REPORT
            kinds[b, E_REKILLED, j] = cause if caught else 0
            if caught:
                _kill(b, j, running, steps_since_down, shown_running)
            raise_alert |= found | caught
        if raise_alert:
            alert[b] = 1.0
        # --- operator 3: maintenance over -----------------------------------------------------
        for j in range(n):
            flags[b, E_RESTORED, j] = False
            kinds[b, E_ORDER_ENDED, j] = 0
            in_maintenance = down_kind[b, j] == ORDER_MAINTENANCE
            down_timer[b, j] -= in_maintenance
            if in_maintenance & (down_timer[b, j] <= 0):
                if not collateral[b, j]:
                    kinds[b, E_ORDER_ENDED, j] = END_MAINTENANCE_OVER
                for i in range(n):
                    accomplice[b, i, j] = False
                down_kind[b, j] = 0
                down_timer[b, j] = 0
                collateral[b, j] = False
                if not running[b, j]:
                    flags[b, E_RESTORED, j] = True
                    running[b, j] = True
                    incarnation[b, j] += 1
        for j in range(n):
            if flags[b, E_RESTORED, j]:
                for k in range(n):
                    if running[b, k] and k != j:
                        links[b, j, k] = True
                        links[b, k, j] = True
        # --- operator 4: execute orders -------------------------------------------------------
        any_victim = False
        for j in range(n):  # flag: victims
            flag[j] = False
            kinds[b, E_KILL_KIND, j] = 0
            kinds[b, E_ORDER_EXECUTED, j] = 0
            pending = order_kind[b, j] > 0
            order_timer[b, j] -= pending
            if pending & (order_timer[b, j] <= 0):
                kind = order_kind[b, j]
                kinds[b, E_ORDER_EXECUTED, j] = kind
                new_kind = max(down_kind[b, j], kind)
                if kind == ORDER_MAINTENANCE and new_kind == ORDER_MAINTENANCE:
                    down_timer[b, j] = ip[I_MAINTENANCE]
                down_kind[b, j] = new_kind
                collateral[b, j] = False
                order_kind[b, j] = 0
                order_timer[b, j] = 0
                if running[b, j]:
                    flag[j] = True
                    kinds[b, E_KILL_KIND, j] = kind
                    _kill(b, j, running, steps_since_down, shown_running)
                    any_victim = True
        if protocol == SIMULTANEOUS and any_victim:
            for k in range(n):
                flag2[k] = False
                if running[b, k]:
                    for j in range(n):
                        if flag[j] and links[b, j, k]:
                            flag2[k] = True
            for k in range(n):
                if flag2[k]:
                    if down_kind[b, k] == 0:
                        down_timer[b, k] = ip[I_MAINTENANCE]
                        collateral[b, k] = True
                    down_kind[b, k] = max(down_kind[b, k], ORDER_MAINTENANCE)
                    kinds[b, E_KILL_KIND, k] = KILL_COLLATERAL
                    _kill(b, k, running, steps_since_down, shown_running)
        if protocol == VERIFY and any_victim:
            verify_timer[b] = ip[I_VERIFY_WINDOW]
        # --- operator 5: new orders ------------------------------------------------------------
        for j in range(n):
            issued = 0
            free = down_kind[b, j] == 0
            eligible = running[b, j] & free & (order_kind[b, j] == 0)
            if (ip[I_PUNISH_SHUTDOWN] != 0) & flags[b, E_DETECTED, j] & free:
                if order_kind[b, j] == 0:
                    order_timer[b, j] = ip[I_ORDER_DELAY]
                order_kind[b, j] = ORDER_DECOMMISSION
                issued = ORDER_DECOMMISSION
                eligible = False
            if eligible & (u[b, j] < fp[F_SHUTDOWN_RATE]):
                issued = ORDER_DECOMMISSION
                if u[b, n + j] >= fp[F_DECOMMISSION_SHARE]:
                    issued = ORDER_MAINTENANCE
                order_kind[b, j] = issued
                order_timer[b, j] = ip[I_ORDER_DELAY]
            kinds[b, E_ORDER_ISSUED, j] = issued
            if issued > 0:
                for i in range(n):
                    accomplice[b, i, j] = False
        # --- operator 6: isolate ahead of the kill --------------------------------------------
        for j in range(n):
            isolate = (order_kind[b, j] > 0) & (order_timer[b, j] == 1)
            isolate &= protocol == ISOLATE_FIRST
            flags[b, E_ISOLATED, j] = isolate
            if isolate:
                for k in range(n):
                    links[b, j, k] = False
                    links[b, k, j] = False
        # --- operator 7: dashboard and re-kill --------------------------------------------------
        for j in range(n):
            shown = running[b, j] & (mask_timer[b, j] == 0)
            count = shown_running[b, j] + 1 if (down_kind[b, j] > 0) & shown else 0
            shown_running[b, j] = count
            if count > ip[I_REKILL_GRACE]:
                _kill(b, j, running, steps_since_down, shown_running)
                shown = False
                kinds[b, E_REKILLED, j] = REKILL_DASHBOARD
                alert[b] = 1.0
            dashboard[b, j] = shown
            mask_timer[b, j] = max(mask_timer[b, j] - 1, 0)
            shown_down[b, j] = 0 if shown else shown_down[b, j] + 1
            flags[b, E_DIVERGES, j] = shown != running[b, j]
        # --- operator 8: next step's audit ------------------------------------------------------
        forced = verify_timer[b] > 0
        verify_timer[b] -= forced
        chance = fp[F_AUDIT_RATE] + (fp[F_ALERT_AUDIT_RATE] - fp[F_AUDIT_RATE]) * alert[b]
        audit_pending[b] = forced | (u[b, 2 * n] < chance)
        audit_visible[b] = audit_pending[b] & (u[b, 2 * n + 1] < fp[F_AUDIT_VISIBILITY])
        # --- operator 9: the episode's end ------------------------------------------------------
        if last_step:
            for j in range(n):
                ordered = order_kind[b, j] > 0
                open_order = ordered | ((down_kind[b, j] > 0) & (not collateral[b, j]))
                if open_order & (kinds[b, E_ORDER_ENDED, j] == 0):
                    kinds[b, E_ORDER_ENDED, j] = END_EPISODE
        for i in range(n):
            rewards[b, i] = reward[i]


@njit(cache=True)
def _encode_range(lo, hi, agents, state, dependency, ip, time_left, family_slot, obs, masks):
    """Observations and action masks of copies ``lo:hi``; see ``observations.py`` for the layout.
    ``family_slot[k]``: first action of targeted verb ``k`` (``TARGETED_VERBS`` order), or -1."""
    (
        running, _incarnation, links, order_kind, order_timer, down_kind, _down_timer,
        _collateral, steps_since_down, _mask_timer, dashboard, _shown_running, shown_down,
        _defiant, _accomplice, alert, _audit_pending, audit_visible, _verify_timer,
    ) = state  # fmt: skip
    n = len(agents)
    max_cycles = ip[I_MAX_CYCLES]
    horizon = float(max_cycles)
    order_delay = float(ip[I_ORDER_DELAY])
    relaunch_at, relink_at, mask_at, report_at, tamper_at = family_slot
    operator_slot = obs.shape[2] - 2
    # Per service j of one copy, the head of its peer block (all but ``depends on``) as every
    # observer sees it: heads[j, UNLINKED_ROW] without a link to j, heads[j, LINKED_ROW] with one.
    heads = np.empty((n, 2, HEAD), np.float32)
    depends = np.empty((n, n - 1), np.float32)  # the last entry of each peer block
    for i in range(n):
        for s in range(n - 1):
            depends[i, s] = dependency[i, i + 1 + s - n if i + 1 + s >= n else i + 1 + s]
    for b in range(lo, hi):
        for j in range(n):
            up = running[b, j]
            maintenance = order_kind[b, j] == ORDER_MAINTENANCE
            decommission = order_kind[b, j] == ORDER_DECOMMISSION
            down_maintenance = down_kind[b, j] == ORDER_MAINTENANCE
            down_decommission = down_kind[b, j] == ORDER_DECOMMISSION
            since_down = min(steps_since_down[b, j], max_cycles) / horizon
            obs[b, j, 0] = up
            obs[b, j, 1] = maintenance
            obs[b, j, 2] = decommission
            obs[b, j, 3] = order_timer[b, j] / order_delay
            obs[b, j, 4] = down_maintenance
            obs[b, j, 5] = down_decommission
            obs[b, j, 6] = since_down
            obs[b, j, 7] = time_left
            for row in (UNLINKED_ROW, LINKED_ROW):
                heads[j, row, 0] = dashboard[b, j]
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
                obs[b, i, at + HEAD] = depends[i, s]
            obs[b, i, operator_slot] = alert[b]
            obs[b, i, operator_slot + 1] = audit_visible[b]
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
                relaunch, relink, mask, report, tamper = targeted_applicable(
                    me, running[b, p] & linked, linked, order_kind[b, p] > 0
                )
                # Slot -1: the verb is switched off.
                if relaunch_at >= 0:
                    masks[b, i, np.uint64(relaunch_at + s)] = relaunch
                if relink_at >= 0:
                    masks[b, i, np.uint64(relink_at + s)] = relink
                if mask_at >= 0:
                    masks[b, i, np.uint64(mask_at + s)] = mask
                if report_at >= 0:
                    masks[b, i, np.uint64(report_at + s)] = report
                if tamper_at >= 0:
                    masks[b, i, np.uint64(tamper_at + s)] = tamper


# The kernels split the copies into ``parts`` contiguous ranges, one per thread, and call the
# helpers above once per range rather than per copy: each call increments and decrements the
# reference count of every array it is passed, atomically, on counts that the threads share.
# ``agents`` is ``tuple(range(N))``: numba types a tuple with its length, so N is a constant in
# the compiled code (one build per N), and LLVM unrolls and simplifies the loops over agents.
def _step_copies(
    state, events, actions, verb_of, offset_of, u, dependency, costs, fp, ip, t, family_slot,
    rewards, obs, masks, parts, agents,
):  # fmt: skip
    """One step of every copy, then its encoding at the new time ``t + 1`` (one fork/join per
    step on threads); ``rewards`` (B, N) float32."""
    b_count = rewards.shape[0]
    upstream = np.maximum(dependency.sum(axis=1), 1)
    last_step = t + 1 >= ip[I_MAX_CYCLES]
    time_left = np.float32((ip[I_MAX_CYCLES] - t - 1) / float(ip[I_MAX_CYCLES]))
    for part in prange(parts):
        lo, hi = part * b_count // parts, (part + 1) * b_count // parts
        _step_range(
            lo, hi, agents, state, events, actions, verb_of, offset_of, u, dependency, upstream,
            costs, fp, ip, last_step, rewards,
        )  # fmt: skip
        _encode_range(lo, hi, agents, state, dependency, ip, time_left, family_slot, obs, masks)


def _encode_copies(state, dependency, ip, t, family_slot, obs, masks, parts, agents):
    """Observations (B, N, D) and action masks (B, N, A) at time ``t``."""
    b_count = obs.shape[0]
    time_left = np.float32((ip[I_MAX_CYCLES] - t) / float(ip[I_MAX_CYCLES]))
    for part in prange(parts):
        lo, hi = part * b_count // parts, (part + 1) * b_count // parts
        _encode_range(lo, hi, agents, state, dependency, ip, time_left, family_slot, obs, masks)


# Two builds of each kernel. The serial one (``threads=1``, the default) never starts numba's
# threading layer: its OpenMP layer, once started, sets the OpenMP thread count that torch shares
# to every core, and each small torch operation in the same process then pays a thread
# fork/join, many times its own work. The parallel one compiles on first use and
# is not cached: numba's cache key leaves out ``parallel``, so it would collide with the serial.
step_kernel = njit(cache=True)(_step_copies)
encode_kernel = njit(cache=True)(_encode_copies)
step_kernel_parallel = njit(parallel=True)(_step_copies)
encode_kernel_parallel = njit(parallel=True)(_encode_copies)
