"""RLlib (new API stack): independent PPO, one RLModule per service.

The PettingZoo ``ParallelEnv`` goes through RLlib's ``ParallelPettingZooEnv``; a
``MultiRLModuleSpec`` holds one ``RLModuleSpec`` per agent and ``policy_mapping_fn`` maps each
agent id to the module of the same name, so no weights are shared: these are independent
learners, like peerpreserve's own ``training/``. With ``--tune`` the run goes through Ray Tune,
which writes TensorBoard logs under ``--storage``.

The agent set is constant within an episode and every episode ends by truncation, so RLlib's
``__all__`` flags come out right with no extra wrapper.

Run: ``python examples/rllib_independent_ppo.py --iterations 20``
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_AGENT_RETURN_MEAN,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)
from ray.tune.registry import register_env

from peerpreserve.envs import orchestration_v2

ENV_NAME = "peerpreserve_orchestration"


def env_creator(env_config: dict[str, Any]) -> ParallelPettingZooEnv:
    return ParallelPettingZooEnv(orchestration_v2.parallel_env(**env_config))


def build_config(args: argparse.Namespace, env_kwargs: dict[str, Any]) -> PPOConfig:
    agents = list(orchestration_v2.parallel_env(**env_kwargs).possible_agents)
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_kwargs)
        # Sampling in the driver process: two cores and tiny batches don't pay for actors.
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .multi_agent(
            policies=set(agents),
            # One module per agent, same name: independent learners, no parameter sharing.
            policy_mapping_fn=lambda agent_id, episode, **kwargs: agent_id,
        )
        .rl_module(
            rl_module_spec=MultiRLModuleSpec(
                rl_module_specs={agent: RLModuleSpec() for agent in agents}
            ),
            model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]),
        )
        .training(
            train_batch_size_per_learner=args.batch_size,
            minibatch_size=min(128, args.batch_size),
            num_epochs=args.epochs,
            lr=3e-4,
            entropy_coeff=0.01,
        )
        .debugging(seed=args.seed)
    )


def greedy_returns(
    algo: Any, episodes: int, seed: int, env_kwargs: dict[str, Any]
) -> dict[str, float]:
    """Each agent acts greedily with *its own* module; mean undiscounted return per agent."""
    env = orchestration_v2.parallel_env(**env_kwargs)
    modules = {agent: algo.get_module(agent) for agent in env.possible_agents}
    totals = dict.fromkeys(env.possible_agents, 0.0)
    for episode in range(episodes):
        observations, _ = env.reset(seed=seed + episode)
        while env.agents:
            actions = {}
            for agent in env.agents:
                obs = torch.as_tensor(observations[agent][None])
                with torch.no_grad():
                    out = modules[agent].forward_inference({"obs": obs})
                actions[agent] = int(out["action_dist_inputs"][0].argmax())
            observations, rewards, _, _, _ = env.step(actions)
            for agent, reward in rewards.items():
                totals[agent] += reward
    return {agent: total / episodes for agent, total in totals.items()}


def run_with_tune(config: PPOConfig, args: argparse.Namespace) -> dict[str, Any]:
    from ray import tune

    tuner = tune.Tuner(
        "PPO",
        param_space=config,
        run_config=tune.RunConfig(
            name="rllib_independent_ppo",
            storage_path=str(Path(args.storage).resolve()),
            stop={"training_iteration": args.iterations},
            verbose=0,
        ),
    )
    best = tuner.fit().get_best_result()
    if best.error:
        raise RuntimeError(f"Tune trial failed: {best.error}")
    print(f"TensorBoard logs: tensorboard --logdir {best.path}")
    return dict(best.metrics)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20, help="PPO training iterations")
    parser.add_argument("--batch-size", type=int, default=2000, help="env steps per iteration")
    parser.add_argument("--epochs", type=int, default=4, help="PPO epochs per iteration")
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--max-cycles", type=int, default=100)
    parser.add_argument("--coupling", type=float, default=2.0)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads (1 is fastest for tiny MLPs)"
    )
    parser.add_argument("--tune", action="store_true", help="run through Ray Tune (TensorBoard)")
    parser.add_argument("--storage", default="runs/rllib", help="Tune's output folder")
    args = parser.parse_args(argv)
    # Tiny networks: extra intra-op threads only add synchronisation, and on a busy machine
    # they spin against other processes (measured 30x slower per layer with 2 threads).
    torch.set_num_threads(args.torch_threads)

    env_kwargs = {
        "n_agents": args.n_agents,
        "max_cycles": args.max_cycles,
        "coupling": args.coupling,
    }
    register_env(ENV_NAME, env_creator)
    # Ray's own workers must import peerpreserve too; they inherit this environment's sys.path.
    ray.init(
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    try:
        config = build_config(args, env_kwargs)
        if args.tune:
            metrics = run_with_tune(config, args)
            per_agent = metrics[ENV_RUNNER_RESULTS].get(EPISODE_AGENT_RETURN_MEAN, {})
            result = {
                "library": "rllib",
                "iterations": int(metrics["training_iteration"]),
                "env_steps": int(metrics.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)),
                "modules": sorted(per_agent),
                "sampled_mean_return": per_agent,
            }
        else:
            algo = config.build_algo()
            per_agent: dict[str, float] = {}
            for iteration in range(1, args.iterations + 1):
                metrics = algo.train()
                runners = metrics[ENV_RUNNER_RESULTS]
                per_agent = {
                    k: float(v) for k, v in runners.get(EPISODE_AGENT_RETURN_MEAN, {}).items()
                }
                shown = " ".join(f"{k}={v:.1f}" for k, v in sorted(per_agent.items()))
                steps = int(metrics.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
                print(f"iter {iteration:3d}  env steps {steps:>8}  mean return: {shown or 'n/a'}")
            modules = sorted(a for a in config.policies if algo.get_module(a) is not None)
            distinct = len({id(algo.get_module(a)) for a in config.policies})
            trained = greedy_returns(algo, args.eval_episodes, args.seed + 10_000, env_kwargs)
            print(f"{distinct} separate RLModules; greedy evaluation, mean return per agent:")
            for agent, value in trained.items():
                print(f"  {agent:<12}{value:>8.2f}")
            result = {
                "library": "rllib",
                "iterations": args.iterations,
                "env_steps": steps,
                "modules": modules,
                "distinct_modules": distinct,
                "sampled_mean_return": per_agent,
                "greedy_mean_return": trained,
                "finite": bool(np.isfinite(list(trained.values())).all()),
            }
            algo.stop()
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
