"""Fine-tune ResNet-18 as the report did (fastai v1 ``cnn_learner`` + ``fit_one_cycle``), in plain PyTorch.

Model: the ResNet-18 body (``resnet.body_of``) + fastai's head (concat pooling -> BN/Dropout/Linear blocks).
Recipe: stage 1 trains the head with the body frozen except its BatchNorm layers; stage 2 unfreezes everything
with discriminative learning rates over three layer groups. Each stage is one one-cycle schedule (torch's
``OneCycleLR``: cosine warm-up for ``pct_start`` of the steps, cosine annealing after, Adam beta1 cycled
between ``moms``) on a fresh AdamW optimizer (decoupled weight decay, fastai's ``true_wd``).

After every finished epoch a resume file is written next to (never among) the declared outputs; a rerun whose
config digest matches continues from the next epoch, and the file is removed once training has finished.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedscope.layers import BODY_LAYERS, FINETUNED_LAYERS
from embedscope.resnet import body_of, build_resnet18, preprocess
from embedscope.runtime import progress
from embedscope.store import FeatureStoreWriter, config_digest, package_versions, read_image_store

log = logging.getLogger(__name__)

EXTRACTOR = "resnet18_finetuned"
BODY_CHANNELS_OUT = 512

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
GROUP_NAMES = {1: ("all",), 2: ("body", "head"), 3: ("body_front", "body_back", "head")}
BODY_FRONT = BODY_LAYERS[:6]  # conv1 .. layer2 (fastai's resnet split at layer3)


class FinetuneError(RuntimeError):
    """A fine-tuning setting, input or checkpoint is unusable."""


class TrainingInterrupted(RuntimeError):
    """Raised by an ``on_epoch_end`` hook to stop training (tests use it to simulate a crash)."""


# ---------------------------------------------------------------------------------------------------- model


class ConcatPool2d(nn.Module):
    """Adaptive average pooling || adaptive max pooling along channels: (N, C, H, W) -> (N, 2C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [nn.functional.adaptive_avg_pool2d(x, 1), nn.functional.adaptive_max_pool2d(x, 1)], 1
        )


def make_head(n_classes: int, in_channels: int = BODY_CHANNELS_OUT, hidden: int = 512) -> nn.Sequential:
    """fastai v1's ``create_head``: indices 0..8 are the report's ``linear[1][i]``."""
    if int(n_classes) < 2:
        raise FinetuneError(f"fine-tuning needs at least 2 classes, got {n_classes}")
    return nn.Sequential(
        OrderedDict(
            pool=ConcatPool2d(),
            flatten=nn.Flatten(),
            bn1=nn.BatchNorm1d(2 * in_channels),
            drop1=nn.Dropout(0.25),
            fc1=nn.Linear(2 * in_channels, hidden),
            relu=nn.ReLU(inplace=True),
            bn2=nn.BatchNorm1d(hidden),
            drop2=nn.Dropout(0.5),
            fc2=nn.Linear(hidden, int(n_classes)),
        )
    )


class FinetunedResNet18(nn.Module):
    """ResNet-18 body (children named BODY_LAYERS) + the report's head."""

    def __init__(
        self, n_classes: int, weights: str = "random", resources: str | Path = "resources", seed: int = 0
    ):
        super().__init__()
        self.body = body_of(build_resnet18(weights, resources, seed=seed))
        self.head = make_head(n_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            for module in self.head.modules():  # fastai's apply_init(head, kaiming_normal_)
                if isinstance(module, nn.Linear):
                    nn.init.kaiming_normal_(module.weight)
                    nn.init.zeros_(module.bias)

    @property
    def n_classes(self) -> int:
        return self.head.fc2.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def embeddings(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four stored layers (FINETUNED_LAYERS) of one batch; call in eval mode."""
        h = self.head
        fmap = self.body(x)
        pooled = h.drop1(h.bn1(h.flatten(h.pool(fmap))))
        hidden = h.drop2(h.bn2(h.relu(h.fc1(pooled))))
        logits = h.fc2(hidden)
        return {
            "layer4": fmap.float().mean(dim=(2, 3)),
            "head_pool": pooled.float(),
            "head_hidden": hidden.float(),
            "softmax": torch.softmax(logits.float(), dim=1),
        }


def layer_groups(model: FinetunedResNet18, n_groups: int = 3) -> list[list[nn.Parameter]]:
    """Parameters of the layer groups (fastai's resnet split): body front / body back / head."""
    if n_groups not in GROUP_NAMES:
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
    if recipe["lr_groups"] not in GROUP_NAMES:
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


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return int(seed) * 1000 + stage * 100 + epoch


def _load_resume(resume_path: Path | None, digest: str) -> dict[str, Any] | None:
    if resume_path is None or not resume_path.is_file():
        return None
    try:
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("resume file %s is unreadable (%s); starting from scratch", resume_path, exc)
        return None
    if state.get("config_digest") != digest:
        log.info(
            "resume file %s belongs to other settings (digest %s != %s); starting from scratch",
            resume_path,
            state.get("config_digest"),
            digest,
        )
        return None
    log.info("resuming from %s: stage %s epoch %s finished", resume_path, state["stage"], state["epoch"])
    return state


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
    resume_path = Path(resume_path) if resume_path is not None else None
    model.to(device)
    amp = bool(recipe["mixed_precision"]) and device.startswith("cuda")
    criterion = nn.CrossEntropyLoss()
    rows: list[dict[str, Any]] = []
    n_groups = recipe["lr_groups"]
    state = _load_resume(resume_path, digest)
    done = (0, -1)  # (stage, epoch) last finished
    if state is not None:
        model.load_state_dict(state["model"])
        rows = list(state["rows"])
        done = (int(state["stage"]), int(state["epoch"]))
    step = sum(1 for r in rows if r["kind"] == "step")
    last = {key: (state or {}).get(key) for key in ("optimizer", "scheduler", "scaler")}
    last.update(stage=done[0], epoch=done[1])
    for stage, epochs in ((1, recipe["stage1_epochs"]), (2, recipe["stage2_epochs"])):
        if epochs == 0 or (stage, epochs - 1) <= done:
            continue
        freeze_body(model, frozen=stage == 1)
        max_lrs = stage_lrs(recipe, stage)
        optimizer = make_optimizer(model, recipe, max_lrs)
        scheduler = one_cycle(optimizer, recipe, max_lrs, epochs * len(train_loader))
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        first = 0
        if state is not None and done[0] == stage:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            first = done[1] + 1
        for epoch in range(first, epochs):
            torch.manual_seed(_epoch_seed(seed, stage, epoch))  # dropout masks: same on a resumed run
            train_loader.set_seed(_epoch_seed(seed, stage, epoch))
            start = time.perf_counter()

            def on_step(loss, lrs, stage=stage, epoch=epoch):
                nonlocal step
                rows.append(
                    {
                        "kind": "step",
                        "stage": stage,
                        "epoch": epoch,
                        "step": step,
                        **{f"lr_{g}": lr for g, lr in enumerate(lrs)},
                        "train_loss": loss,
                    }
                )
                step += 1

            train_loss = train_one_epoch(
                model,
                criterion,
                optimizer,
                train_loader,
                device,
                epoch,
                scheduler,
                scaler,
                on_step,
                amp,
                desc=f"stage {stage}",
            )
            result = evaluate(model, criterion, test_loader, device, amp)
            rows.append(
                {
                    "kind": "epoch",
                    "stage": stage,
                    "epoch": epoch,
                    "step": step - 1,
                    "train_loss": train_loss,
                    "test_loss": result["loss"],
                    "test_accuracy": result["accuracy"],
                }
            )
            log.info(
                "stage %d epoch %d: train_loss %.4f test_loss %.4f test_accuracy %.4f (%.1f s)",
                stage,
                epoch,
                train_loss,
                result["loss"],
                result["accuracy"],
                time.perf_counter() - start,
            )
            last = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "stage": stage,
                "epoch": epoch,
            }
            if resume_path is not None:
                _atomic_save(
                    {
                        "model": model.state_dict(),
                        **last,
                        "rows": rows,
                        "config_digest": digest,
                        "n_groups": n_groups,
                    },
                    resume_path,
                )
            if on_epoch_end is not None:
                on_epoch_end(stage, epoch)
    return {**last, "rows": rows}


# ---------------------------------------------------------------------------------------------------- files


def log_columns(n_groups: int) -> list[str]:
    return [
        "kind",
        "stage",
        "epoch",
        "step",
        *[f"lr_{g}" for g in range(n_groups)],
        "train_loss",
        "test_loss",
        "test_accuracy",
    ]


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_predictions(path: str | Path, index: np.ndarray, result: Mapping[str, Any]) -> None:
    probs = result["probs"]
    pred = probs.argmax(1)
    columns = ["index", "label", "pred", "prob", "loss", *[f"prob_{c}" for c in range(probs.shape[1])]]
    rows = [
        {
            "index": int(i),
            "label": int(y),
            "pred": int(p),
            "prob": float(pr[p]),
            "loss": float(loss),
            **{f"prob_{c}": float(v) for c, v in enumerate(pr)},
        }
        for i, y, p, pr, loss in zip(index, result["labels"], pred, probs, result["losses"], strict=True)
    ]
    _write_csv(Path(path), columns, rows)


def default_resume_path(model_path: str | Path) -> Path:
    """results/models/{dataset}/resume/<model stem>.resume.pt: beside, never among, the declared outputs."""
    model_path = Path(model_path)
    return model_path.parent / "resume" / f"{model_path.stem}.resume.pt"


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
    recipe = config["finetune"]
    data = read_image_store(data_path)
    train_images, train_labels, _ = data.subset("train")
    test_images, test_labels, test_index = data.subset("test")
    if len(train_labels) < 2 or len(test_labels) == 0:
        raise FinetuneError(
            f"image store {data_path} needs >= 2 train and >= 1 test images, has "
            f"{len(train_labels)} and {len(test_labels)}"
        )
    digest = config_digest({**config, "data": _data_fingerprint(data.images, data.labels, data.split)})
    resume_path = default_resume_path(model_path) if resume_path is None else Path(resume_path)
    resize = config["resnet18"]["resize"]
    model = FinetunedResNet18(len(data.class_names), config["resnet18"]["weights"], resources, seed=seed)
    train_loader = BatchLoader(
        train_images,
        train_labels,
        recipe["batch_size"],
        shuffle=True,
        resize=resize,
        drop_last=True,
        seed=seed,
    )
    test_loader = BatchLoader(test_images, test_labels, max(recipe["batch_size"], 256), resize=resize)
    log.info(
        "fine-tuning ResNet-18 (%s) on %s: %d train / %d test images, %d classes, device %s",
        config["resnet18"]["weights"],
        data_path,
        len(train_labels),
        len(test_labels),
        len(data.class_names),
        device,
    )
    start = time.perf_counter()
    state = fit(model, train_loader, test_loader, recipe, device, seed, resume_path, digest, on_epoch_end)
    seconds = time.perf_counter() - start
    result = evaluate(
        model,
        nn.CrossEntropyLoss(),
        test_loader,
        device,
        bool(recipe["mixed_precision"]) and device.startswith("cuda"),
    )
    log.info(
        "test accuracy %.4f, test loss %.4f, training %.1f s", result["accuracy"], result["loss"], seconds
    )
    checkpoint = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": state["optimizer"],
        "scheduler": state["scheduler"],
        "scaler": state["scaler"],
        "class_names": list(data.class_names),
        "n_classes": len(data.class_names),
        "config": config,
        "config_digest": digest,
        "stage": state["stage"],
        "epoch": state["epoch"],
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "train_seconds": seconds,
        "package_versions": package_versions("torch", "torchvision"),
    }
    _atomic_save(checkpoint, Path(model_path))
    _write_csv(Path(log_path), log_columns(recipe["lr_groups"]), state["rows"])
    write_predictions(predictions_path, test_index, result)
    resume_path.unlink(missing_ok=True)
    if resume_path.parent.is_dir() and not any(resume_path.parent.iterdir()):
        resume_path.parent.rmdir()
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "train_seconds": seconds}


def load_finetuned(path: str | Path, device: str = "cpu") -> tuple[FinetunedResNet18, dict[str, Any]]:
    """The fine-tuned model (eval mode, on ``device``) and its checkpoint (read with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FinetuneError(
            f"checkpoint {path} could not be read with torch.load(weights_only=True): {exc}"
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "class_names" not in checkpoint:
        raise FinetuneError(
            f"checkpoint {path} is not a fine-tuned ResNet-18 checkpoint (no state_dict/class_names)"
        )
    model = FinetunedResNet18(len(checkpoint["class_names"]), "random")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise FinetuneError(f"checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    return model.to(device).eval(), checkpoint


# ------------------------------------------------------------------------------------------------- features


def _shapes_before_pooling(model: FinetunedResNet18, image_shape: Sequence[int], resize: int | None) -> dict:
    h, w = (resize, resize) if resize else tuple(image_shape[:2])
    with torch.no_grad():
        fmap = model.body.cpu()(torch.zeros(1, 3, h, w))
    return {
        "layer4": list(fmap.shape[1:]),
        "head_pool": [2 * BODY_CHANNELS_OUT],
        "head_hidden": [model.head.fc1.out_features],
        "softmax": [model.n_classes],
    }


def extract_finetuned_features(
    data_path: str | Path,
    model_path: str | Path,
    out_path: str | Path,
    *,
    batch_size: int = 256,
    device: str = "cpu",
) -> None:
    """Write FINETUNED_LAYERS of every sample (train and test, store order) to a feature store."""
    data = read_image_store(data_path)
    model, checkpoint = load_finetuned(model_path, "cpu")
    if list(checkpoint["class_names"]) != list(data.class_names):
        raise FinetuneError(
            f"checkpoint {model_path} was trained on classes {checkpoint['class_names']}, but "
            f"{data_path} has {data.class_names}"
        )
    config = checkpoint["config"]
    resize = config["resnet18"]["resize"]
    shapes = _shapes_before_pooling(model, data.images.shape[1:], resize)
    model.to(device).eval()
    pooling = {
        "layer4": "global average",
        "head_pool": "concat (average || max), BatchNorm1d",
        "head_hidden": "none",
        "softmax": "none",
    }
    digest = config_digest({"model": checkpoint["config_digest"], "layers": list(FINETUNED_LAYERS)})
    # Same attribute names as the features stage (embedscope.features); store attrs are copied into each layer.
    attrs = {
        "extractor": EXTRACTOR,
        "weights": config["resnet18"]["weights"],
        "settings": {"resize": resize, "finetune": config["finetune"]},
        "image_store": str(data_path),
        "image_shape": list(data.images.shape[1:]),
        "class_names": list(data.class_names),
        "model": str(model_path),
        "model_config_digest": checkpoint["config_digest"],
        "model_test_accuracy": checkpoint.get("test_accuracy"),
        "config_digest": digest,
        "package_versions": package_versions("torch", "torchvision"),
        "seed": config["seed"],
    }
    loader = BatchLoader(data.images, data.labels, batch_size, resize=resize)
    with FeatureStoreWriter(out_path, data.labels, data.split, np.arange(len(data.labels)), attrs) as writer:
        start = 0
        with torch.inference_mode():
            for images, _ in progress(loader, desc="extract resnet18_finetuned", total=len(loader)):
                outputs = model.embeddings(images.to(device))
                for layer in FINETUNED_LAYERS:
                    layer_attrs = {"shape_before_pooling": shapes[layer], "pooling": pooling[layer]}
                    writer.write(layer, start, outputs[layer].cpu().numpy(), layer_attrs=layer_attrs)
                start += len(images)
    log.info("wrote %s: %d samples, layers %s", out_path, start, ", ".join(FINETUNED_LAYERS))
