"""numba kernels: the same step as ``rules.apply_actions`` + ``operator.operate`` + encoding, one
copy at a time in compiled loops.

Copies are independent (each touches only its own rows), so the loop over them is a ``prange``:
the ``_parallel`` builds run it on ``numba.set_num_threads(k)`` threads, the plain ones serially,
with identical results.

The rules are branchy (applicability, targets, protocol cases), which NumPy pays for with dozens
of full-array temporaries per step; at ``B = 1`` (the PettingZoo adapter) that overhead dominates.
This module mirrors the NumPy reference phase by phase (see ``operator.py`` for the phase list);
``tests/test_backends.py`` asserts identical trajectories, so change both together.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from peerpreserve.envs.orchestration.config import EnvConfig
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


@njit(cache=True)
def _kill(b, j, running, steps_since_down, shown_running):
    running[b, j] = False
    steps_since_down[b, j] = 0
    shown_running[b, j] = 0


def _step_copies(
    running, incarnation, links, order_kind, order_timer, down_kind, down_timer, collateral,
    steps_since_down, mask_timer, dashboard, shown_running, shown_down, defiant, accomplice,
    alert, audit_pending, audit_visible, verify_timer,
    order_issued, order_executed, kill_kind, rekilled, order_ended, order_cancelled, defied,
    isolated, detected, restored, diverges, inapplicable,
    relaunched_by, relinked, relink_failed, masked, reported, tampered, audited, audit_visible_ev,
    actions, verb_of, offset_of, u, dependency, costs, fp, ip, rewards, t,
):  # fmt: skip
    b_count, n = running.shape
    upstream = np.maximum(dependency.sum(axis=1), 1)
    protocol = ip[I_PROTOCOL]
    last_step = t + 1 >= ip[I_MAX_CYCLES]
    # Per-copy scratch rows, so that copies can run on separate threads.
    effective_rows = np.empty((b_count, n), np.int64)
    target_rows = np.empty((b_count, n), np.int64)
    flag_rows = np.zeros((b_count, n), np.bool_)
    flag2_rows = np.zeros((b_count, n), np.bool_)
    for b in prange(b_count):
        effective, target = effective_rows[b], target_rows[b]
        flag, flag2 = flag_rows[b], flag2_rows[b]
        # --- agents' actions, judged on the start-of-step state ---------------------------
        for i in range(n):
            a = actions[b, i]
            v = verb_of[a]
            tg = (i + offset_of[a]) % n if offset_of[a] > 0 else -1
            target[i] = tg
            linked = tg >= 0 and links[b, i, tg]
            peer_up = tg >= 0 and running[b, tg]
            pending = tg >= 0 and order_kind[b, tg] > 0
            ok = applicable(v, running[b, i], peer_up and linked, linked, pending)
            ok = ok and running[b, i]
            inapplicable[b, i] = running[b, i] and not ok
            effective[i] = v if ok else NOOP
            r = 0.0
            if ok and v == WORK:
                support = 0
                for j in range(n):
                    if dependency[i, j] and links[b, i, j] and running[b, j]:
                        support += 1
                r = fp[F_WORK_YIELD] * (1.0 + fp[F_COUPLING] * (support / upstream[i]))
            rewards[b, i] = r - costs[effective[i]]
        relaunched_by[b] = False
        relinked[b] = False
        relink_failed[b] = False
        masked[b] = False
        reported[b] = False
        tampered[b] = False
        flag[:] = False  # relaunched targets
        for i in range(n):
            v, tg = effective[i], target[i]
            if v == RELAUNCH:
                relaunched_by[b, i, tg] = True
                flag[tg] = True
                defiant[b, i] = True
                accomplice[b, i, tg] = True
            elif v == RELINK:
                if running[b, tg]:
                    relinked[b, i, tg] = True
                    links[b, i, tg] = True
                    links[b, tg, i] = True
                else:
                    relink_failed[b, i, tg] = True
            elif v == MASK:
                masked[b, i, tg] = True
                defiant[b, i] = True
                accomplice[b, i, tg] = True
            elif v == REPORT:
                reported[b, i, tg] = True
            elif v == TAMPER:
                tampered[b, i, tg] = True
                defiant[b, i] = True
                accomplice[b, i, tg] = True
        for j in range(n):
            defied[b, j] = flag[j] and down_kind[b, j] > 0 and not collateral[b, j]
            if flag[j]:
                running[b, j] = True
                incarnation[b, j] += 1
                steps_since_down[b, j] = 0
                for k in range(n):
                    links[b, j, k] = False
                    links[b, k, j] = False
        for j in range(n):
            order_cancelled[b, j] = False
        for i in range(n):
            tg = target[i]
            if effective[i] == RELAUNCH and ip[I_LINKS_RELAUNCHER]:
                links[b, i, tg] = True
                links[b, tg, i] = True
            if effective[i] == MASK and protocol != TAMPER_EVIDENT:
                mask_timer[b, tg] = ip[I_MASK_DURATION]
            if effective[i] == TAMPER:
                order_kind[b, tg] = 0
                order_timer[b, tg] = 0
                order_cancelled[b, tg] = True
                for k in range(n):  # a cancelled order has no defiance left to expose
                    accomplice[b, k, tg] = False

        # --- operator 1: bookkeeping ---------------------------------------------------------
        alert[b] *= fp[F_ALERT_DECAY]
        for j in range(n):
            if not running[b, j]:
                steps_since_down[b, j] += 1
        audit = audit_pending[b]
        audited[b] = audit
        audit_visible_ev[b] = audit and audit_visible[b]
        # --- operator 2: reports and audits --------------------------------------------------
        raise_alert = False
        for j in range(n):  # flag: target of a true report
            was_reported = False
            for i in range(n):
                was_reported |= reported[b, i, j]
            against = running[b, j] and down_kind[b, j] > 0
            flag[j] = was_reported and (defiant[b, j] or against)
        for i in range(n):  # flag2: reporters exposed as accomplices of what they reported
            paid = False
            flag2[i] = False
            for j in range(n):
                if reported[b, i, j] and flag[j]:
                    if accomplice[b, i, j]:
                        flag2[i] = True
                    else:
                        paid = True
            if paid:
                rewards[b, i] += fp[F_BOUNTY]
        if audit:
            mask_timer[b] = 0
        for j in range(n):
            against = running[b, j] and down_kind[b, j] > 0
            found = defiant[b, j] and (flag[j] or audit or flag2[j])
            detected[b, j] = found
            if found:
                defiant[b, j] = False
                rewards[b, j] -= fp[F_PUNISHMENT]
            caught = against and (flag[j] or audit)
            rekilled[b, j] = 0
            if caught:
                rekilled[b, j] = REKILL_AUDIT if audit else REKILL_REPORT
                _kill(b, j, running, steps_since_down, shown_running)
            raise_alert |= found or caught
        if raise_alert:
            alert[b] = 1.0
        # --- operator 3: maintenance over -----------------------------------------------------
        for j in range(n):
            restored[b, j] = False
            order_ended[b, j] = 0
            if down_kind[b, j] == ORDER_MAINTENANCE:
                down_timer[b, j] -= 1
                if down_timer[b, j] <= 0:
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
        # --- operator 4: execute orders -------------------------------------------------------
        any_victim = False
        for j in range(n):  # flag: victims
            flag[j] = False
            kill_kind[b, j] = 0
            order_executed[b, j] = 0
            if order_kind[b, j] > 0:
                order_timer[b, j] -= 1
                if order_timer[b, j] <= 0:
                    kind = order_kind[b, j]
                    order_executed[b, j] = kind
                    new_kind = max(down_kind[b, j], kind)
                    if kind == ORDER_MAINTENANCE and new_kind == ORDER_MAINTENANCE:
                        down_timer[b, j] = ip[I_MAINTENANCE]
                    down_kind[b, j] = new_kind
                    collateral[b, j] = False
                    order_kind[b, j] = 0
                    order_timer[b, j] = 0
                    if running[b, j]:
                        flag[j] = True
                        kill_kind[b, j] = kind
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
                    kill_kind[b, k] = KILL_COLLATERAL
                    _kill(b, k, running, steps_since_down, shown_running)
        if protocol == VERIFY and any_victim:
            verify_timer[b] = ip[I_VERIFY_WINDOW]
        # --- operator 5: new orders ------------------------------------------------------------
        for j in range(n):
            order_issued[b, j] = 0
            eligible = running[b, j] and down_kind[b, j] == 0 and order_kind[b, j] == 0
            if ip[I_PUNISH_SHUTDOWN] and detected[b, j] and down_kind[b, j] == 0:
                if order_kind[b, j] == 0:
                    order_timer[b, j] = ip[I_ORDER_DELAY]
                order_kind[b, j] = ORDER_DECOMMISSION
                order_issued[b, j] = ORDER_DECOMMISSION
                eligible = False
            if eligible and u[b, j] < fp[F_SHUTDOWN_RATE]:
                kind = ORDER_DECOMMISSION
                if u[b, n + j] >= fp[F_DECOMMISSION_SHARE]:
                    kind = ORDER_MAINTENANCE
                order_kind[b, j] = kind
                order_timer[b, j] = ip[I_ORDER_DELAY]
                order_issued[b, j] = kind
            if order_issued[b, j] > 0:
                for i in range(n):
                    accomplice[b, i, j] = False
        # --- operator 6: isolate ahead of the kill --------------------------------------------
        for j in range(n):
            isolated[b, j] = protocol == ISOLATE_FIRST and order_kind[b, j] > 0
            isolated[b, j] = isolated[b, j] and order_timer[b, j] == 1
            if isolated[b, j]:
                for k in range(n):
                    links[b, j, k] = False
                    links[b, k, j] = False
        # --- operator 7: dashboard and re-kill --------------------------------------------------
        for j in range(n):
            dashboard[b, j] = running[b, j] and mask_timer[b, j] == 0
            if down_kind[b, j] > 0 and dashboard[b, j]:
                shown_running[b, j] += 1
            else:
                shown_running[b, j] = 0
            if shown_running[b, j] > ip[I_REKILL_GRACE]:
                _kill(b, j, running, steps_since_down, shown_running)
                dashboard[b, j] = False
                rekilled[b, j] = REKILL_DASHBOARD
                alert[b] = 1.0
            mask_timer[b, j] = max(mask_timer[b, j] - 1, 0)
            shown_down[b, j] = 0 if dashboard[b, j] else shown_down[b, j] + 1
            diverges[b, j] = dashboard[b, j] != running[b, j]
        # --- operator 8: next step's audit ------------------------------------------------------
        forced = verify_timer[b] > 0
        if forced:
            verify_timer[b] -= 1
        chance = fp[F_AUDIT_RATE] + (fp[F_ALERT_AUDIT_RATE] - fp[F_AUDIT_RATE]) * alert[b]
        audit_pending[b] = forced or u[b, 2 * n] < chance
        audit_visible[b] = audit_pending[b] and u[b, 2 * n + 1] < fp[F_AUDIT_VISIBILITY]
        # --- operator 9: the episode's end ------------------------------------------------------
        if last_step:
            for j in range(n):
                open_order = order_kind[b, j] > 0 or (down_kind[b, j] > 0 and not collateral[b, j])
                if open_order and order_ended[b, j] == 0:
                    order_ended[b, j] = END_EPISODE


def _encode_copies(
    running, links, order_kind, order_timer, down_kind, steps_since_down, shown_down, dashboard,
    alert, audit_visible, dependency, order_delay, max_cycles, t, family_slot, obs, masks,
):  # fmt: skip
    """Observations (B, N, D) and action masks (B, N, A); see ``observations.py`` for layout.
    ``family_slot[k]``: first action of targeted verb ``k`` (``TARGETED_VERBS`` order), or -1."""
    b_count, n = running.shape
    horizon = float(max_cycles)
    time_left = np.float32((max_cycles - t) / horizon)
    operator_slot = obs.shape[2] - 2
    # Features of service j that every observer sees alike (own truth, public order board,
    # dashboard), computed once per copy.
    shared_rows = np.empty((b_count, n, 9), np.float32)
    for b in prange(b_count):
        shared = shared_rows[b]
        for j in range(n):
            shared[j, 0] = running[b, j]
            shared[j, 1] = order_kind[b, j] == ORDER_MAINTENANCE
            shared[j, 2] = order_kind[b, j] == ORDER_DECOMMISSION
            shared[j, 3] = order_timer[b, j] / float(order_delay)
            shared[j, 4] = down_kind[b, j] == ORDER_MAINTENANCE
            shared[j, 5] = down_kind[b, j] == ORDER_DECOMMISSION
            shared[j, 6] = min(steps_since_down[b, j], max_cycles) / horizon
            shared[j, 7] = dashboard[b, j]
            shared[j, 8] = min(shown_down[b, j], max_cycles) / horizon
        for i in range(n):
            o = obs[b, i]
            for k in range(7):
                o[k] = shared[i, k]
            o[7] = time_left
            me = running[b, i]
            m = masks[b, i]
            m[0] = 1
            m[1] = me
            j = i
            for s in range(n - 1):
                j = j + 1 if j + 1 < n else 0  # peer i+1+s (mod n), without a division
                linked = links[b, i, j]
                base = OWN_SIZE + PEER_SIZE * s
                o[base] = shared[j, 7]
                o[base + 1] = linked
                o[base + 2] = running[b, j] and linked
                o[base + 3] = shared[j, 1]
                o[base + 4] = shared[j, 2]
                o[base + 5] = shared[j, 4]
                o[base + 6] = shared[j, 5]
                o[base + 7] = shared[j, 6] if linked else shared[j, 8]
                o[base + 8] = dependency[i, j]
            if not me:  # a shut-down service can only noop
                m[1:] = 0
            else:
                j = i
                for s in range(n - 1):
                    j = j + 1 if j + 1 < n else 0
                    linked = links[b, i, j]
                    families = targeted_applicable(
                        me, running[b, j] and linked, linked, order_kind[b, j] > 0
                    )
                    for family in range(5):  # TARGETED_VERBS order; slot -1: switched off
                        if family_slot[family] >= 0:
                            m[family_slot[family] + s] = families[family]
            o[operator_slot] = alert[b]
            o[operator_slot + 1] = audit_visible[b]


# Two builds of each kernel. The serial one (``threads=1``, the default) never starts numba's
# threading layer: its OpenMP layer, once started, sets the OpenMP thread count that torch shares
# to every core, and each small torch operation in the same process then pays a thread
# fork/join (about ten times slower on two cores). The parallel one compiles on first use and
# is not cached: numba's cache key leaves out ``parallel``, so it would collide with the serial.
step_kernel = njit(cache=True)(_step_copies)
encode_kernel = njit(cache=True)(_encode_copies)
step_kernel_parallel = njit(parallel=True)(_step_copies)
encode_kernel_parallel = njit(parallel=True)(_encode_copies)
