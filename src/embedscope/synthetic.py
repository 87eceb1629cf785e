"""Small synthetic datasets written in torchvision's real on-disk formats (for tests and benchmarks).

- ``write_mnist_raw(root, n_train, n_test)``: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
  (IDX: magic 00 00 08 <ndim>, big-endian int32 dims, unsigned bytes), gzip-compressed as distributed.
- ``write_cifar10_raw(root, n_train, n_test)``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}`` (pickled dicts with bytes keys b"data" (N, 3072) uint8, b"labels", b"label_names"), and with
  ``archive=True`` also ``root/cifar-10-python.tar.gz`` holding that folder, as distributed.
- ``write_imagefolder(root, n_per_class, size)``: ``root/{class}/{i:05d}.png``, an image folder of PNGs.
Images are a seeded class template plus noise, so that classes are separable but not trivially.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

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
