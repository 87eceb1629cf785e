"""The benchmark suite: one entry point, one summary (results/benchmarks/summary.md and .csv).

    .venv/bin/python bench/run.py            # everything (about 10-15 minutes on 2 cores)
    .venv/bin/python bench/run.py --only workflow tsne
    .venv/bin/python bench/run.py --only tsne extraction finetune --quick   # tiny sizes, a smoke test

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
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{gpu}; load average at the end {load} (1/5/15 min)")


def snakemake(workdir: Path, *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "config.yaml"), *args],
        capture_output=True, text=True,
    )
    if done.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - start


def rule_of(benchmark_file: Path, root: Path) -> str:
    return str(benchmark_file.relative_to(root).with_suffix(""))


def bench_workflow(cores: int = 2, quick: bool = False) -> list[dict]:
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


# --quick: tiny sizes for a smoke test of the suite (the workflow part has no quick form: it is the default run).
QUICK = {
    "tsne": {"sizes": (500, 1000)},
    "extraction": {"n": 500, "sizes": (500, 5000), "repeats": 1},
    "finetune": {"steps": 3},
}
PARTS = {
    "workflow": lambda quick: bench_workflow(),
    "tsne": lambda quick: load_bench("bench_tsne").summary_rows(**(QUICK["tsne"] if quick else {})),
    "extraction": lambda quick: load_bench("bench_extraction").summary_rows(**(QUICK["extraction"] if quick else {})),
    "finetune": lambda quick: load_bench("bench_finetune").summary_rows(**(QUICK["finetune"] if quick else {})),
}


def write_summary(rows: list[dict], header: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["part", "what", "value", "unit", "target"])
    table.to_csv(OUT / "summary.csv", index=False)
    shown = table.copy()
    shown["value"] = shown["value"].map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    shown = shown.fillna("")
    (OUT / "summary.md").write_text(f"# embedscope benchmarks\n\n{header}\n\n{shown.to_markdown(index=False)}\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; figures not comparable)")
    args = parser.parse_args(argv)
    rows = []
    start = time.perf_counter()
    for part in args.only:
        print(f"[bench] {part} ...", flush=True)
        part_start = time.perf_counter()
        try:
            part_rows = PARTS[part](args.quick)
        except Exception as error:  # one broken part must not lose the others' figures
            print(f"  {part} FAILED: {error}", file=sys.stderr, flush=True)
            part_rows = [{"part": part, "what": f"FAILED: {type(error).__name__}: {str(error)[:200]}",
                          "value": None, "unit": ""}]
        part_rows.append({"part": part, "what": "part wall time (suite)", "value": time.perf_counter() - part_start,
                          "unit": "s"})
        for row in part_rows:
            print(f"  {row['what']}: {row['value']} {row.get('unit', '')}", flush=True)
        rows += part_rows
    command = ".venv/bin/python bench/run.py" + (" --quick" if args.quick else "")
    header = f"Machine: {machine()}. Suite wall time {time.perf_counter() - start:.0f} s " \
             f"(target < 900 s); parts: {', '.join(args.only)}. Command: `{command}`."
    write_summary(rows, header)
    print((OUT / "summary.md").read_text())


if __name__ == "__main__":
    main()
