"""Pure readers of image sources: torchvision's raw files (MNIST IDX, CIFAR-10 pickle batches) and image folders.

Every reader returns ``(images, labels, split, class_names, attrs)``:
images uint8 (N,H,W,C); labels int64 indices into class_names; split uint8 codes (0 train, 1 test) or None
when the source has no split of its own; attrs a JSON-friendly dict with a checksum of the input files.
Readers only read: nothing is written, nothing is downloaded (see embedscope.download for staging).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MNIST_CLASSES = [str(d) for d in range(10)]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_MAX_LISTED = 20


class SourceError(ValueError):
    """A source's files are missing or not what was expected; the message names the file or folder."""


def _listing(paths: Sequence, limit: int = _MAX_LISTED) -> str:
    shown = [f"  {p}" for p in list(paths)[:limit]]
    if len(paths) > limit:
        shown.append(f"  ... and {len(paths) - limit} more")
    return "\n".join(shown)


def _checksum(paths: Sequence[Path], base: Path) -> str:
    """SHA-256 over (relative path, contents) of every file, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(Path(path).relative_to(base)).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# ---- torchvision: MNIST --------------------------------------------------------------------------------

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read one IDX file (optionally .gz): magic 0x0000 + type byte 0x08 (ubyte) + ndim byte, big-endian
    int32 dims, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read ({exc}); expected an IDX file (gzip-compressed if .gz)") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SourceError(f"{path}: not an IDX file (expected magic bytes 00 00 <type> <ndim>)")
    if data[2] != 0x08 or data[3] != ndim:
        raise SourceError(
            f"{path}: IDX type 0x{data[2]:02x} with {data[3]} dims; expected unsigned bytes (0x08) with {ndim} dims"
        )
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise SourceError(
            f"{path}: header says {dims} = {expected} bytes of data, the file holds {len(data) - header}"
            " (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_file(raw: Path, stem: str) -> Path:
    for candidate in (raw / f"{stem}.gz", raw / stem):
        if candidate.is_file():
            return candidate
    raise SourceError(f"MNIST file {raw / (stem + '.gz')} (or its extracted {stem}) not found")


def _read_mnist(root: Path):
    raw = root / "MNIST" / "raw"
    if not raw.is_dir():
        raise SourceError(f"{raw} not found: expected MNIST's raw IDX files there, as torchvision stores them")
    images, labels, split, used = [], [], [], []
    for code, part in enumerate(("train", "test")):
        image_file, label_file = (_mnist_file(raw, stem) for stem in _MNIST_FILES[part])
        x = read_idx(image_file, 3)
        y = read_idx(label_file, 1)
        if len(x) != len(y):
            raise SourceError(f"{image_file} holds {len(x)} images but {label_file} {len(y)} labels")
        if y.size and y.max() > 9:
            raise SourceError(f"{label_file}: labels must be 0..9, found {int(y.max())}")
        images.append(x[..., None])
        labels.append(y.astype(np.int64))
        split.append(np.full(len(y), code, np.uint8))
        used += [image_file, label_file]
    attrs = {
        "source_name": "MNIST",
        "input_files": [str(p.relative_to(root)) for p in used],
        "input_sha256": _checksum(used, root),
    }
    return np.concatenate(images), np.concatenate(labels), np.concatenate(split), list(MNIST_CLASSES), attrs


# ---- torchvision: CIFAR-10 -----------------------------------------------------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]
_CIFAR_META = "batches.meta"


def _unpickle(data: bytes, where: str) -> dict:
    # The official batches are Python 2 pickles; encoding="bytes" keeps their keys as b"data", b"labels", ...
    try:
        obj = pickle.loads(data, encoding="bytes")
    except Exception as exc:
        raise SourceError(f"{where}: not a CIFAR-10 pickle batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, where)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise SourceError(f"{where}: CIFAR-10 batch without key(s) {missing}; found {sorted(batch)}")
    x = np.asarray(batch["data"], dtype=np.uint8)
    y = np.asarray(batch["labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise SourceError(
            f"{where}: data {x.shape} / labels {y.shape}; expected data (N, 3072) uint8 and N labels"
        )
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _read_cifar10(root: Path):
    archive = root / "cifar-10-python.tar.gz"
    folder = root / _CIFAR_DIR
    names = _CIFAR_TRAIN + _CIFAR_TEST + [_CIFAR_META]
    if archive.is_file():
        # read the members straight from the archive that was staged and MD5-checked
        contents = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in names:
                    try:
                        member = tar.extractfile(f"{_CIFAR_DIR}/{name}")
                    except KeyError:
                        member = None
                    if member is None:
                        raise SourceError(f"{archive}: member {_CIFAR_DIR}/{name} not found")
                    contents[name] = member.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"{archive}: cannot read the archive ({exc})") from exc
        where = {name: f"{archive}:{_CIFAR_DIR}/{name}" for name in names}
        used = [archive]
    elif folder.is_dir():
        missing = [str(folder / n) for n in names if not (folder / n).is_file()]
        if missing:
            raise SourceError("CIFAR-10 batch files not found:\n" + _listing(missing))
        contents = {name: (folder / name).read_bytes() for name in names}
        where = {name: str(folder / name) for name in names}
        used = [folder / n for n in names]
    else:
        raise SourceError(
            f"CIFAR-10 not found under {root}: expected {archive} (or its extracted {folder}/ with "
            f"{', '.join(names)})"
        )
    meta = _unpickle(contents[_CIFAR_META], where[_CIFAR_META])
    if "label_names" not in meta:
        raise SourceError(f"{where[_CIFAR_META]}: no key label_names; found {sorted(meta)}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    images, labels, split = [], [], []
    for code, part in enumerate((_CIFAR_TRAIN, _CIFAR_TEST)):
        for name in part:
            x, y = _cifar_batch(contents.pop(name), where[name])
            if y.size and (y.min() < 0 or y.max() >= len(class_names)):
                raise SourceError(f"{where[name]}: labels must be 0..{len(class_names) - 1}")
            images.append(x)
            labels.append(y)
            split.append(np.full(len(y), code, np.uint8))
    attrs = {
        "source_name": "CIFAR10",
        "input_files": [str(p.relative_to(root)) for p in used],
        "input_sha256": _checksum(used, root),
    }
    return np.concatenate(images), np.concatenate(labels), np.concatenate(split), class_names, attrs


def read_torchvision(name: str, root: str | os.PathLike):
    """MNIST from ``root/MNIST/raw/*-ubyte.gz`` or CIFAR10 from ``root/cifar-10-python.tar.gz`` (or the
    extracted ``root/cifar-10-batches-py/``): torchvision's on-disk layout, read without torchvision and without
    the network. The official split is kept (train first, then test)."""
    root = Path(root)
    if name == "MNIST":
        images, labels, split, class_names, attrs = _read_mnist(root)
    elif name == "CIFAR10":
        images, labels, split, class_names, attrs = _read_cifar10(root)
    else:
        raise SourceError(f"datasets.<id>.name is {name!r}; expected MNIST or CIFAR10")
    attrs.update({"root": str(root), "channels": int(images.shape[-1])})
    return np.ascontiguousarray(images), labels, split, class_names, attrs


# ---- imagefolder ---------------------------------------------------------------------------------------
# Listing is cheap (os.scandir, no decoding) so that the workflow lists a folder at DAG time to track its files;
# decoding reads each file once, in parallel, and hands the rows to a sink (an image store being written).


@dataclass(frozen=True)
class FolderEntry:
    """One listed image file: split code (None without train/test folders), class label, path relative to the
    root (with "/"), size in bytes."""

    split: int | None
    label: int
    relpath: str
    size: int
    root: Path

    @property
    def path(self) -> Path:
        return self.root / self.relpath


@dataclass(frozen=True)
class ImageFolderListing:
    """Every image file of an image folder, in store order: split, class, file name."""

    root: Path
    layout: str  # "classes" (root/{class}/*) or "train_test" (root/{train,test}/{class}/*)
    class_names: list[str]
    entries: list[FolderEntry]

    def paths(self) -> list[str]:
        root = str(self.root)
        return [os.path.join(root, e.relpath) for e in self.entries]

    def fingerprint(self) -> str:
        """A digest of the listing (relative names and sizes): changes when a file is added, removed or resized."""
        digest = hashlib.sha256()
        for entry in self.entries:
            digest.update(f"{entry.relpath}\0{entry.size}\n".encode())
        return digest.hexdigest()[:16]


def _scan_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted visible subfolder names, sorted (name, size) of visible image files) of one folder."""
    dirs, files = [], []
    with os.scandir(folder) as found:
        for item in found:
            if item.name.startswith("."):
                continue
            if item.is_dir():
                dirs.append(item.name)
            elif item.is_file() and os.path.splitext(item.name)[1].lower() in IMAGE_SUFFIXES:
                files.append((item.name, item.stat().st_size))
    return sorted(dirs), sorted(files)


def _folder_parts(root: Path) -> tuple[str, list[tuple[str | None, Path]]]:
    names = set(_scan_folder(root)[0])
    if "train" not in names and "test" not in names:
        return "classes", [(None, root)]
    if not {"train", "test"} <= names:
        present, absent = ("train", "test") if "train" in names else ("test", "train")
        raise SourceError(
            f"{root} has {present}/ but no {absent}/: expected both {root}/train/<class>/ and "
            f"{root}/test/<class>/, or only class folders {root}/<class>/"
        )
    return "train_test", [("train", root / "train"), ("test", root / "test")]


def list_imagefolder(root: str | os.PathLike) -> ImageFolderListing:
    """List ``root/{class}/*.png|jpg`` or ``root/{train,test}/{class}/*``: class names are the sorted folder
    names; hidden files and folders and other suffixes are ignored. Raises SourceError on a bad layout."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"imagefolder root {root} is not a folder; expected {root}/<class>/*.png|jpg")
    layout, parts = _folder_parts(root)
    class_sets = {}
    for part, folder in parts:
        class_dirs, loose = _scan_folder(folder)
        if not class_dirs:
            hint = f" ({len(loose)} images lie directly in it)" if loose else ""
            raise SourceError(f"{folder} holds no class folders{hint}; expected {folder}/<class>/*.png|jpg")
        class_sets[part] = class_dirs
    if layout == "train_test" and class_sets["train"] != class_sets["test"]:
        only_train = sorted(set(class_sets["train"]) - set(class_sets["test"]))
        only_test = sorted(set(class_sets["test"]) - set(class_sets["train"]))
        raise SourceError(
            f"{root}/train and {root}/test must hold the same class folders; only in train: {only_train}, "
            f"only in test: {only_test}"
        )
    class_names = class_sets[parts[0][0]]
    entries, empty = [], []
    for code, (part, folder) in enumerate(parts):
        for label, name in enumerate(class_names):
            files = _scan_folder(folder / name)[1]
            if not files:
                empty.append(folder / name)
            prefix = f"{part}/{name}/" if part else f"{name}/"
            entries += [FolderEntry(code if part else None, label, prefix + f, size, root) for f, size in files]
    if empty:
        raise SourceError(
            f"{len(empty)} empty class folder(s) (no {'/'.join(IMAGE_SUFFIXES)} files):\n" + _listing(empty)
        )
    return ImageFolderListing(root, layout, class_names, entries)


class _FileBytes(io.BytesIO):
    """A file's bytes that PIL's error messages name by the file's path."""

    def __init__(self, data: bytes, path: Path):
        super().__init__(data)
        self.path = path

    def __repr__(self) -> str:
        return repr(str(self.path))


def _decode_image(data: bytes, path: Path, image_size):
    """(array uint8 (H,W) for grayscale or (H,W,3) for colour, original (H,W)); raises on an unreadable file."""
    from PIL import Image, ImageOps

    with Image.open(_FileBytes(data, path)) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        original = (img.height, img.width)
        mode = img.mode
        if mode in _GRAY_MODES:
            if mode.startswith("I"):
                arr = np.asarray(img, dtype=np.float64)
                arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
                img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
            elif mode == "F":
                img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), mode="L")
            else:
                img = img.convert("L")
        else:
            img = img.convert("RGB")
        if image_size is not None:
            height, width = int(image_size[0]), int(image_size[1])
            if (img.height, img.width) != (height, width):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy(), original


def _read_image(path: Path, image_size):
    """(file bytes or None, image or None, original size or None, why it failed or None): one read per file,
    the bytes both decoded and (by the caller) hashed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, None, None, f"{type(exc).__name__}: {exc}"
    try:
        image, original = _decode_image(data, path, image_size)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        return data, None, None, f"{type(exc).__name__}: {exc}"
    return data, image, original, None


def _in_order(function, items: Sequence, threads: int):
    """``map(function, items)`` on ``threads`` threads, results in order, at most 4 per thread in flight."""
    if threads <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 4 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class FolderScan:
    """What one decoding pass over an image folder found."""

    checksum: str  # SHA-256 over (relative path, NUL, contents) of every file read, in entry order
    bad: dict[int, str] = field(default_factory=dict)  # entry -> why it could not be read
    shapes: dict[int, tuple[int, int]] = field(default_factory=dict)  # entry -> decoded (H, W)
    originals: Counter = field(default_factory=Counter)  # original (H, W) -> files
    colour: bool = False  # any readable file in colour
    complete: bool = True  # every planned row reached the sink


class _Replan(Exception):
    """Raised inside the sink's context to discard it: the first pass found what the plan did not know."""

    def __init__(self, scan: FolderScan):
        super().__init__("replan")
        self.scan = scan


def _as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.ndim == 3:
        return image
    return np.repeat(image[..., None], channels, axis=-1)


class ImageFolder:
    """An image folder to decode: its listing and the decoding options (see :func:`read_imagefolder`)."""

    def __init__(self, root: str | os.PathLike, image_size=None, on_bad_image: str = "error"):
        if on_bad_image not in ("error", "skip"):
            raise SourceError(f"datasets.<id>.on_bad_image is {on_bad_image!r}; expected error or skip")
        if image_size is not None:
            if len(image_size) != 2 or any(int(s) < 1 for s in image_size):
                raise SourceError(f"datasets.<id>.image_size is {image_size!r}; expected [height, width]")
            image_size = [int(s) for s in image_size]
        self.image_size = image_size
        self.on_bad_image = on_bad_image
        self.listing = list_imagefolder(root)
        self.labels = np.array([e.label for e in self.listing.entries], dtype=np.int64)
        has_split = self.listing.layout == "train_test"
        self.split = np.array([e.split for e in self.listing.entries], dtype=np.uint8) if has_split else None

    def _pass(self, order: np.ndarray, rows: np.ndarray, open_sink, threads: int, channels: int | None):
        """Read and decode the entries ``order`` (ascending), hash them, put each planned one (``rows[i] >= 0``)
        into the sink, opened at the first planned image with its shape. Writing stops, and the scan is marked
        incomplete, at the first bad file or at an image the sink's shape cannot hold."""
        entries = self.listing.entries
        scan = FolderScan(checksum="")
        digest = hashlib.sha256()
        sink = None
        read = _in_order(lambda i: _read_image(entries[i].path, self.image_size), order, threads)
        for i, (data, image, original, why) in zip(order, read, strict=True):
            digest.update(entries[i].relpath.encode() + b"\0")
            digest.update(data or b"")
            if why is not None:
                scan.bad[int(i)] = why
                scan.complete = False
                continue
            scan.shapes[int(i)] = image.shape[:2]
            scan.originals[original] += 1
            scan.colour |= image.ndim == 3
            if not scan.complete or rows[i] < 0:
                continue
            if sink is None:
                sink = open_sink((*image.shape[:2], channels or (3 if scan.colour else 1)))
            if image.shape[:2] != sink.image_shape[:2] or (image.ndim == 3 and sink.image_shape[2] == 1):
                scan.complete = False
                continue
            sink.put(int(rows[i]), _as_channels(image, sink.image_shape[2]))
        if sink is not None and scan.colour and sink.image_shape[2] == 1:
            scan.complete = False  # a colour file that is not stored makes the stored grayscale ones RGB too
        scan.checksum = digest.hexdigest()
        return scan, sink

    def _check(self, scan: FolderScan) -> None:
        """The errors a full pass can find: unreadable files (unless skipped), emptied classes, mixed sizes."""
        entries, root = self.listing.entries, self.listing.root
        if scan.bad and self.on_bad_image == "error":
            raise SourceError(
                f"{len(scan.bad)} unreadable image(s) (set on_bad_image: skip to leave them out):\n"
                + _listing([f"{entries[i].path} ({why})" for i, why in scan.bad.items()])
            )
        left = {(entries[i].split, entries[i].label) for i in scan.shapes}
        emptied = sorted({e.path.parent for e in entries if (e.split, e.label) not in left})
        if emptied:
            raise SourceError("class folder(s) with no readable image left after skipping:\n" + _listing(emptied))
        sizes = Counter(scan.shapes.values())
        if self.image_size is None and len(sizes) > 1:
            common = sizes.most_common(1)[0][0]
            odd = [f"{entries[i].path} ({h}x{w})" for i, (h, w) in scan.shapes.items() if (h, w) != common]
            raise SourceError(
                f"images under {root} have {len(sizes)} different sizes (most are {common[0]}x{common[1]}, "
                f"height x width); set datasets.<id>.image_size: [height, width] to resize them. "
                f"Files of another size:\n" + _listing(odd)
            )

    def _attrs(self, scan: FolderScan, image_shape) -> dict[str, Any]:
        return {
            "source_name": "imagefolder",
            "root": str(self.listing.root),
            "layout": self.listing.layout,
            "channels": 3 if scan.colour else 1,
            "image_size": list(image_shape[:2]),
            "resized": self.image_size is not None,
            "original_sizes": {f"{h}x{w}": n for (h, w), n in sorted(scan.originals.items())},
            "n_files": len(self.listing.entries),
            "skipped_images": len(scan.bad),
            "skipped_files": [self.listing.entries[i].relpath for i in sorted(scan.bad)],
            "input_sha256": scan.checksum,
        }

    def _attempt(self, plan, threads: int, first: FolderScan | None) -> np.ndarray:
        readable = np.array([i for i in range(len(self.labels)) if first is None or i not in first.bad], np.int64)
        keep, open_sink = plan(self.labels[readable], None if self.split is None else self.split[readable])
        rows = np.full(len(self.labels), -1, np.int64)
        rows[readable[keep]] = np.arange(len(keep))
        # The first pass reads every file (it validates and hashes them all); a second only the planned ones.
        order = np.arange(len(rows)) if first is None else np.flatnonzero(rows >= 0)
        channels = None if first is None else (3 if first.colour else 1)
        with contextlib.ExitStack() as stack:
            scan, sink = self._pass(order, rows, lambda shape: stack.enter_context(open_sink(shape)), threads,
                                    channels)
            full = first or scan
            self._check(full)
            if not scan.complete:
                if first is not None:
                    raise SourceError(f"files under {self.listing.root} changed while they were read; run again")
                raise _Replan(scan)
            sink.attrs.update(self._attrs(full, sink.image_shape))
        return readable

    def decode(self, plan, threads: int = 1) -> np.ndarray:
        """Decode the folder into the sink that ``plan`` opens; returns the entries that were readable.

        ``plan(labels, split)`` gets the labels and split codes (None without train/test folders) of the
        readable files and returns ``(keep, open_sink)``: the positions to store, in store order, and
        ``open_sink((H, W, C))``, a context manager yielding the sink (``put(row, image)``, ``image_shape``,
        ``attrs``). Every file is read once, unless the first pass finds what the plan could not know: an
        unreadable file skipped (the split is made from the readable ones) or a colour image after grayscale
        ones were written; then the sink is discarded and the planned files are read again into a new one.
        """
        try:
            return self._attempt(plan, threads, None)
        except _Replan as replan:
            return self._attempt(plan, threads, replan.scan)


class _ArraySink:
    """A sink into a preallocated in-memory array (for :func:`read_imagefolder`)."""

    def __init__(self, n: int, image_shape):
        self.image_shape = tuple(image_shape)
        self.images = np.empty((n, *self.image_shape), np.uint8)
        self.attrs: dict[str, Any] = {}

    def put(self, row: int, image: np.ndarray) -> None:
        self.images[row] = image


def read_imagefolder(root: str | os.PathLike, image_size=None, on_bad_image: str = "error", threads: int = 1):
    """Your own images: ``root/{class}/*.png|jpg`` (no split: the caller makes a seeded stratified one) or
    ``root/train/{class}/...`` + ``root/test/{class}/...`` (split kept), in memory.

    Class names: the sorted folder names; file order: split, class, file name. All images grayscale -> C=1,
    else C=3 (grayscale ones repeated to RGB). ``image_size`` [h, w] resizes every image; without it all
    images must share one size. ``on_bad_image``: "error" stops on unreadable images (listing them), "skip"
    leaves them out, counted in attrs["skipped_images"] and listed in attrs["skipped_files"]. Ingest streams
    the same decoding into the image store instead (:meth:`ImageFolder.decode`).
    """
    folder = ImageFolder(root, image_size, on_bad_image)
    sinks = []

    def plan(labels, split):
        @contextlib.contextmanager
        def open_sink(shape):
            sinks.append(_ArraySink(len(labels), shape))
            yield sinks[-1]

        return np.arange(len(labels)), open_sink

    readable = folder.decode(plan, threads)
    split = None if folder.split is None else folder.split[readable]
    sink = sinks[-1]
    return sink.images, folder.labels[readable], split, list(folder.listing.class_names), sink.attrs


__all__ = ["SourceError", "read_idx", "read_torchvision", "read_imagefolder", "list_imagefolder", "ImageFolder",
           "MNIST_CLASSES"]
