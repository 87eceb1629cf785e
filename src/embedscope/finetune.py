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

import contextlib
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

from embedscope.artifacts import write_collapse, write_predictions, write_training_log
from embedscope.checkpoint import default_resume_path, load_resume, remove_resume, save_checkpoint, save_resume
from embedscope.collapse import collapse_rows, collapse_statistics
from embedscope.datasets import stratified_subsample
from embedscope.layers import BODY_LAYERS, LR_GROUP_NAMES
from embedscope.resnet import FinetunedResNet18, FinetuneError, preprocess
from embedscope.runtime import compute_environment, progress
from embedscope.store import ImageSplits, config_digest, image_store_shape, read_image_splits

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
    "collapse_points": 1000,
}
ADAM_BETA2 = 0.99  # fastai v1's Adam betas are (0.9, 0.99); beta1 is cycled by the schedule
BODY_FRONT = BODY_LAYERS[:6]  # conv1 .. layer2 (fastai's resnet split at layer3)
# The layers whose neural collapse is followed through training: the body's last and the last linear layer's input.
COLLAPSE_LAYERS = ("layer4", "head_hidden")


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
    if recipe["mixed_precision"] not in (True, False, "fp16", "bf16"):
        raise FinetuneError(f"config key 'finetune.mixed_precision' is {recipe['mixed_precision']!r}; expected "
                            "true, false, fp16 or bf16")
    if recipe["lr_groups"] not in LR_GROUP_NAMES:
        raise FinetuneError(f"config key 'finetune.lr_groups' is {recipe['lr_groups']}; expected 1, 2 or 3")
    return recipe


# ---------------------------------------------------------------------------------------------------- data


class ImageBatches(torch.utils.data.Dataset):
    """uint8 (N,H,W,C) images and their labels, served a whole batch of indices at a time (``__getitems__``).

    The tensors share the given array's memory (``torch.from_numpy``): the loader holds no copy of its own.
    Batches stay uint8 until they are on the device (:func:`to_device_batch`), so what crosses to a GPU, and what
    a worker process hands over, is a quarter of the float32 batch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices)
        return self.images[indices], self.labels[indices]


def whole_batch(batch):
    """The loader's collate: ``ImageBatches.__getitems__`` already returns one batch (module level: picklable)."""
    return batch


class SeededBatchSampler(torch.utils.data.Sampler):
    """Index batches of ``n`` samples: in order, or in ``torch.randperm`` order of a generator seeded anew with
    :meth:`set_seed` every epoch (the order does not depend on how many epochs ran before: resume needs that).

    ``drop_last`` drops the last partial batch only when there is a full one (BatchNorm cannot train on 1 image).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = False, drop_last: bool = False, seed: int = 0):
        self.n, self.batch_size, self.shuffle = int(n), int(batch_size), shuffle
        self.drop_last = drop_last and self.n >= self.batch_size
        self.seed = int(seed)

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.arange(self.n)
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


def make_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = False,
                drop_last: bool = False, seed: int = 0, device: str = "cpu", workers: int = 0):
    """A ``DataLoader`` of uint8 batches over ``images`` (held, not copied).

    On CUDA, ``workers`` processes gather batches into pinned memory while the GPU trains. On the CPU the
    gather runs in the training process itself: there a worker would only add a copy of every batch (and
    its pickling) to the same cores that train.
    """
    cuda = device.startswith("cuda")
    return torch.utils.data.DataLoader(
        ImageBatches(images, labels),
        batch_sampler=SeededBatchSampler(len(labels), batch_size, shuffle, drop_last, seed),
        collate_fn=whole_batch,
        num_workers=max(0, int(workers)) if cuda else 0,
        pin_memory=cuda,
        # Every iterator draws its workers' base seed from this generator; without one it would draw from
        # torch's global generator and shift the dropout masks that _run_epoch seeds.
        generator=torch.Generator().manual_seed(int(seed)),
    )


def to_device_batch(images: torch.Tensor, targets: torch.Tensor, device: str, resize: int | None = None):
    """A uint8 batch onto ``device``, then float, resized and ImageNet-normalised there (:func:`preprocess`)."""
    images = images.to(device, non_blocking=True)
    return preprocess(images, resize), targets.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------------- loops


def amp_dtype(mixed_precision: bool | str | torch.dtype | None, device: str) -> torch.dtype | None:
    """What training autocasts to on ``device``, or None for fp32 (config key ``finetune.mixed_precision``).

    ``true``/``fp16``: float16 with GradScaler on CUDA; the CPU has no fast fp16 kernels, so there it stays fp32.
    ``bf16``: bfloat16 on CUDA and on the CPU alike, without GradScaler (bfloat16 has fp32's exponent range).
    """
    if isinstance(mixed_precision, torch.dtype):
        dtype = mixed_precision
    elif mixed_precision in (True, "fp16"):
        dtype = torch.float16
    elif mixed_precision == "bf16":
        dtype = torch.bfloat16
    elif mixed_precision in (False, None):
        return None
    else:
        raise FinetuneError(f"config key 'finetune.mixed_precision' is {mixed_precision!r}; expected true, false, "
                            "fp16 or bf16")
    if dtype == torch.float16 and not device.startswith("cuda"):
        return None
    return dtype


def precision_label(dtype: torch.dtype | None) -> str:
    """How training ran, for the checkpoint's ``compute`` record: fp32, fp16 autocast or bf16 autocast."""
    return {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[dtype]


def _autocast(device: str, mixed_precision):
    dtype = amp_dtype(mixed_precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


LOSS_SYNC_STEPS = 50  # step losses leave the device this often: a .item() per step would stall a GPU every batch


class StepLosses:
    """Step losses kept on the device and reported ``LOSS_SYNC_STEPS`` at a time (and at the end of the epoch),
    with their batch sizes and learning rates; the mean loss sums the same Python floats in the same order as
    a per-step ``loss.item()`` would, so the CPU training log is unchanged."""

    def __init__(self, on_step: Callable[[float, list[float]], None] | None, where: str):
        self.on_step, self.where = on_step, where
        self.pending: list[tuple[torch.Tensor, int, list[float]]] = []
        self.total, self.count, self.steps = 0.0, 0, 0

    def add(self, loss: torch.Tensor, n: int, lrs: list[float]) -> None:
        self.pending.append((loss.detach(), n, lrs))
        if len(self.pending) >= LOSS_SYNC_STEPS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([loss.float() for loss, _, _ in self.pending]).tolist()  # one device sync
        for (_, n, lrs), value in zip(self.pending, values, strict=True):
            if not math.isfinite(value):
                raise FinetuneError(f"training loss is {value} at {self.where}, batch {self.steps}; "
                                    "lower the learning rates")
            self.total += value * n
            self.count += n
            self.steps += 1
            if self.on_step is not None:
                self.on_step(value, lrs)
        self.pending = []

    def mean(self) -> float:
        self.flush()
        return self.total / max(self.count, 1)


def backward_and_step(loss: torch.Tensor, optimizer, scaler=None) -> bool:
    """Backpropagate ``loss`` and step ``optimizer``; whether the optimizer really stepped.

    GradScaler skips the step of a batch whose scaled gradients hold inf/NaN and then lowers its scale; a
    scale below the one before ``update()`` is that signal (growth only follows finite steps).
    """
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        optimizer.step()
        return True
    scaler.scale(loss).backward()
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before


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
    mixed_precision: bool | str | torch.dtype = False,
    desc: str = "train",
    resize: int | None = None,
) -> float:
    """One pass over ``data_loader``'s uint8 batches (torchvision references style); preprocessing on the
    device; ``scheduler`` steps after every optimizer step that was taken (not after a skipped one).

    ``on_step(loss, lrs)`` gets each batch's loss and the lrs it was trained with, in order, a few dozen steps
    late (:class:`StepLosses`). Returns the mean loss.
    """
    model.train()
    losses = StepLosses(on_step, f"{desc} epoch {epoch}")
    for images, targets in progress(data_loader, desc=f"{desc} epoch {epoch}", total=len(data_loader)):
        images, targets = to_device_batch(images, targets, device, resize)
        lrs = [float(group["lr"]) for group in optimizer.param_groups]
        with _autocast(device, mixed_precision):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        if backward_and_step(loss, optimizer, scaler) and scheduler is not None:
            scheduler.step()
        losses.add(loss, len(targets), lrs)
    return losses.mean()


@torch.inference_mode()
def evaluate(model, criterion, data_loader, device: str, mixed_precision: bool | str | torch.dtype = False,
             resize: int | None = None, layers: Sequence[str] = (), desc: str = "evaluate") -> dict[str, Any]:
    """Loss and accuracy over ``data_loader``'s uint8 batches (eval mode), with per-sample probabilities and
    losses; under autocast (:func:`amp_dtype`) when ``mixed_precision`` says so.

    ``layers`` (of :meth:`FinetunedResNet18.forward_with_layers`) are returned too, float32 (N, D) each, under
    ``"layers"``; asking for them leaves every other number as it is.
    """
    model.eval()
    probs, losses, labels = [], [], []
    kept: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    per_sample = nn.CrossEntropyLoss(reduction="none")
    for images, targets in progress(data_loader, desc=desc, total=len(data_loader)):
        images, targets = to_device_batch(images, targets, device, resize)
        with _autocast(device, mixed_precision):
            if layers:
                logits, outputs = model.forward_with_layers(images)
                for layer in layers:
                    kept[layer].append(outputs[layer].float().cpu())
            else:
                logits = model(images)
            logits = logits.float()
        losses.append(per_sample(logits, targets).cpu())
        probs.append(torch.softmax(logits, 1).cpu())
        labels.append(targets.cpu())
    probs_t, losses_t, labels_t = torch.cat(probs), torch.cat(losses), torch.cat(labels)
    result = {
        "loss": float(losses_t.mean()),
        "accuracy": float((probs_t.argmax(1) == labels_t).float().mean()),
        "probs": probs_t.numpy(),
        "losses": losses_t.numpy(),
        "labels": labels_t.numpy(),
    }
    if layers:
        result["layers"] = {layer: torch.cat(kept[layer]).numpy() for layer in layers}
    return result


class CollapseProbe:
    """Neural-collapse statistics (:mod:`embedscope.collapse`) of COLLAPSE_LAYERS at the end of an epoch.

    The class means come from a fixed seeded stratified subsample of the train split (``finetune.collapse_points``
    images, held as their own small uint8 copy), passed through the network in eval mode, so the statistics
    neither draw random numbers nor move BatchNorm's running statistics: training is the same with or without
    them. NC4 uses the epoch's test pass, which returns these layers beside the predictions.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int, device: str):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_classes = int(n_classes)
        self.loader = make_loader(np.ascontiguousarray(images), self.labels, batch_size, device=device)

    def measure(self, model: FinetunedResNet18, test: Mapping[str, Any], device: str, amp, resize,
                stage: int, epoch: int) -> list[dict[str, Any]]:
        """This epoch's rows (stage, epoch, layer, metric, value); ``test`` is :func:`evaluate`'s result of the
        test split with COLLAPSE_LAYERS."""
        start = time.perf_counter()
        train = evaluate(model, None, self.loader, device, amp, resize, layers=COLLAPSE_LAYERS, desc="collapse")
        test_predictions = test["probs"].argmax(1)
        weights = model.head.fc2.weight.detach().float().cpu().numpy()
        statistics = {
            layer: collapse_statistics(
                train["layers"][layer], self.labels, self.n_classes, test["layers"][layer], test_predictions,
                weights=weights if layer == "head_hidden" else None,
            )
            for layer in COLLAPSE_LAYERS
        }
        log.info("stage %d epoch %d: collapse statistics of %d train images in %.1f s (head_hidden NC1 %.4g)",
                 stage, epoch, len(self.labels), time.perf_counter() - start, statistics["head_hidden"]["nc1"])
        return collapse_rows(stage, epoch, statistics, len(self.labels), len(test_predictions))


def collapse_probe(data: ImageSplits, recipe: Mapping[str, Any], seed: int, device: str) -> CollapseProbe:
    """The probe on ``finetune.collapse_points`` train images (all of them when null), stratified, seeded."""
    labels = data.labels_of("train")
    n_classes = len(data.class_names)
    points = recipe["collapse_points"]
    if points is not None and points < n_classes:
        raise FinetuneError(f"config key 'finetune.collapse_points' is {points}; the collapse statistics need "
                            f"at least one train image of each of the {n_classes} classes")
    keep = stratified_subsample(labels, points, seed)
    return CollapseProbe(data.images["train"][keep], labels[keep], n_classes, max(recipe["batch_size"], 256),
                         device)


# ---------------------------------------------------------------------------------------------------- fit


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return int(seed) * 1000 + stage * 100 + epoch


def _start_stage(model, recipe: Mapping[str, Any], stage: int, total_steps: int, amp: bool,
                 resumed: Mapping[str, Any] | None):
    """A stage's fresh optimizer, one-cycle schedule and grad scaler (enabled by ``amp``: fp16 on CUDA only);
    with ``resumed``, their saved states."""
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
               amp: torch.dtype | None, resize: int | None, stage: int, epoch: int, seed: int,
               rows: list[dict[str, Any]], probe: CollapseProbe | None = None,
               collapse: list[dict[str, Any]] | None = None) -> None:
    """Train one epoch and evaluate; append its step rows and its epoch row to ``rows`` and, with ``probe``,
    its collapse statistics to ``collapse``."""
    torch.manual_seed(_epoch_seed(seed, stage, epoch))  # dropout masks: same on a resumed run
    train_loader.batch_sampler.set_seed(_epoch_seed(seed, stage, epoch))
    start = time.perf_counter()
    step = sum(1 for r in rows if r["kind"] == "step")

    def on_step(loss, lrs):
        nonlocal step
        rows.append({"kind": "step", "stage": stage, "epoch": epoch, "step": step,
                     **{f"lr_{g}": lr for g, lr in enumerate(lrs)}, "train_loss": loss})
        step += 1

    train_loss = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, scheduler, scaler,
                                 on_step, amp, desc=f"stage {stage}", resize=resize)
    result = evaluate(model, criterion, test_loader, device, amp, resize,
                      layers=COLLAPSE_LAYERS if probe is not None else ())
    if probe is not None:
        collapse.extend(probe.measure(model, result, device, amp, resize, stage, epoch))
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
    train_loader: torch.utils.data.DataLoader,
    test_loader: torch.utils.data.DataLoader,
    recipe: Mapping[str, Any],
    device: str = "cpu",
    seed: int = 0,
    resume_path: str | Path | None = None,
    digest: str = "",
    on_epoch_end: Callable[[int, int], None] | None = None,
    resize: int | None = None,
    probe: CollapseProbe | None = None,
) -> dict[str, Any]:
    """Run both stages on :func:`make_loader`'s loaders (the train one shuffled with a :class:`SeededBatchSampler`,
    reseeded every epoch); return the training-log ``rows``, the ``collapse`` rows (with ``probe``) and the last
    optimizer/scheduler/scaler states.

    ``on_epoch_end(stage, epoch)`` runs after the resume file of that epoch is written (tests raise from it).
    """
    recipe = recipe_from_config(recipe)
    model.to(device)
    amp = amp_dtype(recipe["mixed_precision"], device)
    criterion = nn.CrossEntropyLoss()
    state = load_resume(resume_path, digest)
    rows: list[dict[str, Any]] = [] if state is None else list(state["rows"])
    collapse: list[dict[str, Any]] = [] if state is None else list(state.get("collapse", []))
    done = (0, -1) if state is None else (int(state["stage"]), int(state["epoch"]))  # last finished
    if state is not None:
        model.load_state_dict(state["model"])
    last = {key: (state or {}).get(key) for key in ("optimizer", "scheduler", "scaler")}
    last["collapse"] = collapse
    last.update(stage=done[0], epoch=done[1])
    for stage, epochs in ((1, recipe["stage1_epochs"]), (2, recipe["stage2_epochs"])):
        if epochs == 0 or (stage, epochs - 1) <= done:
            continue
        resumed = state if state is not None and done[0] == stage else None
        optimizer, scheduler, scaler = _start_stage(model, recipe, stage, epochs * len(train_loader),
                                                    amp == torch.float16, resumed)
        for epoch in range(0 if resumed is None else done[1] + 1, epochs):
            _run_epoch(model, criterion, optimizer, scheduler, scaler, train_loader, test_loader, device, amp,
                       resize, stage, epoch, seed, rows, probe, collapse)
            last = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "stage": stage, "epoch": epoch, "collapse": collapse}
            if resume_path is not None:
                save_resume(resume_path, model, last, rows, digest, recipe["lr_groups"])
            if on_epoch_end is not None:
                on_epoch_end(stage, epoch)
    return {**last, "rows": rows}


# ---------------------------------------------------------------------------------------------------- entry point


class DataFingerprint:
    """SHA-256 of an image store's images, labels and split, fed the images chunk by chunk in store order: the
    same digest as hashing the whole arrays at once (headers first), without holding them."""

    def __init__(self, image_shape: Sequence[int]):
        self.digest = hashlib.sha256()
        self.digest.update(str((np.dtype(np.uint8), tuple(int(s) for s in image_shape))).encode())

    def add_images(self, chunk: np.ndarray) -> None:
        self.digest.update(np.ascontiguousarray(chunk).tobytes())

    def finish(self, labels: np.ndarray, split: np.ndarray) -> str:
        for array in (labels, split):
            array = np.ascontiguousarray(array)
            self.digest.update(str((array.dtype, array.shape)).encode())
            self.digest.update(array.tobytes())
        return self.digest.hexdigest()[:16]


def training_config(finetune, resnet18, seed, deterministic, device) -> dict[str, Any]:
    resnet18 = dict(resnet18 or {})
    return {
        "finetune": recipe_from_config(finetune),
        "resnet18": {"weights": resnet18.get("weights", "imagenet"), "resize": resnet18.get("resize")},
        "seed": int(seed),
        "deterministic": bool(deterministic),
        "device": device,
    }


def _read_data(data_path) -> tuple[ImageSplits, str]:
    """The store's train and test images (one uint8 array each, read chunk by chunk) and its fingerprint."""
    fingerprint = DataFingerprint(image_store_shape(data_path))
    data = read_image_splits(data_path, on_chunk=fingerprint.add_images)
    n_train, n_test = len(data.index["train"]), len(data.index["test"])
    if n_train < 2 or n_test == 0:
        raise FinetuneError(
            f"image store {data_path} needs >= 2 train and >= 1 test images, has {n_train} and {n_test}"
        )
    return data, fingerprint.finish(data.labels, data.split)


def _loaders(data: ImageSplits, batch_size: int, seed: int, device: str, workers: int):
    """Shuffled train batches (the last partial one dropped) and ordered test batches."""
    train = make_loader(data.images["train"], data.labels_of("train"), batch_size, shuffle=True, drop_last=True,
                        seed=seed, device=device, workers=workers)
    test = make_loader(data.images["test"], data.labels_of("test"), max(batch_size, 256), device=device,
                       workers=workers)
    return train, test


def finetune_resnet18(
    data_path: str | Path,
    model_path: str | Path,
    log_path: str | Path,
    predictions_path: str | Path,
    collapse_path: str | Path | None = None,
    *,
    finetune: Mapping[str, Any] | None = None,
    resnet18: Mapping[str, Any] | None = None,
    seed: int = 0,
    deterministic: bool = True,
    device: str = "cpu",
    resources: str | Path = "resources",
    resume_path: str | Path | None = None,
    on_epoch_end: Callable[[int, int], None] | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Train on the store's train split, evaluate on its test split; write checkpoint, log and predictions and,
    with ``collapse_path``, the neural-collapse statistics of every epoch (:class:`CollapseProbe`).

    ``workers``: loader processes on CUDA (the rule's threads); the CPU loads in the training process.
    """
    config = training_config(finetune, resnet18, seed, deterministic, device)
    recipe, weights = config["finetune"], config["resnet18"]["weights"]
    resize = config["resnet18"]["resize"]
    data, fingerprint = _read_data(data_path)
    train_loader, test_loader = _loaders(data, recipe["batch_size"], seed, device, workers)
    digest = config_digest({**config, "data": fingerprint})
    resume_path = default_resume_path(model_path) if resume_path is None else Path(resume_path)
    probe = collapse_probe(data, recipe, seed, device) if collapse_path is not None else None
    model = FinetunedResNet18(len(data.class_names), weights, resources, seed=seed)
    log.info(
        "fine-tuning ResNet-18 (%s) on %s: %d train / %d test images, %d classes, device %s, %d loader workers",
        weights,
        data_path,
        len(data.index["train"]),
        len(data.index["test"]),
        len(data.class_names),
        device,
        train_loader.num_workers,
    )
    start = time.perf_counter()
    state = fit(model, train_loader, test_loader, recipe, device, seed, resume_path, digest, on_epoch_end, resize,
                probe)
    seconds = time.perf_counter() - start
    # The final pass runs in fp32 whatever the training precision: predictions.csv must hold what the softmax
    # layer of the fine-tuned feature store (always an fp32 pass) holds, argmax ties included.
    result = evaluate(model, nn.CrossEntropyLoss(), test_loader, device, False, resize)
    log.info(
        "test accuracy %.4f, test loss %.4f, training %.1f s", result["accuracy"], result["loss"], seconds
    )
    compute = compute_environment(device, precision_label(amp_dtype(recipe["mixed_precision"], device)))
    save_checkpoint(model_path, model, state, data.class_names, config, digest, result, seconds, compute)
    write_training_log(log_path, state["rows"], recipe["lr_groups"])
    write_predictions(predictions_path, data.index["test"], result["labels"], result["probs"], result["losses"])
    if collapse_path is not None:
        write_collapse(collapse_path, state["collapse"])
    remove_resume(resume_path)
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "train_seconds": seconds}
