"""Integration tests against other MARL libraries; they run in their own virtual environments.

``.ci/integration.sh`` builds those environments and runs ``pytest -m integration
tests/integration`` in each. Here:

* In an environment with none of the libraries (the main ``.venv``) the whole folder is left out
  of collection, so the default test run is unaffected even if it does not exclude the folder.
* Each test module ``importorskip``s its own library, so one venv runs the modules it can.
* ``PEERPRESERVE_INTEGRATION_REQUIRE=ray,torchrl,…`` (set by ``.ci/integration.sh``) turns a
  missing library into an error instead of a silent skip: a broken install must not look green.
* Every test here is marked ``integration``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIBRARIES = ("ray", "torchrl", "supersuit", "tianshou", "benchmarl")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# Without any of the libraries there is nothing to integrate with: collect nothing here.
collect_ignore_glob = [] if any(_has(m) for m in LIBRARIES) else ["*.py"]


def pytest_configure(config: pytest.Config) -> None:
    required = [m for m in os.environ.get("PEERPRESERVE_INTEGRATION_REQUIRE", "").split(",") if m]
    broken = []
    for module in required:
        try:
            importlib.import_module(module)
        except Exception as error:  # any import failure is a broken install
            broken.append(f"{module} ({type(error).__name__}: {error})")
    if broken:
        raise pytest.UsageError("integration libraries do not import: " + "; ".join(broken))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples folder is not a package)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"peerpreserve_example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    # Loaded under a made-up name, the module cannot be imported by Ray's worker processes: ship
    # its functions (e.g. RLlib's env creator) by value, as for a script run as __main__.
    for pickler in ("cloudpickle", "ray.cloudpickle"):
        if importlib.util.find_spec(pickler.split(".")[0]) is not None:
            importlib.import_module(pickler).register_pickle_by_value(module)
    return module


@pytest.fixture
def example() -> Callable[[str], ModuleType]:
    return load_example


def _finite_per_agent(values: dict[str, Any], agents: list[str]) -> bool:
    """One finite number per agent, nothing else."""
    return sorted(values) == sorted(agents) and all(
        math.isfinite(float(v)) for v in values.values()
    )


@pytest.fixture
def finite_per_agent() -> Callable[[dict[str, Any], list[str]], bool]:
    return _finite_per_agent
