"""Machine provenance: the record is complete, JSON-safe and true; differences name what matters."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from peerpreserve.experiments import provenance
from peerpreserve.experiments.provenance import (
    git_state,
    machine_provenance,
    provenance_differences,
)

ROOT = Path(provenance.__file__).resolve().parents[1]
HEX40 = re.compile(r"[0-9a-f]{40}")


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    return machine_provenance()


def openblas_pools(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [pool for pool in record["blas"] if pool["internal_api"] == "openblas"]


def numpy_uses_openblas() -> bool:
    config = getattr(np, "__config__", None)
    try:
        name = config.CONFIG["Build Dependencies"]["blas"]["name"]  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError):
        return False
    return "openblas" in str(name).lower()


# ---------------------------------------------------------------------------------------------
# machine_provenance


def test_record_is_json_serialisable_and_survives_a_round_trip(record: dict[str, Any]) -> None:
    text = json.dumps(record, allow_nan=False)
    assert json.loads(text) == record


def test_record_has_every_section(record: dict[str, Any]) -> None:
    assert set(record) == {"cpu", "blas", "torch_kernels", "threads", "env", "versions", "git"}
    assert record["torch_kernels"] in {"DEFAULT", "NO AVX", "AVX2", "AVX512", "ZVECTOR", "VSX",
                                       "SVE256", "SVE"}  # fmt: skip
    assert set(record["cpu"]) == {"model", "flags", "count", "machine"}
    assert set(record["threads"]) == {"torch", "torch_interop"}
    assert set(record["git"]) == {"commit", "dirty"}


def test_cpu_matches_this_machine(record: dict[str, Any]) -> None:
    cpu = record["cpu"]
    assert cpu["count"] == os.cpu_count()
    assert cpu["machine"] == platform.machine()
    assert isinstance(cpu["model"], str)
    assert isinstance(cpu["flags"], list)
    assert cpu["flags"] == sorted(set(cpu["flags"]))


@pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or platform.machine().lower() not in {"x86_64", "amd64", "i686", "i386"},
    reason="/proc/cpuinfo 'flags' is read on Linux x86 only",
)
def test_cpu_flags_and_model_are_read_on_linux_x86(record: dict[str, Any]) -> None:
    flags = record["cpu"]["flags"]
    assert flags
    assert all(isinstance(flag, str) and " " not in flag for flag in flags)
    # Every x86-64 CPU has SSE2; a misparsed line would not contain it as a whole word.
    if platform.machine().lower() in {"x86_64", "amd64"}:
        assert "sse2" in flags
    assert record["cpu"]["model"].strip()


def test_blas_lists_numpys_openblas(record: dict[str, Any]) -> None:
    if not numpy_uses_openblas():
        pytest.skip("this NumPy is not built against OpenBLAS")
    pools = openblas_pools(record)
    assert pools, record["blas"]
    for pool in pools:
        assert set(pool) == {
            "user_api",
            "internal_api",
            "prefix",
            "version",
            "architecture",
            "num_threads",
            "threading_layer",
        }
        assert pool["user_api"] == "blas"
        assert isinstance(pool["num_threads"], int)
        assert pool["num_threads"] >= 1
        assert isinstance(pool["version"], str)
        assert pool["version"]


def test_openblas_kernel_is_the_one_the_machine_forces() -> None:
    # Only read: OPENBLAS_CORETYPE is set by the machine, and OpenBLAS reads it once at load.
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if not coretype:
        pytest.skip("OPENBLAS_CORETYPE is not set on this machine")
    record = machine_provenance()
    assert record["env"]["OPENBLAS_CORETYPE"] == coretype
    pools = openblas_pools(record)
    if not pools:
        pytest.skip("no OpenBLAS loaded")
    assert {str(pool["architecture"]).lower() for pool in pools} == {coretype.lower()}


def test_threads_are_torchs(record: dict[str, Any]) -> None:
    assert record["threads"] == {
        "torch": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
    }


def test_env_records_thread_and_kernel_variables_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("NUMBA_OPT", "2")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.setenv("XOMP_NOT_A_PREFIX", "1")
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))
    env = machine_provenance()["env"]
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["NUMBA_OPT"] == "2"
    assert env["PYTHONHASHSEED"] == "0"
    assert "HOME" not in env
    assert "XOMP_NOT_A_PREFIX" not in env
    assert list(env) == sorted(env)
    assert all(os.environ[name] == value for name, value in env.items())


def test_env_leaves_out_unset_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "OMP_WAIT_POLICY" not in machine_provenance()["env"]


def test_versions_are_the_imported_ones(record: dict[str, Any]) -> None:
    versions = record["versions"]
    assert versions["python"] == platform.python_version()
    assert versions["platform"] == platform.platform()
    assert versions["numpy"] == np.__version__
    assert versions["torch"] == torch.__version__
    for name in ("peerpreserve", "stable-baselines3", "gymnasium", "pettingzoo", "numba", "scipy"):
        assert isinstance(versions[name], str)
        assert versions[name]
    assert versions["peerpreserve"] != "unknown"


def test_a_missing_distribution_is_unknown() -> None:
    assert provenance._installed_version("no-such-distribution-peerpreserve-xyz") == "unknown"


# ---------------------------------------------------------------------------------------------
# git_state


needs_checkout = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="needs git and a git checkout of the project",
)


@needs_checkout
def test_git_commit_is_the_checkouts_head(record: dict[str, Any]) -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    state = git_state(ROOT)
    assert HEX40.fullmatch(state["commit"])
    assert state["commit"] == head
    assert isinstance(state["dirty"], bool)
    assert record["git"]["commit"] == head


def test_git_state_is_none_outside_a_checkout(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


@needs_checkout
def test_git_state_is_none_for_a_folder_inside_another_checkout() -> None:
    # An installed wheel inside a venv inside some checkout must not report that checkout.
    assert git_state(ROOT / "tests") == {"commit": None, "dirty": None}


def test_git_state_is_none_without_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert git_state(ROOT) == {"commit": None, "dirty": None}


def test_git_state_is_none_when_git_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd="git", timeout=kwargs.get("timeout", 5))

    monkeypatch.setattr(provenance.subprocess, "run", hang)
    assert git_state(ROOT) == {"commit": None, "dirty": None}


# ---------------------------------------------------------------------------------------------
# provenance_differences


def sample(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cpu": {"model": "AMD EPYC", "flags": ["avx2", "fma", "sse2"], "count": 8, "machine": "x"},
        "blas": [
            {
                "user_api": "blas",
                "internal_api": "openblas",
                "prefix": "libscipy_openblas",
                "version": "0.3.31",
                "architecture": "Haswell",
                "num_threads": 1,
                "threading_layer": "pthreads",
            }
        ],
        "threads": {"torch": 1, "torch_interop": 1},
        "env": {"OMP_NUM_THREADS": "1"},
        "versions": {
            "python": "3.11.7",
            "platform": "Linux",
            "numpy": "2.4.6",
            "torch": "2.13.0",
            "stable-baselines3": "2.9.2",
        },
        "git": {"commit": "a" * 40, "dirty": False},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        base[section] = {**base[section], key: value}
    return base


def test_equal_records_have_no_differences() -> None:
    assert provenance_differences({"a": sample(), "b": sample(), "c": sample()}) == {}


def test_this_machines_record_agrees_with_its_json_round_trip(record: dict[str, Any]) -> None:
    copy = json.loads(json.dumps(record))
    assert provenance_differences({"a": record, "b": copy}) == {}


def test_one_record_or_none_has_no_differences() -> None:
    assert provenance_differences({}) == {}
    assert provenance_differences({"a": sample()}) == {}


def test_coretype_set_in_one_run_only_is_named() -> None:
    haswell = sample(env__OPENBLAS_CORETYPE="Haswell")
    assert provenance_differences({"pinned": haswell, "native": sample()}) == {
        "env.OPENBLAS_CORETYPE": ["Haswell", "absent"]
    }


def test_cpu_flags_show_the_symmetric_difference() -> None:
    avx512 = sample(cpu__flags=["avx2", "avx512f", "fma", "sse2"])
    older = sample(cpu__flags=["avx2", "sse2", "sse4a"])
    assert provenance_differences({"a": avx512, "b": sample()}) == {"cpu.flags": ["avx512f"]}
    assert provenance_differences({"a": avx512, "b": older}) == {
        "cpu.flags": ["avx512f", "fma", "sse4a"]
    }


def test_cpu_flags_order_does_not_matter() -> None:
    shuffled = sample(cpu__flags=["sse2", "fma", "avx2"])
    assert provenance_differences({"a": shuffled, "b": sample()}) == {}


def test_blas_kernel_and_threads_are_summarised() -> None:
    skylake = sample()
    skylake["blas"] = [{**skylake["blas"][0], "architecture": "SkylakeX", "num_threads": 4}]
    assert provenance_differences({"a": sample(), "b": skylake}) == {
        "blas": ["openblas 0.3.31 Haswell threads=1", "openblas 0.3.31 SkylakeX threads=4"]
    }


def test_blas_load_order_does_not_matter() -> None:
    openmp = {"user_api": "openmp", "internal_api": "openmp", "version": None, "num_threads": 1}
    first, second = sample(), sample()
    first["blas"] = [openmp, *first["blas"]]
    second["blas"] = [*second["blas"], openmp]
    assert provenance_differences({"a": first, "b": second}) == {}


def test_omp_variables_of_any_record_are_compared() -> None:
    waiting = sample(env__OMP_WAIT_POLICY="PASSIVE")
    assert provenance_differences({"a": waiting, "b": sample()}) == {
        "env.OMP_WAIT_POLICY": ["PASSIVE", "absent"]
    }


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("cpu__model", "Intel Xeon", "cpu.model"),
        ("threads__torch", 4, "threads.torch"),
        ("versions__numpy", "1.26.4", "versions.numpy"),
        ("versions__torch", "2.3.0", "versions.torch"),
        ("versions__stable-baselines3", "2.4.0", "versions.stable-baselines3"),
        ("versions__python", "3.10.14", "versions.python"),
        ("git__commit", "b" * 40, "git.commit"),
    ],
)
def test_each_decisive_key_is_named(path: str, value: Any, key: str) -> None:
    differences = provenance_differences({"a": sample(), "b": sample(**{path: value})})
    assert list(differences) == [key]
    assert str(value) in differences[key]
    assert len(differences[key]) == 2


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("cpu__count", 64),
        ("threads__torch_interop", 4),
        ("env__KMP_AFFINITY", "compact"),
        ("versions__platform", "Darwin"),
        ("git__dirty", True),
    ],
)
def test_other_keys_are_not_decisive(path: str, value: Any) -> None:
    assert provenance_differences({"a": sample(), "b": sample(**{path: value})}) == {}


def test_empty_and_partial_records_are_tolerated() -> None:
    assert provenance_differences({"old": {}, "older": {}}) == {}
    broken: dict[str, Any] = {"cpu": None, "env": "not a dict", "blas": None, "git": {}}
    assert provenance_differences({"old": {}, "broken": broken}) == {}
    differences = provenance_differences({"old": {}, "new": sample()})
    assert set(differences) == {
        "cpu.model",
        "cpu.flags",
        "blas",
        "threads.torch",
        "env.OMP_NUM_THREADS",
        "versions.numpy",
        "versions.torch",
        "versions.stable-baselines3",
        "versions.python",
        "git.commit",
    }
    assert all("absent" in values for values in differences.values())
    assert differences["env.OMP_NUM_THREADS"] == ["1", "absent"]
