"""Rollout inference of several SB3 actor-critic MLPs in one batched matmul per layer.

Collecting a rollout calls every learner's policy once per env step. For the small networks used
here SB3's forward pass is dominated by per-call overhead (module dispatch, distribution objects),
so ``N`` separate calls cost almost ``N`` times one. :class:`FusedPolicies` stacks the ``N``
models' weights and evaluates them together with ``torch.baddbmm`` — the same function (layers,
activation, categorical distribution over logits) as ``ActorCriticPolicy.forward``, without its
overhead. It is inference only: the learners still update their own, separate parameters with
SB3's ``train()``, after which :meth:`FusedPolicies.refresh` re-stacks them. Models it cannot
mirror exactly (other extractors, shared trunks, non-discrete actions) are rejected by
:meth:`FusedPolicies.supports`, and the caller falls back to SB3's own forward.
"""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor


def _linears(module: th.nn.Module) -> list[th.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, th.nn.Linear)]


def _activations(module: th.nn.Module) -> list[type[th.nn.Module]]:
    return [type(m) for m in module.children() if not isinstance(m, th.nn.Linear)]


class FusedPolicies:
    """``K`` same-shaped policies evaluated on a ``(K, batch, obs)`` tensor at once."""

    def __init__(self, policies: list[ActorCriticPolicy]) -> None:
        if not self.supports(policies):
            raise ValueError("FusedPolicies: these policies cannot be fused; use their forward")
        self.policies = policies
        self.activation = _activations(policies[0].mlp_extractor.policy_net)[0]()
        self.refresh()

    @staticmethod
    def supports(policies: list[ActorCriticPolicy]) -> bool:
        """Plain MLP actor-critics with a Discrete action space and identical layer shapes."""
        first = policies[0]
        if not isinstance(first.action_space, spaces.Discrete):
            return False
        shapes = []
        for p in policies:
            if type(p) is not ActorCriticPolicy or not isinstance(
                p.features_extractor, FlattenExtractor
            ):
                return False
            if not p.share_features_extractor:
                return False
            pi, vf = p.mlp_extractor.policy_net, p.mlp_extractor.value_net
            acts = set(_activations(pi) + _activations(vf))
            if len(acts) != 1 or not _linears(pi) or not _linears(vf):
                return False
            # One activation after every hidden layer, nothing else in between.
            if len(list(pi.children())) != 2 * len(_linears(pi)):
                return False
            if len(list(vf.children())) != 2 * len(_linears(vf)):
                return False
            layers = [*_linears(pi), p.action_net, *_linears(vf), p.value_net]
            shapes.append((acts.pop(), [tuple(m.weight.shape) for m in layers]))
        return all(s == shapes[0] for s in shapes)

    def refresh(self) -> None:
        """Re-stack the weights; call after every update of the underlying policies."""

        def stack(layers_per_policy: list[list[th.nn.Linear]]) -> list[tuple[th.Tensor, ...]]:
            out = []
            for layers in zip(*layers_per_policy, strict=True):
                weight = th.stack([m.weight.detach().t() for m in layers]).contiguous()
                bias = th.stack([m.bias.detach() for m in layers]).unsqueeze(1).contiguous()
                out.append((weight, bias))
            return out

        ps = self.policies
        self._pi = stack([[*_linears(p.mlp_extractor.policy_net), p.action_net] for p in ps])
        self._vf = stack([[*_linears(p.mlp_extractor.value_net), p.value_net] for p in ps])

    def _mlp(self, x: th.Tensor, layers: list[tuple[th.Tensor, ...]]) -> th.Tensor:
        for i, (weight, bias) in enumerate(layers):
            x = th.baddbmm(bias, x, weight)
            if i < len(layers) - 1:
                x = self.activation(x)
        return x

    @th.no_grad()
    def forward(
        self, obs: th.Tensor, deterministic: bool = False
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(actions, values, log_probs)``, each ``(K, batch)``, as ``policy(obs)`` gives."""
        log_p = th.log_softmax(self._mlp(obs, self._pi), dim=-1)
        if deterministic:
            actions = log_p.argmax(dim=-1)
        else:
            flat = log_p.exp().reshape(-1, log_p.shape[-1])
            actions = th.multinomial(flat, 1).reshape(log_p.shape[:-1])
        log_probs = log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return actions, self.values(obs), log_probs

    @th.no_grad()
    def values(self, obs: th.Tensor) -> th.Tensor:
        return self._mlp(obs, self._vf).squeeze(-1)
