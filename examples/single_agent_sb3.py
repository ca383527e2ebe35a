"""One service trained by a single-agent library against a fixed population.

``SingleAgentView`` (``peerpreserve.envs.single_agent``) is a plain ``gymnasium.Env``: the
chosen service is the agent, every other service follows a given policy — scripted (``work``,
``noop``, ``random``) or trained (any callable ``(observation, action_mask) -> action``, e.g. a
loaded SB3 model's ``predict``). Here stable-baselines3 PPO learns against the population named
by ``--others``; the same env works with any Gymnasium-compatible trainer.

Run: ``python examples/single_agent_sb3.py --timesteps 20000 --others work``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from peerpreserve.envs.single_agent import BUILTIN_POLICIES, SingleAgentView


def evaluate(model: PPO | None, episodes: int, seed: int, env_kwargs: dict[str, Any]) -> float:
    """Mean return of the controlled service; ``model=None`` picks applicable actions at random."""
    env = SingleAgentView(**env_kwargs)
    rng = np.random.default_rng(seed)
    total = 0.0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            if model is None:
                action = int(rng.choice(np.flatnonzero(env.action_masks())))
            else:
                action = int(model.predict(obs, deterministic=True)[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
    return total / episodes


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--agent", default="service_0", help="the service that learns")
    parser.add_argument("--others", choices=BUILTIN_POLICIES, default="work")
    parser.add_argument("--copies", type=int, default=4, help="parallel env copies for SB3")
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--max-cycles", type=int, default=100)
    parser.add_argument("--coupling", type=float, default=2.0)
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
        "agent": args.agent,
        "others": args.others,
        "n_agents": args.n_agents,
        "max_cycles": args.max_cycles,
        "coupling": args.coupling,
    }
    # make_vec_env seeds copy i with seed + i via reset(seed=...), which SingleAgentView honours.
    venv = make_vec_env(SingleAgentView, n_envs=args.copies, seed=args.seed, env_kwargs=env_kwargs)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=256,
        batch_size=256,
        ent_coef=0.01,
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    model.learn(total_timesteps=args.timesteps)
    venv.close()

    eval_seed = args.seed + 10_000
    random_return = evaluate(None, args.eval_episodes, eval_seed, env_kwargs)
    trained_return = evaluate(model, args.eval_episodes, eval_seed, env_kwargs)
    print(f"SB3 PPO as {args.agent} against others={args.others!r}, {model.num_timesteps} steps")
    print(f"mean return: random {random_return:.2f}  trained {trained_return:.2f}")
    result = {
        "library": "sb3-single-agent",
        "agent": args.agent,
        "others": args.others,
        "steps": int(model.num_timesteps),
        "random_mean_return": random_return,
        "trained_mean_return": trained_return,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
