"""95% intervals on the tables' accuracies, and what they allow one to say about a difference.

Every accuracy in the baseline, classifier and embedding-quality tables is a fraction of ``n`` test images (or
map points) classified right, so each gets the Wilson score interval of that binomial proportion
(:func:`wilson_interval`): unlike the normal approximation it stays inside [0, 1] and keeps close to its nominal
coverage at accuracies near 1, where most of the study's numbers lie. It is a function of the accuracy and ``n``
alone, so no resampling (and no seed) is involved; the interval is test-set sampling uncertainty only, not the
variation between training runs.

Two accuracies measured on the *same* test images are paired; McNemar's exact test needs the two discordant
counts (images only one of the two gets right), which the tables do not keep. :func:`mcnemar_p_range` gives the
smallest and largest p-value over every split of the errors that the two accuracies allow, so a difference can
be called significant (largest p below the level) or not (smallest p above it) without per-image predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
LOW, HIGH = "_low", "_high"  # suffixes of a metric's interval columns: accuracy -> accuracy_low, accuracy_high


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard-normal quantile of ``confidence`` (1.959964 for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes, n, confidence: float = CONFIDENCE):
    """Wilson score interval ``(low, high)`` of ``successes`` out of ``n`` (scalars or arrays, broadcast).

    With p = successes / n and z the normal quantile of ``confidence``:
    centre = (p + z^2 / 2n) / (1 + z^2 / n), half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).
    ``successes`` may be fractional (an accuracy times n). 0 of n gives a low of exactly 0 and n of n a high of
    exactly 1; n = 0 or a NaN count gives NaN. Floats for scalar input, float64 arrays otherwise.
    """
    k = np.asarray(successes, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n_arr):
        raise ValueError("successes must lie in 0..n")
    z2 = z_value(confidence) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n_arr
        denominator = 1 + z2 / n_arr
        centre = (p + z2 / (2 * n_arr)) / denominator
        half = np.sqrt(z2) / denominator * np.sqrt(p * (1 - p) / n_arr + z2 / (4 * n_arr**2))
        low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(k == n_arr, 1.0, np.clip(centre + half, 0.0, 1.0))
    invalid = ~(n_arr > 0) | np.isnan(k)
    low, high = np.where(invalid, np.nan, low), np.where(invalid, np.nan, high)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def interval_columns(columns: Sequence[str], metrics: Sequence[str]) -> tuple[str, ...]:
    """``columns`` with ``<metric>_low`` and ``<metric>_high`` right after each of ``metrics``."""
    out: list[str] = []
    for column in columns:
        out.append(column)
        if column in metrics:
            out += [column + LOW, column + HIGH]
    return tuple(out)


def add_intervals(table: pd.DataFrame, counts: Mapping[str, object], confidence: float = CONFIDENCE,
                  where=None) -> pd.DataFrame:
    """A copy of ``table`` with the Wilson interval of each accuracy column in ``counts`` filled in.

    ``counts`` maps a column (a fraction of n right) to its n: one number for every row, a column name of
    ``table``, or one value per row. The interval goes to ``<metric>_low`` / ``<metric>_high``, which are
    overwritten where the table has them and otherwise inserted right after the metric. ``where`` (a boolean
    per row) limits the intervals to those rows, the others get NaN: rows whose value is not a fraction of n
    images, such as a standard deviation."""
    table = table.copy()
    keep = np.ones(len(table), bool) if where is None else np.asarray(where, dtype=bool)
    for metric, n in counts.items():
        if isinstance(n, str):
            n = table[n]
        n = np.where(keep, np.broadcast_to(np.asarray(n, dtype=np.float64), (len(table),)), np.nan)
        accuracy = np.where(keep, table[metric].to_numpy(dtype=np.float64), np.nan)
        low, high = wilson_interval(accuracy * n, n, confidence) if len(table) else (np.array([]), np.array([]))
        for suffix, values in ((LOW, low), (HIGH, high)):
            if metric + suffix not in table.columns:
                table.insert(table.columns.get_loc(metric) + (1 if suffix == LOW else 2), metric + suffix, values)
            else:
                table[metric + suffix] = values
    return table


def interval_note(what: str, confidence: float = CONFIDENCE) -> str:
    """The tables' note on their bracketed intervals; ``what`` says over which n."""
    return (f"`[low, high]` after an accuracy: its {confidence:.0%} Wilson score interval over {what} "
            "(test-set sampling only, not training variation; columns `<metric>_low`/`_high` in the CSV).")


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` and ``c`` discordant pairs: the binomial test of
    min(b, c) in b + c trials at 1/2, doubled and capped at 1 (1 when there is no discordant pair)."""
    from scipy.stats import binom

    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)))


def mcnemar_p_range(correct_a: int, correct_b: int, n: int) -> tuple[float, float]:
    """(smallest, largest) exact McNemar p-value of two classifiers right on ``correct_a`` and ``correct_b``
    of the same ``n`` test images, over every number of images on which they disagree.

    With b images right only for A and c right only for B, b - c = correct_a - correct_b = d is fixed; b + c = s
    can be any value of the parity of d from |d| (one classifier's errors contain the other's) up to
    min(errors_a + errors_b, correct_a + correct_b): the errors disjoint, or, when they are too many for that,
    every image one gets right wrong for the other (b <= correct_a and c <= correct_b)."""
    correct_a, correct_b, n = int(correct_a), int(correct_b), int(n)
    if not (0 <= correct_a <= n and 0 <= correct_b <= n):
        raise ValueError("correct counts must lie in 0..n")
    d = correct_a - correct_b
    most = min(2 * n - correct_a - correct_b, correct_a + correct_b)  # of the parity of d, like |d|
    p = [mcnemar_exact_p((s + d) // 2, (s - d) // 2) for s in range(abs(d), most + 1, 2)]
    return min(p), max(p)
