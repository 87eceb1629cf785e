"""The benchmark suite: one entry point, one summary (results/benchmarks/summary.md and .csv).

    .venv/bin/python bench/run.py            # everything (about 10-15 minutes on 2 cores)
    .venv/bin/python bench/run.py --only workflow tsne

Parts:
  workflow    cold default run (`snakemake --cores 2` on config.yaml in a fresh folder), per-rule wall/CPU/RSS
              from Snakemake's benchmark: files, and a no-op rerun
  tsne        this pipeline's t-SNE vs scikit-learn's TSNE at N = 2,000 / 5,000 / 10,000 (bench/bench_tsne.py)
  extraction  resnet18 extraction code path vs a bare forward; peak RSS at N = 5,000 vs 50,000
              (bench/bench_extraction.py)
  finetune    images/s per training stage, CPU and CUDA when present (bench/bench_finetune.py)
Every ratio is measured side by side in the same run, since these machines are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "benchmarks"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, {gpu}"


def snakemake(workdir: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "config.yaml"), *args],
        check=True, capture_output=True, text=True,
    )
    return time.perf_counter() - start


def rule_of(benchmark_file: Path, root: Path) -> str:
    return str(benchmark_file.relative_to(root).with_suffix(""))


def bench_workflow(cores: int = 2) -> list[dict]:
    """Cold default run, per-rule benchmark files, and a no-op rerun."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="embedscope-bench-") as tmp:
        workdir = Path(tmp)
        shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
        cold = snakemake(workdir, "--cores", str(cores))
        noop = snakemake(workdir, "--cores", str(cores))
        rows.append({"part": "workflow", "what": f"cold default run (--cores {cores})", "value": cold, "unit": "s",
                     "target": "< 300 s"})
        rows.append({"part": "workflow", "what": "no-op rerun", "value": noop, "unit": "s", "target": "< 10 s"})
        root = workdir / "results" / "benchmarks"
        for path in sorted(root.rglob("*.tsv")):
            table = pd.read_csv(path, sep="\t")
            job = rule_of(path, root)
            rows.append({"part": "rule", "what": f"{job} wall", "value": float(table["s"].iloc[0]), "unit": "s"})
            if "cpu_time" in table:
                rows.append({"part": "rule", "what": f"{job} cpu", "value": float(table["cpu_time"].iloc[0]),
                             "unit": "s"})
            rows.append({"part": "rule", "what": f"{job} max RSS", "value": float(table["max_rss"].iloc[0]),
                         "unit": "MB"})
    return rows


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARTS = {
    "workflow": bench_workflow,
    "tsne": lambda: load_bench("bench_tsne").summary_rows(),
    "extraction": lambda: load_bench("bench_extraction").summary_rows(),
    "finetune": lambda: load_bench("bench_finetune").summary_rows(),
}


def write_summary(rows: list[dict], header: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["part", "what", "value", "unit", "target"])
    table.to_csv(OUT / "summary.csv", index=False)
    shown = table.copy()
    shown["value"] = shown["value"].map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    shown = shown.fillna("")
    (OUT / "summary.md").write_text(f"# embedscope benchmarks\n\n{header}\n\n{shown.to_markdown(index=False)}\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args(argv)
    rows = []
    start = time.perf_counter()
    for part in args.only:
        print(f"[bench] {part} ...", flush=True)
        part_rows = PARTS[part]()
        for row in part_rows:
            print(f"  {row['what']}: {row['value']} {row.get('unit', '')}", flush=True)
        rows += part_rows
    header = f"Machine: {machine()}. Suite wall time {time.perf_counter() - start:.0f} s; " \
             f"parts: {', '.join(args.only)}. Command: `.venv/bin/python bench/run.py`."
    write_summary(rows, header)
    print((OUT / "summary.md").read_text())


if __name__ == "__main__":
    main()
