"""Readers of torchvision's raw files (generated in the real formats) and of image folders."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import struct
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedscope.datasets import assign_split, ingest_dataset
from embedscope.sources import (
    DecodeBudget,
    ImageFolder,
    SourceError,
    list_imagefolder,
    read_idx,
    read_imagefolder,
    read_torchvision,
    torchvision_split_bounds,
)
from embedscope.store import ImageStoreWriter, read_image_store
from embedscope.synthetic import CIFAR10_CLASSES, png_claiming, write_cifar10_raw, write_imagefolder, write_mnist_raw

# ---- MNIST IDX --------------------------------------------------------------------------------------------


def _write_idx_by_hand(path, array):
    """IDX written byte by byte from the format's description, independent of embedscope.synthetic."""
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(head + array.astype(np.uint8).tobytes())


def test_mnist_idx_known_pixels(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 251
    test_x = np.full((2, 28, 28), 7)
    _write_idx_by_hand(raw / "train-images-idx3-ubyte.gz", train_x)
    _write_idx_by_hand(raw / "train-labels-idx1-ubyte.gz", np.array([5, 0, 9]))
    _write_idx_by_hand(raw / "t10k-images-idx3-ubyte.gz", test_x)
    _write_idx_by_hand(raw / "t10k-labels-idx1-ubyte.gz", np.array([1, 2]))

    images, labels, split, names, attrs = read_torchvision("MNIST", tmp_path)
    assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:3, ..., 0], train_x)
    np.testing.assert_array_equal(images[3:, ..., 0], test_x)
    np.testing.assert_array_equal(labels, [5, 0, 9, 1, 2])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(split, [0, 0, 0, 1, 1])
    assert split.dtype == np.uint8
    assert names == [str(d) for d in range(10)]
    assert len(attrs["input_sha256"]) == 64
    assert attrs["input_files"][0] == "MNIST/raw/train-images-idx3-ubyte.gz"


def test_mnist_generated_and_checksum_changes(tmp_path):
    write_mnist_raw(tmp_path, n_train=60, n_test=20)
    images, labels, split, _, attrs = read_torchvision("MNIST", tmp_path)
    assert images.shape == (80, 28, 28, 1)
    assert (split == 0).sum() == 60 and (split == 1).sum() == 20
    assert set(labels.tolist()) == set(range(10))
    again = read_torchvision("MNIST", tmp_path)[4]
    assert again["input_sha256"] == attrs["input_sha256"]
    write_mnist_raw(tmp_path, n_train=60, n_test=20, seed=1)
    assert read_torchvision("MNIST", tmp_path)[4]["input_sha256"] != attrs["input_sha256"]


def test_mnist_truncated_and_missing_files_are_named(tmp_path):
    write_mnist_raw(tmp_path, n_train=10, n_test=10)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        read_torchvision("MNIST", tmp_path)
    path.unlink()
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte"):
        read_torchvision("MNIST", tmp_path)
    with pytest.raises(SourceError, match="MNIST/raw not found"):
        read_torchvision("MNIST", tmp_path / "elsewhere")


def test_idx_wrong_type_byte(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">i", 1) + b"\0\0\0\0")
    with pytest.raises(SourceError, match="expected unsigned bytes"):
        read_idx(path, 1)


# ---- CIFAR-10 pickle batches --------------------------------------------------------------------------------


def _cifar_batch_by_hand(path, data, labels):
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"x", b"labels": list(labels), b"data": data}, fh, protocol=2)


def test_cifar10_known_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 2)
        _cifar_batch_by_hand(folder / name, data, labels)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, fh, protocol=2)

    images, labels, split, names, attrs = read_torchvision("CIFAR10", tmp_path)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert names == CIFAR10_CLASSES
    np.testing.assert_array_equal(split, [0] * 10 + [1] * 2)
    data, lab = batches["data_batch_1"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert images[0, 0, 0, 0] == data[0, 0] and images[0, 0, 0, 1] == data[0, 1024]
    assert images[0, 0, 0, 2] == data[0, 2048] and images[0, 1, 2, 0] == data[0, 32 + 2]
    np.testing.assert_array_equal(labels[:2], lab)
    np.testing.assert_array_equal(labels[10:], batches["test_batch"][1])
    assert attrs["input_files"][0] == "cifar-10-batches-py/data_batch_1"


def test_cifar10_archive_equals_folder(tmp_path):
    folder = write_cifar10_raw(tmp_path / "a", n_train=50, n_test=10, archive=True)
    from_archive = read_torchvision("CIFAR10", tmp_path / "a")
    assert from_archive[4]["input_files"] == ["cifar-10-python.tar.gz"]
    (tmp_path / "a" / "cifar-10-python.tar.gz").unlink()
    from_folder = read_torchvision("CIFAR10", tmp_path / "a")
    for a, b in zip(from_archive[:3], from_folder[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert from_archive[0].shape == (60, 32, 32, 3)
    (folder / "test_batch").unlink()
    with pytest.raises(SourceError, match="test_batch"):
        read_torchvision("CIFAR10", tmp_path / "a")


def test_cifar10_bad_batch_named(tmp_path):
    folder = write_cifar10_raw(tmp_path, n_train=10, n_test=5)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(SourceError, match="data_batch_3.*3072"):
        read_torchvision("CIFAR10", tmp_path)
    with pytest.raises(SourceError, match="expected MNIST or CIFAR10"):
        read_torchvision("SVHN", tmp_path)


# ---- imagefolder -------------------------------------------------------------------------------------------


def _png(path, value, size=(8, 6), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if mode == "L":
        arr = np.full((h, w), value, np.uint8)
    else:
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = value
        arr[..., 2] = 255 - value
    Image.fromarray(arr, mode=mode).save(path)


def test_imagefolder_flat_gray(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", value + i)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    images, labels, split, names, attrs = read_imagefolder(tmp_path, None, "error")
    assert split is None
    assert names == ["cat", "dog"]
    assert images.shape == (6, 8, 6, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(images[:, 0, 0, 0], [10, 11, 12, 200, 201, 202])
    assert attrs["channels"] == 1 and attrs["layout"] == "classes" and attrs["skipped_images"] == 0
    assert attrs["input_sha256"] == read_imagefolder(tmp_path)[4]["input_sha256"]


def test_imagefolder_train_test_rgb_mixed_with_gray_and_resized(tmp_path):
    for part, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _png(tmp_path / part / "b_red" / f"{i}.png", 250, size=(10, 12), mode="RGB")
            _png(tmp_path / part / "a_gray" / f"{i}.jpg", 100, size=(20, 24))
    images, labels, split, names, attrs = read_imagefolder(tmp_path, [5, 6], "error")
    assert names == ["a_gray", "b_red"]
    assert images.shape == (10, 5, 6, 3)
    np.testing.assert_array_equal(split, [0] * 6 + [1] * 4)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 0, 0, 1, 1])
    gray = images[labels == 0]
    # a uniform grey JPEG holds only DC coefficients, which quantise without loss: it decodes (and resizes) to 100
    assert np.all(gray == 100)
    red = images[labels == 1]
    assert np.all(red[..., 0] == 250) and np.all(red[..., 2] == 5)
    assert attrs["channels"] == 3 and attrs["resized"] and attrs["original_sizes"] == {"10x12": 5, "20x24": 5}


def test_imagefolder_mixed_sizes_without_resize_lists_files(tmp_path):
    for i in range(3):
        _png(tmp_path / "a" / f"{i}.png", 1)
    _png(tmp_path / "b" / "big.png", 1, size=(9, 9))
    _png(tmp_path / "b" / "ok.png", 1)
    with pytest.raises(SourceError, match=r"(?s)different sizes.*image_size.*big\.png \(9x9\)") as err:
        read_imagefolder(tmp_path)
    assert "ok.png" not in str(err.value)
    assert read_imagefolder(tmp_path, [4, 4])[0].shape == (5, 4, 4, 1)


def test_imagefolder_empty_class_folder_named(tmp_path):
    _png(tmp_path / "a" / "0.png", 1)
    (tmp_path / "empty_one").mkdir()
    (tmp_path / "empty_one" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="empty class folder.*\n.*empty_one"):
        read_imagefolder(tmp_path)


def test_imagefolder_unreadable_image_error_or_skip(tmp_path):
    for i in range(3):
        _png(tmp_path / "a" / f"{i}.png", 1)
        _png(tmp_path / "b" / f"{i}.png", 2)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "a" / "zero.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match=r"(?s)2 unreadable image.*on_bad_image: skip.*a/zero\.jpg.*b/broken\.png"):
        read_imagefolder(tmp_path, None, "error")
    images, labels, _, _, attrs = read_imagefolder(tmp_path, None, "skip")
    assert len(images) == 6 and attrs["skipped_images"] == 2
    assert attrs["skipped_files"] == ["a/zero.jpg", "b/broken.png"]
    assert attrs["n_files"] == 8


def test_imagefolder_skip_that_empties_a_class_is_an_error(tmp_path):
    _png(tmp_path / "a" / "0.png", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"junk")
    with pytest.raises(SourceError, match="no readable image left.*\n.*b"):
        read_imagefolder(tmp_path, None, "skip")


def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(SourceError, match="not a folder"):
        read_imagefolder(tmp_path / "nope")
    _png(tmp_path / "loose.png", 1)
    with pytest.raises(SourceError, match=r"no class folders \(1 images lie directly"):
        read_imagefolder(tmp_path)
    _png(tmp_path / "train" / "a" / "0.png", 1)
    with pytest.raises(SourceError, match="train/ but no test/"):
        read_imagefolder(tmp_path)
    _png(tmp_path / "test" / "b" / "0.png", 1)
    with pytest.raises(SourceError, match=r"only in train: \['a'\], only in test: \['b'\]"):
        read_imagefolder(tmp_path)
    with pytest.raises(SourceError, match="on_bad_image"):
        read_imagefolder(tmp_path, None, "ignore")


# ---- imagefolder: listing, streaming ingest -----------------------------------------------------------------


def _ingest(root, out, threads=1, **settings):
    settings = {"source": "imagefolder", "root": str(root), "seed": 0, **settings}
    ingest_dataset(settings, out, dataset="folder", threads=threads)
    return read_image_store(out)


def test_listing_follows_the_reader_layout_and_its_fingerprint_tracks_the_files(tmp_path):
    write_imagefolder(tmp_path / "flat", n_per_class=2, size=(4, 4), n_classes=2)
    (tmp_path / "flat" / "class_0" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "flat" / "class_0" / "notes.txt").write_text("not an image")
    (tmp_path / "flat" / "class_1" / "UPPER.PNG").write_bytes(b"not decoded when listing")
    listing = list_imagefolder(tmp_path / "flat")
    assert listing.layout == "classes" and listing.class_names == ["class_0", "class_1"]
    assert [e.relpath for e in listing.entries] == [
        "class_0/00000.png", "class_0/00001.png", "class_1/00000.png", "class_1/00001.png", "class_1/UPPER.PNG"]
    assert [(e.split, e.label) for e in listing.entries] == [(None, 0), (None, 0), (None, 1), (None, 1), (None, 1)]
    assert listing.entries[-1].size == len(b"not decoded when listing")

    before = listing.fingerprint()
    assert list_imagefolder(tmp_path / "flat").fingerprint() == before
    (tmp_path / "flat" / "class_1" / "UPPER.PNG").write_bytes(b"longer content, same name")
    resized = list_imagefolder(tmp_path / "flat").fingerprint()
    (tmp_path / "flat" / "class_1" / "UPPER.PNG").unlink()
    removed = list_imagefolder(tmp_path / "flat").fingerprint()
    assert len({before, resized, removed}) == 3

    for part in ("train", "test"):
        write_imagefolder(tmp_path / "tt" / part, n_per_class=1, size=(4, 4), n_classes=2)
    listing = list_imagefolder(tmp_path / "tt")
    assert listing.layout == "train_test"
    assert [(e.relpath, e.split, e.label) for e in listing.entries] == [
        ("train/class_0/00000.png", 0, 0), ("train/class_1/00000.png", 0, 1),
        ("test/class_0/00000.png", 1, 0), ("test/class_1/00000.png", 1, 1)]


def test_parallel_ingest_equals_the_serial_read(tmp_path):
    files = write_imagefolder(tmp_path / "folder", n_per_class=40, size=(9, 7), n_classes=3)
    images, labels, _, names, attrs = read_imagefolder(tmp_path / "folder")
    serial = _ingest(tmp_path / "folder", tmp_path / "one.zarr", threads=1, n_test=30)
    parallel = _ingest(tmp_path / "folder", tmp_path / "four.zarr", threads=4, n_test=30)
    for got in (serial, parallel):
        assert got.class_names == names == ["class_0", "class_1", "class_2"]
        assert got.attrs == serial.attrs
        np.testing.assert_array_equal(got.images, serial.images)
        np.testing.assert_array_equal(got.labels, serial.labels)
        np.testing.assert_array_equal(got.split, serial.split)
    # the store holds the train rows, then the test rows, each in file order
    keep, codes = assign_split(labels, None, {"source": "imagefolder", "n_test": 30, "seed": 0})
    np.testing.assert_array_equal(serial.images, images[keep])
    np.testing.assert_array_equal(serial.labels, labels[keep])
    np.testing.assert_array_equal(serial.split, codes)
    # the checksum's definition: SHA-256 over (relative path, NUL, bytes) of every file, in store-listing order
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: (p.parent.name, p.name)):
        digest.update(f"{path.parent.name}/{path.name}".encode() + b"\0" + path.read_bytes())
    assert serial.attrs["input_sha256"] == attrs["input_sha256"] == digest.hexdigest()
    assert serial.attrs["n_files"] == 120 and serial.attrs["channels"] == 3


class _FileOpens:
    """Counts the files opened under one folder, through Python's audit hook (every open() raises it)."""

    def __init__(self, root):
        self.root, self.counts, self.active = str(root), Counter(), False
        sys.addaudithook(self._hook)

    def _hook(self, event, args):
        if self.active and event == "open" and isinstance(args[0], (str, os.PathLike)):
            path = os.fspath(args[0])
            if path.startswith(self.root):
                self.counts[path] += 1


def test_each_file_is_read_once(tmp_path):
    files = write_imagefolder(tmp_path / "folder", n_per_class=12, size=(6, 6), n_classes=2)
    opens = _FileOpens(tmp_path / "folder")
    opens.active = True
    try:
        _ingest(tmp_path / "folder", tmp_path / "s.zarr", threads=3, n_test=6)
    finally:
        opens.active = False
    assert opens.counts == Counter({str(f): 1 for f in files})


def test_ingest_gray_then_colour_and_skipped_files_match_the_in_memory_read(tmp_path):
    root = tmp_path / "mixed"
    for i in range(4):
        _png(root / "a_gray" / f"{i}.png", 10 * i)
        _png(root / "b_colour" / f"{i}.png", 100 + i, mode="RGB")
    (root / "b_colour" / "broken.png").write_bytes(b"not a png")
    images, labels, _, _, attrs = read_imagefolder(root, None, "skip")
    assert images.shape == (8, 8, 6, 3) and attrs["skipped_files"] == ["b_colour/broken.png"]
    opens = _FileOpens(root)
    opens.active = True
    try:
        store = _ingest(root, tmp_path / "s.zarr", threads=2, n_test=2, on_bad_image="skip")
    finally:
        opens.active = False
    keep, codes = assign_split(labels, None, {"source": "imagefolder", "n_test": 2, "seed": 0})
    np.testing.assert_array_equal(store.images, images[keep])
    np.testing.assert_array_equal(store.split, codes)
    assert {k: store.attrs[k] for k in attrs} == attrs
    # the split depends on which files are readable, so the planned files are read a second time
    assert sorted(opens.counts.values()) == [1] + [2] * 8


def test_failed_ingest_leaves_no_store(tmp_path):
    write_imagefolder(tmp_path / "folder", n_per_class=3, size=(5, 5), n_classes=2)
    (tmp_path / "folder" / "class_1" / "bad.png").write_bytes(b"broken")
    named = r"(?s)1 unreadable image.*class_1/bad\.png \(UnidentifiedImageError: cannot identify image file '/"
    with pytest.raises(SourceError, match=named):
        _ingest(tmp_path / "folder", tmp_path / "s.zarr", threads=2, n_test=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_a_colour_file_left_out_of_the_store_still_makes_it_rgb(tmp_path):
    for i in range(3):
        _png(tmp_path / "only" / f"{i}.png", 50 + i)
    _png(tmp_path / "only" / "3.png", 7, mode="RGB")
    folder = ImageFolder(tmp_path)

    def gray_files_only(labels, split):
        @contextlib.contextmanager
        def open_sink(shape):
            with ImageStoreWriter(tmp_path / "s.zarr", labels[:3], np.zeros(3), ["only"], shape) as writer:
                yield writer

        return np.arange(3), open_sink

    folder.decode(gray_files_only, threads=2)
    store = read_image_store(tmp_path / "s.zarr")
    assert store.images.shape == (3, 8, 6, 3) and store.attrs["channels"] == 3
    assert store.images[:, 0, 0].tolist() == [[50] * 3, [51] * 3, [52] * 3]


# ---- untrusted inputs: pickles, IDX headers, links, bit depths, sizes -----------------------------------------


class _RunsACommand:
    """A pickle that calls a function on load: what a hostile "batch" file holds."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function, refused", [(os.system, "posix.system"), (eval, "__builtin__.eval")])
def test_cifar10_pickle_that_runs_code_is_refused_unrun(tmp_path, function, refused):
    folder = write_cifar10_raw(tmp_path, n_train=10, n_test=5)
    marker = tmp_path / "ran"
    argument = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": _RunsACommand(function, argument), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(SourceError, match=rf"data_batch_2: not a CIFAR-10 pickle batch \(UnpicklingError: refused "
                                          rf"global {refused}"):
        read_torchvision("CIFAR10", tmp_path)
    assert not marker.exists()


def test_cifar10_pickles_of_numpy_1_and_2_are_admitted(tmp_path):
    folder = write_cifar10_raw(tmp_path, n_train=10, n_test=5)
    expected = read_torchvision("CIFAR10", tmp_path)
    data = (folder / "test_batch").read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in data  # numpy 2 writes its private module name
    # the official batches were written by numpy 1, which names numpy.core
    (folder / "test_batch").write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    images, labels = read_torchvision("CIFAR10", tmp_path)[:2]
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


def _idx_header(*dims, type_byte=0x08):
    return bytes([0, 0, type_byte, len(dims)]) + b"".join(struct.pack(">i", d) for d in dims)


@pytest.mark.parametrize("data, fragment", [
    (_idx_header(70000, 1000, 1000), r"header says \(70000, 1000, 1000\) = 70000000000 bytes of data; expected "
                                     r"non-negative dims of at most 1073741824"),
    (_idx_header(-1, 28, 28), r"header says \(-1, 28, 28\) = -784 bytes"),
    (_idx_header(2, 2, 2) + bytes(9), r"header says \(2, 2, 2\) = 8 bytes of data, the file holds more than that"),
    (_idx_header(2, 2, 2) + bytes(7), r"header says \(2, 2, 2\) = 8 bytes of data, the file holds 7 \(truncated"),
    (_idx_header(2, 2, 2)[:9], r"IDX header ends after 9 bytes"),
    (b"PK\x03\x04", r"not an IDX file"),
])
def test_idx_header_checked_before_the_body_is_read(tmp_path, data, fragment):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(data)
    with pytest.raises(SourceError, match=fragment):
        read_idx(path, 3)
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(data)
    with pytest.raises(SourceError, match=fragment):
        read_idx(plain, 3)


def test_idx_streamed_body_equals_the_file(tmp_path):
    array = (np.arange(3 * 700 * 800) % 253).astype(np.uint8).reshape(3, 700, 800)  # > 1 MB: several reads
    _write_idx_by_hand(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz", 3), array)


def _two_classes(root, n=3):
    for cls, value in (("a", 10), ("b", 200)):
        for i in range(n):
            _png(root / cls / f"{i}.png", value + i)


def test_links_out_of_the_root_are_refused_by_name_and_never_opened(tmp_path):
    outside = tmp_path / "elsewhere"
    _png(outside / "secret.png", 99)
    _png(outside / "dir" / "0.png", 98)
    root = tmp_path / "root"
    _two_classes(root)
    (root / "a" / "3.png").symlink_to(outside / "secret.png")
    (root / "c").symlink_to(outside / "dir", target_is_directory=True)
    opens = _FileOpens(outside)
    opens.active = True
    try:
        for read in (list_imagefolder, read_imagefolder):
            with pytest.raises(SourceError, match=(
                    rf"(?s)2 symbolic link\(s\) under {root} resolve outside it \(refused, never followed.*\n"
                    rf"  {root}/a/3.png -> {outside}/secret.png\n  {root}/c -> {outside}/dir$")):
                read(root)
            with pytest.raises(SourceError, match=rf"^2 symbolic link\(s\) under {root}"):
                ingest_dataset({"source": "imagefolder", "root": str(root), "seed": 0, "n_test": 2},
                               tmp_path / "s.zarr", dataset="f")
    finally:
        opens.active = False
    assert opens.counts == Counter() and not (tmp_path / "s.zarr").exists()


def test_links_inside_the_root_are_followed(tmp_path):
    root = tmp_path / "root"
    _two_classes(root)
    (root / "b" / "again.png").symlink_to(root / "a" / "0.png")
    (root / "shared").mkdir()
    _png(root / "shared" / "x.png", 50)
    (root / "a" / "x.png").symlink_to(Path("..") / "shared" / "x.png")
    images, labels, _, names, _ = read_imagefolder(root)
    assert names == ["a", "b", "shared"]
    assert images[:, 0, 0, 0].tolist() == [10, 11, 12, 50, 200, 201, 202, 10, 50]


def test_a_file_swapped_for_an_outside_link_after_the_listing_is_not_read(tmp_path):
    _png(tmp_path / "elsewhere.png", 99)
    root = tmp_path / "root"
    _two_classes(root)
    folder = ImageFolder(root)  # lists
    (root / "a" / "1.png").unlink()
    (root / "a" / "1.png").symlink_to(tmp_path / "elsewhere.png")

    def plan(labels, split):
        return np.arange(len(labels)), lambda shape: ImageStoreWriter(tmp_path / "s.zarr", labels, np.zeros(6),
                                                                      ["a", "b"], shape)

    with pytest.raises(SourceError, match=rf"1 unreadable image.*\n  {root}/a/1.png \(resolves outside the image "
                                          rf"folder's root, to {tmp_path}/elsewhere.png \(not read\)\)"):
        folder.decode(plan)
    assert not (tmp_path / "s.zarr").exists()


def test_sixteen_bit_depth_comes_from_the_mode_not_the_values(tmp_path):
    # a dark and a bright 16-bit image: both on the 0..65535 scale, whatever their largest value
    for cls, values in (("dark", [0, 200, 257]), ("bright", [25700, 65535, 1000])):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.array([values] * 2, np.uint16)).save(tmp_path / cls / "0.png")
    assert Image.open(tmp_path / "dark" / "0.png").mode == "I;16"
    images, labels, _, names, attrs = read_imagefolder(tmp_path)
    assert names == ["bright", "dark"] and attrs["channels"] == 1
    assert images[0, 0, :, 0].tolist() == [100, 255, 4] and images[1, 0, :, 0].tolist() == [0, 1, 1]


def test_every_sixteen_bit_value_is_rounded_to_the_nearest_eight_bit_value(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # all of them, in one image
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(values).save(tmp_path / cls / "0.png")
    images = read_imagefolder(tmp_path)[0]
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(images[0, ..., 0], expected) and np.array_equal(images[1, ..., 0], expected)
    assert expected[0, 128] == 0 and expected[0, 129] == 1 and expected[-1, -1] == 255  # 128/257 < 0.5 < 129/257


def test_a_decode_waits_until_the_pixels_it_needs_are_free():
    budget = DecodeBudget(capacity=100)
    second_started = threading.Event()

    def second():
        with budget.hold(60):
            second_started.set()

    with budget.hold(60):
        thread = threading.Thread(target=second)
        thread.start()
        assert not second_started.wait(0.3) and budget.in_use == 60  # 60 + 60 > 100: it waits
    assert second_started.wait(10)
    thread.join()
    assert budget.peak == 60 and budget.in_use == 0
    with budget.hold(10), budget.hold(90):  # small ones share the budget
        assert budget.in_use == 100
    with budget.hold(10_000):  # an image larger than the budget holds all of it, alone
        assert budget.in_use == 100
    assert budget.peak == 100 and budget.in_use == 0


@pytest.mark.parametrize("mode, array", [("I", np.full((2, 3), 70000, np.int32)),
                                         ("F", np.full((2, 3), 0.5, np.float32))])
def test_thirty_two_bit_images_are_refused(tmp_path, mode, array):
    _png(tmp_path / "a" / "0.png", 1, size=(2, 3))
    (tmp_path / "b").mkdir()
    Image.fromarray(array, mode).save(tmp_path / "b" / "wide.png", format="TIFF")  # PIL reads by content
    with pytest.raises(SourceError, match=rf"b/wide.png \(ValueError: mode {mode} \(32-bit .*\) has no fixed range"):
        read_imagefolder(tmp_path)


def test_an_image_over_the_pixel_cap_is_refused_before_decoding(tmp_path):
    _two_classes(tmp_path)
    (tmp_path / "b" / "bomb.png").write_bytes(png_claiming(8500, 8500))
    with pytest.raises(SourceError, match=r"b/bomb.png \(ValueError: 8500x8500 = 72250000 pixels; at most 67108864 "
                                          r"per image \(embedscope.sources.MAX_IMAGE_PIXELS\)\)"):
        read_imagefolder(tmp_path)
    assert len(read_imagefolder(tmp_path, on_bad_image="skip")[0]) == 6


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path, monkeypatch):
    import embedscope.sources as sources

    _two_classes(tmp_path)
    big = tmp_path / "b" / "big.png"
    big.write_bytes((tmp_path / "b" / "0.png").read_bytes() + b"\0" * 100)  # the only file over the cap below
    size = big.stat().st_size
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", size - 1)  # the real cap is 1 GiB
    with pytest.raises(SourceError, match=rf"1 unreadable image.*\n  {tmp_path}/b/big.png \({size} bytes; at most "
                                          rf"{size - 1} per image file \(not read\)\)"):
        read_imagefolder(tmp_path)


def test_other_files_are_counted_reported_and_listed_when_nothing_else_is_left(tmp_path, caplog):
    _two_classes(tmp_path / "root")
    root = tmp_path / "root"
    (root / "a" / "scan.tif").write_bytes(b"x")
    (root / "a" / "sub").mkdir()
    (root / "README.md").write_text("about")
    (root / "a" / ".DS_Store").write_bytes(b"x")  # hidden: not counted
    listing = list_imagefolder(root)
    assert listing.ignored == ["README.md", "a/scan.tif", "a/sub/"]
    with caplog.at_level("INFO"):
        store = _ingest(root, tmp_path / "s.zarr", n_test=2)
    assert store.attrs["ignored_files"] == 3 and store.attrs["ignored_paths"] == ["README.md", "a/scan.tif", "a/sub/"]
    assert "dataset folder: 3 file(s) under" in caplog.text and "README.md, a/scan.tif, a/sub/" in caplog.text
    (root / "c").mkdir()
    (root / "c" / "photo.webp").write_bytes(b"x")
    (root / "c" / "photo.bmp").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"1 empty class folder\(s\) \(no .png/.jpg/.jpeg files\):\n  .*/c \(it "
                                          r"holds only photo.bmp, photo.webp\)"):
        list_imagefolder(root)
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.tif", "b.gif"):
        (flat / name).write_bytes(b"x")
    with pytest.raises(SourceError, match=r"flat holds no class folders \(it holds only other files: a.tif, b.gif\)"):
        list_imagefolder(flat)


def test_a_single_class_folder_stops_at_ingest(tmp_path):
    for i in range(4):
        _png(tmp_path / "only" / "cats" / f"{i}.png", i)
    with pytest.raises(SourceError, match=rf"datasets.folder.root: {tmp_path}/only holds a single class folder, "
                                          r"'cats'; .* needs at least 2 class folders"):
        _ingest(tmp_path / "only", tmp_path / "s.zarr", n_test=2)
    assert not (tmp_path / "s.zarr").exists()


def test_a_torchvision_layout_under_its_own_root_tells_its_size_without_reading_images(tmp_path):
    write_mnist_raw(tmp_path / "m", n_train=120, n_test=30, seed=0)
    assert torchvision_split_bounds("MNIST", tmp_path / "m") == (120, 30)  # the IDX headers, exactly
    write_cifar10_raw(tmp_path / "c", n_train=100, n_test=20, seed=0)
    # an extracted CIFAR-10: size // 3,072 of each 20-image batch (93,107-93,221 bytes here) bounds its rows
    assert torchvision_split_bounds("CIFAR10", tmp_path / "c") == (5 * 30, 30)
    write_cifar10_raw(tmp_path / "a", n_train=100, n_test=20, seed=0, archive=True)
    assert torchvision_split_bounds("CIFAR10", tmp_path / "a") is None  # only decompressing it would tell
    assert torchvision_split_bounds("MNIST", tmp_path / "missing") is None


def test_split_sizes_are_checked_against_the_files_read(tmp_path):
    _two_classes(tmp_path / "root", n=4)
    with pytest.raises(SourceError, match=r"datasets.folder: n_train = 1 gives 1 train images.*\n.*n_test = 1 gives 1 "
                                          r"test images; a stratified split of image folder .*'s 2 classes needs at "
                                          r"least 2"):
        _ingest(tmp_path / "root", tmp_path / "s.zarr", n_train=1, n_test=1)
    (tmp_path / "root" / "b" / "1.png").write_bytes(b"broken")  # skipped: 7 readable images left
    with pytest.raises(ValueError, match=r"datasets.folder: n_train \+ n_test = 8, but the source has 7 images"):
        _ingest(tmp_path / "root", tmp_path / "s.zarr", n_train=6, n_test=2, on_bad_image="skip")
    assert not (tmp_path / "s.zarr").exists()
