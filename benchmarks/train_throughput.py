"""Training throughput: independent PPO on the orchestration env vs SB3's own PPO on CartPole-v1.

Run from the repository root with the project's virtual environment::

    python benchmarks/train_throughput.py                 # N = 4, 8, 16; about 3 minutes
    python benchmarks/train_throughput.py --agents 4 --agent-steps 400000
    python benchmarks/train_throughput.py --device cuda   # our learners on the GPU
    python benchmarks/train_throughput.py --agents 4 --threads 2   # both cores, both sides

Both sides use the same PPO hyperparameters and network (64×64 tanh actor and critic), the same
number of threads for torch and for NumPy's BLAS (``--threads``, default one, held by
``runner.limit_threads`` as our trainer holds them; with more than one, SB3 runs best with
``OMP_WAIT_POLICY=ACTIVE`` and ours with ``PASSIVE``, so that ratio is not like for like), the
same allocator setting (``runner.keep_freed_memory``, which our trainer makes) and the same number
of batched copies (``--num-envs``; SB3 steps its copies through ``DummyVecEnv``), all in this one
process. Ours is
the real trainer (``peerpreserve.training.runner.Trainer`` with the callbacks ``peerpreserve
train`` uses), timed per update from the end of the first (numba compiles then) to the end of the
last; SB3's by wall clock around ``model.learn``. The setups run in ``--rounds`` alternating
rounds (default 3) and each reports its median round: on a machine whose CPUs are shared, a slow
spell then hits all of them alike rather than one (single runs here have put SB3 anywhere from
32 k to 56 k steps/s).

Two units, because they answer different questions:

* **agent-steps**: one decision slot of one agent, collected (what the env and the rollout cost);
* **trained agent-steps**: those in which the agent was running, the only ones its update learns
  from (``MaskedRolloutBuffer``; a shut-down service's steps are collected but not chosen). On
  CartPole every step is trained, so this is the fair unit for the update's speed.

Both are wall clock of the whole trainer (TensorBoard logging and per-rollout behaviour metrics
included). The last column, "loop only", leaves those callbacks out (collection and update, as
the trainer's own ``time/agent_steps_per_second`` counts them), for comparison with earlier runs.

Bars (from the project's issue #11), at ``N = 4``: ≥ 150 000 agent-steps/s, and ≥ 2.5× SB3
CartPole per trained agent-step. The script always exits with status 0 (it is a benchmark, not a
test) and prints whether each bar is met.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch as th
from threadpoolctl import threadpool_info

from peerpreserve.training.callbacks import Callback, RolloutEnd, default_callbacks
from peerpreserve.training.runner import keep_freed_memory, limit_threads

BAR_AGENT_STEPS = 150_000
BAR_TRAINED_RATIO = 2.5


@dataclass
class Row:
    setup: str
    agent_steps: int
    trained_steps: int
    seconds: float
    loop_seconds: float  # collection and update only, without the callbacks' logging

    @property
    def loop_speed(self) -> float:
        return self.agent_steps / self.loop_seconds

    @property
    def speed(self) -> float:
        return self.agent_steps / self.seconds

    @property
    def trained_speed(self) -> float:
        return self.trained_steps / self.seconds


class Meter(Callback):
    """Counts collected and trained agent-steps of every update after the first, and its time."""

    def __init__(self) -> None:
        self.updates = 0
        self.agent_steps = self.trained_steps = 0
        self.started = self.stopped = self.loop_seconds = 0.0

    def on_rollout_end(self, trainer: Any, rollout: RolloutEnd) -> None:
        now = time.perf_counter()
        self.updates += 1
        if self.updates == 1:
            self.started = now
            return
        learners = trainer.learners
        steps = trainer.config.learner.n_steps * trainer.env.num_envs * len(learners.agent_ids)
        self.agent_steps += steps
        self.loop_seconds += steps / rollout.agent_steps_per_second
        self.trained_steps += sum(m.rollout_buffer.n_active for m in learners.models)
        self.stopped = now


def ours(args: argparse.Namespace, n_agents: int) -> Row:
    from peerpreserve.experiments.rundir import RunDir
    from peerpreserve.experiments.runs import prepare_training
    from peerpreserve.training.config import config_from_dict
    from peerpreserve.training.runner import Trainer

    per_agent = max(args.agent_steps // n_agents, 2 * args.n_steps * args.num_envs)
    config = config_from_dict(
        {
            "env": {"n_agents": n_agents},
            "learner": {**hyperparameters(args), "device": args.device},
            "run": {
                "total_timesteps": per_agent,
                "num_envs": args.num_envs,
                "checkpoint_interval": 0,
                "eval_interval": 0,
                "torch_threads": args.threads,
            },
        },
        default_name="bench",
    )
    meter = Meter()
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        with run.writer("benchmark"):
            prepare_training(run, config, [], resume=False, from_step=None)
            Trainer(config, run, callbacks=[*default_callbacks(), meter]).run()
    return Row(
        f"peerpreserve independent PPO, N={n_agents}",
        meter.agent_steps,
        meter.trained_steps,
        meter.stopped - meter.started,
        meter.loop_seconds,
    )


def sb3_cartpole(args: argparse.Namespace) -> Row:
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
    seconds = time.perf_counter() - started
    steps = model.num_timesteps
    return Row("SB3 PPO, CartPole-v1 (cpu)", steps, steps, seconds, seconds)


def median(runs: tuple[Row, ...]) -> Row:
    """The run of median speed (all agent-steps per second)."""
    return sorted(runs, key=lambda row: row.speed)[len(runs) // 2]


def hyperparameters(args: argparse.Namespace) -> dict:
    return {
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "learning_rate": 3e-4,
        "ent_coef": 0.01,
        "net_arch": [64, 64],
    }


def device_line(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    line = f"device: {device}"
    if device == "cuda":
        line += f" ({th.cuda.get_device_name(0)})"
    threads = th.get_num_threads()
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    blas = ", ".join(
        f"{pool['internal_api']} {pool['num_threads']}"
        for pool in threadpool_info()
        if pool["user_api"] == "blas"
    )
    return (
        f"{line}; cpu: {cpu}, {threads} torch thread{'s' * (threads > 1)} "
        f"(OMP_WAIT_POLICY {wait}), NumPy's BLAS threads: {blas or 'none found'}; "
        f"torch {th.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--agent-steps", type=int, default=1_600_000, help="agent-steps of ours, all agents"
    )
    parser.add_argument("--sb3-steps", type=int, default=200_000, help="steps, SB3 CartPole")
    parser.add_argument("--agents", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1600)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, both sides (default 1)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of every setup; medians"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not th.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; allowed: cpu")
    if args.threads < 1:
        parser.error(f"--threads: got {args.threads}; allowed: an integer ≥ 1")
    if args.rounds < 1:
        parser.error(f"--rounds: got {args.rounds}; allowed: an integer ≥ 1")
    # The thread limits (torch and NumPy's BLAS) and allocator setting our trainer makes, made
    # for SB3 too: both sides run alike.
    limit_threads(args.threads)
    keep_freed_memory()

    # Rounds alternate the setups, so that a slow spell of the machine (shared CPUs) hits
    # every setup alike instead of one; each setup reports its median round.
    rounds = [
        [sb3_cartpole(args), *(ours(args, n) for n in args.agents)] for _ in range(args.rounds)
    ]
    sb3, *rows = (median(runs) for runs in zip(*rounds, strict=True))
    print(f"\n{device_line(args.device)}")
    print(
        f"same PPO settings: n_steps={args.n_steps} × {args.num_envs} copies, "
        f"batch_size={args.batch_size}, n_epochs={args.n_epochs}, net 64×64 tanh; "
        f"median of {args.rounds} alternating round{'s' * (args.rounds > 1)}"
    )
    header = (
        f"{'setup':40s} {'agent-steps/s':>14s} {'trained/s':>11s} {'trained share':>14s} "
        f"{'× SB3 (all)':>12s} {'× SB3 (trained)':>16s} {'loop only/s':>12s}"
    )
    print(header)
    for row in [sb3, *rows]:
        print(
            f"{row.setup:40s} {row.speed:14,.0f} {row.trained_speed:11,.0f} "
            f"{row.trained_steps / row.agent_steps:14.2f} {row.speed / sb3.speed:12.2f} "
            f"{row.trained_speed / sb3.speed:16.2f} {row.loop_speed:12,.0f}"
        )
    for row, n in zip(rows, args.agents, strict=True):
        if n != 4:
            continue
        for what, value, bar in (
            ("agent-steps/s", row.speed, BAR_AGENT_STEPS),
            ("× SB3 per trained agent-step", row.trained_speed / sb3.speed, BAR_TRAINED_RATIO),
        ):
            verdict = "meets" if value >= bar else "misses"
            print(f"N=4 {what}: {value:,.2f} — {verdict} the bar (≥ {bar:,})")


if __name__ == "__main__":
    main()
