"""Feature extraction's throughput and memory (run: `.venv/bin/python bench/bench_extraction.py`).

(a) Throughput of the `resnet18` rule's code path (`embedscope.features.run_extraction`: zarr reads,
    preprocessing, forward hooks, pooling, chunked Zarr writes of a real store) against a bare `model(x)` loop
    over the same images, already preprocessed, same batch size and threads. Target: >= 0.8x. On the CPU, and
    on CUDA too when a GPU is visible (the bare loop's images then already on the GPU).
(b) Peak RSS of `extract_features` (resnet18, random weights) at N = 5,000 and N = 50,000 synthetic 28x28
    images, each in a fresh subprocess (ru_maxrss of the child). Target: within 1.3x of each other.

Prints a table and writes results/benchmarks/bench_extraction.csv. `summary_rows()` is the suite's part
(bench/run.py): both measurements at the defaults above.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from csvout import write_rows  # noqa: E402  (bench/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r"""
import json, resource, sys, time
import torch
from embedscope.features import extract_features
torch.set_num_threads(int(sys.argv[4]))
t = time.perf_counter()
extract_features(sys.argv[1], sys.argv[2], "resnet18", {"weights": "random", "resize": None},
                 batch_size=int(sys.argv[3]))
seconds = time.perf_counter() - t
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}))
"""


def synthetic_store(path: Path, n: int, seed: int = 0, channels: int = 1) -> None:
    from embedscope.store import write_image_store

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    split = (np.arange(n) % 5 == 0).astype(np.uint8)
    write_image_store(path, images, labels, split, [str(c) for c in range(10)], {"source": "synthetic"})


def throughput(tmp: Path, n: int, batch_size: int, threads: int, repeats: int, device: str = "cpu") -> list[dict]:
    import torch

    from embedscope.features import ResNetExtractor, run_extraction
    from embedscope.resnet import build_resnet18, preprocess
    from embedscope.store import read_image_store

    torch.set_num_threads(threads)
    store = tmp / "throughput.zarr"
    synthetic_store(store, n)
    model = build_resnet18("random").eval().to(device)
    # the same images, preprocessed once and already on the device, outside the timing
    x = preprocess(read_image_store(store).images).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def bare():
        with torch.inference_mode():
            for batch in x.split(batch_size):
                model(batch)
        sync()

    outputs = iter(range(10**6))

    def pipeline():  # a fresh output each time: the rule's output never exists when its job starts
        extractor = ResNetExtractor(model, None, device)
        run_extraction(store, tmp / f"features_{next(outputs)}.zarr", extractor, batch_size)
        extractor.close()
        sync()

    bare()  # warm-up
    times = {"bare model(x)": [], "run_extraction": []}
    for _ in range(repeats):  # interleaved, best of `repeats`: the machine is shared
        for name, fn in (("bare model(x)", bare), ("run_extraction", pipeline)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    rows = []
    for name, values in times.items():
        best = min(values)
        rows.append({"measure": "throughput", "case": name, "device": device, "n": n, "batch_size": batch_size,
                     "threads": threads, "seconds": round(best, 3), "images_per_s": round(n / best, 1)})
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    rows.append({"measure": "throughput", "case": "ratio run_extraction / bare (target >= 0.8)", "device": device,
                 "n": n, "batch_size": batch_size, "threads": threads, "value": round(ratio, 3)})
    return rows


def peak_rss(tmp: Path, sizes: list[int], batch_size: int, threads: int) -> list[dict]:
    rows = []
    for n in sizes:
        store = tmp / f"rss_{n}.zarr"
        synthetic_store(store, n)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(store), str(tmp / f"rss_{n}_features.zarr"), str(batch_size),
             str(threads)],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"measure": "peak_rss", "case": "extract_features resnet18", "n": n, "batch_size": batch_size,
                     "threads": threads, "seconds": round(result["seconds"], 2),
                     "images_per_s": round(n / result["seconds"], 1), "max_rss_mb": round(result["max_rss_mb"], 1)})
    ratio = rows[-1]["max_rss_mb"] / rows[0]["max_rss_mb"]
    rows.append({"measure": "peak_rss", "case": f"ratio N={sizes[-1]} / N={sizes[0]} (target <= 1.3)",
                 "value": round(ratio, 3)})
    return rows


def summary_rows(n: int = 5000, sizes=(5000, 50_000), batch_size: int = 256, threads: int = 2,
                 repeats: int = 2) -> list[dict]:
    """The suite's extraction part: throughput ratio to a bare forward, and peak RSS at two N (fresh processes)."""
    with tempfile.TemporaryDirectory(prefix="bench_extraction_") as name:
        tmp = Path(name)
        speed = throughput(tmp, n, batch_size, threads, repeats)
        memory = peak_rss(tmp, list(sizes), batch_size, threads)
    bare, code_path, ratio = speed
    rows = [
        {"part": "extraction", "what": f"bare model(x), N={n}, batch {batch_size}", "value": bare["images_per_s"],
         "unit": "images/s"},
        {"part": "extraction", "what": f"run_extraction code path, N={n}", "value": code_path["images_per_s"],
         "unit": "images/s"},
        {"part": "extraction", "what": "throughput code path / bare forward", "value": ratio["value"], "unit": "x",
         "target": ">= 0.8"},
    ]
    for row in memory[:-1]:
        rows.append({"part": "extraction", "what": f"peak RSS extract_features, N={row['n']}",
                     "value": row["max_rss_mb"], "unit": "MB"})
    rows.append({"part": "extraction", "what": f"peak RSS ratio N={sizes[-1]} / N={sizes[0]}",
                 "value": memory[-1]["value"], "unit": "x", "target": "<= 1.3"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="images for the throughput comparison")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000], help="N for the peak-RSS runs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "results/benchmarks/bench_extraction.csv"))
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench_extraction_") as name:
        tmp = Path(name)
        rows = throughput(tmp, args.n, args.batch_size, args.threads, args.repeats)
        if torch.cuda.is_available():  # the same comparison on the GPU
            rows += throughput(tmp, args.n, args.batch_size, args.threads, args.repeats, "cuda")
        rows += peak_rss(tmp, args.sizes, args.batch_size, args.threads)

    columns = ["measure", "case", "device", "n", "batch_size", "threads", "seconds", "images_per_s", "max_rss_mb",
               "value"]
    output = write_rows(rows, args.output, columns)
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
