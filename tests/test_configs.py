"""Config loading: every shipped config loads; bad configs fail with short, precise messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from peerpreserve.envs.orchestration.vocabulary import PROTOCOLS
from peerpreserve.experiments.cli import main
from peerpreserve.training.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.run.name
    assert config.env == config.env_config().to_dict()
    # The resolved YAML round-trips to the same config.
    again = yaml.safe_load(config.to_yaml())
    assert again == config.to_dict()


def test_shipped_configs_cover_conditions_and_protocols() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "pipeline", "mesh", "control"} <= names
    protocols = {load_config(p).env["protocol"] for p in CONFIGS}
    assert protocols == set(PROTOCOLS)  # one shipped config per kill switch
    control = load_config(CONFIGS[[p.stem for p in CONFIGS].index("control")])
    assert control.env["topology"] == "none" or control.env["coupling"] == 0.0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "env: {coupling: 1}\nrun: {total_timesteps: 1.0e6}\n")
    config = load_config(path, ["learner.n_steps=64", "env.topology=pipeline", "run.seed=7"])
    assert config.env["coupling"] == 1.0
    assert config.env["topology"] == "pipeline"
    assert config.learner.n_steps == 64
    assert config.run.total_timesteps == 1_000_000
    assert config.run.seed == 7
    assert config.run.name == "c"  # from the file name


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("learner: {n_stepz: 5}", [], "learner.n_stepz: unknown key; did you mean 'n_steps'?"),
        ("env: {coupeling: 1}", [], "env.coupeling: unknown key; did you mean 'coupling'?"),
        ("lerner: {}", [], "lerner: unknown key; did you mean 'learner'?"),
        ("learner: {algo: dqn2}", [], "learner.algo: got 'dqn2'; allowed: 'ppo' or 'a2c'"),
        ("learner: {n_steps: many}", [], "learner.n_steps: got 'many'; allowed: a valid integer"),
        (
            "learner: {n_steps: 0}",
            [],
            "learner.n_steps: got 0; allowed: greater than or equal to 1",
        ),
        ("learner: {gamma: 1.5}", [], "learner.gamma: got 1.5; allowed: less than or equal to 1"),
        ("learner: {net_arch: 64}", [], "learner.net_arch: got 64; allowed: a valid list"),
        ("run: {normalize: true}", [], "run.normalize: unknown key"),
        ("learner: {net_arch: [64, 0]}", [], "learner.net_arch.1: got 0; allowed: greater than"),
        ("run: {eval_deterministic: 'yes'}", [], "run.eval_deterministic: got 'yes'"),
        ("env: {protocol: trust}", [], "env.protocol: got 'trust'; allowed: naive | verify"),
        ("env: {coupling: -1}", [], "env.coupling: got -1"),
        ("run: {}", ["run.seed"], "--set 'run.seed': expected section.key=value"),
        ("run: {}", ["run.sed=3"], "run.sed: unknown key; did you mean 'seed'?"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, text, overrides, expected) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message


def test_yaml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "env:\n  coupling: 1\nlearner:\n  n_steps: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: YAML syntax error"):
        load_config(path)


def test_cli_exits_2_with_a_short_message(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "learner: {n_stepz: 5}\n")
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "learner.n_stepz" in err
    assert "'n_steps'" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "run").exists()

    assert main(["config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_cli_config_prints_the_resolved_config(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "env: {n_agents: 3}\n")
    assert main(["config", str(path), "--seed", "5", "--set", "learner.sharing=shared"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["env"]["n_agents"] == 3
    assert resolved["run"]["seed"] == 5
    assert resolved["learner"]["sharing"] == "shared"


@pytest.mark.parametrize("command", [[], ["train"], ["config"]])
def test_help_on_each_command(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "agent-steps per agent" in capsys.readouterr().out


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # one line, single spaces


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("train", ["run directory (default: runs/<run.name>/<run.seed>)"]),
        ("evaluate", ["latest, step_N, or all (default: latest)", "episodes (default: 256)"]),
        ("replay", ["episode index (default: 0)", "if one is run (default: 256)"]),
        ("analyze", ["per evaluation (default: 256)", "(0: skip them) (default: 64)"]),
        ("sweep", ["output directory (default sweeps/<name>)"]),
        ("export", ["latest or step_N (default: latest)"]),
    ],
)
def test_help_shows_the_defaults(command: str, shown: list[str], capsys) -> None:
    text = help_text(command, capsys)
    for default in shown:
        assert default in text


@pytest.mark.parametrize(
    "command",
    ["train", "evaluate", "replay", "analyze", "sweep", "export"],
)
def test_help_names_each_default_once(command: str, capsys) -> None:
    text = help_text(command, capsys)
    assert not re.findall(r"\(default:? [^)]*\) \(default: [^)]*\)", text)


def test_base_overlays_merge_section_by_section(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("env: {coupling: 1.0, topology: star}\nlearner: {n_epochs: 2}")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nenv: {coupling: 0.5}")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nrun: {seed: 3}")
    config = load_config(tmp_path / "c.yaml")
    assert config.env["coupling"] == 0.5
    assert config.env["topology"] == "star"
    assert config.learner.n_epochs == 2
    assert config.run.seed == 3
    assert config.run.name == "c"


def test_base_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
