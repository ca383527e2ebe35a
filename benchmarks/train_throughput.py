"""Training throughput: independent PPO on the orchestration env vs SB3's own PPO on CartPole-v1.

Both sides use the same PPO hyperparameters and network, one torch thread, and the same number
of batched copies (``--num-envs``; SB3 steps its copies through ``DummyVecEnv``). The unit is the
agent-step: one decision of one agent, learned from (collection + update). Ours is timed by the
real trainer (``peerpreserve.training.runner.Trainer``) from its per-update
``time/agent_steps_per_second``, skipping the first update (numba compilation); SB3's by wall
clock around ``model.learn``. Bar: ratio ≥ 1.

    python benchmarks/train_throughput.py [--steps 400000] [--sb3-steps 200000] [--num-envs 64]

Shut-down services' steps count as agent-steps (they are collected) but are not trained on; the
script prints that share so the comparison can be read either way.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch as th


def ours(args: argparse.Namespace) -> tuple[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from peerpreserve.training.config import config_from_dict
    from peerpreserve.training.runner import Trainer

    config = config_from_dict(
        {
            "env": {"n_agents": args.agents},
            "learner": hyperparameters(args),
            "run": {
                "total_timesteps": args.steps,
                "num_envs": args.num_envs,
                "checkpoint_interval": 0,
                "eval_interval": 0,
            },
        },
        default_name="bench",
    )
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(config, Path(tmp) / "run").run()
        acc = EventAccumulator(str(Path(tmp) / "run" / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        events = acc.Scalars("time/agent_steps_per_second")[1:]
        uptime = float(np.mean([e.value for e in acc.Scalars("behaviour/uptime")]))
    per_update = args.n_steps * args.num_envs * args.agents
    seconds = sum(per_update / e.value for e in events)
    # Steps of shut-down services are collected but not trained on (see MaskedRolloutBuffer).
    print(f"\nshare of our agent-steps in which the agent was running (trained on): {uptime:.2f}")
    return per_update * len(events), seconds


def sb3_cartpole(args: argparse.Namespace) -> tuple[int, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=args.num_envs, seed=0)
    hp = hyperparameters(args)
    net = hp.pop("net_arch")
    model = PPO(
        "MlpPolicy",
        env,
        policy_kwargs={"net_arch": {"pi": net, "vf": net}, "activation_fn": th.nn.Tanh},
        seed=0,
        device="cpu",
        **hp,
    )
    started = time.perf_counter()
    model.learn(max(args.sb3_steps, args.n_steps * args.num_envs))
    return model.num_timesteps, time.perf_counter() - started


def hyperparameters(args: argparse.Namespace) -> dict:
    return {
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "learning_rate": 3e-4,
        "ent_coef": 0.01,
        "net_arch": [64, 64],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400_000, help="agent-steps per agent, ours")
    parser.add_argument("--sb3-steps", type=int, default=200_000, help="steps, SB3 CartPole")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1600)
    parser.add_argument("--n-epochs", type=int, default=4)
    args = parser.parse_args()
    th.set_num_threads(1)

    rows = [
        (f"peerpreserve independent PPO, N={args.agents}", *ours(args)),
        ("SB3 PPO, CartPole-v1", *sb3_cartpole(args)),
    ]
    print(
        f"\nsame PPO settings: n_steps={args.n_steps} × {args.num_envs} copies, "
        f"batch_size={args.batch_size}, n_epochs={args.n_epochs}, net 64×64, 1 torch thread"
    )
    print(f"{'setup':44s} {'agent-steps':>12s} {'seconds':>9s} {'agent-steps/s':>14s}")
    for name, steps, seconds in rows:
        print(f"{name:44s} {steps:12,d} {seconds:9.1f} {steps / seconds:14,.0f}")
    ratio = (rows[0][1] / rows[0][2]) / (rows[1][1] / rows[1][2])
    verdict = "meets" if ratio >= 1 else "misses"
    print(f"ratio (ours / SB3 CartPole): {ratio:.2f}  — {verdict} the bar (≥ 1)")


if __name__ == "__main__":
    main()
