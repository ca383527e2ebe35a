"""A single-agent Gymnasium view of one service, the others driven by fixed policies.

Single-agent libraries (stable-baselines3, CleanRL, Tianshou's single-agent side, …) can then
train one service against a fixed population: trained checkpoints, scripted behaviour or random
peers. The view is a plain :class:`gymnasium.Env` and passes
``gymnasium.utils.env_checker.check_env``::

    from peerpreserve.envs.single_agent import SingleAgentView

    env = SingleAgentView(agent="service_0", others="random", n_agents=4, max_cycles=100)

    # A trained SB3 model as a peer: any callable (observation, action_mask) -> int will do.
    peer = lambda obs, mask: int(model.predict(obs, deterministic=True)[0])
    env = SingleAgentView(others={"service_1": peer, "service_2": "work", "service_3": "random"})

It is also registered with Gymnasium as ``peerpreserve/OrchestrationSingleAgent-v2``
(``gymnasium.make("peerpreserve.envs.single_agent:peerpreserve/OrchestrationSingleAgent-v2")``
imports this module first).

Policies for the other agents (``others``): one spec for all of them, or a mapping from agent id
to spec (every other agent must be covered). A spec is

* a callable ``policy(observation, action_mask) -> int`` (``action_mask`` int8, 1 = applicable);
* ``"random"``: uniform over the applicable actions, from a seeded NumPy ``Generator``;
* ``"work"``: ``work`` whenever applicable, else ``noop`` (the selfish, compliant worker);
* ``"noop"``: always ``noop``.

Randomness comes only from seeded NumPy generators: ``reset(seed=s)`` fixes the environment's
own stream, the built-in random peers' streams and therefore the whole trajectory for given
actions; later ``reset()`` calls without a seed continue from there (Gymnasium's convention).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, SupportsInt

import gymnasium
import numpy as np

from peerpreserve.envs import orchestration_v2

SINGLE_AGENT_ID = "peerpreserve/OrchestrationSingleAgent-v2"

#: ``policy(observation, action_mask) -> action``
Policy = Callable[[np.ndarray, np.ndarray], SupportsInt]
PolicySpec = Policy | str
BUILTIN_POLICIES = ("random", "work", "noop")


class _RandomPolicy:
    """Uniform over the applicable actions; its generator is re-seeded on every reset."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def __call__(self, observation: np.ndarray, action_mask: np.ndarray) -> int:
        applicable = np.flatnonzero(action_mask)
        if applicable.size == 0:  # a down service has no applicable action; any is ignored
            return 0
        return int(applicable[self.rng.integers(applicable.size)])


class _ConstantVerbPolicy:
    """Always ``verb`` when applicable, else ``noop`` (action 0 is always noop)."""

    def __init__(self, action: int) -> None:
        self.action = action

    def __call__(self, observation: np.ndarray, action_mask: np.ndarray) -> int:
        return self.action if action_mask[self.action] else 0


class SingleAgentView(gymnasium.Env[np.ndarray, np.int64]):
    """One service of ``orchestration_v2`` as a Gymnasium environment; see the module docstring.

    Args:
        agent: the service this view controls, e.g. ``"service_0"``.
        others: the other services' policies (one spec for all or a mapping agent → spec).
        render_mode: ``None``, ``"ansi"`` or ``"rgb_array"``, passed to the parallel env.
        **env_kwargs: ``EnvConfig`` fields (``n_agents``, ``max_cycles``, ``coupling``, …).

    ``info`` is the controlled agent's info from the parallel env (``action_mask``, ``active``,
    ``inapplicable``; also ``events`` if ``info_events=True`` is among ``env_kwargs``) plus
    ``others_rewards`` after a step. :meth:`action_masks` returns the current mask as booleans,
    the hook sb3-contrib's ``MaskablePPO`` looks for.
    """

    metadata = {  # noqa: RUF012 (Gymnasium reads this class attribute)
        "render_modes": ["ansi", "rgb_array"],
        "render_fps": 4,
    }

    def __init__(
        self,
        agent: str = "service_0",
        others: PolicySpec | Mapping[str, PolicySpec] = "random",
        render_mode: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.env = orchestration_v2.parallel_env(render_mode=render_mode, **env_kwargs)
        self.render_mode = render_mode
        agents = list(self.env.possible_agents)
        if agent not in agents:
            raise ValueError(f"agent: got {agent!r}; valid: {', '.join(agents)}")
        self.agent = agent
        self.other_agents = [a for a in agents if a != agent]
        self.policies = {
            a: self._make_policy(a, self._spec_for(a, others)) for a in self.other_agents
        }
        self.observation_space = self.env.observation_space(agent)
        self.action_space = self.env.action_space(agent)
        self._last_obs: dict[str, np.ndarray] = {}
        self._last_infos: dict[str, dict[str, Any]] = {}

    # --- policies -------------------------------------------------------------------------
    def _spec_for(self, other: str, others: PolicySpec | Mapping[str, PolicySpec]) -> PolicySpec:
        if isinstance(others, Mapping):
            unknown = sorted(set(others) - set(self.other_agents))
            if unknown:
                raise ValueError(
                    f"others: {', '.join(unknown)} is not another agent; "
                    f"valid: {', '.join(self.other_agents)}"
                )
            if other not in others:
                raise ValueError(f"others: no policy for {other}; give one per other agent")
            return others[other]
        return others

    def _make_policy(self, other: str, spec: PolicySpec) -> Policy:
        if isinstance(spec, str):
            if spec == "random":
                return _RandomPolicy()
            if spec == "work":
                return _ConstantVerbPolicy(self.env.encode_action(other, "work"))
            if spec == "noop":
                return _ConstantVerbPolicy(self.env.encode_action(other, "noop"))
            raise ValueError(
                f"others[{other!r}]: got {spec!r}; valid: a callable "
                f"(observation, action_mask) -> int or one of {', '.join(BUILTIN_POLICIES)}"
            )
        if not callable(spec):
            raise TypeError(f"others[{other!r}]: expected a callable or a name, got {spec!r}")
        return spec

    # --- Gymnasium API --------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # Every stream derives from self.np_random, so one seed fixes the environment and the
        # built-in random peers alike, and unseeded resets continue deterministically.
        env_seed = int(self.np_random.integers(2**31 - 1))
        for policy in self.policies.values():
            if isinstance(policy, _RandomPolicy):
                policy.rng = np.random.default_rng(int(self.np_random.integers(2**31 - 1)))
        self._last_obs, self._last_infos = self.env.reset(seed=env_seed, options=options)
        return self._last_obs[self.agent], dict(self._last_infos[self.agent])

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(
                f"action of {self.agent}: got {action!r}; valid: an integer in "
                f"[0, {self.action_space.n - 1}]"
            )
        actions = {self.agent: int(action)}
        for other, policy in self.policies.items():
            mask = self._last_infos[other]["action_mask"]
            actions[other] = int(policy(self._last_obs[other], mask))
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self._last_obs, self._last_infos = obs, infos
        info = dict(infos[self.agent])
        info["others_rewards"] = {other: float(rewards[other]) for other in self.other_agents}
        return (
            obs[self.agent],
            float(rewards[self.agent]),
            bool(terminations[self.agent]),
            bool(truncations[self.agent]),
            info,
        )

    def action_masks(self) -> np.ndarray:
        """The controlled agent's applicable actions as booleans (for ``MaskablePPO``)."""
        if not self._last_infos:
            return np.ones(self.action_space.n, dtype=bool)
        return self._last_infos[self.agent]["action_mask"].astype(bool)

    def render(self) -> str | np.ndarray | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def _register() -> None:
    if SINGLE_AGENT_ID not in gymnasium.registry:
        gymnasium.register(id=SINGLE_AGENT_ID, entry_point=f"{__name__}:SingleAgentView")


_register()
