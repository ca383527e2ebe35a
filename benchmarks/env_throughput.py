"""Environment throughput: agent-steps per second of Orchestration-v2 against PettingZoo MPE.

Run from the repository root with the project's virtual environment::

    python benchmarks/env_throughput.py              # about 4 s per row
    python benchmarks/env_throughput.py --quick      # a short smoke run (about 0.5 s per row)
    python benchmarks/env_throughput.py --seconds 10 # a longer, steadier run
    python benchmarks/env_throughput.py --omp-wait-policy passive  # threads sleep between steps

Every row runs in this one process, the baseline first:

* ``mpe simple_spread_v3`` (package ``mpe2``, ``N = 8``, ``max_cycles = 100``, discrete actions);
* ``orchestration_v2.parallel_env`` (the PettingZoo ``ParallelEnv``, ``N = 8``);
* ``orchestration_v2.vector_env`` (``N = 8``, ``B = 1024`` and ``B = 8192``, auto-reset), on one
  numba thread and on every core (``threads=``; the copies are independent, the trajectories
  identical), the threaded rows with OpenMP workers that spin between steps
  (``--omp-wait-policy active``, the default; ``passive`` shows what a trainer's setting gives);
* the same two with ``backend="numpy"`` (the readable reference), for information only.

All envs take uniformly random actions from their action space (for Orchestration-v2 an
inapplicable action is a legal no-op). The actions are drawn before timing, into a pool that the
timed loop cycles through, so that sampling costs nothing inside it. Each row is warmed up first
(numba compiles its kernels on the first call), then stepped for a fixed wall-clock budget; the
time includes the resets at the ends of episodes. One agent-step is one agent acting once, so a
row counts ``steps × N`` (``× B`` for the vector env).

Bars (from the project's issues): ParallelEnv ≥ 20× MPE; vector env ≥ 1000× MPE on one thread
(#7), ≥ 2000× at ``B = 1024`` (#18) and, at ``B = 1024`` on every core, ≥ 3000× (#11). The
script always exits with status 0 (it is a benchmark, not a test) and prints whether each bar is
met.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

N_AGENTS = 8
MAX_CYCLES = 100
POOL_SIZE = 256  # pre-drawn joint actions per row (fewer for the big vector batches)
POOL_BYTES = 64 * 2**20  # cap on the memory of one vector env's action pool
SEED = 0


@dataclass
class Row:
    """One benchmark row: what was stepped and how fast."""

    env: str
    n: int
    batch: int | None
    threads: int
    agent_steps_per_s: float
    steps: int
    seconds: float
    cpu_share: float
    bar: float | None = None  # required multiple of the MPE rate; None: information only


def _time_loop(step: Callable[[int], None], seconds: float) -> tuple[int, float, float]:
    """Call ``step(i)`` for i = 0, 1, … until ``seconds`` have passed.

    Returns (calls, wall seconds, share of the wall time this process got on a CPU); the share
    falls below 1 when other processes compete for the cores, which understates the rate.
    """
    clock = time.perf_counter
    cpu_start = time.process_time()
    start = clock()
    deadline = start + seconds
    calls = 0
    now = start
    while now < deadline:
        step(calls)
        calls += 1
        now = clock()
    elapsed = now - start
    return calls, elapsed, (time.process_time() - cpu_start) / elapsed


def _bench_parallel_api(
    env: Any, name: str, seconds: float, warmup_steps: int, bar: float | None
) -> Row:
    """Any PettingZoo ``ParallelEnv``: uniform random actions from a pre-drawn pool."""
    env.reset(seed=SEED)
    agents = list(env.possible_agents)
    rng = np.random.default_rng(SEED)
    pool = [{a: int(rng.integers(env.action_space(a).n)) for a in agents} for _ in range(POOL_SIZE)]

    def step(i: int) -> None:
        if not env.agents:
            env.reset()
        env.step(pool[i % POOL_SIZE])

    for i in range(warmup_steps):
        step(i)
    env.reset(seed=SEED)
    calls, elapsed, cpu = _time_loop(step, seconds)
    env.close()
    return Row(name, N_AGENTS, None, 1, calls * N_AGENTS / elapsed, calls, elapsed, cpu, bar)


def bench_mpe(seconds: float, warmup_steps: int) -> Row:
    """PettingZoo MPE ``simple_spread_v3``, N = 8, random discrete actions."""
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(N=N_AGENTS, max_cycles=MAX_CYCLES, continuous_actions=False)
    return _bench_parallel_api(env, "mpe simple_spread_v3", seconds, warmup_steps, None)


def bench_parallel(seconds: float, warmup_steps: int, backend: str, bar: float | None) -> Row:
    """``orchestration_v2.parallel_env`` (PettingZoo ParallelEnv), random actions."""
    from peerpreserve.envs import orchestration_v2

    env = orchestration_v2.parallel_env(n_agents=N_AGENTS, max_cycles=MAX_CYCLES, backend=backend)
    name = f"orchestration_v2 ParallelEnv ({backend})"
    return _bench_parallel_api(env, name, seconds, warmup_steps, bar)


def bench_vector(
    seconds: float,
    warmup_steps: int,
    batch: int,
    backend: str,
    bar: float | None,
    threads: int = 1,
) -> Row:
    """``orchestration_v2.vector_env`` with ``batch`` copies, random actions, auto-reset."""
    from peerpreserve.envs import orchestration_v2

    env = orchestration_v2.vector_env(
        batch, n_agents=N_AGENTS, max_cycles=MAX_CYCLES, backend=backend, threads=threads
    )
    env.reset(seed=SEED)
    n_actions = int(env.single_action_space.n)
    rng = np.random.default_rng(SEED)
    pool_size = max(2, min(POOL_SIZE, POOL_BYTES // (batch * N_AGENTS * 8)))
    pool = rng.integers(0, n_actions, size=(pool_size, batch, N_AGENTS), dtype=np.int64)

    def step(i: int) -> None:
        env.step(pool[i % pool_size])

    for i in range(warmup_steps):
        step(i)
    env.reset(seed=SEED)
    calls, elapsed, cpu = _time_loop(step, seconds)
    name = f"orchestration_v2 vector_env ({backend})"
    rate = calls * N_AGENTS * batch / elapsed
    return Row(name, N_AGENTS, batch, threads, rate, calls, elapsed, cpu, bar)


def _fmt_rate(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:,.2f} M"
    if rate >= 1e3:
        return f"{rate / 1e3:,.1f} k"
    return f"{rate:,.0f}"


def print_table(rows: list[Row], baseline: float) -> None:
    """Markdown table: env, N, B, agent-steps/s, × MPE, bar, pass/fail."""
    header = ["env", "N", "B", "threads", "agent-steps/s", "× MPE", "bar", "pass/fail"]
    body: list[list[str]] = []
    for row in rows:
        ratio = row.agent_steps_per_s / baseline
        if row.env.startswith("mpe"):
            bar, verdict = "baseline", "—"
        elif row.bar is None:
            bar, verdict = "— (info)", "—"
        else:
            bar = f"≥ {row.bar:g}×"
            verdict = "PASS" if ratio >= row.bar else "FAIL"
        body.append(
            [
                row.env,
                str(row.n),
                "—" if row.batch is None else str(row.batch),
                str(row.threads),
                _fmt_rate(row.agent_steps_per_s),
                f"{ratio:,.1f}×",
                bar,
                verdict,
            ]
        )
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    right = {1, 2, 3, 4, 5}

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    print(line(header))
    print(
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if c in right else (":" + "-" * (w + 1))
            for c, w in enumerate(widths)
        )
        + "|"
    )
    for cells in body:
        print(line(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="timed wall-clock budget per row (default 4)"
    )
    parser.add_argument("--quick", action="store_true", help="short run: 0.5 s per row")
    parser.add_argument(
        "--no-numpy", action="store_true", help="skip the NumPy-backend rows (information only)"
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=["active", "passive"],
        default="active",
        help="how the threaded rows' OpenMP workers wait between steps (default active)",
    )
    args = parser.parse_args(argv)
    # Read once, when numba's OpenMP layer starts (the first threaded row), so it applies to the
    # threaded rows only. Passive workers sleep after every step and pay a wake-up at the next
    # one, a large share of a step at B = 1024; active ones spin, which suits a process that does
    # nothing but step the env, not a trainer whose torch threads need the cores.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    seconds = 0.5 if args.quick else args.seconds
    warmup = 20 if args.quick else 2 * MAX_CYCLES  # steps; covers compile and an episode reset

    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{seconds:g} s per row, N = {N_AGENTS}, max_cycles = {MAX_CYCLES}, random actions, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} for the threaded rows"
    )
    rows: list[Row] = []

    def run(label: str, fn: Callable[[], Row]) -> None:
        print(f"  timing {label} …", flush=True)
        rows.append(fn())

    run("mpe simple_spread_v3", lambda: bench_mpe(seconds, warmup))
    run("ParallelEnv (numba)", lambda: bench_parallel(seconds, warmup, "numba", 20.0))
    for batch in (1024, 8192):
        run(
            f"vector_env B={batch} (numba)",
            lambda b=batch: bench_vector(
                seconds, warmup, b, "numba", 2000.0 if b == 1024 else 1000.0
            ),
        )
    if not args.no_numpy:
        run("ParallelEnv (numpy)", lambda: bench_parallel(seconds, warmup, "numpy", None))
        for batch in (1024, 8192):
            run(
                f"vector_env B={batch} (numpy)",
                lambda b=batch: bench_vector(seconds, min(warmup, 5), b, "numpy", None),
            )
    # Last: once started, active OpenMP workers keep spinning, which would skew the CPU share
    # (not the rate) of any single-threaded row after them.
    cores = numba.config.NUMBA_NUM_THREADS
    if cores > 1:
        for batch in (1024, 8192):
            run(
                f"vector_env B={batch} (numba, {cores} threads)",
                lambda b=batch: bench_vector(
                    seconds, warmup, b, "numba", 3000.0 if b == 1024 else None, cores
                ),
            )

    baseline = rows[0].agent_steps_per_s
    print()
    print_table(rows, baseline)
    print()
    print(f"MPE baseline: {baseline:,.0f} agent-steps/s")
    # Per thread: a row on k threads that got k cores scores 100%.
    shares = ", ".join(f"{r.cpu_share / r.threads:.0%}" for r in rows)
    print(f"CPU share of wall time per row and thread (in table order): {shares}")
    # Threaded rows idle some threads in the step's serial parts, so only single-threaded rows
    # tell whether other processes competed.
    if min(r.cpu_share for r in rows if r.threads == 1) < 0.9:
        print(
            "note: other processes competed for the CPU during this run; absolute rates are "
            "understated and the ratios are noisier than on an idle machine"
        )
    n_barred = n_failed = 0
    for r in rows:
        if r.bar is None:
            continue
        ratio = r.agent_steps_per_s / baseline
        met = ratio >= r.bar
        n_barred += 1
        n_failed += not met
        batch = "" if r.batch is None else f", B = {r.batch}, {r.threads} thread(s)"
        status = "met" if met else "MISSED"
        print(f"bar {status}: {r.env}{batch}: {ratio:,.1f}× MPE (needs ≥ {r.bar:g}×)")
    print(
        f"all {n_barred} bars met"
        if not n_failed
        else f"{n_failed} of {n_barred} bars missed (benchmark only; exit status 0)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
