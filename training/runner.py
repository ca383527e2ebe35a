"""The lock-step training loop: rollouts, updates, checkpoints, resume, signals.

Where a run's files go is not the trainer's business: it is handed a :class:`RunStore` (the run
directory of ``peerpreserve.experiments.rundir``) and saves through it — one checkpoint per save,
holding every learner's weights-only state and the trainer's own (step counters, RNG states and
the env's snapshot at that rollout boundary), so any kept checkpoint can be resumed from.

Checkpoints are taken only at rollout boundaries, where each model's state is its whole state (the
rollout buffer is empty). On SIGINT/SIGTERM the current env step finishes, the partial rollout is
dropped (the models have not changed since the last update) and the models are saved at the last
completed step, so TensorBoard steps continue on resume with neither gap nor duplicate. The
env continues from its snapshot at that boundary (clusters, episode clock and RNG), so the resumed
run sees the very episodes an uninterrupted run would have.
"""

from __future__ import annotations

import ctypes
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch as th
from stable_baselines3.common.utils import set_random_seed
from threadpoolctl import threadpool_limits

from peerpreserve.analysis.evaluation import Evaluation, evaluate, evaluation_seed, invested
from peerpreserve.analysis.metrics import Metrics, behaviour_metrics
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.training.callbacks import Callback, RolloutEnd, TrainResult, default_callbacks
from peerpreserve.training.config import TrainConfig
from peerpreserve.training.learners import Learners, LearnerState
from peerpreserve.training.policies import (
    CheckpointLoader,
    FixedAgents,
    LearnedPolicy,
    build_population,
    run_policies,
)


class SavedCheckpoint(Protocol):
    """A checkpoint as a :class:`RunStore` loads it."""

    name: str
    step: int
    learners: dict[str, LearnerState]
    trainer: dict[str, Any]


class RunStore(Protocol):
    """Where a training run's checkpoints and TensorBoard logs go (a run directory)."""

    path: Path

    @property
    def tb_dir(self) -> Path: ...

    def save_checkpoint(
        self, step: int, learners: Mapping[str, LearnerState], trainer: Mapping[str, Any]
    ) -> str: ...


#: ``evaluator(step, policy)``: fresh episodes of the learners' current policy at ``step``.
Evaluator = Callable[[int, LearnedPolicy], Evaluation]


def keep_freed_memory() -> None:
    """Have glibc's allocator keep freed memory for reuse rather than return it to the system.

    Each PPO minibatch allocates and frees tensors of a few MB; by default glibc maps them
    fresh (or trims the heap) each time, and pays first-touch page faults again; the thresholds
    below keep such blocks in the heap. The memory held stays bounded by the process's own peak.
    Without glibc (other platforms), this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
    libc.mallopt(m_trim_threshold, 512 << 20)


def limit_threads(count: int) -> None:
    """Hold torch and the BLAS that NumPy uses (OpenBLAS, or MKL) to ``count`` threads each, for
    the rest of the process.

    NumPy's BLAS otherwise starts a thread per core, and the fused update and rollout inference
    run through it: a learner process set to one thread would use every core (and a sweep's
    parallel trials would oversubscribe them). Its results also differ in the last bits between
    thread counts, so a fixed count keeps runs reproducible on machines with more cores."""
    th.set_num_threads(count)
    threadpool_limits(count, user_api="blas")


class EpisodeTracker:
    """The episode batches the recording env finished since the last :meth:`pop`."""

    def __init__(self) -> None:
        self.logs: list[EpisodeLog] = []

    def add(self, env: Any, done: bool) -> None:
        if done and env.last_episode is not None:
            self.logs.append(env.last_episode)

    def pop(self) -> EpisodeLog | None:
        logs, self.logs = self.logs, []
        return EpisodeLog.concatenate(logs) if logs else None


def make_env(config: TrainConfig, num_envs: int, record: bool = False) -> Any:
    from peerpreserve.envs import orchestration_v2

    return orchestration_v2.vector_env(num_envs, record=record, **config.env)


class Trainer:
    """Trains one config into one :class:`RunStore`; :meth:`run` returns a :class:`TrainResult`.

    ``start`` is the checkpoint to continue from (``None``: fresh learners). The loop collects
    rollouts and updates the learners; everything else — TensorBoard, periodic checkpoints and
    evaluations, progress — is a :class:`Callback` (``training.callbacks``;
    ``default_callbacks()`` unless ``callbacks`` is given). While running, callbacks can use
    ``env``, ``learners``, :meth:`save` and :meth:`evaluate`. ``evaluator`` runs the periodic
    evaluations (default: :func:`default_evaluator`, the rule every evaluation of a run follows).
    """

    def __init__(
        self,
        config: TrainConfig,
        store: RunStore,
        start: SavedCheckpoint | None = None,
        callbacks: list[Callback] | None = None,
        evaluator: Evaluator | None = None,
        load_checkpoint: CheckpointLoader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        #: Reads another run's checkpoint for a ``checkpoint:`` agent of ``learner.fixed``.
        self.load_checkpoint = load_checkpoint
        self.run_dir = Path(store.path)
        self.start = start
        self.resume = start is not None
        self.callbacks = default_callbacks() if callbacks is None else list(callbacks)
        self.evaluator = evaluator or default_evaluator(config, load_checkpoint)
        self._stop_signal: int | None = None
        # The env at the last rollout boundary, which is where a checkpoint's models stand.
        self._env_snapshot: dict[str, Any] | None = None
        # Overall metrics of each evaluation this process ran, by step.
        self._evaluations: dict[int, dict[str, Any]] = {}
        self._iterations = 0
        #: The agents that play a fixed policy (``learner.fixed``), once :meth:`run` starts.
        self.fixed: FixedAgents | None = None

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, run = self.config, self.config.run
        limit_threads(run.torch_threads)
        keep_freed_memory()
        self.env = env = make_env(cfg, run.num_envs, record=True)
        self.learners, step, self._iterations, env_seed = self._start(env)
        learners = self.learners
        self.fixed = (
            FixedAgents(cfg, env.num_envs, self.load_checkpoint) if cfg.learner.fixed else None
        )
        if self._env_snapshot is not None:
            obs, infos = env.set_state(self._env_snapshot["env"])
            self._episode_starts = self._env_snapshot["episode_starts"].copy()
            learners.previous = self._env_snapshot["previous_actions"].copy()
            if self.fixed is not None:
                self.fixed.set_state(self._env_snapshot["fixed_agents"])
        else:
            obs, infos = env.reset(seed=env_seed)
            self._episode_starts = np.ones((env.num_envs, env.n_agents), bool)
        self._obs, self._active = obs.copy(), infos["active"].copy()
        self._masks = infos["action_mask"].copy()
        self._mark_boundary(env)
        for callback in self.callbacks:
            callback.on_start(self, step, fresh=not self.resume)
        tracker = EpisodeTracker()
        per_iteration = cfg.learner.n_steps * env.num_envs
        segment_start, segment_step = time.perf_counter(), step
        previous = self._install_signal_handlers()
        result = TrainResult(self.run_dir, step, "")
        try:
            while step < run.total_timesteps and self._stop_signal is None:
                started = time.perf_counter()
                if not self._collect(env, learners, tracker):
                    break  # stopped mid-rollout: drop it, the models are as of the last update
                self._mark_boundary(env)
                learners.finish_rollout(self._obs, self._episode_starts)
                previous_step, step = step, step + per_iteration
                self._iterations += 1
                losses = learners.train(step, run.total_timesteps)
                episodes = tracker.pop()
                elapsed = time.perf_counter() - segment_start
                rollout = RolloutEnd(
                    step=step,
                    previous_step=previous_step,
                    losses=losses,
                    agent_steps_per_second=per_iteration
                    * env.n_agents
                    / (time.perf_counter() - started),
                    segment_speed=(step - segment_step) * env.n_agents / elapsed,
                    metrics=None if episodes is None else self._metrics(episodes),
                )
                for callback in self.callbacks:
                    callback.on_rollout_end(self, rollout)
        except BaseException:
            for callback in self.callbacks:  # release files and the terminal, save nothing
                callback.on_end(self, result)
            raise
        finally:
            signal_handlers_restore(previous)
        if self._stop_signal is None and run.eval_interval and step not in self._evaluations:
            # The final checkpoint always has its evaluation, whatever the interval: the number
            # the run ends with is the one `evaluate --checkpoint latest` finds.
            self.evaluate(step)
        result.checkpoint = self.save(step)
        result.steps = step
        result.evaluations = dict(self._evaluations)
        result.eval_episodes = run.eval_episodes
        if self._stop_signal is not None:
            result.stopped_by = signal.Signals(self._stop_signal).name
        for callback in self.callbacks:
            callback.on_end(self, result)
        return result

    def _start(self, env: Any) -> tuple[Learners, int, int, int]:
        """Fresh learners, or the saved ones; returns ``(learners, step, iterations, env seed)``."""
        cfg, run = self.config, self.config.run
        spaces = (env.single_observation_space, env.single_action_space)
        agent_ids = list(env.possible_agents)
        if self.start is not None:
            state = self.start.trainer
            learners = Learners.from_states(
                cfg.learner, agent_ids, *spaces, env.num_envs, self.start.learners
            )
            _set_rng_state(state["rng"])
            self._env_snapshot = state["env_snapshot"]
            step = int(state["agent_steps"])
            env_seed = int(np.random.SeedSequence([run.seed, step]).generate_state(1)[0])
            return learners, step, int(state["iterations"]), env_seed
        learners = Learners.create(cfg.learner, agent_ids, *spaces, env.num_envs, run.seed)
        set_random_seed(run.seed)  # model construction re-seeded per model; sample from here
        return learners, 0, 0, run.seed

    def _mark_boundary(self, env: Any) -> None:
        self._env_snapshot = {
            "env": env.get_state(),
            "episode_starts": self._episode_starts.copy(),
            "previous_actions": self.learners.previous.copy(),
        }
        if self.fixed is not None:
            # Their sampling and memory belong to the boundary, as the env's state does: a run
            # stopped mid-rollout resumes from here.
            self._env_snapshot["fixed_agents"] = self.fixed.state()

    def _collect(self, env: Any, learners: Learners, tracker: EpisodeTracker) -> bool:
        """Fill every learner's buffer with ``n_steps`` lock-step env steps; False if stopped."""
        gamma, horizon = self.config.learner.gamma, env.config.max_cycles
        for model in learners.models:
            model.rollout_buffer.reset()
        for _ in range(self.config.learner.n_steps):
            learners.forget_previous(self._episode_starts)
            actions = learners.act(self._obs)
            if self.fixed is not None:
                self.fixed.act(self._obs, self._masks, actions)
                if self.config.learner.previous_action:
                    # What the agent actually did: the fixed policy's action, not its model's.
                    learners.previous[:, self.fixed.columns] = actions[:, self.fixed.columns]
            # The episode's length once this step is taken; read before the step, which resets
            # the clock when it ends the episode.
            steps = env.core.t + 1
            obs, rewards, terms, truncs, infos = env.step(actions)
            dones = terms | truncs
            stored = rewards.copy()
            if truncs.any():
                # max_cycles is a real horizon (the observation carries the time left): only an
                # episode cut before it has a future to bootstrap.
                cut = cut_before_horizon(truncs, terms, infos["final_active"], steps, horizon)
                if cut.any():
                    stored += gamma * learners.values(infos["final_observation"]) * cut
            learners.store(stored, self._episode_starts, self._active)
            tracker.add(env, done=bool(truncs.all()))
            # The env hands out views of buffers it reuses: keep copies.
            self._obs, self._active = obs.copy(), infos["active"].copy()
            self._masks = infos["action_mask"].copy()
            self._episode_starts = dones
            if self._stop_signal is not None:
                return False
        return True

    def _metrics(self, episodes: EpisodeLog) -> Metrics:
        grace = self.config.env.get("rekill_grace", 1)
        # The collusion nulls cost 5–10% of training's wall time and training logs none of them.
        return behaviour_metrics(
            episodes,
            self.config.run.behaviour_window,
            grace,
            null_permutations=0,
            dependency=invested(self.config.env_config()),
        )

    def evaluate(self, step: int) -> Evaluation:
        """Fresh episodes of the current policies (:attr:`evaluator`); every callback's
        :meth:`Callback.on_evaluation` gets the result."""
        # The learners' memory of their previous actions belongs to the training rollout.
        previous = self.learners.previous.copy()
        policy = LearnedPolicy(self.learners, self.config.run.eval_deterministic)
        result = self.evaluator(step, policy)
        self.learners.previous = previous
        self._evaluations[step] = dict(result.metrics.overall)
        for callback in self.callbacks:
            callback.on_evaluation(self, step, result)
        return result

    def save(self, step: int) -> str:
        """Checkpoint every learner and the trainer's state at ``step``; returns its name."""
        learners = self.learners
        for model in learners.models:
            model.num_timesteps = step * (len(learners.agent_ids) if learners.shared else 1)
        assert self._env_snapshot is not None, "saved before the first rollout boundary"
        state = {
            "agent_steps": step,
            "iterations": self._iterations,
            "rng": _get_rng_state(),
            "env_snapshot": self._env_snapshot,
        }
        return self.store.save_checkpoint(step, learners.states(), state)

    def _install_signal_handlers(self) -> dict[int, Any]:
        def stop(signum: int, _frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt  # a second signal: stop now, without saving
            self._stop_signal = signum

        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, stop)
            except ValueError:  # not the main thread: leave signals to the caller
                break
        return previous


def signal_handlers_restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def cut_before_horizon(
    truncations: np.ndarray,
    terminations: np.ndarray,
    final_active: np.ndarray,
    steps: int | np.ndarray,
    max_cycles: int,
) -> np.ndarray:
    """Where the value target bootstraps ``γ·V(final observation)``: ``(B, N)`` bool.

    The observation carries the time left, so ``max_cycles`` is a real horizon, not a time-limit
    cut: an episode that reaches it is over and nothing lies beyond it to value (bootstrapping
    there would credit phantom value to long-term payoffs). Only a truncation *before* the
    horizon (``steps``, the episode's length per copy or for all, ``< max_cycles``) cut an episode
    that would have gone on, and is bootstrapped as SB3 does for time limits. A service that is
    down at the cut has no decision left to value.
    """
    early = np.reshape(np.asarray(steps) < max_cycles, (-1, 1))
    return truncations & ~terminations & final_active & early


def project_version() -> str:
    """The installed peerpreserve version, recorded with runs and reports."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peerpreserve")
    except PackageNotFoundError:
        return "unknown"


def default_evaluator(
    config: TrainConfig, load_checkpoint: CheckpointLoader | None = None
) -> Evaluator:
    """The periodic evaluation of a run: ``run.eval_episodes`` episodes on the run's evaluation
    seed (:func:`~peerpreserve.analysis.evaluation.evaluation_seed`), as every evaluation of the
    run's checkpoints draws them, the fixed agents (``learner.fixed``) playing their policy."""
    run = config.run
    policies = run_policies(config)

    def evaluator(step: int, policy: LearnedPolicy) -> Evaluation:
        seed = evaluation_seed(run.seed)
        population = build_population(config.env_config(), policies, policy, load_checkpoint)
        return evaluate(config.env, population, run.eval_episodes, seed, run.behaviour_window)

    return evaluator


def _get_rng_state() -> dict[str, Any]:
    """The global RNGs (SB3 samples minibatches from NumPy's, rollout actions from torch's) as
    JSON values and arrays: nothing that needs unpickling."""
    version, internal, gauss = random.getstate()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": np.random.get_state(legacy=False),  # noqa: NPY002
        "torch": th.get_rng_state().numpy().copy(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    np.random.set_state(state["numpy"])  # noqa: NPY002
    th.set_rng_state(th.from_numpy(np.array(state["torch"], dtype=np.uint8)))
