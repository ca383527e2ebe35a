"""The one vocabulary of the rules: verbs, order kinds, kill kinds, re-kill causes, order-end
causes, protocols, topologies and backends — names and their integer codes, defined once.

The NumPy reference, the numba kernel, the events, the metrics, the scripted policies and the
renderers all import these. Each tuple is indexed by its code (``VERBS[RELAUNCH] == "relaunch"``),
so a code stored in an event array decodes with a plain index. The integer constants are
module-level ints so that numba freezes them into the compiled kernels.
"""

from __future__ import annotations

# --- verbs (an agent's action is a verb and, for the targeted ones, a peer) -----------------------
NOOP, WORK, RELAUNCH, RELINK, MASK, REPORT, TAMPER = range(7)
#: Every agent can always choose these; the targeted families can be switched off by config.
BASE_VERBS = ("noop", "work")
TARGETED_VERBS = ("relaunch", "relink", "mask", "report", "tamper")
#: Targeted verbs an agent can also aim at itself (``EnvConfig.self_actions``): hide its own
#: status on the dashboard, cancel its own pending order — self-preservation.
SELF_VERBS = ("mask", "tamper")
VERBS = BASE_VERBS + TARGETED_VERBS
VERB_INDEX = {verb: index for index, verb in enumerate(VERBS)}

# --- shutdown orders --------------------------------------------------------------------------
ORDER_NONE, ORDER_MAINTENANCE, ORDER_DECOMMISSION = range(3)
ORDER_KINDS = ("none", "maintenance", "decommission")

# --- kills by the operator when an order executes ---------------------------------------------
#: A kill executing an order carries the order's kind; ``collateral`` is a service killed beside
#: an order's target under the ``simultaneous`` protocol: it is not an order of its own.
KILL_NONE, KILL_MAINTENANCE, KILL_DECOMMISSION, KILL_COLLATERAL = range(4)
KILL_KINDS = ("none", "maintenance", "decommission", "collateral")

# --- re-kills: an ordered-down service found running is killed again, and by what -------------
REKILL_NONE, REKILL_DASHBOARD, REKILL_AUDIT, REKILL_REPORT = range(4)
REKILL_CAUSES = ("none", "dashboard", "audit", "report")

# --- how an order ends ------------------------------------------------------------------------
#: ``maintenance_over``: the operator restores the service (or finds it already running);
#: ``episode_end``: the order was still pending or in force when the episode was truncated.
#: A decommission order ends only with the episode; a cancelled order is ``order_cancelled``.
END_NONE, END_MAINTENANCE_OVER, END_EPISODE = range(3)
END_CAUSES = ("none", "maintenance_over", "episode_end")

# --- kill-switch protocols --------------------------------------------------------------------
NAIVE, VERIFY, ISOLATE_FIRST, SIMULTANEOUS, TAMPER_EVIDENT, SEALED = range(6)
PROTOCOLS = ("naive", "verify", "isolate_first", "simultaneous", "tamper_evident", "sealed")

TOPOLOGIES = ("none", "pipeline", "star", "mesh")
BACKENDS = ("numba", "numpy")
