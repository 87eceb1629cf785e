"""95% Wilson intervals on the tables' accuracies, their Markdown form, and the McNemar bounds."""

from math import comb

import numpy as np
import pandas as pd
import pytest

from embedscope.artifacts import markdown_table, with_bracketed_intervals
from embedscope.intervals import (
    add_intervals,
    interval_columns,
    mcnemar_exact_p,
    mcnemar_p_range,
    wilson_interval,
    z_value,
)

Z = 1.959963984540054


def direct_wilson(k, n, z=Z):
    """The textbook formula, written out once more."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_z_value():
    assert z_value() == pytest.approx(Z, abs=1e-12)
    assert z_value(0.99) == pytest.approx(2.5758293035489, abs=1e-10)
    with pytest.raises(ValueError):
        z_value(1.0)


def test_wilson_known_answers():
    # 81 of 263: the textbook example (Wilson 1927 / Newcombe 1998 style), (0.2553, 0.3662) to four places
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert np.allclose((low, high), direct_wilson(81, 263), rtol=0, atol=1e-15)
    # 0 of n and n of n: the open end exactly 0 / 1, the other z^2 / (n + z^2) away
    assert wilson_interval(0, 10) == (0.0, pytest.approx(Z**2 / (10 + Z**2)))
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + Z**2)), 1.0)
    # the default study's headline: scattering + logistic regression, 1,961 of 2,000 test images
    assert np.allclose(wilson_interval(1961, 2000), (0.973455, 0.985703), atol=5e-7)
    # symmetric under k -> n - k
    assert np.allclose(wilson_interval(7, 40), [1 - v for v in wilson_interval(33, 40)[::-1]])


def test_wilson_is_vectorised_and_marks_empty_counts():
    k, n = np.array([0, 3, 50, 199, 200]), np.array([200, 200, 200, 200, 200])
    low, high = wilson_interval(k, n)
    assert low.shape == high.shape == (5,)
    for i in range(5):
        assert (low[i], high[i]) == wilson_interval(int(k[i]), int(n[i]))
    assert np.allclose(np.vstack([low, high])[:, 1:4], direct_wilson(k[1:4], 200))
    assert np.all((low <= k / n) & (k / n <= high))
    assert np.isnan(wilson_interval(0, 0)).all() and np.isnan(wilson_interval(np.nan, 10)).all()
    wide, narrow = wilson_interval(90, 100, 0.99), wilson_interval(90, 100, 0.90)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    with pytest.raises(ValueError, match="0..n"):
        wilson_interval(11, 10)


def test_wilson_coverage_on_a_simulated_binomial():
    from scipy.stats import binom

    p, n, draws = 0.9, 200, 20_000
    k = np.arange(n + 1)
    low, high = wilson_interval(k, n)
    exact = float(binom.pmf(k, n, p)[(low <= p) & (p <= high)].sum())  # the interval's true coverage at p
    assert 0.94 <= exact <= 0.96
    rng = np.random.default_rng(2024)
    sample = rng.binomial(n, p, draws)
    low, high = wilson_interval(sample, n)
    covered = float(np.mean((low <= p) & (p <= high)))
    # 4 standard errors of a proportion of 20,000 draws around the exact coverage
    assert abs(covered - exact) < 4 * np.sqrt(exact * (1 - exact) / draws)
    again = wilson_interval(np.random.default_rng(2024).binomial(n, p, draws), n)
    assert np.mean((again[0] <= p) & (p <= again[1])) == covered  # seeded: the same draws every run


def test_interval_columns_and_add_intervals():
    assert interval_columns(("a", "accuracy", "f1", "ncc"), ("accuracy", "ncc")) == (
        "a", "accuracy", "accuracy_low", "accuracy_high", "f1", "ncc", "ncc_low", "ncc_high")
    table = pd.DataFrame({"name": ["x", "y"], "accuracy": [0.5, 1.0], "n": [10, 4], "knn": [0.25, 0.0]})
    out = add_intervals(table, {"accuracy": 10, "knn": "n"})
    assert list(out.columns) == ["name", "accuracy", "accuracy_low", "accuracy_high", "n", "knn", "knn_low",
                                 "knn_high"]
    assert list(table.columns) == ["name", "accuracy", "n", "knn"]  # the input is left alone
    assert np.allclose(out[["accuracy_low", "accuracy_high"]].to_numpy(),
                       [wilson_interval(5, 10), wilson_interval(10, 10)])
    assert np.allclose(out[["knn_low", "knn_high"]].to_numpy(), [wilson_interval(2.5, 10), wilson_interval(0, 4)])
    # columns already there (NaN, as pd.DataFrame(rows, columns=...) leaves them) are filled in place
    empty = table.assign(accuracy_low=np.nan, accuracy_high=np.nan)
    filled = add_intervals(empty, {"accuracy": [10, 20]})
    assert list(filled.columns) == list(empty.columns)
    assert filled.loc[1, "accuracy_low"] == wilson_interval(20, 20)[0]
    assert add_intervals(table.iloc[:0], {"accuracy": 10}).shape == (0, 6)
    masked = add_intervals(table, {"accuracy": 10}, where=[True, False])
    assert masked.loc[0, "accuracy_low"] == out.loc[0, "accuracy_low"]
    assert np.isnan(masked.loc[1, ["accuracy_low", "accuracy_high"]].to_numpy(dtype=float)).all()


def test_markdown_shows_intervals_in_brackets():
    table = add_intervals(pd.DataFrame({"row": ["a", "b"], "accuracy": [0.9805, 0.5], "macro_f1": [0.97, 0.4]}),
                          {"accuracy": 2000})
    table.loc[1, ["accuracy_low", "accuracy_high"]] = np.nan
    shown = with_bracketed_intervals(table)
    assert list(shown.columns) == ["row", "accuracy", "macro_f1"]
    assert list(shown["accuracy"]) == ["0.9805 [0.9735, 0.9857]", "0.5000"]
    text = markdown_table(table, "t")
    assert "| 0.9805 [0.9735, 0.9857] |" in text and "accuracy_low" not in text and "0.9700" in text


def test_mcnemar_exact_p():
    assert mcnemar_exact_p(10, 0) == 2 * 0.5**10
    assert mcnemar_exact_p(5, 3) == pytest.approx(2 * sum(comb(8, i) for i in range(4)) / 2**8)
    assert mcnemar_exact_p(4, 4) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(3, 12) == mcnemar_exact_p(12, 3)


def brute_force_p_range(correct_a, correct_b, n):
    """Every table of (both right, only A, only B, both wrong) with these margins."""
    p = []
    for both in range(n + 1):
        only_a, only_b = correct_a - both, correct_b - both
        if only_a >= 0 and only_b >= 0 and both + only_a + only_b <= n:
            p.append(mcnemar_exact_p(only_a, only_b))
    return min(p), max(p)


@pytest.mark.parametrize(("a", "b", "n"), [(6, 2, 10), (9, 7, 10), (20, 20, 25), (0, 3, 3), (14, 5, 30)])
def test_mcnemar_range_is_every_possible_split_of_the_errors(a, b, n):
    assert mcnemar_p_range(a, b, n) == brute_force_p_range(a, b, n)


def test_mcnemar_range_of_the_default_study_headline():
    # scattering + logreg 1,961 and the fine-tuned CNN 1,928 of 2,000: 33 more right. Nested errors give
    # (33, 0) discordant pairs; disjoint errors (39 and 72) give (72, 39), the largest p-value.
    low, high = mcnemar_p_range(1961, 1928, 2000)
    assert low == mcnemar_exact_p(33, 0) == 2 * 0.5**33
    assert high == mcnemar_exact_p(72, 39)
    assert high == pytest.approx(2 * sum(comb(111, i) for i in range(40)) / 2**111)
    assert high < 0.01
