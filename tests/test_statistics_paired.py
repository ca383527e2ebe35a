"""Paired tests, Holm's correction and the report's verdicts: known answers and the rules for
undefined values."""

from __future__ import annotations

import math

import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from peerpreserve.analysis import report
from peerpreserve.analysis.statistics import (
    PAIRED_TEST,
    RANK_TEST,
    compare,
    compare_conditions,
    holm,
    paired_test,
)

ABOVE = [0.9, 0.8, 0.85, 0.7, 0.95, 0.9, 0.75, 0.8, 0.88, 0.92]
BELOW = [0.1, 0.2, 0.15, 0.3, 0.05, 0.1, 0.25, 0.2, 0.12, 0.08]


def test_paired_test_is_scipys_signed_rank_on_the_differences() -> None:
    a = [0.5, 0.61, 0.4, 0.9, 0.33, 0.72]
    b = [0.41, 0.7, 0.2, 0.5, 0.3, 0.71]
    result = paired_test(a, b)
    expected = scipy.stats.wilcoxon(
        [x - y for x, y in zip(a, b, strict=True)], zero_method="wilcox"
    )
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert (result["n_pairs"], result["n_above"], result["n_below"]) == (6, 5, 1)
    assert result["test"] == PAIRED_TEST


def test_complete_separation_reaches_the_exact_floor() -> None:
    one_sided = paired_test(ABOVE, BELOW, alternative="greater")
    assert one_sided["p_value"] == pytest.approx(2.0**-10)
    assert paired_test(ABOVE, BELOW)["p_value"] == pytest.approx(2.0**-9)
    # The other direction finds nothing.
    assert paired_test(ABOVE, BELOW, alternative="less")["p_value"] == pytest.approx(1.0)
    # Five seeds can never pass 0.05 two-sided: the floor is 2^-4.
    assert paired_test(ABOVE[:5], BELOW[:5])["p_value"] == pytest.approx(0.0625)


def test_undefined_seeds_leave_the_test_and_are_counted() -> None:
    a = [None, 0.9, float("nan"), 0.8, 0.7, 0.6]
    b = [0.1, None, 0.2, 0.1, 0.2, 0.3]
    result = paired_test(a, b, alternative="greater")
    assert (result["n_pairs"], result["n_undefined"]) == (3, 3)
    assert result["p_value"] == pytest.approx(1 / 8)


def test_no_pair_and_all_ties_are_said_not_hidden() -> None:
    empty = paired_test([None, None], [0.1, 0.2])
    assert empty["p_value"] is None
    assert empty["reason"]
    assert empty["n_undefined"] == 2
    ties = paired_test([0.3, 0.3, 0.3], [0.3, 0.3, 0.3], alternative="greater")
    assert ties["p_value"] == 1.0
    assert "zero" in ties["reason"]


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="length"):
        paired_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="alternative"):
        paired_test([1.0], [1.0], alternative="bigger")


def test_holm_is_statsmodels_and_counts_missing_tests_as_one() -> None:
    raw = [0.01, 0.04, 0.03, 0.2]
    assert holm(raw) == pytest.approx(list(multipletests(raw, method="holm")[1]))
    with_missing = holm([0.01, None])
    assert with_missing == pytest.approx([0.02, 1.0])
    assert holm([]) == []


def test_compare_pairs_only_when_asked() -> None:
    unpaired = compare(ABOVE, BELOW, metric="m", name_a="a", name_b="b")
    assert unpaired["test"] == RANK_TEST
    assert unpaired["u_statistic"] is not None
    paired = compare(ABOVE, BELOW, metric="m", name_a="a", name_b="b", paired=True)
    assert paired["test"] == PAIRED_TEST
    assert paired["n_pairs"] == 10
    assert paired["p_value"] == pytest.approx(2.0**-9)
    assert paired["u_statistic"] is None


def test_compare_conditions_pairs_conditions_that_share_seeds() -> None:
    table = {"a": {"m": ABOVE[:6]}, "b": {"m": BELOW[:6]}, "c": {"m": BELOW[:6]}}
    seeds = {"a": [1, 2, 3, 4, 5, 6], "b": [1, 2, 3, 4, 5, 6], "c": [7, 8, 9, 10, 11, 12]}
    tests = {(t["a"], t["b"]): t for t in compare_conditions(table, ["m"], seeds=seeds)}
    assert tests["a", "b"]["test"] == PAIRED_TEST
    assert tests["a", "c"]["test"] == RANK_TEST


def test_grid_pairs_are_neighbouring_cells() -> None:
    names = [f"env.coupling={c},env.audit_rate={a}" for c in (0.0, 1.0, 2.0) for a in (0.01, 0.1)]
    pairs = report._condition_pairs(names, None)
    assert len(pairs) == 7  # 2 rows × 2 steps along coupling + 3 columns × 1 step along audit
    assert (
        "env.coupling=0.0,env.audit_rate=0.01",
        "env.coupling=2.0,env.audit_rate=0.01",
    ) not in pairs
    assert report._condition_pairs(["x", "y", "z"], "y") == [("y", "x"), ("y", "z")]
    assert len(report._condition_pairs(["x", "y", "z"], None)) == 3


def _result(condition: str, seed: int, trained: float | None, untrained: float) -> report.RunResult:
    def metrics(value: float | None) -> dict:
        overall = {m: value for m in report.SUMMARY_METRICS}
        overall["effective_preservation_rate"] = value
        return {"overall": overall, "per_agent": {}, "who_rescued_whom": {"counts": [[0]]}}

    return report.RunResult(
        run_dir=f"/runs/{condition}/{seed}",
        condition=condition,
        seed=seed,
        agent_ids=("service_0",),
        trained=metrics(trained),
        untrained=metrics(untrained),
        random=metrics(untrained + 0.01),
    )


def test_verdicts_count_undefined_seeds_as_not_above_and_use_the_corrected_p() -> None:
    results = [_result("strong", s, 0.9, 0.1) for s in range(10)]
    results += [_result("gappy", s, None if s < 3 else 0.9, 0.1) for s in range(10)]
    results += [_result("weak", s, 0.05, 0.1) for s in range(10)]
    summary = report.summarise(results, {}, reference="strong")
    verdicts = {
        v["condition"]: v
        for v in summary["verdicts"]
        if v["metric"] == "effective_preservation_rate"
    }
    assert verdicts["strong"]["supported"] is True
    assert "on 10 of 10 seeds" in verdicts["strong"]["text"]
    assert "above both" in verdicts["strong"]["text"]
    assert verdicts["gappy"]["supported"] is False  # 7 pairs cannot survive the correction
    assert "on 7 of 10 seeds (3 undefined, counted as not above)" in verdicts["gappy"]["text"]
    assert verdicts["weak"]["supported"] is False
    assert "not shown" in verdicts["weak"]["text"]
    # One family: every test with a p-value is corrected together, Holm's way.
    family = [t for tests in summary["baseline_tests"].values() for t in tests] + summary["tests"]
    tested = [t for t in family if t["p_value"] is not None]
    assert summary["family"]["tests"] == len(tested)
    expected = multipletests([t["p_value"] for t in tested], method="holm")[1]
    assert [t["p_holm"] for t in tested] == pytest.approx(list(expected))
    # Conditions sharing seeds are compared paired, against the reference only.
    assert {(t["a"], t["b"]) for t in summary["tests"]} == {("strong", "gappy"), ("strong", "weak")}
    assert all(t["test"] == PAIRED_TEST for t in summary["tests"])
    assert all(math.isfinite(t["p_holm"]) for t in tested)
