"""Fine-tuning throughput: images/s of a stage-1 step, a stage-2 step and inference (feature extraction).

Runs ResNet-18 + the report's head at 28x28 (embedded MNIST size), batch 128, on this CPU (all torch threads),
and on CUDA too when torch.cuda.is_available() (with mixed precision, as the workflow trains there).
Prints a table and writes results/benchmarks/bench_finetune.csv.

    .venv/bin/python bench/bench_finetune.py [--steps 8] [--size 28] [--batch 128]

`summary_rows()` is the suite's part (bench/run.py).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from csvout import write_rows  # noqa: E402  (bench/ is on sys.path when a script runs)

from embedscope import finetune as ft  # noqa: E402
from embedscope.resnet import FinetunedResNet18  # noqa: E402

PHASES = ((1, "stage 1 (head + body BN)"), (2, "stage 2 (all)"), (0, "inference"))


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(device: str, stage: int, steps: int, size: int, batch: int) -> float:
    """images/s of ``steps`` batches after two warm-up batches: training through the workflow's loader (uint8
    batches, preprocessed on the device) and train_one_epoch, or inference as the extractor runs it."""
    amp = device == "cuda"
    model = FinetunedResNet18(10).to(device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch * steps, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=len(images))
    warm_up = ft.make_loader(images[: 2 * batch], labels[: 2 * batch], batch, device=device)
    loader = ft.make_loader(images, labels, batch, shuffle=stage > 0, drop_last=True, device=device)
    if stage == 0:  # inference, as the resnet18_finetuned extractor runs it (batches preprocessed beforehand)
        model.eval()
        batches = [ft.to_device_batch(x, y, device)[0] for x, y in [*warm_up, *loader]]
        with torch.inference_mode():
            for i, x in enumerate(batches):
                if i == 2:
                    _synchronize(device)
                    start = time.perf_counter()
                model.embeddings(x)
        _synchronize(device)
        return batch * steps / (time.perf_counter() - start)
    recipe = ft.recipe_from_config({"stage2_lr_min": 1e-4, "stage2_lr_max": 1e-3})
    ft.freeze_body(model, frozen=stage == 1)
    lrs = ft.stage_lrs(recipe, stage)
    optimizer = ft.make_optimizer(model, recipe, lrs)
    scheduler = ft.one_cycle(optimizer, recipe, lrs, steps + 2)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    criterion = nn.CrossEntropyLoss()
    ft.train_one_epoch(model, criterion, optimizer, warm_up, device, 0, scheduler, scaler, None, amp, "warm-up")
    _synchronize(device)
    start = time.perf_counter()
    ft.train_one_epoch(model, criterion, optimizer, loader, device, 0, scheduler, scaler, None, amp, "bench")
    _synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def measure_all(steps: int, size: int, batch: int) -> list[dict]:
    """images/s of each phase on the CPU, and on CUDA (mixed precision) when torch sees a GPU."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for stage, name in PHASES:
            rate = measure(device, stage, steps, size, batch)
            rows.append({"device": device, "threads": torch.get_num_threads(), "phase": name, "size": size,
                         "batch": batch, "images_per_s": round(rate, 1)})
    return rows


def summary_rows(steps: int = 8, size: int = 28, batch: int = 128) -> list[dict]:
    """The suite's fine-tuning part: images/s per stage (CUDA rows too when a GPU is present)."""
    rows = []
    for r in measure_all(steps, size, batch):
        device = r["device"] if r["device"] == "cuda" else f"cpu, {r['threads']} threads"
        rows.append({"part": "finetune", "what": f"{r['phase']}, {device}, {size}x{size}, batch {batch}",
                     "value": r["images_per_s"], "unit": "images/s"})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    rows = measure_all(args.steps, args.size, args.batch)
    print(f"{'device':<7}{'threads':>8}  {'phase':<26}{'size':>5}{'batch':>6}{'images/s':>10}")
    for r in rows:
        print(f"{r['device']:<7}{r['threads']:>8}  {r['phase']:<26}{r['size']:>5}{r['batch']:>6}"
              f"{r['images_per_s']:>10.1f}")
    print(f"wrote {write_rows(rows, 'bench_finetune.csv')}")


if __name__ == "__main__":
    main()
