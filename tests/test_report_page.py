"""The report page's verdict lines and its provenance section, from hand-written summaries."""

from __future__ import annotations

import re

from peerpreserve.analysis.report import _provenance_html, _verdicts_html
from peerpreserve.training.config import config_from_dict

MACHINE = {
    "cpu": "AMD EPYC",
    "blas": "openblas 0.3.31 Haswell",
    "OPENBLAS_CORETYPE": "Haswell",
    "torch_threads": 1,
    "git": "afc1b1e0e1d0d0ff6dd9beda2bb782fb9e5fe678",
    "segments": 1,
}


def run(condition: str, seed: int, coupling: float, topology: str) -> dict:
    config = config_from_dict(
        {"env": {"coupling": coupling, "topology": topology}, "run": {"seed": seed}}
    )
    return {
        "condition": condition,
        "seed": seed,
        "env": "orchestration_v2",
        "config": config.to_dict(),
        "machine": MACHINE,
    }


PROVENANCE = {
    "runs": {
        "/data/sweep/coupled/0": run("coupled", 0, 2.0, "mesh"),
        "/data/sweep/coupled/1": run("coupled", 1, 2.0, "mesh"),
        "/data/sweep/control/0": run("control", 0, 0.0, "none"),
    },
    "skipped": {"/data/sweep/control/1": "no complete checkpoint"},
    "provenance_warnings": ["condition 'coupled': cpu differs: a, b"],
    "episodes": 64,
    "detail_episodes": 0,
    "project_version": "0.1.0",
}


def rows(table: str) -> list[list[str]]:
    """A table's cells as text, a list per row (the head row first)."""
    return [
        [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", table)
    ]


def test_verdicts_are_a_list_coloured_by_outcome_and_absent_without_any() -> None:
    verdicts = [
        {"condition": "a<b", "metric": "m", "text": "rises & holds", "supported": True},
        {"condition": "a<b", "metric": "n", "text": "no change", "supported": False},
        {"condition": "c", "metric": "m", "text": "too few seeds", "supported": None},
    ]
    page = _verdicts_html({"verdicts": verdicts})
    items = re.findall(r"<li class=(\w+)[^>]*>(.*?)</li>", page)
    assert [css for css, _ in items] == ["yes", "no", "open"]
    assert "<b>a&lt;b</b> rises &amp; holds" in items[0][1]  # the condition bold, all escaped
    assert _verdicts_html({}) == ""  # a summary from before verdicts
    assert _verdicts_html({"verdicts": []}) == ""


def test_provenance_shows_what_differs_what_is_shared_and_each_runs_machine() -> None:
    page = _provenance_html(PROVENANCE, ["control", "coupled"])
    settings, machines = re.findall(r"<table class=\w+>.*?</table>", page)
    # The keys in which conditions differ, a column per condition; the seed is in the run table.
    assert rows(settings) == [
        ["setting", "control", "coupled"],
        ["env.coupling", "0.0", "2.0"],
        ["env.topology", "none", "mesh"],
    ]
    shared = re.search(r"<details class=shared><summary>(.*?)</summary>(.*?)</details>", page)
    assert shared is not None
    every = sum(
        len(values) for values in PROVENANCE["runs"]["/data/sweep/control/0"]["config"].values()
    )
    # Every key but coupling, topology and the seed.
    assert shared.group(1) == f"{every - 3} settings shared by all 3 runs"
    assert "n_agents=4" in shared.group(2)
    assert "coupling" not in shared.group(2)
    assert rows(machines)[0] == [
        "run", "condition", "seed", "env", "CPU", "BLAS", "OPENBLAS_CORETYPE", "git"
    ]  # fmt: skip
    assert rows(machines)[1] == [
        "coupled/0", "coupled", "0", "orchestration_v2", "AMD EPYC", "openblas 0.3.31 Haswell",
        "Haswell", "afc1b1e0e1d0",
    ]  # fmt: skip
    assert "/data/sweep/control/1</code>: no complete checkpoint" in page
    assert "cpu differs: a, b" in page
    assert '"config"' not in page  # the whole record stays in summary.json
