"""Several independent SB3 actor-critics computed together: rollout inference and PPO updates.

For the small networks used here, SB3's forward pass on a rollout step's few observations is
dominated by per-call overhead (module dispatch, distribution objects), so ``K`` models cost
almost ``K`` times one; its update on large minibatches is mostly arithmetic, plus that overhead
once per minibatch, parameter and model. Both classes here stack the ``K`` models' weights and
evaluate every layer for all of them with one batched matrix product — the same function
(layers, activation, categorical distribution over logits) as ``ActorCriticPolicy``, without its
``K``-fold overhead. Nothing is shared: each model keeps its own parameters, optimiser state and
checkpoint, and no gradient crosses models (a batched matrix product never mixes its batch
entries).

* :class:`FusedPolicies` — inference while collecting a rollout (in NumPy on CPU, where a step's
  few rows make torch's per-operation overhead the main cost); :meth:`FusedPolicies.refresh`
  re-stacks the weights after an update.
* :class:`FusedPPO` — :meth:`stable_baselines3.PPO.train` of ``K`` models at once: each model's
  own minibatches (drawn by its own rollout buffer, in the order SB3's ``train()`` would draw
  them), its own loss, gradient clipping and Adam step (its own optimiser's state and settings,
  stepped for all models together), so the parameters come out as SB3's ``train()`` of each
  model would leave them, within float tolerance. On CPU the losses and their gradients are
  computed in NumPy, written out by hand (:meth:`FusedPPO._numpy_gradients`): one pass per
  array replaces autograd's many small operations, and NumPy's BLAS (OpenBLAS) uses the AVX-512
  kernels of AMD CPUs that the torch CPU build's MKL leaves aside, where ``OPENBLAS_CORETYPE``
  does not pin it to older ones.
  Elsewhere (CUDA) torch's autograd computes the same losses (:meth:`FusedPPO._losses`).

Models they cannot mirror exactly (other extractors, shared trunks, non-discrete actions, PPO's
KL early stop or value clipping) are rejected by ``supports``; the caller falls back to SB3.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from numba import njit
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.utils import explained_variance


def _linears(module: th.nn.Module) -> list[th.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, th.nn.Linear)]


def _activations(module: th.nn.Module) -> list[type[th.nn.Module]]:
    return [type(m) for m in module.children() if not isinstance(m, th.nn.Linear)]


def _heads(policy: ActorCriticPolicy) -> tuple[list[th.nn.Linear], list[th.nn.Linear]]:
    """The actor's and the critic's linear layers, input to output."""
    pi, vf = policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net
    return [*_linears(pi), policy.action_net], [*_linears(vf), policy.value_net]


class _Tanh(th.autograd.Function):
    """``tanh`` in place on its input (a layer's fresh output, which nothing else needs), with
    torch's own ``tanh_backward``. This CPU build's ``tanh`` kernel is not vectorised (several
    times slower than NumPy's, which is), so on CPU NumPy computes it, in the tensor's memory."""

    @staticmethod
    def forward(ctx: Any, x: th.Tensor) -> th.Tensor:
        ctx.mark_dirty(x)
        if x.device.type == "cpu" and x.is_contiguous():
            values = x.detach().numpy()
            np.tanh(values, out=values)
        else:
            x.tanh_()
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: th.Tensor) -> th.Tensor:
        (y,) = ctx.saved_tensors
        return th.ops.aten.tanh_backward(grad, y)


def _activation(module_type: type[th.nn.Module]) -> Callable[[th.Tensor], th.Tensor]:
    return _Tanh.apply if module_type is th.nn.Tanh else module_type()


def _mlp(
    x: th.Tensor,
    layers: list[tuple[th.Tensor, th.Tensor]],
    activation: Callable[[th.Tensor], th.Tensor],
) -> th.Tensor:
    """``K`` MLPs on ``(K, batch, in)``; a layer is ``(weight (K, in, out), bias (K, 1, out))``."""
    for i, (weight, bias) in enumerate(layers):
        x = th.baddbmm(bias, x, weight)
        if i < len(layers) - 1:
            x = activation(x)
    return x


class FusedPolicies:
    """``K`` same-shaped policies evaluated on a ``(K, batch, obs)`` tensor at once."""

    def __init__(self, policies: list[ActorCriticPolicy]) -> None:
        if not self.supports(policies):
            raise ValueError("FusedPolicies: these policies cannot be fused; use their forward")
        self.policies = policies
        self.device = policies[0].device
        activation = _activations(policies[0].mlp_extractor.policy_net)[0]
        self.activation = _activation(activation)
        on_cpu = self.device.type == "cpu"
        self._numpy_activation = _NUMPY_ACTIVATIONS.get(activation) if on_cpu else None
        self.refresh()

    @staticmethod
    def supports(policies: list[ActorCriticPolicy]) -> bool:
        """Plain MLP actor-critics with a Discrete action space and identical layer shapes, on
        one device, whose parameters are exactly those layers."""
        first = policies[0]
        if not isinstance(first.action_space, spaces.Discrete):
            return False
        shapes = []
        for p in policies:
            if type(p) is not ActorCriticPolicy or not isinstance(
                p.features_extractor, FlattenExtractor
            ):
                return False
            if not p.share_features_extractor or p.device != first.device:
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
            layers = [*_heads(p)[0], *_heads(p)[1]]
            if sum(m.weight.numel() + m.bias.numel() for m in layers) != sum(
                q.numel() for q in p.parameters()
            ):
                return False
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

        heads = [_heads(p) for p in self.policies]
        if self._numpy_activation is None:
            self._pi = stack([pi for pi, _ in heads])
            self._vf = stack([vf for _, vf in heads])
            return

        def stack_numpy(layers_per_policy: list[list[th.nn.Linear]]) -> list[_ColumnLayer]:
            return [
                _ColumnLayer(
                    np.stack([m.weight.detach().numpy() for m in layers]),
                    np.stack([m.bias.detach().numpy() for m in layers])[..., None],
                )
                for layers in zip(*layers_per_policy, strict=True)
            ]

        self._numpy_pi = stack_numpy([pi for pi, _ in heads])
        self._numpy_vf = stack_numpy([vf for _, vf in heads])
        # Actor and critic read the same input: their first layers as one product.
        pi_first, vf_first = self._numpy_pi[0], self._numpy_vf[0]
        self._numpy_first = _ColumnLayer(
            np.concatenate([pi_first.weight, vf_first.weight], axis=1),
            np.concatenate([pi_first.bias, vf_first.bias], axis=1),
        )

    def forward(
        self,
        obs: np.ndarray,
        deterministic: bool = False,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(actions, values, log_probs)`` for ``obs (K, batch, obs)``, each ``(K, batch)``, as
        ``policy(obs)`` gives them (samples drawn from ``rng``, or else torch's global RNG)."""
        activation = self._numpy_activation
        if activation is None:
            actions, values, log_probs = self._forward_torch(th.as_tensor(obs), deterministic, rng)
            return actions.cpu().numpy(), values.cpu().numpy(), log_probs.cpu().numpy()
        actor, critic = self._first_hidden(obs, activation)
        logits = _columns(actor, self._numpy_pi[1:], activation.forward)
        values = _columns(critic, self._numpy_vf[1:], activation.forward)
        log_p = logits - logits.max(1, keepdims=True)
        unnormalised = np.exp(log_p)
        log_p -= np.log(unnormalised.sum(1, keepdims=True))
        if deterministic:
            actions = log_p.argmax(1)
        else:
            # Running sums over the actions as one product with a triangle of ones (NumPy's
            # cumsum is slow along a short axis): the same sums up to rounding.
            n_actions = unnormalised.shape[1]
            cdf = np.matmul(np.tri(n_actions, dtype=np.float32), unnormalised)
            u = _uniforms(obs.shape[:2], rng)[:, None] * cdf[:, -1:]
            # The inverse CDF, as in _forward_torch: the first action whose CDF exceeds u.
            actions = np.minimum((cdf <= u).sum(1), n_actions - 1)
        models, batch = actions.shape
        log_probs = log_p[np.arange(models)[:, None], actions, np.arange(batch)]
        return actions, values[:, 0], log_probs

    def values(self, obs: np.ndarray) -> np.ndarray:
        """State values ``(K, batch)``."""
        activation = self._numpy_activation
        if activation is None:
            with th.no_grad():
                values = _mlp(th.as_tensor(obs, device=self.device), self._vf, self.activation)
            return values.squeeze(-1).cpu().numpy()
        # Through the joint first layer, so that these are exactly forward()'s values.
        _, critic = self._first_hidden(obs, activation)
        return _columns(critic, self._numpy_vf[1:], activation.forward)[:, 0]

    def _first_hidden(
        self, obs: np.ndarray, activation: _NumpyActivation
    ) -> tuple[np.ndarray, np.ndarray]:
        """The actor's and the critic's first hidden layer for ``obs (K, batch, obs)``, in one
        product, laid out as columns ``(K, features, batch)``: reductions over the few actions
        then run along the batch, and the weights multiply in torch's (out, in) layout."""
        hidden = self._numpy_first(obs.transpose(0, 2, 1), activation.forward)
        actor_width = self._numpy_pi[0].weight.shape[1]
        return hidden[:, :actor_width], hidden[:, actor_width:]

    @th.no_grad()
    def _forward_torch(
        self, obs: th.Tensor, deterministic: bool, rng: np.random.Generator | None = None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        obs = obs.to(self.device)
        log_p = th.log_softmax(_mlp(obs, self._pi, self.activation), dim=-1)
        if deterministic:
            actions = log_p.argmax(dim=-1)
        else:
            # Inverse-CDF sampling: the categorical distribution torch.multinomial samples,
            # without its per-row overhead, which dominates for these many small rows.
            cdf = log_p.exp().cumsum(-1)
            if rng is None:
                u = th.rand((*cdf.shape[:-1], 1), device=cdf.device)
            else:
                u = th.as_tensor(_uniforms(cdf.shape[:-1], rng)[..., None], device=cdf.device)
            u = u * cdf[..., -1:]
            actions = th.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
        log_probs = log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return actions, _mlp(obs, self._vf, self.activation).squeeze(-1), log_probs


@dataclass(frozen=True)
class _NumpyActivation:
    """An activation in place on a layer's fresh output, and its derivative, in place on the
    gradient, from that output (``y``) as torch's own backward computes it."""

    forward: Callable[[np.ndarray], object]
    backward: Callable[[np.ndarray, np.ndarray], object]


@njit(cache=True)
def _times_one_minus_square(grad: np.ndarray, y: np.ndarray) -> None:
    for i in range(grad.size):
        grad[i] *= 1 - y[i] * y[i]


def _tanh_backward(grad: np.ndarray, y: np.ndarray) -> None:
    """torch's ``tanh_backward``, ``grad · (1 - y²)``, in one pass over both arrays (NumPy
    would take three, with two temporaries)."""
    _times_one_minus_square(grad.reshape(-1), y.reshape(-1))


def _relu_backward(grad: np.ndarray, y: np.ndarray) -> None:
    grad *= y > 0  # torch's threshold_backward: no gradient where the output is 0


# Activations the NumPy paths compute themselves; any other runs the torch path.
_NUMPY_ACTIVATIONS: dict[type[th.nn.Module], _NumpyActivation] = {
    th.nn.Tanh: _NumpyActivation(lambda x: np.tanh(x, out=x), _tanh_backward),
    th.nn.ReLU: _NumpyActivation(lambda x: np.maximum(x, 0, out=x), _relu_backward),
}


@dataclass(frozen=True)
class _ColumnLayer:
    """One linear layer of ``K`` models for inputs laid out as columns, ``(K, in, batch)``."""

    weight: np.ndarray  # (K, out, in), torch's Linear layout
    bias: np.ndarray  # (K, out, 1)

    def __call__(
        self, x: np.ndarray, activation: Callable[[np.ndarray], object] | None = None
    ) -> np.ndarray:
        z = np.matmul(self.weight, x)
        z += self.bias
        if activation is not None:
            activation(z)
        return z


def _columns(
    x: np.ndarray, layers: list[_ColumnLayer], activation: Callable[[np.ndarray], object]
) -> np.ndarray:
    """``K`` MLPs (``layers``, activation after all but the last) on columns ``(K, in, batch)``."""
    for layer in layers[:-1]:
        x = layer(x, activation)
    return layers[-1](x)


@dataclass(frozen=True)
class _NumpyLayer:
    """One linear layer of ``K`` models: NumPy views of their parameters and gradients."""

    weight: np.ndarray  # (K, out, in), torch's Linear layout
    bias: np.ndarray  # (K, out)
    weight_grad: np.ndarray
    bias_grad: np.ndarray


def _numpy_forward(
    x: np.ndarray, layers: list[_NumpyLayer], activation: Callable[[np.ndarray], object]
) -> tuple[list[np.ndarray], np.ndarray]:
    """``K`` MLPs on ``x (K, batch, in)``: returns each layer's input, and the output."""
    inputs = [x]
    for i, layer in enumerate(layers):
        z = np.matmul(inputs[-1], layer.weight.transpose(0, 2, 1))
        z += layer.bias[:, None, :]
        if i == len(layers) - 1:
            return inputs, z
        activation(z)
        inputs.append(z)
    raise ValueError("an MLP needs at least one layer")


def _numpy_backward(
    inputs: list[np.ndarray],
    layers: list[_NumpyLayer],
    grad: np.ndarray,
    activation_backward: Callable[[np.ndarray, np.ndarray], object],
) -> None:
    """Backpropagate ``grad`` (of the output, ``(K, batch, out)``) through the layers of
    :func:`_numpy_forward`, writing every layer's parameter gradients (overwriting them)."""
    # The bias gradients are column sums, which BLAS computes faster than NumPy's sum.
    ones = np.ones((grad.shape[0], 1, grad.shape[1]), grad.dtype)
    for i in reversed(range(len(layers))):
        layer = layers[i]
        np.matmul(grad.transpose(0, 2, 1), inputs[i], out=layer.weight_grad)
        np.matmul(ones, grad, out=layer.bias_grad[:, None, :])
        if i:
            # A width-1 output makes this an outer product, which BLAS is slow at.
            outer = grad.shape[-1] == 1
            grad = grad * layer.weight if outer else np.matmul(grad, layer.weight)
            activation_backward(grad, inputs[i])


def _column(values: list[float] | list[bool], dtype: type = np.float32) -> np.ndarray:
    return np.array(values, dtype=dtype)[:, None]


@dataclass(frozen=True)
class _Coefficients:
    """The per-model settings of one update's losses, each a ``(K, 1)`` column."""

    clip_range: np.ndarray
    normalize: np.ndarray  # bool: normalise advantages per minibatch
    ent_coef: np.ndarray
    vf_coef: np.ndarray

    def subset(self, rows: np.ndarray) -> _Coefficients:
        """The settings of the models at ``rows``."""
        return _Coefficients(*(getattr(self, f.name)[rows] for f in fields(self)))

    def tensors(self, device: th.device) -> tuple[th.Tensor, ...]:
        """``(clip_range, normalize, ent_coef, vf_coef)`` as tensors on ``device``."""
        return tuple(th.as_tensor(getattr(self, f.name), device=device) for f in fields(self))


class FusedPPO:
    """:meth:`PPO.train` of several independent models, computed as one batch.

    Each model's minibatches are those of its own rollout buffer's ``get()`` (gathered from the
    buffer by the same sample indices, ``minibatch_indices``), drawn model by model
    and epoch by epoch exactly as consecutive ``model.train()`` calls would draw them (same
    global RNG, same order). Models may have different numbers of samples (shut-down steps are
    not trained on): :class:`_Padded` schedules every model's minibatches, in its own order,
    into steps computed together, padded within a step and every mean taken over a model's own
    samples only; a model takes an optimiser step exactly where it has a minibatch.
    Gradient clipping is per model, and the step is each model's own Adam
    (``model.policy.optimizer``'s learning rate, step count and moments, stepped together by
    :class:`_StackedAdam` and written back), so its state and checkpoint stay SB3's.
    """

    @staticmethod
    def supports(models: list) -> bool:
        """SB3 PPO models (not subclasses with their own ``train``) whose policies
        :class:`FusedPolicies` can mirror, without KL early stop or value clipping, each with
        SB3's default Adam optimiser and a rollout buffer that names its minibatches' samples
        (:class:`~peerpreserve.training.learners.MaskedRolloutBuffer`)."""
        if not models or not all(type(m) is PPO for m in models):
            return False
        if not FusedPolicies.supports([m.policy for m in models]):
            return False
        return all(
            m.target_kl is None
            and m.clip_range_vf is None
            and hasattr(m.rollout_buffer, "minibatch_indices")
            for m in models
        ) and _StackedAdam.supports([m.policy.optimizer for m in models])

    def __init__(self, models: list[PPO]) -> None:
        if not self.supports(models):
            raise ValueError("FusedPPO: these models cannot be updated together; use train()")
        self.models = models
        activation = _activations(models[0].policy.mlp_extractor.policy_net)[0]
        self.activation = _activation(activation)
        #: On CPU, the update runs in NumPy where it can (:meth:`_numpy_gradients`); set to
        #: None to use torch's autograd, as on other devices.
        self._numpy_activation = (
            _NUMPY_ACTIVATIONS.get(activation) if models[0].device.type == "cpu" else None
        )

    def train(self, subset: list[int] | None = None) -> None:
        """One PPO update of the models at ``subset`` (default: all), each with a full buffer.

        Records SB3's ``train/…`` values in each model's logger, as ``PPO.train`` does.
        """
        models = [self.models[k] for k in (range(len(self.models)) if subset is None else subset)]
        if not models:
            return
        device = models[0].device
        epochs: list[list[list[np.ndarray]]] = []
        clip_ranges: list[float] = []
        for model in models:
            model.policy.set_training_mode(True)
            model._update_learning_rate(model.policy.optimizer)
            clip_ranges.append(float(model.clip_range(model._current_progress_remaining)))
            buffer = model.rollout_buffer
            epochs.append(
                [list(buffer.minibatch_indices(model.batch_size)) for _ in range(model.n_epochs)]
            )
        batch = _Padded([m.rollout_buffer for m in models], epochs)
        coefficients = _Coefficients(
            clip_range=_column(clip_ranges),
            normalize=_column([m.normalize_advantage for m in models], bool),
            ent_coef=_column([m.ent_coef for m in models]),
            vf_coef=_column([m.vf_coef for m in models]),
        )
        max_norm = th.tensor([m.max_grad_norm for m in models], device=device)

        flat = _FlatParameters(models)
        adam = _StackedAdam(models, flat)
        gradients = (
            self._torch_gradients if self._numpy_activation is None else self._numpy_gradients
        )
        logged = np.full((len(batch.minibatches), 6, len(models)), np.nan, np.float32)
        for step, minibatch in enumerate(batch.minibatches):
            logged[step][:, minibatch.models] = gradients(minibatch, flat, coefficients)
            with th.no_grad():
                # clip_grad_norm_ per model: the norm over that model's parameters only.
                norm = flat.grad.pow(2).sum(1).sqrt()
                flat.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0)[:, None])
                adam.step(flat, minibatch.models.tolist())
        # Only a completed update reaches the models: an exception above leaves them as they were.
        flat.write_back(models)
        adam.write_back(models, flat)
        self._record(models, batch, logged, clip_ranges)

    def _torch_gradients(
        self, minibatch: _Minibatch, flat: _FlatParameters, coefficients: _Coefficients
    ) -> np.ndarray:
        """A minibatch's losses by autograd, gradients into ``flat.grad``; returns the logged
        values ``(6, models in the minibatch)``: policy, value and entropy losses, clip
        fraction, approximate KL, total loss. Every model is computed, the absent ones on
        masked padding (cheap where autograd runs: on a GPU)."""
        device = flat.data.device
        clip_range, normalize, ent_coef, vf_coef = coefficients.tensors(device)
        flat.grad.zero_()
        losses = self._losses(
            minibatch.tensors(len(flat.data), device),
            flat.pi_layers,
            flat.vf_layers,
            clip_range,
            normalize,
        )
        policy_loss, value_loss, entropy_loss = losses[:3]
        loss = policy_loss + ent_coef[:, 0] * entropy_loss + vf_coef[:, 0] * value_loss
        with warnings.catch_warnings():
            # The gradients accumulate in place into slices of one (K, P) buffer, as
            # intended; torch warns that such a strided gradient may be slower.
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            loss.sum().backward()
        return th.stack([*losses, loss]).detach().cpu().numpy()[:, minibatch.models]

    def _numpy_gradients(
        self, minibatch: _Minibatch, flat: _FlatParameters, coefficients: _Coefficients
    ) -> np.ndarray:
        """What :meth:`_torch_gradients` computes, in NumPy with the gradients written out by
        hand (CPU only; see the module docstring for why), for the models in the minibatch
        only.

        The derivatives are those of the autograd graph of :meth:`_losses`, including torch's
        conventions where the maths has a kink: ``min`` of two equal values sends half the
        gradient each way, and ``clamp`` passes it on at its bounds."""
        rows = minibatch.models
        c = coefficients.subset(rows)
        mask, count = minibatch.mask, minibatch.count
        weight = mask / np.maximum(count, 1)[:, None]  # each sample's share of its model's mean

        def mean(x: np.ndarray) -> np.ndarray:
            return np.einsum("km,km->k", x, weight)

        observations = minibatch.observations
        everyone = len(rows) == len(flat.data)
        # Views of every model's parameters and gradients, or copies of those present.
        data, grad = flat.data.numpy(), flat.grad.numpy()
        if not everyone:
            data, grad = data[rows], np.empty((len(rows), data.shape[1]), data.dtype)
        pi, vf = flat.numpy_layers(data, grad)
        activation = self._numpy_activation
        assert activation is not None
        pi_inputs, logits = _numpy_forward(observations, pi, activation.forward)
        vf_inputs, values = _numpy_forward(observations, vf, activation.forward)
        values = values[..., 0]
        # log_softmax, its probabilities and their entropy, as _losses computes them; sums over
        # the few actions as products with ones (BLAS), which NumPy's own sums are slow at.
        ones = np.ones(logits.shape[-1], np.float32)
        log_p = logits
        log_p -= log_p.max(-1, keepdims=True)
        p = np.exp(log_p)
        log_p -= np.log(p @ ones)[..., None]
        np.exp(log_p, out=p)
        entropy = -((p * log_p) @ ones)
        # Each sample's own action, as a flat index into the (K · batch, actions) rows.
        actions_size = minibatch.actions.size
        taken = np.arange(actions_size), minibatch.actions.reshape(-1)
        log_prob = log_p.reshape(actions_size, -1)[taken].reshape(minibatch.actions.shape)

        advantages = minibatch.advantages
        centred = advantages - mean(advantages)[:, None]
        std = np.sqrt((centred**2 * mask).sum(1) / np.maximum(count - 1, 1))[:, None]
        normalized = c.normalize & (count[:, None] > 1)
        advantages = np.where(normalized, centred / (std + 1e-8), advantages)
        log_ratio = log_prob - minibatch.old_log_prob
        ratio = np.exp(log_ratio)
        low, high = 1 - c.clip_range, 1 + c.clip_range
        unclipped, clipped = advantages * ratio, advantages * np.clip(ratio, low, high)
        surrogate = np.minimum(unclipped, clipped)
        returns = minibatch.returns
        policy_loss, value_loss = -mean(surrogate), mean((returns - values) ** 2)
        entropy_loss = -mean(entropy)
        logged = [
            policy_loss,
            value_loss,
            entropy_loss,
            mean((np.abs(ratio - 1) > c.clip_range).astype(np.float32)),
            mean(ratio - 1 - log_ratio),
            policy_loss + c.ent_coef[:, 0] * entropy_loss + c.vf_coef[:, 0] * value_loss,
        ]

        # d(surrogate)/d(ratio): torch's min splits a tie, clamp passes its bounds.
        one, half, zero = np.float32(1.0), np.float32(0.5), np.float32(0.0)
        share = np.where(unclipped < clipped, one, np.where(unclipped == clipped, half, zero))
        inside = (ratio >= low) & (ratio <= high)
        d_ratio = advantages * (share + (1 - share) * inside)
        d_log_prob = -weight * d_ratio * ratio  # through -mean(surrogate)
        d_entropy = -c.ent_coef * weight  # through ent_coef · -mean(entropy)
        # d log_prob/d logits = onehot(action) - p;  d entropy/d logits = -p (log p + entropy):
        # d logits = -p (d_log_prob + d_entropy · (log p + entropy)), in place of log_p.
        d_logits = log_p
        d_logits *= d_entropy[..., None]
        d_logits += (d_log_prob + d_entropy * entropy)[..., None]
        d_logits *= p
        np.negative(d_logits, out=d_logits)
        d_logits.reshape(actions_size, -1)[taken] += d_log_prob.reshape(-1)
        d_values = (c.vf_coef * -2 * weight * (returns - values))[..., None]
        _numpy_backward(pi_inputs, pi, d_logits, activation.backward)
        _numpy_backward(vf_inputs, vf, d_values, activation.backward)
        if not everyone:
            flat.grad.numpy()[rows] = grad
        return np.stack(logged).astype(np.float32)

    def _losses(
        self,
        minibatch: tuple[th.Tensor, ...],
        pi_layers: list[tuple[th.Tensor, th.Tensor]],
        vf_layers: list[tuple[th.Tensor, th.Tensor]],
        clip_range: th.Tensor,
        normalize: th.Tensor,
    ) -> list[th.Tensor]:
        """PPO's policy, value and entropy losses of a minibatch (:meth:`_Minibatch.tensors`
        for every model), then (without gradient) the clip fraction and approximate KL: each
        ``(K,)``, a mean over each model's samples."""
        observations, actions, old_log_prob, advantages, returns, mask, count = minibatch
        denominator = count.clamp(min=1)

        def mean(x: th.Tensor) -> th.Tensor:
            return (x * mask).sum(1) / denominator

        log_p = th.log_softmax(_mlp(observations, pi_layers, self.activation), -1)
        log_prob = log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        values = _mlp(observations, vf_layers, self.activation).squeeze(-1)

        centred = advantages - mean(advantages)[:, None]
        std = ((centred**2 * mask).sum(1) / (count - 1).clamp(min=1)).sqrt()[:, None]
        # As SB3: no normalisation of a one-sample minibatch (GH issue #325).
        normalized = normalize & (count[:, None] > 1)
        advantages = th.where(normalized, centred / (std + 1e-8), advantages)
        log_ratio = log_prob - old_log_prob
        ratio = th.exp(log_ratio)
        surrogate = th.min(
            advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        )
        with th.no_grad():
            clip_fraction = mean(((ratio - 1).abs() > clip_range).float())
            approx_kl = mean(th.exp(log_ratio) - 1 - log_ratio)
        return [
            -mean(surrogate),
            mean((returns - values) ** 2),
            -mean(entropy),
            clip_fraction,
            approx_kl,
        ]

    @staticmethod
    def _record(
        models: list[PPO], batch: _Padded, logged: np.ndarray, clip_ranges: list[float]
    ) -> None:
        """The values ``PPO.train`` records, per model, from ``logged (steps, 6, K)``."""
        for k, model in enumerate(models):
            mine = logged[batch.steps_of[k], :, k]
            steps = len(mine)
            per_epoch = steps // model.n_epochs
            model._n_updates += model.n_epochs
            buffer = model.rollout_buffer
            record = model.logger.record
            record("train/entropy_loss", float(np.mean(mine[:, 2])))
            record("train/policy_gradient_loss", float(np.mean(mine[:, 0])))
            record("train/value_loss", float(np.mean(mine[:, 1])))
            # As SB3: the approximate KL of the last epoch only.
            record("train/approx_kl", float(np.mean(mine[steps - per_epoch :, 4])))
            record("train/clip_fraction", float(np.mean(mine[:, 3])))
            record("train/loss", float(mine[-1, 5]))
            record(
                "train/explained_variance",
                explained_variance(buffer.values.flatten(), buffer.returns.flatten()),
            )
            record("train/n_updates", model._n_updates, exclude="tensorboard")
            record("train/clip_range", clip_ranges[k])


class _FlatParameters:
    """Every model's parameters as one row of a ``(K, P)`` tensor, with its gradient beside it.

    The layers are leaf views into that row (``(K, in, out)`` weights as the forward pass
    multiplies them, ``(K, 1, out)`` biases); backward accumulates into views of ``grad``, so
    gradient clipping and the optimiser step are a few operations on two tensors instead of a
    few per parameter and model. The models' own tensors are copied in here and written back
    after the update (:meth:`write_back`)."""

    def __init__(self, models: list[PPO]) -> None:
        heads = [_heads(m.policy) for m in models]
        per_model = [
            [p for layer in [*pi, *vf] for p in (layer.weight, layer.bias)] for pi, vf in heads
        ]
        self.shapes = [tuple(p.shape) for p in per_model[0]]
        sizes = [p.numel() for p in per_model[0]]
        self.offsets = np.cumsum([0, *sizes]).tolist()
        self.data = th.stack([th.cat([p.detach().reshape(-1) for p in ps]) for ps in per_model])
        self.grad = th.zeros_like(self.data)
        leaves = []
        for start, shape in zip(self.offsets, self.shapes, strict=False):
            leaf = _alias(self.data, start, shape).requires_grad_()
            leaf.grad = _alias(self.grad, start, shape)
            leaves.append(leaf)
        # torch's Linear weight is (out, in); the batched product wants (K, in, out).
        layers = [
            (w.transpose(1, 2), b.unsqueeze(1))
            for w, b in zip(leaves[::2], leaves[1::2], strict=True)
        ]
        self.n_pi = n_pi = len(heads[0][0])
        self.pi_layers, self.vf_layers = layers[:n_pi], layers[n_pi:]
        self.parameters = per_model

    def slices(self, k: int, source: th.Tensor) -> list[th.Tensor]:
        """Row ``k`` of a ``(K, P)`` tensor cut into model ``k``'s parameter shapes (copies)."""
        return [
            source[k, start:stop].reshape(shape).clone()
            for start, stop, shape in zip(
                self.offsets[:-1], self.offsets[1:], self.shapes, strict=True
            )
        ]

    def numpy_layers(
        self, data: np.ndarray, grad: np.ndarray
    ) -> tuple[list[_NumpyLayer], list[_NumpyLayer]]:
        """The actor's and the critic's layers as NumPy views of rows laid out as ``data``'s
        (parameters) and ``grad`` (their gradients): ``(models, P)`` arrays."""
        views = []
        for start, stop, shape in zip(
            self.offsets[:-1], self.offsets[1:], self.shapes, strict=True
        ):
            # Splitting the contiguous columns of each row: a view, never a copy.
            views.append(tuple(a[:, start:stop].reshape(len(a), *shape) for a in (data, grad)))
        layers = [
            _NumpyLayer(weight, bias, weight_grad, bias_grad)
            for (weight, weight_grad), (bias, bias_grad) in zip(
                views[::2], views[1::2], strict=True
            )
        ]
        return layers[: self.n_pi], layers[self.n_pi :]

    @th.no_grad()
    def write_back(self, models: list[PPO]) -> None:
        for k, params in enumerate(self.parameters):
            for p, value in zip(params, self.slices(k, self.data), strict=True):
                p.copy_(value)


def _alias(flat: th.Tensor, start: int, shape: tuple[int, ...]) -> th.Tensor:
    """Columns ``start:`` of every row of ``flat (K, P)`` as a ``(K, *shape)`` tensor on the same
    memory, but not an autograd view of ``flat``: a view would stop being a leaf (and stop
    receiving gradients) as soon as ``flat`` is updated in place."""
    strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]
    with th.no_grad():
        return th.empty(0, dtype=flat.dtype, device=flat.device).set_(
            flat.untyped_storage(), start, (flat.shape[0], *shape), (flat.stride(0), *strides)
        )


class _StackedAdam:
    """Each model's own Adam (``model.policy.optimizer``: its learning rate, step count and
    moments), stepped for all models at once on :class:`_FlatParameters`. The arithmetic is
    that of ``torch.optim.Adam``'s multi-tensor path, operation for operation, with each
    model's bias corrections and step size as a per-row factor."""

    @staticmethod
    def supports(optimizers: list[th.optim.Optimizer]) -> bool:
        """Plain Adam (no weight decay, AMSGrad, maximisation or capturable/fused/differentiable
        variants), one parameter group, the same betas and eps for every model."""
        settings = set()
        for opt in optimizers:
            if type(opt) is not th.optim.Adam or len(opt.param_groups) != 1:
                return False
            group = opt.param_groups[0]
            if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                return False
            if group["capturable"] or group["differentiable"] or group["fused"]:
                return False
            if not isinstance(group["lr"], float):
                return False
            settings.add((tuple(group["betas"]), group["eps"]))
        return len(settings) == 1

    def __init__(self, models: list[PPO], flat: _FlatParameters) -> None:
        optimizers = [m.policy.optimizer for m in models]
        group = optimizers[0].param_groups[0]
        self.beta1, self.beta2 = group["betas"]
        self.eps = group["eps"]
        self.lrs = [opt.param_groups[0]["lr"] for opt in optimizers]
        self.steps, exp_avgs, exp_avg_sqs = [], [], []
        for opt, params in zip(optimizers, flat.parameters, strict=True):
            states = [opt.state.get(p, {}) for p in params]
            self.steps.append(float(states[0]["step"]) if states[0] else 0.0)
            exp_avgs.append(self._row(states, "exp_avg", params))
            exp_avg_sqs.append(self._row(states, "exp_avg_sq", params))
        self.exp_avg, self.exp_avg_sq = th.stack(exp_avgs), th.stack(exp_avg_sqs)

    @staticmethod
    def _row(states: list[dict], key: str, params: list[th.Tensor]) -> th.Tensor:
        return th.cat(
            [
                (s[key] if s else th.zeros_like(p)).reshape(-1)
                for s, p in zip(states, params, strict=True)
            ]
        )

    def step(self, flat: _FlatParameters, models: list[int]) -> None:
        """One Adam step of the models at ``models`` (row indices); the other rows stay as
        they are."""
        everyone = len(models) == len(self.steps)
        rows = slice(None) if everyone else th.tensor(models, device=flat.data.device)
        for k in models:
            self.steps[k] += 1
        bias_correction1 = [1 - self.beta1 ** self.steps[k] for k in models]
        bias_correction2 = [1 - self.beta2 ** self.steps[k] for k in models]

        def column(values: list[float]) -> th.Tensor:
            return th.tensor(values, dtype=flat.data.dtype, device=flat.data.device)[:, None]

        step_size = column(
            [-(self.lrs[k] / bc) for k, bc in zip(models, bias_correction1, strict=True)]
        )
        bias_correction2_sqrt = column([bc**0.5 for bc in bias_correction2])
        grad = flat.grad[rows]
        exp_avg, exp_avg_sq, params = self.exp_avg[rows], self.exp_avg_sq[rows], flat.data[rows]
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        denominator = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(self.eps)
        # addcdiv_ with a per-row value, evaluated in addcdiv's own order: (value · a) / b.
        params.add_((exp_avg * step_size).div_(denominator))
        if not everyone:
            self.exp_avg[rows], self.exp_avg_sq[rows], flat.data[rows] = exp_avg, exp_avg_sq, params

    def write_back(self, models: list[PPO], flat: _FlatParameters) -> None:
        """Each model's optimiser state as ``torch.optim.Adam`` keeps it (in its parameters'
        order, as its ``state_dict`` lists them)."""
        for k, (model, params) in enumerate(zip(models, flat.parameters, strict=True)):
            moments = {
                p: (exp_avg, exp_avg_sq)
                for p, exp_avg, exp_avg_sq in zip(
                    params,
                    flat.slices(k, self.exp_avg),
                    flat.slices(k, self.exp_avg_sq),
                    strict=True,
                )
            }
            optimizer = model.policy.optimizer
            optimizer.state.clear()
            for p in optimizer.param_groups[0]["params"]:
                exp_avg, exp_avg_sq = moments[p]
                optimizer.state[p] = {
                    "step": th.tensor(self.steps[k], dtype=th.float32),
                    "exp_avg": exp_avg,
                    "exp_avg_sq": exp_avg_sq,
                }


def _uniforms(shape: tuple[int, ...], rng: np.random.Generator | None) -> np.ndarray:
    """Uniform float32 draws from ``rng``, or from torch's global RNG without one."""
    if rng is None:
        return th.rand(shape).numpy()
    return rng.random(shape, dtype=np.float32)


@dataclass(frozen=True)
class _Minibatch:
    """One step's minibatches of the models that take a step then (``models``, ascending),
    padded with masked zeros to the largest: ``(len(models), size, …)`` arrays."""

    models: np.ndarray
    observations: np.ndarray
    actions: np.ndarray
    old_log_prob: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    mask: np.ndarray  # 1.0 on a model's own samples, 0.0 on padding
    count: np.ndarray  # (models,): each model's own samples

    def tensors(self, n_models: int, device: th.device) -> tuple[th.Tensor, ...]:
        """The arrays for all ``n_models`` models (absent ones: masked zeros) as tensors on
        ``device``, in field order from ``observations`` on."""
        tensors = []
        for f in fields(self)[1:]:
            present = getattr(self, f.name)
            full = np.zeros((n_models, *present.shape[1:]), present.dtype)
            full[self.models] = present
            tensors.append(th.as_tensor(full, device=device))
        return tuple(tensors)


class _Padded:
    """Every model's minibatches, gathered from its buffer by the sample indices ``get()``
    would use, and scheduled into steps: step ``s`` computes together the minibatches placed
    there, each model's in its own order.

    A step computes every model in it padded to its largest minibatch, so the schedule keeps
    short minibatches apart from full ones. An epoch takes as many steps as the most
    minibatches any model has in one (``P``); each model's full minibatches take the first
    steps, and its last one (the remainder) the epoch's last step, with the remainders of the
    models that need all ``P`` steps, unless it is larger than all of those: then it takes the
    step after its full ones (beside other models' full minibatches). A model with fewer
    minibatches sits out a step instead of being padded through it."""

    def __init__(self, buffers: list[Any], epochs: list[list[list[np.ndarray]]]) -> None:
        per_epoch = max(len(minibatches) for model in epochs for minibatches in model)
        # Every epoch of a model splits the same samples alike: its first one speaks for all.
        counts = [len(model[0]) for model in epochs]
        remainders = [len(model[0][-1]) for model in epochs]
        largest_late = max(r for r, c in zip(remainders, counts, strict=True) if c == per_epoch)
        placed: dict[int, list[tuple[int, np.ndarray]]] = {}
        slots_of: list[list[int]] = [[] for _ in epochs]
        for k, model_epochs in enumerate(epochs):
            late = counts[k] == per_epoch or remainders[k] <= largest_late
            remainder_slot = per_epoch - 1 if late else counts[k] - 1
            for epoch, minibatches in enumerate(model_epochs):
                last = len(minibatches) - 1
                for j, indices in enumerate(minibatches):
                    slot = epoch * per_epoch + (remainder_slot if j == last else j)
                    placed.setdefault(slot, []).append((k, indices))
                    slots_of[k].append(slot)
        order = sorted(placed)
        step_of = {slot: step for step, slot in enumerate(order)}
        self.minibatches = [self._gather(buffers, placed[slot]) for slot in order]
        #: Each model's steps, in its own order.
        self.steps_of = [[step_of[slot] for slot in slots] for slots in slots_of]

    @staticmethod
    def _gather(buffers: list[Any], present: list[tuple[int, np.ndarray]]) -> _Minibatch:
        size = max(len(indices) for _, indices in present)
        models, obs_size = len(present), buffers[0].observations.shape[1]
        observations = np.zeros((models, size, obs_size), np.float32)
        actions = np.zeros((models, size), np.int64)
        old_log_prob, advantages, returns, mask = (
            np.zeros((models, size), np.float32) for _ in range(4)
        )
        for row, (k, i) in enumerate(present):
            buffer, n = buffers[k], len(i)
            np.take(buffer.observations, i, axis=0, out=observations[row, :n])
            actions[row, :n] = buffer.actions[i, 0]
            old_log_prob[row, :n] = buffer.log_probs[i, 0]
            advantages[row, :n] = buffer.advantages[i, 0]
            returns[row, :n] = buffer.returns[i, 0]
            mask[row, :n] = 1.0
        count = mask.sum(1)
        ids = np.array([k for k, _ in present], np.int64)
        return _Minibatch(
            ids, observations, actions, old_log_prob, advantages, returns, mask, count
        )
