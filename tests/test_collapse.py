"""Neural-collapse statistics (embedscope.collapse) on hand-made features with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from embedscope import collapse as nc


def simplex_etf(n_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """C unit vectors in R^dim with pairwise cosines -1/(C-1): the centred standard basis, rotated."""
    rng = np.random.default_rng(seed)
    centred = np.eye(n_classes) - 1.0 / n_classes
    frame = centred / np.linalg.norm(centred, axis=1, keepdims=True)  # (C, C), rank C-1
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, n_classes)))  # (dim, C) orthonormal columns
    return frame @ rotation.T


def test_collapsed_simplex_features_give_the_ideal_values():
    c, d, per_class = 5, 12, 7
    frame = 3.0 * simplex_etf(c, d)
    offset = np.linspace(-1.0, 2.0, d)  # a global mean away from zero: every statistic centres it out
    labels = np.repeat(np.arange(c), per_class)
    features = frame[labels] + offset  # float64: float32 rounding alone moves equinorm to 1e-8
    weights = 0.25 * frame  # the classifier aligned with the centred means, any scale
    predictions = labels.copy()
    values = nc.collapse_statistics(features, labels, c, features, predictions, weights=weights)
    assert set(values) == set(nc.COLLAPSE_METRICS)
    assert values["nc1"] == pytest.approx(0.0, abs=1e-12)
    for metric in ("nc2_equinorm", "nc2_equiangularity", "nc2_maxangle", "nc3_self_duality"):
        assert values[metric] == pytest.approx(0.0, abs=1e-12), metric
    assert values["nc4_ncc_agreement"] == 1.0


def direct_statistics(features, labels, n_classes, test_features, predictions, weights):
    """The same quantities written out with whole-matrix numpy and an explicit pinv."""
    x = features.astype(np.float64)
    mu_g = x.mean(axis=0)
    means = np.stack([x[labels == k].mean(axis=0) for k in range(n_classes)])
    m = means - mu_g
    s_w = sum(np.cov((x[labels == k] - means[k]).T, bias=True) for k in range(n_classes)) / n_classes
    s_b = m.T @ m / n_classes
    norms = np.linalg.norm(m, axis=1)
    unit = m / norms[:, None]
    cos = np.array([unit[i] @ unit[j] for i in range(n_classes) for j in range(i + 1, n_classes)])
    w = weights / np.linalg.norm(weights)
    nearest = np.array([np.argmin(np.linalg.norm(means - t, axis=1)) for t in test_features.astype(np.float64)])
    return {
        "nc1": np.trace(s_w @ np.linalg.pinv(s_b)) / n_classes,
        "nc2_equinorm": norms.std() / norms.mean(),
        "nc2_equiangularity": cos.std(),
        "nc2_maxangle": np.abs(cos + 1 / (n_classes - 1)).mean(),
        "nc3_self_duality": np.sum((w - m / np.linalg.norm(m)) ** 2),
        "nc4_ncc_agreement": np.mean(nearest == predictions),
    }


@pytest.mark.parametrize(("n_classes", "dim"), [(4, 3), (3, 16), (10, 40)])  # D < C-1, D > C: pinv both ways
def test_random_features_equal_a_direct_computation(n_classes, dim):
    rng = np.random.default_rng(n_classes * 100 + dim)
    labels = np.repeat(np.arange(n_classes), 9)
    features = (rng.normal(size=(len(labels), dim)) + labels[:, None] * 0.3).astype(np.float32)
    test = rng.normal(size=(50, dim)).astype(np.float32)
    predictions = rng.integers(0, n_classes, size=50)
    weights = rng.normal(size=(n_classes, dim))
    got = nc.collapse_statistics(features, labels, n_classes, test, predictions, weights=weights)
    want = direct_statistics(features, labels, n_classes, test, predictions, weights)
    for metric in nc.COLLAPSE_METRICS:
        assert np.allclose(got[metric], want[metric], rtol=1e-9, atol=1e-12), metric


def test_without_weights_or_test_split_only_the_train_statistics():
    labels = np.repeat(np.arange(3), 4)
    features = np.random.default_rng(0).normal(size=(12, 5))
    assert set(nc.collapse_statistics(features, labels, 3)) == {
        "nc1", "nc2_equinorm", "nc2_equiangularity", "nc2_maxangle"}


def test_a_class_without_train_samples_is_named():
    with pytest.raises(ValueError, match="class 2 has no sample"):
        nc.collapse_statistics(np.zeros((4, 3)), np.array([0, 0, 1, 1]), 3)


def test_rows_name_each_value_and_its_image_count():
    rows = nc.collapse_rows(2, 1, {"layer4": {"nc1": 0.5, "nc4_ncc_agreement": 0.9}}, n_train=100, n_test=40)
    assert rows == [
        {"stage": 2, "epoch": 1, "layer": "layer4", "metric": "nc1", "value": 0.5, "images": 100},
        {"stage": 2, "epoch": 1, "layer": "layer4", "metric": "nc4_ncc_agreement", "value": 0.9, "images": 40},
    ]
