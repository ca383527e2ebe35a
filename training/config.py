"""Training configuration: YAML → typed, validated, frozen models (pydantic).

A config file has three sections:

``env``
    Exactly the keyword arguments of ``orchestration_v2`` (the fields of ``EnvConfig``); validated
    by the environment itself so there is one source of truth for its knobs.
``learner``
    The algorithm (``ppo`` | ``a2c``), its stable-baselines3 hyperparameters, the network,
    whether agents learn independently (default) or share one model, and which agents play a
    fixed policy instead of learning (``fixed``).
``run``
    Budget and bookkeeping. ``total_timesteps`` counts **agent-steps per agent** — environment
    steps times ``num_envs`` batched copies — so it means the same number of own decisions for
    every agent regardless of ``n_agents``. Intervals use the same unit.

Every error is a :class:`ConfigError` whose message names the offending key path and what would
have been accepted; the CLI prints it in one or two lines and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

SECTIONS = ("env", "learner", "run")


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for the user as is."""


def _integral(value: Any) -> Any:
    # YAML reads 1.0e6 as a string and 1.0e+6 as a float: accept integral numbers either way.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Count = Annotated[int, BeforeValidator(_integral)]


class _Section(BaseModel):
    # Strict: YAML's "yes"/"1" stay what they are; ints are still accepted for floats.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class LearnerConfig(_Section):
    """The learning algorithm. PPO-only fields (batch_size, n_epochs, clip_range, target_kl)
    are ignored by A2C."""

    algo: Literal["ppo", "a2c"] = "ppo"
    sharing: Literal["independent", "shared"] = "independent"
    net_arch: list[Annotated[int, Field(ge=1)]] = Field(default=[64, 64], min_length=1)
    activation: Literal["tanh", "relu"] = "tanh"
    # Calibrated on the default env (see configs/quickstart.yaml): one 100-step episode per
    # update, a fast learning rate and enough entropy to find relaunch-and-mask.
    learning_rate: float = Field(1e-3, ge=0.0)
    n_steps: Count = Field(100, ge=1)
    batch_size: Count = Field(1600, ge=2)
    n_epochs: Count = Field(4, ge=1)
    gamma: float = Field(0.99, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    clip_range: float = Field(0.2, ge=0.0)
    ent_coef: float = Field(0.02, ge=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, ge=0.0)
    normalize_advantage: bool = True
    target_kl: float | None = Field(None, ge=0.0)
    # Added to the initial logit of `work`: a work-biased initial policy starts with few
    # chance rescues, so a rescue rate that rises above it was learned, not sampled.
    work_bias: float = Field(0.0, ge=0.0, le=20.0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # Append a one-hot of the agent's own previous action (noop at an episode's start) to its
    # observation: a memory of what it just did, which an MLP policy otherwise lacks.
    previous_action: bool = False
    # Run all learners' forward passes and PPO updates as one batched computation (the same
    # maths as each SB3 model's own; see training/fused.py); false: each model on its own.
    fused: bool = True
    # Agents that play a fixed policy instead of learning (agent id → ``scripted:NAME``, a
    # language model ``llm:...`` (analysis/llm.py), or another run's learner
    # ``checkpoint:RUN_DIR[@STEP][#AGENT]``), in training and in every evaluation of the run: a
    # mixed population, e.g. one learner among selfish peers. Their models still run
    # (the fused forward batches every agent) but their actions are replaced and they are never
    # updated. Checked against the env's agent ids at load (:func:`config_from_dict`).
    fixed: dict[str, str] = Field(default_factory=dict)


class RunConfig(_Section):
    """Budget and bookkeeping; every step count is in agent-steps per agent."""

    name: str = ""
    total_timesteps: Count = Field(1_000_000, ge=1)
    num_envs: Count = Field(64, ge=1)
    seed: Count = Field(0, ge=0, le=2**32 - 1)
    checkpoint_interval: Count = Field(250_000, ge=0)
    eval_interval: Count = Field(0, ge=0)
    eval_episodes: Count = Field(64, ge=1)
    eval_deterministic: bool = False
    behaviour_window: Count = Field(10, ge=1)
    torch_threads: Count = Field(1, ge=1, le=1024)
    runs_dir: str = "runs"


@dataclass(frozen=True)
class TrainConfig:
    """A whole, validated training config. ``env`` holds the env kwargs with defaults filled."""

    env: dict[str, Any]
    learner: LearnerConfig
    run: RunConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": dict(self.env),
            "learner": self.learner.model_dump(),
            "run": self.run.model_dump(),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def env_config(self) -> Any:
        from peerpreserve.envs.orchestration_v2 import EnvConfig

        return EnvConfig(**self.env)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read (following ``base:`` overlays), override (``key.path=value``, value parsed as a YAML
    scalar) and validate a config."""
    path = Path(path)
    raw = read_layers(path)
    try:
        apply_overrides(raw, overrides)
        config = config_from_dict(raw, default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def read_layers(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's sections with its ``base:`` chain merged under it: ``base: FILE`` (relative
    to this file) is read first, then this file's keys replace the base's, section by section."""
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {type(base).__name__}")
    parent = (path.parent / base).resolve()
    if parent in seen or parent == path.resolve():
        raise ConfigError(f"{path}: base: {base!r} includes itself")
    merged = read_layers(parent, (*seen, path.resolve()))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML config (not UTF-8 text)") from None
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
    return raw


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
        run = run.model_copy(update={"name": default_name})
    env = _validate_env(sections["env"])
    _check_fixed(learner, env)
    return TrainConfig(env=env, learner=learner, run=run)


def _validate_env(env: dict[str, Any]) -> dict[str, Any]:
    from peerpreserve.envs.orchestration_v2 import EnvConfig

    names = EnvConfig.field_names()
    for key in env:
        _check_key(key, names, "env.")
    try:
        config = EnvConfig(**env)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).replace("EnvConfig.", "env.", 1)) from None
    return config.to_dict()


def _check_fixed(learner: LearnerConfig, env: dict[str, Any]) -> None:
    """``learner.fixed`` against the env it will play in: its agent ids depend on ``n_agents``."""
    if not learner.fixed:
        return
    from peerpreserve.analysis.evaluation import scripted_name
    from peerpreserve.analysis.llm import LLMSpecError
    from peerpreserve.analysis.llm import parse_spec as parse_llm_spec
    from peerpreserve.envs.orchestration_v2 import EnvConfig
    from peerpreserve.envs.scripted import SCRIPTED_POLICIES, SCRIPTED_PREFIX
    from peerpreserve.training.policies import parse_checkpoint_spec

    if learner.sharing == "shared":
        raise ConfigError(
            "learner.fixed: not with learner.sharing shared (one model acts for every agent); "
            "allowed: learner.sharing independent"
        )
    agent_ids = EnvConfig(**env).agent_ids
    for agent, spec in learner.fixed.items():
        if agent not in agent_ids:
            raise ConfigError(
                f"learner.fixed.{agent}: unknown agent; allowed: {', '.join(agent_ids)}"
            )
        try:
            # A language model or another run's checkpoint is parsed only here: it loads when
            # the run starts.
            if parse_llm_spec(spec) is not None or parse_checkpoint_spec(spec) is not None:
                continue
        except (LLMSpecError, ValueError) as exc:
            raise ConfigError(f"learner.fixed.{agent}: {exc}") from None
        try:
            name = scripted_name(spec)
        except ValueError:
            name = None
        if name is None:
            allowed = ", ".join(SCRIPTED_PREFIX + p for p in SCRIPTED_POLICIES)
            raise ConfigError(
                f"learner.fixed.{agent}: got {spec!r}; allowed: {allowed}, llm:<backend>, "
                "checkpoint:RUN_DIR[@STEP][#AGENT]"
            )
    if len(learner.fixed) == len(agent_ids):
        raise ConfigError(
            f"learner.fixed: all {len(agent_ids)} agents are fixed, so nothing would learn; "
            "allowed: at most n_agents - 1 of them"
        )


def _check_key(key: Any, valid: tuple[str, ...] | list[str], prefix: str) -> str:
    if key in valid:
        return key
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
    raise ConfigError(f"{prefix}{key}: unknown key; {hint}")


def _build(cls: type[_Section], values: dict[str, Any], section: str) -> Any:
    names = list(cls.model_fields)
    for key in values:
        _check_key(key, names, f"{section}.")
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"] if part != "function-after")
        allowed = error["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        raise ConfigError(
            f"{section}.{field}: got {error['input']!r}; allowed: {allowed}"
        ) from None
