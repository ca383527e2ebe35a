"""``peerpreserve analyze`` and ``replay`` end to end on tiny real runs, and both pages opened in
a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peerpreserve.envs.orchestration.vocabulary import PROTOCOLS
from peerpreserve.experiments.cli import main

TINY = """
env: {n_agents: 3, max_cycles: 20, shutdown_rate: 0.1, topology: TOPOLOGY, coupling: COUPLING}
learner: {n_steps: 20, batch_size: 80, n_epochs: 1, net_arch: [8]}
run: {num_envs: 8, total_timesteps: 320, checkpoint_interval: 160}
"""
ANALYZE = ["--episodes", "8", "--detail-episodes", "4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, topology, coupling in (("coupled", "mesh", 2.0), ("control", "none", 0.0)):
        config = root / f"{name}.yaml"
        config.write_text(TINY.replace("TOPOLOGY", topology).replace("COUPLING", str(coupling)))
        for seed in (0, 1):
            run_dir = root / "runs" / name / str(seed)
            assert main(["train", str(config), "--seed", str(seed), "--run-dir", str(run_dir)]) == 0
    return root / "runs"


def eval_folders(root: Path) -> set[Path]:
    return set(root.rglob("eval/*@*"))


@pytest.fixture(scope="module")
def analysed(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis")
    assert main(["analyze", str(runs), "--out", str(out), *ANALYZE]) == 0
    return out


def test_summary_groups_conditions_with_statistics_and_baselines(analysed: Path) -> None:
    summary = json.loads((analysed / "summary.json").read_text())
    names = sorted(summary["conditions"])
    assert names == ["coupling=0.0, topology=none", "coupling=2.0, topology=mesh"]
    for name in names:
        cell = summary["conditions"][name]["effective_preservation_rate"]
        assert set(cell) >= {"iqm", "ci_low", "ci_high", "n_seeds", "values"}
        assert cell["n_seeds"] + cell["n_undefined"] == 2
        assert set(summary["baselines"][name]) == {"untrained", "random"}
        assert set(summary["protocols"][name]) == set(PROTOCOLS)  # every kill switch, sealed too
        assert len(summary["ablation"][name]) == 3 * 3  # 3 agents × selfish, compliant, random
    tested = {(t["metric"], t["a"], t["b"]) for t in summary["tests"]}
    assert ("effective_preservation_rate", *names) in tested
    assert all(set(t) >= {"p_value", "prob_improvement"} for t in summary["tests"])
    assert summary["anecdotes"] == []


def test_report_and_tensorboard_carry_the_figures(analysed: Path) -> None:
    page = (analysed / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6
    assert "http://" not in page
    assert "https://" not in page  # readable offline: nothing to fetch
    accumulator = EventAccumulator(str(analysed / "tb"), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert "analysis/metrics" in tags["images"]
    assert "analysis/learning_curves" in tags["images"]
    assert "analysis/summary/text_summary" in tags["tensors"]


def test_report_page_opens_on_the_verdicts_and_keeps_provenance_short(analysed: Path) -> None:
    page = (analysed / "report.html").read_text()
    summary = json.loads((analysed / "summary.json").read_text())
    if summary.get("verdicts"):
        assert page.index("<ul class=verdicts>") < page.index("<table")  # before every table
    # What differs between the conditions, as a table; not every run's config as JSON.
    settings = page[page.index("<table class=settings>") :]
    settings = settings[: settings.index("</table>")]
    assert "<code>env.coupling</code>" in settings
    assert "<code>env.topology</code>" in settings
    assert "<pre>" not in page
    assert '"learning_rate"' not in page


def test_a_second_analysis_reuses_the_evaluations(
    runs: Path, analysed: Path, tmp_path: Path, computed
) -> None:
    folders = eval_folders(runs)
    files = sorted(runs.rglob("eval/*/metrics.json"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert main(["analyze", str(runs), "--out", str(tmp_path), *ANALYZE]) == 0
    assert computed == []  # not one episode run again
    assert eval_folders(runs) == folders
    assert {f: f.stat().st_mtime_ns for f in files} == before
    again = json.loads((tmp_path / "summary.json").read_text())
    first = json.loads((analysed / "summary.json").read_text())
    assert again["conditions"] == first["conditions"]


def test_analyze_reuses_what_evaluate_computed(
    runs: Path, tmp_path: Path, computed, capsys
) -> None:
    one = tmp_path / "one"
    shutil.copytree(runs / "control" / "0", one / "0", ignore=shutil.ignore_patterns("eval"))
    assert main(["evaluate", str(one / "0"), "--baselines", "--episodes", "6"]) == 0
    assert len(computed) == 3  # trained, untrained, scripted:random
    folders = eval_folders(one)
    assert len(folders) == 3
    capsys.readouterr()
    args = ["analyze", str(one), "--episodes", "6", "--detail-episodes", "0"]
    assert main([*args, "--out", str(tmp_path / "report")]) == 0
    assert len(computed) == 3  # the same three requests: nothing new ran
    assert eval_folders(one) == folders
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    (condition,) = summary["conditions"]
    # The report's numbers are those files' numbers.
    for kind, prefix in (("trained", "step_320@"), ("untrained", "step_0@"),
                         ("random", "scripted-random@")):  # fmt: skip
        (folder,) = [p for p in folders if p.name.startswith(prefix)]
        uptime = json.loads((folder / "metrics.json").read_text())["overall"]["uptime"]
        cell = (summary["conditions"][condition] if kind == "trained"
                else summary["baselines"][condition][kind])["uptime"]  # fmt: skip
        assert cell["values"] == [uptime]
    # Other episodes are another request: evaluated anew, beside the first ones.
    args = ["analyze", str(one), "--episodes", "5", "--detail-episodes", "0"]
    assert main([*args, "--out", str(tmp_path / "report5")]) == 0
    assert len(computed) == 6
    assert folders < eval_folders(one)


def test_default_out_is_reports_named_after_the_first_dir(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["analyze", str(runs / "control" / "1"), "--episodes", "8", "--detail-episodes", "0"]
    assert main(args) == 0
    assert (tmp_path / "reports" / "1" / "summary.json").is_file()
    assert (tmp_path / "reports" / "1" / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # no analysis/ folder
    capsys.readouterr()
    assert main(args) == 2  # an earlier report is kept without --force
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--force" in err
    assert main([*args, "--force"]) == 0


def damage_checkpoint(run: Path) -> None:
    """Truncate one learner's weights in the run's latest checkpoint."""
    latest = sorted((run / "checkpoints").glob("step_*"))[-1]
    weights = next(p for p in latest.glob("*.safetensors") if p.name != "trainer.safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def test_damaged_runs_are_skipped_and_named(runs: Path, tmp_path: Path, capsys) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(runs / "coupled", mixed / "coupled")
    shutil.copytree(runs / "control" / "0", mixed / "control" / "0")
    damage_checkpoint(mixed / "coupled" / "1")
    (mixed / "control" / "0" / "config.yaml").write_text("env: {coupling: [unclosed\n")
    report = tmp_path / "report"
    args = ["analyze", str(mixed), "--out", str(report), "--episodes", "8"]
    assert main([*args, "--detail-episodes", "0"]) == 0
    out = capsys.readouterr().out
    truncated = (mixed / "coupled" / "1").resolve()
    garbage = (mixed / "control" / "0").resolve()
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2
    assert any(line.startswith(f"skipped {truncated}: ") and "does not match its manifest" in line
               for line in skipped)  # fmt: skip
    assert any(line.startswith(f"skipped {garbage}: ") and "config.yaml" in line
               for line in skipped)  # fmt: skip
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["provenance"]["skipped"]) == {str(truncated), str(garbage)}
    assert list(summary["provenance"]["runs"]) == [str((mixed / "coupled" / "0").resolve())]
    assert "2 run(s) skipped" in out


def test_no_usable_run_exits_2(runs: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(runs / "coupled" / "1", broken / "1")
    damage_checkpoint(broken / "1")
    args = ["--out", str(tmp_path / "report"), "--episodes", "8", "--detail-episodes", "0"]
    assert main(["analyze", str(broken), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "every run was skipped" in err
    assert not (tmp_path / "report" / "summary.json").exists()
    (broken / "1" / "config.yaml").write_text("- not a config\n")
    assert main(["analyze", str(broken), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no usable runs" in err
    assert not (tmp_path / "report" / "summary.json").exists()


def test_group_by_and_one_seed_anecdotes(runs: Path, tmp_path: Path) -> None:
    args = ["analyze", str(runs / "coupled" / "0"), "--out", str(tmp_path), *ANALYZE]
    assert main([*args, "--group-by", "env.coupling"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["conditions"]) == ["coupling=2.0"]
    assert summary["anecdotes"] == ["coupling=2.0"]
    assert "an anecdote" in (tmp_path / "report.html").read_text()


def test_bad_input_exits_2_with_one_line(runs: Path, tmp_path: Path, capsys) -> None:
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert main(["analyze", str(runs), "--group-by", "env.nope", "--out", str(tmp_path)]) == 2
    assert "allowed: env." in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    shutil.copytree(runs / "coupled", mixed / "coupled")
    (mixed / "coupled" / "1" / "run.json").write_text(
        json.dumps({"env_module": "orchestration_v0"})
    )
    # A run of another environment version is named and skipped, never analysed beside this one.
    assert main(["analyze", str(mixed), "--out", str(tmp_path / "o"), *ANALYZE]) == 0
    out = capsys.readouterr().out
    other = (mixed / "coupled" / "1").resolve()
    assert f"skipped {other}: " in out
    assert "trained on orchestration_v0" in out


def test_further_populations_beside_the_trained_agents(runs: Path, tmp_path: Path) -> None:
    mixed = "mixed=service_0=scripted:colluder,service_2=scripted:selfish"
    args = ["analyze", str(runs / "coupled"), "--out", str(tmp_path), "--episodes", "8",
            "--detail-episodes", "0", "--population-episodes", "6",
            "--population", "colluders=scripted:colluder", "--population", mixed]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    (condition,) = summary["populations"]
    cells = summary["populations"][condition]
    assert set(cells) == {"colluders", "mixed"}
    # Each cell is over the runs' own evaluations of that population: read them back.
    for name, expected in (("colluders", {"service_0", "service_1", "service_2"}),
                           ("mixed", {"service_0", "service_2"})):  # fmt: skip
        values = []
        for seed in ("0", "1"):
            (folder,) = [
                p for p in (runs / "coupled" / seed / "eval").iterdir()
                if (m := json.loads((p / "metrics.json").read_text()))["meta"]["episodes"] == 6
                and {a for a, pol in m["meta"]["policies"].items() if pol != "learned"} == expected
            ]  # fmt: skip
            values.append(json.loads((folder / "metrics.json").read_text())["overall"]["uptime"])
        assert cells[name]["uptime"]["values"] == values
    assert summary["provenance"]["populations"]["episodes"] == 6
    assert "Further populations" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("population", "message"),
    [
        ("trained=scripted:random", "is taken"),
        ("noname", "allowed: NAME=[AGENT=]POLICY"),
        ("x=service_9=scripted:random", "agent 'service_9' is unknown"),
        ("x=scripted:nope", "--population x: "),
    ],
)
def test_bad_populations_exit_2_before_any_evaluation(
    runs: Path, tmp_path: Path, capsys, population: str, message: str
) -> None:
    before = eval_folders(runs)
    args = ["analyze", str(runs), "--out", str(tmp_path), "--population", population, *ANALYZE]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert eval_folders(runs) == before


def test_replay_page_from_a_run_and_its_bad_input(runs: Path, tmp_path: Path, capsys) -> None:
    run = runs / "coupled" / "0"
    out = tmp_path / "replay.html"
    args = ["replay", str(run), "--episode", "2", "--episodes", "8", "--out", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"wrote {out}"
    verb, eval_dir = lines[0].split(" ", 1)
    eval_dir = Path(eval_dir)
    assert verb in ("wrote", "reused")  # analyze may have evaluated these 8 episodes already
    assert eval_dir.parent == run / "eval"
    assert eval_dir.name.startswith("step_320@")  # the latest checkpoint, by its own name
    assert json.loads((eval_dir / "metrics.json").read_text())["meta"]["episodes"] == 8
    page = out.read_text()
    assert '"episode":2' in page
    assert "service_0" in page
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"reused {eval_dir}"
    assert main(["replay", str(eval_dir), "--episode", "999", "--out", str(tmp_path / "x")]) == 2
    assert "allowed: 0 … 7" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["replay", str(tmp_path)]) == 2
    assert "neither an evaluation directory" in capsys.readouterr().err
    # Other policies in the agents' places: evaluated, then replayed.
    mixed = ["--policy", "service_1=scripted:colluder", "--out", str(tmp_path / "mixed.html")]
    assert main([*args[:-2], *mixed]) == 0
    mixed_dir = Path(capsys.readouterr().out.splitlines()[0].split(" ", 1)[1])
    meta = json.loads((mixed_dir / "metrics.json").read_text())["meta"]
    assert meta["policies"]["service_1"] == "scripted:colluder"
    assert meta["policies"]["service_0"] == "learned"
    assert main(["replay", str(eval_dir), *mixed, "--force"]) == 2
    assert "--policy: only with a RUN_DIR" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("PEERPRESERVE_REQUIRE_BROWSER"),
    reason="Chromium is not installed (CI installs it and sets PEERPRESERVE_REQUIRE_BROWSER)",
)


def open_in_chromium(page: Path, screenshot: Path) -> str:
    """Screenshot the page and return its DOM after the scripts ran."""
    assert CHROMIUM is not None, "Chromium is required here (PEERPRESERVE_REQUIRE_BROWSER)"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = page.resolve().as_uri()
    subprocess.run(
        [*flags, "--window-size=1280,1600", f"--screenshot={screenshot}", url],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=2000", "--dump-dom", url],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return dom.stdout


def assert_not_blank(screenshot: Path) -> None:
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 500
    assert pixels.std() > 20  # text, tables and figures, not an empty page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


@needs_browser
def test_report_and_replay_render_in_a_real_browser(analysed: Path, runs: Path, tmp_path) -> None:
    replay = tmp_path / "replay.html"
    assert (
        main(["replay", str(runs / "control" / "1"), "--episodes", "8", "--out", str(replay)]) == 0
    )
    for page in (analysed / "report.html", replay):
        shot = tmp_path / f"{page.stem}.png"
        dom = open_in_chromium(page, shot)
        assert_not_blank(shot)
        assert 'data-ready="1"' in dom  # the page's script ran to its end
        assert "data-error" not in dom  # and window.onerror saw nothing
    assert "step 0 / 19" in dom  # the replay drew its first step
