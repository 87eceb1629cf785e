"""Staging of downloaded inputs into ``resources/``: the official torchvision dataset files, checked by MD5.

The file table below is torchvision's own (``torchvision.datasets.MNIST.mirrors/.resources``,
``torchvision.datasets.CIFAR10.url/.filename/.tgz_md5``; tests/test_download.py checks they agree), kept here
as plain data so that the Snakefile can import this module without importing torch.

- ``stage_dataset(name, root)``: files already present with the right MD5 are left alone and the network is
  never touched; a missing file is downloaded with torchvision's download utilities into a temporary name and
  renamed into place only once its MD5 is verified; a present file with a wrong MD5 is an error naming it
  (the user's file is never deleted or overwritten).
- ``verify_staged(name, root)``: the same checks without any download; ingest calls it before reading.

Paths: the staged files of dataset ``name`` live at ``<root>/<relpath>`` where root is ``resources/datasets``
unless ``datasets.<id>.root`` says otherwise (MNIST: ``<root>/MNIST/raw/*.gz``, as torchvision stores it;
CIFAR-10: ``<root>/cifar-10-python.tar.gz``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ROOT = "datasets"  # under the resources folder: resources/datasets


@dataclass(frozen=True)
class StagedFile:
    """One file to stage: where it goes under the dataset root, its MD5, and the URLs to try in order."""

    relpath: str
    md5: str
    urls: tuple[str, ...] = field(default_factory=tuple)

    @property
    def filename(self) -> str:
        return Path(self.relpath).name


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_MNIST_RESOURCES = (
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)

DATASET_FILES: dict[str, tuple[StagedFile, ...]] = {
    "MNIST": tuple(
        StagedFile(f"MNIST/raw/{name}", md5, tuple(mirror + name for mirror in _MNIST_MIRRORS))
        for name, md5 in _MNIST_RESOURCES
    ),
    "CIFAR10": (
        StagedFile(
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        ),
    ),
}

# relpath regex of every staged dataset file (the download rule's wildcard constraint)
STAGED_RELPATH_PATTERN = "|".join(
    re.escape(f.relpath) for files in DATASET_FILES.values() for f in files
)


class StagingError(RuntimeError):
    """A staged input is missing, corrupt or could not be downloaded; the message says what to do."""


def dataset_files(name: str, files: Sequence[StagedFile] | None = None) -> tuple[StagedFile, ...]:
    """The files of torchvision dataset ``name`` (``files`` overrides the table, e.g. in tests)."""
    if files is not None:
        return tuple(files)
    if name not in DATASET_FILES:
        raise StagingError(f"unknown torchvision dataset {name!r}; expected one of {sorted(DATASET_FILES)}")
    return DATASET_FILES[name]


def dataset_root(settings: Mapping, resources: str | os.PathLike = "resources") -> str:
    """Where a torchvision dataset's files live: ``datasets.<id>.root``, else ``<resources>/datasets``."""
    root = settings.get("root")
    return str(root) if root else os.path.join(str(resources), DEFAULT_ROOT)


def staged_paths(name: str, root: str | os.PathLike, files: Sequence[StagedFile] | None = None) -> list[str]:
    """The concrete paths of the staged files (the inputs of ingest, the outputs of the download rule)."""
    return [os.path.join(str(root), f.relpath) for f in dataset_files(name, files)]


def relpath_dataset(relpath: str) -> str:
    """Which dataset a staged relpath belongs to (the download rule's params)."""
    for name, files in DATASET_FILES.items():
        if any(f.relpath == relpath for f in files):
            return name
    raise StagingError(f"{relpath!r} is not a staged dataset file; expected one of {STAGED_RELPATH_PATTERN}")


def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _log(message: str) -> None:
    print(f"embedscope.download: {message}", file=sys.stderr, flush=True)


def _where_to_put(name: str, root: str, wanted: Iterable[StagedFile]) -> str:
    lines = []
    for f in wanted:
        url = f" (from {f.urls[0]})" if f.urls else ""
        lines.append(f"  {os.path.join(root, f.relpath)}  md5 {f.md5}{url}")
    return "\n".join(lines)


def _corrupt_message(name: str, root: str, corrupt: Sequence[tuple[StagedFile, str]]) -> str:
    lines = [
        f"  {os.path.join(root, f.relpath)}: MD5 is {got}, expected {f.md5}" for f, got in corrupt
    ]
    return (
        f"{len(corrupt)} staged file(s) of {name} have the wrong MD5 (corrupt or partial download):\n"
        + "\n".join(lines)
        + "\nReplace them with the official files (or delete them to download again); they were not modified."
    )


def _check(name: str, root: str, files: Sequence[StagedFile]):
    """Split the files into (ok, missing, corrupt[(file, md5)])."""
    ok, missing, corrupt = [], [], []
    for f in files:
        path = os.path.join(root, f.relpath)
        if not os.path.isfile(path):
            missing.append(f)
            continue
        got = file_md5(path)
        if got == f.md5:
            ok.append(f)
        else:
            corrupt.append((f, got))
    return ok, missing, corrupt


def verify_staged(
    name: str, root: str | os.PathLike, files: Sequence[StagedFile] | None = None, strict: bool = True
) -> dict[str, str]:
    """Check every staged file of ``name`` under ``root`` (no network). Returns {relpath: md5 found}.

    Raises StagingError naming each missing file (with where to put it and its MD5) and, with ``strict``,
    each file whose MD5 is wrong (with its MD5 and the expected one). ``strict=False`` is for a user's own
    root (``datasets.<id>.root``: e.g. generated or Fashion-MNIST files in MNIST's layout): files must exist,
    a different MD5 is only logged.
    """
    root = str(root)
    table = dataset_files(name, files)
    ok, missing, corrupt = _check(name, root, table)
    problems = []
    if corrupt and not strict:
        for f, got in corrupt:
            _log(f"{os.path.join(root, f.relpath)}: MD5 {got} is not the official {f.md5} (own root; used as is)")
        ok += [f for f, _ in corrupt]
        found = {f.relpath: f.md5 for f in ok}
        found.update({f.relpath: got for f, got in corrupt})
        corrupt = []
    else:
        found = {f.relpath: f.md5 for f in ok}
    if corrupt:
        problems.append(_corrupt_message(name, root, corrupt))
    if missing:
        problems.append(
            f"{len(missing)} file(s) of {name} are missing; run `snakemake download --cores 1` on a machine "
            f"with network, or put them here:\n{_where_to_put(name, root, missing)}"
        )
    if problems:
        raise StagingError("\n".join(problems))
    return found


def _download_one(f: StagedFile, final: str) -> None:
    """Download ``f`` with torchvision's utilities into a temporary sibling folder, verify, rename into place."""
    from torchvision.datasets.utils import download_url

    directory = os.path.dirname(final) or "."
    os.makedirs(directory, exist_ok=True)
    errors = []
    for url in f.urls:
        tmp = tempfile.mkdtemp(prefix=f".{f.filename}.partial-", dir=directory)
        try:
            _log(f"downloading {url}")
            download_url(url, tmp, filename=f.filename, md5=f.md5)
            partial = os.path.join(tmp, f.filename)
            got = file_md5(partial)
            if got != f.md5:  # download_url checks too; never rename an unverified file into place
                raise StagingError(f"downloaded {url} has MD5 {got}, expected {f.md5}")
            os.replace(partial, final)
            _log(f"staged {final} (md5 {f.md5})")
            return
        except Exception as exc:  # URLError, HTTPError, socket timeout, RuntimeError (md5 mismatch), ...
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
            _log(f"failed: {errors[-1]}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise StagingError("; ".join(errors) if errors else f"no URL known for {f.relpath}")


def stage_dataset(
    name: str,
    root: str | os.PathLike,
    files: Sequence[StagedFile] | None = None,
    only: Iterable[str] | None = None,
    timeout: float = 60.0,
) -> dict[str, str]:
    """Make sure the staged files of torchvision dataset ``name`` are under ``root`` with the right MD5.

    ``files`` overrides the file table (tests); ``only`` restricts staging to these relpaths (one download
    job per file). Files already there and correct: untouched, no network. Files there with a wrong MD5:
    StagingError naming them, nothing downloaded or changed. Missing files: downloaded (socket timeout
    ``timeout`` seconds), verified and renamed into place; when that fails (no network), StagingError saying
    which files to put where, with their MD5s. Returns {relpath: "present" | "downloaded"}.
    """
    root = str(root)
    table = dataset_files(name, files)
    if only is not None:
        only = set(only)
        unknown = only - {f.relpath for f in table}
        if unknown:
            raise StagingError(f"{sorted(unknown)} are not files of {name}; expected {[f.relpath for f in table]}")
        table = tuple(f for f in table if f.relpath in only)
    ok, missing, corrupt = _check(name, root, table)
    if corrupt:
        raise StagingError(_corrupt_message(name, root, corrupt))
    result = {f.relpath: "present" for f in ok}
    for f in ok:
        _log(f"{os.path.join(root, f.relpath)} present with the right MD5; not downloaded")
    failures = []
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        for f in missing:
            try:
                _download_one(f, os.path.join(root, f.relpath))
                result[f.relpath] = "downloaded"
            except StagingError as exc:
                failures.append((f, str(exc)))
    finally:
        socket.setdefaulttimeout(previous)
    if failures:
        # name every file of the dataset that is still not in place, not only this job's
        _, still_missing, _ = _check(name, root, dataset_files(name, files))
        reasons = "\n".join(f"  {f.relpath}: {why}" for f, why in failures)
        raise StagingError(
            f"could not download {len(failures)} file(s) of {name}:\n{reasons}\n"
            f"If this machine has no network, download them elsewhere and put them here "
            f"(the MD5 is checked), then rerun:\n{_where_to_put(name, root, still_missing)}"
        )
    return result


_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.[A-Za-z0-9]+$")


def verify_inputs(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """Check staged inputs by path: dataset files by MD5, torchvision weight files by the SHA-256 prefix in
    their name (``resnet18-f37072fd.pth``), anything else for existence. Returns {path: "ok ..."};
    raises StagingError listing every missing or corrupt one."""
    by_suffix = {f.relpath: f for files in DATASET_FILES.values() for f in files}
    report, problems = {}, []
    for path in map(str, paths):
        if not os.path.isfile(path):
            problems.append(f"  {path}: missing")
            continue
        staged = next((f for rel, f in by_suffix.items() if path.replace(os.sep, "/").endswith("/" + rel)
                       or path == rel), None)
        match = _HASH_IN_NAME.search(os.path.basename(path))
        if staged is not None:
            got = file_md5(path)
            if got != staged.md5:
                problems.append(f"  {path}: MD5 is {got}, expected {staged.md5}")
                continue
            report[path] = f"ok md5 {got}"
        elif match:
            got = file_sha256(path)
            if not got.startswith(match.group(1)):
                problems.append(f"  {path}: SHA-256 is {got}, expected it to start with {match.group(1)}")
                continue
            report[path] = f"ok sha256 {got}"
        else:
            report[path] = "ok (exists)"
    if problems:
        raise StagingError(
            "staged inputs missing or corrupt (corrupt files were not modified; replace them):\n"
            + "\n".join(problems)
        )
    for path, status in report.items():
        _log(f"{path}: {status}")
    return report


def config_downloads(config: Mapping, resources: str = "resources") -> list[str]:
    """Every downloaded input a (validated) config needs: the staged files of its torchvision datasets
    (those without their own ``root``, which hold the user's files, not ours) and the ResNet-18 weights file
    (``resnet18.weights``: imagenet -> torchvision's IMAGENET1K_V1 file under resources/weights/, a path -> that
    path) when a ResNet-18 extractor is configured. The inputs of the `download` target."""
    inputs = []
    for settings in config["datasets"].values():
        if settings["source"] == "torchvision" and not settings.get("root"):
            inputs += staged_paths(settings["name"], dataset_root(settings, resources))
    weights = config["resnet18"]["weights"]
    if weights != "random" and any(e.startswith("resnet18") for e in config["extractors"]):
        if weights == "imagenet":  # naming torchvision's file imports torch: only configs that need it pay
            from embedscope.resnet import imagenet_weights_path

            weights = str(imagenet_weights_path(resources))
        inputs.append(weights)
    return list(dict.fromkeys(inputs))
