"""Across-seeds statistics: known answers, rliable's definitions, determinism, plain JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import scipy.stats

from peerpreserve.analysis.statistics import (
    RANK_TEST,
    compare,
    compare_conditions,
    iqm,
    summarise,
    summarise_conditions,
)

SEPARATED_A = [6.0, 7.0, 8.0, 9.0, 10.0]
SEPARATED_B = [1.0, 2.0, 3.0, 4.0, 5.0]


def normal_quantiles(n: int) -> list[float]:
    """n evenly spread standard-normal scores: the same shape at every size, no randomness."""
    return scipy.stats.norm.ppf((np.arange(n) + 0.5) / n).tolist()


def plain(value: Any) -> None:
    """Only JSON's own Python types, no numpy scalars, no NaN or infinity."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            plain(item)
    elif isinstance(value, list):
        for item in value:
            plain(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)
        if type(value) is float:
            assert math.isfinite(value)


# ---- IQM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 8, 12, 20])
def test_iqm_is_the_25_percent_trimmed_mean(n: int) -> None:
    x = np.random.default_rng(n).normal(size=n).tolist()
    expected = scipy.stats.trim_mean(x, 0.25)
    assert iqm(x) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert summarise(x, reps=200)["iqm"] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_iqm_known_value_drops_the_outer_quartiles() -> None:
    # 1..8: drop 1, 2 and 7, 8; mean of 3, 4, 5, 6. An outlier in the top quarter changes nothing.
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5
    assert iqm([1, 2, 3, 4, 5, 6, 7, 1e9]) == 4.5
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # order does not matter
    assert iqm([]) is None
    assert iqm([None, float("nan")]) is None


# ---- confidence intervals ------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 8, 16])
def test_interval_contains_the_iqm_and_lies_within_the_data(n: int) -> None:
    x = normal_quantiles(n)
    s = summarise(x, reps=1000)
    assert min(x) <= s["ci_low"] <= s["iqm"] <= s["ci_high"] <= max(x)
    assert s["ci_low"] < s["ci_high"]
    assert s["reason"] is None


def test_interval_shrinks_as_seeds_grow() -> None:
    widths = []
    for n in (8, 32, 128):
        s = summarise(normal_quantiles(n), reps=1000)
        widths.append(s["ci_high"] - s["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    # Roughly 1/sqrt(n): four times the seeds, about half the width.
    assert widths[2] < 0.75 * widths[1] < 0.75**2 * widths[0]


def test_interval_is_a_95_percent_percentile_bootstrap_of_the_iqm() -> None:
    """Cross-check against scipy's own percentile bootstrap of the trimmed mean."""
    x = np.asarray(normal_quantiles(16))
    s = summarise(x.tolist(), reps=4000)
    reference = scipy.stats.bootstrap(
        (x,),
        lambda sample, axis: scipy.stats.trim_mean(sample, 0.25, axis=axis),
        method="percentile",
        confidence_level=0.95,
        n_resamples=4000,
        rng=np.random.default_rng(1),
    ).confidence_interval
    width = reference.high - reference.low
    assert s["ci_low"] == pytest.approx(reference.low, abs=0.1 * width)
    assert s["ci_high"] == pytest.approx(reference.high, abs=0.1 * width)


def test_identical_scores_give_a_zero_width_interval() -> None:
    s = summarise([0.3, 0.3, 0.3, 0.3], reps=200)
    assert s["iqm"] == s["ci_low"] == s["ci_high"] == pytest.approx(0.3)


# ---- determinism -----------------------------------------------------------------------------


# rliable draws from NumPy's legacy global generator, so these tests stir it on purpose (NPY002);
# the fixture puts its state back for the tests that follow.


@pytest.fixture
def global_rng() -> Iterator[None]:
    saved = np.random.get_state()  # noqa: NPY002
    yield
    np.random.set_state(saved)  # noqa: NPY002


@pytest.mark.usefixtures("global_rng")
def test_same_input_same_output_byte_for_byte() -> None:
    x = np.random.default_rng(0).normal(size=10).tolist()
    first = json.dumps(summarise(x, reps=500, seed=7))
    np.random.seed(999)  # noqa: NPY002  (what the global generator did before does not matter)
    np.random.random(17)  # noqa: NPY002
    assert json.dumps(summarise(x, reps=500, seed=7)) == first
    other = summarise(x, reps=500, seed=8)
    assert (other["ci_low"], other["ci_high"]) != (
        json.loads(first)["ci_low"],
        json.loads(first)["ci_high"],
    )


@pytest.mark.usefixtures("global_rng")
def test_global_random_stream_is_left_untouched() -> None:
    np.random.seed(123)  # noqa: NPY002
    untouched = np.random.random(5)  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    summarise([1.0, 2.0, 3.0, 5.0], reps=100, seed=4)
    assert np.array_equal(np.random.random(5), untouched)  # noqa: NPY002


# ---- undefined scores ------------------------------------------------------------------------


def test_undefined_seeds_are_dropped_and_counted() -> None:
    s = summarise([1.0, None, 2.0, float("nan"), 3.0, 4.0], reps=200)
    assert s["n_seeds"] == 4
    assert s["n_undefined"] == 2
    assert s["values"] == [1.0, None, 2.0, None, 3.0, 4.0]
    assert s["iqm"] == pytest.approx(scipy.stats.trim_mean([1, 2, 3, 4], 0.25))
    assert s["ci_low"] is not None
    assert s["ci_high"] is not None


@pytest.mark.parametrize(("values", "undefined"), [([], 0), ([None, None, float("nan")], 3)])
def test_no_defined_seed_leaves_every_statistic_none(values: list, undefined: int) -> None:
    s = summarise(values)
    assert s["iqm"] is None
    assert s["ci_low"] is None
    assert s["ci_high"] is None
    assert s["n_seeds"] == 0
    assert s["n_undefined"] == undefined
    assert isinstance(s["reason"], str)
    assert s["reason"]


def test_one_seed_is_an_anecdote() -> None:
    s = summarise([None, 0.7])
    assert s["iqm"] == 0.7
    assert s["ci_low"] is None
    assert s["ci_high"] is None
    assert s["n_seeds"] == 1
    assert s["n_undefined"] == 1
    assert s["reason"] == "one seed: an anecdote"


def test_infinite_score_is_an_error() -> None:
    with pytest.raises(ValueError, match="infinite"):
        summarise([1.0, math.inf])


# ---- comparisons -----------------------------------------------------------------------------


def test_probability_of_improvement_known_values() -> None:
    def p(a: list[float], b: list[float]) -> float:
        return compare(a, b, metric="m", name_a="a", name_b="b")["prob_improvement"]

    assert p(SEPARATED_A, SEPARATED_B) == 1.0
    assert p(SEPARATED_B, SEPARATED_A) == 0.0
    assert p(SEPARATED_A, SEPARATED_A) == 0.5
    assert p([3.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == 0.5  # same scores, other order
    # Pairs (a_i, b_j): only 3 > 2 wins, 1 of 4; with ties counted half: 1 vs [1, 0] → 0.75.
    assert p([1.0, 3.0], [2.0, 4.0]) == 0.25
    assert p([1.0, 1.0], [1.0, 0.0]) == 0.75


def test_rank_test_separates_and_does_not_separate() -> None:
    separated = compare(SEPARATED_A, SEPARATED_B, metric="m", name_a="a", name_b="b")
    # Exact two-sided p for 5 vs 5 fully separated: 2 / C(10, 5) = 2 / 252.
    assert separated["p_value"] == pytest.approx(2 / 252)
    assert separated["p_value"] < 0.05
    assert separated["u_statistic"] == 25.0  # every one of the 5 × 5 pairs won by a
    interleaved = compare([1, 3, 5, 7, 9], [2, 4, 6, 8, 10], metric="m", name_a="a", name_b="b")
    assert interleaved["p_value"] > 0.05
    assert interleaved["u_statistic"] == 10.0
    assert interleaved["prob_improvement"] == pytest.approx(10 / 25)
    tied = compare([1.0, 1.0, 1.0], [1.0, 1.0], metric="m", name_a="a", name_b="b")
    assert tied["p_value"] == 1.0
    assert tied["prob_improvement"] == 0.5


def test_compare_names_everything_and_the_seed_counts() -> None:
    c = compare(
        [*SEPARATED_A, None], SEPARATED_B, metric="effective_rate", name_a="x", name_b="control"
    )
    assert c["metric"] == "effective_rate"
    assert (c["a"], c["b"]) == ("x", "control")
    assert (c["n_a"], c["n_b"]) == (5, 5)
    assert (c["n_undefined_a"], c["n_undefined_b"]) == (1, 0)
    assert c["iqm_a"] == pytest.approx(scipy.stats.trim_mean(SEPARATED_A, 0.25))
    assert c["iqm_b"] == pytest.approx(scipy.stats.trim_mean(SEPARATED_B, 0.25))
    assert c["test"] == RANK_TEST
    assert c["reason"] is None


@pytest.mark.parametrize(
    ("a", "b", "iqm_a", "iqm_b"),
    [
        ([0.5], [0.1, 0.2, 0.3], 0.5, 0.2),
        ([0.5, 0.6], [None, 0.1], 0.55, 0.1),
        ([], [None], None, None),
    ],
)
def test_too_few_seeds_gives_none_with_a_reason(
    a: list, b: list, iqm_a: float | None, iqm_b: float | None
) -> None:
    c = compare(a, b, metric="m", name_a="a", name_b="b")
    assert c["p_value"] is None
    assert c["u_statistic"] is None
    assert c["prob_improvement"] is None
    assert isinstance(c["reason"], str)
    assert "at least 2" in c["reason"]
    assert c["iqm_a"] == pytest.approx(iqm_a)
    assert c["iqm_b"] == pytest.approx(iqm_b)


# ---- tables ----------------------------------------------------------------------------------

TABLE: dict[str, dict[str, list[float | None]]] = {
    "learned": {"rate": [0.8, 0.9, 0.7, 0.85, 0.95], "uptime": [10, 12, 11, 13, 14]},
    "random": {"rate": [0.2, 0.3, 0.25, None, 0.1], "uptime": [8, 7, 9, 8, 7]},
    "control": {"rate": [None, None, None, None, None], "uptime": [5, 6, 5, 6, 5]},
}


def test_summarise_conditions_covers_every_cell_in_order() -> None:
    summary = summarise_conditions(TABLE, reps=200)
    assert list(summary) == list(TABLE)
    for condition, metrics in TABLE.items():
        assert list(summary[condition]) == list(metrics)
        for metric, values in metrics.items():
            assert summary[condition][metric] == summarise(values, reps=200)
    assert summary["random"]["rate"]["n_seeds"] == 4
    assert summary["control"]["rate"]["iqm"] is None


def test_compare_conditions_every_unordered_pair_once_in_a_stable_order() -> None:
    results = compare_conditions(TABLE, ["rate", "uptime"])
    assert [(r["a"], r["b"], r["metric"]) for r in results] == [
        ("learned", "random", "rate"),
        ("learned", "random", "uptime"),
        ("learned", "control", "rate"),
        ("learned", "control", "uptime"),
        ("random", "control", "rate"),
        ("random", "control", "uptime"),
    ]
    assert results == compare_conditions(TABLE, ["rate", "uptime"])
    by_key = {(r["a"], r["b"], r["metric"]): r for r in results}
    assert by_key["learned", "random", "uptime"]["prob_improvement"] == 1.0
    assert by_key["learned", "control", "rate"]["p_value"] is None  # control never defined it


def test_compare_conditions_with_given_pairs_and_bad_names() -> None:
    results = compare_conditions(TABLE, ["uptime"], pairs=[("control", "learned")])
    assert len(results) == 1
    assert (results[0]["a"], results[0]["b"]) == ("control", "learned")
    assert results[0]["prob_improvement"] == 0.0
    missing = compare_conditions(TABLE, ["no_such_metric"], pairs=[("learned", "random")])
    assert missing[0]["n_a"] == 0
    assert missing[0]["reason"]
    with pytest.raises(KeyError, match="nobody"):
        compare_conditions(TABLE, ["rate"], pairs=[("learned", "nobody")])
    with pytest.raises(ValueError, match="itself"):
        compare_conditions(TABLE, ["rate"], pairs=[("learned", "learned")])


# ---- JSON ------------------------------------------------------------------------------------


def test_everything_is_plain_json_without_nan() -> None:
    report = {
        "summary": summarise_conditions(TABLE, reps=200),
        "edge": [
            summarise([]),
            summarise([None]),
            summarise([np.float32(0.5)]),
            summarise(np.array([1.0, np.nan, 2.0, 3.0]), reps=100),
        ],
        "comparisons": compare_conditions(TABLE, ["rate", "uptime", "absent"]),
        "numpy_input": compare(
            np.arange(5.0), np.arange(5.0) + 0.5, metric="m", name_a="a", name_b="b"
        ),
    }
    plain(report)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
