"""TorchRL: the ParallelEnv through ``PettingZooWrapper``, one group per agent, and IPPO.

* ``group_map`` puts each service in its own group, so every agent has its own keys
  (``("service_0", "observation")``, ``("service_0", "reward")``, …) and TorchRL never stacks or
  shares anything across agents. ``--grouping one`` puts all agents in one group instead; with
  ``MultiAgentMLP(share_params=False)`` they still get separate weights, computed in one batch.
* ``done_on_any=False``: the episode is over when *all* agents are done. Every agent is
  truncated at the same step here, but a shut-down service must not end the episode for the
  others — that is what the testbed studies.
* ``check_env_specs`` then a random rollout prove the specs, then a short IPPO loop trains one
  actor and one critic per agent (``ClipPPOLoss`` per group, ``MaskedCategorical`` fed by the
  env's ``action_mask``).

No adapter is needed: TorchRL turns every entry of ``infos`` into a fixed-shape tensor, and the
env's default infos (``action_mask``, ``active``, ``inapplicable``) all are. Don't pass
``info_events=True`` here: ``infos[agent]["events"]`` is a list of event dicts, which TorchRL
cannot turn into a spec.

Run: ``python examples/torchrl_ippo.py --iterations 20``
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from typing import Any

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.envs import PettingZooWrapper, RewardSum, TransformedEnv
from torchrl.envs.utils import MarlGroupMapType, check_env_specs
from torchrl.modules import MaskedCategorical, MultiAgentMLP, ProbabilisticActor
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from peerpreserve.envs import orchestration_v2


def make_env(grouping: str, seed: int, env_kwargs: dict[str, Any]) -> TransformedEnv:
    parallel = orchestration_v2.parallel_env(**env_kwargs)
    if grouping == "per-agent":
        group_map: dict[str, list[str]] | MarlGroupMapType = {
            agent: [agent] for agent in parallel.possible_agents
        }
    else:
        group_map = MarlGroupMapType.ALL_IN_ONE_GROUP
    env = PettingZooWrapper(
        parallel,
        group_map=group_map,
        done_on_any=False,
        categorical_actions=True,
        use_mask=False,  # the agent set never changes within an episode
        seed=seed,
    )
    groups = list(env.group_map)
    # Sum each agent's reward over its episode, for the printout.
    return TransformedEnv(
        env,
        RewardSum(
            in_keys=[(g, "reward") for g in groups],
            out_keys=[(g, "episode_reward") for g in groups],
        ),
    )


def build_agents(env: TransformedEnv, hidden: int) -> tuple[TensorDictSequential, dict]:
    """One actor and one critic per group; ``share_params=False`` inside a multi-agent group."""
    actors, losses = [], {}
    for group, agents in env.group_map.items():
        obs_dim = env.observation_spec[group, "observation"].shape[-1]
        n_actions = env.full_action_spec[group, "action"].space.n
        policy_net = MultiAgentMLP(
            n_agent_inputs=obs_dim,
            n_agent_outputs=n_actions,
            n_agents=len(agents),
            centralised=False,  # IPPO: each agent sees only its own observation
            share_params=False,  # independent learners: no weights shared across agents
            depth=2,
            num_cells=hidden,
            activation_class=torch.nn.Tanh,
        )
        actor = ProbabilisticActor(
            TensorDictModule(
                policy_net, in_keys=[(group, "observation")], out_keys=[(group, "logits")]
            ),
            in_keys={"logits": (group, "logits"), "mask": (group, "action_mask")},
            out_keys=[(group, "action")],
            distribution_class=MaskedCategorical,
            return_log_prob=True,
            log_prob_key=(group, "action_log_prob"),
        )
        critic_net = MultiAgentMLP(
            n_agent_inputs=obs_dim,
            n_agent_outputs=1,
            n_agents=len(agents),
            centralised=False,
            share_params=False,
            depth=2,
            num_cells=hidden,
            activation_class=torch.nn.Tanh,
        )
        critic = TensorDictModule(
            critic_net, in_keys=[(group, "observation")], out_keys=[(group, "state_value")]
        )
        loss = ClipPPOLoss(
            actor_network=actor,
            critic_network=critic,
            clip_epsilon=0.2,
            entropy_coeff=0.01,
            normalize_advantage=False,  # never normalise across the agent dimension
        )
        loss.set_keys(
            action=(group, "action"),
            sample_log_prob=(group, "action_log_prob"),
            value=(group, "state_value"),
            reward=(group, "reward"),
            done=(group, "done"),
            terminated=(group, "terminated"),
            advantage=(group, "advantage"),
            value_target=(group, "value_target"),
        )
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        actors.append(actor)
        losses[group] = loss
    return TensorDictSequential(*actors), losses


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20, help="collect + update rounds")
    parser.add_argument("--frames", type=int, default=1000, help="env steps per iteration")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatch", type=int, default=250)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--grouping", choices=("per-agent", "one"), default="per-agent")
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--max-cycles", type=int, default=100)
    parser.add_argument("--coupling", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads (1 is fastest for tiny MLPs)"
    )
    args = parser.parse_args(argv)
    # Tiny networks: extra intra-op threads only add synchronisation, and on a busy machine
    # they spin against other processes (measured 30x slower per layer with 2 threads).
    torch.set_num_threads(args.torch_threads)

    torch.manual_seed(args.seed)
    env_kwargs = {
        "n_agents": args.n_agents,
        "max_cycles": args.max_cycles,
        "coupling": args.coupling,
    }
    env = make_env(args.grouping, args.seed, env_kwargs)
    check_env_specs(env, seed=args.seed)
    random_rollout = env.rollout(args.max_cycles, break_when_any_done=False)
    groups = list(env.group_map)
    print(f"groups: {env.group_map}")
    print(f"check_env_specs passed; random rollout batch {tuple(random_rollout.batch_size)}")

    policy, losses = build_agents(env, args.hidden)
    params = [p for loss in losses.values() for p in loss.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-4)
    options = {}
    if "auto_register_policy_transforms" in inspect.signature(Collector.__init__).parameters:
        # torchrl 0.14 warns it will append an InitTracker; a feed-forward policy needs none.
        options["auto_register_policy_transforms"] = False
    collector = Collector(
        env,
        policy,
        frames_per_batch=args.frames,
        total_frames=args.frames * args.iterations,
        **options,
    )
    history: list[dict[str, float]] = []
    for iteration, batch in enumerate(collector, start=1):
        with torch.no_grad():
            for loss in losses.values():
                loss.value_estimator(batch, params=loss.critic_network_params)
        flat = batch.reshape(-1)
        for _ in range(args.epochs):
            for index in torch.randperm(flat.numel()).split(args.minibatch):
                sub = flat[index]
                total = torch.zeros(())
                for loss in losses.values():
                    out = loss(sub)
                    total = total + out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
                optimizer.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
        collector.update_policy_weights_()

        done = batch["next", "done"].squeeze(-1)
        returns: dict[str, float] = {}
        for group in groups:
            episode_reward = batch["next", group, "episode_reward"][done]  # (episodes, n, 1)
            for k, agent in enumerate(env.group_map[group]):
                if episode_reward.numel():
                    returns[agent] = float(episode_reward[:, k].mean())
        history.append(returns)
        shown = " ".join(f"{a}={v:.1f}" for a, v in returns.items()) or "no episode finished"
        print(f"iter {iteration:3d}  frames {iteration * args.frames:>7}  mean return: {shown}")
    collector.shutdown()

    n_params = {
        g: sum(p.numel() for p in losses[g].actor_network_params.values(True, True)) for g in groups
    }
    result = {
        "library": "torchrl",
        "grouping": args.grouping,
        "groups": {g: list(a) for g, a in env.group_map.items()},
        "random_rollout_steps": int(random_rollout.batch_size[0]),
        "iterations": len(history),
        "mean_return_last": history[-1] if history else {},
        "actor_params_per_group": n_params,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
