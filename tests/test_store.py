"""Image and feature stores: round trips, atomic writes, refusal of incomplete stores."""

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from embedscope.store import (
    FeatureStoreWriter,
    ImageStoreWriter,
    StoreError,
    iter_image_chunks,
    load_features,
    open_complete,
    read_image_store,
    write_image_store,
)


def toy_images(n=12, shape=(8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = np.arange(n) % 3
    split = (np.arange(n) >= 8).astype(np.uint8)
    return images, labels, split


def test_image_store_round_trip(tmp_path):
    images, labels, split = toy_images()
    path = tmp_path / "toy.zarr"
    write_image_store(path, images, labels, split, ["a", "b", "c"], {"source": "toy"})
    data = read_image_store(path)
    assert np.array_equal(data.images, images)
    assert np.array_equal(data.labels, labels)
    assert np.array_equal(data.split, split)
    assert data.class_names == ["a", "b", "c"]
    assert data.attrs["complete"] is True
    assert data.attrs["counts"]["train"] == {"a": 3, "b": 3, "c": 2}
    assert data.attrs["counts"]["test"] == {"a": 1, "b": 1, "c": 2}
    test_images, test_labels, test_index = data.subset("test")
    assert np.array_equal(test_index, np.arange(8, 12))
    assert np.array_equal(test_images, images[8:])


def test_failed_write_leaves_no_store(tmp_path):
    images, labels, split = toy_images()
    path = tmp_path / "broken.zarr"
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureStoreWriter(path, labels, split, np.arange(len(labels))) as writer:
            writer.write("layer", 0, np.ones((4, 5)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_bad_images_are_refused_before_writing(tmp_path):
    images, labels, split = toy_images()
    with pytest.raises(ValueError, match="uint8"):
        write_image_store(tmp_path / "x.zarr", images.astype(np.float32), labels, split, ["a", "b", "c"])
    assert not (tmp_path / "x.zarr").exists()


def test_reader_refuses_incomplete_store(tmp_path):
    path = tmp_path / "half.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("images", shape=(2, 2), dtype="uint8")
    with pytest.raises(StoreError, match="incomplete"):
        open_complete(path)
    with pytest.raises(StoreError, match="does not exist"):
        open_complete(tmp_path / "missing.zarr")


def test_feature_store_round_trip_and_other_process(tmp_path):
    images, labels, split = toy_images()
    path = tmp_path / "features.zarr"
    values = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    with FeatureStoreWriter(path, labels, split, np.arange(12) + 100, {"extractor": "toy"}) as writer:
        for start in range(0, 12, 5):
            writer.write("layer_a", start, values[start : start + 5], {"shape": [5]})
    test = load_features(path, "layer_a", "test")
    assert np.array_equal(test.features, values[8:])
    assert np.array_equal(test.index, np.arange(108, 112))
    assert test.attrs["extractor"] == "toy" and test.attrs["dim"] == 5
    with pytest.raises(StoreError, match="no layer"):
        load_features(path, "layer_b")
    code = (
        "import zarr, sys; g = zarr.open_group(sys.argv[1], mode='r'); "
        "assert g.attrs['complete'] is True; print(g['layer_a/features'].shape)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(12, 5)"


def test_image_store_writer_rows_in_any_order_equal_the_in_memory_writer(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (700, 40, 40, 1), dtype=np.uint8)  # 1,600 B a row: 1,310 rows a chunk
    images = np.concatenate([images] * 3)  # 2,100 rows: two chunks
    labels, split = np.arange(2100) % 3, (np.arange(2100) % 4 == 0).astype(np.uint8)
    write_image_store(tmp_path / "whole.zarr", images, labels, split, ["a", "b", "c"], {"source": "toy"})
    with ImageStoreWriter(tmp_path / "rows.zarr", labels, split, ["a", "b", "c"], (40, 40, 1),
                          {"source": "toy"}) as writer:
        assert writer.chunk_rows == 1310
        for row in np.random.default_rng(2).permutation(2100):
            writer.put(int(row), images[row])
        assert len(writer._pending) == 0
    whole, rows = read_image_store(tmp_path / "whole.zarr"), read_image_store(tmp_path / "rows.zarr")
    assert rows.attrs == whole.attrs
    np.testing.assert_array_equal(rows.images, images)
    np.testing.assert_array_equal(rows.labels, labels)
    # the in-memory writer can store a selection of rows, gathered chunk by chunk
    write_image_store(tmp_path / "some.zarr", images, labels[::-2], split[::-2], ["a", "b", "c"],
                      rows=np.arange(2100)[::-2])
    np.testing.assert_array_equal(read_image_store(tmp_path / "some.zarr").images, images[::-2])


def test_image_store_writer_refuses_missing_rows_and_leaves_nothing(tmp_path):
    with pytest.raises(StoreError, match=r"1 of 3 image rows were never written"):
        with ImageStoreWriter(tmp_path / "s.zarr", [0, 1, 0], [0, 0, 1], ["a", "b"], (2, 2, 1)) as writer:
            writer.put(0, np.zeros((2, 2, 1), np.uint8))
            writer.write(1, np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(ValueError, match=r"image rows must be uint8 \(2, 2, 1\)"):
        with ImageStoreWriter(tmp_path / "s.zarr", [0], [0], ["a"], (2, 2, 1)) as writer:
            writer.put(0, np.zeros((2, 2, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_image_chunks_stream_one_split(tmp_path):
    images = np.arange(2100 * 1600, dtype=np.int64).astype(np.uint8).reshape(2100, 40, 40, 1)
    labels, split = np.arange(2100) % 3, (np.arange(2100) % 4 == 0).astype(np.uint8)
    write_image_store(tmp_path / "s.zarr", images, labels, split, ["a", "b", "c"])
    chunks = list(iter_image_chunks(tmp_path / "s.zarr", "test"))
    assert [len(x) for x, _ in chunks] == [328, 197]  # test rows of chunk 0 (rows 0..1309) and chunk 1
    np.testing.assert_array_equal(np.concatenate([x for x, _ in chunks]), images[split == 1])
    np.testing.assert_array_equal(np.concatenate([y for _, y in chunks]), labels[split == 1])


_KILLED_MID_WRITE = """
import os, signal, sys
import numpy as np
from embedscope.artifacts import atomic_write
from embedscope.store import ImageStoreWriter

kind, path = sys.argv[1], sys.argv[2]
if kind == "store":
    with ImageStoreWriter(path, np.zeros(4), np.zeros(4), ["a"], (2, 2, 1)) as writer:
        writer.put(0, np.zeros((2, 2, 1), np.uint8))
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer or `kill -9` does: no clean-up runs
else:
    with atomic_write(path, suffix=".png") as tmp:
        tmp.write_bytes(b"half a figure")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_mid_write(kind, path) -> int:
    child = subprocess.Popen([sys.executable, "-c", _KILLED_MID_WRITE, kind, str(path)])
    assert child.wait(timeout=120) == -9
    return child.pid


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    from embedscope.artifacts import write_text

    store = tmp_path / "s.zarr"
    dead = _killed_mid_write("store", store)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".s.zarr.tmp-{dead}"]
    # a temporary of a live process (this test's parent) is another writer's: left alone
    live = tmp_path / f".s.zarr.tmp-{os.getppid()}"
    live.mkdir()
    write_image_store(store, *toy_images(4), ["a", "b", "c"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "s.zarr"]
    assert read_image_store(store).images.shape == (4, 8, 8, 1)

    figure = tmp_path / "fig.png"
    dead = _killed_mid_write("artifact", figure)
    assert (tmp_path / f".fig.png.tmp-{dead}.png").read_bytes() == b"half a figure"
    write_text(figure, "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "fig.png", "s.zarr"]


def test_index_rows_and_pixels_without_the_whole_store(tmp_path, monkeypatch):
    from embedscope import store

    monkeypatch.setattr(store, "CHUNK_BYTES", 8 * 8 * 3 * 5)  # 5 rows per chunk
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(23, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, size=23)
    split = (np.arange(23) % 3 == 0).astype(np.uint8)
    write_image_store(tmp_path / "s.zarr", images, labels, split, ["a", "b", "c"])
    index = store.read_image_index(tmp_path / "s.zarr")
    assert np.array_equal(index.labels, labels) and np.array_equal(index.split, split)
    assert index.class_names == ["a", "b", "c"] and index.image_shape == (8, 8, 3)
    assert np.array_equal(index.indices("test"), np.flatnonzero(split == 1))
    rows = [17, 2, 2, 22, 0]  # any order, repeated
    assert np.array_equal(store.read_image_rows(tmp_path / "s.zarr", rows), images[rows])
    assert store.read_image_rows(tmp_path / "s.zarr", []).shape == (0, 8, 8, 3)
    pixels, pixel_labels = store.pixel_rows(tmp_path / "s.zarr", "train")
    train = np.flatnonzero(split == 0)
    assert pixels.dtype == np.float32
    assert np.array_equal(pixels, images[train].astype(np.float32).reshape(len(train), -1) / 255.0)
    assert np.array_equal(pixel_labels, labels[train])
