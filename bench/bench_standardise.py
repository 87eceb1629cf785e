"""Peak memory of standardising the widest training set of the full study: scikit-learn's StandardScaler
against the classifier table's blocked one (``embedscope.metrics.blocked_standard_scaler``).

Each variant runs in its own process on a seeded float32 matrix the size of CIFAR-10's scattering layer
(50,000 x 15,552 by default: 3.1 GB), fits and standardises it in place, as evaluate_classifiers' logreg does,
and reports the kernel's high-water mark of its resident memory (``embedscope.runtime.peak_rss_mb``, the
figure every job's summary gives) and the time taken. Both variants' ``mean_`` and ``scale_`` are compared to
the last bit. Writes results/benchmarks/bench_standardise.csv.

    .venv/bin/python bench/bench_standardise.py [--rows 50000] [--width 15552]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from csvout import write_rows  # noqa: E402

from embedscope.runtime import peak_rss_mb  # noqa: E402

VARIANTS = ("sklearn", "blocked")


def one(variant: str, rows: int, width: int, out: str) -> None:
    import numpy as np
    from sklearn.preprocessing import StandardScaler

    from embedscope.metrics import blocked_standard_scaler

    rng = np.random.default_rng(0)
    x = np.empty((rows, width), dtype=np.float32)
    for start in range(0, rows, 1000):  # filled in slices: no float64 matrix from the generator
        x[start:start + 1000] = rng.standard_normal((min(1000, rows - start), width), dtype=np.float32)
    held = peak_rss_mb()[0]
    scaler = StandardScaler(copy=False) if variant == "sklearn" else blocked_standard_scaler(copy=False)
    start = time.perf_counter()
    scaler.fit(x).transform(x)
    seconds = time.perf_counter() - start
    np.savez(out, mean=scaler.mean_, scale=scaler.scale_)
    print(json.dumps({"variant": variant, "rows": rows, "width": width, "matrix_mb": round(x.nbytes / 1e6, 1),
                      "before_fit_mb": round(held, 1), "peak_mb": round(peak_rss_mb()[0], 1),
                      "seconds": round(seconds, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--width", type=int, default=15552)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        one(args.variant, args.rows, args.width, args.out)
        return
    import tempfile

    import numpy as np

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            out = str(Path(tmp) / f"{variant}.npz")
            done = subprocess.run([sys.executable, __file__, "--variant", variant, "--rows", str(args.rows),
                                   "--width", str(args.width), "--out", out],
                                  check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
        a, b = (np.load(str(Path(tmp) / f"{v}.npz")) for v in VARIANTS)
        same = all(np.array_equal(a[k], b[k]) for k in ("mean", "scale"))
    for row in results:
        row["same_as_sklearn"] = same
    print("written", write_rows(results, "bench_standardise.csv"))
    if not same:
        sys.exit("the blocked scaler's mean_/scale_ differ from scikit-learn's")


if __name__ == "__main__":
    main()
