"""BenchMARL: the environment as a custom task, IPPO with one group (and network) per agent.

BenchMARL 1.5.2 needs ``torchrl<0.12``, so it lives in its own virtual environment
(``bash .ci/integration.sh benchmarl`` builds ``.venv-benchmarl``; it is not part of the default
integration run). BenchMARL builds on TorchRL, so the task hands it the same
``PettingZooWrapper(group_map={agent: [agent]}, done_on_any=False)`` as ``torchrl_ippo.py``, on
the env's default infos (all fixed-shape, as TorchRL needs; no ``info_events``).

Run: ``python examples/benchmarl_ippo.py --frames 60000``
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from benchmarl.algorithms import IppoConfig
from benchmarl.environments.common import Task
from benchmarl.environments.pettingzoo.common import PettingZooClass
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models.mlp import MlpConfig
from torchrl.envs import EnvBase, PettingZooWrapper

from peerpreserve.envs import orchestration_v2


class OrchestrationClass(PettingZooClass):
    """BenchMARL task class: its ``config`` holds the ``EnvConfig`` keyword arguments."""

    def get_env_fun(
        self, num_envs: int, continuous_actions: bool, seed: int | None, device: Any
    ) -> Callable[[], EnvBase]:
        config = copy.deepcopy(self.config)

        def make() -> EnvBase:
            parallel = orchestration_v2.parallel_env(**config)
            return PettingZooWrapper(
                parallel,
                group_map={agent: [agent] for agent in parallel.possible_agents},
                done_on_any=False,
                categorical_actions=True,
                seed=seed,
                device=device,
            )

        return make

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_state(self) -> bool:
        return False

    def has_render(self, env: EnvBase) -> bool:
        return False

    @staticmethod
    def env_name() -> str:
        return "peerpreserve_orchestration"


class OrchestrationTask(Task):
    """BenchMARL's task enum; the config is given in code (no YAML file needed)."""

    ORCHESTRATION = None

    @staticmethod
    def associated_class() -> type[OrchestrationClass]:
        return OrchestrationClass


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60_000, help="env steps in total")
    parser.add_argument("--frames-per-batch", type=int, default=6_000)
    parser.add_argument("--envs", type=int, default=4, help="env copies per collector")
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--max-cycles", type=int, default=100)
    parser.add_argument("--coupling", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="BenchMARL's output folder (default: temp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads (1 is fastest for tiny MLPs)"
    )
    args = parser.parse_args(argv)
    # Tiny networks: extra intra-op threads only add synchronisation, and on a busy machine
    # they spin against other processes (measured 30x slower per layer with 2 threads).
    torch.set_num_threads(args.torch_threads)

    task = OrchestrationTask.ORCHESTRATION.get_task(
        config={"n_agents": args.n_agents, "max_cycles": args.max_cycles, "coupling": args.coupling}
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="benchmarl_"))
    out.mkdir(parents=True, exist_ok=True)
    config = ExperimentConfig.get_from_yaml()
    config.max_n_frames = args.frames
    config.on_policy_collected_frames_per_batch = args.frames_per_batch
    config.on_policy_n_envs_per_worker = args.envs
    config.on_policy_minibatch_size = min(400, args.frames_per_batch)
    config.evaluation_interval = args.frames_per_batch
    config.evaluation_episodes = 4
    config.loggers = ["csv"]
    config.save_folder = str(out)
    config.checkpoint_at_end = False
    config.create_json = False
    config.render = False
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    experiment = Experiment(
        task=task,
        algorithm_config=IppoConfig.get_from_yaml(),
        model_config=MlpConfig.get_from_yaml(),
        critic_model_config=MlpConfig.get_from_yaml(),
        seed=args.seed,
        config=config,
    )
    experiment.run()

    # The csv logger writes one file per scalar; report each agent's last evaluation return.
    returns: dict[str, float] = {}
    for group in experiment.group_map:
        files = list(out.rglob(f"eval_{group}_reward_episode_reward_mean.csv"))
        if files:
            last = files[0].read_text().strip().splitlines()[-1]
            returns[group] = float(last.split(",")[-1])
    print(f"BenchMARL IPPO, {experiment.total_frames} frames, groups {experiment.group_map}")
    for agent, value in returns.items():
        print(f"  {agent:<12}{value:>8.2f}")
    result = {
        "library": "benchmarl",
        "groups": {g: list(a) for g, a in experiment.group_map.items()},
        "frames": int(experiment.total_frames),
        "eval_mean_return": returns,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
