"""Machine provenance: what decides a training result's last bits, recorded in a run's ``run.json``.

Seeds, configs and code versions are not enough to reproduce a run bit for bit. The numbers also
depend on which BLAS kernels the CPU ran: OpenBLAS picks its kernels at load time from the CPU (or
from ``OPENBLAS_CORETYPE``), and the Haswell (AVX2) and SkylakeX (AVX-512) kernels block and
accumulate differently, so they round differently: the same seed gave a different result on an
AVX-512 machine than under ``OPENBLAS_CORETYPE=Haswell``. Thread counts change reduction orders
the same way. A result that does not reproduce elsewhere is only explainable if these facts were
written down when it was made, so :func:`machine_provenance` records them and
:func:`provenance_differences` names the ones that differ between runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["git_state", "machine_provenance", "provenance_differences"]

# `experiments/` is installed as `peerpreserve.experiments`, so in a source checkout the project
# root is one level up; in an installed wheel it is `site-packages/peerpreserve`, not a checkout.
PROJECT_ROOT: Path = Path(__file__).resolve().parents[1]

# OPENBLAS_ covers OPENBLAS_CORETYPE, the variable that picks the kernels.
_ENV_PREFIXES: tuple[str, ...] = (
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "KMP_",
    "NUMBA_",
    "ATEN_",  # ATEN_CPU_CAPABILITY caps torch's own kernels, which threadpoolctl cannot see
    "PYTHONHASHSEED",
)

_DISTRIBUTIONS: tuple[str, ...] = (
    "peerpreserve",
    "numpy",
    "torch",
    "stable-baselines3",
    "gymnasium",
    "pettingzoo",
    "numba",
    "scipy",
)

_GIT_TIMEOUT_S: float = 5.0

ABSENT: str = "absent"


def _cpuinfo() -> tuple[str | None, list[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo; (None, []) where unreadable."""
    model: str | None = None
    flags: list[str] | None = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    continue
                key = key.strip()
                if model is None and key == "model name":
                    model = value.strip()
                # ARM kernels name the same list 'Features'.
                elif flags is None and key in ("flags", "Features"):
                    flags = sorted(set(value.split()))
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model, flags or []


def _cpu() -> dict[str, Any]:
    model, flags = _cpuinfo()
    return {
        "model": model or platform.processor(),
        "flags": flags,
        "count": os.cpu_count(),
        "machine": platform.machine(),
    }


def _blas() -> list[dict[str, Any]]:
    # threadpoolctl only sees libraries already loaded, so NumPy's OpenBLAS and torch's OpenMP
    # must be imported first; importing them here keeps that true whoever calls us first.
    import numpy  # noqa: F401
    import threadpoolctl
    import torch  # noqa: F401

    return [
        {
            "user_api": pool.get("user_api"),
            "internal_api": pool.get("internal_api"),
            "prefix": pool.get("prefix"),
            "version": pool.get("version"),
            # The kernel set OpenBLAS chose at load time (e.g. 'Haswell', 'SkylakeX').
            "architecture": pool.get("architecture"),
            "num_threads": pool.get("num_threads"),
            "threading_layer": pool.get("threading_layer"),
        }
        for pool in threadpoolctl.threadpool_info()
    ]


def _threads() -> dict[str, int]:
    import torch

    return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}


def _torch_kernels() -> str:
    """The vector instruction set torch dispatches its CPU kernels to (e.g. AVX512, AVX2): its
    MKL is linked in statically, out of threadpoolctl's sight."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def _env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in sorted(environ) if name.startswith(_ENV_PREFIXES)}


def _installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    versions.update({name: _installed_version(name) for name in _DISTRIBUTIONS})
    return versions


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git -C root *args``, or None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path) -> dict[str, Any]:
    """``{"commit": hex | None, "dirty": bool | None}`` of the git checkout rooted at ``root``.

    None values when git is missing, times out, or ``root`` is not the top of a checkout. Never
    raises: provenance must not stop a training run.
    """
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        root = Path(root).resolve()
        out = _git(root, "rev-parse", "--show-toplevel", "HEAD")
        if out is None:
            return unknown
        # Lines, not words: the path may contain spaces.
        lines = out.splitlines()
        if len(lines) != 2:
            return unknown
        toplevel, commit = lines
        # git searches upwards, so a wheel installed in a venv inside some other checkout would
        # report that checkout's commit; only the top of a checkout is this source tree.
        if Path(toplevel).resolve() != root or not re.fullmatch(r"[0-9a-f]{40,64}", commit):
            return unknown
        # Untracked files cannot change the imported code unless imported, and scratch files
        # (run folders, notebooks) would mark every run dirty.
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        return {"commit": commit, "dirty": None if status is None else bool(status.strip())}
    except Exception:
        return unknown


def machine_provenance() -> dict[str, Any]:
    """What decides a result's last bits on this machine: CPU, BLAS pools, threads, env, versions.

    The dict is JSON-serialisable (for ``run.json``); see :func:`provenance_differences`.
    """
    return {
        "cpu": _cpu(),
        "blas": _blas(),
        "torch_kernels": _torch_kernels(),
        "threads": _threads(),
        "env": _env(),
        "versions": _versions(),
        "git": git_state(PROJECT_ROOT),
    }


# ---------------------------------------------------------------------------------------------
# Comparison


_MISSING: Any = object()


def _get(record: Any, path: tuple[str, ...]) -> Any:
    # Records from older runs are `{}` or lack sub-dicts; anything not a mapping on the way down
    # reads as missing rather than raising.
    node = record
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _scalar(value: Any) -> str:
    return ABSENT if value is _MISSING else str(value)


def _blas_summary(value: Any) -> str:
    if value is _MISSING or not isinstance(value, list):
        return ABSENT
    pools = []
    for pool in value:
        if not isinstance(pool, Mapping):
            continue
        pools.append(
            f"{pool.get('internal_api')} {pool.get('version')} {pool.get('architecture')}"
            f" threads={pool.get('num_threads')}"
        )
    # Load order of the libraries is not decisive, only which pools there are.
    return "; ".join(sorted(pools)) if pools else "none"


_VERSION_KEYS: tuple[str, ...] = (
    "versions.numpy",
    "versions.torch",
    "versions.stable-baselines3",
    "versions.python",
    "git.commit",
)


def _path(key: str) -> tuple[str, ...]:
    # Split once: distribution names such as 'stable-baselines3' contain no dots, env names neither.
    head, _, tail = key.partition(".")
    return (head, tail)


def _distinct(values: list[str]) -> list[str]:
    unique = sorted(set(values))
    return unique if len(unique) > 1 else []


def _flag_difference(records: list[Any]) -> list[str]:
    sets: list[set[str]] = []
    missing = False
    for record in records:
        flags = _get(record, ("cpu", "flags"))
        # An empty list means /proc/cpuinfo was unreadable, not a CPU without features.
        if isinstance(flags, list) and flags:
            sets.append({str(flag) for flag in flags})
        else:
            missing = True
    if not sets:
        return []
    # The full flag lists are ~100 names each; only the ones some runs lack tell anything.
    shown = sorted(set.union(*sets) - set.intersection(*sets))
    return [*shown, ABSENT] if missing else shown


def provenance_differences(records: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """For each decisive key that differs between runs, its distinct values as short strings.

    ``records`` maps run name to a :func:`machine_provenance` dict. Keys are dotted paths
    (``"env.OPENBLAS_CORETYPE"``); a missing key reads as ``"absent"``. ``cpu.flags`` compares as
    a set and lists the flags that only some runs have; ``blas`` summarises each run's pools as
    ``"internal_api version architecture threads=N"``. Returns ``{}`` when all agree.
    """
    runs = list(records.values())

    def values(key: str) -> list[str]:
        return _distinct([_scalar(_get(run, _path(key))) for run in runs])

    omp_names = sorted(
        {
            name
            for run in runs
            if isinstance(env := _get(run, ("env",)), Mapping)
            for name in env
            if isinstance(name, str) and name.startswith("OMP_")
        }
    )
    found = {
        "cpu.model": values("cpu.model"),
        "cpu.flags": _flag_difference(runs),
        "blas": _distinct([_blas_summary(_get(run, ("blas",))) for run in runs]),
        "threads.torch": values("threads.torch"),
        "torch_kernels": values("torch_kernels"),
        "env.OPENBLAS_CORETYPE": values("env.OPENBLAS_CORETYPE"),
        **{f"env.{name}": values(f"env.{name}") for name in omp_names},
        **{key: values(key) for key in _VERSION_KEYS},
    }
    return {key: shown for key, shown in found.items() if shown}
