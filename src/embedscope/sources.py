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
import math
import os
import pickle
import tarfile
import threading
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MNIST_CLASSES = [str(d) for d in range(10)]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA"}
_MAX_LISTED = 20
MAX_IGNORED_ATTRS = 1000  # ignored paths kept in a store's attributes (all of them are counted)


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


MAX_IDX_BYTES = 1 << 30  # the official MNIST train images are 47 MB; a header asking for more is not MNIST
_IDX_CHUNK = 1 << 20


def _read_exactly(fh, n: int) -> bytes:
    data = fh.read(n)
    return data if data is not None else b""


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read one IDX file (optionally .gz): magic 0x0000 + type byte 0x08 (ubyte) + ndim byte, big-endian
    int32 dims, then the data.

    The header is checked before any of the body is read, and the body is streamed (from the gzip stream, never
    decompressed whole) into an array of exactly the size the dims give, after that size was bounded by
    :data:`MAX_IDX_BYTES`; a body shorter or longer than the dims say is an error naming the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = _read_exactly(fh, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise SourceError(f"{path}: not an IDX file (expected magic bytes 00 00 <type> <ndim>)")
            if head[2] != 0x08 or head[3] != ndim:
                raise SourceError(
                    f"{path}: IDX type 0x{head[2]:02x} with {head[3]} dims; expected unsigned bytes (0x08) with "
                    f"{ndim} dims"
                )
            raw_dims = _read_exactly(fh, 4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise SourceError(f"{path}: IDX header ends after {4 + len(raw_dims)} bytes (truncated or corrupt)")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">i4"))
            expected = math.prod(dims)
            if min(dims) < 0 or expected > MAX_IDX_BYTES:
                raise SourceError(
                    f"{path}: header says {dims} = {expected} bytes of data; expected non-negative dims of at most "
                    f"{MAX_IDX_BYTES} bytes in all (corrupt or not an MNIST file)"
                )
            body = np.empty(expected, np.uint8)
            view = memoryview(body)
            filled = 0
            while filled < expected:
                got = fh.readinto(view[filled : filled + _IDX_CHUNK])
                if not got:
                    break
                filled += got
            extra = bool(_read_exactly(fh, 1))  # one byte past the body is enough to know it is too long
    except (OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read ({exc}); expected an IDX file (gzip-compressed if .gz)") from exc
    if filled != expected or extra:
        holds = "more than that" if extra else str(filled)
        raise SourceError(
            f"{path}: header says {dims} = {expected} bytes of data, the file holds {holds} (truncated or corrupt)"
        )
    return body.reshape(dims)


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


# Everything a CIFAR-10 batch pickle refers to by name: the containers and scalars of its dict, numpy's array and
# scalar reconstruction (from a dtype and raw bytes; numpy 1 pickles name numpy.core, numpy 2 ones numpy._core; a
# label list written from numpy holds numpy scalars), and _codecs.encode, which a Python 3 pickle of protocol 2
# uses for bytes. Any other global (os.system, builtins.eval, ...) could run code while loading, so it is refused
# before it is even imported.
_CIFAR_GLOBALS = frozenset(
    {(module, name) for module in ("builtins", "__builtin__") for name in ("dict", "list", "bytes", "str", "int")}
    | {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :data:`_CIFAR_GLOBALS`."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR-10 batch holds only dicts, lists, bytes, str, int and "
                "numpy arrays"
            )
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    # The official batches are Python 2 pickles; encoding="bytes" keeps their keys as b"data", b"labels", ...
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
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


MAX_CIFAR_BATCH_BYTES = 256 << 20  # an official batch is 31 MB (10,000 rows of 3,072 bytes, labels, names)


def _check_batch_size(size: int, where: str) -> None:
    if size > MAX_CIFAR_BATCH_BYTES:
        raise SourceError(f"{where}: {size} bytes; a CIFAR-10 batch file holds at most {MAX_CIFAR_BATCH_BYTES}")


def _read_cifar10(root: Path):
    """CIFAR-10's batches, each decoded straight into one array allocated up front for as many rows as the batch
    sizes allow (3,072 bytes per image at least); the rows never filled are never touched, so never resident,
    and the peak is one copy of the images plus one batch."""
    archive = root / "cifar-10-python.tar.gz"
    folder = root / _CIFAR_DIR
    names = _CIFAR_TRAIN + _CIFAR_TEST + [_CIFAR_META]
    tar = None
    try:
        if archive.is_file():
            # read the members straight from the archive that was staged and MD5-checked
            try:
                tar = tarfile.open(archive, "r:gz")
                members = {}
                for name in names:
                    try:
                        info = tar.getmember(f"{_CIFAR_DIR}/{name}")
                    except KeyError:
                        info = None
                    if info is None or not info.isfile():
                        raise SourceError(f"{archive}: member {_CIFAR_DIR}/{name} not found (as a regular file)")
                    _check_batch_size(info.size, f"{archive}:{_CIFAR_DIR}/{name}")
                    members[name] = info
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise SourceError(f"{archive}: cannot read the archive ({exc})") from exc
            sizes = {name: info.size for name, info in members.items()}
            where = {name: f"{archive}:{_CIFAR_DIR}/{name}" for name in names}
            used = [archive]

            def read(name: str) -> bytes:
                try:
                    return tar.extractfile(members[name]).read()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    raise SourceError(f"{archive}: cannot read the archive ({exc})") from exc
        elif folder.is_dir():
            missing = [str(folder / n) for n in names if not (folder / n).is_file()]
            if missing:
                raise SourceError("CIFAR-10 batch files not found:\n" + _listing(missing))
            sizes = {name: (folder / name).stat().st_size for name in names}
            for name in names:
                _check_batch_size(sizes[name], str(folder / name))
            where = {name: str(folder / name) for name in names}
            used = [folder / n for n in names]

            def read(name: str) -> bytes:
                return (folder / name).read_bytes()
        else:
            raise SourceError(
                f"CIFAR-10 not found under {root}: expected {archive} (or its extracted {folder}/ with "
                f"{', '.join(names)})"
            )
        meta = _unpickle(read(_CIFAR_META), where[_CIFAR_META])
        if "label_names" not in meta:
            raise SourceError(f"{where[_CIFAR_META]}: no key label_names; found {sorted(meta)}")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
        bound = sum(sizes[name] // (3 * 32 * 32) for name in _CIFAR_TRAIN + _CIFAR_TEST)
        images = np.empty((bound, 32, 32, 3), np.uint8)
        labels, split, filled = [], [], 0
        for code, part in enumerate((_CIFAR_TRAIN, _CIFAR_TEST)):
            for name in part:
                x, y = _cifar_batch(read(name), where[name])
                if y.size and (y.min() < 0 or y.max() >= len(class_names)):
                    raise SourceError(f"{where[name]}: labels must be 0..{len(class_names) - 1}")
                images[filled : filled + len(x)] = x
                filled += len(x)
                labels.append(y)
                split.append(np.full(len(y), code, np.uint8))
                del x
    finally:
        if tar is not None:
            tar.close()
    attrs = {
        "source_name": "CIFAR10",
        "input_files": [str(p.relative_to(root)) for p in used],
        "input_sha256": _checksum(used, root),
    }
    return images[:filled], np.concatenate(labels), np.concatenate(split), class_names, attrs


def _idx_count(path: Path) -> int:
    """The first dimension an IDX file's header gives (read from its first 8 bytes only)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = _read_exactly(fh, 8)
    if len(head) < 8 or head[:2] != b"\0\0":
        raise SourceError(f"{path}: not an IDX file")
    return int(np.frombuffer(head[4:8], dtype=">i4")[0])


def torchvision_split_bounds(name: str, root: str | os.PathLike) -> tuple[int, int] | None:
    """``(train, test)`` images a torchvision dataset under its own ``root`` holds at most, from headers and
    file sizes only (no image is read, nothing decompressed): MNIST's IDX label headers; an extracted CIFAR-10
    folder's batch sizes (each image takes 3,072 bytes of its batch, so size // 3,072 bounds its rows). None
    when the files cannot tell, and for CIFAR-10's archive (its members' sizes are known only after
    decompressing it whole): the official sizes then stand, and ingest reports what is wrong with the files."""
    root = Path(root)
    try:
        if name == "MNIST":
            raw = root / "MNIST" / "raw"
            return tuple(_idx_count(_mnist_file(raw, _MNIST_FILES[part][1])) for part in ("train", "test"))
        folder = root / _CIFAR_DIR
        if name == "CIFAR10" and folder.is_dir() and not (root / "cifar-10-python.tar.gz").is_file():
            rows = {n: (folder / n).stat().st_size // (3 * 32 * 32) for n in _CIFAR_TRAIN + _CIFAR_TEST}
            return sum(rows[n] for n in _CIFAR_TRAIN), sum(rows[n] for n in _CIFAR_TEST)
    except (OSError, EOFError, SourceError):
        return None
    return None


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
    ignored: list[str] = field(default_factory=list)  # relative paths of files (and folders/) not in the layout

    def paths(self) -> list[str]:
        root = str(self.root)
        return [os.path.join(root, e.relpath) for e in self.entries]

    def fingerprint(self) -> str:
        """A digest of the listing (relative names and sizes): changes when a file is added, removed or resized."""
        digest = hashlib.sha256()
        for entry in self.entries:
            digest.update(f"{entry.relpath}\0{entry.size}\n".encode())
        return digest.hexdigest()[:16]


@dataclass
class _Scan:
    """What one folder of an image folder holds (hidden entries left out)."""

    dirs: list[str]  # sorted subfolder names
    files: list[tuple[str, int]]  # sorted (name, size) of image files
    other: list[str]  # sorted names of files (or links) that are neither an image file nor a folder
    outside: list[tuple[str, str]]  # (name, target) of symbolic links that resolve outside the root


def _within(real_root: str, path: str) -> tuple[bool, str]:
    """(whether ``path`` resolves inside ``real_root``, what it resolves to)."""
    real = os.path.realpath(path)
    return real == real_root or real.startswith(os.path.join(real_root, "")), real


def _scan_folder(folder: Path, real_root: str) -> _Scan:
    scan = _Scan([], [], [], [])
    with os.scandir(folder) as found:
        for item in found:
            if item.name.startswith("."):
                continue
            if item.is_symlink():
                inside, target = _within(real_root, item.path)
                if not inside:
                    scan.outside.append((item.name, target))  # never followed: not listed, decoded or hashed
                    continue
            if item.is_dir():
                scan.dirs.append(item.name)
            elif item.is_file() and os.path.splitext(item.name)[1].lower() in IMAGE_SUFFIXES:
                scan.files.append((item.name, item.stat().st_size))
            else:
                scan.other.append(item.name)
    scan.dirs.sort()
    scan.files.sort()
    scan.other.sort()
    scan.outside.sort()
    return scan


def list_imagefolder(root: str | os.PathLike) -> ImageFolderListing:
    """List ``root/{class}/*.png|jpg`` or ``root/{train,test}/{class}/*``: class names are the sorted folder
    names; hidden files and folders are left out, and every other file or folder that is not part of the layout
    (another suffix, a folder inside a class folder, a file beside the class folders) is recorded in
    ``ignored``. Raises SourceError on a bad layout, and on a symbolic link anywhere in the layout that resolves
    outside the root (such links are never followed)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"imagefolder root {root} is not a folder; expected {root}/<class>/*.png|jpg")
    real_root = os.path.realpath(root)
    outside, ignored = [], []

    def scan(folder: Path, prefix: str) -> _Scan:
        found = _scan_folder(folder, real_root)
        outside.extend((prefix + name, target) for name, target in found.outside)
        return found

    top = scan(root, "")
    names = set(top.dirs)
    if "train" not in names and "test" not in names:
        layout, parts = "classes", [(None, root)]
    elif not {"train", "test"} <= names:
        present, absent = ("train", "test") if "train" in names else ("test", "train")
        raise SourceError(
            f"{root} has {present}/ but no {absent}/: expected both {root}/train/<class>/ and "
            f"{root}/test/<class>/, or only class folders {root}/<class>/"
        )
    else:
        layout, parts = "train_test", [("train", root / "train"), ("test", root / "test")]
        ignored += [f"{d}/" for d in top.dirs if d not in ("train", "test")] + [f for f, _ in top.files] + top.other
    class_sets = {}
    for part, folder in parts:
        found = top if part is None else scan(folder, f"{part}/")
        prefix = "" if part is None else f"{part}/"
        ignored += [prefix + f for f, _ in found.files] + [prefix + f for f in found.other]
        if not found.dirs:
            hint = f" ({len(found.files)} images lie directly in it)" if found.files else ""
            if found.other:
                hint += f" (it holds only other files: {_few(found.other)})"
            _refuse_outside(root, outside)
            raise SourceError(f"{folder} holds no class folders{hint}; expected {folder}/<class>/*.png|jpg")
        class_sets[part] = found.dirs
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
            prefix = f"{part}/{name}/" if part else f"{name}/"
            found = scan(folder / name, prefix)
            others = [d + "/" for d in found.dirs] + found.other
            ignored += [prefix + o for o in others]
            if not found.files:
                held = f" (it holds only {_few(others)})" if others else ""
                empty.append(f"{folder / name}{held}")
            entries += [FolderEntry(code if part else None, label, prefix + f, size, root) for f, size in found.files]
    _refuse_outside(root, outside)
    if empty:
        raise SourceError(
            f"{len(empty)} empty class folder(s) (no {'/'.join(IMAGE_SUFFIXES)} files):\n" + _listing(empty)
        )
    return ImageFolderListing(root, layout, class_names, entries, sorted(ignored))


def _few(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _refuse_outside(root: Path, outside: list[tuple[str, str]]) -> None:
    if outside:
        raise SourceError(
            f"{len(outside)} symbolic link(s) under {root} resolve outside it (refused, never followed: an image "
            f"folder is read only inside its root; copy the files in instead):\n"
            + _listing([f"{root / name} -> {target}" for name, target in sorted(outside)])
        )


class _FileBytes(io.BytesIO):
    """A file's bytes that PIL's error messages name by the file's path."""

    def __init__(self, data: bytes, path: Path):
        super().__init__(data)
        self.path = path

    def __repr__(self) -> str:
        return repr(str(self.path))


# Pixels one image may have, checked from its header before it is decoded: 8192 x 8192, a quarter of PIL's own
# warning threshold (Image.MAX_IMAGE_PIXELS), so that a decompression bomb stops with a message naming the file.
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_FILE_BYTES = 1 << 30  # no PNG or JPEG of at most MAX_IMAGE_PIXELS pixels needs more; checked before reading
# Bytes per pixel a decode holds at its peak: up to three RGB copies (PIL's decoded image, the converted one and
# an EXIF-rotated one); a 16-bit image holds its 2-byte original, a 4-byte working copy and the 1-byte result.
DECODE_BYTES_PER_PIXEL = 9
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


class DecodeBudget:
    """Pixels being decoded at once, across the decoding threads: at most ``capacity`` (the largest image one
    file may have), so many small images decode in parallel while a large one decodes alone. An ingest's memory
    then stays within DECODE_BYTES_PER_PIXEL x capacity however many threads decode and whatever the folder
    holds."""

    def __init__(self, capacity: int = MAX_IMAGE_PIXELS):
        self.capacity = int(capacity)
        self.in_use = 0
        self.peak = 0  # the most pixels ever held at once
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        need = min(int(pixels), self.capacity)
        with self._free:
            self._free.wait_for(lambda: self.in_use + need <= self.capacity)
            self.in_use += need
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._free:
                self.in_use -= need
                self._free.notify_all()


def _decode_image(data: bytes, path: Path, image_size, budget: DecodeBudget | None = None):
    """(array uint8 (H,W) for grayscale or (H,W,3) for colour, original (H,W)); raises on an unreadable file.

    The bit depth comes from the PIL mode, never from the pixel values: 16-bit grayscale (``I;16*``, a 16-bit
    PNG) is divided by 257 (65535 -> 255), the same for every file of that mode; 1-bit and 8-bit modes are
    converted by PIL; 32-bit integer (``I``) and float (``F``) images have no fixed range and are refused. The
    decode waits for room in ``budget`` (its pixel count, read from the header) before it starts."""
    from PIL import Image

    with Image.open(_FileBytes(data, path)) as img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{img.width}x{img.height} = {img.width * img.height} pixels; at most "
                             f"{MAX_IMAGE_PIXELS} per image (embedscope.sources.MAX_IMAGE_PIXELS)")
        if img.mode in ("I", "F"):
            raise ValueError(f"mode {img.mode} (32-bit {'integer' if img.mode == 'I' else 'float'}) has no fixed "
                             "range; expected 1-, 8- or 16-bit grayscale or 8-bit colour")
        with budget.hold(img.width * img.height) if budget is not None else contextlib.nullcontext():
            return _decoded(img, image_size)


def _decoded(img, image_size):
    """``_decode_image``'s result from an opened image whose header passed the checks."""
    from PIL import Image, ImageOps

    img.load()
    img = ImageOps.exif_transpose(img)
    original = (img.height, img.width)
    if img.mode in _SIXTEEN_BIT_MODES:
        # round(v / 257) in integers: v + 128 never lands on a half, as 257 is odd
        arr = np.array(img, dtype=np.uint32)
        arr += 128
        arr //= 257
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
        del arr
    elif img.mode in _GRAY_MODES:
        img = img.convert("L")
    else:
        img = img.convert("RGB")
    if image_size is not None:
        height, width = int(image_size[0]), int(image_size[1])
        if (img.height, img.width) != (height, width):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy(), original


def _read_image(path: Path, image_size, real_root: str, budget: DecodeBudget | None = None):
    """(file bytes or None, image or None, original size or None, why it failed or None): one read per file,
    the bytes both decoded and (by the caller) hashed. A file that resolves outside the root now (a link
    swapped in since the listing) or is larger than MAX_FILE_BYTES is not read."""
    inside, target = _within(real_root, str(path))
    if not inside:
        return None, None, None, f"resolves outside the image folder's root, to {target} (not read)"
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE_BYTES:
            return None, None, None, f"{size} bytes; at most {MAX_FILE_BYTES} per image file (not read)"
        data = path.read_bytes()
    except OSError as exc:
        return None, None, None, f"{type(exc).__name__}: {exc}"
    try:
        image, original = _decode_image(data, path, image_size, budget)
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
        real_root = os.path.realpath(self.listing.root)
        budget = DecodeBudget()
        read = _in_order(lambda i: _read_image(entries[i].path, self.image_size, real_root, budget), order, threads)
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
            # files (and folders/) beside the images that were not read: another suffix, not in the layout
            "ignored_files": len(self.listing.ignored),
            "ignored_paths": self.listing.ignored[:MAX_IGNORED_ATTRS],
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
