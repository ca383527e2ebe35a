"""Every example answers ``--help`` in a fresh interpreter (where its library is installed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NEEDS = {
    "supersuit_sb3_ppo": ("supersuit", "stable_baselines3"),
    # Ray itself is a core dependency (sweeps); RLlib needs its extra, which brings dm-tree.
    "rllib_independent_ppo": ("ray", "tree"),
    "torchrl_ippo": ("torchrl",),
    "tianshou_aec_dqn": ("tianshou",),
    "single_agent_sb3": ("stable_baselines3",),
    "benchmarl_ippo": ("benchmarl",),
}


def test_every_example_is_listed_here() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_help(name: str) -> None:
    missing = [m for m in NEEDS[name] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--seed" in done.stdout
