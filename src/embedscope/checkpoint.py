"""The fine-tuned ResNet-18's checkpoint and its training resume file: the one writer and reader of both.

``results/models/{dataset}/resnet18_finetuned.pt`` (a declared output) holds the trained weights, the class
names, the training config and its digest, and the final optimizer/scheduler/scaler states. The resume file
(``resume/resnet18_finetuned.resume.pt`` beside it, never among the declared outputs, so Snakemake neither
deletes it on failure nor mistakes it for a result) holds the state after the last finished epoch.

Both are written with ``torch.save`` through :func:`embedscope.artifacts.atomic_write` and read with
``torch.load(weights_only=True)``: they hold tensors and plain Python values only, never pickled code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedscope.artifacts import atomic_write
from embedscope.resnet import FinetunedResNet18, FinetuneError
from embedscope.store import package_versions

log = logging.getLogger(__name__)


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples: optimizer and scaler states) detached and moved to
    the CPU, so a file written by a CUDA run loads with ``weights_only=True`` on a machine without a GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


def _save(obj: Mapping[str, Any], path: str | Path) -> None:
    with atomic_write(path, suffix=".pt") as tmp:
        torch.save(on_cpu(dict(obj)), tmp)


# ---- the checkpoint ------------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    training: Mapping[str, Any],
    class_names: Sequence[str],
    config: Mapping[str, Any],
    digest: str,
    result: Mapping[str, Any],
    train_seconds: float,
    compute: Mapping[str, Any] | None = None,
) -> None:
    """The trained model with what made it: ``training`` holds the last optimizer/scheduler/scaler states and
    (stage, epoch); ``result`` the final test accuracy and loss; ``compute`` where and in what precision it was
    trained (:func:`embedscope.runtime.compute_environment`: strings, numbers, booleans and None only, so
    ``weights_only=True`` still loads it)."""
    checkpoint = {
        "state_dict": model.state_dict(),
        **{key: training[key] for key in ("optimizer", "scheduler", "scaler")},
        "class_names": list(class_names),
        "n_classes": len(class_names),
        "config": dict(config),
        "config_digest": digest,
        "stage": training["stage"],
        "epoch": training["epoch"],
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "train_seconds": train_seconds,
        "package_versions": package_versions("torch", "torchvision"),
        "compute": dict(compute or {}),
    }
    _save(checkpoint, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents (read with weights_only=True); it must hold a state_dict and class names."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"checkpoint {path} does not exist")
    try:
        # mapped, not read: the optimizer state a checkpoint also holds is never paged in by a reader
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise FinetuneError(
            f"checkpoint {path} could not be read with torch.load(weights_only=True): {exc}"
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "class_names" not in checkpoint:
        raise FinetuneError(
            f"checkpoint {path} is not a fine-tuned ResNet-18 checkpoint (no state_dict/class_names)"
        )
    return checkpoint


def load_finetuned(path: str | Path, device: str = "cpu") -> tuple[FinetunedResNet18, dict[str, Any]]:
    """The fine-tuned model (eval mode, on ``device``) and its checkpoint (read with weights_only=True)."""
    checkpoint = read_checkpoint(path)
    model = FinetunedResNet18(len(checkpoint["class_names"]), "random")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise FinetuneError(f"checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    return model.to(device).eval(), checkpoint


# ---- the resume file -----------------------------------------------------------------------------------------


def default_resume_path(model_path: str | Path) -> Path:
    """results/models/{dataset}/resume/<model stem>.resume.pt: beside, never among, the declared outputs."""
    model_path = Path(model_path)
    return model_path.parent / "resume" / f"{model_path.stem}.resume.pt"


def save_resume(
    path: str | Path,
    model: nn.Module,
    training: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    digest: str,
    n_groups: int,
) -> None:
    """The state after a finished epoch: model weights, ``training`` (optimizer/scheduler/scaler states,
    stage, epoch), the training-log rows so far and the digest of the settings they belong to."""
    _save(
        {"model": model.state_dict(), **training, "rows": list(rows), "config_digest": digest, "n_groups": n_groups},
        path,
    )


def load_resume(path: str | Path | None, digest: str) -> dict[str, Any] | None:
    """The resume file's state if it exists, is readable and belongs to ``digest``; otherwise None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("resume file %s is unreadable (%s); starting from scratch", path, exc)
        return None
    if state.get("config_digest") != digest:
        log.info(
            "resume file %s belongs to other settings (digest %s != %s); starting from scratch",
            path,
            state.get("config_digest"),
            digest,
        )
        return None
    log.info("resuming from %s: stage %s epoch %s finished", path, state["stage"], state["epoch"])
    return state


def remove_resume(path: str | Path) -> None:
    """Delete the resume file once training has finished, and its folder if nothing else is left in it."""
    path = Path(path)
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
