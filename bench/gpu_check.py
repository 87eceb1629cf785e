"""The GPU checks of bench/gpu_check.sh (run that, not this, on a fresh GPU machine).

1. The CUDA unit tests (`pytest -m cuda tests/test_cuda.py`; deselected everywhere else).
2. The default study's fine-tuning and fine-tuned extraction on CUDA with mixed precision (`device: cuda`,
   `finetune.mixed_precision: true`) in a fresh folder: predictions.csv must equal the argmax of the stored
   softmax layer on every test image (both come from fp32 passes).
3. The checkpoint loads with torch.load(weights_only=True) in a process that sees no GPU.
4. images/s of a training step and of extraction through the workflow's code against bare loops on the same
   GPU (bench/bench_finetune.py and bench/bench_extraction.py, which add CUDA rows when a GPU is visible).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from csvout import BENCHMARKS, write_rows  # noqa: E402

DS = "mnist5k"


def check(rows: list[dict], what: str, ok: bool, value="", unit: str = "") -> None:
    rows.append({"check": what, "result": "ok" if ok else "FAILED", "value": value, "unit": unit})
    print(f"{'ok' if ok else 'FAILED':>6}  {what}: {value} {unit}", flush=True)


def timed(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kwargs)
    return proc, time.perf_counter() - start


def predictions_match_softmax(work: Path) -> tuple[int, int]:
    """(test images whose prediction differs from the stored softmax argmax, test images)."""
    import numpy as np

    from embedscope.artifacts import read_predictions
    from embedscope.store import load_features

    predictions = read_predictions(work / f"results/models/{DS}/predictions.csv")
    softmax = load_features(work / f"results/features/{DS}/resnet18_finetuned.zarr", "softmax", "test")
    position = {int(i): row for row, i in enumerate(softmax.index)}
    stored = softmax.features[[position[int(i)] for i in predictions["index"]]].argmax(1)
    return int(np.sum(stored != predictions["pred"].to_numpy())), len(predictions)


def bench_rows(script: str, csv_name: str, rows: list[dict]) -> None:
    proc, seconds = timed([sys.executable, f"bench/{script}"])
    check(rows, f"{script} ran", proc.returncode == 0, f"{seconds:.0f}", "s")
    path = BENCHMARKS / csv_name
    if proc.returncode == 0 and path.is_file():
        with open(path) as handle:
            for row in csv.DictReader(handle):
                if "cuda" in " ".join(str(v) for v in row.values()).lower():
                    rows.append({"check": f"{script}: " + ", ".join(f"{k}={v}" for k, v in row.items()),
                                 "result": "measured", "value": "", "unit": ""})
    else:
        print(proc.stdout[-2000:], proc.stderr[-4000:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 4)
    args = parser.parse_args()
    import torch

    from embedscope.runtime import cuda_report

    rows: list[dict] = []
    check(rows, "torch sees CUDA", torch.cuda.is_available(), cuda_report())
    if not torch.cuda.is_available():
        return 1
    proc, seconds = timed([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"])
    check(rows, "CUDA unit tests", proc.returncode == 0, f"{proc.stdout.strip().splitlines()[-1]} in {seconds:.0f}",
          "s")
    if proc.returncode:
        print(proc.stdout[-4000:])
    work = Path(tempfile.mkdtemp(prefix="embedscope-gpu-check-"))
    targets = [f"results/models/{DS}/predictions.csv", f"results/features/{DS}/resnet18_finetuned.zarr"]
    proc, seconds = timed([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(work), "--cores", str(args.cores), *targets, "--configfile", str(ROOT / "config.yaml"),
                           "--config", "device=cuda"])
    check(rows, "default study fine-tuned on CUDA (AMP) and extracted", proc.returncode == 0, f"{seconds:.0f}", "s")
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
    else:
        wrong, total = predictions_match_softmax(work)
        check(rows, f"predictions.csv = argmax of the softmax store ({total} test images)", wrong == 0, wrong,
              "differ")
        checkpoint = work / f"results/models/{DS}/resnet18_finetuned.pt"
        load = [sys.executable, "-c", "import sys, torch; c = torch.load(sys.argv[1], weights_only=True); "
                "print(c['test_accuracy'])", str(checkpoint)]
        proc, _ = timed(load, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        check(rows, "checkpoint loads with weights_only=True where no GPU is visible", proc.returncode == 0,
              proc.stdout.strip() or proc.stderr.strip()[-300:], "test accuracy")
    bench_rows("bench_finetune.py", "bench_finetune.csv", rows)
    bench_rows("bench_extraction.py", "bench_extraction.csv", rows)
    out = write_rows(rows, "gpu_check.csv", ["check", "result", "value", "unit"])
    width = max(len(r["check"]) for r in rows)
    print("\n" + "\n".join(f"{r['check']:<{width}}  {r['result']:>8}  {r['value']} {r['unit']}" for r in rows))
    print(f"wrote {out}")
    return 0 if all(r["result"] != "FAILED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
