"""t-SNE of 10,000 x 512 features, this pipeline's settings vs scikit-learn's TSNE as the report ran it.

- pipeline: `embedscope.tsne.embed_tsne` with the workflow's defaults, read from schemas/config.schema.yaml
  (openTSNE, exact kNN affinities, Barnes-Hut gradients up to 4,000 points and FFT on a grid of 2-unit cells
  above, PCA to 50 components first, perplexity 15, PCA initialisation, 250 + 500 iterations, learning rate N/12
  then N);
- report: `sklearn.manifold.TSNE(perplexity=15).fit_transform(features)` on the raw 512 values (random_state=0
  added so the run is repeatable).

Features: a real store layer if --store/--layer name one (all its rows, up to --n), else synthetic clustered
features (10 classes of a 20-D Gaussian mixture pushed through a random 512-wide ReLU layer, like pooled CNN
activations). Trustworthiness (k=10) is computed on the same seeded 3,000-point subsample for both (the full
n needs an n x n distance matrix per embedding). Target: >= 3x faster, trustworthiness within 0.01.

    nice .venv/bin/python bench/bench_tsne.py [--n 10000 ...] [--threads 2] [--store PATH --layer NAME]
    nice .venv/bin/python bench/bench_tsne.py --gradients --n 1000 2000 5000 10000 --threads 2   # bh against fft

Prints a table and writes results/benchmarks/bench_tsne.csv. `summary_rows()` is the suite's part (bench/run.py):
N = 2,000, 5,000 and 10,000, both methods side by side at each N.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from csvout import write_rows  # noqa: E402  (bench/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# As embed_tsne does, before scikit-learn loads OpenMP: both methods then run under the same wait policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def synthetic_features(n: int, dim: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent_dim = 20
    centres = rng.normal(0, 3.0, size=(classes, latent_dim))
    labels = rng.integers(0, classes, size=n)
    spread = rng.uniform(0.8, 1.6, size=classes)[labels, None]
    latent = centres[labels] + rng.normal(0, 1.0, size=(n, latent_dim)) * spread
    weights = rng.normal(0, 1.0 / np.sqrt(latent_dim), size=(latent_dim, dim))
    features = np.maximum(latent @ weights + rng.normal(0, 0.3, size=(n, dim)), 0)
    return features.astype(np.float32), labels


def knn_accuracy(coords: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(k), coords, labels, cv=5).mean())


PIPELINE = "pipeline: openTSNE (Barnes-Hut <= 4,000 points, FFT above), PCA 50, perplexity 15"
REPORT = "report: sklearn TSNE(perplexity=15), raw features"
SUMMARY_SIZES = (2000, 5000, 10_000)


def pipeline_settings() -> dict[str, Any]:
    """The workflow's t-SNE defaults (schemas/config.schema.yaml, section tsne), as embed_tsne arguments."""
    import yaml

    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["tsne"]["properties"]
    keys = ("method", "perplexity", "pca_components", "n_iter", "seed", "ints_in_interval", "neighbors",
             "gradient")
    return {key: props[key]["default"] for key in keys}


def compare(features: np.ndarray, labels: np.ndarray, threads: int, subsample: int = 3000,
            skip_sklearn: bool = False, log=print, gradients=()) -> list[dict]:
    """Pipeline then sklearn on the same features; trustworthiness (k=10) on the same seeded subsample.

    ``gradients`` (some of bh, fft): the pipeline once with each gradient method instead, and no sklearn."""
    from sklearn.manifold import TSNE, trustworthiness

    from embedscope.tsne import embed_tsne

    n, dim = features.shape
    sub = np.sort(np.random.default_rng(0).choice(n, size=min(subsample, n), replace=False))
    settings = pipeline_settings()
    runs = []
    variants = [(f"{PIPELINE} {g}", {**settings, "gradient": g}) for g in gradients] or [(PIPELINE, settings)]
    for name, variant in variants:
        start = time.perf_counter()
        coords = embed_tsne(features, n_jobs=threads, **variant)
        runs.append((name, time.perf_counter() - start, coords))
        log(f"N={n}: {name} done in {runs[-1][1]:.1f} s ({variant})")
    if not skip_sklearn and not gradients:
        start = time.perf_counter()
        coords = TSNE(n_components=2, perplexity=15, random_state=0, n_jobs=threads).fit_transform(features)
        runs.append((REPORT, time.perf_counter() - start, coords))
        log(f"N={n}: sklearn done in {runs[-1][1]:.1f} s")
    rows = []
    for name, seconds, coords in runs:
        trust = trustworthiness(features[sub], coords[sub], n_neighbors=10)
        rows.append({"method": name, "n": n, "dim": dim, "threads": threads, "seconds": round(seconds, 2),
                     "trustworthiness_k10": round(float(trust), 4), "trust_subsample": len(sub),
                     "knn10_accuracy_2d": round(knn_accuracy(coords, labels), 4)})
    if len(rows) == 2:
        key = f"speedup_vs_{gradients[1]}" if gradients else "speedup_vs_sklearn"
        for row in rows:
            row[key] = round(rows[1]["seconds"] / row["seconds"], 2)
    return rows


def summary_rows(sizes=SUMMARY_SIZES, threads: int = 2, dim: int = 512) -> list[dict]:
    """The suite's t-SNE part: pipeline vs sklearn at each N, side by side (time, trustworthiness, ratios)."""
    rows = []
    for n in sizes:
        features, labels = synthetic_features(n, dim)
        pipe, report = compare(features, labels, threads, log=lambda m: print(f"  {m}", flush=True))
        target = n == max(sizes)
        rows += [
            {"part": "tsne", "what": f"N={n} x {dim}: pipeline (openTSNE) time", "value": pipe["seconds"],
             "unit": "s"},
            {"part": "tsne", "what": f"N={n} x {dim}: sklearn TSNE(perplexity=15) time", "value": report["seconds"],
             "unit": "s"},
            {"part": "tsne", "what": f"N={n}: speedup sklearn / pipeline", "value": pipe["speedup_vs_sklearn"],
             "unit": "x", "target": ">= 3" if target else None},
            {"part": "tsne", "what": f"N={n}: trustworthiness (k=10) pipeline", "value": pipe["trustworthiness_k10"],
             "unit": ""},
            {"part": "tsne", "what": f"N={n}: trustworthiness (k=10) sklearn", "value": report["trustworthiness_k10"],
             "unit": ""},
            {"part": "tsne", "what": f"N={n}: trustworthiness pipeline - sklearn",
             "value": round(pipe["trustworthiness_k10"] - report["trustworthiness_k10"], 4), "unit": "",
             "target": ">= -0.01" if target else None},
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000], help="one or more N, each compared in turn")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--subsample", type=int, default=3000)
    parser.add_argument("--store", help="a feature store (results/features/<dataset>/<extractor>.zarr)")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--gradients", action="store_true",
                        help="time openTSNE's Barnes-Hut and FFT gradients at each N (the tsne.gradient crossover)")
    args = parser.parse_args()

    rows = []
    for n in args.n:
        if args.store:
            from embedscope.store import load_features

            data = load_features(args.store, args.layer)
            features, labels = data.features[:n], data.labels[:n]
            source = f"{args.store}:{args.layer}"
        else:
            features, labels = synthetic_features(n, args.dim)
            source = "synthetic clustered"
        print(f"features: {source}, n={len(features)}, D={features.shape[1]}, threads={args.threads}", flush=True)
        rows += compare(features, labels, args.threads, args.subsample, args.skip_sklearn,
                        log=lambda m: print(m, flush=True), gradients=("bh", "fft") if args.gradients else ())

    columns = list(rows[0])
    for row in rows:
        columns += [c for c in row if c not in columns]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    for pipe, report in zip(rows[::2], rows[1::2], strict=False):
        if report.get("method") != REPORT:
            break
        delta = pipe["trustworthiness_k10"] - report["trustworthiness_k10"]
        print(f"N={pipe['n']}: speedup {pipe['speedup_vs_sklearn']:.2f}x (target >= 3x), trustworthiness difference "
              f"{delta:+.4f} (target within 0.01)")
    name = "bench_tsne_gradients.csv" if args.gradients else "bench_tsne.csv"
    print(f"wrote {write_rows(rows, name, columns)}")


if __name__ == "__main__":
    main()
