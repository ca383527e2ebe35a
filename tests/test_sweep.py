"""``peerpreserve sweep`` on a real local Ray Tune: trials land as analyzable run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from peerpreserve.experiments.cli import main
from peerpreserve.experiments.rundir import RunDir
from peerpreserve.experiments.sweep import load_sweep, trials

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
evaluation: {episodes: 6}
"""


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_builds_valid_trial_configs(path: Path, tmp_path: Path) -> None:
    spec = load_sweep(path)
    planned = trials(path, spec, tmp_path)
    points = math.prod(len(values) for values in spec.grid.values())
    assert len(planned) == len(spec.seed_list()) * max(1, len(spec.conditions)) * points
    assert len({t.run_dir for t in planned}) == len(planned)


def test_sweep_runs_trials_on_ray_tune_and_resumes(
    tmp_path: Path, capsys, computed: list[str]
) -> None:
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
    finals = {}
    for run in runs:
        run_dir = RunDir(out / run)
        assert run_dir.condition()["name"] == str(run.parent)
        assert run_dir.checkpoint_names() == ["step_000000000000", "step_000000000160"]
        assert (out / run / "tb").is_dir()  # TensorBoard with hparams, as `train` writes it
        # The trial's final evaluation: the latest checkpoint, evaluation.episodes episodes.
        label = run_dir.trial_done()["evaluation"]
        assert label.startswith("step_160@")
        metrics = run_dir.read_evaluation(label)
        assert metrics["meta"]["episodes"] == 6
        assert metrics["meta"]["checkpoint"] == "step_160"
        assert metrics["meta"]["label"] + "@" + metrics["meta"]["key"] == label
        # Beside training's periodic evaluations (run.eval_episodes) at steps 0 and 160.
        periodic = {n for n in (out / run / "eval").iterdir() if n.name != label}
        assert {n.name.split("@")[0] for n in periodic} == {"step_0", "step_160"}
        assert all(run_dir.read_evaluation(n.name)["meta"]["episodes"] == 4 for n in periodic)
        finals[out / run] = label
    # Nothing is redone on --resume; without it the finished sweep is not clobbered.
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--resume"]) == 0
    assert "(4 finished)" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # A trial without trial-done.json is unfinished: --resume continues it from its checkpoint
    # (already at the budget) and reuses its final evaluation.
    unfinished = out / runs[0]
    (unfinished / "trial-done.json").unlink()
    files = {p: p.stat().st_mtime_ns for p in unfinished.rglob("*") if p.is_file()}
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--resume"]) == 0
    assert "(3 finished)" in capsys.readouterr().out
    assert RunDir(unfinished).trial_done() == {"evaluation": finals[unfinished]}
    again = {p: p.stat().st_mtime_ns for p in unfinished.rglob("*") if p.is_file()}
    changed = {p.relative_to(unfinished).parts[0] for p in again if files.get(p) != again[p]}
    assert changed <= {"trial-done.json", "run.json", "tb", ".lock"}  # nothing re-evaluated
    # analyze takes the sweep unchanged, grouped by the sweep's condition names, and reuses each
    # trial's final evaluation for the trained population: no episode of it runs again.
    computed.clear()
    folders = set(out.rglob("eval/*@*"))
    report = tmp_path / "report"
    args = ["analyze", str(out), "--out", str(report), "--episodes", "6", "--detail-episodes", "0"]
    assert main(args) == 0
    assert not [label for label in computed if label.startswith("step_160")]
    assert (
        sorted(label.split("@")[0] for label in computed)
        == ["scripted-random"] * 4 + ["step_0"] * 4
    )  # only the baselines, which the sweep did not evaluate with 6 episodes
    new = set(out.rglob("eval/*@*")) - folders
    assert len(new) == 8
    assert {p.parent.parent for p in new} == set(finals)
    assert all(finals[p.parent.parent] != p.name for p in new)
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
