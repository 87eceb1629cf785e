"""Fine-tuning throughput: images/s of a stage-1 step, a stage-2 step and inference (feature extraction).

Runs ResNet-18 + the report's head at 28x28 (embedded MNIST size), batch 128, on this CPU (all torch threads),
and on CUDA too when torch.cuda.is_available() (with mixed precision, as the workflow trains there). Each
training stage is measured twice: through the workflow's loader and train_one_epoch (uint8 batches, preprocessed
on the device), and as a bare loop over one preallocated, already preprocessed tensor (the ceiling: no loading,
no preprocessing, no loss bookkeeping). With --bf16, CPU rows under bfloat16 autocast
(finetune.mixed_precision: bf16) follow. Prints a table and writes results/benchmarks/bench_finetune.csv.

    .venv/bin/python bench/bench_finetune.py [--steps 8] [--size 28] [--batch 128] [--bf16]

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


def _data(steps: int, size: int, batch: int):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch * steps, size, size, 1), dtype=np.uint8)
    return images, rng.integers(0, 10, size=len(images))


def _training(model, stage: int, steps: int, amp):
    """The optimizer, one-cycle schedule, grad scaler and loss of a stage, as the workflow sets them up."""
    recipe = ft.recipe_from_config({"stage2_lr_min": 1e-4, "stage2_lr_max": 1e-3})
    ft.freeze_body(model, frozen=stage == 1)
    lrs = ft.stage_lrs(recipe, stage)
    optimizer = ft.make_optimizer(model, recipe, lrs)
    scheduler = ft.one_cycle(optimizer, recipe, lrs, steps + 2)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    return optimizer, scheduler, scaler, nn.CrossEntropyLoss()


def default_amp(device: str):
    return ft.amp_dtype(True, device)  # fp16 on CUDA, none on the CPU: the workflow's default


def measure_bare(device: str, stage: int, steps: int, size: int, batch: int, amp=None) -> float:
    """images/s of a bare training loop over one preallocated tensor, preprocessed once beforehand: forward,
    loss, backward, step, schedule; two warm-up batches first."""
    model = FinetunedResNet18(10).to(device)
    images, labels = _data(steps, size, batch)
    inputs, targets = ft.to_device_batch(torch.from_numpy(images), torch.from_numpy(labels), device)
    optimizer, scheduler, scaler, criterion = _training(model, stage, steps, amp)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            _synchronize(device)
            start = time.perf_counter()
        rows = slice((i % steps) * batch, (i % steps + 1) * batch)
        with ft._autocast(device, amp):
            loss = criterion(model(inputs[rows]), targets[rows])
        optimizer.zero_grad(set_to_none=True)
        if ft.backward_and_step(loss, optimizer, scaler):
            scheduler.step()
    _synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def measure(device: str, stage: int, steps: int, size: int, batch: int, amp="default") -> float:
    """images/s of ``steps`` batches after two warm-up batches: training through the workflow's loader (uint8
    batches, preprocessed on the device) and train_one_epoch, or inference as the extractor runs it."""
    amp = default_amp(device) if amp == "default" else amp
    model = FinetunedResNet18(10).to(device)
    images, labels = _data(steps, size, batch)
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
    optimizer, scheduler, scaler, criterion = _training(model, stage, steps, amp)
    ft.train_one_epoch(model, criterion, optimizer, warm_up, device, 0, scheduler, scaler, None, amp, "warm-up")
    _synchronize(device)
    start = time.perf_counter()
    ft.train_one_epoch(model, criterion, optimizer, loader, device, 0, scheduler, scaler, None, amp, "bench")
    _synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def measure_all(steps: int, size: int, batch: int, bf16: bool = False) -> list[dict]:
    """images/s of each phase on the CPU, and on CUDA (mixed precision) when torch sees a GPU; each training
    stage through the workflow's loop and as a bare tensor loop. ``bf16``: CPU training rows under bfloat16
    autocast too."""
    runs = [(device, default_amp(device)) for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])]
    runs += [("cpu", torch.bfloat16)] if bf16 else []
    rows = []
    for device, amp in runs:
        for stage, name in PHASES:
            if stage == 0 and amp == torch.bfloat16:
                continue  # extraction runs in fp32 whatever the training precision
            loops = [("workflow", measure)] + ([("bare tensor", measure_bare)] if stage else [])
            for loop, function in loops:
                rate = function(device, stage, steps, size, batch, amp)
                rows.append({"device": device, "precision": ft.precision_label(amp), "threads": torch.get_num_threads(),
                             "phase": name, "loop": loop, "size": size, "batch": batch,
                             "images_per_s": round(rate, 1)})
    return rows


def summary_rows(steps: int = 8, size: int = 28, batch: int = 128) -> list[dict]:
    """The suite's fine-tuning part: images/s per stage (CUDA rows too when a GPU is present)."""
    rows = []
    for r in measure_all(steps, size, batch):
        device = r["device"] if r["device"] == "cuda" else f"cpu, {r['threads']} threads"
        loop = "" if r["loop"] == "workflow" else f", {r['loop']} loop"
        rows.append({"part": "finetune", "what": f"{r['phase']}{loop}, {device}, {size}x{size}, batch {batch}",
                     "value": r["images_per_s"], "unit": "images/s"})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="CPU rows under bfloat16 autocast too")
    args = parser.parse_args()
    rows = measure_all(args.steps, args.size, args.batch, args.bf16)
    print(f"{'device':<7}{'precision':<15}{'threads':>8}  {'phase':<26}{'loop':<13}{'size':>5}{'batch':>6}"
          f"{'images/s':>10}")
    for r in rows:
        print(f"{r['device']:<7}{r['precision']:<15}{r['threads']:>8}  {r['phase']:<26}{r['loop']:<13}"
              f"{r['size']:>5}{r['batch']:>6}{r['images_per_s']:>10.1f}")
    print(f"wrote {write_rows(rows, 'bench_finetune.csv')}")


if __name__ == "__main__":
    main()
