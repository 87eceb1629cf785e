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

from embedscope.artifacts import (
    ArtifactError,
    first_replicate,
    read_embedding_quality,
    read_predictions,
    read_tsne,
    write_text,
)
from embedscope.intervals import HIGH, LOW
from embedscope.store import read_image_index, read_image_rows

log = logging.getLogger("embedscope.explorer")

QUALITY_LABELS = {
    "D": "feature dimension D",
    "n": "points n",
    "n_test": "test images (nearest class centre)",
    "n_quality": "points of trustworthiness and silhouettes",
    "trustworthiness": "t-SNE trustworthiness",
    "knn_accuracy_2d": "kNN accuracy in the 2-D map [95% interval]",
    "silhouette_features": "silhouette (features)",
    "silhouette_2d": "silhouette (2-D map)",
    "ncc_accuracy": "nearest class centre accuracy [95% interval]",
    "nc1": "NC1 (within/between class variability)",
}
COUNT_COLUMNS = ("D", "n", "n_test", "n_quality")  # shown as whole numbers; the other columns to 3 decimals
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


class ExplorerError(ArtifactError):
    """Inputs of the explorer that are each well-formed but disagree with one another or with the image store."""


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
        frame = read_tsne(path).set_index("index", drop=False)
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
        source = read_predictions(predictions_csv).set_index("index")
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


def quality_labels(trustworthiness_k: int | None = None) -> dict[str, str]:
    """Column -> the label the quality table shows; trustworthiness names its k (metrics.trustworthiness_k)."""
    labels = dict(QUALITY_LABELS)
    if trustworthiness_k is not None:
        labels["trustworthiness"] += f" (k={int(trustworthiness_k)})"
    return labels


def quality_value(row: pd.Series, column: str) -> str:
    """One quality number as the page shows it: counts whole, the rest to 3 decimals, and an accuracy with
    its 95% interval (``<column>_low``/``_high`` of the table, where present and not NaN) in brackets."""
    if column in COUNT_COLUMNS:
        return f"{int(row[column])}"
    text = f"{float(row[column]):.3f}"
    low, high = row.get(column + LOW), row.get(column + HIGH)
    if low is not None and high is not None and pd.notna(low) and pd.notna(high):
        text += f" [{float(low):.3f}, {float(high):.3f}]"
    return text


def quality_tables(
    quality_csv: str | os.PathLike | None, maps: Sequence[tuple[str, str, object]], dataset: str | None,
    trustworthiness_k: int | None = None,
) -> dict[str, str]:
    """key -> an HTML table of that layer's embedding-quality numbers ('n/a' where there is no row)."""
    frame = None
    if quality_csv is not None:
        # Only the keys are required: a column the table lacks is shown as "n/a".
        frame = first_replicate(read_embedding_quality(quality_csv, columns=("extractor", "layer")))
        if dataset is not None and "dataset" in frame.columns:
            frame = frame[frame["dataset"].astype(str) == str(dataset)]
    tables = {}
    for extractor, layer, _ in maps:
        row = None
        if frame is not None:
            rows = frame[(frame["extractor"] == extractor) & (frame["layer"] == layer)]
            row = rows.iloc[0] if len(rows) else None
        lines = [f"<b>{html.escape(extractor)} / {html.escape(layer)}</b>", "<table style='font-size:13px'>"]
        for column, label in quality_labels(trustworthiness_k).items():
            value = "n/a"
            if row is not None and column in row.index and pd.notna(row[column]):
                value = quality_value(row, column)
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


def checked_points(reference: pd.DataFrame, images, image_store, first_csv) -> tuple[np.ndarray, np.ndarray]:
    """(sample index, label) of the maps' points, checked against the image store's labels (``images``: its
    :class:`~embedscope.store.ImageIndex`)."""
    index = reference["index"].to_numpy(dtype=np.int64)
    if index.min() < 0 or index.max() >= len(images.labels):
        raise ExplorerError(
            f"t-SNE csv {first_csv}: sample indices must lie in 0..{len(images.labels) - 1} "
            f"(the image store {image_store})"
        )
    labels = reference["label"].to_numpy(dtype=np.int64)
    if not np.array_equal(labels, images.labels[index]):
        raise ExplorerError(f"t-SNE csv {first_csv}: column 'label' disagrees with the image store {image_store}")
    return index, labels


def point_columns(
    class_names: Sequence[str],
    pixels: np.ndarray,
    index: np.ndarray,
    labels: np.ndarray,
    pred: np.ndarray,
    prob: np.ndarray,
    frames: Mapping[str, pd.DataFrame],
) -> dict[str, object]:
    """The ColumnDataSource columns: one row per point (misclassified last, so drawn on top within their
    class), its thumbnail (from ``pixels``, the points' images in ``index`` order), names and status, and an
    ``x__{key}``/``y__{key}`` pair per map scaled to [-1, 1]."""
    class_names = list(class_names)
    status = np.where(pred < 0, STATUS_FACTORS[2], np.where(pred == labels, STATUS_FACTORS[0], STATUS_FACTORS[1]))
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
        "thumb": [png_data_uri(pixels[i]) for i in order],
    }
    for key, frame in frames.items():
        x, y = scale_unit(frame["x"].to_numpy(), frame["y"].to_numpy())
        data[f"x__{key}"], data[f"y__{key}"] = x[order], y[order]
    first = next(iter(frames))
    data["x"], data["y"] = data[f"x__{first}"], data[f"y__{first}"]
    return data


def map_plot(source, class_names: Sequence[str], title: str, thumb_px: int):
    """The scatter of the plotted ``x``/``y``: one renderer per class (legend click hides it), misclassified
    points as black-edged triangles, a hover tooltip with the thumbnail."""
    from bokeh.models import CDSView, GroupFilter, HoverTool, Legend, Range1d
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap, factor_mark

    plot = figure(
        title=title,
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
    return plot


def side_panel(plot, source, maps: Sequence[tuple[str, str, object]], tables: Mapping[str, str],
               titles: Mapping[str, str], note: str):
    """The layer menu (its CustomJS swaps coordinates, quality table and title), the quality table, a note."""
    from bokeh.layouts import column
    from bokeh.models import CustomJS, Div, Select

    first = layer_key(*maps[0][:2])
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
    return column(select, quality, Div(width=330, text=note))


def explorer_document(
    image_store: str | os.PathLike,
    maps: Sequence[tuple[str, str, str | os.PathLike]],
    quality_csv: str | os.PathLike | None = None,
    predictions_csv: str | os.PathLike | None = None,
    dataset: str | None = None,
    thumb_px: int = 84,
    trustworthiness_k: int | None = None,
):
    """The Bokeh layout of the page (module doc); ``maps``: (extractor, layer, t-SNE csv) in menu order.

    Of the image store only the labels and the maps' points' images are read (orthogonal indexing, so only
    the chunks that hold a point), never the whole store."""
    from bokeh.layouts import row
    from bokeh.models import ColumnDataSource

    images = read_image_index(image_store)
    reference, frames = load_maps(maps)
    index, labels = checked_points(reference, images, image_store, maps[0][2])
    pred, prob = predictions_for(index, predictions_csv, frames)
    pixels = read_image_rows(image_store, index)
    source = ColumnDataSource(point_columns(images.class_names, pixels, index, labels, pred, prob, frames),
                              name="points")
    del pixels
    prefix = f"{dataset}: " if dataset else ""
    titles = {layer_key(e, layer): f"{prefix}t-SNE of {e} / {layer} ({len(index)} points)" for e, layer, _ in maps}
    plot = map_plot(source, list(images.class_names), titles[layer_key(*maps[0][:2])], thumb_px)
    n_wrong = int(((pred >= 0) & (pred != labels)).sum())
    note = (
        f"<p style='font-size:12px'>{len(index)} test images of <b>{html.escape(str(dataset or ''))}</b>, "
        f"{len(maps)} maps. Colour = true label; &#9650; with a black edge = misclassified by the "
        f"fine-tuned CNN ({n_wrong} points)"
        + ("" if (pred >= 0).any() else " (no predictions available)")
        + ". Hover a point for its image; each map is scaled to fit the frame.</p>"
    )
    tables = quality_tables(quality_csv, maps, dataset, trustworthiness_k)
    return row(plot, side_panel(plot, source, maps, tables, titles, note))


def explorer_html(layout, dataset: str | None = None, title: str | None = None) -> str:
    """The page of ``layout`` as one HTML string with inline BokehJS (no network needed)."""
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.models import CustomJS
    from bokeh.resources import INLINE

    document = Document()
    document.add_root(layout)
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
    trustworthiness_k: int | None = None,
) -> dict[str, int]:
    """Write the explorer page (atomically). Returns {"points", "maps", "bytes"}; ``trustworthiness_k`` (the
    metrics.trustworthiness_k the quality table was computed with) labels its trustworthiness row."""
    maps = [(str(e), str(layer), p) for e, layer, p in maps]
    layout = explorer_document(image_store, maps, quality_csv=quality_csv, predictions_csv=predictions_csv,
                               dataset=dataset, trustworthiness_k=trustworthiness_k)
    write_text(output, explorer_html(layout, dataset))
    n_points = len(layout.select_one({"name": "points"}).data["index"])
    stats = {"points": n_points, "maps": len(maps), "bytes": Path(output).stat().st_size}
    log.info("explorer %s: %d points x %d maps, %.1f MB", output, n_points, len(maps), stats["bytes"] / 1e6)
    return stats
