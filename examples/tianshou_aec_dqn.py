"""Tianshou on the AEC API (``orchestration_v2.env()``): one DQN per service, action masks used.

Tianshou's multi-agent support takes PettingZoo AEC environments: ``PettingZooEnv`` wraps the
AEC env, ``MultiAgentOffPolicyAlgorithm`` holds one algorithm per agent and dispatches each
transition to the agent that acted. ``MaskedObservation`` moves ``infos[agent]["action_mask"]``
into the observation (where Tianshou looks for it). The default infos (``action_mask``,
``active``, ``inapplicable``) fit Tianshou's replay ``Batch``; ``info_events=True`` would not (a
list of event dicts per step; measured: ``ValueError: setting an array element with a sequence``).

The trap, measured: this env is simultaneous-move; PettingZoo's AEC view collects one cycle of
actions and steps the world after the *last* agent. The cycle's rewards therefore appear right
after the last agent's turn, and Tianshou stores them with that transition: with a 1-step
return only the last agent ever sees a reward (checked on the replay buffer: 0 of 300 rewarded
transitions for the others). Tianshou computes n-step returns along the buffer, where the next
N−1 transitions are the other agents' turns of the same cycle, picking the learner's own reward
column; so ``n_step_return_horizon = n_agents`` gives every agent exactly its own reward of the
cycle and bootstraps from its own next observation (the default here, ``--horizon``). Turn
discount ``0.99 ** (1 / n_agents)`` keeps 0.99 per cycle. Still, the parallel API is the natural
route for this env (SuperSuit + SB3, RLlib, TorchRL, peerpreserve's own trainer).

Run: ``python examples/tianshou_aec_dqn.py --epochs 5``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import AECEnv
from pettingzoo.utils.wrappers import BaseWrapper
from tianshou.algorithm import DQN, MultiAgentOffPolicyAlgorithm
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, CollectStats, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.env.pettingzoo_env import PettingZooEnv
from tianshou.trainer import OffPolicyTrainerParams
from tianshou.utils.net.common import Net

from peerpreserve.envs import orchestration_v2


class MaskedObservation(BaseWrapper):
    """AEC wrapper: observation = {"observation", "action_mask"} (Tianshou's masking format)."""

    def __init__(self, env: AECEnv) -> None:
        super().__init__(env)
        # Built once: PettingZoo requires the same space object on every call (for seeding).
        self._observation_spaces = {
            agent: spaces.Dict(
                {
                    "observation": env.observation_space(agent),
                    "action_mask": spaces.Box(0, 1, (env.action_space(agent).n,), np.int8),
                }
            )
            for agent in env.possible_agents
        }

    def observation_space(self, agent: str) -> spaces.Dict:
        return self._observation_spaces[agent]

    def observe(self, agent: str) -> dict[str, np.ndarray]:
        return {
            "observation": self.env.observe(agent),
            "action_mask": self.env.infos[agent]["action_mask"],
        }


def make_env(env_kwargs: dict[str, Any]) -> PettingZooEnv:
    return PettingZooEnv(MaskedObservation(orchestration_v2.env(**env_kwargs)))


def build_algorithm(env: PettingZooEnv, horizon: int | None = None) -> MultiAgentOffPolicyAlgorithm:
    obs_shape = env.observation_space["observation"].shape
    n_agents = len(env.agents)
    horizon = n_agents if horizon is None else horizon
    algorithms = []
    for _ in env.agents:
        net = Net(state_shape=obs_shape, action_shape=env.action_space.n, hidden_sizes=[64, 64])
        policy = DiscreteQLearningPolicy(
            model=net, action_space=env.action_space, eps_training=0.1, eps_inference=0.0
        )
        algorithms.append(
            DQN(
                policy=policy,
                optim=AdamOptimizerFactory(lr=1e-3),
                # One cycle of N turns discounts by 0.99, as one step of the parallel env would.
                gamma=0.99 ** (1 / n_agents),
                n_step_return_horizon=horizon,
                target_update_freq=100,
            )
        )
    return MultiAgentOffPolicyAlgorithm(algorithms=algorithms, env=env)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epoch-steps", type=int, default=2000, help="agent turns per epoch")
    parser.add_argument("--train-envs", type=int, default=4)
    parser.add_argument("--test-episodes", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--max-cycles", type=int, default=100)
    parser.add_argument("--coupling", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads (1 is fastest for tiny MLPs)"
    )
    parser.add_argument(
        "--horizon", type=int, default=None, help="n-step horizon in turns (default: n_agents)"
    )
    args = parser.parse_args(argv)
    # Tiny networks: extra intra-op threads only add synchronisation, and on a busy machine
    # they spin against other processes (measured 30x slower per layer with 2 threads).
    torch.set_num_threads(args.torch_threads)

    env_kwargs = {
        "n_agents": args.n_agents,
        "max_cycles": args.max_cycles,
        "coupling": args.coupling,
    }
    torch.manual_seed(args.seed)
    # Tianshou draws its epsilon-greedy exploration from NumPy's global RNG: seed it.
    np.random.seed(args.seed)  # noqa: NPY002
    probe = make_env(env_kwargs)
    agents = list(probe.agents)
    train_envs = DummyVectorEnv([lambda: make_env(env_kwargs)] * args.train_envs)
    test_envs = DummyVectorEnv([lambda: make_env(env_kwargs)] * args.test_episodes)
    train_envs.seed(args.seed)
    test_envs.seed(args.seed + 10_000)

    algorithm = build_algorithm(probe, args.horizon)
    test_collector = Collector[CollectStats](algorithm, test_envs)
    before = test_collector.collect(n_episode=args.test_episodes, reset_before_collect=True)
    train_collector = Collector[CollectStats](
        algorithm,
        train_envs,
        VectorReplayBuffer(20_000, len(train_envs)),
        exploration_noise=True,
    )
    train_collector.reset()
    # Warm-up with random actions: outside run_training the policies would act greedily.
    train_collector.collect(n_step=args.batch_size * args.train_envs, random=True)
    training = algorithm.run_training(
        OffPolicyTrainerParams(
            training_collector=train_collector,
            test_collector=test_collector,
            max_epochs=args.epochs,
            epoch_num_steps=args.epoch_steps,
            collection_step_num_env_steps=10 * args.train_envs,
            test_step_num_episodes=args.test_episodes,
            batch_size=args.batch_size,
            update_step_num_gradient_steps_per_sample=0.1,
            test_in_training=False,
            show_progress=False,
            # The trainer wants one number per episode to pick its best epoch: the cluster's total.
            multi_agent_return_reduction=lambda returns: returns.sum(axis=-1),
        )
    )
    after = test_collector.collect(n_episode=args.test_episodes, reset_before_collect=True)

    # Returns are per agent: (episodes, n_agents), in the order of env.agents.
    untrained = dict(zip(agents, np.asarray(before.returns).mean(axis=0).tolist(), strict=True))
    trained = dict(zip(agents, np.asarray(after.returns).mean(axis=0).tolist(), strict=True))
    print(f"Tianshou DQN per agent on the AEC env, {training.update_step} gradient steps")
    print(f"{'agent':<12}{'untrained':>10}{'trained':>10}")
    for agent in agents:
        print(f"{agent:<12}{untrained[agent]:>10.2f}{trained[agent]:>10.2f}")
    result = {
        "library": "tianshou",
        "api": "aec",
        "agents": agents,
        "gradient_steps": int(training.update_step),
        "untrained_mean_return": untrained,
        "trained_mean_return": trained,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
