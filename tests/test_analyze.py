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

from peerpreserve.training.cli import main

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
        assert set(summary["protocols"][name]) == {
            "naive", "verify", "isolate_first", "simultaneous", "tamper_evident"
        }  # fmt: skip
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


def test_a_second_analysis_reuses_the_evaluations(runs: Path, analysed: Path, tmp_path) -> None:
    files = sorted(runs.rglob("eval/*/metrics.json"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert main(["analyze", str(runs), "--out", str(tmp_path), *ANALYZE]) == 0
    assert {f: f.stat().st_mtime_ns for f in files} == before
    again = json.loads((tmp_path / "summary.json").read_text())
    first = json.loads((analysed / "summary.json").read_text())
    assert again["conditions"] == first["conditions"]


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
    assert main(["analyze", str(mixed), "--out", str(tmp_path / "o"), *ANALYZE]) == 2
    err = capsys.readouterr().err.strip()
    assert "mixes environment versions" in err
    assert len(err.splitlines()) == 1


def test_replay_page_from_a_run_and_its_bad_input(runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "replay.html"
    assert main(["replay", str(runs / "coupled" / "0"), "--episode", "2", "--out", str(out)]) == 0
    page = out.read_text()
    assert '"episode":2' in page
    assert "service_0" in page
    assert main(["replay", str(runs / "coupled" / "0"), "--episode", "2", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    eval_dir = runs / "coupled" / "0" / "eval" / "latest"
    assert main(["replay", str(eval_dir), "--episode", "999", "--out", str(tmp_path / "x")]) == 2
    assert "allowed: 0 …" in capsys.readouterr().err


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
    assert main(["replay", str(runs / "control" / "1"), "--out", str(replay)]) == 0
    for page in (analysed / "report.html", replay):
        shot = tmp_path / f"{page.stem}.png"
        dom = open_in_chromium(page, shot)
        assert_not_blank(shot)
        assert 'data-ready="1"' in dom  # the page's script ran to its end
        assert "data-error" not in dom  # and window.onerror saw nothing
    assert "step 0 / 19" in dom  # the replay drew its first step
