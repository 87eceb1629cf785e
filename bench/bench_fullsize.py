"""The full study at its real size on generated data: every job's wall time and true peak memory against what
its rule declares.

    nice .venv/bin/python bench/bench_fullsize.py                  # 70,000 MNIST + 60,000 CIFAR-10 (hours on 2 cores)
    nice .venv/bin/python bench/bench_fullsize.py --scale 0.05     # the same study at 1/20 scale (minutes)

Writes, in the real on-disk formats, MNIST's four IDX .gz files (60,000 / 10,000 x scale) and CIFAR-10's
``cifar-10-python.tar.gz`` (50,000 / 10,000 x scale) with seeded class-template images
(``embedscope.synthetic``), and a randomly initialised ResNet-18 state_dict standing in for the ImageNet file
(no network here; a state_dict path takes the same code path as ``weights: imagenet``). It then runs
``config/paper.yaml`` on them with only these settings changed, because on a 2-core CPU alone each would
pass an hour: fine-tuning 1 + 1 epochs (``--epochs``), ``device: cpu``, and a 20-tree random forest
(``--trees``). Every job logs a ``job summary:`` line at exit (``embedscope.runtime.log_job_summary``) with its
wall time, the kernel's high-water mark of its resident memory (not Snakemake's sampled ``max_rss``, which
misses short peaks), and its declared ``mem_mb`` and ``runtime``; this script tabulates those lines beside the
``benchmark:`` files' ``max_rss`` and writes ``results/benchmarks/bench_fullsize_<scale>.csv``. A job whose
peak or wall time passes its declaration is listed at the end, and the script exits non-zero. Beside the
declarations the run had, the table gives those the workflow declares now for the same jobs (``mem_mb_now``,
``runtime_s_now``, from a forced dry run), so a long run made before a change can be read against it.

At a reduced ``--scale`` the MNIST jobs are sized from the generated IDX headers, while the CIFAR-10 archive
cannot tell its size without being decompressed, so its jobs keep the official sizes' declarations (bounds).
``--targets`` runs only some outputs (the test suite's 1/20 run); ``--tabulate-only`` tabulates a ``--workdir``
where a run is still going on or was stopped, and a rerun in the same ``--workdir`` resumes the study.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from csvout import write_rows  # noqa: E402

from embedscope.synthetic import write_cifar10_raw, write_mnist_raw  # noqa: E402

SUMMARY = re.compile(r"job summary: rule=(\S+) wall_s=([\d.]+) peak_rss_mb=(\d+) children_peak_rss_mb=(\d+) "
                     r"mem_mb=(\S+) runtime_min=(\S+)")
COLUMNS = ["scale", "job", "rule", "wall_s", "runtime_s", "wall_ratio", "peak_rss_mb", "benchmark_max_rss_mb",
           "mem_mb", "mem_ratio", "mem_mb_now", "runtime_s_now"]
DRY_RUN_JOB = re.compile(r"^\s+log: results/logs/(\S+)\.log$.*?^\s+resources: .*?runtime=(\d+), mem_mb=(\d+)",
                         re.M | re.S)


def write_inputs(folder: Path, scale: float) -> dict[str, Path]:
    """Generated MNIST IDX files, a CIFAR-10 archive and a random ResNet-18 state_dict under ``folder``."""
    import torch
    from torchvision.models import resnet18

    mnist, cifar = folder / "mnist", folder / "cifar10"
    write_mnist_raw(mnist, n_train=round(60000 * scale), n_test=round(10000 * scale), seed=0)
    batches = write_cifar10_raw(cifar, n_train=round(50000 * scale), n_test=round(10000 * scale), seed=1,
                                archive=True)
    for path in batches.iterdir():  # only the archive, as torchvision distributes it
        path.unlink()
    batches.rmdir()
    torch.manual_seed(0)
    weights = folder / "resnet18-random.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    return {"mnist": mnist, "cifar10": cifar, "weights": weights}


def written_inputs(folder: Path, scale: float) -> dict[str, Path]:
    """The generated inputs, written once: a rerun in the same ``--workdir`` resumes the study instead of
    regenerating (and so re-ingesting) everything."""
    done = folder / "written"
    if done.is_file():
        return {"mnist": folder / "mnist", "cifar10": folder / "cifar10", "weights": folder / "resnet18-random.pth"}
    inputs = write_inputs(folder, scale)
    done.write_text(f"{scale}\n")
    return inputs


def study_config(inputs: dict[str, Path], scale: float, epochs: int, trees: int,
                 replicates: int | None = None) -> dict:
    """config/paper.yaml on the generated inputs, with only the CPU-bound settings shortened (and, with
    ``replicates``, that many fine-tuning replicates instead of the config's)."""
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    for name in ("mnist", "cifar10"):
        config["datasets"][name]["root"] = str(inputs[name])
    cifar = config["datasets"]["cifar10"]
    cifar["max_points"] = min(cifar["max_points"], round(10000 * scale))
    mnist = config["datasets"]["mnist"]
    mnist["activation_image"] = min(mnist["activation_image"], round(10000 * scale) - 1)
    config["resnet18"]["weights"] = str(inputs["weights"])
    config["device"] = "cpu"
    config["finetune"].update(stage1_epochs=epochs, stage2_epochs=epochs)
    config.setdefault("metrics", {})["random_forest_trees"] = trees
    if replicates is not None:
        config["finetune"]["replicates"] = replicates
    return config


def job_rows(work: Path, scale: float) -> list[dict]:
    """One row per job log that holds a job summary line (every workflow script's job does)."""
    rows = []
    logs, benchmarks = work / "results" / "logs", work / "results" / "benchmarks"
    for log in sorted(logs.rglob("*.log")):
        found = SUMMARY.findall(log.read_text(errors="replace"))
        if not found:
            continue
        rule, wall, own, children, mem_mb, runtime_min = found[-1]
        job = str(log.relative_to(logs).with_suffix(""))
        peak = max(float(own), float(children))
        declared_s = 60 * float(runtime_min) if runtime_min != "None" else float("nan")
        declared_mb = float(mem_mb) if mem_mb != "None" else float("nan")
        bench = benchmarks / f"{job}.tsv"
        sampled = ""
        if bench.is_file():
            with open(bench) as handle:
                sampled = round(float(next(csv.DictReader(handle, delimiter="\t"))["max_rss"]))
        rows.append({"scale": scale, "job": job, "rule": rule, "wall_s": round(float(wall), 1),
                     "runtime_s": declared_s, "wall_ratio": round(float(wall) / declared_s, 3),
                     "peak_rss_mb": round(peak), "benchmark_max_rss_mb": sampled, "mem_mb": declared_mb,
                     "mem_ratio": round(peak / declared_mb, 3)})
    return rows


def declared_now(work: Path) -> dict[str, tuple[int, int]]:
    """job -> (mem_mb, runtime in minutes) that the workflow as it is now declares for every job of the run in
    ``work`` (a forced dry run there): the declarations a rerun would get, beside those the run had."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
           "--cores", "2", "-n", "-F", "--configfile", str(work / "study.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return {job: (int(mem), int(runtime)) for job, runtime, mem in DRY_RUN_JOB.findall(out)}


def run_study(work: Path, cores: int, targets: list[str] | None = None) -> tuple[int, float]:
    """Snakemake on the study in ``work`` (all of it, or ``targets``): (its exit status, seconds)."""
    cmd = [sys.executable, "-m", "snakemake", *(targets or []), "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(work), "--cores", str(cores), "--rerun-incomplete", "--keep-going",
           "--configfile", str(work / "study.yaml")]
    start = time.perf_counter()
    with open(work / "snakemake.log", "w") as log:  # streamed, so a long run can be followed with tail -f
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc.returncode, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (default 1)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each fine-tuning stage (default 1)")
    parser.add_argument("--trees", type=int, default=20, help="random-forest trees (default 20)")
    parser.add_argument("--replicates", type=int, help="fine-tuning replicates (default: config/paper.yaml's)")
    parser.add_argument("--workdir", type=Path, help="run here (kept) instead of a temporary folder")
    parser.add_argument("--table", type=Path, help="write the table here (default: results/benchmarks/"
                        "bench_fullsize_<scale>.csv)")
    parser.add_argument("--targets", nargs="+", help="run only these outputs (and what they need)")
    parser.add_argument("--tabulate-only", action="store_true",
                        help="only tabulate the jobs already run in --workdir (e.g. while a long run goes on)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"embedscope-fullsize-{args.scale:g}-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.tabulate_only:
        status, total = 0, float("nan")
    else:
        start = time.perf_counter()
        inputs = written_inputs(work / "inputs", args.scale)
        print(f"inputs ready in {time.perf_counter() - start:.0f} s under {work / 'inputs'}", flush=True)
        (work / "study.yaml").write_text(yaml.safe_dump(study_config(inputs, args.scale, args.epochs, args.trees,
                                                                   args.replicates)))
        status, total = run_study(work, args.cores, args.targets)
    rows = job_rows(work, args.scale)
    now = declared_now(work)
    for r in rows:
        mem, runtime = now.get(r["job"], (float("nan"), float("nan")))
        r.update(mem_mb_now=mem, runtime_s_now=60 * runtime)
    out = write_rows(rows, args.table or f"bench_fullsize_{args.scale:g}.csv", COLUMNS) if rows else None
    print(f"{'job':<58} {'wall s':>8} {'runtime s':>9} {'peak MB':>8} {'sampled':>8} {'mem_mb':>7} {'mem %':>6}"
          f" {'now MB':>7} {'now s':>6}")
    for r in rows:
        print(f"{r['job']:<58} {r['wall_s']:>8} {r['runtime_s']:>9.0f} {r['peak_rss_mb']:>8} "
              f"{r['benchmark_max_rss_mb']:>8} {r['mem_mb']:>7.0f} {100 * r['mem_ratio']:>5.0f}% "
              f"{r['mem_mb_now']:>7} {r['runtime_s_now']:>6}")
    over = [r["job"] for r in rows if r["mem_ratio"] > 1 or r["wall_ratio"] > 1]
    print(f"snakemake {'finished' if status == 0 else 'FAILED'} in {total:.0f} s; {len(rows)} jobs; "
          f"table {out}; log {work / 'snakemake.log'}")
    if over:
        print("over their declaration: " + ", ".join(over))
    if status != 0 or over:
        sys.exit(1)


if __name__ == "__main__":
    main()
