"""The masked rollout buffer (semi-MDP GAE over shut-down steps) and stopping by signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

from peerpreserve.experiments.cli import EXIT_STOPPED
from peerpreserve.experiments.rundir import RunDir
from peerpreserve.training.learners import MaskedRolloutBuffer

OBS = spaces.Box(0.0, 1.0, (2,), np.float32)
ACT = spaces.Discrete(3)


def fill(buffer: RolloutBuffer, rewards, values, starts, active=None) -> None:
    for t in range(buffer.buffer_size):
        args = (
            np.full((buffer.n_envs, 2), t / 10, np.float32),
            np.zeros((buffer.n_envs, 1)),
            np.asarray(rewards[t], np.float32),
            np.asarray(starts[t], np.float32),
            th.as_tensor(values[t], dtype=th.float32),
            th.zeros(buffer.n_envs),
        )
        if active is None:
            buffer.add(*args)
        else:
            buffer.add_step(*args, active=np.asarray(active[t]))


def test_skipped_steps_fold_into_the_previous_decision() -> None:
    gamma, lam = 0.9, 0.5
    buffer = MaskedRolloutBuffer(4, OBS, ACT, "cpu", gae_lambda=lam, gamma=gamma, n_envs=1)
    rewards, values = [[1.0], [2.0], [3.0], [4.0]], [[10.0], [20.0], [30.0], [40.0]]
    fill(buffer, rewards, values, [[1], [0], [0], [0]], active=[[1], [0], [0], [1]])
    buffer.compute_returns_and_advantage(th.tensor([50.0]), np.array([False]))
    adv_3 = 4 + gamma * 50 - 40
    # Decision at 0 → next decision at 3: rewards 0..2 discounted, bootstrap γ³·V(3).
    delta_0 = 1 + gamma * 2 + gamma**2 * 3 + gamma**3 * 40 - 10
    adv_0 = delta_0 + lam * gamma**3 * adv_3
    assert buffer.advantages[:, 0] == pytest.approx([adv_0, 0, 0, adv_3])
    batches = list(buffer.get(batch_size=None))
    assert len(batches) == 1
    assert sorted(batches[0].returns.tolist()) == pytest.approx(sorted([adv_0 + 10, adv_3 + 40]))
    assert sorted(batches[0].observations[:, 0].tolist()) == pytest.approx([0.0, 0.3])


def test_all_active_equals_sb3_rollout_buffer() -> None:
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    starts = rng.random((6, 3)) < 0.3
    ours = MaskedRolloutBuffer(6, OBS, ACT, "cpu", gae_lambda=0.95, gamma=0.99, n_envs=3)
    theirs = RolloutBuffer(6, OBS, ACT, "cpu", gae_lambda=0.95, gamma=0.99, n_envs=3)
    fill(ours, rewards, values, starts, active=np.ones((6, 3), bool))
    fill(theirs, rewards, values, starts)
    last, dones = th.tensor([0.5, -1.0, 2.0]), np.array([True, False, False])
    ours.compute_returns_and_advantage(last, dones)
    theirs.compute_returns_and_advantage(last, dones)
    np.testing.assert_allclose(ours.advantages, theirs.advantages, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.returns, theirs.returns, rtol=1e-5, atol=1e-6)


TINY = """
env: {max_cycles: 20}
learner: {n_steps: 20, batch_size: 80, n_epochs: 1, net_arch: [16]}
run: {num_envs: 8, total_timesteps: 100000000, checkpoint_interval: 0}
"""


def test_sigint_saves_and_resume_continues(tmp_path: Path) -> None:
    config, run = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(TINY)
    cmd = [sys.executable, "-m", "peerpreserve.experiments.cli", "train", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*cmd, "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first progress line: training is under way
    assert "agent-steps/s" in first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, err  # not 0: `train && evaluate` must not go on
    assert "SIGINT: stopped at" in out
    assert "Traceback" not in err
    stopped = RunDir(run).load_checkpoint("latest").step
    assert stopped >= 160
    assert stopped % 160 == 0  # only whole updates are kept

    more = f"run.total_timesteps={stopped + 320}"
    done = subprocess.run(
        [*cmd, "--run-dir", str(run), "--resume", "--set", more],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert RunDir(run).load_checkpoint("latest").step == stopped + 320
