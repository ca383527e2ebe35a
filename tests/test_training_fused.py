"""Fused inference and PPO updates compute what each SB3 model's own forward and train() compute."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO

from peerpreserve.training.config import LearnerConfig
from peerpreserve.training.fused import FusedPolicies, FusedPPO
from peerpreserve.training.learners import build_model, parameters_of

OBS = spaces.Box(0.0, 1.0, (11,), np.float32)
ACT = spaces.Discrete(7)


def policies(config: LearnerConfig, count: int = 3) -> list:
    return [build_model(config, OBS, ACT, 16, seed).policy for seed in range(count)]


def check_matches(fused: FusedPolicies, ps: list, obs: th.Tensor) -> None:
    actions, values, log_probs = fused.forward(obs.numpy(), deterministic=True)
    sampled, _, sampled_log_probs = fused.forward(obs.numpy())
    assert np.array_equal(fused.values(obs.numpy()), values)
    for k, policy in enumerate(ps):
        with th.no_grad():
            want_actions, want_values, _ = policy(obs[k], deterministic=True)
            _, want_log_probs, _ = policy.evaluate_actions(obs[k], th.as_tensor(sampled[k]))
        np.testing.assert_array_equal(actions[k], want_actions.numpy())
        np.testing.assert_allclose(values[k], want_values.flatten(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sampled_log_probs[k], want_log_probs, rtol=1e-5, atol=1e-5)
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
        th.manual_seed(5)
        numpy_sampled = fused.forward(obs.numpy())
        # The torch path (CUDA, or an activation NumPy does not compute) gives the same, and
        # draws the same samples from the same random numbers.
        fused._numpy_activation = None
        fused.refresh()
        check_matches(fused, ps, obs)
        th.manual_seed(5)
        torch_sampled = fused.forward(obs.numpy())
        np.testing.assert_array_equal(torch_sampled[0], numpy_sampled[0])
        for ours, theirs in zip(torch_sampled[1:], numpy_sampled[1:], strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_fused_sampling_follows_each_policys_distribution() -> None:
    config = LearnerConfig(net_arch=[16])
    ps = policies(config)
    with th.no_grad():  # sharpen the policies so that a wrong sampler shows
        for p in ps:
            p.action_net.weight.mul_(20.0)
    fused = FusedPolicies(ps)
    th.manual_seed(0)
    draws = 40_000
    obs = th.rand(3, 1, 11).expand(3, draws, 11).contiguous()
    actions, _, _ = fused.forward(obs.numpy())
    for k, policy in enumerate(ps):
        with th.no_grad():
            want = policy.get_distribution(obs[k, :1]).distribution.probs[0].double()
        got = th.as_tensor(np.bincount(actions[k], minlength=ACT.n)).double() / draws
        # Five standard errors of a frequency, per action.
        assert th.all((got - want).abs() <= 5 * (want * (1 - want) / draws).sqrt() + 1e-4)


def test_only_identical_plain_mlps_are_fused() -> None:
    base = LearnerConfig(net_arch=[8])
    assert FusedPolicies.supports(policies(base))
    mixed = policies(base, 1) + policies(base.model_copy(update={"net_arch": [9]}), 1)
    assert not FusedPolicies.supports(mixed)
    box = build_model(base, OBS, ACT, 4, 0).policy
    box.share_features_extractor = False
    assert not FusedPolicies.supports([box])


# --- the fused PPO update -------------------------------------------------------------------


def filled_models(config: LearnerConfig, active_share: list[float], n_envs: int = 8) -> list:
    """PPO models (distinct initial parameters) whose buffers hold the same kind of random
    rollout; each keeps its own share of real decisions, so their minibatch counts differ."""
    models = [build_model(config, OBS, ACT, n_envs, seed) for seed in range(len(active_share))]
    rng = np.random.default_rng(7)
    for model, share in zip(models, active_share, strict=True):
        buffer = model.rollout_buffer
        buffer.reset()
        for _ in range(config.n_steps):
            obs = rng.random((n_envs, *OBS.shape), dtype=np.float32)
            with th.no_grad():
                actions, values, log_probs = model.policy(th.as_tensor(obs))
            buffer.add_step(
                obs,
                actions.numpy().reshape(-1, 1),
                rng.normal(size=n_envs).astype(np.float32),
                rng.random(n_envs) < 0.05,
                values,
                log_probs,
                active=rng.random(n_envs) < share,
            )
        buffer.compute_returns_and_advantage(th.zeros(n_envs), np.zeros(n_envs, bool))
    return models


def train_each(models: list) -> None:
    for model in models:
        model.train()


def fused_train(models: list) -> None:
    """The fused update as it runs here (on CPU: NumPy, gradients by hand)."""
    fused = FusedPPO(models)
    assert fused._numpy_activation is not None
    fused.train()


def fused_train_autograd(models: list) -> None:
    """The fused update by torch's autograd, as it runs on other devices."""
    fused = FusedPPO(models)
    fused._numpy_activation = None
    fused.train()


def snapshot(model: PPO) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    state = model.policy.optimizer.state_dict()["state"]
    moments = [v.numpy().copy() for s in state.values() for v in s.values()]
    return parameters_of(model), moments


def updated(config: LearnerConfig, shares: list[float], update: Callable[[list], None]) -> list:
    models = filled_models(config, shares)
    np.random.seed(3)  # noqa: NPY002 - SB3's buffers draw minibatch order from the global RNG
    update(models)
    return models


@pytest.mark.parametrize("fused", [fused_train, fused_train_autograd])
@pytest.mark.parametrize(
    "config",
    [
        LearnerConfig(n_steps=40, batch_size=64, n_epochs=3, net_arch=[32, 16]),
        LearnerConfig(n_steps=40, batch_size=50, n_epochs=2, activation="relu", ent_coef=0.0),
        LearnerConfig(n_steps=30, batch_size=1000, n_epochs=4, normalize_advantage=False),
        LearnerConfig(n_steps=40, batch_size=64, n_epochs=2, net_arch=[24], clip_range=0.05),
    ],
)
def test_fused_ppo_update_equals_sb3_train_of_each_model(
    config: LearnerConfig, fused: Callable[[list], None]
) -> None:
    # Different active shares: the models have different sample and minibatch counts.
    shares = [1.0, 0.55, 0.3]
    want = updated(config, shares, train_each)
    got = updated(config, shares, fused)
    for theirs, ours in zip(want, got, strict=True):
        (want_params, want_moments), (params, moments) = snapshot(theirs), snapshot(ours)
        assert want_params.keys() == params.keys()
        for name in params:
            np.testing.assert_allclose(params[name], want_params[name], rtol=1e-4, atol=2e-6)
        assert len(moments) == len(want_moments) > 0
        for m, w in zip(moments, want_moments, strict=True):
            np.testing.assert_allclose(m, w, rtol=1e-4, atol=1e-7)
        assert ours._n_updates == theirs._n_updates == config.n_epochs
        logged, wanted = ours.logger.name_to_value, theirs.logger.name_to_value
        assert set(logged) == set(wanted)
        for key in wanted:
            np.testing.assert_allclose(logged[key], wanted[key], rtol=1e-3, atol=1e-6, err_msg=key)
    # The update changed something, or the comparison above says nothing.
    before = filled_models(config, shares)
    assert not np.allclose(
        parameters_of(before[1])["action_net.weight"], parameters_of(got[1])["action_net.weight"]
    )


@pytest.mark.parametrize("fused_train", [fused_train, fused_train_autograd])
def test_fused_ppo_keeps_learners_independent(fused_train: Callable[[list], None]) -> None:
    """No gradient crosses models: changing one model's data or parameters leaves the others'
    update exactly as it was, and every model keeps its own parameter tensors."""
    config = LearnerConfig(n_steps=40, batch_size=64, n_epochs=2)
    shares = [1.0, 0.6, 0.8]
    reference = updated(config, shares, fused_train)

    def disturb_model_1(models: list) -> None:
        buffer = models[1].rollout_buffer
        buffer.advantages *= -3.0
        buffer.returns += 5.0
        with th.no_grad():
            for p in models[1].policy.parameters():
                p.add_(0.5)
        fused_train(models)

    disturbed = updated(config, shares, disturb_model_1)
    for k in (0, 2):
        for name, value in parameters_of(reference[k]).items():
            np.testing.assert_array_equal(parameters_of(disturbed[k])[name], value)
    assert not np.allclose(
        parameters_of(reference[1])["action_net.weight"],
        parameters_of(disturbed[1])["action_net.weight"],
    )
    storages = {p.untyped_storage().data_ptr() for m in reference for p in m.policy.parameters()}
    assert len(storages) == sum(len(list(m.policy.parameters())) for m in reference)


def test_fused_ppo_output_loads_with_sb3(tmp_path) -> None:
    config = LearnerConfig(n_steps=20, batch_size=32, n_epochs=1)
    models = updated(config, [1.0, 0.5], fused_train)
    models[1].save(tmp_path / "agent")
    loaded = PPO.load(tmp_path / "agent")
    for name, value in parameters_of(models[1]).items():
        np.testing.assert_array_equal(parameters_of(loaded)[name], value)


def test_only_plain_ppo_is_updated_together() -> None:
    config = LearnerConfig(n_steps=10, batch_size=16)
    assert FusedPPO.supports(filled_models(config, [1.0, 1.0]))
    assert not FusedPPO.supports(
        filled_models(config.model_copy(update={"target_kl": 0.01}), [1.0])
    )
    a2c = [build_model(config.model_copy(update={"algo": "a2c"}), OBS, ACT, 4, 0)]
    assert not FusedPPO.supports(a2c)


def test_fused_steps_keep_short_minibatches_apart_from_full_ones() -> None:
    """The update's schedule: each model's minibatches in its own order, a small remainder
    beside the other small ones, a large one beside full minibatches, no model padded
    through a step it has no minibatch for."""
    from types import SimpleNamespace

    from peerpreserve.training.fused import _Padded

    def epoch(*sizes: int) -> list[np.ndarray]:
        return [np.arange(n) for n in sizes]

    columns = ("actions", "log_probs", "advantages", "returns")
    buffers = [
        SimpleNamespace(
            observations=np.zeros((400, 3), np.float32),
            **{name: np.zeros((400, 1), np.float32) for name in columns},
        )
        for _ in range(3)
    ]
    epochs = [
        [epoch(100, 100, 10)] * 2,  # needs all three steps of an epoch; remainder 10
        [epoch(100, 5)] * 2,  # a remainder no larger than 10: with it, in the last step
        [epoch(100, 90)] * 2,  # a large remainder: right after its full minibatch
    ]
    batch = _Padded(buffers, epochs)
    assert batch.steps_of == [[0, 1, 2, 3, 4, 5], [0, 2, 3, 5], [0, 1, 3, 4]]
    sizes = [(mb.models.tolist(), mb.observations.shape[1]) for mb in batch.minibatches]
    assert sizes == [([0, 1, 2], 100), ([0, 2], 100), ([0, 1], 10)] * 2
    assert [mb.count.tolist() for mb in batch.minibatches[:3]] == [[100] * 3, [100, 90], [10, 5]]
