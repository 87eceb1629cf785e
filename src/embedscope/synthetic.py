"""Small synthetic datasets written in torchvision's real on-disk formats (for tests and benchmarks).

- ``write_mnist_raw(root, n_train, n_test)``: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
  (IDX: magic 00 00 08 <ndim>, big-endian int32 dims, unsigned bytes), gzip-compressed as distributed.
- ``write_cifar10_raw(root, n_train, n_test)``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}`` (pickled dicts with bytes keys b"data" (N, 3072) uint8, b"labels", b"label_names"), and with
  ``archive=True`` also ``root/cifar-10-python.tar.gz`` holding that folder, as distributed.
- ``write_imagefolder(root, n_per_class, size)``: ``root/{class}/{i:05d}.png``, an image folder of PNGs.
- ``write_synthetic_inputs(folder, n_points, maps)``: everything the explorer reads (an image store, t-SNE maps,
  predictions, an embedding-quality table), written by the formats' owners (:mod:`embedscope.store`,
  :mod:`embedscope.artifacts`).

Images are a seeded class template plus noise, so that classes are separable but not trivially.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedscope.artifacts import EMBEDDING_COLUMNS, write_predictions, write_table, write_tsne
from embedscope.intervals import add_intervals

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as an IDX file's bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def synthetic_images(n: int, shape: tuple[int, ...], n_classes: int = 10, seed: int = 0, chunk: int = 10000):
    """(images uint8 (n, *shape), labels uint8): per-class random templates plus noise, made in chunks."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(n_classes, *shape)).astype(np.int16)
    labels = (np.arange(n) % n_classes).astype(np.uint8)
    rng.shuffle(labels)
    images = np.empty((n, *shape), np.uint8)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        noise = rng.integers(-96, 97, size=(stop - start, *shape), dtype=np.int16)
        images[start:stop] = np.clip(templates[labels[start:stop]] // 2 + 64 + noise, 0, 255)
    return images, labels


def write_mnist_raw(root: str | os.PathLike, n_train: int = 60, n_test: int = 20, seed: int = 0) -> list[Path]:
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = []
    for offset, (prefix, n) in enumerate((("train", n_train), ("t10k", n_test))):
        images, labels = synthetic_images(n, (28, 28), seed=seed + offset)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = raw / f"{prefix}-{kind}-ubyte.gz"
            with gzip.open(path, "wb", compresslevel=1) as fh:
                fh.write(idx_bytes(array))
            written.append(path)
    return written


def write_cifar10_raw(
    root: str | os.PathLike, n_train: int = 50, n_test: int = 10, seed: int = 0, archive: bool = False
) -> Path:
    """Five train batches (n_train split across them) and one test batch; returns the batches folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_images(n_train + n_test, (3, 32, 32), seed=seed)
    flat = images.reshape(len(images), -1)
    bounds = np.linspace(0, n_train, 6).astype(int)
    batches = [(f"data_batch_{i + 1}", slice(bounds[i], bounds[i + 1])) for i in range(5)]
    batches.append(("test_batch", slice(n_train, n_train + n_test)))
    for name, part in batches:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels[part]],
            b"data": flat[part],
            b"filenames": [f"{name}_{i}.png".encode() for i in range(part.stop - part.start)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    meta = {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    if archive:
        with tarfile.open(Path(root) / "cifar-10-python.tar.gz", "w:gz", compresslevel=1) as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    return folder


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """One uint8 image, (H, W) grayscale or (H, W, 3) RGB, as a PNG (parent folders created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "L" if image.ndim == 2 else "RGB").save(path)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 grayscale PNG whose header (IHDR) claims ``width`` x ``height``: how a decompression bomb looks to a
    reader that checks the header before decoding."""
    import io
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def write_imagefolder(root: str | os.PathLike, n_per_class: int = 10, size: tuple[int, int] = (32, 32),
                      n_classes: int = 3, channels: int = 3, seed: int = 0) -> list[Path]:
    """``root/class_{c}/{i:05d}.png``: ``n_per_class`` synthetic images of each class; returns the files."""
    shape = (*size, channels) if channels == 3 else tuple(size)
    images, labels = synthetic_images(n_per_class * n_classes, shape, n_classes=n_classes, seed=seed)
    written, count = [], [0] * n_classes
    for image, label in zip(images, labels, strict=True):
        written.append(write_png(Path(root) / f"class_{label}" / f"{count[label]:05d}.png", image))
        count[label] += 1
    return written


# ---- explorer inputs ---------------------------------------------------------------------------------------


def ring_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 28, 28, 1) uint8 digit-like blobs: a ring at a random centre whose radius grows with the label."""
    yy, xx = np.mgrid[:28, :28]
    centres = rng.uniform(8, 20, size=(len(labels), 2))
    radius = 3 + labels[:, None, None] * 0.6
    dist = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
    return (np.clip(1.5 - np.abs(dist - radius), 0, 1) * 255).astype(np.uint8)[..., None]


def synthetic_probabilities(labels: np.ndarray, n_classes: int, wrong_fraction: float,
                            rng: np.random.Generator) -> np.ndarray:
    """(n, C) class probabilities whose argmax is wrong for about ``wrong_fraction`` of the points (with a
    lower confidence than the right ones)."""
    n = len(labels)
    wrong = rng.random(n) < wrong_fraction
    pred = np.where(wrong, (labels + 1 + rng.integers(0, n_classes - 1, n)) % n_classes, labels)
    prob = np.where(wrong, rng.uniform(0.3, 0.6, n), rng.uniform(0.7, 1.0, n))
    probs = np.zeros((n, n_classes))
    probs[np.arange(n), pred] = prob
    return probs


def synthetic_map(labels: np.ndarray, m: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) coordinates of map number ``m``: one noisy cluster per class on a circle, a layout per ``m``."""
    angle = 2 * np.pi * (labels + m) / n_classes
    spread = (0.3 + m * 0.05) * 5
    x = np.cos(angle) * (5 + m) + rng.normal(0, spread, len(labels))
    y = np.sin(angle) * (5 + m) + rng.normal(0, spread, len(labels))
    return np.stack([x, y], axis=1)


def synthetic_quality_row(extractor: str, layer: str, m: int, n_points: int) -> dict[str, object]:
    """An embedding-quality row whose numbers tell map ``m`` apart (trustworthiness 0.9 + m / 1000, ...)."""
    return {"dataset": "synthetic", "extractor": extractor, "layer": layer, "D": 64 * (m + 1), "n": n_points,
            "n_test": n_points, "n_quality": n_points, "trustworthiness": 0.9 + m / 1000,
            "knn_accuracy_2d": 0.5 + m / 100,
            "silhouette_features": 0.1 + m / 100, "silhouette_2d": 0.2 + m / 100, "ncc_accuracy": 0.6 + m / 100,
            "nc1": 3.0 - m / 10}


def write_synthetic_inputs(
    folder: str | os.PathLike,
    n_points: int,
    maps: Sequence[tuple[str, str]],
    images: np.ndarray | None = None,
    n_classes: int = 10,
    n_train: int = 0,
    seed: int = 0,
    wrong_fraction: float = 0.1,
) -> dict[str, object]:
    """Small explorer inputs in the real on-disk formats, for tests and bench/explorer.py.

    Writes ``folder/data.zarr`` (``n_train`` train + ``n_points`` test images; ``images`` uint8 NHWC recycled,
    else :func:`ring_images`), one t-SNE map per (extractor, layer) at ``folder/tsne/{extractor}/{layer}.csv``
    over the test split (resnet18_finetuned maps carry pred/prob), ``folder/embedding_quality.csv`` and
    ``folder/predictions.csv``. Returns the keyword arguments of ``build_explorer`` (without ``output``).
    """
    from embedscope.store import write_image_store

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    total = n_train + n_points
    labels = np.arange(total) % n_classes
    rng.shuffle(labels)
    split = np.r_[np.zeros(n_train, np.uint8), np.ones(n_points, np.uint8)]
    if images is None:
        images = ring_images(labels, rng)
    else:
        images = np.asarray(images, dtype=np.uint8)[np.arange(total) % len(images)]
    names = [f"class {c}" for c in range(n_classes)]
    write_image_store(folder / "data.zarr", images, labels, split, names, attrs={"source": "synthetic"})

    index = np.flatnonzero(split == 1)
    test_labels = labels[index]
    probs = synthetic_probabilities(test_labels, n_classes, wrong_fraction, rng)
    losses = -np.log(probs[np.arange(n_points), test_labels] + 1e-6)
    write_predictions(folder / "predictions.csv", index, test_labels, probs, losses)

    triples, quality = [], []
    for m, (extractor, layer) in enumerate(maps):
        xy = synthetic_map(test_labels, m, n_classes, rng)
        table = pd.DataFrame({"index": index, "x": xy[:, 0], "y": xy[:, 1], "label": test_labels})
        if extractor == "resnet18_finetuned":
            table["pred"], table["prob"] = probs.argmax(1), probs.max(1)
        path = folder / "tsne" / extractor / f"{layer}.csv"
        write_tsne(path, table)
        triples.append((extractor, layer, str(path)))
        quality.append(synthetic_quality_row(extractor, layer, m, n_points))
    quality = add_intervals(pd.DataFrame(quality, columns=EMBEDDING_COLUMNS),
                            {"knn_accuracy_2d": "n", "ncc_accuracy": "n_test"})
    write_table(quality, folder / "embedding_quality.csv")
    return {
        "image_store": str(folder / "data.zarr"),
        "maps": triples,
        "quality_csv": str(folder / "embedding_quality.csv"),
        "predictions_csv": str(folder / "predictions.csv"),
        "dataset": "synthetic",
    }
