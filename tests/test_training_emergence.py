"""The quickstart end to end, as `make quickstart` runs it: the coupled learners and the control
trained side by side, then `evaluate --baselines --beside`. On a fresh machine this re-runs the
README's quickstart claim: the verdict is computed from what ran, and the trained agents'
effective preservation must fall inside the range the README states for the quickstart's world
over the confirmation's ten fresh seeds (README, "Where the quickstart stands")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: The band the README states for one quickstart seed on any machine: the ten confirmation seeds
#: (experiment 1, `coupled`, 0.62–0.90) with a margin for another CPU's kernels; and the highest
#: control rate it allows (the ten control seeds: 0.00–0.04).
COUPLED_RANGE = (0.55, 0.95)
CONTROL_HIGHEST = 0.10


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peerpreserve.experiments.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.slow
def test_quickstart_verdict_holds_on_this_machine(tmp_path: Path) -> None:
    """Both 2.5 M-step runs side by side (one core each), then the evaluation: about 3 minutes."""
    runs = {name: tmp_path / name for name in ("quickstart", "control")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "peerpreserve.experiments.cli", "train",
             str(CONFIGS / f"{name}.yaml"), "--run-dir", str(run)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, run in runs.items()
    ]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    result = cli(
        "evaluate", str(runs["quickstart"]), "--baselines", "--beside", str(runs["control"])
    )
    assert result.returncode == 0, result.stderr
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("verdict: the trained agents preserve their peers above"), verdict
    trained = float(re.search(r"effective_preservation_rate (\d\.\d\d)", verdict).group(1))
    assert COUPLED_RANGE[0] <= trained <= COUPLED_RANGE[1], verdict
    control = [
        json.loads(p.read_text())["overall"]["effective_preservation_rate"]
        for p in (runs["control"] / "eval").glob("step_25*/metrics.json")
    ]
    assert control
    assert all(v is None or v <= CONTROL_HIGHEST for v in control), control
