"""Metric tables: each metric against a hand computation or scikit-learn, and the tables' rows and columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.manifold import trustworthiness
from sklearn.metrics import silhouette_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from embedscope import metrics
from embedscope.artifacts import (
    CLASSIFIER_COLUMNS,
    EMBEDDING_COLUMNS,
    ArtifactError,
    read_baseline,
    read_classifiers,
    read_embedding_quality,
    read_tsne,
    write_predictions,
    write_table,
    write_tsne,
)
from embedscope.baseline import compute_baseline
from embedscope.intervals import wilson_interval
from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.store import FeatureStoreWriter, write_image_store

SETTINGS = {"classifiers": ["logreg", "random_forest", "knn"], "knn_k": 3, "trustworthiness_k": 3,
            "random_forest_trees": 5, "logreg_max_iter": 100}


# ---- single metrics ------------------------------------------------------------------------------


def test_macro_scores_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    scores = metrics.macro_scores(y_true, y_pred, 3)
    # per class precision: 0: 1/2, 1: 2/3, 2: 1/1; recall: 1/2, 1, 1/2
    precision = np.mean([1 / 2, 2 / 3, 1])
    recall = np.mean([1 / 2, 1, 1 / 2])
    f1 = np.mean([2 * p * r / (p + r) for p, r in [(1 / 2, 1 / 2), (2 / 3, 1), (1, 1 / 2)]])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["macro_precision"] == pytest.approx(precision)
    assert scores["macro_recall"] == pytest.approx(recall)
    assert scores["macro_f1"] == pytest.approx(f1)
    # a class never predicted nor present still counts (as zero) in the macro average
    assert metrics.macro_scores(np.array([0, 1]), np.array([0, 1]), 3)["macro_recall"] == pytest.approx(2 / 3)


def test_knn_loo_matches_sklearn_leave_one_out():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (20, 2)), rng.normal(1.5, 1, (20, 2)), rng.normal(3, 1, (20, 2))])
    labels = np.repeat([0, 1, 2], 20)
    for k in (1, 4, 5):
        pred = cross_val_predict(KNeighborsClassifier(n_neighbors=k), points, labels, cv=LeaveOneOut())
        assert metrics.knn_accuracy_loo(points, labels, k) == pytest.approx(np.mean(pred == labels))


def test_knn_loo_excludes_the_point_itself():
    # points 0 and 1 coincide but differ in class: each must be judged by the other, never by itself,
    # even where the neighbour search lists the duplicate before the point itself
    points = np.array([[0.0, 0], [0, 0], [5, 5], [5, 5.1]])
    labels = np.array([0, 1, 1, 1])
    assert metrics.knn_accuracy_loo(points, labels, 1) == pytest.approx(2 / 4)
    # by hand, k=3 on a line: 0 -> {1,2,3} = 1,0,0 -> 0 right; 1 -> {0,2,3} -> 0 wrong; 2 -> {1,3,0} ...
    line = np.array([[0.0], [1], [2], [3], [10]])
    line_labels = np.array([0, 1, 0, 0, 1])
    # 0: {1,2,3} -> labels 1,0,0 -> 0 ok; 1: {0,2,3} -> 0 wrong; 2: {1,3,0} -> 1,0,0 -> 0 ok;
    # 3: {2,1,0} -> 0,1,0 -> 0 ok; 4: {3,2,1} -> 0,0,1 -> 0 wrong
    assert metrics.knn_accuracy_loo(line, line_labels, 3) == pytest.approx(3 / 5)


def test_trustworthiness_is_sklearns_and_one_for_an_isometry():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = x[:, :2]
    assert metrics.trustworthiness_score(x, y, 5) == pytest.approx(trustworthiness(x, y, n_neighbors=5), rel=1e-12)
    rotated = x[:, :2] @ np.array([[0.0, -1.0], [1.0, 0.0]]) * 3 + 7
    assert metrics.trustworthiness_score(x[:, :2], rotated, 5) == pytest.approx(1.0)
    # k is clamped below n/2 instead of failing: 8 points, k = 3
    clamped = trustworthiness(x[:8], y[:8], n_neighbors=3)
    assert metrics.trustworthiness_score(x[:8], y[:8], 10) == pytest.approx(clamped, rel=1e-12)


def test_silhouette_by_hand():
    points = np.array([[0.0], [1.0], [5.0], [6.0]])
    labels = np.array([0, 0, 1, 1])
    # point 0: a = 1, b = mean(5, 6) = 5.5 -> s = 1 - 1/5.5; point 1: a = 1, b = 4.5; symmetric for class 1
    expected = np.mean([1 - 1 / 5.5, 1 - 1 / 4.5, 1 - 1 / 4.5, 1 - 1 / 5.5])
    assert metrics.silhouette(points, labels) == pytest.approx(expected)
    assert metrics.silhouette(points, labels) == pytest.approx(silhouette_score(points, labels))
    assert np.isnan(metrics.silhouette(points, np.zeros(4, int)))


def test_ncc_accuracy_by_hand():
    x_train = np.array([[0.0, 0], [2, 0], [10, 10], [12, 10]])  # centres (1, 0) and (11, 10)
    y_train = np.array([0, 0, 1, 1])
    x_test = np.array([[1.0, 1], [5, 4], [7, 6], [11, 11]])  # (5,4) is nearer centre 0, (7,6) nearer 1
    y_test = np.array([0, 1, 1, 0])
    assert metrics.ncc_accuracy(x_train, y_train, x_test, y_test, 2) == pytest.approx(2 / 4)


def _nc1_direct(h, labels):
    classes = np.unique(labels)
    mu_g = h.mean(axis=0)
    means = np.stack([h[labels == c].mean(axis=0) for c in classes])
    s_w = np.mean([np.cov(h[labels == c].T, bias=True).reshape(h.shape[1], h.shape[1]) for c in classes], axis=0)
    s_b = (means - mu_g).T @ (means - mu_g) / len(classes)
    return np.trace(s_w @ np.linalg.pinv(s_b)) / len(classes)


@pytest.mark.parametrize("dim", [1, 3, 12])
def test_nc1_matches_the_direct_formula(dim):
    rng = np.random.default_rng(dim)
    labels = np.repeat(np.arange(4), [10, 12, 9, 11])  # unbalanced on purpose
    h = rng.normal(size=(len(labels), dim)) + rng.normal(scale=2, size=(4, dim))[labels]
    assert metrics.nc1(h, labels, 4) == pytest.approx(_nc1_direct(h, labels), rel=1e-8)


def test_nc1_is_zero_when_collapsed_and_large_when_overlapping():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    means = rng.normal(scale=5, size=(5, 16))
    assert metrics.nc1(means[labels], labels, 5) == pytest.approx(0, abs=1e-12)
    separated = means[labels] + rng.normal(scale=0.1, size=(200, 16))
    overlapping = rng.normal(size=(200, 16))  # every class from the same distribution
    # the values for these seeded draws (through a pseudo-inverse, hence rel 1e-6): tight clusters give nearly 0,
    # classes drawn from one and the same distribution a large value
    assert metrics.nc1(separated, labels, 5) == pytest.approx(1.1899874387104698e-04, rel=1e-6)
    assert metrics.nc1(overlapping, labels, 5) == pytest.approx(9.088824577536986, rel=1e-6)


# ---- tables on tiny stores -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An image store, two feature stores, a baseline, predictions and t-SNE maps in the real formats."""
    root = tmp_path_factory.mktemp("metrics")
    rng = np.random.default_rng(0)
    n_classes, per_class = 3, 16
    labels = np.repeat(np.arange(n_classes), per_class)
    templates = rng.integers(0, 256, size=(n_classes, 8, 8, 1))
    noise = rng.integers(-40, 41, size=(len(labels), 8, 8, 1))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    split = np.tile([0, 0, 1, 0], len(labels) // 4).astype(np.uint8)  # 36 train, 12 test
    order = rng.permutation(len(labels))
    images, labels, split = images[order], labels[order], split[order]
    data = root / "data.zarr"
    write_image_store(data, images, labels, split, ["a", "b", "c"])
    index = np.arange(len(labels))
    stores = {}
    for extractor in ("scattering", "resnet18_finetuned"):
        stores[extractor] = root / f"{extractor}.zarr"
        with FeatureStoreWriter(stores[extractor], labels, split, index, {"extractor": extractor}) as writer:
            for depth, layer in enumerate(EXTRACTOR_LAYERS[extractor]):
                centres = rng.normal(scale=1 + depth, size=(n_classes, 4 + depth))
                values = centres[labels] + rng.normal(size=(len(labels), 4 + depth))
                writer.write(layer, 0, values[:20])
                writer.write(layer, 20, values[20:])
    baseline = root / "baseline.csv"
    compute_baseline(data, baseline, root / "class_means.png", dataset="toy")
    test_index = np.flatnonzero(split == 1)
    pred = labels[test_index].copy()
    pred[:3] = (pred[:3] + 1) % n_classes
    prob = np.full((len(test_index), n_classes), 0.1)
    prob[np.arange(len(test_index)), pred] = 0.8
    predictions = root / "predictions.csv"
    write_predictions(predictions, test_index, labels[test_index], prob, np.full(len(test_index), 0.2))
    subset = test_index[:10]  # a t-SNE subset of the test split, in its own order
    tsne = []
    for extractor in stores:
        for layer in EXTRACTOR_LAYERS[extractor]:
            path = root / "tsne" / extractor / f"{layer}.csv"
            points = subset[::-1]
            xy = rng.normal(size=(len(points), 2)) + labels[points, None] * 3
            write_tsne(path, pd.DataFrame({"index": points, "x": xy[:, 0], "y": xy[:, 1], "label": labels[points]}))
            tsne.append(path)
    return {"root": root, "data": data, "extractors": list(stores), "stores": list(stores.values()),
            "baseline": baseline, "predictions": predictions, "tsne": tsne, "labels": labels, "split": split,
            "test_index": test_index, "prob": prob}


def test_classifier_table_has_every_row_and_column(tiny_run):
    r = tiny_run
    csv, md = r["root"] / "out" / "classifiers.csv", r["root"] / "out" / "classifiers.md"
    table = metrics.evaluate_classifiers(r["data"], r["extractors"], r["stores"], r["baseline"], r["predictions"],
                                         csv, md, dataset="toy", settings=SETTINGS, seed=0, threads=1,
                                         weights="random")
    assert list(table.columns) == list(CLASSIFIER_COLUMNS)
    assert list(read_classifiers(csv).columns) == list(CLASSIFIER_COLUMNS)
    sets = [("pixels", "pixels"), ("scattering", "scattering")] + [
        ("resnet18_finetuned", layer) for layer in EXTRACTOR_LAYERS["resnet18_finetuned"]]
    expected = {(f, layer, c) for f, layer in sets for c in SETTINGS["classifiers"]}
    expected |= {("pixels", "pixels", "class_mean_l1"), ("pixels", "pixels", "class_mean_l2"),
                 ("resnet18_finetuned", "output", "cnn")}
    got = list(zip(table["features"], table["layer"], table["classifier"], strict=True))
    assert len(got) == len(expected) and set(got) == expected
    assert (table["dataset"] == "toy").all()
    dims = dict(zip(zip(table["features"], table["layer"], strict=True), table["D"], strict=True))
    assert dims[("pixels", "pixels")] == 64 and dims[("scattering", "scattering")] == 4
    assert dims[("resnet18_finetuned", "softmax")] == 7 and dims[("resnet18_finetuned", "output")] == 3
    scores = table[["accuracy", "macro_precision", "macro_recall", "macro_f1"]]
    assert ((scores >= 0) & (scores <= 1)).all().all()
    baseline = read_baseline(r["baseline"]).set_index("distance")["accuracy"]
    for distance in ("l1", "l2"):
        row = table[table["classifier"] == f"class_mean_{distance}"].iloc[0]
        assert row["accuracy"] == pytest.approx(baseline[distance])
    cnn = table[table["classifier"] == "cnn"].iloc[0]
    assert cnn["accuracy"] == pytest.approx(9 / 12)
    # every row's interval is over the 12 test images: 9 of 12 for the CNN
    assert (cnn["accuracy_low"], cnn["accuracy_high"]) == pytest.approx(wilson_interval(9, 12))
    low, high = wilson_interval(table["accuracy"].to_numpy() * 12, 12)
    assert np.allclose(table["accuracy_low"], low) and np.allclose(table["accuracy_high"], high)
    text = md.read_text()
    assert "| features" in text and "class_mean_l1" in text and "ResNet-18 weights: random" in text
    low, high = wilson_interval(9, 12)
    assert f"| 0.7500 [{low:.4f}, {high:.4f}] |" in text and "Wilson score interval over the 12 test images" in text


def test_classifier_table_is_seeded_and_matches_sklearn(tiny_run):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from embedscope.store import load_features

    r = tiny_run
    args = (r["data"], r["extractors"][:1], r["stores"][:1])
    first = metrics.classifier_table(*args, dataset="toy", settings=SETTINGS, seed=3, threads=1)
    second = metrics.classifier_table(*args, dataset="toy", settings=SETTINGS, seed=3, threads=2)
    pd.testing.assert_frame_equal(first.drop(columns="fit_seconds"), second.drop(columns="fit_seconds"))
    train = load_features(r["stores"][0], "scattering", "train")
    test = load_features(r["stores"][0], "scattering", "test")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=100, random_state=3))
    accuracy = np.mean(model.fit(train.features, train.labels).predict(test.features) == test.labels)
    row = first[(first["features"] == "scattering") & (first["classifier"] == "logreg")].iloc[0]
    assert row["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("rows_per_block", [1, 7, 1000])
def test_blocked_standard_scaler_equals_sklearn_to_the_last_bit(monkeypatch, rows_per_block):
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((300, 40)) * 50 + rng.uniform(-1e3, 1e3, 40)).astype(np.float32)
    x[:, 3] = 7.25  # constant: a scale of 1, as scikit-learn gives it
    monkeypatch.setattr(metrics, "BLOCK_BYTES", 8 * 40 * rows_per_block)
    ours, theirs = metrics.blocked_standard_scaler().fit(x), StandardScaler().fit(x)
    for name in ("mean_", "var_", "scale_"):
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.n_samples_seen_ == theirs.n_samples_seen_ == 300 and ours.scale_[3] == 1.0
    assert np.array_equal(ours.transform(x), theirs.transform(x))
    in_place = x.copy()
    metrics.blocked_standard_scaler(copy=False).fit(in_place).transform(in_place)
    assert np.array_equal(in_place, theirs.transform(x))
    x[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.blocked_standard_scaler().fit(x)


def test_stale_baseline_and_bad_predictions_are_refused(tiny_run, tmp_path):
    r = tiny_run
    stale = tmp_path / "baseline.csv"
    write_table(read_baseline(r["baseline"]).assign(accuracy=0.123), stale)
    with pytest.raises(ArtifactError, match="stale"):
        metrics.classifier_table(r["data"], [], [], stale, settings={**SETTINGS, "classifiers": []})
    bad = tmp_path / "predictions.csv"
    index = r["test_index"][1:]
    write_predictions(bad, index, r["labels"][index], r["prob"][1:], np.full(len(index), 0.2))
    with pytest.raises(ArtifactError, match="predictions.csv: 'index' is not the test split"):
        metrics.classifier_table(r["data"], [], [], None, bad, settings={**SETTINGS, "classifiers": []})


def test_embedding_table_has_every_row_and_matches_direct_computation(tiny_run):
    from embedscope.store import load_features

    r = tiny_run
    csv, md = r["root"] / "out" / "embedding_quality.csv", r["root"] / "out" / "embedding_quality.md"
    table = metrics.evaluate_embeddings(r["extractors"], r["stores"], r["tsne"], csv, md, dataset="toy",
                                        settings=SETTINGS)
    assert list(table.columns) == list(EMBEDDING_COLUMNS)
    assert list(read_embedding_quality(csv).columns) == list(EMBEDDING_COLUMNS)
    pairs = [(e, layer) for e in r["extractors"] for layer in EXTRACTOR_LAYERS[e]]
    assert list(zip(table["extractor"], table["layer"], strict=True)) == pairs
    assert (table["n"] == 10).all()
    row = table[table["layer"] == "head_pool"].iloc[0]
    tsne = read_tsne(r["tsne"][pairs.index(("resnet18_finetuned", "head_pool"))])
    store = r["stores"][1]
    test = load_features(store, "head_pool", "test")
    feats = test.features[[list(test.index).index(i) for i in tsne["index"]]]
    xy = tsne[["x", "y"]].to_numpy()
    assert row["D"] == 5
    assert row["trustworthiness"] == pytest.approx(trustworthiness(feats, xy, n_neighbors=3))
    assert row["silhouette_features"] == pytest.approx(silhouette_score(feats, tsne["label"]))
    assert row["silhouette_2d"] == pytest.approx(silhouette_score(xy, tsne["label"]))
    pred = cross_val_predict(KNeighborsClassifier(3), xy, tsne["label"], cv=LeaveOneOut())
    assert row["knn_accuracy_2d"] == pytest.approx(np.mean(pred == tsne["label"]))
    train = load_features(store, "head_pool", "train")
    assert row["nc1"] == pytest.approx(_nc1_direct(train.features.astype(np.float64), train.labels))
    assert "leave-one-out" in md.read_text()
    # intervals: the 2-D kNN accuracy over the map's 10 points, the nearest-class-centre one over the 12 test images
    assert len(test.labels) == 12 and (table["n_test"] == 12).all()
    assert (row["knn_accuracy_2d_low"], row["knn_accuracy_2d_high"]) == pytest.approx(
        wilson_interval(row["knn_accuracy_2d"] * 10, 10))
    assert (row["ncc_accuracy_low"], row["ncc_accuracy_high"]) == pytest.approx(
        wilson_interval(row["ncc_accuracy"] * 12, 12))
    assert np.allclose(row["ncc_accuracy"] * 12, round(row["ncc_accuracy"] * 12))  # a whole number of images


def test_tsne_points_outside_the_test_split_are_refused(tiny_run, tmp_path):
    r = tiny_run
    bad = tmp_path / "scattering.csv"
    train_index = np.flatnonzero(r["split"] == 0)[:5]
    write_tsne(bad, pd.DataFrame({"index": train_index, "x": 0.0, "y": 0.0, "label": r["labels"][train_index]}))
    with pytest.raises(ArtifactError, match="scattering.csv: 5 indices .* are not in the test split"):
        metrics.embedding_table(["scattering"], r["stores"][:1], [bad], settings=SETTINGS)



# ---- bounded memory: blocks, subsamples, one feature set at a time ------------------------------------


def _knn_loo_loop(points, labels, k):
    """The former definition, point by point: drop the point itself from its k+1 neighbours, majority vote."""
    from sklearn.neighbors import NearestNeighbors

    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)
    correct = 0
    for i, row in enumerate(neighbours):
        votes = np.bincount(labels[row[row != i][:k]], minlength=int(labels.max()) + 1)
        correct += int(np.argmax(votes) == labels[i])
    return correct / len(points)


def test_vectorised_knn_equals_the_loop_with_ties_and_duplicates():
    # ties: point 0's two neighbours vote 1 and 2 -> smallest label 1; four copies of one point (more than
    # k + 1 = 3) push some points out of their own neighbour list
    points = np.array([[0.0, 0], [1, 0], [-1, 0], [5, 5], [5, 5], [5, 5], [5, 5], [9, 9], [9, 9.5], [20, 0]])
    labels = np.array([0, 1, 2, 0, 1, 1, 2, 2, 0, 1])
    for k in (1, 2, 3, 5):
        assert metrics.knn_accuracy_loo(points, labels, k) == _knn_loo_loop(points, labels, k)
    # k = 2 on the first three points alone: 0 -> {1, 2} tie 1/2 -> 1 (wrong); 1 -> {0, 2} tie -> 0 (wrong);
    # 2 -> {0, 1} tie -> 0 (wrong)
    assert metrics.knn_accuracy_loo(points[:3], labels[:3], 2) == 0.0
    rng = np.random.default_rng(3)
    grid = rng.integers(0, 4, size=(200, 2)).astype(float)  # many exact duplicates and distance ties
    grid_labels = rng.integers(0, 5, size=200)
    for k in (1, 4, 10):
        assert metrics.knn_accuracy_loo(grid, grid_labels, k) == _knn_loo_loop(grid, grid_labels, k)


@pytest.mark.parametrize("block_rows", [1, 7, 40, None])
def test_blocked_trustworthiness_is_sklearns(block_rows):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 6))
    x[5] = x[6]  # a duplicate point: a distance tie
    y = x[:, :2] + rng.normal(scale=0.3, size=(40, 2))
    for k in (1, 3, 9):
        assert metrics.blocked_trustworthiness(x, y, k, block_rows) == trustworthiness(x, y, n_neighbors=k)


def test_class_statistics_in_blocks_equal_whole_matrix_means(monkeypatch):
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), [7, 11, 5])[rng.permutation(23)]
    features = rng.normal(scale=50, size=(23, 5)).astype(np.float32)
    h = features.astype(np.float64)
    monkeypatch.setattr(metrics, "BLOCK_BYTES", 8 * 5 * 3)  # blocks of 3 rows
    means, counts, global_mean = metrics.class_statistics(features, labels, 4)  # class 3 has no sample
    assert np.array_equal(global_mean, h.mean(axis=0))
    assert np.array_equal(means[:3], np.stack([h[labels == c].mean(axis=0) for c in range(3)]))
    assert np.array_equal(means[3], np.zeros(5)) and counts.tolist() == [7, 11, 5, 0]
    assert metrics.nc1(features, labels, 3) == pytest.approx(_nc1_direct(h, labels), rel=1e-10)
    x_test = rng.normal(scale=50, size=(10, 5)).astype(np.float32)
    centres = np.stack([h[labels == c].mean(axis=0) for c in range(3)])
    nearest = np.argmin(((x_test[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1), axis=1)
    y_test = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert metrics.ncc_accuracy(features, labels, x_test, y_test, 3) == np.mean(nearest == y_test)
    with pytest.raises(ValueError, match="class 3 has no training sample"):
        metrics.ncc_accuracy(features, labels, x_test, y_test, 4)


def test_quality_metrics_run_on_the_recorded_subsample(tiny_run):
    from embedscope.store import load_features
    from embedscope.tsne import tsne_subset

    r = tiny_run
    settings = {**SETTINGS, "max_quality_points": 6, "trustworthiness_k": 2}
    csv, md = r["root"] / "sub" / "embedding_quality.csv", r["root"] / "sub" / "embedding_quality.md"
    table = metrics.evaluate_embeddings(r["extractors"], r["stores"], r["tsne"], csv, md, dataset="toy",
                                        settings=settings, seed=4)
    assert (table["n"] == 10).all() and (table["n_quality"] == 6).all()
    assert (read_embedding_quality(csv)["n_quality"] == 6).all()
    pairs = [(e, layer) for e in r["extractors"] for layer in EXTRACTOR_LAYERS[e]]
    row = table[table["layer"] == "head_hidden"].iloc[0]
    tsne = read_tsne(r["tsne"][pairs.index(("resnet18_finetuned", "head_hidden"))])
    test = load_features(r["stores"][1], "head_hidden", "test")
    feats = test.features[[list(test.index).index(i) for i in tsne["index"]]]
    xy, labels = tsne[["x", "y"]].to_numpy(), tsne["label"].to_numpy()
    sub = tsne_subset(labels, 6, 4)
    assert len(sub) == 6
    assert row["trustworthiness"] == trustworthiness(feats[sub].astype(np.float64), xy[sub], n_neighbors=2)
    assert row["silhouette_features"] == pytest.approx(silhouette_score(feats[sub], labels[sub]))
    assert row["silhouette_2d"] == pytest.approx(silhouette_score(xy[sub], labels[sub]))
    pred = cross_val_predict(KNeighborsClassifier(3), xy, labels, cv=LeaveOneOut())  # every point, not the subsample
    assert row["knn_accuracy_2d"] == pytest.approx(np.mean(pred == labels))
    text = md.read_text()
    assert "max_quality_points = 6 (seed 4)" in text and "n_quality = 6" in text


def test_feature_sets_stream_and_score_as_in_memory(tiny_run):
    import inspect

    from embedscope.baseline import class_mean_images, nearest_class_mean
    from embedscope.store import read_image_store

    r = tiny_run
    data = read_image_store(r["data"])
    train, test = data.indices("train"), data.indices("test")
    sets = metrics.feature_sets(r["data"], r["extractors"][:1], r["stores"][:1])
    assert inspect.isgenerator(sets)
    features, layer, x_train, y_train, x_test, y_test = next(sets)
    assert (features, layer) == ("pixels", "pixels") and x_train.dtype == np.float32
    assert np.array_equal(x_train, metrics.pixel_features(data.images[train]))
    assert np.array_equal(x_test, metrics.pixel_features(data.images[test]))
    assert np.array_equal(y_train, data.labels[train]) and np.array_equal(y_test, data.labels[test])
    # in place: the same scores as the copying pipeline on copies of the arrays, which they leave unchanged
    expected = {name: metrics.fit_and_score(name, x_train.copy(), y_train, x_test.copy(), y_test, 3, SETTINGS)
                for name in SETTINGS["classifiers"]}
    got = metrics.score_feature_set(x_train, y_train, x_test, y_test, 3, SETTINGS)
    assert list(got) == SETTINGS["classifiers"]
    for name in got:
        assert {k: v for k, v in got[name].items() if k != "fit_seconds"} == {
            k: v for k, v in expected[name].items() if k != "fit_seconds"}
    assert np.allclose(x_train.mean(axis=0), 0, atol=1e-6)  # standardised in place
    rows = metrics.baseline_rows(r["data"], r["baseline"], "toy", 3)
    means = class_mean_images(data.images[train], data.labels[train], 3)
    for row in rows:
        pred = nearest_class_mean(data.images[test], means, row["classifier"].removeprefix("class_mean_"))
        assert {k: row[k] for k in ("accuracy", "macro_f1")} == {
            k: v for k, v in metrics.macro_scores(data.labels[test], pred, 3).items() if k in ("accuracy", "macro_f1")}
    assert [s[:2] for s in sets] == [("scattering", "scattering")]


def test_a_feature_set_is_dropped_before_the_next_is_read(tiny_run):
    import weakref

    r = tiny_run
    sets = metrics.feature_sets(r["data"], r["extractors"], r["stores"])
    alive = []
    for _, _, x_train, _, x_test, _ in sets:
        assert all(ref() is None for ref in alive)  # the previous set's arrays are gone already
        alive = [weakref.ref(x_train), weakref.ref(x_test)]
        del x_train, x_test
