"""The class-mean baseline on hand-made toys with known answers."""

import numpy as np
import pytest
from PIL import Image

from embedscope.artifacts import BASELINE_COLUMNS, read_baseline
from embedscope.baseline import (
    ClassMeans,
    class_mean_images,
    compute_baseline,
    nearest_class_mean,
    streamed_baseline,
)
from embedscope.store import write_image_store


def test_class_means_by_hand():
    images = np.array([[[[0]]], [[[2]]], [[[10]]], [[[20]]]], dtype=np.uint8)
    means = class_mean_images(images, np.array([0, 0, 1, 1]), 2)
    assert np.allclose(means.ravel(), [1.0, 15.0])
    with pytest.raises(ValueError, match="class 2"):
        class_mean_images(images, np.array([0, 0, 1, 1]), 3)


def test_l1_and_l2_disagree_where_they_should():
    # Two 2-pixel class means; the test point is L1-nearer to mean 0 but L2-nearer to mean 1.
    means = np.array([[0.0, 0.0], [3.0, 3.0]]).reshape(2, 1, 2, 1)
    point = np.array([[0.0, 5.0]]).reshape(1, 1, 2, 1)
    # L1: |0-0|+|5-0| = 5 vs |0-3|+|5-3| = 5 -> tie goes to class 0; shift slightly to break it.
    point = point + np.array([0.0, -0.5]).reshape(1, 1, 2, 1)
    assert nearest_class_mean(point, means, "l1")[0] == 0  # 4.5 vs 5.5
    assert nearest_class_mean(point, means, "l2")[0] == 1  # 20.25 vs 11.25
    with pytest.raises(ValueError, match="distance"):
        nearest_class_mean(point, means, "cosine")


def test_compute_baseline_on_a_toy_store(tmp_path):
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 40, (20, 4, 4, 1))
    bright = rng.integers(200, 256, (20, 4, 4, 1))
    images = np.concatenate([dark, bright]).astype(np.uint8)
    labels = np.repeat([0, 1], 20)
    split = np.tile([0, 0, 0, 1], 10).astype(np.uint8)
    write_image_store(tmp_path / "toy.zarr", images, labels, split, ["dark", "bright"])
    table = compute_baseline(tmp_path / "toy.zarr", tmp_path / "m.csv", tmp_path / "means.png", "toy")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "dataset,method,distance,accuracy,accuracy_low,accuracy_high,macro_f1,n_test"
    assert [line.split(",")[:4] + line.split(",")[5:] for line in lines[1:]] == [
        ["toy", "nearest_class_mean", distance, "1.0", "1.0", "1.0", "10"] for distance in ("l1", "l2")]
    saved = read_baseline(tmp_path / "m.csv")
    assert list(saved.columns) == list(BASELINE_COLUMNS)
    assert np.allclose(saved.accuracy, 1.0) and (saved.n_test == 10).all()
    # 10 of 10 right: the Wilson interval is [10 / (10 + z^2), 1] with z = 1.959964
    assert np.allclose(saved.accuracy_low, 10 / (10 + 1.959963984540054**2), rtol=0, atol=1e-15)
    assert table.shape == (2, 8)
    with Image.open(tmp_path / "means.png") as png:
        assert png.format == "PNG" and png.size == (440, 240)  # 4.4 x (1.9 + 0.5) inches at 100 dpi
    assert not list(tmp_path.glob(".*tmp*"))


def test_streamed_baseline_equals_the_in_memory_computation(tmp_path):
    # 64x64x3 rows: 170 rows a chunk, so 900 images make six chunks with train and test rows in each
    rng = np.random.default_rng(3)
    labels = np.arange(900) % 4
    images = np.clip(rng.normal(60 * labels[:, None, None, None], 50, (900, 64, 64, 3)), 0, 255).astype(np.uint8)
    split = (np.arange(900) % 3 == 0).astype(np.uint8)
    write_image_store(tmp_path / "s.zarr", images, labels, split, list("abcd"))
    means, y_test, predictions = streamed_baseline(tmp_path / "s.zarr", 4)

    train, test = split == 0, split == 1
    expected = class_mean_images(images[train], labels[train], 4)
    assert np.array_equal(means, expected)  # whole-number sums: exact whatever the chunking
    assert np.array_equal(means, np.stack([images[train & (labels == c)].astype(float).mean(0) for c in range(4)]))
    np.testing.assert_array_equal(y_test, labels[test])
    for distance in ("l1", "l2"):
        np.testing.assert_array_equal(predictions[distance], nearest_class_mean(images[test], expected, distance))
    accumulator = ClassMeans(5)
    accumulator.add(images[:10], labels[:10])
    with pytest.raises(ValueError, match="class 4 has no training image"):
        accumulator.means()
