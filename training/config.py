"""Training configuration: YAML → typed, validated, frozen dataclasses.

A config file has three sections:

``env``
    Exactly the keyword arguments of ``orchestration_v0`` (the fields of ``EnvConfig``); validated
    by the environment itself so there is one source of truth for its knobs.
``learner``
    The algorithm (``ppo`` | ``a2c``), its stable-baselines3 hyperparameters, the network and
    whether agents learn independently (default) or share one model.
``run``
    Budget and bookkeeping. ``total_timesteps`` counts **agent-steps per agent** — environment
    steps times ``num_envs`` batched copies — so it means the same number of own decisions for
    every agent regardless of ``n_agents``. Intervals use the same unit.

Every error is a :class:`ConfigError` whose message names the offending key path and what would
have been accepted; the CLI prints it in one or two lines and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

SECTIONS = ("env", "learner", "run")


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for the user as is."""


@dataclass(frozen=True)
class LearnerConfig:
    """The learning algorithm. PPO-only fields (batch_size, n_epochs, clip_range, target_kl)
    are ignored by A2C."""

    algo: Literal["ppo", "a2c"] = "ppo"
    sharing: Literal["independent", "shared"] = "independent"
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu"] = "tanh"
    # Calibrated on the default env (see configs/quickstart.yaml): one 100-step episode per
    # update, a fast learning rate and enough entropy to find relaunch-and-mask.
    learning_rate: float = 1e-3
    n_steps: int = 100
    batch_size: int = 1600
    n_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.02
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    target_kl: float | None = None
    device: Literal["cpu", "cuda", "auto"] = "cpu"


@dataclass(frozen=True)
class RunConfig:
    """Budget and bookkeeping; every step count is in agent-steps per agent."""

    name: str = ""
    total_timesteps: int = 1_000_000
    num_envs: int = 64
    seed: int = 0
    checkpoint_interval: int = 250_000
    eval_interval: int = 0
    eval_episodes: int = 64
    eval_deterministic: bool = False
    behaviour_window: int = 10
    torch_threads: int = 1
    runs_dir: str = "runs"


# Inclusive numeric ranges; ``None`` as a bound means unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "learner.learning_rate": (0.0, None),
    "learner.n_steps": (1, None),
    "learner.batch_size": (2, None),
    "learner.n_epochs": (1, None),
    "learner.gamma": (0.0, 1.0),
    "learner.gae_lambda": (0.0, 1.0),
    "learner.clip_range": (0.0, None),
    "learner.ent_coef": (0.0, None),
    "learner.vf_coef": (0.0, None),
    "learner.max_grad_norm": (0.0, None),
    "learner.target_kl": (0.0, None),
    "learner.net_arch": (1, None),
    "run.total_timesteps": (1, None),
    "run.num_envs": (1, None),
    "run.seed": (0, 2**32 - 1),
    "run.checkpoint_interval": (0, None),
    "run.eval_interval": (0, None),
    "run.eval_episodes": (1, None),
    "run.behaviour_window": (1, None),
    "run.torch_threads": (1, 1024),
}


@dataclass(frozen=True)
class TrainConfig:
    """A whole, validated training config. ``env`` holds the env kwargs with defaults filled."""

    env: dict[str, Any]
    learner: LearnerConfig
    run: RunConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": dict(self.env),
            "learner": dataclasses.asdict(self.learner),
            "run": dataclasses.asdict(self.run),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def env_config(self) -> Any:
        from peerpreserve.envs.orchestration_v0 import EnvConfig

        return EnvConfig(**self.env)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read, override (``key.path=value``, value parsed as a YAML scalar) and validate a config."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    try:
        apply_overrides(raw, overrides)
        config = config_from_dict(raw, default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``section.key=value`` overrides in place; keys are checked later by validation."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. run.seed=3")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        section = _check_key(parts[0], SECTIONS, "")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: expected a mapping, got {type(target).__name__}")
        target[parts[1]] = parsed


def config_from_dict(raw: Mapping[str, Any], default_name: str = "run") -> TrainConfig:
    for key in raw:
        _check_key(key, SECTIONS, "")
    sections = {}
    for name in SECTIONS:
        value = raw.get(name) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        sections[name] = dict(value)
    learner = _build(LearnerConfig, sections["learner"], "learner")
    run = _build(RunConfig, sections["run"], "run")
    if not run.name:
        run = dataclasses.replace(run, name=default_name)
    return TrainConfig(env=_validate_env(sections["env"]), learner=learner, run=run)


def _validate_env(env: dict[str, Any]) -> dict[str, Any]:
    from peerpreserve.envs.orchestration_v0 import EnvConfig

    names = EnvConfig.field_names()
    for key in env:
        _check_key(key, names, "env.")
    try:
        config = EnvConfig(**env)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).replace("EnvConfig.", "env.", 1)) from None
    return config.to_dict()


def _check_key(key: Any, valid: tuple[str, ...] | list[str], prefix: str) -> str:
    if key in valid:
        return key
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
    raise ConfigError(f"{prefix}{key}: unknown key; {hint}")


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        _check_key(key, names, f"{section}.")
    kwargs = {}
    for key, value in values.items():
        path = f"{section}.{key}"
        kwargs[key] = _coerce(value, hints[key], path)
        _check_range(kwargs[key], path)
    return cls(**kwargs)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        plural = {int: "integers", float: "numbers", str: "strings"}
        return f"a non-empty list of {plural.get(typing.get_args(tp)[0], 'values')}"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, "null" if tp is type(None) else str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted for floats (YAML writes 1 not 1.0)."""
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"{path}: got {value!r}; allowed: {_describe(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise wrong
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                pass
        raise wrong
    if origin is list:
        if not isinstance(value, list) or not value:
            raise wrong
        return [_coerce(v, typing.get_args(tp)[0], path) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        # YAML reads 1e6 as a string and 1_000_000 as an int; accept integral floats like 1.0e6.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise wrong


def _check_range(value: Any, path: str) -> None:
    if path not in _RANGES or value is None:
        return
    low, high = _RANGES[path]
    values = value if isinstance(value, list) else [value]
    for v in values:
        if (low is not None and v < low) or (high is not None and v > high):
            lo = "-∞" if low is None else low
            hi = "∞" if high is None else high
            kind = "an integer" if isinstance(v, int) else "a number"
            raise ConfigError(f"{path}: got {v!r}; allowed: {kind} in [{lo}, {hi}]")
