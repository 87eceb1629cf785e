"""t-SNE stage: stratified subset, embedding quality on toy blobs, determinism, the csv the rule writes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.neighbors import KNeighborsClassifier

from embedscope.artifacts import ArtifactError, read_tsne, read_tsne_meta, write_predictions
from embedscope.store import FeatureStoreWriter
from embedscope.tsne import BH_MAX_POINTS, embed_tsne, gradient_method, run_tsne, tsne_input_dim, tsne_subset


def knn_accuracy_2d(coords, labels, k=10):
    """Leave-one-out-ish kNN accuracy: fit on even rows, score on odd rows."""
    knn = KNeighborsClassifier(n_neighbors=k).fit(coords[::2], labels[::2])
    return knn.score(coords[1::2], labels[1::2])


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=300, n_features=80, centers=5, cluster_std=2.0, random_state=0)
    return x.astype(np.float32), y


def test_tsne_subset_is_stratified_seeded_and_sorted():
    labels = np.repeat(np.arange(10), [30, 30, 30, 30, 30, 20, 20, 20, 20, 20])  # 250 points
    a = tsne_subset(labels, 100, seed=3)
    b = tsne_subset(labels, 100, seed=3)
    assert len(a) == 100 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    counts = np.bincount(labels[a], minlength=10)
    assert counts.tolist() == [12] * 5 + [8] * 5  # each class keeps its share
    assert not np.array_equal(a, tsne_subset(labels, 100, seed=4))
    assert np.array_equal(tsne_subset(labels, None, 0), np.arange(250))
    assert np.array_equal(tsne_subset(labels, 1000, 0), np.arange(250))
    # Largest-remainder rounding still hits the exact total.
    assert len(tsne_subset(labels, 37, 0)) == 37


@pytest.mark.parametrize("gradient", ["bh", "fft"])
def test_opentsne_separates_blobs_and_is_deterministic(blobs, gradient):
    x, y = blobs
    run = dict(perplexity=15, pca_components=50, n_iter=250, n_jobs=1, gradient=gradient)
    a = embed_tsne(x, "opentsne", seed=0, **run)
    assert a.shape == (300, 2) and np.isfinite(a).all()
    assert knn_accuracy_2d(a, y) == 1.0  # every odd row next to its own blob
    assert np.array_equal(a, embed_tsne(x, "opentsne", seed=0, **run))
    if gradient == "bh":  # (FFT runs cost seconds each, even on 300 points)
        assert not np.array_equal(a, embed_tsne(x, "opentsne", seed=1, **run))
    else:
        assert not np.array_equal(a, embed_tsne(x, "opentsne", seed=0, **{**run, "gradient": "bh"}))


def test_auto_gradient_is_barnes_hut_up_to_its_crossover_and_fft_above():
    assert BH_MAX_POINTS == 4000
    assert [gradient_method("auto", n) for n in (4, 2000, 4000, 4001, 70000)] == ["bh", "bh", "bh", "fft", "fft"]
    assert gradient_method("fft", 10) == "fft" and gradient_method("bh", 10**6) == "bh"
    with pytest.raises(ValueError, match="'tsne.gradient' is 'exact'; expected one of"):
        gradient_method("exact", 10)


def test_sklearn_method_separates_blobs_and_is_deterministic(blobs):
    x, y = blobs
    a = embed_tsne(x[:150], "sklearn", perplexity=15, pca_components=0, n_iter=250, seed=0)
    b = embed_tsne(x[:150], "sklearn", perplexity=15, pca_components=0, n_iter=250, seed=0)
    assert knn_accuracy_2d(a, y[:150]) == 1.0
    assert np.array_equal(a, b)


def test_bad_inputs_name_the_problem(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match="tsne.method"):
        embed_tsne(x, "umap")
    with pytest.raises(ValueError, match="tsne.neighbors"):
        embed_tsne(x, neighbors="hnsw")
    with pytest.raises(ValueError, match="tsne.gradient"):
        embed_tsne(x, gradient="fast")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embed_tsne(bad)
    # Tiny inputs: perplexity is lowered instead of failing.
    assert embed_tsne(x[:12], perplexity=15, n_iter=50).shape == (12, 2)


def test_pca_step_width():
    assert tsne_input_dim(1000, 512, 50) == 50
    assert tsne_input_dim(1000, 40, 50) == 40
    assert tsne_input_dim(1000, 512, 0) == 512
    assert tsne_input_dim(30, 512, 50) == 30


COMPUTE = {"device": "cpu", "device_name": "x86_64", "precision": "fp32", "torch": "2.5.1", "threads": 2}


def write_store(path, x, y, split, extractor="resnet18_finetuned"):
    attrs = {"extractor": extractor, "weights": "random", "class_names": [f"c{i}" for i in range(5)],
             "compute": COMPUTE}
    with FeatureStoreWriter(path, y, split, np.arange(len(y)), attrs) as writer:
        writer.write("layer4", 0, x)


def test_run_tsne_writes_csv_with_predictions(tmp_path, blobs):
    x, y = blobs
    split = np.tile([0, 1], 150).astype(np.uint8)  # odd sample indices are the test split
    store = tmp_path / "features.zarr"
    write_store(store, x, y, split)
    test_index = np.flatnonzero(split == 1)
    pred = y[test_index].copy()
    pred[:7] = (pred[:7] + 1) % 5
    probs = np.full((len(test_index), 5), 0.1)
    probs[np.arange(len(test_index)), pred] = 0.6
    losses = np.full(len(test_index), 0.5)
    write_predictions(tmp_path / "predictions.csv", test_index, y[test_index], probs, losses)
    out = tmp_path / "tsne" / "layer4.csv"
    meta = tmp_path / "tsne" / "layer4.json"
    kwargs = dict(predictions=tmp_path / "predictions.csv", max_points=100, perplexity=10, n_iter=250, seed=0,
                  info={"dataset": "toy", "extractor": "resnet18_finetuned"})
    run_tsne(store, "layer4", out, meta, **kwargs)
    table = read_tsne(out)
    assert list(table.columns) == ["index", "x", "y", "label", "pred", "prob"]
    assert len(table) == 100 and set(table["index"]) <= set(test_index)
    expected = test_index[tsne_subset(y[test_index], 100, 0)]
    assert np.array_equal(table["index"], expected)  # the shared subset, in store order
    assert np.array_equal(table["label"], y[table["index"]])
    lookup = dict(zip(test_index, pred, strict=True))
    assert np.array_equal(table["pred"], [lookup[i] for i in table["index"]])
    assert np.allclose(table["prob"], 0.6)
    info = read_tsne_meta(meta)
    assert info["n"] == 100 and info["dim"] == 80 and info["dim_tsne_input"] == 50
    assert info["class_names"] == [f"c{i}" for i in range(5)] and info["weights"] == "random"
    assert info["ints_in_interval"] == 2.0 and info["neighbors"] == "exact"
    assert info["gradient"] == "auto" and info["gradient_used"] == "bh"
    assert info["compute"] == COMPUTE  # the store's record of where its features were computed
    assert info["perplexity"] == info["perplexity_used"] == 10.0
    assert sorted(p.name for p in out.parent.iterdir()) == ["layer4.csv", "layer4.json"]  # no temp files left
    first = out.read_bytes()
    run_tsne(store, "layer4", out, meta, **kwargs)
    assert out.read_bytes() == first  # same inputs, same bytes

    # Predictions that do not cover the points: a clear error, and the old csv untouched.
    write_predictions(tmp_path / "short.csv", test_index[5:], y[test_index[5:]], probs[5:], losses[5:])
    with pytest.raises(ArtifactError, match="short.csv has no prediction for"):
        run_tsne(store, "layer4", out, meta, **{**kwargs, "predictions": tmp_path / "short.csv"})
    assert out.read_bytes() == first


def test_run_tsne_without_predictions(tmp_path, blobs):
    x, y = blobs
    split = np.ones(60, dtype=np.uint8)
    store = tmp_path / "s.zarr"
    write_store(store, x[:60], y[:60], split, extractor="scattering")
    out = tmp_path / "out.csv"
    run_tsne(store, "layer4", out, None, perplexity=10, n_iter=50, pca_components=0)
    assert list(read_tsne(out).columns) == ["index", "x", "y", "label"]


def test_the_sidecar_records_the_perplexity_the_map_was_made_with(tmp_path, blobs):
    """30 points cannot carry perplexity 15 (3 x perplexity < n): the map is made with (30 - 1) / 3."""
    x, y = blobs
    store = tmp_path / "s.zarr"
    write_store(store, x[:30], y[:30], np.ones(30, dtype=np.uint8), extractor="scattering")
    run_tsne(store, "layer4", tmp_path / "out.csv", tmp_path / "out.json", perplexity=15, n_iter=50,
             pca_components=0)
    meta = read_tsne_meta(tmp_path / "out.json")
    assert meta["perplexity"] == 15.0 and meta["perplexity_used"] == pytest.approx(29 / 3)


def test_schema_defaults_are_embed_tsne_defaults():
    """The workflow (schema defaults) and embed_tsne's keyword defaults, hence bench/bench_tsne.py, agree."""
    import inspect
    from pathlib import Path

    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["tsne"]["properties"]
    params = inspect.signature(embed_tsne).parameters
    for key in ("method", "perplexity", "pca_components", "n_iter", "seed", "ints_in_interval", "neighbors",
                "gradient"):
        assert props[key]["default"] == params[key].default, key
