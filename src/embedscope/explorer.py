"""The interactive embedding explorer: one self-contained HTML page per dataset (Bokeh, inline resources).

The page holds the t-SNE map of every (extractor, layer), chosen from a menu. All maps place the same points
(``embedscope.tsne.tsne_subset``), so the page keeps ONE ColumnDataSource: one thumbnail, label and
prediction per point, plus an ``x``/``y`` column pair per layer; the layer menu only copies that layer's pair
into the plotted ``x``/``y`` (a few lines of CustomJS). Each map is scaled into [-1, 1] so one fixed range
fits every layer. Points are coloured by true label, one renderer per class (a legend click hides a class);
misclassified points (the fine-tuned CNN's prediction) are drawn as black-edged triangles. Hovering shows the
thumbnail (a PNG data URI), index, true and predicted label and confidence. The layer's embedding-quality
numbers sit beside the map and follow the menu.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedscope.store import read_image_store

log = logging.getLogger("embedscope.explorer")

TSNE_COLUMNS = ("index", "x", "y", "label")
QUALITY_COLUMNS = (
    "dataset",
    "extractor",
    "layer",
    "D",
    "n",
    "trustworthiness",
    "knn_accuracy_2d",
    "silhouette_features",
    "silhouette_2d",
    "ncc_accuracy",
    "nc1",
)
QUALITY_LABELS = {
    "D": "feature dimension D",
    "n": "points n",
    "trustworthiness": "t-SNE trustworthiness (k=10)",
    "knn_accuracy_2d": "kNN accuracy in the 2-D map",
    "silhouette_features": "silhouette (features)",
    "silhouette_2d": "silhouette (2-D map)",
    "ncc_accuracy": "nearest class centre accuracy",
    "nc1": "NC1 (within/between class variability)",
}
PREDICTION_COLUMNS = ("index", "pred", "prob")
STATUS_FACTORS = ("correct", "misclassified", "no prediction")
STATUS_MARKERS = ("circle", "triangle", "circle")

TOOLTIP = """
<div style="display:flex;gap:8px;align-items:center">
  <img src="@thumb" alt="thumbnail" width="{px}" height="{px}"
       style="image-rendering:pixelated;border:1px solid #888">
  <div style="font-size:12px;line-height:1.35">
    <b>index</b> @index<br>
    <b>true</b> @label_name<br>
    <b>predicted</b> @pred_name<br>
    <b>confidence</b> @prob{{0.000}}
  </div>
</div>
"""

# The only hand-written JavaScript: copy the chosen layer's coordinates and quality table into place.
SWITCH_JS = """
const key = select.value;
const data = Object.assign({}, source.data);
data.x = data["x__" + key];
data.y = data["y__" + key];
source.data = data;
quality.text = tables[key];
plot.title.text = titles[key];
"""


class ExplorerError(ValueError):
    """An input of the explorer is missing, malformed or inconsistent."""


def layer_key(extractor: str, layer: str) -> str:
    """The name of one map inside the page (column suffix and menu value)."""
    return f"{extractor}__{layer}"


def png_data_uri(image: np.ndarray) -> str:
    """One uint8 (H, W, C) image as a ``data:image/png;base64,...`` URI (gray for one channel)."""
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_csv(path: str | os.PathLike, required: Sequence[str], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ExplorerError(f"{what} {path} does not exist")
    frame = pd.read_csv(path)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ExplorerError(f"{what} {path} lacks column(s) {missing}; expected at least {list(required)}")
    return frame


def scale_unit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre a 2-D map and scale it (same factor on both axes) to fit in [-1, 1]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cx, cy = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
    half = max(x.max() - x.min(), y.max() - y.min(), 1e-12) / 2
    return ((x - cx) / half).astype(np.float32), ((y - cy) / half).astype(np.float32)


def load_maps(
    maps: Sequence[tuple[str, str, str | os.PathLike]],
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Read every t-SNE csv; check they hold the same points. Returns (first map's points, key -> map)."""
    if not maps:
        raise ExplorerError("no t-SNE maps given: expected at least one (extractor, layer, csv) triple")
    frames: dict[str, pd.DataFrame] = {}
    reference = None
    for extractor, layer, path in maps:
        frame = _read_csv(path, TSNE_COLUMNS, f"t-SNE csv of {extractor}/{layer}")
        if frame["index"].duplicated().any():
            raise ExplorerError(f"t-SNE csv {path}: column 'index' has duplicate sample indices")
        if not np.isfinite(frame[["x", "y"]].to_numpy(dtype=np.float64)).all():
            raise ExplorerError(f"t-SNE csv {path}: columns x, y must be finite numbers")
        frame = frame.set_index("index", drop=False)
        if reference is None:
            reference = frame
        elif set(frame.index) != set(reference.index):
            raise ExplorerError(
                f"t-SNE csv {path} holds other points than {maps[0][2]}: every map must use the same "
                "subset (embedscope.tsne.tsne_subset)"
            )
        frame = frame.loc[reference.index]
        if not np.array_equal(frame["label"].to_numpy(), reference["label"].to_numpy()):
            raise ExplorerError(f"t-SNE csv {path}: column 'label' disagrees with {maps[0][2]}")
        key = layer_key(extractor, layer)
        if key in frames:
            raise ExplorerError(f"map {extractor}/{layer} is given twice")
        frames[key] = frame
    return reference, frames


def predictions_for(
    index: np.ndarray,
    predictions_csv: str | os.PathLike | None,
    frames: Mapping[str, pd.DataFrame],
) -> tuple[np.ndarray, np.ndarray]:
    """(pred, prob) per point: from predictions.csv joined on index, else a t-SNE csv with pred/prob.

    Points without a prediction get pred -1 and prob NaN.
    """
    source = None
    if predictions_csv is not None:
        source = _read_csv(predictions_csv, PREDICTION_COLUMNS, "predictions csv").set_index("index")
        if source.index.duplicated().any():
            raise ExplorerError(f"predictions csv {predictions_csv}: column 'index' has duplicates")
    else:
        for frame in frames.values():
            if "pred" in frame.columns and "prob" in frame.columns:
                source = frame.set_index("index", drop=True)
                break
    pred = np.full(len(index), -1, dtype=np.int64)
    prob = np.full(len(index), np.nan, dtype=np.float32)
    if source is None:
        return pred, prob
    found = np.isin(index, source.index.to_numpy())
    if found.any():
        rows = source.loc[index[found]]
        pred[found] = rows["pred"].to_numpy(dtype=np.int64)
        prob[found] = rows["prob"].to_numpy(dtype=np.float32)
    if not found.all():
        log.warning("%d of %d points have no prediction", int((~found).sum()), len(index))
    return pred, prob


def quality_tables(
    quality_csv: str | os.PathLike | None, maps: Sequence[tuple[str, str, object]], dataset: str | None
) -> dict[str, str]:
    """key -> an HTML table of that layer's embedding-quality numbers ('n/a' where there is no row)."""
    frame = None
    if quality_csv is not None:
        frame = _read_csv(quality_csv, ("extractor", "layer"), "embedding-quality csv")
        if dataset is not None and "dataset" in frame.columns:
            frame = frame[frame["dataset"].astype(str) == str(dataset)]
    tables = {}
    for extractor, layer, _ in maps:
        row = None
        if frame is not None:
            rows = frame[(frame["extractor"] == extractor) & (frame["layer"] == layer)]
            row = rows.iloc[0] if len(rows) else None
        lines = [f"<b>{html.escape(extractor)} / {html.escape(layer)}</b>", "<table style='font-size:13px'>"]
        for column, label in QUALITY_LABELS.items():
            value = "n/a"
            if row is not None and column in row.index and pd.notna(row[column]):
                number = row[column]
                value = f"{int(number)}" if column in ("D", "n") else f"{float(number):.3f}"
            lines.append(f"<tr><td>{html.escape(label)}</td><td style='text-align:right'>{value}</td></tr>")
        lines.append("</table>")
        if row is None:
            log.warning("embedding-quality csv has no row for %s/%s", extractor, layer)
        tables[layer_key(extractor, layer)] = "\n".join(lines)
    return tables


def palette(n: int) -> list[str]:
    from bokeh.palettes import Category10, Category20, Turbo256

    if n <= 10:
        return list(Category10[10][:n])
    if n <= 20:
        return list(Category20[20][:n])
    return [Turbo256[int(i)] for i in np.linspace(0, 255, n)]


def explorer_document(
    image_store: str | os.PathLike,
    maps: Sequence[tuple[str, str, str | os.PathLike]],
    quality_csv: str | os.PathLike | None = None,
    predictions_csv: str | os.PathLike | None = None,
    dataset: str | None = None,
    thumb_px: int = 84,
):
    """The Bokeh layout of the page (module doc); ``maps``: (extractor, layer, t-SNE csv) in menu order."""
    from bokeh.layouts import column, row
    from bokeh.models import (
        CDSView,
        ColumnDataSource,
        CustomJS,
        Div,
        GroupFilter,
        HoverTool,
        Legend,
        Range1d,
        Select,
    )
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap, factor_mark

    images = read_image_store(image_store)
    class_names = list(images.class_names)
    reference, frames = load_maps(maps)
    index = reference["index"].to_numpy(dtype=np.int64)
    if index.min() < 0 or index.max() >= len(images.labels):
        raise ExplorerError(
            f"t-SNE csv {maps[0][2]}: sample indices must lie in 0..{len(images.labels) - 1} "
            f"(the image store {image_store})"
        )
    labels = reference["label"].to_numpy(dtype=np.int64)
    if not np.array_equal(labels, images.labels[index]):
        raise ExplorerError(f"t-SNE csv {maps[0][2]}: column 'label' disagrees with the image store {image_store}")
    pred, prob = predictions_for(index, predictions_csv, frames)
    status = np.where(pred < 0, STATUS_FACTORS[2], np.where(pred == labels, STATUS_FACTORS[0], STATUS_FACTORS[1]))
    # misclassified points last, so they are drawn on top within their class
    order = np.argsort(status == STATUS_FACTORS[1], kind="stable")

    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else "n/a"

    data = {
        "index": index[order],
        "label_name": [name(c) for c in labels[order]],
        "pred_name": [name(c) for c in pred[order]],
        "prob": prob[order],
        "status": list(status[order]),
        "size": np.where(status[order] == STATUS_FACTORS[1], 9, 6).astype(np.uint8),
        "thumb": [png_data_uri(images.images[i]) for i in index[order]],
    }
    titles = {}
    for extractor, layer, _ in maps:
        key = layer_key(extractor, layer)
        frame = frames[key]
        x, y = scale_unit(frame["x"].to_numpy(), frame["y"].to_numpy())
        data[f"x__{key}"], data[f"y__{key}"] = x[order], y[order]
        titles[key] = f"{dataset + ': ' if dataset else ''}t-SNE of {extractor} / {layer} ({len(index)} points)"
    first = layer_key(*maps[0][:2])
    data["x"], data["y"] = data[f"x__{first}"], data[f"y__{first}"]
    source = ColumnDataSource(data, name="points")

    plot = figure(
        title=titles[first],
        width=760,
        height=720,
        x_range=Range1d(-1.08, 1.08),
        y_range=Range1d(-1.08, 1.08),
        match_aspect=True,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        active_scroll="wheel_zoom",
        output_backend="webgl",
        name="tsne_plot",
    )
    plot.axis.visible = False
    plot.grid.visible = False
    colors = palette(len(class_names))
    marker = factor_mark("status", list(STATUS_MARKERS), list(STATUS_FACTORS))
    renderers, items = [], []
    for c, class_name in enumerate(class_names):
        renderer = plot.scatter(
            "x",
            "y",
            source=source,
            view=CDSView(filter=GroupFilter(column_name="label_name", group=class_name)),
            marker=marker,
            size="size",
            fill_color=colors[c],
            fill_alpha=0.75,
            # misclassified points get a black edge
            line_color=factor_cmap("status", [colors[c], "black", colors[c]], list(STATUS_FACTORS)),
            line_alpha=0.9,
            hover_line_color="black",
            hover_fill_alpha=1.0,
            name=f"class_{c}",
        )
        renderers.append(renderer)
        items.append((class_name, [renderer]))
    legend = Legend(items=items, click_policy="hide", title="true label (click hides)", location="top_left")
    plot.add_layout(legend, "right")
    plot.add_tools(HoverTool(renderers=renderers, tooltips=TOOLTIP.format(px=thumb_px), point_policy="snap_to_data"))

    tables = quality_tables(quality_csv, maps, dataset)
    quality = Div(text=tables[first], width=330, name="quality")
    options = [(layer_key(e, layer), f"{e} / {layer}") for e, layer, _ in maps]
    select = Select(title="t-SNE map (extractor / layer)", value=first, options=options, width=330, name="layer")
    select.js_on_change(
        "value",
        CustomJS(
            args=dict(select=select, source=source, quality=quality, plot=plot, tables=tables, titles=titles),
            code=SWITCH_JS,
        ),
    )
    n_wrong = int((status == STATUS_FACTORS[1]).sum())
    note = Div(
        width=330,
        text=(
            f"<p style='font-size:12px'>{len(index)} test images of "
            f"<b>{html.escape(str(dataset or ''))}</b>, "
            f"{len(maps)} maps. Colour = true label; &#9650; with a black edge = misclassified by the "
            f"fine-tuned CNN ({n_wrong} points)"
            + ("" if (pred >= 0).any() else " (no predictions available)")
            + ". Hover a point for its image; each map is scaled to fit the frame.</p>"
        ),
    )
    return row(plot, column(select, quality, note))


def explorer_html(*args, title: str | None = None, **kwargs) -> str:
    """The whole page as one HTML string with inline BokehJS (no network needed)."""
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.models import CustomJS
    from bokeh.resources import INLINE

    document = Document()
    document.add_root(explorer_document(*args, **kwargs))
    dataset = kwargs.get("dataset")
    # When BokehJS finished the first render, for load-time measurements (bench/explorer.py, browser test).
    document.js_on_event("document_ready", CustomJS(code="window.embedscope_ready_ms = performance.now();"))
    return file_html(document, INLINE, title=title or f"embedscope explorer{': ' + dataset if dataset else ''}")


def build_explorer(
    output: str | os.PathLike,
    image_store: str | os.PathLike,
    maps: Sequence[tuple[str, str, str | os.PathLike]],
    quality_csv: str | os.PathLike | None = None,
    predictions_csv: str | os.PathLike | None = None,
    dataset: str | None = None,
) -> dict[str, int]:
    """Write the explorer page atomically (temp sibling + rename). Returns {"points", "maps", "bytes"}."""
    maps = [(str(e), str(layer), p) for e, layer, p in maps]
    text = explorer_html(image_store, maps, quality_csv=quality_csv, predictions_csv=predictions_csv, dataset=dataset)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    n_points = len(pd.read_csv(maps[0][2], usecols=["index"]))
    stats = {"points": n_points, "maps": len(maps), "bytes": output.stat().st_size}
    log.info("explorer %s: %d points x %d maps, %.1f MB", output, n_points, len(maps), stats["bytes"] / 1e6)
    return stats


def write_synthetic_inputs(
    folder: str | os.PathLike,
    n_points: int,
    maps: Sequence[tuple[str, str]],
    images: np.ndarray | None = None,
    n_classes: int = 10,
    n_train: int = 0,
    seed: int = 0,
    wrong_fraction: float = 0.1,
) -> dict[str, object]:
    """Small explorer inputs in the real on-disk formats, for tests and bench/explorer.py.

    Writes ``folder/data.zarr`` (``n_train`` train + ``n_points`` test images; ``images`` uint8 NHWC recycled,
    else random 28x28 digit-like blobs), one t-SNE csv per (extractor, layer) over the test split (clustered
    by class, a different layout per map; resnet18_finetuned csvs carry pred/prob), an embedding-quality csv
    and a predictions csv. Returns the keyword arguments of ``build_explorer`` (without ``output``).
    """
    from embedscope.store import write_image_store

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    total = n_train + n_points
    labels = np.arange(total) % n_classes
    rng.shuffle(labels)
    split = np.r_[np.zeros(n_train, np.uint8), np.ones(n_points, np.uint8)]
    if images is None:
        yy, xx = np.mgrid[:28, :28]
        centres = rng.uniform(8, 20, size=(total, 2))
        radius = 3 + labels[:, None, None] * 0.6
        dist = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
        images = (np.clip(1.5 - np.abs(dist - radius), 0, 1) * 255).astype(np.uint8)[..., None]
    else:
        images = np.asarray(images, dtype=np.uint8)[np.arange(total) % len(images)]
    names = [f"class {c}" for c in range(n_classes)]
    write_image_store(folder / "data.zarr", images, labels, split, names, attrs={"source": "synthetic"})

    index = np.flatnonzero(split == 1)
    test_labels = labels[index]
    wrong = rng.random(n_points) < wrong_fraction
    pred = np.where(wrong, (test_labels + 1 + rng.integers(0, n_classes - 1, n_points)) % n_classes, test_labels)
    prob = np.where(wrong, rng.uniform(0.3, 0.6, n_points), rng.uniform(0.7, 1.0, n_points))
    probs = np.full((n_points, n_classes), 0.0)
    probs[np.arange(n_points), pred] = prob
    predictions = pd.DataFrame(
        {
            "index": index,
            "label": test_labels,
            "pred": pred,
            "prob": prob,
            "loss": -np.log(probs[np.arange(n_points), test_labels] + 1e-6),
        }
    )
    for c in range(n_classes):
        predictions[f"prob_{c}"] = probs[:, c]
    predictions.to_csv(folder / "predictions.csv", index=False)

    triples, quality = [], []
    for m, (extractor, layer) in enumerate(maps):
        angle = 2 * np.pi * (test_labels + m) / n_classes
        spread = 0.3 + m * 0.05
        x = np.cos(angle) * (5 + m) + rng.normal(0, spread * 5, n_points)
        y = np.sin(angle) * (5 + m) + rng.normal(0, spread * 5, n_points)
        frame = pd.DataFrame({"index": index, "x": x, "y": y, "label": test_labels})
        if extractor == "resnet18_finetuned":
            frame["pred"], frame["prob"] = pred, prob
        path = folder / "tsne" / extractor / f"{layer}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        triples.append((extractor, layer, str(path)))
        quality.append(
            {
                "dataset": "synthetic",
                "extractor": extractor,
                "layer": layer,
                "D": 64 * (m + 1),
                "n": n_points,
                "trustworthiness": 0.9 + m / 1000,
                "knn_accuracy_2d": 0.5 + m / 100,
                "silhouette_features": 0.1 + m / 100,
                "silhouette_2d": 0.2 + m / 100,
                "ncc_accuracy": 0.6 + m / 100,
                "nc1": 3.0 - m / 10,
            }
        )
    pd.DataFrame(quality, columns=list(QUALITY_COLUMNS)).to_csv(folder / "embedding_quality.csv", index=False)
    return {
        "image_store": str(folder / "data.zarr"),
        "maps": triples,
        "quality_csv": str(folder / "embedding_quality.csv"),
        "predictions_csv": str(folder / "predictions.csv"),
        "dataset": "synthetic",
    }
