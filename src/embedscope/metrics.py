"""Tables that test the report's claims.

* Classifier table (``classifiers.csv``/``.md``): raw pixels and every (extractor, layer) feature set, fitted on
  the train split and scored on the test split with standardised logistic regression, a random forest and
  k-nearest neighbours; plus the nearest-class-mean baseline and the fine-tuned CNN's own predictions.
* Embedding-quality table (``embedding_quality.csv``/``.md``) per (extractor, layer): t-SNE trustworthiness,
  leave-one-out kNN accuracy in the 2-D map, silhouettes in feature space and in 2-D, nearest-class-centre
  accuracy, and the within-class variability collapse NC1 of Papyan et al. (2020).

Every accuracy of both tables is followed by its 95% Wilson score interval (``<metric>_low``/``_high``,
:mod:`embedscope.intervals`), added to the finished table by :func:`embedscope.intervals.add_intervals`.

Every input and both tables are read and written through :mod:`embedscope.artifacts`; their summary figures are drawn by
:func:`embedscope.figures.plot_metrics`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedscope.artifacts import (
    CLASSIFIER_COLUMNS,
    EMBEDDING_COLUMNS,
    REPLICATE_COLUMN,
    ArtifactError,
    prediction_class_count,
    read_baseline,
    read_classifiers,
    read_embedding_quality,
    read_predictions,
    read_tsne,
    write_table,
)
from embedscope.baseline import streamed_baseline
from embedscope.intervals import add_intervals, interval_note
from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.store import StoreError, load_features, pixel_rows, read_image_index

log = logging.getLogger("embedscope.metrics")

CLASSIFIERS = ("logreg", "random_forest", "knn")
PIXELS = "pixels"  # the `features` and `layer` value of raw-pixel rows
DEFAULTS = {"classifiers": list(CLASSIFIERS), "knn_k": 10, "trustworthiness_k": 10, "random_forest_trees": 100,
            "logreg_max_iter": 200, "max_quality_points": 10000}
# Rows of float64 handled at once by the class-mean, NCC and NC1 passes: one block of rows, never N x D in float64.
# 64 MiB holds a whole class (or test split) of the default study, so its sums keep the one-block shapes.
BLOCK_BYTES = 64 * 1024 * 1024
# scikit-learn's chunked pairwise reductions (silhouettes, kNN) work in blocks of this many MB (its default 1,024)
WORKING_MEMORY_MB = 128
# Blocked trustworthiness: one block's distances, argsort and inverted ranks (3 x rows x N x 8 B) fit in this.
QUALITY_BLOCK_BYTES = 96 * 1024 * 1024


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = {**DEFAULTS, **dict(settings or {})}
    unknown = [c for c in merged["classifiers"] if c not in CLASSIFIERS]
    if unknown:
        raise ValueError(f"metrics.classifiers: unknown {unknown}; expected some of {list(CLASSIFIERS)}")
    return merged


# ---- scores ------------------------------------------------------------------------------------------


def macro_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 over all ``n_classes`` classes.

    A class that is never predicted has precision 0 (scikit-learn's ``zero_division=0``).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = np.arange(n_classes)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "macro_precision": float(precision),
            "macro_recall": float(recall), "macro_f1": float(f1)}


def blocked_standard_scaler(copy: bool = True):
    """An unfitted scikit-learn ``StandardScaler`` whose ``fit`` reads the rows in float64 blocks.

    scikit-learn's own fit holds ``X - mean`` of the whole matrix in float64, and a NaN mask of it, while it
    computes the variance: 10 GB beside the 3 GB float32 training set of the widest CIFAR-10 layer. This fit
    takes the same two passes (the sum, then the corrected sum of squares of ``X - mean``) over blocks of at
    most BLOCK_BYTES, adding rows in numpy's own order (:func:`_running_sum`), so ``mean_``, ``var_`` and
    ``scale_`` equal scikit-learn's to the last bit. ``transform`` is scikit-learn's. Input with NaN or
    infinity is refused, as the classifiers behind it would refuse it.
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.preprocessing._data import _handle_zeros_in_scale, _is_constant_feature
    from sklearn.utils.validation import validate_data

    class BlockedStandardScaler(StandardScaler):
        def fit(self, X, y=None, sample_weight=None):
            if sample_weight is not None:
                raise ValueError("BlockedStandardScaler takes no sample weights")
            X = validate_data(self, X, dtype=(np.float64, np.float32), copy=False, reset=True)
            n, width = X.shape
            total = correction = squares = None
            for rows in _row_slices(n, width):
                total = _running_sum(total, np.asarray(X[rows], dtype=np.float64))
            count = np.full(width, float(n))
            mean = total / count
            for rows in _row_slices(n, width):
                centred = np.asarray(X[rows], dtype=np.float64) - mean
                correction = _running_sum(correction, centred)
                centred **= 2
                squares = _running_sum(squares, centred)
            self.mean_ = mean
            self.var_ = (squares - correction**2 / count) / count
            self.n_samples_seen_ = count[0]
            self.scale_ = _handle_zeros_in_scale(np.sqrt(self.var_), copy=False, constant_mask=_is_constant_feature(
                self.var_, self.mean_, self.n_samples_seen_))
            return self

    return BlockedStandardScaler(copy=copy)


def make_classifier(name: str, settings: Mapping[str, Any], seed: int, threads: int, in_place: bool = False):
    """An unfitted scikit-learn estimator for one of CLASSIFIERS; ``in_place``: logreg's StandardScaler
    overwrites the arrays it is given (fit and predict) instead of copying them."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline

    settings = _settings(settings)
    if name == "logreg":
        # lbfgs, multinomial; bounded iterations keep the widest layer (3,969 scattering values) to seconds.
        return make_pipeline(blocked_standard_scaler(copy=not in_place), LogisticRegression(
            max_iter=int(settings["logreg_max_iter"]), random_state=seed))
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=int(settings["random_forest_trees"]), n_jobs=threads,
                                      random_state=seed)
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=int(settings["knn_k"]), n_jobs=threads)
    raise ValueError(f"metrics.classifiers: unknown classifier {name!r}; expected one of {list(CLASSIFIERS)}")


def fit_and_score(name, x_train, y_train, x_test, y_test, n_classes, settings, seed=0, threads=1,
                  in_place: bool = False) -> dict:
    """Fit one classifier on the train split, score it on the test split; ``fit_seconds`` times the fit.

    ``in_place`` lets logreg standardise ``x_train`` and ``x_test`` in place (see :func:`score_feature_set`)."""
    from sklearn.exceptions import ConvergenceWarning

    model = make_classifier(name, settings, seed, threads, in_place)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(x_train, y_train)
        seconds = time.perf_counter() - start
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("%s did not converge within metrics.logreg_max_iter=%s iterations", name,
                    _settings(settings)["logreg_max_iter"])
    pred = model.predict(x_test)
    return {**macro_scores(y_test, pred, n_classes), "fit_seconds": float(seconds)}


def _row_slices(n: int, width: int) -> list[slice]:
    """Consecutive blocks of rows of a (n, width) array, each at most BLOCK_BYTES in float64."""
    step = max(1, BLOCK_BYTES // (8 * max(1, int(width))))
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def _row_groups(rows: np.ndarray, width: int) -> list[np.ndarray]:
    """``rows`` split into blocks of at most BLOCK_BYTES of float64 values each (in order)."""
    step = max(1, BLOCK_BYTES // (8 * max(1, int(width))))
    return [rows[start : start + step] for start in range(0, len(rows), step)]


def _running_sum(total: np.ndarray | None, block: np.ndarray) -> np.ndarray:
    """``total`` plus every row of ``block`` (float64), added one row after the other.

    numpy's own axis-0 sum of a C-ordered matrix adds its rows one after the other, so continuing it from
    ``total`` makes a sum taken in blocks equal, to the last bit, to the sum of the whole matrix."""
    if total is None:
        return block.sum(axis=0)
    return np.concatenate([total[None], block]).sum(axis=0)


def blocked_trustworthiness(features: np.ndarray, embedding: np.ndarray, k: int,
                            block_rows: int | None = None) -> float:
    """scikit-learn's ``trustworthiness(features, embedding, n_neighbors=k)``, computed in blocks of rows.

    scikit-learn ranks every point's neighbours with three N x N arrays (distances, argsort, inverted
    index: ~2.4 GB at 10,000 points); here each block of ``block_rows`` points gets the same three arrays for
    its rows only, the ranks of its k 2-D neighbours are summed, and the block is dropped. Per row it is the
    same Euclidean distances, the same argsort and the same formula, so the value is scikit-learn's.
    """
    from sklearn.metrics import pairwise_distances
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    embedded = NearestNeighbors(n_neighbors=k).fit(np.asarray(embedding, np.float64)).kneighbors(
        return_distance=False)
    step = block_rows or max(1, QUALITY_BLOCK_BYTES // (3 * 8 * n))
    positions = np.arange(1, n + 1)
    total = 0
    for start in range(0, n, step):
        stop = min(n, start + step)
        local = np.arange(stop - start)
        distances = pairwise_distances(x[start:stop], x)
        distances[local, start + local] = np.inf  # a point is not its own neighbour
        order = np.argsort(distances, axis=1)
        del distances
        inverted = np.empty_like(order)
        inverted[local[:, None], order] = positions
        ranks = inverted[local[:, None], embedded[start:stop]] - k
        total += int(ranks[ranks > 0].sum())
    return float(1.0 - total * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))))


def trustworthiness_score(features: np.ndarray, embedding: np.ndarray, k: int) -> float:
    """scikit-learn's trustworthiness of ``embedding`` w.r.t. ``features`` (k clamped below n/2), in blocks."""
    n = len(features)
    k_used = min(int(k), (n - 1) // 2)
    if k_used < 1:
        raise ValueError(f"trustworthiness needs at least 3 points, got {n}")
    if k_used != k:
        log.warning("metrics.trustworthiness_k=%s is not below n/2 for %s points; using %s", k, n, k_used)
    return blocked_trustworthiness(features, embedding, k_used)


def knn_accuracy_loo(points: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour majority vote (ties -> smallest label).

    Each point is classified by its ``k`` nearest *other* points, exactly as scikit-learn's
    ``KNeighborsClassifier(k)`` under ``LeaveOneOut`` would (uniform weights, Euclidean). Of the k + 1
    nearest points the point itself is dropped wherever it stands (or, when duplicates push it out, the
    (k+1)-th); the votes of all points are counted at once.
    """
    from sklearn.neighbors import NearestNeighbors

    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(points)
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"kNN accuracy needs at least 2 points, got {n}")
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)
    voters = neighbours != np.arange(n)[:, None]
    voters &= np.cumsum(voters, axis=1) <= k  # the first k neighbours that are not the point itself
    n_classes = int(labels.max()) + 1
    cells = (np.arange(n)[:, None] * n_classes + labels[neighbours])[voters]
    votes = np.bincount(cells, minlength=n * n_classes).reshape(n, n_classes)
    return int(np.count_nonzero(np.argmax(votes, axis=1) == labels)) / n


def silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """Euclidean silhouette score; NaN when it is undefined (fewer than 2 classes, or every point a class).

    scikit-learn sums distances in blocks of WORKING_MEMORY_MB rather than its default 1 GB."""
    from sklearn import config_context
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return float("nan")
    with config_context(working_memory=WORKING_MEMORY_MB):
        return float(silhouette_score(np.asarray(features, np.float64), labels, metric="euclidean"))


def class_statistics(features: np.ndarray, labels: np.ndarray, n_classes: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(means (C, D), counts (C,), global mean (D,))`` in float64 of (float32) features.

    Summed in blocks of rows of at most BLOCK_BYTES in float64, so no N x D float64 copy is made; the sums
    equal numpy's whole-matrix ``mean(axis=0)`` to the last bit (:func:`_running_sum`). A class without rows
    keeps a zero mean and a zero count.
    """
    features = np.asarray(features)
    labels = np.asarray(labels, dtype=np.int64)
    width = features.shape[1]
    total = None
    for rows in _row_slices(len(features), width):
        total = _running_sum(total, np.asarray(features[rows], dtype=np.float64))
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    means = np.zeros((n_classes, width))
    for c in range(n_classes):
        class_sum = None
        for rows in _row_groups(np.flatnonzero(labels == c), width):
            class_sum = _running_sum(class_sum, np.asarray(features[rows], dtype=np.float64))
        if class_sum is not None:
            means[c] = class_sum / counts[c]
    return means, counts, (total if total is not None else np.zeros(width)) / max(1, len(features))


def class_centres(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class means of feature vectors (C, D) float64; a class with no member is an error."""
    means, counts, _ = class_statistics(features, labels, n_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(f"class {int(empty[0])} has no training sample, so it has no mean")
    return means


def ncc_accuracy(x_train, y_train, x_test, y_test, n_classes: int, centres: np.ndarray | None = None) -> float:
    """Nearest-class-centre accuracy: centres (means) from the train split, Euclidean, applied to test (scored
    in blocks of rows); ``centres`` when they are at hand already."""
    centres = class_centres(x_train, y_train, n_classes) if centres is None else centres
    y_test = np.asarray(y_test)
    centre_norms = (centres**2).sum(1)[None, :]
    correct = 0
    for rows in _row_slices(len(x_test), centres.shape[1]):
        x = np.asarray(x_test[rows], dtype=np.float64)
        dist = (x**2).sum(1)[:, None] - 2 * x @ centres.T + centre_norms
        correct += int(np.count_nonzero(np.argmin(dist, axis=1) == y_test[rows]))
    return correct / len(y_test)


def nc1(features: np.ndarray, labels: np.ndarray, n_classes: int | None = None, statistics=None) -> float:
    """Within-class variability collapse NC1 = trace(S_W pinv(S_B)) / C (Papyan, Han & Donoho 2020).

    S_W: within-class covariance, the mean over classes of each class's covariance around its mean
    (1/n_c normalisation); S_B: covariance of the C class means around the global mean of all samples,
    (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T. S_B has rank <= C-1, so pinv(S_B) is taken through the thin
    SVD of the centred means and no D x D matrix is formed (the widest layer has D = 15,552); singular values
    below numpy's pinv cut-off (max(D, D) * eps relative to the largest) count as zero. Means and residuals
    are taken in float64 blocks of rows (:func:`class_statistics`), never as an N x D float64 copy;
    ``statistics`` is class_statistics' result when it is at hand.
    """
    features = np.asarray(features)
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    all_means, counts, global_mean = statistics or class_statistics(features, labels, n_classes)
    present = [c for c in range(n_classes) if counts[c] > 0]
    if len(present) < 2:
        raise ValueError("NC1 needs samples of at least two classes")
    means = all_means[present]  # (C, D)
    centred = means - global_mean
    u, s, _ = np.linalg.svd(centred.T, full_matrices=False)  # centred.T = U diag(s) V^T, U (D, C)
    eig = s**2 / len(present)  # eigenvalues of S_B
    keep = eig > eig.max() * features.shape[1] * np.finfo(np.float64).eps
    if eig.max() <= 0 or not np.any(keep):
        return float("inf")
    u, eig = u[:, keep], eig[keep]
    # trace(S_W U diag(1/eig) U^T) = sum_j (u_j^T S_W u_j) / eig_j, with u_j^T S_W u_j from projected residuals.
    projected_sw = np.zeros(len(eig))
    for index, c in enumerate(present):
        squares = None
        for rows in _row_groups(np.flatnonzero(labels == c), features.shape[1]):
            z = (np.asarray(features[rows], dtype=np.float64) - means[index]) @ u  # (rows, r)
            squares = _running_sum(squares, z**2)
        projected_sw += squares / counts[c]
    projected_sw /= len(present)
    return float(np.sum(projected_sw / eig) / len(present))


# ---- the classifier table ---------------------------------------------------------------------------


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Raw pixels, flattened and scaled to 0..1 (float32)."""
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0


def _check_layers(extractor: str, store: str | Path) -> list[str]:
    from embedscope.store import layer_names

    expected = list(EXTRACTOR_LAYERS[extractor])
    present = layer_names(store)
    missing = [layer for layer in expected if layer not in present]
    if missing:
        raise StoreError(f"feature store {store} ({extractor}) lacks layers {missing}; it has {present}")
    return expected


def baseline_rows(image_store, baseline_csv: str | Path, dataset: str, n_classes: int) -> list[dict]:
    """Nearest-class-mean rows (one per distance in the baseline's metrics.csv), with precision and recall.

    Recomputed from the image store chunk by chunk with :func:`embedscope.baseline.streamed_baseline` (what
    the baseline rule runs), and checked against the baseline's own accuracy so the table cannot silently
    disagree with it.
    """
    path = Path(baseline_csv)
    table = read_baseline(path)
    distances = [str(d) for d in table["distance"]]
    start = time.perf_counter()
    means, y_test, predictions = streamed_baseline(image_store, n_classes, distances)
    seconds = time.perf_counter() - start
    rows = []
    for distance, reported in zip(distances, table["accuracy"], strict=True):
        scores = macro_scores(y_test, predictions[distance], n_classes)
        if abs(scores["accuracy"] - float(reported)) > 1e-9:
            raise ArtifactError(f"baseline metrics {path}: {distance} accuracy {reported} but the image store gives "
                             f"{scores['accuracy']}; is the baseline stale?")
        rows.append({"dataset": dataset, "features": PIXELS, "layer": PIXELS,
                     "D": int(np.prod(means.shape[1:])), "classifier": f"class_mean_{distance}",
                     **scores, "fit_seconds": seconds})
    return rows


def cnn_row(predictions_csv: str | Path, data, dataset: str) -> dict:
    """The fine-tuned CNN's own test predictions (predictions.csv), checked against the image store's
    labels (``data``: its :class:`~embedscope.store.ImageIndex`)."""
    path = Path(predictions_csv)
    table = read_predictions(path)
    test_index = data.indices("test")
    if sorted(table["index"].tolist()) != sorted(test_index.tolist()):
        raise ArtifactError(f"predictions {path}: 'index' is not the test split of the image store "
                         f"({len(table)} rows for {len(test_index)} test images)")
    truth = data.labels[table["index"].to_numpy()]
    if not np.array_equal(truth, table["label"].to_numpy()):
        raise ArtifactError(f"predictions {path}: 'label' disagrees with the image store's labels")
    n_classes = len(data.class_names)
    n_prob = prediction_class_count(table)
    return {"dataset": dataset, "features": "resnet18_finetuned", "layer": "output", "D": n_prob or n_classes,
            "classifier": "cnn", **macro_scores(truth, table["pred"].to_numpy(), n_classes),
            "fit_seconds": float("nan")}


def feature_sets(image_store, extractors: Sequence[str], feature_stores: Sequence[str | Path], pixels: bool = True):
    """Yield ``(features, layer, x_train, y_train, x_test, y_test)``: raw pixels first (unless not ``pixels``),
    then every layer.

    One set at a time: each is read (pixels chunk by chunk into one float32 array) only when the consumer
    asks for the next, after the generator has dropped the previous one, so a consumer that drops its own
    references before asking holds one feature set at a time.
    """
    if len(extractors) != len(feature_stores):
        raise ValueError(f"{len(extractors)} extractors but {len(feature_stores)} feature stores")
    if pixels:
        x_train, y_train = pixel_rows(image_store, "train")
        x_test, y_test = pixel_rows(image_store, "test")
        yield PIXELS, PIXELS, x_train, y_train, x_test, y_test
        del x_train, x_test
    for extractor, store in zip(extractors, feature_stores, strict=True):
        for layer in _check_layers(extractor, store):
            train = load_features(store, layer, "train")
            test = load_features(store, layer, "test")
            yield extractor, layer, train.features, train.labels, test.features, test.labels
            del train, test


def score_feature_set(x_train, y_train, x_test, y_test, n_classes: int, settings, seed: int = 0,
                      threads: int = 1) -> dict[str, dict]:
    """``{classifier: scores}`` of every configured classifier on one feature set, in the settings' order.

    logreg is fitted last, with its StandardScaler standardising ``x_train`` and ``x_test`` in place: lbfgs
    gets the very float32 values the copying pipeline would give it (so the scores do not change), without a
    standardised copy of the set; scikit-learn's lbfgs keeps float32 input in float32 (no float64 copy either).
    Both arrays hold standardised values afterwards.
    """
    names = list(settings["classifiers"])
    scores = {}
    for name in sorted(names, key=lambda n: n == "logreg"):
        scores[name] = fit_and_score(name, x_train, y_train, x_test, y_test, n_classes, settings, seed, threads,
                                     in_place=True)
        log.info("%s: accuracy %.4f (%.1f s)", name, scores[name]["accuracy"], scores[name]["fit_seconds"])
    return {name: scores[name] for name in names}


def classifier_table(image_store, extractors: Sequence[str], feature_stores: Sequence[str | Path],
                     baseline_csv=None, predictions_csv=None, dataset: str = "", settings=None,
                     seed: int = 0, threads: int = 1, pixels: bool = True) -> pd.DataFrame:
    """Every classifier on every feature set (CLASSIFIER_COLUMNS; raw pixels unless not ``pixels``), plus
    baseline and CNN rows.

    Feature sets are read, scored and dropped one at a time (:func:`feature_sets`)."""
    from threadpoolctl import threadpool_limits

    from embedscope.runtime import progress

    settings = _settings(settings)
    data = read_image_index(image_store)
    n_classes = len(data.class_names)
    rows = []
    n_sets = int(pixels) + sum(len(EXTRACTOR_LAYERS[e]) for e in extractors)
    # a bar updated by hand: one wrapping the generator would keep the previous set alive while the next loads
    bar = progress(total=n_sets, desc="feature sets")
    with threadpool_limits(limits=max(1, int(threads))):
        for features, layer, x_train, y_train, x_test, y_test in feature_sets(image_store, extractors,
                                                                              feature_stores, pixels):
            log.info("%s/%s: %d x %d train values", features, layer, *x_train.shape)
            width = int(x_train.shape[1])
            scores = score_feature_set(x_train, y_train, x_test, y_test, n_classes, settings, seed, threads)
            del x_train, x_test  # before the next set is read
            bar.update()
            for name, values in scores.items():
                rows.append({"dataset": dataset, "features": features, "layer": layer, "D": width,
                             "classifier": name, **values})
        bar.close()
        if baseline_csv is not None:
            rows += baseline_rows(image_store, baseline_csv, dataset, n_classes)
        if predictions_csv is not None:
            rows.append(cnn_row(predictions_csv, data, dataset))
    # every row is scored on the whole test split: fitted classifiers, the baseline and the CNN alike
    return add_intervals(pd.DataFrame(rows, columns=CLASSIFIER_COLUMNS), {"accuracy": len(data.indices("test"))})


def evaluate_classifiers(image_store, extractors, feature_stores, baseline_csv, predictions_csv, csv_path, md_path,
                         dataset: str = "", settings=None, seed: int = 0, threads: int = 1,
                         weights: str | None = None, replicate_csvs: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Write classifiers.csv and classifiers.md (the workflow's evaluate_classifiers rule).

    ``replicate_csvs``: the rows of fine-tuning replicates 1, 2, ... (:func:`evaluate_replicate_classifiers`),
    merged beside this run's, replicate 0 (:func:`add_replicates`)."""
    settings = _settings(settings)
    table = classifier_table(image_store, extractors, feature_stores, baseline_csv, predictions_csv or None,
                             dataset, settings, seed, threads)
    table = add_replicates(table, [read_classifiers(path) for path in replicate_csvs], CLASSIFIER_ROW_KEYS)
    data = read_image_index(image_store)
    n_train, n_test = len(data.indices("train")), len(data.indices("test"))
    table = replicate_intervals(table, {"accuracy": n_test})
    notes = [
        f"Fitted on the train split ({n_train} images), scored on the test split ({n_test} images); seed {seed}.",
        f"`pixels`: raw pixels / 255. `logreg`: StandardScaler + lbfgs LogisticRegression "
        f"(max_iter {settings['logreg_max_iter']}); `random_forest`: {settings['random_forest_trees']} trees; "
        f"`knn`: k = {settings['knn_k']}, Euclidean, unscaled.",
        "`class_mean_l1`/`l2`: nearest class-mean image (the report's baseline); `cnn`: the fine-tuned "
        "ResNet-18's own predictions (no fit time: see its training benchmark).",
        "Precision, recall and F1 are macro averages over classes; `fit_seconds` times the fit only.",
        interval_note(f"the {n_test} test images"),
    ]
    if weights is not None and any(e.startswith("resnet18") for e in extractors):
        notes.append(f"ResNet-18 weights: {weights}.")
    notes += replicate_notes(len(replicate_csvs) + 1, seed)
    write_table(table, csv_path, md_path, f"Classifiers on {dataset or 'the dataset'}", notes)
    return table


def evaluate_replicate_classifiers(image_store, feature_store, predictions_csv, csv_path, dataset: str = "",
                                   settings=None, seed: int = 0, threads: int = 1) -> pd.DataFrame:
    """Write one fine-tuning replicate's rows of the classifier table: every classifier on its fine-tuned
    layers and its CNN row, fitted with the same classifier ``seed`` as replicate 0's (only training differs)."""
    settings = _settings(settings)
    table = classifier_table(image_store, [FINETUNED], [feature_store], None, predictions_csv, dataset, settings,
                             seed, threads, pixels=False)
    write_table(table, csv_path)
    return table


# ---- the embedding-quality table ---------------------------------------------------------------------


def map_rows(test, tsne: pd.DataFrame, tsne_csv, store, layer: str) -> np.ndarray:
    """Positions in the test split ``test`` (a FeatureSet) of the t-SNE map's points, in the map's order."""
    position = {int(i): row for row, i in enumerate(test.index)}
    missing = [int(i) for i in tsne["index"] if int(i) not in position]
    if missing:
        raise ArtifactError(f"t-SNE map {tsne_csv}: {len(missing)} indices (e.g. {missing[:3]}) are not in the test "
                         f"split of {store}/{layer}")
    rows = np.array([position[int(i)] for i in tsne["index"]], dtype=np.int64)
    if not np.array_equal(test.labels[rows], tsne["label"].to_numpy()):
        raise ArtifactError(f"t-SNE map {tsne_csv}: 'label' disagrees with {store}/{layer}")
    return rows


def map_quality(features: np.ndarray, embedding: np.ndarray | None, labels: np.ndarray, settings,
                seed: int = 0) -> dict:
    """The map's columns of EMBEDDING_COLUMNS: kNN accuracy on every point; trustworthiness and both
    silhouettes (O(n^2) in time) on a seeded stratified subsample of at most ``max_quality_points``
    (:func:`embedscope.tsne.tsne_subset`; every point when the map is no larger), whose size is ``n_quality``.
    Only the subsample's features are converted to float64. Without an ``embedding`` (a fine-tuning replicate
    that has no map of its own, scored on the points of replicate 0's map) only the feature-space silhouette is
    computed, the 2-D columns are NaN."""
    from embedscope.tsne import tsne_subset

    quality = tsne_subset(labels, settings["max_quality_points"], seed)
    if len(quality) < len(labels):
        log.info("trustworthiness and silhouettes on %d of %d points (metrics.max_quality_points)", len(quality),
                 len(labels))
    sample = np.asarray(features[quality], dtype=np.float64)
    if embedding is None:
        return {"n_quality": len(quality), "trustworthiness": float("nan"), "knn_accuracy_2d": float("nan"),
                "silhouette_features": silhouette(sample, labels[quality]), "silhouette_2d": float("nan")}
    return {
        "n_quality": len(quality),
        "trustworthiness": trustworthiness_score(sample, embedding[quality], settings["trustworthiness_k"]),
        "knn_accuracy_2d": knn_accuracy_loo(embedding, labels, settings["knn_k"]),
        "silhouette_features": silhouette(sample, labels[quality]),
        "silhouette_2d": silhouette(embedding[quality], labels[quality]),
    }


def embedding_row(store, extractor: str, layer: str, tsne_csv, settings=None, dataset: str = "",
                  seed: int = 0, use_map: bool = True) -> dict:
    """One row of EMBEDDING_COLUMNS for one (extractor, layer): the map's metrics on the test split, then the
    class statistics of the train split (read after the map's float64 subsample is dropped).

    Not ``use_map``: the map's points only (the map of another store of the same test split), no 2-D metrics."""
    settings = _settings(settings)
    test = load_features(store, layer, "test")
    tsne = read_tsne(tsne_csv)
    rows = map_rows(test, tsne, tsne_csv, store, layer)
    embedding = tsne[["x", "y"]].to_numpy(dtype=np.float64) if use_map else None
    row = {"dataset": dataset, "extractor": extractor, "layer": layer, "D": int(test.features.shape[1]),
           "n": len(rows), "n_test": len(test.labels),
           **map_quality(test.features[rows], embedding, test.labels[rows], settings, seed)}
    train = load_features(store, layer, "train")
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    statistics = class_statistics(train.features, train.labels, n_classes)
    if np.any(statistics[1] == 0):
        raise ValueError(f"class {int(np.flatnonzero(statistics[1] == 0)[0])} has no training sample, so it has "
                         "no mean")
    row["ncc_accuracy"] = ncc_accuracy(None, None, test.features, test.labels, n_classes, statistics[0])
    row["nc1"] = nc1(train.features, train.labels, n_classes, statistics)
    return row


def embedding_table(extractors, feature_stores, tsne_csvs, dataset: str = "", settings=None,
                    threads: int = 1, seed: int = 0, use_maps: bool = True) -> pd.DataFrame:
    """Rows for every layer of every extractor; ``tsne_csvs`` lists the maps in extractor-then-layer order
    (not ``use_maps``: only their points, see :func:`embedding_row`)."""
    from threadpoolctl import threadpool_limits

    from embedscope.runtime import progress

    pairs = [(e, store, layer) for e, store in zip(extractors, feature_stores, strict=True)
             for layer in _check_layers(e, store)]
    if len(pairs) != len(tsne_csvs):
        raise ValueError(f"{len(pairs)} (extractor, layer) pairs but {len(tsne_csvs)} t-SNE maps")
    rows = []
    with threadpool_limits(limits=max(1, int(threads))):
        for (extractor, store, layer), csv in progress(list(zip(pairs, tsne_csvs, strict=True)), desc="layers"):
            rows.append(embedding_row(store, extractor, layer, csv, settings, dataset, seed, use_maps))
            log.info("%s/%s: %s", extractor, layer, rows[-1])
    return add_intervals(pd.DataFrame(rows, columns=EMBEDDING_COLUMNS),
                         {"knn_accuracy_2d": "n", "ncc_accuracy": "n_test"})


def evaluate_embeddings(extractors, feature_stores, tsne_csvs, csv_path, md_path, dataset: str = "", settings=None,
                        threads: int = 1, weights: str | None = None, seed: int = 0,
                        replicate_csvs: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Write embedding_quality.csv and embedding_quality.md (the workflow's evaluate_embeddings rule).

    ``replicate_csvs``: the fine-tuned rows of replicates 1, 2, ... (:func:`evaluate_replicate_embeddings`),
    merged beside this run's, replicate 0 (:func:`add_replicates`)."""
    settings = _settings(settings)
    table = embedding_table(extractors, feature_stores, tsne_csvs, dataset, settings, threads, seed)
    table = add_replicates(table, [read_embedding_quality(path) for path in replicate_csvs], EMBEDDING_ROW_KEYS)
    table = replicate_intervals(table, {"knn_accuracy_2d": "n", "ncc_accuracy": "n_test"})
    n_quality = sorted({int(v) for v in table["n_quality"]})
    notes = [
        f"`n` points: those of the t-SNE map (its `index` column), the test split or its seeded subset; "
        f"`knn_accuracy_2d` is computed on all of them, `trustworthiness` (k = {settings['trustworthiness_k']}) "
        "and both silhouettes on `n_quality` of them: all, or a seeded stratified subsample of "
        f"metrics.max_quality_points = {settings['max_quality_points']} (seed {seed}) where the map is larger; "
        f"here n_quality = {', '.join(map(str, n_quality)) or 'n/a'}.",
        f"`knn_accuracy_2d`: leave-one-out k-nearest-neighbour accuracy (k = {settings['knn_k']}) in the 2-D map.",
        "`silhouette_features`/`silhouette_2d`: Euclidean silhouette of the class labels in the layer's feature "
        "space / in the 2-D map.",
        "`ncc_accuracy`: nearest class centre in feature space, centres = class means of the train split, "
        "scored on the whole test split (`n_test` images).",
        "`nc1` = trace(S_W pinv(S_B)) / C (Papyan et al. 2020) on the train split's features: S_W the "
        "within-class covariance averaged over classes, S_B the covariance of the class means around the "
        "global mean; near 0 = every class collapsed onto its mean.",
        interval_note("the `n` map points (`knn_accuracy_2d`) or the `n_test` test images (`ncc_accuracy`)"),
    ]
    if weights is not None and any(e.startswith("resnet18") for e in extractors):
        notes.append(f"ResNet-18 weights: {weights}.")
    if replicate_csvs:
        notes += replicate_notes(len(replicate_csvs) + 1, seed)
        notes.append("Replicates 1, 2, ... have no t-SNE maps (figures and maps show replicate 0): their "
                     "`silhouette_features` uses the points of replicate 0's map, and the 2-D columns and their "
                     "mean and sd are empty.")
    write_table(table, csv_path, md_path, f"Embedding quality on {dataset or 'the dataset'}", notes)
    return table


def evaluate_replicate_embeddings(feature_store, tsne_csvs, csv_path, dataset: str = "", settings=None,
                                  threads: int = 1, seed: int = 0) -> pd.DataFrame:
    """Write one fine-tuning replicate's fine-tuned rows of the embedding-quality table: its feature-space
    columns on the points of replicate 0's maps (``tsne_csvs``, one per fine-tuned layer), no 2-D columns."""
    settings = _settings(settings)
    table = embedding_table([FINETUNED], [feature_store], tsne_csvs, dataset, settings, threads, seed,
                            use_maps=False)
    write_table(table, csv_path)
    return table


# ---- fine-tuning replicates --------------------------------------------------------------------------

FINETUNED = "resnet18_finetuned"
CLASSIFIER_ROW_KEYS = ("dataset", "features", "layer", "classifier")
EMBEDDING_ROW_KEYS = ("dataset", "extractor", "layer")
# Columns that describe a row rather than score it: equal in every replicate, kept as they are in the summaries.
DESCRIPTIVE_COLUMNS = ("D", "n", "n_test", "n_quality")


def replicate_notes(replicates: int, seed: int) -> list[str]:
    if replicates < 2:
        return []
    return [f"`replicate`: the fine-tuned rows of {replicates} fine-tuning runs, replicate r trained with seed "
            f"{seed} + r on the same split (0 is the run the figures show), then their `mean` and sample "
            "standard deviation `sd` (ddof = 1) over the replicates; empty on rows that fine-tuning does not "
            "change. A summary is empty where a replicate lacks the value."]


def replicate_intervals(table: pd.DataFrame, counts: Mapping[str, object]) -> pd.DataFrame:
    """The intervals of a table with replicate rows taken anew rather than averaged: a ``mean`` row gets the
    test-set interval at the mean accuracy, an ``sd`` row none (it is not a fraction of the images)."""
    if REPLICATE_COLUMN not in table.columns:
        return table
    return add_intervals(table, counts, where=table[REPLICATE_COLUMN].astype(str) != "sd")


def add_replicates(table: pd.DataFrame, replicates: Sequence[pd.DataFrame], keys: Sequence[str]) -> pd.DataFrame:
    """``table`` (replicate 0) with the rows of ``replicates`` (1, 2, ...; each holds only the replicated rows,
    one per key) beside its rows of the same ``keys``, and their mean and sample sd (ddof = 1).

    Each replicated row of ``table`` becomes rows ``replicate`` = "0", "1", ..., "mean", "sd" in its place; the
    other rows keep their place with an empty ``replicate``. Summaries are taken over every numeric column but
    ``keys`` and DESCRIPTIVE_COLUMNS (which must agree across replicates and are kept); a summary is NaN where
    any replicate's value is. Without ``replicates`` the table is returned unchanged, with no ``replicate``
    column: one replicate's table is the table of a run without replicates.
    """
    if not replicates:
        return table
    keys = list(keys)

    def key_of(row) -> tuple:
        return tuple(str(row[k]) for k in keys)

    def named(key: tuple) -> dict:
        return dict(zip(keys, key, strict=True))

    columns = list(table.columns)
    values = [c for c in columns if c not in keys and c not in DESCRIPTIVE_COLUMNS
              and pd.api.types.is_numeric_dtype(table[c])]
    found: dict[tuple, list] = {}
    for number, part in enumerate(replicates, start=1):
        rows = [row for _, row in part.iterrows()]
        duplicated = {key_of(row) for row in rows if [key_of(r) for r in rows].count(key_of(row)) > 1}
        if duplicated:
            raise ArtifactError(f"replicate {number} has more than one row {named(sorted(duplicated)[0])}")
        for row in rows:
            found.setdefault(key_of(row), []).append(row)
    own = [key_of(row) for _, row in table.iterrows()]
    for key, rows in found.items():
        if len(rows) != len(replicates) or own.count(key) != 1:
            raise ArtifactError(f"row {named(key)}: in {len(rows)} of {len(replicates)} replicates "
                                f"and {own.count(key)} time(s) in replicate 0's table; expected all and once")
    out = []
    for key, (_, row) in zip(own, table.iterrows(), strict=True):
        if key not in found:
            out.append({**row.to_dict(), REPLICATE_COLUMN: ""})
            continue
        group = [row, *found[key]]
        for column in DESCRIPTIVE_COLUMNS:
            if column in columns and len({str(r[column]) for r in group}) > 1:
                raise ArtifactError(f"row {named(key)}: {column} differs between replicates")
        out += [{**{c: r[c] for c in columns}, REPLICATE_COLUMN: str(i)} for i, r in enumerate(group)]
        scores = pd.DataFrame([[r[c] for c in values] for r in group], columns=values, dtype=np.float64)
        fixed = {c: row[c] for c in columns if c not in values}
        out.append({**fixed, **scores.mean(skipna=False).to_dict(), REPLICATE_COLUMN: "mean"})
        out.append({**fixed, **scores.std(ddof=1, skipna=False).to_dict(), REPLICATE_COLUMN: "sd"})
    at = max(columns.index(k) for k in keys) + 1
    return pd.DataFrame(out, columns=[*columns[:at], REPLICATE_COLUMN, *columns[at:]])
