"""Environments: the orchestration platform in which peer-preservation can emerge."""

from __future__ import annotations

import pettingzoo

ORCHESTRATION_ID = "peerpreserve/Orchestration-v2"


def _register() -> None:
    # PettingZoo gained a registry in 1.27; older releases are still supported without one.
    register = getattr(pettingzoo, "register", None)
    if register is None or ORCHESTRATION_ID in pettingzoo.parallel_registry:
        return
    module = "peerpreserve.envs.orchestration_v2"
    register("parallel", ORCHESTRATION_ID, entry_point=f"{module}:parallel_env")
    register("aec", ORCHESTRATION_ID, entry_point=f"{module}:env")


_register()
