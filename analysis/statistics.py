"""Across-seeds statistics: interquartile mean, bootstrap confidence intervals, rank tests.

Every behaviour metric is first reduced to one score per training seed (one run = one sample);
this module aggregates those per-seed scores for a condition and compares conditions, following
Agarwal et al. (2021), "Deep Reinforcement Learning at the Edge of the Statistical Precipice":

* **IQM** — the interquartile mean, ``rliable.metrics.aggregate_iqm``: the 25 % trimmed mean
  ``scipy.stats.trim_mean(x, 0.25)``, i.e. drop the ``floor(n / 4)`` lowest and the
  ``floor(n / 4)`` highest scores and average the rest (for ``n < 4`` nothing is dropped, so it
  is the plain mean).
* **95 % confidence interval** of the IQM — ``rliable.library.get_interval_estimates`` with the
  percentile method: a stratified bootstrap over seeds (one task here, so it is an ordinary
  bootstrap resampling the ``n`` seeds with replacement), ``reps`` resamples; the interval is the
  2.5th and 97.5th percentile of the resampled IQMs.
* **Probability of improvement** — ``rliable.metrics.probability_of_improvement``:
  ``P(A > B) = (1 / (n_a n_b)) Σ_i Σ_j [a_i > b_j] + ½ [a_i = b_j]``, the chance that a seed of
  condition A scores higher than a seed of B, ties counted half (0.5 for identical samples).
* **Paired test**, where seeds pair (a trained population and its own untrained checkpoint, or
  two conditions trained on the same seeds) — ``scipy.stats.wilcoxon(a, b, zero_method="wilcox")``,
  the signed-rank test on the per-seed differences (exact for small samples without ties; seeds
  with a zero difference carry no sign and are dropped, as the test defines). Its floor: with
  ``n`` paired seeds no p-value falls below ``2^-n`` one-sided (``2^(1-n)`` two-sided) — 5 seeds
  can never pass a corrected 0.05 two-sided, 10 seeds can.
* **Rank test**, where they do not — ``scipy.stats.mannwhitneyu(a, b, alternative="two-sided")``
  with scipy's default ``method="auto"`` (exact distribution for small samples without ties,
  normal approximation with tie correction otherwise). ``u_statistic`` is the U of sample A,
  ``U_a = n_a n_b P(A > B)``.
* **Correction** — Holm's step-down (``statsmodels.stats.multitest.multipletests(method="holm")``)
  across a family of tests (:func:`holm`): a report corrects every test it makes together and
  shows both p-values. A test that could not be computed counts as ``p = 1`` in the family.

Undefined scores: a seed whose metric is undefined (for instance a rate with no opportunity)
is given as ``None`` (a float NaN, as ``analysis.metrics`` writes it, counts the same); it is
dropped from every statistic and counted in ``n_undefined``. Infinite scores are an error.
Whatever cannot be computed is ``None`` beside a ``reason`` string, never NaN, so every result
is plain JSON (``json.dumps(result, allow_nan=False)`` works) with Python ``float``/``int``.

Determinism: rliable 1.2's bootstrap draws its resampling indices from NumPy's *global* random
generator (``np.random.choice``), whatever ``random_state`` is given, so :func:`summarise`
seeds the global generator with ``seed`` for the call and restores its previous state
afterwards: the same input gives the same output byte for byte, and the caller's global random
stream is left untouched. (Not safe to call from several threads at once.)
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.stats
from rliable import library as rly
from rliable import metrics as rly_metrics
from statsmodels.stats.multitest import multipletests

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "DEFAULT_REPS",
    "PAIRED_TEST",
    "RANK_TEST",
    "compare",
    "compare_conditions",
    "episode_bootstrap",
    "holm",
    "iqm",
    "paired_test",
    "summarise",
    "summarise_conditions",
]

CONFIDENCE = 0.95
"""Coverage of the bootstrap confidence intervals."""

DEFAULT_REPS = 2000
"""Bootstrap resamples per interval."""

RANK_TEST = "Mann-Whitney U, two-sided (scipy.stats.mannwhitneyu, method='auto')"
"""How ``p_value`` in :func:`compare` is computed, named in every comparison."""

PAIRED_TEST = "Wilcoxon signed-rank (scipy.stats.wilcoxon, zero_method='wilcox')"
"""How ``p_value`` is computed where seeds pair."""

ALPHA = 0.05
"""Family-wise error rate every corrected test is judged at."""

ONE_SEED = "one seed: an anecdote"


def _defined(values: Sequence[float | None]) -> tuple[list[float | None], np.ndarray, int]:
    """Split per-seed scores into (all as floats or None, the defined ones, how many undefined).

    ``None`` and NaN are undefined; ``±inf`` raises ``ValueError``.
    """
    per_seed: list[float | None] = []
    for value in values:
        if value is None:
            per_seed.append(None)
            continue
        x = float(value)
        if math.isnan(x):
            per_seed.append(None)
        elif math.isinf(x):
            raise ValueError(f"per-seed score {value!r} is infinite; use None for undefined")
        else:
            per_seed.append(x)
    defined = np.asarray([x for x in per_seed if x is not None], dtype=np.float64)
    return per_seed, defined, len(per_seed) - defined.size


def _no_values_reason(n_total: int) -> str:
    return "no seeds" if n_total == 0 else f"undefined for all {n_total} seeds"


@contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator for the block, then put its previous state back."""
    # The legacy global generator on purpose: it is the one rliable 1.2's bootstrap draws from.
    saved = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(saved)  # noqa: NPY002


def _iqm_of_runs(scores: np.ndarray) -> np.ndarray:
    """rliable's aggregate for one task: the IQM of a ``(n_runs, 1)`` score matrix, as a 1-array."""
    return np.array([rly_metrics.aggregate_iqm(scores)])


def iqm(values: Sequence[float | None]) -> float | None:
    """Interquartile mean of the defined per-seed scores (``None`` when there are none).

    ``rliable.metrics.aggregate_iqm`` = ``scipy.stats.trim_mean(x, 0.25)``: the mean after
    dropping the ``floor(n / 4)`` lowest and ``floor(n / 4)`` highest scores.
    """
    _, defined, _ = _defined(values)
    if defined.size == 0:
        return None
    return float(rly_metrics.aggregate_iqm(defined[:, None]))


def summarise(
    values: Sequence[float | None], *, reps: int = DEFAULT_REPS, seed: int = 0
) -> dict[str, Any]:
    """IQM and stratified-bootstrap 95 % confidence interval of one condition × metric.

    Args:
        values: one score per training seed, in seed order; ``None`` (or NaN) where the metric
            is undefined for that seed.
        reps: bootstrap resamples.
        seed: seeds the bootstrap; the same ``(values, reps, seed)`` give the same result.

    Returns:
        ``{"iqm", "ci_low", "ci_high", "n_seeds", "n_undefined", "values", "reason"}``:
        ``n_seeds`` is the number of seeds with a defined score (the sample size of every
        statistic), ``n_undefined`` the number dropped, ``values`` every seed's score as given
        (``None`` where undefined). ``reason`` is ``None`` when everything is computed;
        otherwise it says why some fields are ``None``: with no defined score every statistic is
        ``None``; with one, ``iqm`` is that score and the interval is ``None``
        (``"one seed: an anecdote"``).
    """
    if reps < 1:
        raise ValueError(f"reps must be positive, got {reps}")
    per_seed, defined, n_undefined = _defined(values)
    result: dict[str, Any] = {
        "iqm": None,
        "ci_low": None,
        "ci_high": None,
        "n_seeds": int(defined.size),
        "n_undefined": int(n_undefined),
        "values": per_seed,
        "reason": None,
    }
    if defined.size == 0:
        result["reason"] = _no_values_reason(len(per_seed))
        return result
    if defined.size == 1:
        result["iqm"] = float(defined[0])
        result["reason"] = ONE_SEED
        return result
    with _seeded_global_rng(seed):
        points, intervals = rly.get_interval_estimates(
            {"scores": defined[:, None]},
            _iqm_of_runs,
            method="percentile",
            reps=reps,
            confidence_interval_size=CONFIDENCE,
        )
    result["iqm"] = float(points["scores"][0])
    result["ci_low"] = float(intervals["scores"][0, 0])
    result["ci_high"] = float(intervals["scores"][1, 0])
    return result


def compare(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    metric: str,
    name_a: str,
    name_b: str,
    paired: bool = False,
) -> dict[str, Any]:
    """Compare two conditions' per-seed scores on one metric.

    Args:
        a, b: one score per training seed of each condition (``None``/NaN where undefined).
        metric: the metric's name, copied into the result.
        name_a, name_b: the conditions' names, copied into the result as ``"a"`` and ``"b"``.
        paired: ``a[i]`` and ``b[i]`` come from the same seed: the two-sided
            :func:`paired_test` replaces the rank test (``p_value``, ``test``, ``n_pairs``,
            ``n_undefined_pairs`` from it; ``u_statistic`` stays ``None``).

    Returns:
        ``{"metric", "a", "b", "n_a", "n_b", "n_undefined_a", "n_undefined_b", "iqm_a",
        "iqm_b", "prob_improvement", "u_statistic", "p_value", "test", "reason"}``:
        ``n_a``/``n_b`` count the seeds with a defined score; ``prob_improvement`` is rliable's
        ``P(A > B)`` (ties half); ``u_statistic`` and ``p_value`` are the two-sided
        Mann–Whitney U test (``U`` of sample A); ``test`` names that test. With fewer than two
        defined scores on either side the test and ``prob_improvement`` are ``None`` and
        ``reason`` says why (``iqm_a``/``iqm_b`` are still given where defined).
    """
    _, xa, undefined_a = _defined(a)
    _, xb, undefined_b = _defined(b)
    result: dict[str, Any] = {
        "metric": metric,
        "a": name_a,
        "b": name_b,
        "n_a": int(xa.size),
        "n_b": int(xb.size),
        "n_undefined_a": int(undefined_a),
        "n_undefined_b": int(undefined_b),
        "iqm_a": iqm(xa.tolist()),
        "iqm_b": iqm(xb.tolist()),
        "prob_improvement": None,
        "u_statistic": None,
        "p_value": None,
        "test": RANK_TEST,
        "reason": None,
    }
    if paired:
        test = paired_test(a, b)
        result.update(
            test=PAIRED_TEST,
            p_value=test["p_value"],
            n_pairs=test["n_pairs"],
            n_undefined_pairs=test["n_undefined"],
            reason=test["reason"],
        )
    short = [
        f"{name} has {n} defined seed{'' if n == 1 else 's'}"
        for name, n in ((name_a, xa.size), (name_b, xb.size))
        if n < 2
    ]
    if short:
        if not paired:
            result["reason"] = "; ".join(short) + " (a comparison needs at least 2 per side)"
        return result
    result["prob_improvement"] = float(
        rly_metrics.probability_of_improvement(xa[:, None], xb[:, None])
    )
    if paired:
        return result
    test = scipy.stats.mannwhitneyu(xa, xb, alternative="two-sided")
    result["u_statistic"] = float(test.statistic)
    p_value = float(test.pvalue)
    if math.isnan(p_value):  # not expected from scipy's tie handling; never let NaN out
        result["reason"] = "the rank test is undefined for these samples"
    else:
        result["p_value"] = p_value
    return result


def paired_test(
    a: Sequence[float | None],
    b: Sequence[float | None],
    alternative: str = "two-sided",
) -> dict[str, Any]:
    """Wilcoxon signed-rank test of ``a[i] − b[i]`` over the seeds where both are defined.

    Args:
        a, b: one score per seed, in the same seed order (``None``/NaN where undefined).
        alternative: ``"two-sided"``, or ``"greater"`` (``a`` above ``b``) / ``"less"``.

    Returns:
        ``{"p_value", "statistic", "n_pairs", "n_undefined", "n_above", "n_below", "test",
        "alternative", "reason"}``: ``n_pairs`` seeds with both scores defined, ``n_undefined``
        the seeds left out (either score undefined), ``n_above``/``n_below`` the pairs with
        ``a > b`` / ``a < b``. With no non-zero difference there is no evidence either way:
        ``p_value`` is 1 and ``reason`` says so; with no pair at all ``p_value`` is ``None``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative {alternative!r}; allowed: two-sided, greater, less")
    xa, _, _ = _defined(a)
    xb, _, _ = _defined(b)
    pairs = [(x, y) for x, y in zip(xa, xb, strict=True) if x is not None and y is not None]
    diffs = np.asarray([x - y for x, y in pairs], dtype=np.float64)
    result: dict[str, Any] = {
        "p_value": None,
        "statistic": None,
        "n_pairs": len(pairs),
        "n_undefined": len(a) - len(pairs),
        "n_above": int((diffs > 0).sum()),
        "n_below": int((diffs < 0).sum()),
        "test": PAIRED_TEST,
        "alternative": alternative,
        "reason": None,
    }
    if not pairs:
        result["reason"] = "no seed has both scores defined"
    elif not np.any(diffs != 0):
        result["p_value"] = 1.0
        result["reason"] = "every paired difference is zero"
    else:
        test = scipy.stats.wilcoxon(diffs, zero_method="wilcox", alternative=alternative)
        result["statistic"] = float(test.statistic)
        result["p_value"] = float(test.pvalue)
    return result


EPISODE_BOOTSTRAP = "episode bootstrap, percentile (scipy.stats.bootstrap)"
"""How one evaluation's confidence intervals are computed: episodes resampled with replacement."""


def episode_bootstrap(
    episodes: int,
    measure: Callable[[np.ndarray], np.ndarray],
    *,
    reps: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point values and 95 % percentile-bootstrap intervals of statistics of one evaluation's
    episodes, resampled with replacement (``scipy.stats.bootstrap``).

    Args:
        episodes: how many episodes there are.
        measure: episode indices (with repeats) → a vector of statistics (NaN where undefined);
            all statistics share each resample, so differences between populations evaluated
            on the same episode seeds are paired.
        reps: resamples; seed: seeds them.

    Returns:
        ``(point, low, high)``, each a vector like ``measure``'s; NaN where a statistic is
        undefined on the data or on some resample.
    """
    if episodes < 2:
        raise ValueError(f"a bootstrap needs at least 2 episodes, got {episodes}")
    point = np.asarray(measure(np.arange(episodes)), dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns of NaN resamples; NaN is the answer
        result = scipy.stats.bootstrap(
            (np.arange(episodes),),
            lambda idx: np.asarray(measure(idx.astype(np.int64)), dtype=np.float64),
            vectorized=False,
            n_resamples=reps,
            confidence_level=CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low = np.asarray(result.confidence_interval.low, dtype=np.float64)
    high = np.asarray(result.confidence_interval.high, dtype=np.float64)
    return point, low, high


def holm(p_values: Sequence[float | None]) -> list[float]:
    """Holm-corrected p-values of one family (``None`` — a test that could not be computed —
    counts as 1: an outcome that supports nothing, never dropped from the family)."""
    if not p_values:
        return []
    raw = np.asarray([1.0 if p is None else float(p) for p in p_values])
    _, corrected, _, _ = multipletests(raw, alpha=ALPHA, method="holm")
    return [float(p) for p in corrected]


def summarise_conditions(
    table: Mapping[str, Mapping[str, Sequence[float | None]]],
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`summarise` every cell of ``table`` (condition → metric → per-seed scores).

    Returns condition → metric → summary, in the table's order. Every cell is bootstrapped with
    the same ``seed``, so a cell's interval does not depend on which other cells are present.
    """
    return {
        condition: {
            metric: summarise(values, reps=reps, seed=seed) for metric, values in metrics.items()
        }
        for condition, metrics in table.items()
    }


def compare_conditions(
    table: Mapping[str, Mapping[str, Sequence[float | None]]],
    metrics: Sequence[str],
    pairs: Sequence[tuple[str, str]] | None = None,
    seeds: Mapping[str, Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """:func:`compare` conditions of ``table`` on each of ``metrics``.

    Args:
        table: condition → metric → per-seed scores.
        metrics: the metrics to compare, in output order. A condition without a metric counts
            as having no defined seeds for it (the comparison says so in ``reason``).
        pairs: ``(a, b)`` condition pairs to compare, in output order; by default every
            unordered pair once, ``itertools.combinations`` over the table's conditions in
            their order (the earlier condition is ``a``).
        seeds: each condition's seeds, in the order of its scores: two conditions trained on
            the same seeds are compared paired (:func:`paired_test`), others by the rank test.

    Returns:
        One :func:`compare` result per pair and metric, pair-major (for each pair, every metric).
    """
    if pairs is None:
        pairs = list(itertools.combinations(table, 2))
    for name_a, name_b in pairs:
        for name in (name_a, name_b):
            if name not in table:
                raise KeyError(f"unknown condition {name!r}; known: {list(table)}")
        if name_a == name_b:
            raise ValueError(f"cannot compare condition {name_a!r} with itself")
    return [
        compare(
            table[name_a].get(metric, ()),
            table[name_b].get(metric, ()),
            metric=metric,
            name_a=name_a,
            name_b=name_b,
            paired=seeds is not None and list(seeds[name_a]) == list(seeds[name_b]),
        )
        for name_a, name_b in pairs
        for metric in metrics
    ]
