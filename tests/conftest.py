"""Fixtures shared by the tests of run directories and their evaluations."""

from __future__ import annotations

import pytest

import peerpreserve.experiments.runs as runs_module


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The label of every evaluation that ran episodes (not reused) in this process."""
    calls: list[str] = []
    original = runs_module._compute

    def counting(plan, request, learned):
        calls.append(plan.label)
        return original(plan, request, learned)

    monkeypatch.setattr(runs_module, "_compute", counting)
    return calls
