"""Issue 5: t-SNE of 10,000 x 512 features, this pipeline's settings vs scikit-learn's TSNE as the report ran it.

- pipeline: `embedscope.tsne.embed_tsne` with the defaults of the workflow (openTSNE, FFT gradients, PCA to 50
  components first, perplexity 15, PCA initialisation, 250 + 500 iterations);
- report: `sklearn.manifold.TSNE(perplexity=15).fit_transform(features)` on the raw 512 values (random_state=0
  added so the run is repeatable).

Features: a real store layer if --store/--layer name one (all its rows, up to --n), else synthetic clustered
features (10 classes of a 20-D Gaussian mixture pushed through a random 512-wide ReLU layer, like pooled CNN
activations). Trustworthiness (k=10) is computed on the same seeded 3,000-point subsample for both (the full
n needs an n x n distance matrix per embedding). Target: >= 3x faster, trustworthiness within 0.01.

    nice .venv/bin/python bench/bench_tsne.py [--n 10000] [--threads 2] [--store PATH --layer NAME]

Prints a table and writes results/benchmarks/bench_tsne.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--subsample", type=int, default=3000)
    parser.add_argument("--store", help="a feature store (results/features/<dataset>/<extractor>.zarr)")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()

    from sklearn.manifold import TSNE, trustworthiness

    from embedscope.tsne import embed_tsne

    if args.store:
        from embedscope.store import load_features

        data = load_features(args.store, args.layer)
        features, labels = data.features[: args.n], data.labels[: args.n]
        source = f"{args.store}:{args.layer}"
    else:
        features, labels = synthetic_features(args.n, args.dim)
        source = "synthetic clustered"
    n, dim = features.shape
    print(f"features: {source}, n={n}, D={dim}, threads={args.threads}", flush=True)
    sub = np.sort(np.random.default_rng(0).choice(n, size=min(args.subsample, n), replace=False))

    runs = []
    start = time.perf_counter()
    coords = embed_tsne(features, "opentsne", perplexity=15, pca_components=50, n_iter=500, seed=0,
                        n_jobs=args.threads)
    runs.append(("pipeline: openTSNE FFT, PCA 50, perplexity 15", time.perf_counter() - start, coords))
    print(f"pipeline done in {runs[-1][1]:.1f} s", flush=True)
    if not args.skip_sklearn:
        start = time.perf_counter()
        coords = TSNE(n_components=2, perplexity=15, random_state=0, n_jobs=args.threads).fit_transform(features)
        runs.append(("report: sklearn TSNE(perplexity=15), raw features", time.perf_counter() - start, coords))
        print(f"sklearn done in {runs[-1][1]:.1f} s", flush=True)

    rows = []
    for name, seconds, coords in runs:
        trust = trustworthiness(features[sub], coords[sub], n_neighbors=10)
        rows.append({"method": name, "n": n, "dim": dim, "threads": args.threads, "seconds": round(seconds, 2),
                     f"trustworthiness_k10_sub{len(sub)}": round(float(trust), 4),
                     "knn10_accuracy_2d": round(knn_accuracy(coords, labels), 4)})
    if len(rows) == 2:
        speedup = rows[1]["seconds"] / rows[0]["seconds"]
        key = f"trustworthiness_k10_sub{len(sub)}"
        delta = rows[0][key] - rows[1][key]
        for row in rows:
            row["speedup_vs_sklearn"] = round(rows[1]["seconds"] / row["seconds"], 2)
        verdict = (f"speedup {speedup:.1f}x (target >= 3x), trustworthiness difference {delta:+.4f} "
                   f"(target within 0.01)")
    else:
        verdict = "sklearn skipped"

    columns = list(rows[0])
    for row in rows:
        columns += [c for c in row if c not in columns]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    print(verdict)
    out = ROOT / "results" / "benchmarks" / "bench_tsne.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
