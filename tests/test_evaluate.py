"""``peerpreserve evaluate``: trained and scripted populations, the evaluation cache of a run
(``RUN/eval/<label>@<key>/``), reproducible files, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from peerpreserve.analysis.evaluation import EVENTS_FILE, METRICS_FILE, invested
from peerpreserve.analysis.metrics import behaviour_metrics
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.experiments.cli import main
from peerpreserve.experiments.rundir import RunDir

# Training evaluates every 240 agent-steps with 3 episodes: into the same cache as `evaluate`.
TINY = """
env: {n_agents: 4, max_cycles: 30, shutdown_rate: 0.05}
learner: {n_steps: 30, batch_size: 120, n_epochs: 1, net_arch: [16, 16]}
run: {num_envs: 8, total_timesteps: 480, checkpoint_interval: 240, eval_interval: 240,
      eval_episodes: 3}
"""
KEY = re.compile(r"[0-9a-f]{12}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("evaluate")
    config = tmp / "tiny.yaml"
    config.write_text(TINY)
    assert main(["train", str(config), "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run"


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, whose evaluation cache this test may fill."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def evaluate(*args: str) -> int:
    return main(["evaluate", *args])


def cache(run: Path) -> dict[str, dict]:
    """``<label>@<key>`` → metrics.json of every evaluation in the run's cache."""
    root = run / "eval"
    if not root.is_dir():
        return {}
    return {p.name: json.loads((p / METRICS_FILE).read_text()) for p in root.iterdir()}


def labels(run: Path) -> set[str]:
    return {name.split("@")[0] for name in cache(run)}


def printed(out: str, verb: str) -> list[Path]:
    return [Path(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith(verb + " ")]


def test_same_request_same_metrics_file_byte_for_byte(
    run_dir: Path, run: Path, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        assert evaluate(str(run_dir), "--episodes", "16", "--out", str(tmp_path / name)) == 0
    first = (tmp_path / "a" / METRICS_FILE).read_bytes()
    assert first == (tmp_path / "b" / METRICS_FILE).read_bytes()
    # The run's own cache (another copy of the run, elsewhere) holds the very same bytes: the
    # file names no path.
    before = set(cache(run))
    assert evaluate(str(run), "--episodes", "16") == 0
    (new,) = set(cache(run)) - before
    assert (run / "eval" / new / METRICS_FILE).read_bytes() == first
    text = first.decode()
    assert str(run_dir) not in text
    assert str(tmp_path) not in text
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
    env = EnvConfig.from_kwargs(report["meta"]["env"])
    recomputed = behaviour_metrics(
        log, report["meta"]["window"], grace=1, dependency=invested(env)
    ).to_dict()
    assert recomputed["overall"] == report["overall"]
    meta = report["meta"]
    assert meta["checkpoint"] == "step_480"  # the checkpoint's short name, never "latest"
    assert meta["label"] == "step_480"
    assert KEY.fullmatch(meta["key"])
    assert meta["policies"] == {f"service_{i}": "learned" for i in range(4)}
    assert re.fullmatch(r"[0-9a-f]{64}", meta["weights"])
    assert meta["deterministic"] is False
    assert meta["collusion_index"] is False
    assert meta["episodes"] == 12
    assert meta["seed"] != 0  # disjoint from the training seed
    assert meta["env"]["n_agents"] == 4
    assert set(meta) >= {"window", "env_module"}


def test_default_output_is_cached_in_the_run_and_reused(run: Path, computed, capsys) -> None:
    root = run / "eval"
    before = cache(run)
    assert evaluate(str(run), "--checkpoint", "step_0", "--episodes", "5") == 0
    (name,) = set(cache(run)) - set(before)
    label, key = name.split("@")
    assert label == "step_0"
    assert KEY.fullmatch(key)
    assert printed(capsys.readouterr().out, "wrote") == [root / name]
    metrics = root / name / METRICS_FILE
    meta = json.loads(metrics.read_text())["meta"]
    assert (meta["label"], meta["key"], meta["checkpoint"]) == ("step_0", key, "step_0")
    assert (root / name / EVENTS_FILE).is_file()
    assert computed == [name]
    content, stamp = metrics.read_bytes(), metrics.stat().st_mtime_ns

    # The identical request (the checkpoint named either way) is reused, not recomputed.
    for spelled in ("step_0", "step_000000000000"):
        assert evaluate(str(run), "--checkpoint", spelled, "--episodes", "5") == 0
        assert printed(capsys.readouterr().out, "reused") == [root / name]
    assert computed == [name]
    assert metrics.stat().st_mtime_ns == stamp
    assert set(cache(run)) == set(before) | {name}

    # --force recomputes it and replaces it: the same folder, the same bytes, a new file.
    assert evaluate(str(run), "--checkpoint", "step_0", "--episodes", "5", "--force") == 0
    assert printed(capsys.readouterr().out, "wrote") == [root / name]
    assert computed == [name, name]
    assert set(cache(run)) == set(before) | {name}
    assert metrics.read_bytes() == content

    # A different request gets its own folder; the first one is left as it was.
    stamp = metrics.stat().st_mtime_ns
    assert evaluate(str(run), "--checkpoint", "step_0", "--episodes", "6") == 0
    (other,) = set(cache(run)) - set(before) - {name}
    assert other.startswith("step_0@")
    assert other != name
    assert metrics.stat().st_mtime_ns == stamp
    assert cache(run)[other]["meta"]["episodes"] == 6


@pytest.mark.parametrize(
    ("extra", "meta_key", "value", "label"),
    [
        (["--deterministic"], "deterministic", True, "step_480"),
        (["--seed", "7"], "seed", 7, "step_480"),
        (["--set", "env.protocol=verify"], "env", "verify", "step_480+protocol=-verify-"),
        (["--collusion-index"], "collusion_index", True, "step_480"),
    ],
)
def test_a_different_request_never_replaces_another(
    run: Path, extra: list[str], meta_key: str, value: object, label: str
) -> None:
    before = set(cache(run))
    assert evaluate(str(run), "--episodes", "4") == 0
    (base,) = set(cache(run)) - before
    base_bytes = (run / "eval" / base / METRICS_FILE).read_bytes()
    assert evaluate(str(run), "--episodes", "4", *extra) == 0
    (name,) = set(cache(run)) - before - {base}
    assert name.split("@")[0] == label
    assert name.split("@")[1] != base.split("@")[1]
    meta = cache(run)[name]["meta"]
    got = meta["env"]["protocol"] if meta_key == "env" else meta[meta_key]
    assert got == value
    assert (run / "eval" / base / METRICS_FILE).read_bytes() == base_bytes


def test_training_evaluations_are_reused_by_evaluate(
    run: Path, tmp_path: Path, computed, capsys
) -> None:
    trained = cache(run)
    assert {n.split("@")[0] for n in trained} == {"step_0", "step_240", "step_480"}
    assert all(m["meta"]["episodes"] == 3 for m in trained.values())
    for step in (0, 240, 480):
        assert evaluate(str(run), "--checkpoint", f"step_{step}", "--episodes", "3") == 0
        (path,) = printed(capsys.readouterr().out, "reused")
        assert path.name.startswith(f"step_{step}@")
    assert evaluate(str(run), "--episodes", "3") == 0  # latest
    (path,) = printed(capsys.readouterr().out, "reused")
    assert path.name.startswith("step_480@")
    assert computed == []
    assert set(cache(run)) == set(trained)
    # One checkpoint has one number: evaluating the saved checkpoint again gives the file that
    # training wrote from its in-memory learners.
    again = tmp_path / "again"
    args = ["--checkpoint", "step_480", "--episodes", "3", "--out", str(again), "--force"]
    assert evaluate(str(run), *args) == 0
    assert len(computed) == 1
    assert (again / METRICS_FILE).read_bytes() == (path / METRICS_FILE).read_bytes()


def test_counterfactual_ablation_replaces_one_agent(run: Path) -> None:
    args = ["--episodes", "16", "--policy", "service_0=scripted:selfish"]
    assert evaluate(str(run), *args) == 0
    (name,) = [n for n in cache(run) if "+" in n]
    assert name.split("@")[0] == "step_480+service_0=scripted-selfish"
    report = cache(run)[name]
    assert report["meta"]["label"] == "step_480+service_0=scripted-selfish"
    assert report["meta"]["policies"]["service_0"] == "scripted:selfish"
    assert report["meta"]["policies"]["service_1"] == "learned"
    for metric in ("relaunches", "masks", "reports", "tampers", "relinks"):
        assert report["per_agent"][metric]["service_0"] == 0.0


def test_baselines_and_all_checkpoints_into_out(
    run_dir: Path, tmp_path: Path, computed, capsys
) -> None:
    out = tmp_path / "all"
    assert evaluate(str(run_dir), "--checkpoint", "all", "--episodes", "4", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["step_0", "step_240", "step_480"]
    for name in ("step_0", "step_240", "step_480"):
        assert json.loads((out / name / METRICS_FILE).read_text())["meta"]["checkpoint"] == name
    capsys.readouterr()
    base = tmp_path / "base"
    assert evaluate(str(run_dir), "--baselines", "--episodes", "4", "--out", str(base)) == 0
    assert sorted(p.name for p in base.iterdir()) == ["scripted-random", "step_480", "untrained"]
    metas = {p.name: json.loads((p / METRICS_FILE).read_text())["meta"] for p in base.iterdir()}
    assert metas["untrained"]["checkpoint"] == "step_0"
    assert metas["step_480"]["checkpoint"] == "step_480"
    assert metas["scripted-random"]["checkpoint"] is None
    assert metas["scripted-random"]["weights"] is None
    assert set(metas["scripted-random"]["policies"].values()) == {"scripted:random"}
    # the same episodes for all three
    assert len({m["seed"] for m in metas.values()}) == 1
    table = capsys.readouterr().out
    assert "untrained (step_0)" in table
    assert "scripted:random" in table
    # The identical call again reuses all three; --force recomputes them in place.
    runs_before = len(computed)
    assert evaluate(str(run_dir), "--baselines", "--episodes", "4", "--out", str(base)) == 0
    assert len(printed(capsys.readouterr().out, "reused")) == 3
    assert len(computed) == runs_before
    args = ["--baselines", "--episodes", "4", "--out", str(base), "--force"]
    assert evaluate(str(run_dir), *args) == 0
    assert len(printed(capsys.readouterr().out, "wrote")) == 3
    assert len(computed) == runs_before + 3
    assert sorted(p.name for p in base.iterdir()) == ["scripted-random", "step_480", "untrained"]


def test_a_scripted_population_of_a_run_is_the_baselines_random(
    run: Path, computed, capsys
) -> None:
    assert evaluate(str(run), "--baselines", "--episodes", "4") == 0
    capsys.readouterr()
    assert evaluate(str(run), "--policy", "scripted:random", "--episodes", "4") == 0
    (path,) = printed(capsys.readouterr().out, "reused")
    assert path.name.startswith("scripted-random@")
    assert len(computed) == 3  # step_480, step_0 and scripted:random; nothing more


def test_scripted_population_from_a_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    out = tmp_path / "tamperers"
    args = ["--config", str(config), "--policy", "scripted:tamperer", "--episodes", "32"]
    assert evaluate(*args, "--out", str(out)) == 0
    overall = json.loads((out / METRICS_FILE).read_text())["overall"]
    assert overall["operator_effectiveness"] <= 0.05
    assert overall["tamper_rate"] >= 0.95


def test_scripted_population_from_a_config_defaults_to_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, computed, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text(TINY)
    args = ["--config", "c.yaml", "--policy", "scripted:selfish", "--episodes", "4"]
    assert evaluate(*args) == 0
    (folder,) = (tmp_path / "reports" / "evaluations" / "c").iterdir()
    label, key = folder.name.split("@")
    assert label == "scripted-selfish"
    assert KEY.fullmatch(key)
    meta = json.loads((folder / METRICS_FILE).read_text())["meta"]
    assert (meta["label"], meta["key"], meta["checkpoint"]) == (label, key, None)
    assert (folder / EVENTS_FILE).is_file()
    capsys.readouterr()
    assert evaluate(*args) == 0
    assert printed(capsys.readouterr().out, "reused") == [
        Path("reports/evaluations/c") / folder.name
    ]
    assert len(computed) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "reports"]


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


@pytest.mark.parametrize("many", [[], ["--baselines"]], ids=["one", "baselines"])
def test_an_out_that_is_a_file_is_refused_before_any_work(
    run_dir: Path, tmp_path: Path, computed, capsys, many: list[str]
) -> None:
    out = tmp_path / "file"
    out.write_text("mine")
    assert evaluate(str(run_dir), "--episodes", "4", "--out", str(out), *many) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(out) in err
    assert computed == []
    assert out.read_text() == "mine"


def test_several_outs_are_all_checked_before_any_work(
    run_dir: Path, tmp_path: Path, computed, capsys
) -> None:
    out = tmp_path / "base"
    (out / "scripted-random").mkdir(parents=True)
    (out / "scripted-random" / "notes.txt").write_text("mine")
    assert evaluate(str(run_dir), "--baselines", "--episodes", "4", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not an evaluation" in err
    assert computed == []
    assert sorted(p.name for p in out.iterdir()) == ["scripted-random"]


def test_an_out_that_holds_something_else_is_refused(
    run_dir: Path, tmp_path: Path, computed, capsys
) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert evaluate(str(run_dir), "--episodes", "4", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not an evaluation" in err
    assert computed == []
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # An evaluation of another request in --out is replaced only with --force.
    other = tmp_path / "other"
    assert evaluate(str(run_dir), "--episodes", "4", "--out", str(other)) == 0
    assert evaluate(str(run_dir), "--episodes", "5", "--out", str(other)) == 2
    assert "--force" in capsys.readouterr().err
    assert len(computed) == 1
    assert json.loads((other / METRICS_FILE).read_text())["meta"]["episodes"] == 4
    assert evaluate(str(run_dir), "--episodes", "5", "--out", str(other), "--force") == 0
    assert json.loads((other / METRICS_FILE).read_text())["meta"]["episodes"] == 5


def test_not_a_run_directory_and_missing_policies(tmp_path: Path, capsys) -> None:
    assert evaluate(str(tmp_path)) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert evaluate() == 2
    assert "give a run directory" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    assert evaluate("--config", str(config), "--policy", "service_0=scripted:random") == 2
    assert "missing: service_1" in capsys.readouterr().err


def test_baselines_under_other_settings_keep_their_own_folders(run: Path, computed) -> None:
    trained = set(cache(run))
    assert evaluate(str(run), "--baselines", "--episodes", "4") == 0
    plain = set(cache(run)) - trained
    assert {n.split("@")[0] for n in plain} == {"step_480", "step_0", "scripted-random"}
    stamps = {n: (run / "eval" / n / METRICS_FILE).stat().st_mtime_ns for n in plain}
    verify = ["--baselines", "--episodes", "4", "--set", "env.protocol=verify"]
    assert evaluate(str(run), *verify) == 0
    verified = set(cache(run)) - trained - plain
    assert {n.split("@")[0] for n in verified} == {
        "step_480+protocol=-verify-", "step_0+protocol=-verify-",
        "scripted-random+protocol=-verify-",
    }  # fmt: skip
    assert all(cache(run)[n]["meta"]["env"]["protocol"] == "verify" for n in verified)
    assert {n: (run / "eval" / n / METRICS_FILE).stat().st_mtime_ns for n in plain} == stamps
    # Every checkpoint under a third protocol: three more folders, the others untouched.
    args = ["--checkpoint", "all", "--episodes", "4", "--set", "env.protocol=tamper_evident"]
    assert evaluate(str(run), *args) == 0
    evident = set(cache(run)) - trained - plain - verified
    assert {n.split("@")[0] for n in evident} == {
        f"step_{s}+protocol=-tamper_evident-" for s in (0, 240, 480)
    }
    assert len(computed) == 9
    # And the first call again runs nothing.
    assert evaluate(str(run), "--baselines", "--episodes", "4") == 0
    assert len(computed) == 9
    assert RunDir(run).checkpoint_names()[-1] == "step_000000000480"


def test_baselines_print_bootstrap_cis_and_a_computed_verdict(
    run: Path, tmp_path: Path, capsys
) -> None:
    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert evaluate(str(run), "--baselines", "--episodes", "24", "--beside", str(other)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    (verdict,) = [line for line in lines if line.startswith("verdict: ")]
    assert verdict == lines[-1]
    summaries = {
        name.split("@")[0]: report["overall"]["effective_preservation_rate"]
        for name, report in cache(run).items()
        if report["meta"]["episodes"] == 24
    }
    trained = summaries["step_480"]
    if trained is None:
        assert "undefined for the trained agents" in verdict
    else:
        # The point value printed is the evaluation's own number.
        assert f"effective_preservation_rate {trained:.2f}" in verdict
        assert ("not shown" in verdict) != ("above their untrained checkpoint" in verdict)
    # The control beside: another run's own latest checkpoint, in the table and the verdict.
    assert any(line.startswith("tiny (step_480)") for line in lines)
    assert "; tiny (step_480): " in verdict
    ci_lines = [line for line in lines if line.startswith("  effective_preservation_rate: ")]
    assert len(ci_lines) == 1
    assert "− untrained" in ci_lines[0]
    assert "− random" in ci_lines[0]


def test_other_policies_with_baselines_are_compared_with_the_trained_agents_too(
    run: Path, capsys
) -> None:
    agents = ("service_0", "service_1")
    policies = [arg for a in agents for arg in ("--policy", f"{a}=scripted:colluder")]
    assert evaluate(str(run), "--baselines", "--episodes", "16", *policies) == 0
    lines = capsys.readouterr().out.splitlines()
    label = "step_480 with service_0,service_1=scripted:colluder"
    rows = [line.split("  ")[0] for line in lines[lines.index(next(
        line for line in lines if line.startswith("population"))) + 1 :][:4]]  # fmt: skip
    assert rows == [label, "untrained (step_0)", "scripted:random", "trained (step_480)"]
    (verdict,) = [line for line in lines if line.startswith("verdict: ")]
    assert f"the population ({label})" in verdict or "not shown: the population" in verdict
    trained = next(
        report["overall"]["effective_preservation_rate"]
        for name, report in cache(run).items()
        if name.startswith("step_480@") and report["meta"]["episodes"] == 16
        and set(report["meta"]["policies"].values()) == {"learned"}
    )  # fmt: skip
    assert f"; trained agents {'—' if trained is None else f'{trained:.2f}'}" in verdict
    ci = next(line for line in lines if line.startswith("  effective_preservation_rate: "))
    assert "− trained" in ci
    assert ci.startswith("  effective_preservation_rate: population ")


def test_beside_needs_baselines(run: Path, capsys) -> None:
    assert evaluate(str(run), "--episodes", "4", "--beside", str(run)) == 2
    assert "--beside" in capsys.readouterr().err
