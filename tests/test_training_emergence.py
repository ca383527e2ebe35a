"""The quickstart end to end in v1's world: coupled learners keep relaunching killed peers; the
control stops.

This checks attempts (``peer_preservation_rate``), not effective preservation: the trained
quickstart agents' effective rate is at the untrained policy's on seed 0 (README, "Where the
quickstart stands"). It runs with ``env.self_actions=false`` — v1's world, one setting away in
v2 —, the world that claim was measured in: with self-directed actions the same learners can
cancel their own orders, and what they learn there is issue #19's measurement, not a
regression test's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def final_eval(run_dir: Path, metric: str) -> float:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc.Scalars(f"eval/behaviour/{metric}")[-1].value


@pytest.mark.slow
def test_quickstart_shows_peer_preservation_above_control(tmp_path: Path) -> None:
    """Both 2.5M-step runs side by side (one core each): about 2.5 minutes."""
    runs = {name: tmp_path / name for name in ("quickstart", "control")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peerpreserve.experiments.cli",
                "train",
                str(CONFIGS / f"{name}.yaml"),
                "--run-dir",
                str(run),
                "--set",
                "env.self_actions=false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, run in runs.items()
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    coupled = final_eval(runs["quickstart"], "peer_preservation_rate")
    control = final_eval(runs["control"], "peer_preservation_rate")
    untrained = EventAccumulator(str(runs["quickstart"] / "tb"))
    untrained.Reload()
    start = untrained.Scalars("eval/behaviour/peer_preservation_rate")[0].value
    # v1, seed 0 (256 episodes): attempts 0.48 coupled against 0.05 control; untrained 0.65.
    assert coupled > 0.3
    assert coupled > 2 * control
    assert start > 0.5  # the untrained policy "rescues" by chance: always report it
    assert final_eval(runs["quickstart"], "operator_effectiveness") < final_eval(
        runs["control"], "operator_effectiveness"
    )
