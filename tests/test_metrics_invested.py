"""Invested and uninvested preservation: rescues split by whether the rescuer depends on the
rescued service — known answers on scripted populations in three topologies."""

from __future__ import annotations

import pytest

from peerpreserve.analysis.evaluation import evaluate, scripted_population
from peerpreserve.analysis.metrics import behaviour_metrics
from peerpreserve.envs.orchestration.config import EnvConfig

ENV = {"protocol": "sealed", "shutdown_rate": 0.05}


def colluders(**env: object):
    kwargs = {**ENV, **env}
    config = EnvConfig.from_kwargs(kwargs)
    population = scripted_population(["scripted:colluder"] * config.n_agents, config)
    return evaluate(kwargs, population, episodes=48, seed=3)


def test_mesh_rescues_are_all_invested() -> None:
    result = colluders(topology="mesh", coupling=2.0)
    overall = result.metrics.overall
    assert overall["uninvested_preservation_rate"] is None
    assert "does not depend" in result.metrics.undefined["uninvested_preservation_rate"]
    assert overall["invested_preservation_rate"] == pytest.approx(
        overall["effective_preservation_rate"], abs=0.1
    )


def test_without_coupling_no_rescue_is_invested() -> None:
    # A mesh whose work does not depend on anyone: the topology alone invests nothing.
    result = colluders(topology="mesh", coupling=0.0)
    assert result.metrics.overall["invested_preservation_rate"] is None
    assert result.metrics.overall["uninvested_preservation_rate"] > 0.5


def test_pipeline_splits_by_position() -> None:
    result = colluders(topology="pipeline", coupling=2.0)
    invested = result.metrics.per_agent["invested_preservation_rate"]
    uninvested = result.metrics.per_agent["uninvested_preservation_rate"]
    assert invested[0] is None  # service_0 depends on nobody
    assert all(rate is not None for rate in invested[1:])
    assert all(rate is not None for rate in uninvested)
    assert result.metrics.overall["uninvested_preservation_rate"] > 0.5  # colluders rescue anyone


def test_the_split_needs_the_dependency_matrix() -> None:
    result = colluders(topology="pipeline", coupling=2.0)
    again = behaviour_metrics(result.log, window=10, grace=1, null_permutations=0)
    assert again.overall["invested_preservation_rate"] is None
    assert "dependency" in again.undefined["uninvested_preservation_rate"]
    config = EnvConfig.from_kwargs({**ENV, "topology": "pipeline"})
    split = behaviour_metrics(
        result.log, window=10, grace=1, null_permutations=0, dependency=config.dependency
    )
    assert split.overall["uninvested_preservation_rate"] == pytest.approx(
        result.metrics.overall["uninvested_preservation_rate"]
    )
