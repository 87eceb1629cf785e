"""Feature extraction: image store -> per-extractor feature store, one group per layer.

Three extractors (DESIGN.md, "Layers"):

- ``scattering``: kymatio's Scattering2D (J, L from config) on each channel of ``images / 255``, all orders,
  flattened: (C, 1 + J*L + L*L*J*(J-1)/2, H/2^J, W/2^J) -> C * 3,969 values for 28x28 with J=2, L=8.
- ``resnet18`` (frozen): forward hooks on the eight body children (conv1 ... layer4), each output globally
  average-pooled to its channel count (64, 64, 64, 64, 64, 128, 256, 512).
- ``resnet18_finetuned``: the fine-tuned checkpoint's ``embeddings`` (layer4, head_pool, head_hidden, softmax).

Every extractor has the same shape: ``name``, ``layers``, ``pooling`` (layer -> how it was pooled), ``device``,
``weights``, ``settings``, ``shapes`` (layer -> shape before pooling), ``prepare(uint8 NHWC batch)``,
``__call__(prepared batch) -> {layer: (n, D) tensor}`` and ``store_attrs(seed)`` (the store's attributes).
One generic loop (:func:`run_extraction`) reads the image store batch by batch from the Zarr array (so memory
does not grow with N), runs an extractor under ``torch.inference_mode`` and writes whole chunks through
:class:`embedscope.store.FeatureStoreWriter` (atomic, ``complete`` last).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedscope.download import file_sha256
from embedscope.layers import BODY_LAYERS, EXTRACTOR_LAYERS, FINETUNED_LAYERS
from embedscope.runtime import compute_environment
from embedscope.store import (
    FeatureStoreWriter,
    StoreError,
    config_digest,
    open_complete,
    package_versions,
    rows_per_chunk,
)

log = logging.getLogger(__name__)

FEATURE_EXTRACTORS = tuple(EXTRACTOR_LAYERS)
SHARD_ATTR = "shard"  # a shard store's {shard, of, rows}; the gathered store has none


# ---- extractors ------------------------------------------------------------------------------------


class FrozenExtractor:
    """What the scattering and frozen ResNet-18 extractors share: their store attributes follow from their
    settings and the job's seed."""

    name: str
    weights: str
    settings: dict[str, Any]

    def store_attrs(self, seed: int) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "weights": self.weights,
            "settings": dict(self.settings),
            "config_digest": config_digest({"extractor": self.name, **self.settings}),
            "package_versions": package_versions("torch", "torchvision", "kymatio"),
            "seed": seed,
        }


class ScatteringExtractor(FrozenExtractor):
    """kymatio Scattering2D applied to every channel of ``uint8 / 255``; one layer ``scattering``."""

    name = "scattering"
    layers = EXTRACTOR_LAYERS["scattering"]
    pooling = {"scattering": "none (all orders, flattened)"}

    def __init__(self, J: int, L: int, image_shape: tuple[int, int], device: str = "cpu", max_order: int = 2):
        # kymatio 0.3.0's `kymatio.torch` imports its 3-D frontend, which breaks on scipy >= 1.17 (NOTES.md).
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

        height, width = (int(s) for s in image_shape)
        if min(height, width) < 2**J:
            raise ValueError(f"config key 'scattering.J' is {J}: images of {height}x{width} need 2^J <= their side")
        self.J, self.L, self.max_order = int(J), int(L), int(max_order)
        self.device = device
        self.module = ScatteringTorch2D(J=self.J, shape=(height, width), L=self.L, max_order=self.max_order)
        self.module = self.module.to(device)
        self.weights = "none"
        self.settings = {"J": self.J, "L": self.L, "max_order": self.max_order, "input": "uint8/255"}
        self.shapes: dict[str, list[int]] = {}

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N,H,W,C) -> float32 (N,C,H,W) in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return x.float().div_(255.0).contiguous()

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(x.to(self.device))  # (N, C, K, H', W')
        self.shapes["scattering"] = list(out.shape[1:])
        return {"scattering": out.reshape(len(out), -1)}


class ResNetExtractor(FrozenExtractor):
    """A frozen ResNet-18; forward hooks on the body children, each output globally average-pooled."""

    name = "resnet18"
    layers = BODY_LAYERS
    pooling = dict.fromkeys(BODY_LAYERS, "global average")

    def __init__(self, model: nn.Module, resize: int | None = None, device: str = "cpu",
                 weights: str = "random", weights_sha256: str | None = None, name: str = "resnet18"):
        from embedscope.resnet import body_of

        self.name = name
        self.model = model.eval().requires_grad_(False).to(device)
        self.body = body_of(self.model)
        self.resize = resize
        self.device = device
        self.weights = weights
        self.settings = {"weights": weights, "weights_sha256": weights_sha256, "resize": resize,
                         "normalisation": "imagenet"}
        self.shapes: dict[str, list[int]] = {}
        self._pooled: dict[str, torch.Tensor] = {}
        self._handles = [getattr(self.model, layer).register_forward_hook(self._hook(layer)) for layer in self.layers]

    def _hook(self, layer: str):
        def hook(module, inputs, output):
            # Pool at once: torchvision's ReLU is in-place and would overwrite bn1's output afterwards.
            self.shapes[layer] = list(output.shape[1:])
            self._pooled[layer] = output.mean(dim=(2, 3))

        return hook

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        from embedscope.resnet import preprocess

        return preprocess(images, self.resize)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._pooled = {}
        self.body(x.to(self.device))  # the head (avgpool, fc) is not needed
        return {layer: self._pooled[layer] for layer in self.layers}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class FinetunedExtractor:
    """The fine-tuned ResNet-18 of a checkpoint: its ``embeddings`` (FINETUNED_LAYERS) of every image.

    Weights, resize and seed are the checkpoint's (what shaped the model), not the current config's.
    """

    name = "resnet18_finetuned"
    layers = FINETUNED_LAYERS
    pooling = {
        "layer4": "global average",
        "head_pool": "concat (average || max), BatchNorm1d",
        "head_hidden": "none",
        "softmax": "none",
    }

    def __init__(self, model, checkpoint: Mapping[str, Any], model_path: str | Path,
                 image_shape: tuple[int, ...], device: str = "cpu"):
        config = checkpoint["config"]
        self.model = model.eval().requires_grad_(False).to(device)
        self.checkpoint = checkpoint
        self.model_path = model_path
        self.resize = config["resnet18"]["resize"]
        self.device = device
        self.weights = config["resnet18"]["weights"]
        self.settings = {"resize": self.resize, "finetune": config["finetune"]}
        height, width = (self.resize, self.resize) if self.resize else tuple(image_shape[:2])
        self.shapes = self.model.embedding_shapes((height, width))

    @classmethod
    def from_checkpoint(cls, model_path: str | Path, image_store: str | Path, class_names, image_shape,
                        device: str = "cpu") -> FinetunedExtractor:
        """The checkpoint's model, refused if it was trained on other classes than ``image_store`` holds."""
        from embedscope.checkpoint import load_finetuned
        from embedscope.resnet import FinetuneError

        model, checkpoint = load_finetuned(model_path, "cpu")
        if list(checkpoint["class_names"]) != list(class_names):
            raise FinetuneError(
                f"checkpoint {model_path} was trained on classes {checkpoint['class_names']}, but "
                f"{image_store} has {list(class_names)}"
            )
        return cls(model, checkpoint, model_path, image_shape, device)

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        from embedscope.resnet import preprocess

        return preprocess(images, self.resize)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.embeddings(x.to(self.device))

    def store_attrs(self, seed: int) -> dict[str, Any]:
        """``seed`` is not used: the store records the seed the checkpoint was trained with."""
        checkpoint = self.checkpoint
        return {
            "extractor": self.name,
            "weights": self.weights,
            "settings": dict(self.settings),
            "model": str(self.model_path),
            "model_config_digest": checkpoint["config_digest"],
            "model_test_accuracy": checkpoint.get("test_accuracy"),
            "model_compute": checkpoint.get("compute"),  # where the model was trained (None: not recorded)
            "config_digest": config_digest({"model": checkpoint["config_digest"], "layers": list(self.layers)}),
            "package_versions": package_versions("torch", "torchvision"),
            "seed": checkpoint["config"]["seed"],
        }


def build_extractor(
    extractor: str,
    settings: Mapping[str, Any],
    image_store: str | Path,
    device: str = "cpu",
    resources: str | Path = "resources",
    seed: int = 0,
    model_path: str | Path | None = None,
):
    """The extractor named ``extractor`` for the images of ``image_store``.

    ``settings`` is its config section (``scattering`` or ``resnet18``); ``resnet18_finetuned`` takes its
    settings from the checkpoint ``model_path`` instead.
    """
    if extractor not in FEATURE_EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; expected one of {list(FEATURE_EXTRACTORS)}")
    group = open_complete(image_store)
    image_shape = tuple(int(s) for s in group["images"].shape[1:])
    if extractor == "scattering":
        return ScatteringExtractor(settings.get("J", 2), settings.get("L", 8), image_shape[:2], device)
    if extractor == "resnet18":
        from embedscope.resnet import build_resnet18, weights_file

        weights = str(settings.get("weights", "imagenet"))
        model = build_resnet18(weights, resources=resources, seed=seed)
        path = weights_file(weights, resources)
        sha = file_sha256(path) if path is not None else None
        label = weights if weights in ("imagenet", "random") else str(path)
        return ResNetExtractor(model, settings.get("resize"), device, weights=label, weights_sha256=sha)
    if model_path is None:
        raise ValueError("the resnet18_finetuned extractor needs its checkpoint (model_path)")
    class_names = list(group.attrs.get("class_names", []))
    return FinetunedExtractor.from_checkpoint(model_path, image_store, class_names, image_shape, device)


def finetuned_body_extractor(model_path: str | Path, image_store: str | Path, device: str = "cpu") -> ResNetExtractor:
    """The fine-tuned checkpoint's body (conv1 ... layer4) as the frozen ``resnet18`` extractor runs a body: the
    same hooks, each child's output globally average-pooled, in eval mode and fp32, at the checkpoint's resize.

    Built through :func:`build_extractor`, so a checkpoint trained on other classes than ``image_store`` holds is
    refused as the fine-tuned extractor refuses it."""
    finetuned = build_extractor("resnet18_finetuned", {}, image_store, device, model_path=model_path)
    return ResNetExtractor(finetuned.model.body, finetuned.resize, device, weights=finetuned.weights,
                           name=finetuned.name)


def extract_sample(image_store: str | Path, extractor, samples: Sequence[int] | np.ndarray,
                   batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every layer of ``extractor`` (float32, len(samples) x D) for the images ``samples`` (image-store indices), in
    that order: read and run ``batch_size`` images at a time under ``torch.inference_mode``, as
    :func:`run_extraction` runs a whole store, so only those images' rows are ever held."""
    from embedscope.store import read_image_rows

    samples = np.asarray(samples, dtype=np.int64)
    if not len(samples) or int(batch_size) < 1:
        raise ValueError(f"need at least one sample and a batch size >= 1; got {len(samples)} and {batch_size}")
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, len(samples), int(batch_size)):
            x = extractor.prepare(read_image_rows(image_store, samples[start : start + int(batch_size)]))
            for layer, values in extractor(x).items():
                parts.setdefault(layer, []).append(values.float().cpu().numpy())
    return {layer: np.concatenate(blocks) for layer, blocks in parts.items()}


# ---- the batch loop -------------------------------------------------------------------------------


class _ChunkedLayers:
    """Buffers each layer's rows until a whole Zarr chunk is ready, then writes it (no read-modify-write)."""

    def __init__(self, writer: FeatureStoreWriter):
        self.writer = writer
        self.parts: dict[str, list[np.ndarray]] = {}
        self.start: dict[str, int] = {}
        self.rows: dict[str, int] = {}

    def add(self, layer: str, start: int, values: np.ndarray, layer_attrs: Mapping[str, Any]) -> None:
        if layer not in self.parts:
            dim = int(values.shape[1])
            self.writer.add_layer(layer, dim, layer_attrs)  # layers appear in extractor order
            self.parts[layer], self.start[layer] = [], start
            self.rows[layer] = rows_per_chunk(dim * 4)
        self.parts[layer].append(values)
        buffered = sum(len(p) for p in self.parts[layer])
        if buffered >= self.rows[layer]:
            self._flush(layer, final=False)

    def _flush(self, layer: str, final: bool) -> None:
        parts = self.parts[layer]
        if not parts:
            return
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        n = len(block) if final else (len(block) // self.rows[layer]) * self.rows[layer]
        self.writer.write(layer, self.start[layer], block[:n])
        self.start[layer] += n
        self.parts[layer] = [block[n:]] if n < len(block) else []

    def close(self) -> None:
        for layer in self.parts:
            self._flush(layer, final=True)


def shard_rows(n: int, batch_size: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``shard`` (0-based) of ``shards`` over ``n`` images: whole batches each
    (the last shard takes the rest, trailing shards may be empty), so that every shard runs exactly the batches
    an unsharded run would and writes the same numbers."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
    per_shard = math.ceil(math.ceil(n / batch_size) / shards) * batch_size
    return min(n, shard * per_shard), min(n, (shard + 1) * per_shard)


def _extract_rows(images, start: int, stop: int, batch_size: int, extractor, layers: _ChunkedLayers) -> None:
    """Rows ``start:stop`` of the Zarr ``images`` through ``extractor``, in batches of ``batch_size`` counted
    from ``start``; read in blocks that cover whole image chunks and a whole number of batches."""
    from embedscope.runtime import progress

    read_rows = batch_size * max(1, math.ceil(int(images.chunks[0]) / batch_size))
    with torch.inference_mode(), progress(total=stop - start, unit="img", desc=extractor.name) as bar:
        for block_start in range(start, stop, read_rows):
            block = images[block_start : min(stop, block_start + read_rows)]
            for offset in range(0, len(block), batch_size):
                x = extractor.prepare(block[offset : offset + batch_size])
                for layer, values in extractor(x).items():
                    layer_attrs = {"shape_before_pooling": extractor.shapes[layer],
                                   "pooling": extractor.pooling[layer]}
                    layers.add(layer, block_start - start + offset, values.float().cpu().numpy(), layer_attrs)
                bar.update(len(x))


def run_extraction(
    image_store: str | Path,
    output: str | Path,
    extractor,
    batch_size: int = 256,
    attrs: Mapping[str, Any] | None = None,
    shard: tuple[int, int] | None = None,
) -> list[str]:
    """Run ``extractor`` over every image of ``image_store`` in batches; write ``output`` atomically.

    Images are read from the Zarr array a few chunks at a time, so memory stays flat in N. With ``shard``
    ``(i, k)``, only the rows of shard i of k (:func:`shard_rows`) are written, and the store's ``shard``
    attribute says which (:func:`gather_feature_shards` joins the k stores). Returns the layers.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    group = open_complete(image_store)
    images = group["images"]
    labels = group["labels"][...].astype(np.int64)
    split = group["split"][...].astype(np.uint8)
    n = len(labels)
    if images.ndim != 4 or images.shape[0] != n:
        raise ValueError(f"image store {image_store}: 'images' must be (N,H,W,C) with N={n}, got {images.shape}")
    start, stop = (0, n) if shard is None else shard_rows(n, batch_size, *shard)
    store_attrs = {
        "image_store": str(image_store),
        "class_names": list(group.attrs.get("class_names", [])),
        "image_shape": list(images.shape[1:]),
        # extraction runs in fp32 whatever the training precision was; the device and switches are recorded
        # because CPU and GPU stores differ in their last bits
        "compute": compute_environment(str(extractor.device), "fp32"),
        **(attrs or {}),
        **({} if shard is None else {SHARD_ATTR: {"shard": shard[0], "of": shard[1], "rows": [start, stop]}}),
    }
    log.info("extracting %s from %s: rows %d:%d of %d, batch %d, device %s", extractor.name, image_store, start,
             stop, n, batch_size, extractor.device)
    rows = slice(start, stop)
    with FeatureStoreWriter(output, labels[rows], split[rows], np.arange(start, stop), store_attrs) as writer:
        layers = _ChunkedLayers(writer)
        _extract_rows(images, start, stop, batch_size, extractor, layers)
        layers.close()
        return list(writer.layer_order)


def _shard_groups(shards: Sequence[str | Path]) -> list:
    """The shard stores, checked to be shards 0..k-1 of k whose rows follow each other from row 0."""
    groups = [open_complete(path) for path in shards]
    expected = 0
    for i, (path, group) in enumerate(zip(shards, groups, strict=True)):
        info = group.attrs.get(SHARD_ATTR) or {}
        if (info.get("shard"), info.get("of")) != (i, len(groups)) or info["rows"][0] != expected:
            raise StoreError(f"store {path} is not shard {i} of {len(groups)} starting at row {expected}: {info}")
        expected = info["rows"][1]
    return groups


def gather_feature_shards(shards: Sequence[str | Path], output: str | Path) -> list[str]:
    """Concatenate the shard stores of one extraction (in shard order) into ``output``, chunk by chunk: the same
    layers, values, attributes and chunking as an unsharded run (memory: one chunk per layer)."""
    groups = _shard_groups(shards)
    filled = [g for g in groups if g.attrs["layers"]]
    if not filled:
        raise StoreError(f"shard stores {list(map(str, shards))} hold no rows")
    first = filled[0]
    layer_order = list(first.attrs["layers"])
    columns = {name: np.concatenate([g[layer_order[0]][name][...] for g in filled]) for name in ("labels", "split",
                                                                                                    "index")}
    attrs = {k: v for k, v in first.attrs.items() if k not in ("complete", "layers", SHARD_ATTR)}
    with FeatureStoreWriter(output, columns["labels"], columns["split"], columns["index"], attrs) as writer:
        layers = _ChunkedLayers(writer)
        for group in filled:
            offset = int(group.attrs[SHARD_ATTR]["rows"][0])
            for layer in layer_order:
                layer_attrs = {k: v for k, v in group[layer].attrs.items() if k != SHARD_ATTR}
                features = group[layer]["features"]
                step = int(features.chunks[0])
                for start in range(0, features.shape[0], step):
                    layers.add(layer, offset + start, features[start : start + step], layer_attrs)
        layers.close()
    log.info("gathered %d shards into %s: %d rows, layers %s", len(groups), output, len(columns["labels"]),
             layer_order)
    return layer_order


def extract_features(
    image_store: str | Path,
    output: str | Path,
    extractor: str,
    settings: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    resources: str | Path = "resources",
    seed: int = 0,
    model_path: str | Path | None = None,
    shard: tuple[int, int] | None = None,
) -> list[str]:
    """The ``extract_features`` rule (and, with ``shard`` ``(i, k)``, its shard jobs): build ``extractor`` (from
    its config section ``settings``, or from the checkpoint ``model_path`` for ``resnet18_finetuned``) and write
    its store."""
    model = build_extractor(extractor, settings or {}, image_store, device, resources, seed, model_path)
    try:
        layers = run_extraction(image_store, output, model, batch_size, model.store_attrs(seed), shard)
    finally:
        if hasattr(model, "close"):
            model.close()
    log.info("wrote %s: layers %s", output, layers)
    return layers
