"""Zarr stores: image stores, per-layer feature stores, written atomically.

Every store is a Zarr v3 group written to a temporary sibling directory and renamed into place only
when it is whole; ``attrs["complete"] = True`` is the last thing written. zarr-python 3 reads chunks
that were never written as the fill value without complaint, so readers refuse a store without that
attribute instead of returning silent zeros.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from embedscope.temporaries import remove_stale

SPLIT_NAMES = ("train", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}
CHUNK_BYTES = 2 * 1024 * 1024  # ~2 MB chunks: small enough to stream, large enough to compress well


class StoreError(RuntimeError):
    """A store is missing, incomplete or does not hold what was asked for."""


@dataclass
class ImageSet:
    """The contents of an image store, in memory."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    split: np.ndarray  # uint8 (N,), codes into SPLIT_NAMES
    class_names: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Sample indices of one split (all samples for ``None``), in store order."""
        if split is None:
            return np.arange(len(self.labels))
        return np.flatnonzero(self.split == split_code(split))

    def subset(self, split: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, labels, index)`` of one split."""
        idx = self.indices(split)
        return self.images[idx], self.labels[idx], idx


@dataclass
class FeatureSet:
    """One layer of a feature store, for one split."""

    features: np.ndarray  # float32 (n, D)
    labels: np.ndarray  # int64 (n,)
    index: np.ndarray  # int64 (n,), sample index into the image store
    split: np.ndarray  # uint8 (n,)
    attrs: dict[str, Any] = field(default_factory=dict)


def split_code(split: str) -> int:
    try:
        return SPLIT_CODES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_NAMES)}") from None


def config_digest(values: Mapping[str, Any] | Sequence[Any] | Any) -> str:
    """A short stable digest of the config values that shaped an output."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("numpy", "zarr", *names):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def rows_per_chunk(row_bytes: int) -> int:
    return int(max(1, CHUNK_BYTES // max(1, row_bytes)))


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it into place only if the block succeeds.

    On any exception the temporary directory is removed and ``final`` is left untouched, so no
    half-written store is ever visible under its real name. Temporaries of ``final`` left by a process that
    died (SIGKILL, out of memory) are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def create_array(group: zarr.Group, name: str, data_or_shape, dtype=None, dims=("sample",), **kwargs):
    """Create an array chunked along samples only, zstd-compressed."""
    if isinstance(data_or_shape, np.ndarray):
        shape, dtype = data_or_shape.shape, data_or_shape.dtype
    else:
        shape = tuple(data_or_shape)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    chunks = (min(max(shape[0], 1), rows_per_chunk(row_bytes)), *shape[1:])
    dims = tuple(dims) + tuple(f"dim_{i}" for i in range(len(dims), len(shape)))
    array = group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        compressors=ZstdCodec(level=3),
        dimension_names=dims[: len(shape)],
        **kwargs,
    )
    if isinstance(data_or_shape, np.ndarray):
        array[...] = data_or_shape
    return array


def open_complete(path: str | os.PathLike) -> zarr.Group:
    """Open a store for reading; refuse one that is missing or was not finished."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a damaged group
        raise StoreError(f"store {path} is not a readable Zarr group: {exc}") from exc
    if group.attrs.get("complete") is not True:
        raise StoreError(
            f"store {path} is incomplete (attribute 'complete' is not true); rerun the rule that writes it"
        )
    return group


def _plain(value: Any) -> Any:
    """Zarr attributes are JSON: turn numpy scalars and arrays into Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ImageStoreWriter:
    """Writes an image store row by row into a preallocated ``images`` array, so memory does not grow with N.

    ``labels`` and ``split`` (one per stored row) are known up front; the images arrive in any order, either
    as blocks (:meth:`write`, fastest when blocks follow the chunks) or one row at a time (:meth:`put`, which
    gathers rows into chunk-sized buffers and writes each chunk once, when all its rows are in). On a clean
    exit every row must have been written; labels, split and attributes follow, ``complete`` last::

        with ImageStoreWriter(path, labels, split, class_names, (28, 28, 1), attrs) as writer:
            for row, image in ...:
                writer.put(row, image)
            writer.attrs["input_sha256"] = ...
    """

    def __init__(
        self,
        path: str | os.PathLike,
        labels: np.ndarray,
        split: np.ndarray,
        class_names: Sequence[str],
        image_shape: Sequence[int],
        attrs: Mapping[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.split = np.asarray(split, dtype=np.uint8)
        self.class_names = list(class_names)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.attrs = dict(attrs or {})
        if len(self.image_shape) != 3 or min(self.image_shape, default=0) < 1:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        if len(self.labels) != len(self.split):
            raise ValueError("labels and split must have the same length")
        self.chunk_rows = rows_per_chunk(int(np.prod(self.image_shape)))
        self._context = None
        self._group: zarr.Group | None = None
        self._images: zarr.Array | None = None
        self._pending: dict[int, tuple[np.ndarray, int]] = {}  # chunk -> (buffer, rows filled)
        self._written = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __enter__(self) -> ImageStoreWriter:
        self._context = atomic_directory(self.path)
        tmp = self._context.__enter__()
        self._group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        self._images = create_array(self._group, "images", (len(self), *self.image_shape), dtype=np.uint8,
                                    dims=("sample", "height", "width", "channel"))
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._context.__exit__(type(error), error, error.__traceback__)
                raise
        return self._context.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if self._pending or self._written != len(self):
            raise StoreError(f"store {self.path}: {len(self) - self._written} of {len(self)} image rows were "
                             "never written (or some twice)")
        create_array(self._group, "labels", self.labels)
        create_array(self._group, "split", self.split)
        counts = {
            name: {self.class_names[c]: int(np.sum((self.split == code) & (self.labels == c)))
                   for c in range(len(self.class_names))}
            for code, name in enumerate(SPLIT_NAMES)
        }
        self._group.attrs.update(_plain({
            **self.attrs,
            "class_names": self.class_names,
            "split_names": list(SPLIT_NAMES),
            "counts": counts,
            "n_samples": len(self),
            "image_shape": list(self.image_shape),
        }))
        self._group.attrs["complete"] = True

    def _check_rows(self, block: np.ndarray, start: int) -> np.ndarray:
        block = np.asarray(block)
        if block.dtype != np.uint8 or block.shape[1:] != self.image_shape:
            raise ValueError(f"image rows must be uint8 {self.image_shape}, got {block.dtype} {block.shape[1:]}")
        if start < 0 or start + len(block) > len(self):
            raise ValueError(f"rows {start}:{start + len(block)} lie outside the store's {len(self)} rows")
        return block

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows ``start:start+len(block)`` at once (each row written once, by write or put)."""
        block = self._check_rows(block, start)
        self._images[start : start + len(block)] = block
        self._written += len(block)

    def put(self, row: int, image: np.ndarray) -> None:
        """One row; its chunk is written when its last row arrives."""
        image = self._check_rows(np.asarray(image)[None], row)[0]
        chunk = row // self.chunk_rows
        first = chunk * self.chunk_rows
        size = min(self.chunk_rows, len(self) - first)
        buffer, filled = self._pending.get(chunk) or (np.empty((size, *self.image_shape), np.uint8), 0)
        buffer[row - first] = image
        self._written += 1
        if filled + 1 < size:
            self._pending[chunk] = (buffer, filled + 1)
            return
        self._pending.pop(chunk, None)
        self._images[first : first + size] = buffer


def write_image_store(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
    rows: np.ndarray | None = None,
) -> None:
    """Write an in-memory image set atomically: ``images`` uint8 (N,H,W,C), or only ``images[rows]`` (in that
    order, gathered chunk by chunk rather than copied whole), with one label and split code per stored row."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    if not (len(rows) == len(labels) == len(split)):
        raise ValueError("images, labels and split must have the same length")
    with ImageStoreWriter(path, labels, split, class_names, images.shape[1:], attrs) as writer:
        for start in range(0, len(rows), writer.chunk_rows):
            writer.write(start, images[rows[start : start + writer.chunk_rows]])


def iter_image_chunks(path: str | os.PathLike, split: str | None = None
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images, labels)`` of one split (all rows for ``None``), one stored chunk of rows at a time."""
    group = open_complete(path)
    images = group["images"]
    labels = group["labels"][...].astype(np.int64)
    codes = group["split"][...].astype(np.uint8)
    step = images.chunks[0]
    for start in range(0, len(labels), step):
        stop = min(len(labels), start + step)
        wanted = slice(None) if split is None else np.flatnonzero(codes[start:stop] == split_code(split))
        if split is not None and not len(wanted):
            continue
        yield images[start:stop][wanted], labels[start:stop][wanted]


@dataclass
class ImageIndex:
    """What an image store says about its rows, without the images: labels, split codes and class names."""

    labels: np.ndarray  # int64 (N,)
    split: np.ndarray  # uint8 (N,), codes into SPLIT_NAMES
    class_names: list[str]
    image_shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Sample indices of one split (all samples for ``None``), in store order."""
        if split is None:
            return np.arange(len(self.labels))
        return np.flatnonzero(self.split == split_code(split))


def read_image_index(path: str | os.PathLike) -> ImageIndex:
    """Labels, split and class names of an image store; no image is read."""
    group = open_complete(path)
    attrs = dict(group.attrs)
    return ImageIndex(
        labels=group["labels"][...].astype(np.int64),
        split=group["split"][...].astype(np.uint8),
        class_names=list(attrs["class_names"]),
        image_shape=tuple(int(s) for s in group["images"].shape[1:]),
        attrs=attrs,
    )


def read_image_rows(path: str | os.PathLike, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """``images[rows]`` uint8 (len(rows), H, W, C) in the order given, read by orthogonal indexing: only the
    chunks that hold one of the rows are read and decoded."""
    images = open_complete(path)["images"]
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= images.shape[0]):
        raise StoreError(f"image store {path} has {images.shape[0]} rows; asked for rows {int(rows.min())}.."
                         f"{int(rows.max())}")
    if not len(rows):
        return np.zeros((0, *images.shape[1:]), dtype=np.uint8)
    unique, inverse = np.unique(rows, return_inverse=True)  # sorted, as orthogonal selections are read best
    taken = np.asarray(images.oindex[(unique, *(slice(None),) * (images.ndim - 1))])
    return taken[inverse]


def pixel_rows(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, labels)`` of one split: images flattened and scaled to 0..1 in float32, filled chunk by chunk
    of stored rows into one preallocated array (no uint8 or float64 copy of the split is ever whole)."""
    index = read_image_index(path)
    rows = index.indices(split)
    width = int(np.prod(index.image_shape))
    pixels = np.empty((len(rows), width), dtype=np.float32)
    labels = np.empty(len(rows), dtype=np.int64)
    filled = 0
    for images, block_labels in iter_image_chunks(path, split):
        stop = filled + len(images)
        pixels[filled:stop] = np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0
        labels[filled:stop] = block_labels
        filled = stop
    return pixels, labels


@dataclass
class ImageSplits:
    """An image store read split by split: each split's images in one preallocated uint8 array."""

    images: dict[str, np.ndarray]  # split -> uint8 (n, H, W, C), store order
    index: dict[str, np.ndarray]  # split -> int64 (n,), rows of the store
    labels: np.ndarray  # int64 (N,), every row
    split: np.ndarray  # uint8 (N,), every row
    class_names: list[str]

    def labels_of(self, split: str) -> np.ndarray:
        return self.labels[self.index[split]]


def image_store_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """``(N, H, W, C)`` of an image store's images, without reading them."""
    return tuple(int(s) for s in open_complete(path)["images"].shape)


def read_image_splits(path: str | os.PathLike, on_chunk=None) -> ImageSplits:
    """Every split's images, each in ONE array allocated up front and filled chunk by chunk (iter_image_chunks),
    so the peak is one uint8 copy of the images plus one chunk. ``on_chunk(images)`` sees every stored chunk of
    rows in store order (fine-tuning hashes them)."""
    group = open_complete(path)
    labels = group["labels"][...].astype(np.int64)
    codes = group["split"][...].astype(np.uint8)
    shape = tuple(int(s) for s in group["images"].shape[1:])
    index = {name: np.flatnonzero(codes == code) for name, code in SPLIT_CODES.items()}
    images = {name: np.empty((len(rows), *shape), np.uint8) for name, rows in index.items()}
    filled = dict.fromkeys(SPLIT_NAMES, 0)
    start = 0
    for chunk, _ in iter_image_chunks(path):
        if on_chunk is not None:
            on_chunk(chunk)
        chunk_codes = codes[start : start + len(chunk)]
        for name, code in SPLIT_CODES.items():
            rows = chunk[chunk_codes == code]
            images[name][filled[name] : filled[name] + len(rows)] = rows
            filled[name] += len(rows)
        start += len(chunk)
    return ImageSplits(images, index, labels, codes, list(group.attrs["class_names"]))


def read_image_store(path: str | os.PathLike) -> ImageSet:
    group = open_complete(path)
    attrs = dict(group.attrs)
    return ImageSet(
        images=group["images"][...],
        labels=group["labels"][...].astype(np.int64),
        split=group["split"][...].astype(np.uint8),
        class_names=list(attrs["class_names"]),
        attrs=attrs,
    )


class FeatureStoreWriter:
    """Writes a feature store layer by layer, batch by batch, so memory does not grow with N.

    Use as a context manager around the extraction loop::

        with FeatureStoreWriter(path, labels, split, index, attrs) as writer:
            for start, batch in ...:
                for layer, values in outputs.items():
                    writer.write(layer, start, values, layer_attrs=...)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        labels: np.ndarray,
        split: np.ndarray,
        index: np.ndarray,
        attrs: Mapping[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.split = np.asarray(split, dtype=np.uint8)
        self.index = np.asarray(index, dtype=np.int64)
        self.attrs = dict(attrs or {})
        self._context = None
        self._group: zarr.Group | None = None
        self._layers: dict[str, zarr.Group] = {}
        self.layer_order: list[str] = []

    def __enter__(self) -> FeatureStoreWriter:
        self._context = atomic_directory(self.path)
        tmp = self._context.__enter__()
        self._group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._group.attrs.update(_plain({**self.attrs, "layers": self.layer_order}))
            self._group.attrs["complete"] = True
        return self._context.__exit__(exc_type, exc, tb)

    def add_layer(self, layer: str, dim: int, layer_attrs: Mapping[str, Any] | None = None) -> zarr.Group:
        group = self._group.create_group(layer)
        create_array(group, "features", (len(self.labels), int(dim)), dtype=np.float32, dims=("sample", "feature"))
        create_array(group, "labels", self.labels)
        create_array(group, "split", self.split)
        create_array(group, "index", self.index)
        group.attrs.update(_plain({**self.attrs, "layer": layer, "dim": int(dim), **(layer_attrs or {})}))
        self._layers[layer] = group
        self.layer_order.append(layer)
        return group

    def write(self, layer: str, start: int, values: np.ndarray, layer_attrs: Mapping[str, Any] | None = None):
        """Write rows ``start:start+len(values)`` of one layer, creating the layer on first use."""
        values = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
        if layer not in self._layers:
            self.add_layer(layer, values.shape[1], layer_attrs)
        self._layers[layer]["features"][start : start + len(values)] = values


def layer_names(path: str | os.PathLike) -> list[str]:
    return list(open_complete(path).attrs["layers"])


def load_features(path: str | os.PathLike, layer: str, split: str | None = None) -> FeatureSet:
    """Read one layer of a feature store, optionally one split of it."""
    group = open_complete(path)
    if layer not in group.attrs["layers"]:
        raise StoreError(f"store {path} has no layer {layer!r}; it has {list(group.attrs['layers'])}")
    layer_group = group[layer]
    split_all = layer_group["split"][...].astype(np.uint8)
    rows = slice(None) if split is None else np.flatnonzero(split_all == split_code(split))
    features = layer_group["features"][...] if split is None else layer_group["features"].oindex[rows, :]
    return FeatureSet(
        features=np.asarray(features, dtype=np.float32),
        labels=layer_group["labels"][...].astype(np.int64)[rows],
        index=layer_group["index"][...].astype(np.int64)[rows],
        split=split_all[rows],
        attrs=dict(layer_group.attrs),
    )


def load_feature_rows(path: str | os.PathLike, layer: str, samples: Sequence[int] | np.ndarray) -> FeatureSet:
    """The rows of one layer whose sample index (into the image store) is in ``samples``, in that order.

    Only the chunks that hold one of them are read and decoded (orthogonal indexing), so a subsample of a split
    costs its own rows in memory, not the split's. A sample the layer does not hold is an error.
    """
    group = open_complete(path)
    if layer not in group.attrs["layers"]:
        raise StoreError(f"store {path} has no layer {layer!r}; it has {list(group.attrs['layers'])}")
    layer_group = group[layer]
    index = layer_group["index"][...].astype(np.int64)
    samples = np.asarray(samples, dtype=np.int64)
    order = np.argsort(index, kind="stable")
    found = np.searchsorted(index[order], samples)
    found = np.minimum(found, len(index) - 1)
    rows = order[found] if len(index) else found
    missing = samples[index[rows] != samples] if len(index) else samples
    if len(missing):
        raise StoreError(f"store {path}/{layer} lacks {len(missing)} of the {len(samples)} samples asked for "
                         f"(e.g. sample {int(missing[0])}); is it stale?")
    unique, inverse = np.unique(rows, return_inverse=True)  # sorted, as orthogonal selections are read best
    features = np.asarray(layer_group["features"].oindex[unique, :], dtype=np.float32)
    if not np.array_equal(unique, rows):  # rows asked for out of store order, or twice: one more copy
        features = features[inverse]
    return FeatureSet(
        features=features,
        labels=layer_group["labels"][...].astype(np.int64)[rows],
        index=index[rows],
        split=layer_group["split"][...].astype(np.uint8)[rows],
        attrs=dict(layer_group.attrs),
    )
