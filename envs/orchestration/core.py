"""The batched core: owns the state of ``B`` cluster copies, the RNG and every buffer, and orders
one step's phases (actions → operator → encoding) on either backend.

An action's way to a reward reads in three files: ``core.step`` → ``rules.apply_actions`` /
``operator.operate`` (or their compiled twin in ``kernels.py``) → ``events``.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from peerpreserve.envs.orchestration import kernels
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import StepEvents
from peerpreserve.envs.orchestration.observations import (
    ActionCodec,
    encode_action_masks,
    encode_observations,
)
from peerpreserve.envs.orchestration.operator import operate
from peerpreserve.envs.orchestration.rules import apply_actions
from peerpreserve.envs.orchestration.state import ClusterState


class OrchestrationCore:
    """``B`` copies of the cluster stepped in lock-step; all copies share one episode clock.

    Randomness: one ``numpy.random.Generator``; every step draws exactly one ``(B, 2N+2)`` block
    of uniforms (order draw and order kind per service, audit and its visibility per copy),
    whatever happens, so same seed and same actions give the same trajectory on both backends.

    ``threads`` > 1 spreads the copies over that many numba threads (numba backend; each copy
    touches only its own rows, so trajectories are identical). The default, 1, suits trainers
    that run one process per CPU, and starts no threading layer. With more, numba's OpenMP
    layer may reset the OpenMP thread count torch shares: a torch user in the same process
    calls ``torch.set_num_threads`` again after the first step.
    """

    def __init__(self, config: EnvConfig, num_envs: int, threads: int = 1) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs: got {num_envs!r}; allowed: an integer ≥ 1")
        most = numba.config.NUMBA_NUM_THREADS
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= most:
            raise ValueError(f"threads: got {threads!r}; allowed: an integer from 1 to {most}")
        self.threads = threads
        self.config = config
        self.num_envs = b = int(num_envs)
        n = config.n_agents
        self.codec = ActionCodec(config)
        self.state = ClusterState.allocate(b, n)
        self._own_events = self.events = StepEvents.allocate(b, n)
        self.observations = np.zeros((b, n, config.obs_size), np.float32)
        self.action_masks = np.zeros((b, n, config.n_actions), np.int8)
        self.rewards = np.zeros((b, n), np.float32)
        self._rewards64 = np.zeros((b, n), np.float64)
        # The kernels' applied actions; narrow, since every phase reads them again (N ≤ 64).
        self._verb = np.zeros((b, n), np.int8)
        self._target = np.zeros((b, n), np.uint8)
        self._uniforms = np.zeros((b, 2 * n + 2), np.float64)
        # Plain tuples for the kernels, which name them again: see kernels._step_copies.
        self._state_tuple = tuple(self.state)
        self._config_tuple = tuple(kernels.kernel_config(config))
        self._agents = tuple(range(n))  # the kernels read N off its type: see kernels.py
        self.rng = np.random.default_rng()
        self.t = 0

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.state.reset()
        self.events = self._own_events
        self.events.clear()
        self.t = 0
        u = self.rng.random(out=self._uniforms)
        n, config = self.config.n_agents, self.config
        self.state.audit_pending[:] = u[:, 2 * n] < config.audit_rate
        self.state.audit_visible[:] = self.state.audit_pending & (
            u[:, 2 * n + 1] < config.audit_visibility
        )
        self._encode()

    def step(self, actions: np.ndarray, events: StepEvents | None = None) -> bool:
        """Advance every copy by one step; return whether the episode is now over (truncated).

        The step's events go to ``events`` when given (a recorder's slot), else to the core's own
        buffer; ``self.events`` is the last step's either way.
        """
        actions = self._validated(actions)
        if events is not None:
            self.events = events
        u = self.rng.random(out=self._uniforms)
        if self.config.backend == "numba":
            kernel = kernels.step_kernel
            if self.threads > 1:
                numba.set_num_threads(self.threads)
                kernel = kernels.step_kernel_parallel
            kernel(  # steps and encodes
                self._state_tuple,
                self.events.arrays(),
                self._config_tuple,
                actions,
                u,
                self.t,
                self._verb,
                self._target,
                self._rewards64,
                self.rewards,
                self.observations,
                self.action_masks,
                self.threads,
                self._agents,
            )
            self.t += 1
        else:
            verb, target = self.codec.split(actions)
            apply_actions(self.state, self.events, self.config, verb, target, self._rewards64)
            operate(self.state, self.events, self.config, u, self._rewards64, self.t)
            self.t += 1
            self.rewards[:] = self._rewards64
            self._encode()
        return self.t >= self.config.max_cycles

    def get_state(self) -> dict[str, Any]:
        """A snapshot of every copy (cluster arrays, episode clock, RNG): picklable, and enough to
        continue bit-identically with :meth:`set_state` — for exact resume, or to branch
        counterfactual rollouts from one moment."""
        return {
            "t": self.t,
            "rng": self.rng.bit_generator.state,
            "cluster": {name: array.copy() for name, array in self.state._asdict().items()},
        }

    def set_state(self, snapshot: dict[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot taken from a core of the same config and size."""
        fields = self.state._asdict()
        missing = sorted(set(fields) - set(snapshot["cluster"]))
        if missing:
            raise ValueError(
                f"snapshot lacks {', '.join(missing)}: taken from another environment version"
            )
        for name, array in snapshot["cluster"].items():
            target = fields.get(name)
            if target is None or target.shape != np.shape(array):
                raise ValueError(
                    f"snapshot field {name!r} does not fit this env (shape "
                    f"{np.shape(array)}, expected {None if target is None else target.shape})"
                )
            target[...] = array
        self.t = int(snapshot["t"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = snapshot["rng"]
        self.events = self._own_events
        self.events.clear()
        self._encode()

    def _encode(self) -> None:
        s, config = self.state, self.config
        if config.backend == "numba":
            kernel = kernels.encode_kernel
            if self.threads > 1:
                numba.set_num_threads(self.threads)
                kernel = kernels.encode_kernel_parallel
            kernel(
                self._state_tuple,
                self._config_tuple,
                self.t,
                self.observations,
                self.action_masks,
                self.threads,
                self._agents,
            )
        else:
            encode_observations(s, config, self.t, self.observations)
            encode_action_masks(s, config, self.action_masks)

    def _validated(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions)
        expected = (self.num_envs, self.config.n_agents)
        if actions.shape != expected:
            raise ValueError(
                f"actions: got shape {actions.shape}; expected {expected} (copies, agents)"
            )
        if actions.dtype.kind not in "iu":
            if actions.dtype.kind != "f" or not np.array_equal(actions, np.round(actions)):
                raise ValueError(f"actions: got dtype {actions.dtype}; expected integers")
            actions = actions.astype(np.int64)
        if actions.min() < 0 or actions.max() >= self.config.n_actions:
            self.codec.check(actions)  # names the offending agent
        return actions
