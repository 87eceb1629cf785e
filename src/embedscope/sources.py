"""Pure readers of image sources: torchvision's raw files (MNIST IDX, CIFAR-10 pickle batches) and image folders.

Every reader returns ``(images, labels, split, class_names, attrs)``:
images uint8 (N,H,W,C); labels int64 indices into class_names; split uint8 codes (0 train, 1 test) or None
when the source has no split of its own; attrs a JSON-friendly dict with a checksum of the input files.
Readers only read: nothing is written, nothing is downloaded (see embedscope.download for staging).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

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


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _load_image(path: Path, image_size):
    """(array uint8 (H,W) for grayscale or (H,W,3) for colour, original (H,W)); raises on an unreadable file."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
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


def read_imagefolder(root: str | os.PathLike, image_size=None, on_bad_image: str = "error"):
    """Your own images: ``root/{class}/*.png|jpg`` (no split: the caller makes a seeded stratified one) or
    ``root/train/{class}/...`` + ``root/test/{class}/...`` (split kept).

    Class names: the sorted folder names; file order: split, class, file name. All images grayscale -> C=1,
    else C=3 (grayscale ones repeated to RGB). ``image_size`` [h, w] resizes every image; without it all
    images must share one size. ``on_bad_image``: "error" stops on unreadable images (listing them), "skip"
    leaves them out, counted in attrs["skipped_images"] and listed in attrs["skipped_files"].
    """
    root = Path(root)
    if on_bad_image not in ("error", "skip"):
        raise SourceError(f"datasets.<id>.on_bad_image is {on_bad_image!r}; expected error or skip")
    if image_size is not None:
        if len(image_size) != 2 or any(int(s) < 1 for s in image_size):
            raise SourceError(f"datasets.<id>.image_size is {image_size!r}; expected [height, width]")
        image_size = [int(s) for s in image_size]
    if not root.is_dir():
        raise SourceError(f"imagefolder root {root} is not a folder; expected {root}/<class>/*.png|jpg")

    names = {p.name for p in _visible_dirs(root)}
    if "train" in names or "test" in names:
        if not {"train", "test"} <= names:
            present, absent = ("train", "test") if "train" in names else ("test", "train")
            raise SourceError(
                f"{root} has {present}/ but no {absent}/: expected both {root}/train/<class>/ and "
                f"{root}/test/<class>/, or only class folders {root}/<class>/"
            )
        parts = [("train", root / "train"), ("test", root / "test")]
        layout = "train_test"
    else:
        parts = [(None, root)]
        layout = "classes"

    class_sets = {}
    for part, folder in parts:
        class_dirs = _visible_dirs(folder)
        if not class_dirs:
            loose = _image_files(folder)
            hint = f" ({len(loose)} images lie directly in it)" if loose else ""
            raise SourceError(f"{folder} holds no class folders{hint}; expected {folder}/<class>/*.png|jpg")
        class_sets[part] = [d.name for d in class_dirs]
    if layout == "train_test" and class_sets["train"] != class_sets["test"]:
        only_train = sorted(set(class_sets["train"]) - set(class_sets["test"]))
        only_test = sorted(set(class_sets["test"]) - set(class_sets["train"]))
        raise SourceError(
            f"{root}/train and {root}/test must hold the same class folders; only in train: {only_train}, "
            f"only in test: {only_test}"
        )
    class_names = class_sets[parts[0][0]]

    entries = []  # (split code or None, label, path)
    empty = []
    for code, (part, folder) in enumerate(parts):
        for label, name in enumerate(class_names):
            files = _image_files(folder / name)
            if not files:
                empty.append(folder / name)
            entries += [(code if part else None, label, f) for f in files]
    if empty:
        raise SourceError(
            f"{len(empty)} empty class folder(s) (no {'/'.join(IMAGE_SUFFIXES)} files):\n" + _listing(empty)
        )

    arrays, originals, kept, bad = [], [], [], []
    for entry in entries:
        try:
            arr, original = _load_image(entry[2], image_size)
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
            bad.append((entry[2], f"{type(exc).__name__}: {exc}"))
            continue
        arrays.append(arr)
        originals.append(original)
        kept.append(entry)
    if bad and on_bad_image == "error":
        raise SourceError(
            f"{len(bad)} unreadable image(s) (set on_bad_image: skip to leave them out):\n"
            + _listing([f"{p} ({why})" for p, why in bad])
        )
    left = {(code, label) for code, label, _ in kept}
    emptied = sorted({entry[2].parent for entry in entries if (entry[0], entry[1]) not in left})
    if emptied:
        raise SourceError("class folder(s) with no readable image left after skipping:\n" + _listing(emptied))

    if image_size is None:
        sizes = Counter(a.shape[:2] for a in arrays)
        if len(sizes) > 1:
            common = sizes.most_common(1)[0][0]
            odd = [f"{e[2]} ({a.shape[0]}x{a.shape[1]})" for e, a in zip(kept, arrays, strict=True)
                   if a.shape[:2] != common]
            raise SourceError(
                f"images under {root} have {len(sizes)} different sizes (most are {common[0]}x{common[1]}, "
                f"height x width); set datasets.<id>.image_size: [height, width] to resize them. "
                f"Files of another size:\n" + _listing(odd)
            )
    gray = all(a.ndim == 2 for a in arrays)
    if gray:
        images = np.stack(arrays)[..., None]
    else:
        images = np.stack([np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays])
    del arrays
    labels = np.array([e[1] for e in kept], dtype=np.int64)
    split = np.array([e[0] for e in kept], dtype=np.uint8) if layout == "train_test" else None
    all_files = [e[2] for e in entries]
    attrs = {
        "source_name": "imagefolder",
        "root": str(root),
        "layout": layout,
        "channels": 1 if gray else 3,
        "image_size": list(images.shape[1:3]),
        "resized": image_size is not None,
        "original_sizes": {f"{h}x{w}": n for (h, w), n in sorted(Counter(originals).items())},
        "n_files": len(entries),
        "skipped_images": len(bad),
        "skipped_files": [str(p.relative_to(root)) for p, _ in bad],
        "input_sha256": _checksum(all_files, root),
    }
    return images, labels, split, list(class_names), attrs


__all__ = ["SourceError", "read_idx", "read_torchvision", "read_imagefolder", "MNIST_CLASSES"]
