"""Every figure of the report as a PNG: t-SNE maps, thumbnail maps, activation grids, training, metric summaries,
layer similarity.

Conventions: matplotlib's object API (``matplotlib.figure.Figure``, Agg; no pyplot state), a fixed figure size
and dpi (so the pixel size is known in advance), no ``bbox_inches="tight"``, and no metadata that changes
between runs (``metadata={"Software": None}``), so the same inputs give the same pixels. Each ``draw_*``
function takes arrays and returns a Figure; each ``plot_*`` function reads the workflow's files, draws and
writes the PNG, reading and writing through :mod:`embedscope.artifacts`, the owner of those formats.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from embedscope.artifacts import (  # noqa: E402
    first_replicate,
    read_cka,
    read_classifiers,
    read_collapse,
    read_embedding_quality,
    read_predictions,
    read_training_log,
    read_tsne,
    read_tsne_meta,
    save_figure,
)
from embedscope.layers import LR_GROUP_NAMES  # noqa: E402
from embedscope.runtime import computed_on  # noqa: E402

log = logging.getLogger(__name__)

MISCLASSIFIED_RGB = (255, 0, 0)


# ---------------------------------------------------------------------------------------------- common


def class_colors(n_classes: int) -> np.ndarray:
    """(C, 3) float RGB in 0..1: tab10 up to 10 classes, tab20 up to 20, evenly spaced hues beyond."""
    if n_classes <= 10:
        cmap, values = matplotlib.colormaps["tab10"], np.arange(n_classes)
    elif n_classes <= 20:
        cmap, values = matplotlib.colormaps["tab20"], np.arange(n_classes)
    else:
        cmap, values = matplotlib.colormaps["hsv"], np.linspace(0, 1, n_classes, endpoint=False)
    return np.asarray([cmap(v)[:3] for v in values], dtype=np.float64)


def weights_label(extractor: str, weights: str | None) -> str:
    if extractor == "scattering":
        return "none (wavelet scattering)"
    weights = weights or "?"
    if extractor == "resnet18_finetuned" and "fine-tuned" not in weights:
        return f"{weights}, fine-tuned"
    return weights


def _settings(meta: Mapping[str, Any]) -> str:
    perplexity = meta.get("perplexity_used", meta.get("perplexity"))
    return f"{meta.get('method', 't-SNE')} perplexity {perplexity:g}" if perplexity is not None else "t-SNE"


def tsne_title(dataset: str, extractor: str, layer: str, meta: Mapping[str, Any]) -> str:
    dim, used = meta.get("dim", "?"), meta.get("dim_tsne_input")
    dims = f"D={dim}" + (f" (PCA to {used})" if used is not None and used != dim else "")
    return (
        f"{dataset} · {extractor} · {layer}\n"
        f"weights: {weights_label(extractor, meta.get('weights'))} · N={meta.get('n', '?')} test images · {dims} · "
        f"{_settings(meta)}"
    )


def tsne_footer(meta: Mapping[str, Any]) -> str | None:
    """The footer of a map: where its features were computed (``features computed on cpu (x86_64), fp32, torch
    2.5.1``), from the store's record the sidecar carries; None for a sidecar without one."""
    line = computed_on(meta.get("compute"))
    return None if line is None else f"features {line}"


FOOTER_STYLE = {"fontsize": 8, "color": "0.35"}


def class_names_or_ids(class_names: Sequence[str] | None, labels: np.ndarray) -> list[str]:
    n_classes = int(max(int(np.max(labels)) + 1 if len(labels) else 0, len(class_names or [])))
    names = list(class_names or [])
    return names + [str(c) for c in range(len(names), n_classes)]


def read_images(image_store: str | os.PathLike, sample_index: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Images (n,H,W,C) uint8 of the given sample indices, and the store's class names."""
    from embedscope.store import open_complete

    group = open_complete(image_store)
    images = group["images"]
    sample_index = np.asarray(sample_index, dtype=np.int64)
    if len(sample_index) and (sample_index.min() < 0 or sample_index.max() >= images.shape[0]):
        raise ValueError(f"sample index {int(sample_index.max())} is outside image store {image_store} "
                         f"({images.shape[0]} images)")
    order = np.argsort(sample_index, kind="stable")
    rest = (slice(None),) * (images.ndim - 1)
    taken = np.asarray(images.oindex[(sample_index[order], *rest)]) if len(sample_index) else np.zeros(
        (0, *images.shape[1:]), dtype=np.uint8)
    out = np.empty_like(taken)
    out[order] = taken
    return out, [str(c) for c in group.attrs["class_names"]]


def pick_test_image(image_store: str | os.PathLike, position: int, key: str = "figures.activation_image"):
    """(image HWC uint8, sample index, label, class names) of test-split position ``position``."""
    from embedscope.store import open_complete, split_code

    group = open_complete(image_store)
    test = np.flatnonzero(group["split"][...] == split_code("test"))
    if not 0 <= position < len(test):
        raise ValueError(f"config key {key} = {position} is not an index into the {len(test)} test images of "
                         f"{image_store}")
    sample = int(test[position])
    return (np.asarray(group["images"][sample]), sample, int(group["labels"][sample]),
            [str(c) for c in group.attrs["class_names"]])


def _show_image(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------- t-SNE


def _scatter_classes(ax, table: pd.DataFrame, colors: np.ndarray, size: float) -> None:
    for cls in range(len(colors)):
        rows = table[table["label"] == cls]
        if len(rows):
            ax.scatter(rows["x"], rows["y"], s=size, color=colors[cls], alpha=0.75, linewidths=0, rasterized=False)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])


def _class_handles(names: Sequence[str], colors: np.ndarray, marker: bool = True) -> list:
    if marker:
        return [Line2D([], [], marker="o", linestyle="", markersize=8, color=colors[i], label=name)
                for i, name in enumerate(names)]
    return [Patch(facecolor=colors[i], label=name) for i, name in enumerate(names)]


def marker_size(n: int) -> float:
    return float(np.clip(20000.0 / max(n, 1), 2.0, 30.0))


def draw_tsne(table: pd.DataFrame, class_names: Sequence[str], title: str, footer: str | None = None) -> Figure:
    """Scatter of the 2-D map coloured by true label, class legend outside the axes (report Figs. 2-6, 15-17)."""
    names = class_names_or_ids(class_names, table["label"].to_numpy())
    colors = class_colors(len(names))
    fig = Figure(figsize=(11, 9), layout="constrained")
    ax = fig.add_subplot()
    _scatter_classes(ax, table, colors, marker_size(len(table)))
    fig.legend(handles=_class_handles(names, colors), loc="outside right center", title="true label",
               frameon=False, fontsize=11)
    fig.suptitle(title, fontsize=13)
    if footer:
        fig.supxlabel(footer, **FOOTER_STYLE)
    return fig


def plot_tsne(tsne_csv, meta_json, output, *, dataset: str, extractor: str, layer: str, dpi: int = 100) -> None:
    table, meta = read_tsne(tsne_csv), read_tsne_meta(meta_json)
    fig = draw_tsne(table, meta.get("class_names"), tsne_title(dataset, extractor, layer, meta), tsne_footer(meta))
    save_figure(fig, output, dpi)


def draw_tsne_layers(tables: Sequence[pd.DataFrame], layers: Sequence[str], dims: Sequence[Any],
                     class_names: Sequence[str], title: str, footer: str | None = None) -> Figure:
    """All layers of one extractor side by side (at most four per row), one shared class legend."""
    labels = np.concatenate([t["label"].to_numpy() for t in tables])
    names = class_names_or_ids(class_names, labels)
    colors = class_colors(len(names))
    ncols = min(4, len(tables))
    nrows = math.ceil(len(tables) / ncols)
    fig = Figure(figsize=(4.2 * ncols + 2.2, 4.2 * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(tables):]:
        ax.set_axis_off()
    for ax, table, layer, dim in zip(axes.flat, tables, layers, dims, strict=False):
        _scatter_classes(ax, table, colors, marker_size(len(table)) / 2)
        ax.set_title(f"{layer} (D={dim})", fontsize=11)
    fig.legend(handles=_class_handles(names, colors), loc="outside right center", title="true label",
               frameon=False, fontsize=10)
    fig.suptitle(title, fontsize=13)
    if footer:
        fig.supxlabel(footer, **FOOTER_STYLE)
    return fig


def plot_tsne_layers(tsne_csvs: Sequence, meta_jsons: Sequence, output, *, dataset: str, extractor: str,
                     layers: Sequence[str], dpi: int = 100) -> None:
    if not (len(tsne_csvs) == len(meta_jsons) == len(layers)):
        raise ValueError("plot_tsne_layers needs one t-SNE csv and one metadata file per layer")
    tables = [read_tsne(p) for p in tsne_csvs]
    metas = [read_tsne_meta(p) for p in meta_jsons]
    meta = metas[0] if metas else {}
    title = (f"{dataset} · {extractor} · all layers, shallow to deep\n"
             f"weights: {weights_label(extractor, meta.get('weights'))} · N={meta.get('n', '?')} test images · "
             f"{_settings(meta)}")
    fig = draw_tsne_layers(tables, layers, [m.get("dim", "?") for m in metas], meta.get("class_names"), title,
                           tsne_footer(meta))
    save_figure(fig, output, dpi)


def make_thumbnails(images: np.ndarray, labels: np.ndarray, colors: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8 thumbnails. Grayscale images become strokes in their class colour on white
    (so overlapping digits stay visible under darken-compositing); colour images keep their colours."""
    from PIL import Image

    images = np.asarray(images)
    n = len(images)
    gray = images.shape[-1] == 1
    small = np.empty((n, size, size, images.shape[-1]), dtype=np.uint8)
    for i in range(n):
        im = Image.fromarray(images[i, ..., 0] if gray else images[i])
        resized = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
        small[i] = resized[..., None] if gray else resized
    if not gray:
        return small
    ink = small.astype(np.float32) / 255.0  # (n, s, s, 1)
    color = (colors[labels] * 255.0).astype(np.float32)[:, None, None, :]  # (n, 1, 1, 3)
    return np.round(255.0 - ink * (255.0 - color)).astype(np.uint8)


def compose_thumbnail_canvas(coords: np.ndarray, thumbs: np.ndarray, canvas_px: int,
                             frame: np.ndarray | None = None, frame_rgb=MISCLASSIFIED_RGB,
                             darken: bool = True, pad: int = 4, border_rgb: np.ndarray | None = None) -> np.ndarray:
    """Draw every thumbnail at its 2-D position onto ONE (canvas_px, canvas_px, 3) uint8 canvas.

    x/y share one scale (equal aspect), y points up. ``darken`` composes with the pixel-wise minimum (for
    ink-on-white thumbnails); otherwise later thumbnails cover earlier ones. ``frame`` (bool, n) marks the
    points framed in ``frame_rgb`` (drawn last, on top); ``border_rgb`` (n, 3) gives the others a 1-px border.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n, t = len(thumbs), thumbs.shape[1]
    canvas = np.full((canvas_px, canvas_px, 3), 255, dtype=np.uint8)
    if n == 0:
        return canvas
    lo, hi = coords.min(0), coords.max(0)
    span = np.maximum(hi - lo, 1e-12)
    room = canvas_px - 2 * pad - t
    if room < 1:
        raise ValueError(f"canvas of {canvas_px} px is too small for {t}-px thumbnails")
    scale = room / span.max()
    offset = pad + (room - span * scale) / 2.0
    cols = np.round(offset[0] + (coords[:, 0] - lo[0]) * scale).astype(np.int64)
    rows = np.round(offset[1] + (hi[1] - coords[:, 1]) * scale).astype(np.int64)
    framed = np.zeros(n, dtype=bool) if frame is None else np.asarray(frame, dtype=bool)
    order = np.concatenate([np.flatnonzero(~framed), np.flatnonzero(framed)])
    for i in order:
        r, c = rows[i], cols[i]
        tile = thumbs[i]
        if framed[i] or border_rgb is not None:
            tile = tile.copy()
            rgb = frame_rgb if framed[i] else (np.asarray(border_rgb[i]) * 255).astype(np.uint8)
            width = 2 if framed[i] else 1
            tile[:width], tile[-width:], tile[:, :width], tile[:, -width:] = rgb, rgb, rgb, rgb
        target = canvas[r : r + t, c : c + t]
        if darken and not framed[i]:
            np.minimum(target, tile, out=target)
        else:
            target[...] = tile
    return canvas


def thumbnail_canvas_px(n: int, thumbnail_size: int) -> int:
    """Canvas side: grows with sqrt(n) so density stays readable; between 600 and 4,000 px."""
    return int(np.clip(round(thumbnail_size * math.sqrt(max(n, 1)) * 1.6), 600, 4000))


def draw_tsne_thumbs(table: pd.DataFrame, images: np.ndarray, class_names: Sequence[str], title: str,
                     thumbnail_size: int = 20, dpi: int = 100, footer: str | None = None) -> Figure:
    """Each point drawn as its own image (report Figs. 3.1-6.1), misclassified ones framed in red.

    The thumbnails are composed onto one numpy canvas shown 1:1 (one image artist, not n), so 10,000 points
    draw in seconds.
    """
    labels = table["label"].to_numpy().astype(np.int64)
    names = class_names_or_ids(class_names, labels)
    colors = class_colors(len(names))
    gray = images.shape[-1] == 1
    thumbs = make_thumbnails(images, labels, colors, thumbnail_size)
    has_pred = "pred" in table.columns and table["pred"].notna().all()
    wrong = (table["pred"].to_numpy() != labels) if has_pred else None
    side = thumbnail_canvas_px(len(table), thumbnail_size)
    canvas = compose_thumbnail_canvas(table[["x", "y"]].to_numpy(), thumbs, side, frame=wrong, darken=gray,
                                      border_rgb=None if gray else colors[labels])
    margin, title_h, legend_w = 0.2, 1.1, 2.8
    canvas_in = side / dpi
    width, height = canvas_in + legend_w + 2 * margin, canvas_in + title_h + margin
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((margin / width, margin / height, canvas_in / width, canvas_in / height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.8")
    handles = _class_handles(names, colors, marker=False)
    if has_pred:
        handles.append(Patch(facecolor="white", edgecolor=np.asarray(MISCLASSIFIED_RGB) / 255, linewidth=2,
                             label=f"misclassified ({int(wrong.sum())})"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=((margin + canvas_in + 0.1) / width, 0.5),
               title="true label" + (" (ink colour)" if gray else " (border)"), frameon=False, fontsize=11)
    fig.text(0.5, 1 - 0.15 / height, title, ha="center", va="top", fontsize=13)
    if footer:  # in the bottom margin, below the canvas
        fig.text(0.5, 0.03 / height, footer, ha="center", va="bottom", **FOOTER_STYLE)
    return fig


def plot_tsne_thumbs(tsne_csv, meta_json, image_store, output, *, dataset: str, extractor: str, layer: str,
                     thumbnail_size: int = 20, dpi: int = 100) -> None:
    table, meta = read_tsne(tsne_csv), read_tsne_meta(meta_json)
    images, class_names = read_images(image_store, table["index"].to_numpy())
    fig = draw_tsne_thumbs(table, images, meta.get("class_names") or class_names,
                           tsne_title(dataset, extractor, layer, meta), thumbnail_size, dpi, tsne_footer(meta))
    save_figure(fig, output, dpi)


# ---------------------------------------------------------------------------------------- activations


def activation_maps(body, image: np.ndarray, resize: int | None = None) -> dict[str, np.ndarray]:
    """Forward one uint8 HWC image through ``body`` (an nn.Sequential of named children); each child's
    output (C, H, W) as float32, copied before the next (in-place ReLU) child runs."""
    import torch

    from embedscope.resnet import preprocess

    x = preprocess(np.asarray(image)[None], resize)
    maps = {}
    body = body.eval()
    with torch.no_grad():
        for name, module in body.named_children():
            x = module(x)
            maps[name] = x[0].detach().cpu().numpy().astype(np.float32).copy()
    return maps


def load_body(extractor: str, weights: str = "random", resources: str | os.PathLike = "resources", seed: int = 0,
              model_path: str | os.PathLike | None = None):
    """The ResNet-18 body of ``resnet18`` (frozen, ``weights``) or of the fine-tuned checkpoint ``model_path``."""
    if extractor == "resnet18":
        from embedscope.resnet import body_of, build_resnet18

        return body_of(build_resnet18(weights, resources=resources, seed=seed)).eval()
    if extractor == "resnet18_finetuned":
        if model_path is None:
            raise ValueError("activations of resnet18_finetuned need the checkpoint path (model_path)")
        from embedscope.checkpoint import load_finetuned

        model, _ = load_finetuned(model_path)
        return model.body.eval()
    raise ValueError(f"activation maps exist for resnet18 and resnet18_finetuned, not {extractor!r}")


def draw_activation_grid(maps: np.ndarray, title: str, n_show: int = 64) -> Figure:
    """The first ``n_show`` channels (C, H, W) as a square grid, each scaled to its own range as in the
    report (a constant map is drawn uniformly dark: "blank")."""
    maps = np.asarray(maps)
    count = min(n_show, len(maps))
    side = math.ceil(math.sqrt(count))
    fig = Figure(figsize=(10, 11))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.89, wspace=0.06, hspace=0.06)
    axes = fig.subplots(side, side, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.set_axis_off()
            continue
        channel = maps[i]
        lo, hi = float(channel.min()), float(channel.max())
        ax.imshow(channel, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1.0, interpolation="nearest")
    fig.text(0.5, 0.985, title, ha="center", va="top", fontsize=13)
    return fig


def plot_activations(image_store, output, *, dataset: str, extractor: str, layer: str, position: int,
                     weights: str = "random", resize: int | None = None, seed: int = 0,
                     resources: str | os.PathLike = "resources", model_path=None, dpi: int = 100) -> None:
    """Report Figs. 7-14: test image ``position`` through the body; first 64 channels of ``layer``, 8x8."""
    image, sample, label, class_names = pick_test_image(image_store, position)
    body = load_body(extractor, weights, resources, seed, model_path)
    names = [name for name, _ in body.named_children()]
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not a child of the {extractor} body; it has {names}")
    maps = activation_maps(body, image, resize)[layer]
    channels, h, w = maps.shape
    name = class_names[label] if label < len(class_names) else str(label)
    title = (f"{dataset} · {extractor} · {layer} · weights: {weights_label(extractor, weights)}\n"
             f"test image {position} (sample {sample}, label {name}) · first {min(64, channels)} of {channels} "
             f"channels, each {h}x{w}, each scaled to its own range")
    save_figure(draw_activation_grid(maps, title), output, dpi)


def draw_image(image: np.ndarray, title: str) -> Figure:
    fig = Figure(figsize=(5, 5.8), layout="constrained")
    ax = fig.add_subplot()
    _show_image(ax, image)
    fig.suptitle(title, fontsize=12)
    return fig


def plot_activation_input(image_store, output, *, dataset: str, position: int, dpi: int = 100) -> None:
    image, sample, label, class_names = pick_test_image(image_store, position)
    name = class_names[label] if label < len(class_names) else str(label)
    h, w, c = image.shape
    title = f"{dataset}: test image {position}\n(sample {sample}) · label {name} · {h}x{w}x{c}"
    save_figure(draw_image(image, title), output, dpi)


# ------------------------------------------------------------------------------------------ fine-tuning


def _mark_stages(ax, steps: pd.DataFrame) -> Line2D | None:
    stage2 = steps.loc[steps["stage"] == 2, "step"]
    if stage2.empty or (steps["stage"] == 1).sum() == 0:
        return None
    boundary = float(stage2.min()) - 0.5
    ax.axvspan(boundary, float(steps["step"].max()) + 0.5, color="0.93", zorder=0)
    return ax.axvline(boundary, color="0.3", linestyle="--", linewidth=1.2,
                      label=f"stage 2 (all layers unfrozen) from step {int(stage2.min())}")


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) < 2:
        return values
    kernel = np.ones(window)
    total = np.convolve(values, kernel, mode="full")[: len(values)]
    count = np.convolve(np.ones(len(values)), kernel, mode="full")[: len(values)]
    return total / count


def draw_training_loss(steps: pd.DataFrame, epochs: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(11, 6), layout="constrained")
    ax = fig.add_subplot()
    x, loss = steps["step"].to_numpy(), steps["train_loss"].to_numpy(dtype=np.float64)
    ax.plot(x, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train loss (per step)")
    window = max(1, len(x) // 50)
    if window > 1:
        ax.plot(x, running_mean(loss, window), color="tab:blue", linewidth=1.8,
                label=f"train loss (running mean of {window} steps)")
    if not epochs.empty:
        ax.plot(epochs["step"], epochs["test_loss"].astype(float), "o-", color="tab:orange", linewidth=1.8,
                label="test loss (end of each epoch)")
    _mark_stages(ax, steps)
    values = np.concatenate([loss, epochs["test_loss"].to_numpy(dtype=np.float64) if not epochs.empty else []])
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("training step (both stages)")
    ax.set_ylabel("cross-entropy loss")
    fig.legend(loc="outside lower center", ncols=2, fontsize=10, frameon=False)
    fig.suptitle(title, fontsize=13)
    return fig


def draw_training_lr(steps: pd.DataFrame, lr_columns: Sequence[str], title: str) -> Figure:
    fig = Figure(figsize=(11, 6), layout="constrained")
    ax = fig.add_subplot()
    names = LR_GROUP_NAMES.get(len(lr_columns), tuple(f"group {g}" for g in range(len(lr_columns))))
    colors = class_colors(len(lr_columns))
    for column, name, color in zip(lr_columns, names, colors, strict=True):
        ax.plot(steps["step"], steps[column].astype(float), color=color, linewidth=1.8,
                label=f"{column}: {name}")
    _mark_stages(ax, steps)
    ax.set_yscale("log")
    ax.set_xlabel("training step (both stages)")
    ax.set_ylabel("learning rate (one-cycle)")
    fig.legend(loc="outside lower center", ncols=min(4, len(lr_columns) + 1), fontsize=10, frameon=False)
    fig.suptitle(title, fontsize=13)
    return fig


def plot_training(training_log, loss_png, lr_png, *, dataset: str, dpi: int = 100) -> None:
    steps, epochs, lr_columns = read_training_log(training_log)
    n1 = int((epochs["stage"] == 1).sum())
    n2 = int((epochs["stage"] == 2).sum())
    final = ""
    if not epochs.empty and "test_accuracy" in epochs:
        final = f" · final test accuracy {float(epochs['test_accuracy'].iloc[-1]):.3f}"
    def epochs_text(k):
        return f"{k} epoch" + ("" if k == 1 else "s")

    head = (f"{dataset}: fine-tuning ResNet-18, stage 1 (head) {epochs_text(n1)} + "
            f"stage 2 (all layers) {epochs_text(n2)}")
    save_figure(draw_training_loss(steps, epochs, f"{head}\nloss per step{final}"), loss_png, dpi)
    save_figure(draw_training_lr(steps, lr_columns, f"{head}\none-cycle learning rate per layer group"), lr_png, dpi)


# (metric, panel title, whether the panel shows 1 - value): NC4's agreement is drawn as the mismatch that
# Papyan, Han & Donoho plot, so every panel falls towards 0 as the network collapses.
COLLAPSE_PANELS = (
    ("nc1", "NC1: tr(S_W S_B⁺) / C", False),
    ("nc2_equinorm", "NC2 equinorm: std/mean of ||μ_c − μ_G||", False),
    ("nc2_equiangularity", "NC2 equiangularity: std of cos(μ_c, μ_c')", False),
    ("nc2_maxangle", "NC2 max-angle: mean |cos + 1/(C−1)|", False),
    ("nc3_self_duality", "NC3 self-duality: ||W/||W|| − M/||M||||²", False),
    ("nc4_ncc_agreement", "NC4: 1 − agreement with nearest class centre", True),
)


PLAIN_TICKS = FuncFormatter(lambda value, _: f"{value:.3g}")


def draw_collapse(table: pd.DataFrame, title: str) -> Figure:
    """One panel per statistic against the epoch counted over both stages, one line per layer, log scale
    where every value is positive; stage 2 shaded from its first epoch."""
    fig = Figure(figsize=(14, 8), layout="constrained")
    axes = fig.subplots(2, 3, squeeze=False).flat
    epochs = table[["stage", "epoch"]].drop_duplicates().sort_values(["stage", "epoch"], kind="stable")
    number = {(int(s), int(e)): i + 1 for i, (s, e) in enumerate(epochs.itertuples(index=False))}
    x_all = table.apply(lambda r: number[(int(r["stage"]), int(r["epoch"]))], axis=1) if len(table) else []
    table = table.assign(x=x_all)
    layers = list(dict.fromkeys(table["layer"]))
    colors = dict(zip(layers, class_colors(max(2, len(layers))), strict=False))
    stage2 = [number[k] for k in number if k[0] == 2]
    for ax, (metric, label, complement) in zip(axes, COLLAPSE_PANELS, strict=True):
        rows = table[table["metric"] == metric]
        for layer in layers:
            line = rows[rows["layer"] == layer]
            if line.empty:
                continue
            y = line["value"].to_numpy(dtype=np.float64)
            ax.plot(line["x"], 1.0 - y if complement else y, "o-", color=colors[layer], linewidth=1.8, label=layer)
        values = (1.0 - rows["value"] if complement else rows["value"]).to_numpy(dtype=np.float64)
        if len(values) and np.all(values[np.isfinite(values)] > 0):
            ax.set_yscale("log")
            # plain numbers: over a narrow range the log axis labels its minor ticks as "1.1 x 10^0"
            ax.yaxis.set_major_formatter(PLAIN_TICKS)
            ax.yaxis.set_minor_formatter(PLAIN_TICKS)
        if stage2 and len(number) > len(stage2):
            ax.axvspan(min(stage2) - 0.5, max(stage2) + 0.5, color="0.93", zorder=0)
            ax.axvline(min(stage2) - 0.5, color="0.3", linestyle="--", linewidth=1.2)
        if rows.empty:
            ax.text(0.5, 0.5, "not measured for these layers", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("epoch (both stages)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=colors[layer], marker="o", linewidth=1.8, label=layer) for layer in layers]
    if stage2 and len(number) > len(stage2):
        handles.append(Patch(color="0.93", label=f"stage 2 (all layers unfrozen) from epoch {min(stage2)}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=10, frameon=False)
    fig.suptitle(title, fontsize=13)
    return fig


def plot_collapse(collapse_csv, output, *, dataset: str, dpi: int = 100) -> None:
    """The neural-collapse statistics of every fine-tuning epoch (:mod:`embedscope.collapse`)."""
    table = read_collapse(collapse_csv)
    train = table.loc[table["metric"] != "nc4_ncc_agreement", "images"]
    test = table.loc[table["metric"] == "nc4_ncc_agreement", "images"]
    sample = f"class means of {int(train.iloc[0]):,} train images" if len(train) else "no train statistics"
    if len(test):
        sample += f", NC4 on {int(test.iloc[0]):,} test images"
    title = f"{dataset}: neural collapse through fine-tuning (ResNet-18)\n{sample}"
    save_figure(draw_collapse(table, title), output, dpi)


def draw_top_losses(rows: pd.DataFrame, images: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    count = len(rows)
    side = max(1, math.ceil(math.sqrt(count)))
    fig = Figure(figsize=(10, 11.5), layout="constrained")
    axes = fig.subplots(side, side, squeeze=False)
    names = class_names_or_ids(class_names, np.concatenate([rows["label"], rows["pred"]]).astype(np.int64))
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    for ax, (_, row), image in zip(axes.flat, rows.iterrows(), images, strict=False):
        _show_image(ax, image)
        wrong = int(row["label"]) != int(row["pred"])
        ax.set_title(f"true {names[int(row['label'])]} · pred {names[int(row['pred'])]}\n"
                     f"p(pred)={row['prob']:.2f} · loss {row['loss']:.2f}", fontsize=11,
                     color="tab:red" if wrong else "black")
    fig.suptitle(title, fontsize=13)
    return fig


def plot_top_losses(predictions, image_store, output, *, dataset: str, k: int = 9, dpi: int = 100) -> None:
    """The ``k`` test images with the highest loss (ties: lower sample index first)."""
    table = read_predictions(predictions)
    rows = table.sort_values(["loss", "index"], ascending=[False, True], kind="stable").head(k)
    images, class_names = read_images(image_store, rows["index"].to_numpy())
    title = f"{dataset}: the {len(rows)} test images with the highest loss (fine-tuned ResNet-18, of {len(table)})"
    save_figure(draw_top_losses(rows, images, class_names, title), output, dpi)


def confusion_counts(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return counts


def draw_confusion(counts: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    n = len(counts)
    fig = Figure(figsize=(9, 8.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    long_names = max((len(c) for c in class_names), default=0) > 3
    ax.set_xticklabels(class_names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        threshold = counts.max() / 2.0
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=9 if n <= 12 else 6,
                    color="white" if value > threshold else "black")
    fig.suptitle(title, fontsize=13)
    return fig


def plot_confusion(predictions, image_store, output, *, dataset: str, dpi: int = 100) -> None:
    from embedscope.store import open_complete

    table = read_predictions(predictions)
    class_names = [str(c) for c in open_complete(image_store).attrs["class_names"]]
    labels, pred = table["label"].to_numpy(), table["pred"].to_numpy()
    names = class_names_or_ids(class_names, np.concatenate([labels, pred]))
    counts = confusion_counts(labels, pred, len(names))
    accuracy = float(np.mean(labels == pred)) if len(labels) else float("nan")
    title = (f"{dataset}: confusion matrix of the fine-tuned ResNet-18\n"
             f"{len(table)} test images · accuracy {accuracy:.3f}")
    save_figure(draw_confusion(counts, names, title), output, dpi)


# --------------------------------------------------------------------------------------- metric tables


def layer_axis(frame: pd.DataFrame, group: str) -> tuple[list[tuple[str, str]], dict[tuple[str, str], int]]:
    """The (group, layer) pairs of a table in first-seen order, and each pair's x position."""
    order = list(dict.fromkeys(zip(frame[group], frame["layer"], strict=True)))
    return order, {pair: i for i, pair in enumerate(order)}


def metrics_width(n_positions: int) -> float:
    """Figure width in inches of the per-layer metric plots: room for one rotated tick label per layer."""
    return max(6.0, 0.45 * n_positions + 2)


DODGE = 0.12  # x offset between series drawn at the same layer, in layer positions


def interval_errors(part: pd.DataFrame, metric: str) -> np.ndarray | None:
    """(2, n) distances below and above each ``metric`` value to its interval (``<metric>_low``/``_high``),
    as matplotlib's ``yerr`` takes them; 0 where the interval is missing; None when the table has none."""
    if f"{metric}_low" not in part.columns or f"{metric}_high" not in part.columns:
        return None
    value = part[metric].to_numpy(dtype=np.float64)
    below = value - part[f"{metric}_low"].to_numpy(dtype=np.float64)
    above = part[f"{metric}_high"].to_numpy(dtype=np.float64) - value
    return np.nan_to_num(np.clip(np.vstack([below, above]), 0, None), nan=0.0)


def draw_accuracy_by_layer(table: pd.DataFrame, classifiers: Sequence[str], title: str) -> Figure:
    """Test accuracy per feature set, one line per fitted classifier (``classifiers``, in colour order), with
    its 95% interval as error bars; every other row of the classifier table (class-mean baselines, the CNN) as
    a dashed horizontal line over a band of its interval."""
    fitted = table[table["classifier"].isin(classifiers)]
    order, position = layer_axis(fitted, "features")
    fig = Figure(figsize=(metrics_width(len(order)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = [c for c in classifiers if c in set(fitted["classifier"])]
    for rank, name in enumerate(drawn):
        rows = fitted[fitted["classifier"] == name]
        dodge = DODGE * (rank - (len(drawn) - 1) / 2)  # side by side, so the error bars of one x do not overlap
        for features in dict.fromkeys(rows["features"]):
            part = rows[rows["features"] == features]
            xs = [position[(features, layer)] + dodge for layer in part["layer"]]
            ax.errorbar(xs, part["accuracy"], yerr=interval_errors(part, "accuracy"), marker="o", ms=4,
                        capsize=2, elinewidth=0.8, color=f"C{list(classifiers).index(name)}",
                        label=name if features == rows["features"].iloc[0] else None)
    extra = table[~table["classifier"].isin(classifiers)]
    for offset, (_, row) in enumerate(extra.iterrows()):
        colour = f"C{len(classifiers) + offset}"
        ax.axhline(row["accuracy"], ls="--", lw=1, color=colour, label=f"{row['classifier']} ({row['accuracy']:.3f})")
        if pd.notna(row.get("accuracy_low")) and pd.notna(row.get("accuracy_high")):
            ax.axhspan(row["accuracy_low"], row["accuracy_high"], color=colour, alpha=0.12, lw=0)
    ax.set_xticks(range(len(order)), [layer if layer == f else f"{f}:{layer}" for f, layer in order],
                  rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (95% Wilson)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return fig


def draw_depth(quality: pd.DataFrame, title: str) -> Figure:
    """NC1 (top, log scale when positive) and the 2-D kNN and nearest-class-centre accuracies with their 95%
    intervals (bottom) per layer, one colour per extractor."""
    order, position = layer_axis(quality, "extractor")
    fig = Figure(figsize=(metrics_width(len(order)), 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for i, extractor in enumerate(dict.fromkeys(quality["extractor"])):
        part = quality[quality["extractor"] == extractor]
        xs = [position[(extractor, layer)] for layer in part["layer"]]
        top.plot(xs, part["nc1"], marker="o", ms=4, color=f"C{i}", label=extractor)
        bottom.errorbar(xs, part["knn_accuracy_2d"], yerr=interval_errors(part, "knn_accuracy_2d"), marker="o",
                        ms=4, capsize=2, elinewidth=0.8, color=f"C{i}", label=f"{extractor}: 2-D kNN")
        bottom.errorbar([x + DODGE for x in xs], part["ncc_accuracy"], yerr=interval_errors(part, "ncc_accuracy"),
                        marker="s", ms=3, ls=":", capsize=2, elinewidth=0.8, color=f"C{i}",
                        label=f"{extractor}: nearest class centre")
    if (quality["nc1"] > 0).all():
        top.set_yscale("log")
    top.set_ylabel("NC1 (train split)")
    top.grid(alpha=0.3)
    top.legend(fontsize=7)
    top.set_title(title, fontsize=9)
    bottom.set_ylabel("accuracy (95% Wilson)")
    bottom.set_ylim(0, 1.02)
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=6, loc="lower right")
    bottom.set_xticks(range(len(order)), [f"{e}:{layer}" for e, layer in order], rotation=60, ha="right",
                      fontsize=8)
    return fig


def plot_metrics(classifiers_csv, embedding_csv, accuracy_png, depth_png, *, dataset: str = "", dpi: int = 100,
                 weights: str | None = None) -> None:
    """accuracy_by_layer.png (test accuracy per feature set and classifier) and depth.png (NC1, 2-D kNN), of
    the first fine-tuning replicate."""
    from embedscope.metrics import CLASSIFIERS

    suffix = f" (ResNet-18 weights: {weights})" if weights else ""
    accuracy = draw_accuracy_by_layer(first_replicate(read_classifiers(classifiers_csv)), CLASSIFIERS,
                                      f"{dataset}: test accuracy per feature set and classifier{suffix}")
    save_figure(accuracy, accuracy_png, dpi)
    depth = draw_depth(first_replicate(read_embedding_quality(embedding_csv)),
                       f"{dataset}: within-class collapse and class separation by depth{suffix}")
    save_figure(depth, depth_png, dpi)


# ------------------------------------------------------------------------------------------ layer similarity


def draw_cka(names: Sequence[tuple[str, str]], matrix: np.ndarray, title: str,
             group_labels: Mapping[str, str] | None = None) -> Figure:
    """Heatmap of a CKA matrix over feature sets ``names`` ((features, layer), in the matrix's order): a block
    per extractor, separated by white lines and named on both axes (``group_labels`` may add, e.g., the
    weights), values written in the cells while they stay readable (up to 24 sets), NaN cells grey."""
    count = len(names)
    side = max(6.0, 0.5 * count + 3.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.7, label="linear CKA")
    layers = [layer for _, layer in names]
    ax.set_xticks(range(count), layers, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(count), layers, fontsize=8)
    groups = list(dict.fromkeys(features for features, _ in names))
    labels = dict(group_labels or {})
    for group in groups:
        members = [i for i, (features, _) in enumerate(names) if features == group]
        first, last = members[0], members[-1]
        if first > 0:
            ax.axhline(first - 0.5, color="white", lw=2)
            ax.axvline(first - 0.5, color="white", lw=2)
        if len(members) == 1 and names[first][1] == group and group not in labels:
            continue  # a one-layer set named like its layer (pixels, scattering): the tick label says it
        middle = (first + last) / 2
        text = labels.get(group, group)
        ax.annotate(text, xy=(middle, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8, fontweight="bold")
        ax.annotate(text.replace(" (", "\n("), xy=(1.0, middle), xycoords=("axes fraction", "data"),
                    xytext=(4, 0), textcoords="offset points", ha="left", va="center", fontsize=8,
                    fontweight="bold", rotation=-90)
    if count <= 24:
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7 if count <= 16 else 5,
                        color="black" if value > 0.6 else "white")
    fig.suptitle(title, fontsize=11)
    return fig


def plot_cka(cka_csv, output, *, dataset: str = "", dpi: int = 100, weights: str | None = None) -> None:
    """cka.png: the CKA table (:func:`embedscope.artifacts.read_cka`) as a heatmap with a block per extractor."""
    from embedscope.similarity import CKA_VARIANT, cka_matrix

    table = read_cka(cka_csv)
    names, matrix = cka_matrix(table)
    n = sorted({int(v) for v in table["n"]})
    groups = dict.fromkeys(features for features, _ in names)
    # the ResNet-18 blocks carry their weights (random in the default study); pixels and scattering have none
    labels = {group: f"{group} ({weights_label(group, weights)})" for group in groups
              if group not in ("pixels", "scattering")}
    title = (f"{dataset}: layer similarity, {CKA_VARIANT}\n"
             f"n = {', '.join(map(str, n))} test images (seeded stratified subsample), the same for every layer")
    save_figure(draw_cka(names, matrix, title, labels), output, dpi)
