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
    half-written store is ever visible under its real name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
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


def write_image_store(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write an image store atomically: ``images`` uint8 (N,H,W,C), ``labels``, ``split`` codes."""
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    split = np.asarray(split, dtype=np.uint8)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
    if not (len(images) == len(labels) == len(split)):
        raise ValueError("images, labels and split must have the same length")
    counts = {
        name: {class_names[c]: int(np.sum((split == code) & (labels == c))) for c in range(len(class_names))}
        for code, name in enumerate(SPLIT_NAMES)
    }
    with atomic_directory(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        create_array(group, "images", images, dims=("sample", "height", "width", "channel"))
        create_array(group, "labels", labels)
        create_array(group, "split", split)
        group.attrs.update(
            _plain(
                {
                    **(attrs or {}),
                    "class_names": list(class_names),
                    "split_names": list(SPLIT_NAMES),
                    "counts": counts,
                    "n_samples": len(labels),
                    "image_shape": list(images.shape[1:]),
                }
            )
        )
        group.attrs["complete"] = True


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
