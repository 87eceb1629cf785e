"""Fine-tune ResNet-18 as the report did (fastai v1 ``cnn_learner`` + ``fit_one_cycle``), in plain PyTorch.

Model: :class:`embedscope.resnet.FinetunedResNet18` (the ResNet-18 body + fastai's head).
Recipe: stage 1 trains the head with the body frozen except its BatchNorm layers; stage 2 unfreezes everything
with discriminative learning rates over three layer groups. Each stage is one one-cycle schedule (torch's
``OneCycleLR``: cosine warm-up for ``pct_start`` of the steps, cosine annealing after, Adam beta1 cycled
between ``moms``) on a fresh AdamW optimizer (decoupled weight decay, fastai's ``true_wd``).

After every finished epoch a resume file is written next to (never among) the declared outputs; a rerun whose
config digest matches continues from the next epoch, and the file is removed once training has finished.
The checkpoint and the resume file are :mod:`embedscope.checkpoint`'s; predictions.csv and training_log.csv
:mod:`embedscope.artifacts`'.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedscope.artifacts import write_predictions, write_training_log
from embedscope.checkpoint import default_resume_path, load_resume, remove_resume, save_checkpoint, save_resume
from embedscope.layers import BODY_LAYERS, LR_GROUP_NAMES
from embedscope.resnet import FinetunedResNet18, FinetuneError, preprocess
from embedscope.runtime import progress
from embedscope.store import ImageSet, config_digest, read_image_store

log = logging.getLogger(__name__)

# Mirrors schemas/config.schema.yaml (finetune section); the workflow passes the validated section, tests and
# scripts may pass only the keys they change.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "batch_size": 128,
    "stage1_epochs": 4,
    "stage1_max_lr": 3.0e-3,
    "stage2_epochs": 5,
    "stage2_lr_min": 1.0e-6,
    "stage2_lr_max": 1.0e-4,
    "lr_groups": 3,
    "pct_start": 0.3,
    "div_factor": 25.0,
    "final_div_factor": 1.0e4,
    "moms": [0.95, 0.85],
    "weight_decay": 0.01,
    "mixed_precision": True,
}
ADAM_BETA2 = 0.99  # fastai v1's Adam betas are (0.9, 0.99); beta1 is cycled by the schedule
BODY_FRONT = BODY_LAYERS[:6]  # conv1 .. layer2 (fastai's resnet split at layer3)


class TrainingInterrupted(RuntimeError):
    """Raised by an ``on_epoch_end`` hook to stop training (tests use it to simulate a crash)."""


# ---------------------------------------------------------------------------------------------------- recipe


def layer_groups(model: FinetunedResNet18, n_groups: int = 3) -> list[list[nn.Parameter]]:
    """Parameters of the layer groups (fastai's resnet split): body front / body back / head."""
    if n_groups not in LR_GROUP_NAMES:
        raise FinetuneError(f"config key 'finetune.lr_groups' is {n_groups}; expected 1, 2 or 3")
    front = [p for name in BODY_FRONT for p in getattr(model.body, name).parameters()]
    back = [p for name in BODY_LAYERS[len(BODY_FRONT) :] for p in getattr(model.body, name).parameters()]
    head = list(model.head.parameters())
    if n_groups == 1:
        return [front + back + head]
    if n_groups == 2:
        return [front + back, head]
    return [front, back, head]


def freeze_body(model: FinetunedResNet18, frozen: bool = True) -> None:
    """Stage 1: body parameters stop learning except BatchNorm weights/biases (fastai's ``train_bn``)."""
    for module in model.body.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for p in module.parameters(recurse=False):
            p.requires_grad_(is_bn or not frozen)
    for p in model.head.parameters():
        p.requires_grad_(True)


def discriminative_lrs(lr_min: float, lr_max: float, n_groups: int) -> list[float]:
    """fastai's ``even_mults``: ``n_groups`` lrs spread geometrically from lr_min to lr_max."""
    if n_groups == 1:
        return [float(lr_max)]
    step = (lr_max / lr_min) ** (1.0 / (n_groups - 1))
    return [float(lr_min * step**i) for i in range(n_groups)]


def make_optimizer(model: FinetunedResNet18, recipe: Mapping[str, Any], max_lrs: Sequence[float]):
    groups = layer_groups(model, recipe["lr_groups"])
    return torch.optim.AdamW(
        [{"params": params, "lr": lr} for params, lr in zip(groups, max_lrs, strict=True)],
        lr=max_lrs[-1],
        betas=(recipe["moms"][0], ADAM_BETA2),
        weight_decay=recipe["weight_decay"],
    )


def one_cycle(optimizer, recipe: Mapping[str, Any], max_lrs: Sequence[float], total_steps: int):
    """One-cycle: cosine warm-up to ``max_lrs``, cosine annealing; beta1 moms[0] -> moms[1] -> moms[0]."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=list(max_lrs),
        total_steps=max(1, int(total_steps)),
        pct_start=recipe["pct_start"],
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=recipe["moms"][1],
        max_momentum=recipe["moms"][0],
        div_factor=recipe["div_factor"],
        final_div_factor=recipe["final_div_factor"],
    )


def stage_lrs(recipe: Mapping[str, Any], stage: int) -> list[float]:
    n = recipe["lr_groups"]
    if stage == 1:
        return [float(recipe["stage1_max_lr"])] * n
    return discriminative_lrs(recipe["stage2_lr_min"], recipe["stage2_lr_max"], n)


def recipe_from_config(finetune: Mapping[str, Any] | None) -> dict[str, Any]:
    """The finetune config section with defaults filled in; unknown keys and bad values are errors."""
    finetune = dict(finetune or {})
    unknown = sorted(set(finetune) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise FinetuneError(f"unknown config key(s) finetune.{', finetune.'.join(unknown)}")
    recipe = {**FINETUNE_DEFAULTS, **finetune}
    recipe["moms"] = [float(m) for m in recipe["moms"]]
    if len(recipe["moms"]) != 2:
        raise FinetuneError(f"config key 'finetune.moms' must hold two values, got {recipe['moms']}")
    if recipe["stage2_lr_min"] > recipe["stage2_lr_max"]:
        raise FinetuneError(
            f"config key 'finetune.stage2_lr_min' ({recipe['stage2_lr_min']}) is above "
            f"'finetune.stage2_lr_max' ({recipe['stage2_lr_max']})"
        )
    if recipe["lr_groups"] not in LR_GROUP_NAMES:
        raise FinetuneError(f"config key 'finetune.lr_groups' is {recipe['lr_groups']}; expected 1, 2 or 3")
    return recipe


# ---------------------------------------------------------------------------------------------------- data


class BatchLoader:
    """Batches of an in-memory uint8 image array, preprocessed per batch; shuffled with a seeded generator."""

    def __init__(
        self,
        images,
        labels,
        batch_size: int,
        shuffle: bool = False,
        resize: int | None = None,
        drop_last: bool = False,
        seed: int = 0,
    ):
        self.images = torch.as_tensor(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.resize = resize
        self.drop_last = (
            drop_last and len(self.labels) >= self.batch_size
        )  # BatchNorm cannot train on 1 image
        self.seed = seed

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(int(self.seed)))

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order = self._order()
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield preprocess(self.images[idx], self.resize), self.labels[idx]


# ---------------------------------------------------------------------------------------------------- loops


def _autocast(device: str, enabled: bool):
    return torch.autocast(
        device_type="cuda", dtype=torch.float16, enabled=enabled and device.startswith("cuda")
    )


def train_one_epoch(
    model,
    criterion,
    optimizer,
    data_loader,
    device: str,
    epoch: int,
    scheduler=None,
    scaler=None,
    on_step: Callable[[float, list[float]], None] | None = None,
    mixed_precision: bool = False,
    desc: str = "train",
) -> float:
    """One pass over ``data_loader`` (torchvision references style); steps ``scheduler`` every batch.

    ``on_step(loss, lrs)`` gets each batch's loss and the lrs it was trained with. Returns the mean loss.
    """
    model.train()
    total, count = 0.0, 0
    for images, targets in progress(data_loader, desc=f"{desc} epoch {epoch}", total=len(data_loader)):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        lrs = [float(group["lr"]) for group in optimizer.param_groups]
        with _autocast(device, mixed_precision):
            loss = criterion(model(images), targets)
        if not math.isfinite(loss.item()):
            raise FinetuneError(
                f"training loss is {loss.item()} at {desc} epoch {epoch}; lower the learning rates"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = float(loss.item())
        total += value * len(targets)
        count += len(targets)
        if on_step is not None:
            on_step(value, lrs)
    return total / max(count, 1)


@torch.inference_mode()
def evaluate(model, criterion, data_loader, device: str, mixed_precision: bool = False) -> dict[str, Any]:
    """Loss and accuracy over ``data_loader`` (eval mode), with per-sample probabilities and losses."""
    model.eval()
    probs, losses, labels = [], [], []
    per_sample = nn.CrossEntropyLoss(reduction="none")
    for images, targets in progress(data_loader, desc="evaluate", total=len(data_loader)):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with _autocast(device, mixed_precision):
            logits = model(images).float()
        losses.append(per_sample(logits, targets).cpu())
        probs.append(torch.softmax(logits, 1).cpu())
        labels.append(targets.cpu())
    probs_t, losses_t, labels_t = torch.cat(probs), torch.cat(losses), torch.cat(labels)
    return {
        "loss": float(losses_t.mean()),
        "accuracy": float((probs_t.argmax(1) == labels_t).float().mean()),
        "probs": probs_t.numpy(),
        "losses": losses_t.numpy(),
        "labels": labels_t.numpy(),
    }


# ---------------------------------------------------------------------------------------------------- fit


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return int(seed) * 1000 + stage * 100 + epoch


def _start_stage(model, recipe: Mapping[str, Any], stage: int, total_steps: int, amp: bool,
                 resumed: Mapping[str, Any] | None):
    """A stage's fresh optimizer, one-cycle schedule and grad scaler; with ``resumed``, their saved states."""
    freeze_body(model, frozen=stage == 1)
    max_lrs = stage_lrs(recipe, stage)
    optimizer = make_optimizer(model, recipe, max_lrs)
    scheduler = one_cycle(optimizer, recipe, max_lrs, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
    return optimizer, scheduler, scaler


def _run_epoch(model, criterion, optimizer, scheduler, scaler, train_loader, test_loader, device: str,
               amp: bool, stage: int, epoch: int, seed: int, rows: list[dict[str, Any]]) -> None:
    """Train one epoch and evaluate; append its step rows and its epoch row to ``rows``."""
    torch.manual_seed(_epoch_seed(seed, stage, epoch))  # dropout masks: same on a resumed run
    train_loader.set_seed(_epoch_seed(seed, stage, epoch))
    start = time.perf_counter()
    step = sum(1 for r in rows if r["kind"] == "step")

    def on_step(loss, lrs):
        nonlocal step
        rows.append({"kind": "step", "stage": stage, "epoch": epoch, "step": step,
                     **{f"lr_{g}": lr for g, lr in enumerate(lrs)}, "train_loss": loss})
        step += 1

    train_loss = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, scheduler, scaler,
                                 on_step, amp, desc=f"stage {stage}")
    result = evaluate(model, criterion, test_loader, device, amp)
    rows.append({"kind": "epoch", "stage": stage, "epoch": epoch, "step": step - 1, "train_loss": train_loss,
                 "test_loss": result["loss"], "test_accuracy": result["accuracy"]})
    log.info(
        "stage %d epoch %d: train_loss %.4f test_loss %.4f test_accuracy %.4f (%.1f s)",
        stage,
        epoch,
        train_loss,
        result["loss"],
        result["accuracy"],
        time.perf_counter() - start,
    )


def fit(
    model: FinetunedResNet18,
    train_loader: BatchLoader,
    test_loader: BatchLoader,
    recipe: Mapping[str, Any],
    device: str = "cpu",
    seed: int = 0,
    resume_path: str | Path | None = None,
    digest: str = "",
    on_epoch_end: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run both stages; return the training-log ``rows`` and the last optimizer/scheduler/scaler states.

    ``on_epoch_end(stage, epoch)`` runs after the resume file of that epoch is written (tests raise from it).
    """
    recipe = recipe_from_config(recipe)
    model.to(device)
    amp = bool(recipe["mixed_precision"]) and device.startswith("cuda")
    criterion = nn.CrossEntropyLoss()
    state = load_resume(resume_path, digest)
    rows: list[dict[str, Any]] = [] if state is None else list(state["rows"])
    done = (0, -1) if state is None else (int(state["stage"]), int(state["epoch"]))  # last finished
    if state is not None:
        model.load_state_dict(state["model"])
    last = {key: (state or {}).get(key) for key in ("optimizer", "scheduler", "scaler")}
    last.update(stage=done[0], epoch=done[1])
    for stage, epochs in ((1, recipe["stage1_epochs"]), (2, recipe["stage2_epochs"])):
        if epochs == 0 or (stage, epochs - 1) <= done:
            continue
        resumed = state if state is not None and done[0] == stage else None
        optimizer, scheduler, scaler = _start_stage(model, recipe, stage, epochs * len(train_loader), amp, resumed)
        for epoch in range(0 if resumed is None else done[1] + 1, epochs):
            _run_epoch(model, criterion, optimizer, scheduler, scaler, train_loader, test_loader, device, amp,
                       stage, epoch, seed, rows)
            last = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "stage": stage, "epoch": epoch}
            if resume_path is not None:
                save_resume(resume_path, model, last, rows, digest, recipe["lr_groups"])
            if on_epoch_end is not None:
                on_epoch_end(stage, epoch)
    return {**last, "rows": rows}


# ---------------------------------------------------------------------------------------------------- entry point


def _data_fingerprint(images: np.ndarray, labels: np.ndarray, split: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (images, labels, split):
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def training_config(finetune, resnet18, seed, deterministic, device) -> dict[str, Any]:
    resnet18 = dict(resnet18 or {})
    return {
        "finetune": recipe_from_config(finetune),
        "resnet18": {"weights": resnet18.get("weights", "imagenet"), "resize": resnet18.get("resize")},
        "seed": int(seed),
        "deterministic": bool(deterministic),
        "device": device,
    }


def _loaders(data: ImageSet, data_path, batch_size: int, resize: int | None, seed: int):
    """Shuffled train batches (the last partial one dropped) and ordered test batches, with the test indices."""
    train_images, train_labels, _ = data.subset("train")
    test_images, test_labels, test_index = data.subset("test")
    if len(train_labels) < 2 or len(test_labels) == 0:
        raise FinetuneError(
            f"image store {data_path} needs >= 2 train and >= 1 test images, has "
            f"{len(train_labels)} and {len(test_labels)}"
        )
    train = BatchLoader(train_images, train_labels, batch_size, shuffle=True, resize=resize, drop_last=True,
                        seed=seed)
    test = BatchLoader(test_images, test_labels, max(batch_size, 256), resize=resize)
    return train, test, test_index


def finetune_resnet18(
    data_path: str | Path,
    model_path: str | Path,
    log_path: str | Path,
    predictions_path: str | Path,
    *,
    finetune: Mapping[str, Any] | None = None,
    resnet18: Mapping[str, Any] | None = None,
    seed: int = 0,
    deterministic: bool = True,
    device: str = "cpu",
    resources: str | Path = "resources",
    resume_path: str | Path | None = None,
    on_epoch_end: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train on the store's train split, evaluate on its test split; write checkpoint, log and predictions."""
    config = training_config(finetune, resnet18, seed, deterministic, device)
    recipe, weights = config["finetune"], config["resnet18"]["weights"]
    data = read_image_store(data_path)
    train_loader, test_loader, test_index = _loaders(data, data_path, recipe["batch_size"],
                                                     config["resnet18"]["resize"], seed)
    digest = config_digest({**config, "data": _data_fingerprint(data.images, data.labels, data.split)})
    resume_path = default_resume_path(model_path) if resume_path is None else Path(resume_path)
    model = FinetunedResNet18(len(data.class_names), weights, resources, seed=seed)
    log.info(
        "fine-tuning ResNet-18 (%s) on %s: %d train / %d test images, %d classes, device %s",
        weights,
        data_path,
        len(train_loader.labels),
        len(test_loader.labels),
        len(data.class_names),
        device,
    )
    start = time.perf_counter()
    state = fit(model, train_loader, test_loader, recipe, device, seed, resume_path, digest, on_epoch_end)
    seconds = time.perf_counter() - start
    amp = bool(recipe["mixed_precision"]) and device.startswith("cuda")
    result = evaluate(model, nn.CrossEntropyLoss(), test_loader, device, amp)
    log.info(
        "test accuracy %.4f, test loss %.4f, training %.1f s", result["accuracy"], result["loss"], seconds
    )
    save_checkpoint(model_path, model, state, data.class_names, config, digest, result, seconds)
    write_training_log(log_path, state["rows"], recipe["lr_groups"])
    write_predictions(predictions_path, test_index, result["labels"], result["probs"], result["losses"])
    remove_resume(resume_path)
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "train_seconds": seconds}
