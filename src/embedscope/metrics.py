"""Tables that test the report's claims.

* Classifier table (``classifiers.csv``/``.md``): raw pixels and every (extractor, layer) feature set, fitted on
  the train split and scored on the test split with standardised logistic regression, a random forest and
  k-nearest neighbours; plus the nearest-class-mean baseline and the fine-tuned CNN's own predictions.
* Embedding-quality table (``embedding_quality.csv``/``.md``) per (extractor, layer): t-SNE trustworthiness,
  leave-one-out kNN accuracy in the 2-D map, silhouettes in feature space and in 2-D, nearest-class-centre
  accuracy, and the within-class variability collapse NC1 of Papyan et al. (2020).

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
    ArtifactError,
    prediction_class_count,
    read_baseline,
    read_predictions,
    read_tsne,
    write_table,
)
from embedscope.baseline import class_mean_images, nearest_class_mean
from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.store import StoreError, load_features, read_image_store

log = logging.getLogger("embedscope.metrics")

CLASSIFIERS = ("logreg", "random_forest", "knn")
PIXELS = "pixels"  # the `features` and `layer` value of raw-pixel rows
DEFAULTS = {"classifiers": list(CLASSIFIERS), "knn_k": 10, "trustworthiness_k": 10, "random_forest_trees": 100,
            "logreg_max_iter": 200}


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


def make_classifier(name: str, settings: Mapping[str, Any], seed: int, threads: int):
    """An unfitted scikit-learn estimator for one of CLASSIFIERS."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    settings = _settings(settings)
    if name == "logreg":
        # lbfgs, multinomial; bounded iterations keep the widest layer (3,969 scattering values) to seconds.
        return make_pipeline(StandardScaler(), LogisticRegression(
            max_iter=int(settings["logreg_max_iter"]), random_state=seed))
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=int(settings["random_forest_trees"]), n_jobs=threads,
                                      random_state=seed)
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=int(settings["knn_k"]), n_jobs=threads)
    raise ValueError(f"metrics.classifiers: unknown classifier {name!r}; expected one of {list(CLASSIFIERS)}")


def fit_and_score(name, x_train, y_train, x_test, y_test, n_classes, settings, seed=0, threads=1) -> dict:
    """Fit one classifier on the train split, score it on the test split; ``fit_seconds`` times the fit."""
    from sklearn.exceptions import ConvergenceWarning

    model = make_classifier(name, settings, seed, threads)
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


def trustworthiness_score(features: np.ndarray, embedding: np.ndarray, k: int) -> float:
    """scikit-learn's trustworthiness of ``embedding`` w.r.t. ``features`` (k clamped below n/2)."""
    from sklearn.manifold import trustworthiness

    n = len(features)
    k_used = min(int(k), (n - 1) // 2)
    if k_used < 1:
        raise ValueError(f"trustworthiness needs at least 3 points, got {n}")
    if k_used != k:
        log.warning("metrics.trustworthiness_k=%s is not below n/2 for %s points; using %s", k, n, k_used)
    return float(trustworthiness(np.asarray(features, np.float64), np.asarray(embedding, np.float64),
                                 n_neighbors=k_used))


def knn_accuracy_loo(points: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour majority vote (ties -> smallest label).

    Each point is classified by its ``k`` nearest *other* points, exactly as scikit-learn's
    ``KNeighborsClassifier(k)`` under ``LeaveOneOut`` would (uniform weights, Euclidean).
    """
    from sklearn.neighbors import NearestNeighbors

    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(points)
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"kNN accuracy needs at least 2 points, got {n}")
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)
    correct = 0
    n_classes = int(labels.max()) + 1
    for i, row in enumerate(neighbours):
        others = row[row != i][:k]  # drop the point itself (wherever duplicates put it)
        votes = np.bincount(labels[others], minlength=n_classes)
        correct += int(np.argmax(votes) == labels[i])
    return correct / n


def silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """Euclidean silhouette score; NaN when it is undefined (fewer than 2 classes, or every point a class)."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return float("nan")
    return float(silhouette_score(np.asarray(features, np.float64), labels, metric="euclidean"))


def class_centres(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class means of feature vectors (C, D): the baseline's class-mean images, in feature space."""
    return class_mean_images(np.asarray(features), labels, n_classes)


def ncc_accuracy(x_train, y_train, x_test, y_test, n_classes: int) -> float:
    """Nearest-class-centre accuracy: centres (means) from the train split, Euclidean, applied to test."""
    centres = class_centres(x_train, y_train, n_classes)
    x = np.asarray(x_test, dtype=np.float64)
    dist = (x**2).sum(1)[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None, :]
    return float(np.mean(np.argmin(dist, axis=1) == np.asarray(y_test)))


def nc1(features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> float:
    """Within-class variability collapse NC1 = trace(S_W pinv(S_B)) / C (Papyan, Han & Donoho 2020).

    S_W: within-class covariance, the mean over classes of each class's covariance around its mean
    (1/n_c normalisation); S_B: covariance of the C class means around the global mean of all samples,
    (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T. S_B has rank <= C-1, so pinv(S_B) is taken through the thin
    SVD of the centred means and no D x D matrix is formed (the widest layer has D = 3,969); singular values
    below numpy's pinv cut-off (max(D, D) * eps relative to the largest) count as zero.
    """
    h = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    present = [c for c in range(n_classes) if np.any(labels == c)]
    if len(present) < 2:
        raise ValueError("NC1 needs samples of at least two classes")
    means = np.stack([h[labels == c].mean(axis=0) for c in present])  # (C, D)
    centred = means - h.mean(axis=0)
    u, s, _ = np.linalg.svd(centred.T, full_matrices=False)  # centred.T = U diag(s) V^T, U (D, C)
    eig = s**2 / len(present)  # eigenvalues of S_B
    keep = eig > eig.max() * h.shape[1] * np.finfo(np.float64).eps
    if eig.max() <= 0 or not np.any(keep):
        return float("inf")
    u, eig = u[:, keep], eig[keep]
    # trace(S_W U diag(1/eig) U^T) = sum_j (u_j^T S_W u_j) / eig_j, with u_j^T S_W u_j from projected residuals.
    projected_sw = np.zeros(len(eig))
    for index, c in enumerate(present):
        z = (h[labels == c] - means[index]) @ u  # (n_c, r)
        projected_sw += (z**2).mean(axis=0)
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


def baseline_rows(data, baseline_csv: str | Path, dataset: str) -> list[dict]:
    """Nearest-class-mean rows (one per distance in the baseline's metrics.csv), with precision and recall.

    Recomputed from the image store with embedscope.baseline, and checked against the baseline's own
    accuracy so the table cannot silently disagree with it.
    """
    path = Path(baseline_csv)
    table = read_baseline(path)
    x_train, y_train, _ = data.subset("train")
    x_test, y_test, _ = data.subset("test")
    n_classes = len(data.class_names)
    start = time.perf_counter()
    means = class_mean_images(x_train, y_train, n_classes)
    seconds = time.perf_counter() - start
    rows = []
    for distance, reported in zip(table["distance"], table["accuracy"], strict=True):
        pred = nearest_class_mean(x_test, means, str(distance))
        scores = macro_scores(y_test, pred, n_classes)
        if abs(scores["accuracy"] - float(reported)) > 1e-9:
            raise ArtifactError(f"baseline metrics {path}: {distance} accuracy {reported} but the image store gives "
                             f"{scores['accuracy']}; is the baseline stale?")
        rows.append({"dataset": dataset, "features": PIXELS, "layer": PIXELS,
                     "D": int(np.prod(x_train.shape[1:])), "classifier": f"class_mean_{distance}",
                     **scores, "fit_seconds": seconds})
    return rows


def cnn_row(predictions_csv: str | Path, data, dataset: str) -> dict:
    """The fine-tuned CNN's own test predictions (predictions.csv), checked against the image store."""
    path = Path(predictions_csv)
    table = read_predictions(path)
    _, y_test, test_index = data.subset("test")
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


def feature_sets(data, extractors: Sequence[str], feature_stores: Sequence[str | Path]):
    """Yield ``(features, layer, x_train, y_train, x_test, y_test)``: raw pixels first, then every layer."""
    x_train, y_train, _ = data.subset("train")
    x_test, y_test, _ = data.subset("test")
    yield PIXELS, PIXELS, pixel_features(x_train), y_train, pixel_features(x_test), y_test
    if len(extractors) != len(feature_stores):
        raise ValueError(f"{len(extractors)} extractors but {len(feature_stores)} feature stores")
    for extractor, store in zip(extractors, feature_stores, strict=True):
        for layer in _check_layers(extractor, store):
            train = load_features(store, layer, "train")
            test = load_features(store, layer, "test")
            yield extractor, layer, train.features, train.labels, test.features, test.labels


def classifier_table(image_store, extractors: Sequence[str], feature_stores: Sequence[str | Path],
                     baseline_csv=None, predictions_csv=None, dataset: str = "", settings=None,
                     seed: int = 0, threads: int = 1) -> pd.DataFrame:
    """Every classifier on every feature set (CLASSIFIER_COLUMNS), plus baseline and CNN rows."""
    from threadpoolctl import threadpool_limits

    from embedscope.runtime import progress

    settings = _settings(settings)
    data = read_image_store(image_store)
    n_classes = len(data.class_names)
    rows = []
    with threadpool_limits(limits=max(1, int(threads))):
        sets = list(feature_sets(data, extractors, feature_stores))
        for features, layer, x_train, y_train, x_test, y_test in progress(sets, desc="feature sets"):
            for name in settings["classifiers"]:
                scores = fit_and_score(name, x_train, y_train, x_test, y_test, n_classes, settings, seed, threads)
                log.info("%s/%s %s: accuracy %.4f (%.1f s)", features, layer, name, scores["accuracy"],
                         scores["fit_seconds"])
                rows.append({"dataset": dataset, "features": features, "layer": layer, "D": int(x_train.shape[1]),
                             "classifier": name, **scores})
        if baseline_csv is not None:
            rows += baseline_rows(data, baseline_csv, dataset)
        if predictions_csv is not None:
            rows.append(cnn_row(predictions_csv, data, dataset))
    return pd.DataFrame(rows, columns=CLASSIFIER_COLUMNS)


def evaluate_classifiers(image_store, extractors, feature_stores, baseline_csv, predictions_csv, csv_path, md_path,
                         dataset: str = "", settings=None, seed: int = 0, threads: int = 1,
                         weights: str | None = None) -> pd.DataFrame:
    """Write classifiers.csv and classifiers.md (the workflow's evaluate_classifiers rule)."""
    settings = _settings(settings)
    table = classifier_table(image_store, extractors, feature_stores, baseline_csv, predictions_csv or None,
                             dataset, settings, seed, threads)
    data = read_image_store(image_store)
    n_train, n_test = int(np.sum(data.split == 0)), int(np.sum(data.split == 1))
    notes = [
        f"Fitted on the train split ({n_train} images), scored on the test split ({n_test} images); seed {seed}.",
        f"`pixels`: raw pixels / 255. `logreg`: StandardScaler + lbfgs LogisticRegression "
        f"(max_iter {settings['logreg_max_iter']}); `random_forest`: {settings['random_forest_trees']} trees; "
        f"`knn`: k = {settings['knn_k']}, Euclidean, unscaled.",
        "`class_mean_l1`/`l2`: nearest class-mean image (the report's baseline); `cnn`: the fine-tuned "
        "ResNet-18's own predictions (no fit time: see its training benchmark).",
        "Precision, recall and F1 are macro averages over classes; `fit_seconds` times the fit only.",
    ]
    if weights is not None and any(e.startswith("resnet18") for e in extractors):
        notes.append(f"ResNet-18 weights: {weights}.")
    write_table(table, csv_path, md_path, f"Classifiers on {dataset or 'the dataset'}", notes)
    return table


# ---- the embedding-quality table ---------------------------------------------------------------------


def embedding_row(store, extractor: str, layer: str, tsne_csv, settings=None, dataset: str = "") -> dict:
    """One row of EMBEDDING_COLUMNS for one (extractor, layer)."""
    settings = _settings(settings)
    train = load_features(store, layer, "train")
    test = load_features(store, layer, "test")
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    tsne = read_tsne(tsne_csv)
    position = {int(i): row for row, i in enumerate(test.index)}
    missing = [int(i) for i in tsne["index"] if int(i) not in position]
    if missing:
        raise ArtifactError(f"t-SNE map {tsne_csv}: {len(missing)} indices (e.g. {missing[:3]}) are not in the test "
                         f"split of {store}/{layer}")
    rows = np.array([position[int(i)] for i in tsne["index"]])
    features = test.features[rows]
    labels = test.labels[rows]
    if not np.array_equal(labels, tsne["label"].to_numpy()):
        raise ArtifactError(f"t-SNE map {tsne_csv}: 'label' disagrees with {store}/{layer}")
    embedding = tsne[["x", "y"]].to_numpy(dtype=np.float64)
    return {
        "dataset": dataset, "extractor": extractor, "layer": layer, "D": int(features.shape[1]),
        "n": len(features),
        "trustworthiness": trustworthiness_score(features, embedding, settings["trustworthiness_k"]),
        "knn_accuracy_2d": knn_accuracy_loo(embedding, labels, settings["knn_k"]),
        "silhouette_features": silhouette(features, labels),
        "silhouette_2d": silhouette(embedding, labels),
        "ncc_accuracy": ncc_accuracy(train.features, train.labels, test.features, test.labels, n_classes),
        "nc1": nc1(train.features, train.labels, n_classes),
    }


def embedding_table(extractors, feature_stores, tsne_csvs, dataset: str = "", settings=None,
                    threads: int = 1) -> pd.DataFrame:
    """Rows for every layer of every extractor; ``tsne_csvs`` lists the maps in extractor-then-layer order."""
    from threadpoolctl import threadpool_limits

    from embedscope.runtime import progress

    pairs = [(e, store, layer) for e, store in zip(extractors, feature_stores, strict=True)
             for layer in _check_layers(e, store)]
    if len(pairs) != len(tsne_csvs):
        raise ValueError(f"{len(pairs)} (extractor, layer) pairs but {len(tsne_csvs)} t-SNE maps")
    rows = []
    with threadpool_limits(limits=max(1, int(threads))):
        for (extractor, store, layer), csv in progress(list(zip(pairs, tsne_csvs, strict=True)), desc="layers"):
            rows.append(embedding_row(store, extractor, layer, csv, settings, dataset))
            log.info("%s/%s: %s", extractor, layer, rows[-1])
    return pd.DataFrame(rows, columns=EMBEDDING_COLUMNS)


def evaluate_embeddings(extractors, feature_stores, tsne_csvs, csv_path, md_path, dataset: str = "", settings=None,
                        threads: int = 1, weights: str | None = None) -> pd.DataFrame:
    """Write embedding_quality.csv and embedding_quality.md (the workflow's evaluate_embeddings rule)."""
    settings = _settings(settings)
    table = embedding_table(extractors, feature_stores, tsne_csvs, dataset, settings, threads)
    notes = [
        f"`n` points: those of the t-SNE map (its `index` column), the test split or its seeded subset; "
        f"`trustworthiness` (k = {settings['trustworthiness_k']}), `knn_accuracy_2d` and both silhouettes are "
        "computed on them.",
        f"`knn_accuracy_2d`: leave-one-out k-nearest-neighbour accuracy (k = {settings['knn_k']}) in the 2-D map.",
        "`silhouette_features`/`silhouette_2d`: Euclidean silhouette of the class labels in the layer's feature "
        "space / in the 2-D map.",
        "`ncc_accuracy`: nearest class centre in feature space, centres = class means of the train split, "
        "scored on the whole test split.",
        "`nc1` = trace(S_W pinv(S_B)) / C (Papyan et al. 2020) on the train split's features: S_W the "
        "within-class covariance averaged over classes, S_B the covariance of the class means around the "
        "global mean; near 0 = every class collapsed onto its mean.",
    ]
    if weights is not None and any(e.startswith("resnet18") for e in extractors):
        notes.append(f"ResNet-18 weights: {weights}.")
    write_table(table, csv_path, md_path, f"Embedding quality on {dataset or 'the dataset'}", notes)
    return table
