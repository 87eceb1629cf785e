"""Neural-collapse statistics of one layer's features (Papyan, Han & Donoho, PNAS 2020), NC1 to NC4.

Written for fine-tuning's end-of-epoch pass (:mod:`embedscope.finetune`): the class means come from a seeded
stratified subsample of the train split, NC4 from the test split. With C classes, class means mu_c, the global
mean mu_G of all train samples and the centred means m_c = mu_c - mu_G:

- ``nc1``: tr(S_W S_B^+) / C, the within-class variability against the between-class one (the same function as
  the embedding-quality table's column, :func:`embedscope.metrics.nc1`).
- ``nc2_equinorm``: std / mean of the norms ||m_c|| (population std); 0 when the means have equal length.
- ``nc2_equiangularity``: std of the cosines between distinct centred means; 0 when all pairs meet at one angle.
- ``nc2_maxangle``: mean over distinct pairs of |cos(m_c, m_c') + 1/(C-1)|; 0 for a simplex equiangular tight
  frame, whose pairwise cosines are all -1/(C-1).
- ``nc3_self_duality``: || W/||W||_F - M/||M||_F ||_F^2 between the last linear layer's weights W (C x D) and the
  centred means M (C x D); only for the layer that feeds that linear layer.
- ``nc4_ncc_agreement``: the fraction of test images whose network prediction equals the nearest (Euclidean)
  class-mean prediction in this layer; 1 when the classifier has collapsed to nearest class centre.

Everything is float64; no step draws random numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from embedscope.baseline import nearest_class_mean
from embedscope.metrics import class_statistics, nc1

COLLAPSE_METRICS = ("nc1", "nc2_equinorm", "nc2_equiangularity", "nc2_maxangle", "nc3_self_duality",
                    "nc4_ncc_agreement")


def centred_means(means: np.ndarray, global_mean: np.ndarray) -> np.ndarray:
    """M: the class means minus the global mean, (C, D) float64."""
    return np.asarray(means, dtype=np.float64) - np.asarray(global_mean, dtype=np.float64)


def equinorm(centred: np.ndarray) -> float:
    norms = np.linalg.norm(centred, axis=1)
    return float(norms.std() / norms.mean())


def _pairwise_cosines(centred: np.ndarray) -> np.ndarray:
    """The cosines of the C (C - 1) / 2 distinct pairs of rows."""
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    upper = np.triu_indices(len(centred), k=1)
    return (unit @ unit.T)[upper]


def equiangularity(centred: np.ndarray) -> float:
    return float(_pairwise_cosines(centred).std())


def max_angle(centred: np.ndarray) -> float:
    return float(np.abs(_pairwise_cosines(centred) + 1.0 / (len(centred) - 1)).mean())


def self_duality(weights: np.ndarray, centred: np.ndarray) -> float:
    weights = np.asarray(weights, dtype=np.float64)
    difference = weights / np.linalg.norm(weights) - centred / np.linalg.norm(centred)
    return float(np.sum(difference**2))


def ncc_agreement(features: np.ndarray, network_predictions: np.ndarray, means: np.ndarray) -> float:
    nearest = nearest_class_mean(features, means, distance="l2")
    return float(np.mean(nearest == np.asarray(network_predictions)))


def collapse_statistics(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    n_classes: int,
    test_features: np.ndarray | None = None,
    test_predictions: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """NC1-NC4 of one layer (module docstring): NC3 only with ``weights``, NC4 only with the test features and
    the network's test predictions. Every class needs a train sample."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    statistics = class_statistics(train_features, train_labels, n_classes)
    means, counts, global_mean = statistics
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(f"class {int(empty[0])} has no sample in the collapse subsample")
    centred = centred_means(means, global_mean)
    values = {
        "nc1": nc1(train_features, train_labels, n_classes, statistics=statistics),
        "nc2_equinorm": equinorm(centred),
        "nc2_equiangularity": equiangularity(centred),
        "nc2_maxangle": max_angle(centred),
    }
    if weights is not None:
        values["nc3_self_duality"] = self_duality(weights, centred)
    if test_features is not None and test_predictions is not None:
        values["nc4_ncc_agreement"] = ncc_agreement(test_features, test_predictions, means)
    return values


def collapse_rows(stage: int, epoch: int, statistics: Mapping[str, Mapping[str, float]], n_train: int,
                  n_test: int) -> list[dict]:
    """Long-format rows (stage, epoch, layer, metric, value, images) of one epoch's statistics by layer;
    ``images``: how many images a value is over (the train subsample; the test split for NC4)."""
    return [
        {"stage": int(stage), "epoch": int(epoch), "layer": layer, "metric": metric, "value": float(value),
         "images": int(n_test if metric == "nc4_ncc_agreement" else n_train)}
        for layer, values in statistics.items()
        for metric, value in values.items()
    ]
