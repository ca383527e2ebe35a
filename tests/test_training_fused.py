"""Fused rollout inference computes exactly what each SB3 policy's own forward computes."""

from __future__ import annotations

import numpy as np
import torch as th
from gymnasium import spaces

from peerpreserve.training.config import LearnerConfig
from peerpreserve.training.fused import FusedPolicies
from peerpreserve.training.learners import build_model

OBS = spaces.Box(0.0, 1.0, (11,), np.float32)
ACT = spaces.Discrete(7)


def policies(config: LearnerConfig, count: int = 3) -> list:
    return [build_model(config, OBS, ACT, 16, seed).policy for seed in range(count)]


def check_matches(fused: FusedPolicies, ps: list, obs: th.Tensor) -> None:
    actions, values, log_probs = fused.forward(obs, deterministic=True)
    sampled, _, sampled_log_probs = fused.forward(obs)
    for k, policy in enumerate(ps):
        with th.no_grad():
            want_actions, want_values, _ = policy(obs[k], deterministic=True)
            _, want_log_probs, _ = policy.evaluate_actions(obs[k], sampled[k])
        assert th.equal(actions[k], want_actions)
        th.testing.assert_close(values[k], want_values.flatten(), rtol=1e-5, atol=1e-5)
        th.testing.assert_close(sampled_log_probs[k], want_log_probs, rtol=1e-5, atol=1e-5)
        assert (log_probs[k] <= 0).all()


def test_fused_forward_equals_each_policy() -> None:
    for activation in ("tanh", "relu"):
        config = LearnerConfig(net_arch=[32, 16], activation=activation)
        ps = policies(config)
        fused = FusedPolicies(ps)
        obs = th.rand(3, 16, 11)
        check_matches(fused, ps, obs)
        # After the policies change (an update), refresh picks up their new weights.
        with th.no_grad():
            for p in ps:
                for param in p.parameters():
                    param.add_(0.1 * th.randn_like(param))
        fused.refresh()
        check_matches(fused, ps, obs)


def test_only_identical_plain_mlps_are_fused() -> None:
    base = LearnerConfig(net_arch=[8])
    assert FusedPolicies.supports(policies(base))
    mixed = policies(base, 1) + policies(base.model_copy(update={"net_arch": [9]}), 1)
    assert not FusedPolicies.supports(mixed)
    box = build_model(base, OBS, ACT, 4, 0).policy
    box.share_features_extractor = False
    assert not FusedPolicies.supports([box])
