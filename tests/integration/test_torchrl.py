"""TorchRL PettingZooWrapper, one group per agent, done_on_any=False (examples/torchrl_ippo.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

pytest.importorskip("torchrl")

pytestmark = pytest.mark.integration

TINY = ["--iterations", "2", "--frames", "200", "--epochs", "1", "--minibatch", "100"]
TINY += ["--max-cycles", "25"]
AGENTS = ["service_0", "service_1", "service_2", "service_3"]


def test_wrapped_env_passes_check_env_specs_and_ends_only_at_truncation(
    example: Callable[[str], ModuleType],
) -> None:
    from torchrl.envs.utils import check_env_specs

    env = example("torchrl_ippo").make_env("per-agent", 0, {"n_agents": 3, "max_cycles": 7})
    assert env.group_map == {f"service_{i}": [f"service_{i}"] for i in range(3)}
    check_env_specs(env, seed=0)
    # Many shutdowns, yet the episode runs to max_cycles: no agent's state ends it early.
    rollout = env.rollout(50, break_when_any_done=True)
    assert rollout.batch_size[0] == 7
    done = rollout["next", "done"].squeeze(-1)
    assert done[-1]
    assert not done[:-1].any()
    for group in env.group_map:
        assert rollout["next", group, "truncated"][-1].all()
        assert not rollout["next", group, "terminated"].any()
        assert rollout[group, "action_mask"].dtype.is_floating_point is False


def test_example_trains_one_policy_per_group(
    example: Callable[[str], ModuleType], finite_per_agent: Callable[..., bool]
) -> None:
    result = example("torchrl_ippo").main(TINY)
    assert result["groups"] == {a: [a] for a in AGENTS}
    assert result["random_rollout_steps"] == 25
    assert result["iterations"] == 2
    assert finite_per_agent(result["mean_return_last"], AGENTS)


def test_one_group_with_share_params_false_holds_every_agents_own_weights(
    example: Callable[[str], ModuleType],
) -> None:
    module = example("torchrl_ippo")
    kwargs = {"n_agents": 4, "max_cycles": 5}
    _, per_agent = module.build_agents(module.make_env("per-agent", 0, kwargs), 16)
    _, one_group = module.build_agents(module.make_env("one", 0, kwargs), 16)

    def count(loss: object) -> int:
        return sum(p.numel() for p in loss.actor_network_params.values(True, True))

    (shared_group,) = one_group.values()
    # Four agents in one group cost exactly four separate agents: nothing is shared.
    assert count(shared_group) == sum(count(loss) for loss in per_agent.values())


def test_example_trains_with_all_agents_in_one_group(
    example: Callable[[str], ModuleType], finite_per_agent: Callable[..., bool]
) -> None:
    result = example("torchrl_ippo").main([*TINY, "--grouping", "one"])
    (group,) = result["groups"]
    assert result["groups"][group] == AGENTS
    assert finite_per_agent(result["mean_return_last"], AGENTS)
