"""Per-layer t-SNE: a seeded stratified subset of the test split, embedded in 2-D, written as a csv.

The csv (index, x, y, label, and pred, prob for ``resnet18_finetuned``) is what the t-SNE figures, the
embedding-quality table and the explorer read. A JSON sidecar next to it records what the figures'
titles need (N, D, class names, the settings used).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from embedscope.artifacts import ArtifactError, read_predictions, write_tsne

log = logging.getLogger(__name__)

METHODS = ("opentsne", "sklearn")
EARLY_EXAGGERATION_ITER = 250  # both libraries' default; n_iter counts the iterations after it
# openTSNE's FFT grid: one cell per `ints_in_interval` units of the map (openTSNE's default 1). The map spreads to
# ~100-150 units, so the grid (and the FFT per iteration) grows with it; cells of 2 units make the optimisation
# ~3-4x cheaper at 10,000 points with unchanged trustworthiness (bench/bench_tsne.py; see the config schema).
INTS_IN_INTERVAL = 2.0
# openTSNE's kNN for the affinities: "exact" (brute force, O(N^2 D): 0.35 s at 10,000 x 50 here, against 1.4 s for
# the approximate "annoy" that "auto" picks above 1,000 points); "annoy"/"auto" for much larger N.
NEIGHBORS = ("exact", "annoy", "auto")
# openTSNE's negative gradients: Barnes-Hut costs O(N log N) per iteration, the FFT interpolation a grid whose
# cost barely depends on N, so Barnes-Hut is faster for small maps and FFT for large ones. Side by side on 2
# busy cores (500 iterations after early exaggeration, 512-wide clustered features reduced to 50; Barnes-Hut
# against FFT): 1,000 points 7.2 s against 22.4 s, 2,000 points 14.2 s against 22.3 s, 5,000 points 40.3 s
# against 27.8 s, 10,000 points 94.0 s against 32.5 s, trustworthiness (k=10) equal within 0.0005 at each size
# (bench/bench_tsne.py --gradients). "auto" takes Barnes-Hut up to BH_MAX_POINTS points, FFT above.
GRADIENTS = ("auto", "bh", "fft")
BH_MAX_POINTS = 4000
PREDICTION_EXTRACTOR = "resnet18_finetuned"


def tsne_subset(labels: Sequence[int] | np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded stratified subset of ``labels`` of size ``max_points``.

    Every class keeps its share (largest-remainder rounding, ties broken by class id), and the positions
    within a class are drawn with ``numpy.random.default_rng(seed)``. ``None`` or a ``max_points`` that is
    not smaller than ``len(labels)`` returns every position. The result depends on the labels and the seed
    only, so feature stores that list the same test split in the same order get the same subset.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_points is None or max_points >= n:
        return np.arange(n)
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (max_points / n)
    take = np.floor(quota).astype(np.int64)
    remainder = quota - take
    order = np.lexsort((classes, -remainder))  # largest remainder first, then lowest class id
    take[order[: max_points - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(members, size=int(k), replace=False))
    return np.sort(np.concatenate(chosen))


def tsne_input_dim(n: int, dim: int, pca_components: int) -> int:
    """Width of what t-SNE sees after the optional PCA step (see ``reduce_pca``)."""
    k = min(int(pca_components), n)
    if not pca_components or dim <= pca_components or k >= dim:
        return int(dim)
    return int(k)


def reduce_pca(features: np.ndarray, pca_components: int, seed: int = 0) -> np.ndarray:
    """PCA to ``pca_components`` dimensions when the layer is wider than that (0 = never)."""
    features = np.asarray(features, dtype=np.float64)
    n, dim = features.shape
    k = tsne_input_dim(n, dim, pca_components)
    if k == dim:
        return features
    from sklearn.decomposition import PCA

    return PCA(n_components=k, random_state=seed).fit_transform(features)


def effective_perplexity(perplexity: float, n: int) -> float:
    """Both libraries need 3 * perplexity < n; lower it (with a warning) for very small inputs."""
    limit = (n - 1) / 3.0
    if perplexity >= limit:
        lowered = max(1.0, limit - 1e-6)
        log.warning("perplexity %s is too high for %d points; using %.3f", perplexity, n, lowered)
        return lowered
    return float(perplexity)


def passive_openmp_wait() -> None:
    """Let OpenMP threads sleep rather than spin while they wait (unless OMP_WAIT_POLICY is set already).

    openTSNE and scikit-learn load the same bundled libgomp, which reads the variable once, when the first of them
    loads it (so this must run before either does). Spinning, libgomp's default, lets a waiting thread burn its
    core: on a shared, oversubscribed machine openTSNE with n_jobs=2 ran 3x slower than with n_jobs=1 (N=1,000,
    load average ~6); sleeping gave the same coordinates at n_jobs=1's speed.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def gradient_method(gradient: str, n: int) -> str:
    """openTSNE's ``negative_gradient_method`` for a map of ``n`` points: ``bh`` or ``fft`` as configured,
    and for ``auto`` Barnes-Hut up to BH_MAX_POINTS points, FFT above."""
    if gradient not in GRADIENTS:
        raise ValueError(f"config key 'tsne.gradient' is {gradient!r}; expected one of {list(GRADIENTS)}")
    if gradient == "auto":
        return "bh" if n <= BH_MAX_POINTS else "fft"
    return gradient


def checked_input(features: np.ndarray, method: str, neighbors: str, gradient: str = "auto") -> np.ndarray:
    """``features`` as an array, once the settings are known and it is a finite (n >= 4, D) matrix."""
    if method not in METHODS:
        raise ValueError(f"config key 'tsne.method' is {method!r}; expected one of {list(METHODS)}")
    gradient_method(gradient, 0)
    if neighbors not in NEIGHBORS:
        raise ValueError(f"config key 'tsne.neighbors' is {neighbors!r}; expected one of {list(NEIGHBORS)}")
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n, D), got shape {features.shape}")
    if len(features) < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {len(features)}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features


def embed_tsne(
    features: np.ndarray,
    method: str = "opentsne",
    perplexity: float = 15,
    pca_components: int = 50,
    n_iter: int = 500,
    seed: int = 0,
    n_jobs: int = 1,
    ints_in_interval: float = INTS_IN_INTERVAL,
    neighbors: str = "exact",
    gradient: str = "auto",
) -> np.ndarray:
    """2-D t-SNE coordinates (n, 2) float64 of ``features`` (n, D).

    ``opentsne``: affinities from ``neighbors`` (exact or approximate) nearest neighbours, negative gradients
    by Barnes-Hut or FFT interpolation (``gradient``, :func:`gradient_method`), the FFT on a grid of one cell
    per ``ints_in_interval`` map units (the learning rate is openTSNE's "auto": N/12 during early exaggeration,
    N after), PCA initialisation, ``random_state=seed``; ``sklearn``: scikit-learn's Barnes-Hut TSNE with PCA
    initialisation. Layers wider than ``pca_components`` are
    reduced with PCA first (0 = never). Same inputs and seed give identical coordinates.
    """
    features = checked_input(features, method, neighbors, gradient)
    n = len(features)
    passive_openmp_wait()
    x = reduce_pca(features, pca_components, seed)
    perplexity = effective_perplexity(perplexity, n)
    if method == "opentsne":
        from openTSNE import TSNE

        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            initialization="pca",
            negative_gradient_method=gradient_method(gradient, n),
            ints_in_interval=float(ints_in_interval),
            neighbors=neighbors,
            early_exaggeration_iter=EARLY_EXAGGERATION_ITER,
            n_iter=int(n_iter),
            n_jobs=int(n_jobs),
            random_state=int(seed),
            verbose=False,
        )
        return np.asarray(tsne.fit(x), dtype=np.float64)
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        max_iter=EARLY_EXAGGERATION_ITER + int(n_iter),
        random_state=int(seed),
        n_jobs=int(n_jobs),
    )
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def join_predictions(table: pd.DataFrame, predictions: str | os.PathLike) -> pd.DataFrame:
    """Add ``pred`` and ``prob`` from predictions.csv, matched on the sample ``index``."""
    preds = read_predictions(predictions).set_index("index")
    absent = ~table["index"].isin(preds.index)
    if absent.any():
        raise ArtifactError(
            f"predictions {predictions} has no prediction for {int(absent.sum())} t-SNE points "
            f"(first sample index {int(table['index'][absent].iloc[0])}); was it written for this image store?"
        )
    rows = preds.loc[table["index"].to_numpy()]
    if not np.array_equal(rows["label"].to_numpy(), table["label"].to_numpy()):
        raise ArtifactError(f"predictions {predictions}: labels disagree with the feature store for the same sample "
                            "index")
    table = table.copy()
    table["pred"] = rows["pred"].to_numpy().astype(np.int64)
    table["prob"] = rows["prob"].to_numpy().astype(np.float64)
    return table


def map_meta(data, layer: str, n: int, settings: Mapping[str, Any], info: Mapping[str, Any] | None) -> dict:
    """The sidecar of a map: ``info``, the layer, N of the map and of the test split, D before and after the
    PCA step, the settings (``perplexity`` as configured, ``perplexity_used`` as run), and the store's class
    names, weights and compute record (what the figures' titles and footers say)."""
    dim = int(data.features.shape[1])
    return {
        **dict(info or {}),
        "layer": layer,
        "n": int(n),
        "n_test": int(len(data.labels)),
        "dim": dim,
        "dim_tsne_input": tsne_input_dim(n, dim, settings["pca_components"]),
        **settings,
        # what the map was made with: the requested perplexity is lowered for a handful of points
        "perplexity_used": float(effective_perplexity(settings["perplexity"], n)),
        "class_names": [str(c) for c in data.attrs.get("class_names", [])],
        "weights": data.attrs.get("weights"),
        # where the features were computed (device, precision, torch), for the figures' footers
        "compute": data.attrs.get("compute"),
    }


def run_tsne(
    store: str | os.PathLike,
    layer: str,
    output_csv: str | os.PathLike,
    output_meta: str | os.PathLike | None = None,
    *,
    predictions: str | os.PathLike | None = None,
    max_points: int | None = None,
    method: str = "opentsne",
    perplexity: float = 15,
    pca_components: int = 50,
    n_iter: int = 500,
    seed: int = 0,
    n_jobs: int = 1,
    info: Mapping[str, Any] | None = None,
    ints_in_interval: float = INTS_IN_INTERVAL,
    neighbors: str = "exact",
    gradient: str = "auto",
) -> pd.DataFrame:
    """t-SNE of one feature-store layer's test split -> results/tsne/{dataset}/{extractor}/{layer}.csv.

    ``predictions`` (predictions.csv of the fine-tuned model) adds ``pred`` and ``prob`` columns. The csv
    and its JSON sidecar ``output_meta`` (:func:`map_meta`) are written by :func:`embedscope.artifacts.write_tsne`.
    """
    from embedscope.store import load_features

    data = load_features(store, layer, split="test")
    if len(data.labels) == 0:
        raise ValueError(f"store {store} layer {layer!r} has no test-split rows")
    positions = tsne_subset(data.labels, max_points, seed)
    features = data.features[positions]
    used = gradient_method(gradient, len(positions)) if method == "opentsne" else None
    log.info("t-SNE of %s/%s: %d of %d test points, D=%d, method=%s, gradient=%s, perplexity=%s",
             store, layer, len(positions), len(data.labels), features.shape[1], method, used, perplexity)
    start = time.perf_counter()
    coords = embed_tsne(features, method, perplexity, pca_components, n_iter, seed, n_jobs, ints_in_interval,
                        neighbors, gradient)
    seconds = time.perf_counter() - start
    log.info("t-SNE done in %.1f s", seconds)
    table = pd.DataFrame({
        "index": data.index[positions].astype(np.int64),
        "x": coords[:, 0],
        "y": coords[:, 1],
        "label": data.labels[positions].astype(np.int64),
    })
    if predictions is not None:
        table = join_predictions(table, predictions)
    settings = {"method": method, "perplexity": float(perplexity), "pca_components": int(pca_components),
                "n_iter": int(n_iter), "ints_in_interval": float(ints_in_interval), "neighbors": neighbors,
                "gradient": gradient, "gradient_used": used, "seed": int(seed), "max_points": max_points}
    write_tsne(output_csv, table, output_meta, map_meta(data, layer, len(table), settings, info))
    return table
