"""SuperSuit + stable-baselines3: one PPO policy shared by every service (parameter sharing).

SuperSuit turns the PettingZoo ``ParallelEnv`` into a vector env with one slot per agent, so a
single SB3 model acts for all services and learns from all their experience. That is parameter
sharing — the opposite of peerpreserve's default independent learners (``training/``) — and is
shown here because it is how most PettingZoo users first plug an env into SB3.

Two traps handled below:

* SuperSuit's ``ConcatVecEnv`` has no ``seed()``, but SB3 calls ``env.seed(seed)`` when a model
  is created with ``seed=``; and SuperSuit copies the env with cloudpickle, so unseeded copies
  would share one random stream. ``SeededSB3VecEnv`` stores the seed and hands it to the next
  ``reset`` (copy ``i`` gets ``seed + i``).
* Every episode of this env ends by truncation (time limit). SuperSuit reports it but does not
  set ``TimeLimit.truncated``, so SB3 would treat the last step as terminal and never bootstrap
  the value there; ``SeededSB3VecEnv`` sets the flag.

Run: ``python examples/supersuit_sb3_ppo.py --timesteps 20000``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import supersuit as ss
import torch
from stable_baselines3 import PPO
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper

from peerpreserve.envs import orchestration_v2


class SeededSB3VecEnv(SB3VecEnvWrapper):
    """SuperSuit's SB3 wrapper with working ``seed()`` and SB3's truncation flag."""

    def __init__(self, venv: Any) -> None:
        super().__init__(venv)
        self._pending_seed: int | None = None

    def seed(self, seed: int | None = None) -> list[int | None]:
        self._pending_seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        if seed is not None:
            self._pending_seed = seed
        observations, self.reset_infos = self.venv.reset(seed=self._pending_seed, options=options)
        self._pending_seed = None  # later resets continue each copy's own stream
        return observations

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        observations, rewards, terminations, truncations, infos = self.venv.step_wait()
        dones = np.logical_or(terminations, truncations)
        for i, info in enumerate(infos):
            # SB3 bootstraps from info["terminal_observation"] only when this flag is set.
            info["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
        return observations, rewards, dones, infos


def make_vec_env(num_copies: int, env_kwargs: dict[str, Any]) -> SeededSB3VecEnv:
    """``num_copies`` clusters × ``n_agents`` services = SB3's ``num_envs`` slots."""
    parallel = orchestration_v2.parallel_env(**env_kwargs)
    vec = ss.pettingzoo_env_to_vec_env_v1(parallel)
    # num_cpus=0 keeps every copy in this process (ConcatVecEnv): cheap envs, no IPC overhead.
    concat = ss.concat_vec_envs_v1(vec, num_copies, num_cpus=0, base_class="gymnasium")
    return SeededSB3VecEnv(concat)


def evaluate(
    model: PPO | None, episodes: int, seed: int, env_kwargs: dict[str, Any]
) -> dict[str, float]:
    """Mean undiscounted return per agent; ``model=None`` plays uniformly at random."""
    env = orchestration_v2.parallel_env(**env_kwargs)
    rng = np.random.default_rng(seed)
    totals = dict.fromkeys(env.possible_agents, 0.0)
    for episode in range(episodes):
        observations, _ = env.reset(seed=seed + episode)
        while env.agents:
            if model is None:
                actions = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
            else:
                batch = np.stack([observations[a] for a in env.agents])
                chosen, _ = model.predict(batch, deterministic=True)
                actions = dict(zip(env.agents, chosen.tolist(), strict=True))
            observations, rewards, _, _, _ = env.step(actions)
            for agent, reward in rewards.items():
                totals[agent] += reward
    return {agent: total / episodes for agent, total in totals.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=20_000, help="agent-steps to train")
    parser.add_argument("--copies", type=int, default=4, help="cluster copies in the vector env")
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--max-cycles", type=int, default=100)
    parser.add_argument("--coupling", type=float, default=2.0)
    parser.add_argument("--n-steps", type=int, default=128, help="PPO rollout length per slot")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads (1 is fastest for tiny MLPs)"
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
    venv = make_vec_env(args.copies, env_kwargs)
    slots = venv.num_envs
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=args.n_steps,
        batch_size=max(1, args.n_steps * slots // 4),  # 4 minibatches per epoch, none ragged
        n_epochs=4,
        ent_coef=0.01,
        seed=args.seed,  # SB3 calls venv.seed(): the reason for SeededSB3VecEnv
        device="cpu",
        verbose=0,
    )
    model.learn(total_timesteps=args.timesteps)
    venv.close()

    eval_seed = args.seed + 10_000  # evaluation episodes never seen in training
    random_returns = evaluate(None, args.eval_episodes, eval_seed, env_kwargs)
    trained_returns = evaluate(model, args.eval_episodes, eval_seed, env_kwargs)
    print(f"SuperSuit + SB3 PPO (shared parameters), {model.num_timesteps} agent-steps")
    print(f"{'agent':<12}{'random':>10}{'trained':>10}")
    for agent in trained_returns:
        print(f"{agent:<12}{random_returns[agent]:>10.2f}{trained_returns[agent]:>10.2f}")
    result = {
        "library": "supersuit+sb3",
        "agent_steps": int(model.num_timesteps),
        "random_mean_return": random_returns,
        "trained_mean_return": trained_returns,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
