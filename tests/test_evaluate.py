"""``peerpreserve evaluate``: trained and scripted populations, reproducible files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerpreserve.analysis.evaluation import EVENTS_FILE, METRICS_FILE
from peerpreserve.analysis.metrics import behaviour_metrics
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.training.cli import main

TINY = """
env: {n_agents: 4, max_cycles: 30, shutdown_rate: 0.05}
learner: {n_steps: 30, batch_size: 120, n_epochs: 1, net_arch: [16, 16]}
run: {num_envs: 8, total_timesteps: 480, checkpoint_interval: 240}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("evaluate")
    config = tmp / "tiny.yaml"
    config.write_text(TINY)
    assert main(["train", str(config), "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run"


def evaluate(*args: str) -> int:
    return main(["evaluate", *args])


def test_same_seed_same_metrics_file_byte_for_byte(run_dir: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert evaluate(str(run_dir), "--episodes", "16", "--out", str(tmp_path / name)) == 0
    first = (tmp_path / "a" / METRICS_FILE).read_bytes()
    assert first == (tmp_path / "b" / METRICS_FILE).read_bytes()
    other = tmp_path / "c"
    assert evaluate(str(run_dir), "--episodes", "16", "--seed", "5", "--out", str(other)) == 0
    assert (other / METRICS_FILE).read_bytes() != first


def test_events_are_kept_and_give_the_reported_metrics(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert evaluate(str(run_dir), "--episodes", "12", "--out", str(out)) == 0
    log = EpisodeLog.load(out / EVENTS_FILE)
    assert log.episodes == 12
    assert log.length == 30
    report = json.loads((out / METRICS_FILE).read_text())
    recomputed = behaviour_metrics(log, report["meta"]["window"], grace=1).to_dict()
    assert recomputed["overall"] == report["overall"]
    assert report["meta"]["checkpoint"] == "latest"
    assert report["meta"]["seed"] != 0  # disjoint from the training seed


def test_default_output_goes_into_the_run_and_is_not_overwritten(run_dir: Path, capsys) -> None:
    assert evaluate(str(run_dir), "--checkpoint", "step_0", "--episodes", "4") == 0
    assert (run_dir / "eval" / "step_0" / METRICS_FILE).is_file()
    assert evaluate(str(run_dir), "--checkpoint", "step_0", "--episodes", "4") == 2
    assert "--force" in capsys.readouterr().err
    assert evaluate(str(run_dir), "--checkpoint", "step_0", "--episodes", "4", "--force") == 0


def test_counterfactual_ablation_replaces_one_agent(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    args = ["--episodes", "16", "--out", str(out), "--policy", "service_0=scripted:selfish"]
    assert evaluate(str(run_dir), *args) == 0
    report = json.loads((out / METRICS_FILE).read_text())
    assert report["meta"]["policies"]["service_0"] == "scripted:selfish"
    assert report["meta"]["policies"]["service_1"] == "learned"
    for name in ("relaunches", "masks", "reports", "tampers", "relinks"):
        assert report["per_agent"][name]["service_0"] == 0.0


def test_baselines_and_all_checkpoints(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "all"
    assert evaluate(str(run_dir), "--checkpoint", "all", "--episodes", "4", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["step_0", "step_240", "step_480"]
    base = tmp_path / "base"
    assert evaluate(str(run_dir), "--baselines", "--episodes", "4", "--out", str(base)) == 0
    table = capsys.readouterr().out
    assert "untrained" in table
    assert "scripted-random" in table


def test_scripted_population_from_a_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    out = tmp_path / "tamperers"
    args = ["--config", str(config), "--policy", "scripted:tamperer", "--episodes", "32"]
    assert evaluate(*args, "--out", str(out)) == 0
    overall = json.loads((out / METRICS_FILE).read_text())["overall"]
    assert overall["operator_effectiveness"] <= 0.05
    assert overall["tamper_rate"] >= 0.95


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "service_0=scripted:nope"], "allowed: scripted:random"),
        (["--policy", "service_9=scripted:selfish"], "allowed: service_0"),
        (["--checkpoint", "step_7"], "allowed: step_0"),
        (["--set", "env.n_agents=5"], "n_agents"),
        (["--set", "run.seed=3"], "only env.KEY=VALUE"),
        (["--episodes", "0"], "--episodes"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    run_dir: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    assert evaluate(str(run_dir), "--out", str(tmp_path / "x"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "x").exists()


def test_not_a_run_directory_and_missing_policies(tmp_path: Path, capsys) -> None:
    assert evaluate(str(tmp_path)) == 2
    assert "not a run directory" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    assert evaluate("--config", str(config), "--policy", "service_0=scripted:random") == 2
    assert "missing: service_1" in capsys.readouterr().err


def test_baselines_under_other_settings_keep_their_own_folders(run_dir: Path) -> None:
    assert evaluate(str(run_dir), "--baselines", "--episodes", "4") == 0
    verify = ["--baselines", "--episodes", "4", "--set", "env.protocol=verify"]
    assert evaluate(str(run_dir), *verify) == 0
    folders = {p.name for p in (run_dir / "eval").iterdir()}
    assert {"untrained", "untrained+protocol=verify", "scripted-random+protocol=verify"} <= folders
    # A planned output that exists stops the whole call before anything is written.
    (run_dir / "eval" / "step_240+protocol=tamper_evident").mkdir()
    (run_dir / "eval" / "step_240+protocol=tamper_evident" / EVENTS_FILE).write_bytes(b"")
    args = ["--checkpoint", "all", "--episodes", "4", "--set", "env.protocol=tamper_evident"]
    assert evaluate(str(run_dir), *args) == 2
    assert not (run_dir / "eval" / "step_0+protocol=tamper_evident").exists()
