"""Layer similarity: linear CKA between every pair of layers of every extractor, and raw pixels.

Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton, ICML 2019) of two representations X (n x p)
and Y (n x q) of the same n images, through their Gram matrices K = X X^T and L = Y Y^T::

    HSIC(K, L) = tr(K H L H) / (n - 1)^2,   H = I - 11^T / n   (the centring matrix)
    CKA(X, Y)  = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

This is the plain (biased) estimator of HSIC of Gretton et al. (2005), the one Kornblith et al. use, not the
debiased one of Song et al. (2012) (which Nguyen, Raghu & Kornblith 2021 use): it lies in [0, 1], is 1 for
two representations that differ by an orthogonal transform, an isotropic scaling or a translation, and is biased
upwards for few points in many dimensions, which is why every pair is compared on the same images and the same
n. The 1 / (n - 1)^2 cancels in CKA and is never computed: with the centred Grams Kc = H K H and Lc = H L H,
CKA = <Kc, Lc>_F / (||Kc||_F ||Lc||_F). For linear kernels Kc is the Gram of the column-centred features,
(X - mean) (X - mean)^T.

:func:`cka_table` works on a seeded stratified subsample of the test split (``metrics.cka_points``,
:func:`embedscope.tsne.tsne_subset`; the same images for every layer) and reads the stores one layer at a
time: the layer's subsample rows (float32, n x D; only the store chunks that hold them), whose centred Gram
(n x n, float64) is accumulated over blocks of columns converted to float64 one at a time
(:func:`centred_gram`), so no float64 copy of a layer and no N x D copy of a split is ever made. The Grams of
all layers are kept (L x 8 n^2 bytes: 672 MB for the default study's 21 feature sets at 2,000 points) and every pair
is one dot product of two of them.

The fine-tuned network's store holds layer4 and its head only. So that the block of the frozen ResNet-18 against
the fine-tuned one has a diagonal, CKA(frozen L, fine-tuned L) for every body layer L (how much fine-tuning
changed layer L: 1 = unchanged up to a rotation and a scale), the table also runs the fine-tuned checkpoint's
body over the subsample's images (:func:`finetuned_body_rows`: the frozen extractor's hooks and global average
pooling, :func:`embedscope.features.finetuned_body_extractor`, eval mode, fp32) and takes its conv1 ... layer3
from there (``embedscope.layers.CKA_LAYERS``); its layer4 must equal the store's (:data:`LAYER4_TOLERANCE`),
which is the one the table uses. In the default study both networks start from the same seeded random weights
(``resnet18.weights`` and ``seed``: :class:`embedscope.resnet.FinetunedResNet18` builds its body with the frozen
extractor's :func:`embedscope.resnet.build_resnet18`), so that diagonal is a before/after; cka.md says whether it
is (:func:`shared_start`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedscope.artifacts import CKA_COLUMNS, TABLE_FLOAT_FORMAT, markdown_table, write_table, write_text
from embedscope.layers import BODY_LAYERS, EXTRACTOR_LAYERS, FINETUNED_BODY_ONLY

log = logging.getLogger("embedscope.similarity")

CKA_VARIANT = "linear CKA, plain (biased) HSIC estimator (Kornblith et al. 2019)"
# Float64 values of one block of columns of a layer's subsample: at 2,000 points a block of 4,194 columns,
# more than any layer of MNIST has (scattering: 3,969), so each layer's Gram there is one matrix product.
GRAM_BLOCK_BYTES = 64 * 1024 * 1024
FROZEN, FINETUNED = "resnet18", "resnet18_finetuned"
# ||recomputed - stored|| / ||stored|| (Frobenius) the fine-tuned layer4 of the subsample may show. On the CPU the
# two agree (0 in the default study, though the batches hold other images); a store extracted on a GPU, where
# cuDNN may use TF32 convolutions, is expected to differ in the last three or four digits (not measured here),
# and a checkpoint that is not the store's by far more.
LAYER4_TOLERANCE = 1e-2


def centred_gram(features: np.ndarray, block_bytes: int = GRAM_BLOCK_BYTES) -> np.ndarray:
    """The centred Gram (X - mean)(X - mean)^T (n x n, float64) of ``features`` (n x D, any float dtype).

    Accumulated over blocks of columns of at most ``block_bytes`` in float64: each block is converted, its
    columns centred on their own means (the mean of a column does not depend on the blocks, so the centred
    values are the in-memory ones) and its Gram added. Only the order of the additions differs from one
    product of the whole centred matrix.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, D), got shape {x.shape}")
    n, width = x.shape
    step = max(1, int(block_bytes) // (8 * max(1, n)))
    gram = np.zeros((n, n))
    for start in range(0, width, step):
        block = np.array(x[:, start : start + step], dtype=np.float64)
        block -= block.mean(axis=0)
        gram += block @ block.T
    return gram


def gram_alignment(a: np.ndarray, b: np.ndarray) -> float:
    """<A, B>_F = tr(A B) of two symmetric matrices: n^2 products summed, no n x n temporary."""
    return float(np.vdot(a, b))


def cka_from_grams(grams: Sequence[np.ndarray]) -> np.ndarray:
    """(L, L) linear CKA of centred Grams: <K_i, K_j> / sqrt(<K_i, K_i> <K_j, K_j>); NaN where a Gram is zero.

    Each pair is computed once and mirrored, so the matrix is exactly symmetric, and the diagonal is
    h / sqrt(h * h) = 1 exactly (IEEE square roots of a rounded square return the number)."""
    count = len(grams)
    self_alignment = np.array([gram_alignment(k, k) for k in grams])
    matrix = np.full((count, count), np.nan)
    for i in range(count):
        for j in range(i, count):
            denominator = np.sqrt(self_alignment[i] * self_alignment[j])
            if denominator > 0:
                matrix[i, j] = matrix[j, i] = gram_alignment(grams[i], grams[j]) / denominator
    return matrix


def linear_cka(x: np.ndarray, y: np.ndarray, block_bytes: int = GRAM_BLOCK_BYTES) -> float:
    """Linear CKA of two representations (n x p, n x q) of the same n points (rows in the same order)."""
    if len(x) != len(y):
        raise ValueError(f"CKA compares representations of the same points: {len(x)} rows against {len(y)}")
    return float(cka_from_grams([centred_gram(x, block_bytes), centred_gram(y, block_bytes)])[0, 1])


# ---- the table: pixels and every layer of every extractor, on the same test images ---------------------------


def cka_sample(image_store, n_points: int | None, seed: int) -> np.ndarray:
    """Sorted image-store sample indices of a seeded stratified subsample of the test split of ``n_points``
    (:func:`embedscope.tsne.tsne_subset`); all of the test split where it is no larger."""
    from embedscope.store import read_image_index
    from embedscope.tsne import tsne_subset

    data = read_image_index(image_store)
    test = data.indices("test")
    return test[tsne_subset(data.labels[test], n_points, seed)]


def finetuned_body_rows(model_path: str | Path, image_store, sample: np.ndarray, device: str = "cpu",
                        batch_size: int = 256) -> dict[str, np.ndarray]:
    """conv1 ... layer4 of the fine-tuned checkpoint ``model_path`` for the images ``sample`` (image-store indices,
    that order), float32 (len(sample) x channels): computed exactly as the frozen ``resnet18`` store computes its
    layers (:func:`embedscope.features.finetuned_body_extractor`, :func:`embedscope.features.extract_sample`)."""
    from embedscope.features import extract_sample, finetuned_body_extractor

    extractor = finetuned_body_extractor(model_path, image_store, device)
    try:
        return extract_sample(image_store, extractor, sample, batch_size)
    finally:
        extractor.close()


def relative_difference(values: np.ndarray, reference: np.ndarray) -> float:
    """||values - reference||_F / ||reference||_F in float64 (the absolute norm where the reference is zero)."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / (scale if scale > 0 else 1.0)


def check_finetuned_layer4(body: dict[str, np.ndarray], store, sample: np.ndarray) -> float:
    """The relative difference of the recomputed layer4 from the fine-tuned store's rows of ``sample``; a
    StoreError beyond :data:`LAYER4_TOLERANCE` (the checkpoint is not the one the store was extracted from)."""
    from embedscope.store import StoreError, load_feature_rows

    stored = load_feature_rows(store, "layer4", sample).features
    difference = relative_difference(body["layer4"], stored)
    if not difference <= LAYER4_TOLERANCE:
        raise StoreError(f"feature store {store}/layer4 differs from the checkpoint's layer4 recomputed for the CKA "
                         f"subsample by {difference:.3g} (relative, more than {LAYER4_TOLERANCE}); is the store "
                         "stale?")
    return difference


def layer_grams(image_store, extractors: Sequence[str], feature_stores: Sequence[str | Path], sample: np.ndarray,
                block_bytes: int = GRAM_BLOCK_BYTES, finetuned_body: dict[str, np.ndarray] | None = None,
                ) -> Iterator[tuple[str, str, int, np.ndarray]]:
    """Yield ``(features, layer, D, centred Gram)``: raw pixels (/255) first, then every extractor's layers in
    depth order, each of the images ``sample`` (image-store indices) in that order.

    One layer's rows are read at a time and dropped before the next is read; a store whose labels for the
    samples disagree with the image store's is refused (stale). With ``finetuned_body`` (the fine-tuned body's
    layers of the sample, :func:`finetuned_body_rows`), the fine-tuned extractor's layers start with its body
    layers the store lacks (``FINETUNED_BODY_ONLY``), taken from there."""
    from embedscope.metrics import PIXELS, _check_layers, pixel_features
    from embedscope.store import StoreError, load_feature_rows, read_image_index, read_image_rows

    if len(extractors) != len(feature_stores):
        raise ValueError(f"{len(extractors)} extractors but {len(feature_stores)} feature stores")
    labels = read_image_index(image_store).labels[sample]
    pixels = pixel_features(read_image_rows(image_store, sample))
    yield PIXELS, PIXELS, int(pixels.shape[1]), centred_gram(pixels, block_bytes)
    del pixels
    for extractor, store in zip(extractors, feature_stores, strict=True):
        if extractor == FINETUNED and finetuned_body is not None:
            for layer in FINETUNED_BODY_ONLY:
                values = finetuned_body[layer]
                yield extractor, layer, int(values.shape[1]), centred_gram(values, block_bytes)
        for layer in _check_layers(extractor, store):
            rows = load_feature_rows(store, layer, sample)
            if not np.array_equal(rows.labels, labels):
                raise StoreError(f"feature store {store}/{layer}: labels of the CKA subsample disagree with the "
                                 f"image store {image_store}; is the store stale?")
            width = int(rows.features.shape[1])
            gram = centred_gram(rows.features, block_bytes)
            del rows
            yield extractor, layer, width, gram


def cka_table(image_store, extractors: Sequence[str], feature_stores: Sequence[str | Path], dataset: str = "",
              n_points: int | None = 2000, seed: int = 0, threads: int = 1,
              block_bytes: int = GRAM_BLOCK_BYTES, model_path: str | Path | None = None, device: str = "cpu",
              batch_size: int = 256) -> pd.DataFrame:
    """CKA_COLUMNS: every ordered pair of the feature sets of :func:`layer_grams` (pixels, then every layer),
    both orders, on one seeded stratified subsample of the test split (:func:`cka_sample`).

    With the fine-tuned checkpoint ``model_path`` (and ``resnet18_finetuned`` among ``extractors``), its body is
    run over the subsample's images (on ``device``, ``batch_size`` at a time) for the body layers its store
    lacks; the relative difference of its recomputed layer4 from the store's is ``table.attrs["layer4_difference"]``.
    """
    from threadpoolctl import threadpool_limits

    from embedscope.runtime import progress

    sample = cka_sample(image_store, n_points, seed)
    if len(sample) < 2:
        raise ValueError(f"CKA needs at least 2 test images; the subsample has {len(sample)}")
    if n_points is not None and len(sample) < n_points:
        log.info("metrics.cka_points = %s is more than the test split: CKA on all %d test images", n_points,
                 len(sample))
    body, difference = None, None
    if model_path is not None and FINETUNED in extractors:
        log.info("%s: body layers of the %d CKA images from checkpoint %s (device %s, batch %d)", FINETUNED,
                 len(sample), model_path, device, batch_size)
        body = finetuned_body_rows(model_path, image_store, sample, device, batch_size)
        difference = check_finetuned_layer4(body, feature_stores[list(extractors).index(FINETUNED)], sample)
        log.info("%s: recomputed layer4 is the store's to a relative difference of %.3g", FINETUNED, difference)
        body = {layer: body[layer] for layer in FINETUNED_BODY_ONLY}
    names, widths, grams = [], [], []
    count = 1 + sum(len(EXTRACTOR_LAYERS[e]) for e in extractors) + (len(FINETUNED_BODY_ONLY) if body else 0)
    bar = progress(total=count, desc="layers")
    with threadpool_limits(limits=max(1, int(threads))):
        for features, layer, width, gram in layer_grams(image_store, extractors, feature_stores, sample,
                                                        block_bytes, body):
            log.info("%s/%s: Gram of %d images x %d values", features, layer, len(sample), width)
            names.append((features, layer))
            widths.append(width)
            grams.append(gram)
            bar.update()
        bar.close()
        del body
        matrix = cka_from_grams(grams)
    for (features, layer), row in zip(names, matrix, strict=True):
        undefined = [names[j] for j in np.flatnonzero(np.isnan(row))]
        if undefined:
            log.warning("%s/%s: CKA undefined against %s (a representation constant on the subsample)",
                        features, layer, undefined)
    rows = [{"dataset": dataset, "features_a": a[0], "layer_a": a[1], "D_a": widths[i], "features_b": b[0],
             "layer_b": b[1], "D_b": widths[j], "n": len(sample), "cka": float(matrix[i, j])}
            for i, a in enumerate(names) for j, b in enumerate(names)]
    table = pd.DataFrame(rows, columns=CKA_COLUMNS)
    table.attrs["layer4_difference"] = difference
    return table


def same_layer_cka(table: pd.DataFrame) -> pd.DataFrame:
    """CKA(frozen L, fine-tuned L) for every body layer L both ResNet-18s have in ``table``, in depth order:
    ``layer`` and ``cka`` (how much fine-tuning changed layer L; 1 = unchanged up to a rotation and a scale)."""
    names, matrix = cka_matrix(table)
    position = {name: i for i, name in enumerate(names)}
    rows = [{"layer": layer, "cka": matrix[position[FROZEN, layer], position[FINETUNED, layer]]}
            for layer in BODY_LAYERS if (FROZEN, layer) in position and (FINETUNED, layer) in position]
    return pd.DataFrame(rows, columns=["layer", "cka"])


def shared_start(frozen_store, model_path) -> tuple[bool, str]:
    """Whether the frozen ``resnet18`` store's network and the fine-tuned checkpoint's started from the same
    weights and saw the same input size (the same ``resnet18.weights``, the same seed where they are random, the
    same ``resnet18.resize``), and a line saying so for cka.md."""
    from embedscope.checkpoint import read_checkpoint
    from embedscope.store import open_complete

    frozen = dict(open_complete(frozen_store).attrs)
    config = read_checkpoint(model_path)["config"]
    weights, tuned_weights = str(frozen.get("weights")), str(config["resnet18"]["weights"])
    seed, tuned_seed = frozen.get("seed"), config.get("seed")
    resize, tuned_resize = frozen.get("settings", {}).get("resize"), config["resnet18"].get("resize")
    same = weights == tuned_weights and (weights != "random" or seed == tuned_seed) and resize == tuned_resize
    start = f"weights {weights}" + (f", seed {seed}" if weights == "random" else "") + f", resize {resize}"
    if same:
        return True, (f"The frozen {FROZEN} and the network fine-tuning trained started from the same weights "
                      f"({start}): each value is a before/after of one layer.")
    tuned = f"weights {tuned_weights}" + (f", seed {tuned_seed}" if tuned_weights == "random" else "") + \
        f", resize {tuned_resize}"
    return False, (f"The frozen {FROZEN} ({start}) and the fine-tuned network ({tuned}) did not start from the "
                   "same weights: each value compares two different networks, not a layer before and after.")


def cka_matrix(table: pd.DataFrame) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The feature sets of a CKA table in its order, and its (L, L) matrix (rows a, columns b)."""
    names = list(dict.fromkeys(zip(table["features_a"], table["layer_a"], strict=True)))
    position = {name: i for i, name in enumerate(names)}
    matrix = np.full((len(names), len(names)), np.nan)
    for a_f, a_l, b_f, b_l, value in zip(table["features_a"], table["layer_a"], table["features_b"],
                                         table["layer_b"], table["cka"], strict=True):
        matrix[position[a_f, a_l], position[b_f, b_l]] = value
    return names, matrix


def wide_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """The CKA table as a matrix, one row and one column per ``features:layer`` (pixels as ``pixels``)."""
    names, matrix = cka_matrix(table)
    labels = [layer if features == layer else f"{features}:{layer}" for features, layer in names]
    return pd.DataFrame(matrix, index=pd.Index(labels, name="CKA"), columns=labels).reset_index()


def same_layer_section(table: pd.DataFrame, frozen_store, model_path) -> str:
    """cka.md's "frozen vs fine-tuned, same layer" section: the diagonal of that block (:func:`same_layer_cka`),
    whether the two networks started from the same weights (:func:`shared_start`), and the layer changed most."""
    same = same_layer_cka(table)
    if same.empty:
        return ""
    _, start = shared_start(frozen_store, model_path)
    notes = [
        f"CKA({FROZEN}:L, {FINETUNED}:L) for every body layer L, the diagonal of the frozen vs fine-tuned block: how "
        "much fine-tuning changed layer L (1 = unchanged up to a rotation and a scale; the lower, the more it "
        "changed).",
        start,
    ]
    if same["cka"].notna().any():
        most = same.loc[same["cka"].idxmin()]
        notes.append(f"Changed most: {most['layer']} (CKA {most['cka']:.4f}).")
    text = "".join(f"- {note}\n" for note in notes)
    return f"\n## Frozen vs fine-tuned, same layer\n\n{text}\n" + same.rename(
        columns={"cka": f"CKA({FROZEN}, {FINETUNED})"}).to_markdown(index=False, floatfmt=TABLE_FLOAT_FORMAT) + "\n"


def compute_cka(image_store, extractors, feature_stores, csv_path, md_path=None, dataset: str = "",
                n_points: int | None = 2000, seed: int = 0, threads: int = 1, model_path: str | Path | None = None,
                device: str = "cpu", batch_size: int = 256) -> pd.DataFrame:
    """Write cka.csv (every ordered pair, long form) and cka.md (the matrix, with notes, and with both ResNet-18s
    the frozen-vs-fine-tuned same-layer values): the workflow's layer_similarity rule. ``model_path`` (the
    fine-tuned checkpoint), ``device`` and ``batch_size`` are :func:`cka_table`'s."""
    table = cka_table(image_store, extractors, feature_stores, dataset, n_points, seed, threads,
                      model_path=model_path, device=device, batch_size=batch_size)
    text = None
    if md_path is not None:
        n = int(table["n"].iloc[0]) if len(table) else 0
        notes = [
            f"{CKA_VARIANT}: <Kc, Lc>_F / (||Kc||_F ||Lc||_F) with Kc, Lc the Gram matrices of the column-centred "
            "features; 1 = the same representation up to an orthogonal transform and a scale, 0 = unrelated; "
            "biased upwards for few images in many dimensions, so compare values at the same n.",
            f"On n = {n} test images, a seeded stratified subsample (metrics.cka_points = {n_points}, seed {seed}; "
            "the whole test split where it is smaller), the same images for every layer; pixels are the raw "
            "images / 255.",
        ]
        difference = table.attrs.get("layer4_difference")
        if difference is not None:
            notes.append(
                f"{FINETUNED}: {', '.join(FINETUNED_BODY_ONLY)} are not in its feature store; they are computed from "
                f"its checkpoint for these {n} images exactly as the {FROZEN} store computes its layers (each body "
                f"child's output globally average-pooled, eval mode, fp32, on {device}); its layer4 computed so "
                f"equals the store's to a relative difference of {difference:.1e}, and the store's is the one used.")
        text = markdown_table(wide_matrix(table), f"Layer similarity on {dataset or 'the dataset'}", notes)
        if FROZEN in extractors and difference is not None:
            text += same_layer_section(table, feature_stores[list(extractors).index(FROZEN)], model_path)
    write_table(table, csv_path)
    if text is not None:
        write_text(md_path, text)
    return table
