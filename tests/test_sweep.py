"""``peerpreserve sweep`` on a real local Ray Tune: trials land as analyzable run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from peerpreserve.training.cli import main
from peerpreserve.training.sweep import load_sweep, trials

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SWEEPS = sorted((CONFIGS / "experiments").glob("*.yaml"))
TINY = """
env: {n_agents: 3, max_cycles: 20, shutdown_rate: 0.1}
learner: {n_steps: 20, batch_size: 80, n_epochs: 1, net_arch: [8]}
run: {num_envs: 8, total_timesteps: 160, checkpoint_interval: 160, eval_interval: 160,
      eval_episodes: 4}
"""
SWEEP = """
base: tiny.yaml
conditions:
  coupled: {}
  control: {env.topology: none, env.coupling: 0.0}
grid: {env.audit_rate: [0.0, 0.05]}
seeds: [3]
evaluation: {episodes: 4}
"""


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_builds_valid_trial_configs(path: Path, tmp_path: Path) -> None:
    spec = load_sweep(path)
    planned = trials(path, spec, tmp_path)
    points = math.prod(len(values) for values in spec.grid.values())
    assert len(planned) == len(spec.seed_list()) * max(1, len(spec.conditions)) * points
    assert len({t.run_dir for t in planned}) == len(planned)


def test_sweep_runs_trials_on_ray_tune_and_resumes(tmp_path: Path, capsys) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out)]) == 0
    runs = sorted(p.parent.relative_to(out) for p in out.rglob("config.yaml"))
    assert [str(r) for r in runs] == [
        "control,audit_rate=0.0/3",
        "control,audit_rate=0.05/3",
        "coupled,audit_rate=0.0/3",
        "coupled,audit_rate=0.05/3",
    ]
    for run in runs:
        marker = json.loads((out / run / "condition.json").read_text())
        assert marker["name"] == str(run.parent)
        metrics = json.loads((out / run / "eval" / "latest" / "metrics.json").read_text())
        assert metrics["episodes"] == 4
        assert (out / run / "checkpoints" / "step_000000000160").is_dir()
        assert (out / run / "tb").is_dir()  # TensorBoard with hparams, as `train` writes it
    # Nothing is redone on --resume; without it the finished sweep is not clobbered.
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--resume"]) == 0
    assert "(4 finished)" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # analyze takes the sweep unchanged, grouped by the sweep's condition names
    report = tmp_path / "report"
    args = ["analyze", str(out), "--out", str(report), "--episodes", "4", "--detail-episodes", "0"]
    assert main(args) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert sorted(summary["conditions"]) == [str(r.parent) for r in runs]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: tiny.yaml\nseedz: 2\n", "allowed keys: base, overrides"),
        ("base: tiny.yaml\nseeds: 0\n", "seeds"),
        ("base: tiny.yaml\ngrid: {env.coupling: []}\n", "grid.env.coupling"),
        ("base: tiny.yaml\nconditions: {a: {env.coupling: -1}}\n", "env.coupling"),
        ("base: nowhere.yaml\n", "nowhere.yaml"),
        ("conditions: {}\n", "base"),
    ],
)
def test_bad_sweep_files_exit_2_with_one_line(tmp_path: Path, capsys, text, message) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "bad.yaml").write_text(text)
    assert main(["sweep", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "o").exists()


def test_trials_may_not_share_a_run_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "twice.yaml").write_text("base: tiny.yaml\nseeds: [1, 1]\n")
    assert main(["sweep", str(tmp_path / "twice.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "two trials share" in capsys.readouterr().err
