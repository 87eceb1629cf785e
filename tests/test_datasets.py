"""Seeded stratified splits and ingest of the embedded dataset."""

import numpy as np
import pytest

from embedscope.datasets import assign_split, ingest_dataset, read_embedded, stratified_split
from embedscope.store import read_image_store


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    train_a, test_a = stratified_split(labels, 300, 200, seed=3)
    train_b, test_b = stratified_split(labels, 300, 200, seed=3)
    assert np.array_equal(train_a, train_b) and np.array_equal(test_a, test_b)
    assert len(train_a) == 300 and len(test_a) == 200
    assert not set(train_a) & set(test_a)
    assert np.all(np.bincount(labels[train_a]) == 30)
    assert np.all(np.bincount(labels[test_a]) == 20)
    _, test_c = stratified_split(labels, 300, 200, seed=4)
    assert not np.array_equal(test_a, test_c)


def test_split_of_a_subset_leaves_the_rest_out():
    labels = np.repeat(np.arange(4), 25)
    train, test = stratified_split(labels, 40, 20, seed=0)
    assert len(train) == 40 and len(test) == 20
    assert np.all(np.bincount(labels[test]) == 5)


def test_split_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="cannot split"):
        stratified_split(np.repeat(np.arange(2), 5), 8, 8, seed=0)


def test_source_split_is_kept_and_subsampled():
    labels = np.repeat(np.arange(2), 10)
    split = np.tile([0, 0, 0, 1, 1], 4).astype(np.uint8)
    keep, codes = assign_split(labels, split, {"source": "torchvision", "n_train": 6, "n_test": None, "seed": 0})
    assert len(keep) == 6 + 8
    assert np.all(split[keep[codes == 0]] == 0) and np.all(split[keep[codes == 1]] == 1)
    with pytest.raises(ValueError, match="n_test = 9"):
        assign_split(labels, split, {"source": "torchvision", "n_train": None, "n_test": 9, "seed": 0})


def test_embedded_subset_is_real_mnist():
    images, labels, split, class_names, attrs = read_embedded()
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    assert np.all(np.bincount(labels) == 500)
    assert split is None and class_names == [str(d) for d in range(10)]
    assert len(attrs["input_sha256"]) == 64


def test_ingest_embedded(tmp_path):
    settings = {"source": "embedded", "n_train": 300, "n_test": 200, "seed": 0}
    ingest_dataset(settings, tmp_path / "m.zarr", dataset="m")
    data = read_image_store(tmp_path / "m.zarr")
    assert data.images.shape == (500, 28, 28, 1)
    assert data.attrs["counts"]["test"] == {str(d): 20 for d in range(10)}
    assert data.attrs["source"] == "embedded" and data.attrs["dataset"] == "m"
    # train images come first, then test
    assert np.all(data.split[:300] == 0) and np.all(data.split[300:] == 1)
