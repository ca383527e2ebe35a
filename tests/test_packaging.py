"""The install layout: every subpackage folder is mapped under the `peerpreserve.` namespace."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = {"envs": "peerpreserve.envs", "training": "peerpreserve.training",
             "analysis": "peerpreserve.analysis",
             "experiments": "peerpreserve.experiments"}  # fmt: skip
#: Dependencies point one way: envs ← analysis ← training ← experiments.
LAYERS = ["envs", "analysis", "training", "experiments"]


def setuptools_section() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["tool"]["setuptools"]


def test_top_level_folders_map_to_the_namespace() -> None:
    package_dir = setuptools_section()["package-dir"]
    assert {package_dir[name]: name for name in package_dir} == TOP_LEVEL
    assert "" not in package_dir
    assert "envs" not in package_dir


def test_every_subpackage_folder_is_listed() -> None:
    """An unlisted folder would silently go missing from the wheel."""
    listed = set(setuptools_section()["packages"])
    on_disk = set()
    for folder, package in TOP_LEVEL.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *relative)))
    assert on_disk == listed


@pytest.mark.parametrize("package", sorted(set(TOP_LEVEL.values())))
def test_subpackages_import_from_the_install(package: str) -> None:
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent.parent == ROOT


@pytest.mark.parametrize("folder", LAYERS)
def test_dependencies_point_one_way(folder: str) -> None:
    import ast

    above = {f"peerpreserve.{name}" for name in LAYERS[LAYERS.index(folder) + 1 :]}
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not any(name == a or name.startswith(a + ".") for a in above), (
                    f"{path.relative_to(ROOT)} imports {name}"
                )
