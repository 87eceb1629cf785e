"""Issue 8's scale measurement: ingest + feature extraction of a synthetic MNIST-format dataset through the
real rules (run: `nice .venv/bin/python bench/bench_scale.py [--sizes 7000 70000] [--cores 2]`).

For each size N, generates N images as torchvision's raw MNIST files (IDX .gz, 6/7 train, 1/7 test) in a
fresh temporary folder, names them in a config as a torchvision MNIST dataset rooted at that folder
(resnet18.weights: random, device: cpu), and runs
    snakemake --cores C results/features/<id>/scattering.zarr results/features/<id>/resnet18.zarr
with the repository's Snakefile in that folder. Wall time and peak RSS per rule come from the rules'
benchmark: files. Memory should not grow with N (compare the sizes). Prints a table and writes
results/benchmarks/bench_scale.csv.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from csvout import write_rows  # noqa: E402  (bench/ is on sys.path when a script runs)

from embedscope.synthetic import write_mnist_raw  # noqa: E402

RULES = {"ingest_dataset": "data/{id}.tsv", "extract_features scattering": "features/{id}/scattering.tsv",
         "extract_features resnet18": "features/{id}/resnet18.tsv"}


def snakefile_for(work: Path) -> Path:
    """The repository's Snakefile; while some of its rule files are not written yet, one that includes
    the real common/data/features rule files only."""
    main = ROOT / "Snakefile"
    includes = re.findall(r'include: "(rules/\w+\.smk)"', main.read_text())
    if all((ROOT / inc).is_file() for inc in includes):
        return main
    partial = work / "Snakefile"
    partial.write_text(
        'configfile: "config.yaml"\n\n'
        + "".join(f'include: "{ROOT / inc}"\n' for inc in ("rules/common.smk", "rules/data.smk", "rules/features.smk"))
    )
    return partial


def run_size(n: int, cores: int, keep: bool) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix=f"embedscope-scale-{n}-"))
    try:
        n_test = n // 7
        t = time.perf_counter()
        write_mnist_raw(tmp / "data", n_train=n - n_test, n_test=n_test, seed=0)
        generate_s = time.perf_counter() - t
        work = tmp / "work"
        work.mkdir()
        shutil.copy(ROOT / "config.yaml", work / "config.yaml")
        dataset = f"synth{n}"
        (work / "bench.yaml").write_text(yaml.safe_dump({
            "datasets": {dataset: {"source": "torchvision", "name": "MNIST", "root": str(tmp / "data")}},
            "extractors": ["scattering", "resnet18"],
            "resnet18": {"weights": "random"},
            "device": "cpu",
        }))
        snakefile = snakefile_for(work)
        targets = [f"results/features/{dataset}/{e}.zarr" for e in ("scattering", "resnet18")]
        cmd = [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(snakefile), "--directory",
               str(work), "--cores", str(cores), *targets, "--configfile", str(work / "bench.yaml")]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        total_s = time.perf_counter() - t
        if proc.returncode != 0:
            logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (work / "results/logs").rglob("*.log"))
            raise SystemExit(f"snakemake failed at N={n}:\n{(proc.stdout + proc.stderr)[-4000:]}\n{logs}")
        rows = [{"n_images": n, "step": "generate IDX files (not a rule)", "wall_s": round(generate_s, 1),
                 "max_rss_mb": "", "cpu_time_s": ""}]
        for rule, rel in RULES.items():
            with open(work / "results/benchmarks" / rel.format(id=dataset)) as fh:
                bench = next(csv.DictReader(fh, delimiter="\t"))
            rows.append({"n_images": n, "step": rule, "wall_s": round(float(bench["s"]), 1),
                         "max_rss_mb": round(float(bench["max_rss"]), 0),
                         "cpu_time_s": round(float(bench["cpu_time"]), 1)})
        rows.append({"n_images": n, "step": "snakemake total (incl. start-up)", "wall_s": round(total_s, 1),
                     "max_rss_mb": "", "cpu_time_s": ""})
        return rows
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7000, 70000])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows += run_size(n, args.cores, args.keep)
    out = write_rows(rows, "bench_scale.csv")
    print(f"{'N':>7}  {'step':<36} {'wall s':>8} {'peak RSS MB':>12} {'CPU s':>8}")
    for r in rows:
        print(f"{r['n_images']:>7}  {r['step']:<36} {r['wall_s']:>8} {r['max_rss_mb']:>12} {r['cpu_time_s']:>8}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
