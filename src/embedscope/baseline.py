"""The report's non-learned baseline (section 2, Figure 1): nearest class-mean image under L1 or L2."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from embedscope.artifacts import BASELINE_COLUMNS, save_figure, write_table
from embedscope.intervals import add_intervals
from embedscope.store import iter_image_chunks, open_complete

DISTANCES = ("l1", "l2")


class ClassMeans:
    """Per-class sums (float64) and counts, accumulated block by block of rows; :meth:`means` divides.

    Images are uint8, so every sum is a whole number far below 2**53 and exact in float64: the means do not
    depend on how the rows were split into blocks."""

    def __init__(self, n_classes: int):
        self.n_classes = int(n_classes)
        self.sums: np.ndarray | None = None
        self.counts = np.zeros(self.n_classes, dtype=np.int64)

    def add(self, block: np.ndarray, labels: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float64)
        labels = np.asarray(labels)
        if self.sums is None:
            self.sums = np.zeros((self.n_classes, *block.shape[1:]), dtype=np.float64)
        for c in np.unique(labels):
            members = block[labels == c]
            self.sums[c] += members.sum(axis=0)
            self.counts[c] += len(members)

    def means(self) -> np.ndarray:
        """Mean image of each class, float64 (C, H, W, channels); a class with no image is an error."""
        empty = np.flatnonzero(self.counts == 0)
        if len(empty) or self.sums is None:
            raise ValueError(f"class {int(empty[0]) if len(empty) else 0} has no training image, so it has no mean")
        return self.sums / self.counts.reshape(-1, *([1] * (self.sums.ndim - 1)))


def class_mean_images(images: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean image (or feature vector) of each class, float64 (C, ...); a class with no member is an error."""
    accumulator = ClassMeans(n_classes)
    accumulator.add(images, np.asarray(labels))
    return accumulator.means()


def nearest_class_mean(images: np.ndarray, means: np.ndarray, distance: str = "l1") -> np.ndarray:
    """Predict the class whose mean image is nearest (L1 = sum of absolute pixel differences)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    m = means.reshape(len(means), -1)
    if distance == "l1":
        # Row by row keeps memory at one (C, pixels) block instead of (N, C, pixels).
        dist = np.stack([np.abs(m - row).sum(axis=1) for row in x]) if len(x) else np.empty((0, len(m)))
    elif distance == "l2":
        dist = (x**2).sum(1)[:, None] - 2 * x @ m.T + (m**2).sum(1)[None, :]
    else:
        raise ValueError(f"distance must be 'l1' or 'l2', got {distance!r}")
    return np.argmin(dist, axis=1)


def baseline_table(labels_test: np.ndarray, predictions: dict[str, np.ndarray], n_classes: int) -> pd.DataFrame:
    """One row per distance: accuracy and macro F1 of its nearest-class-mean predictions."""
    rows = []
    for distance, pred in predictions.items():
        rows.append({
            "method": "nearest_class_mean",
            "distance": distance,
            "accuracy": accuracy_score(labels_test, pred),
            "macro_f1": f1_score(labels_test, pred, average="macro", labels=np.arange(n_classes), zero_division=0),
            "n_test": len(labels_test),
        })
    return pd.DataFrame(rows)


def streamed_baseline(image_store, n_classes: int, distances=DISTANCES):
    """(class means, test labels, {distance: predictions}) read chunk by chunk from the image store: the
    train split's per-class sums, then the test split scored one chunk at a time, so that no more than one
    chunk of rows is ever held in float64."""
    accumulator = ClassMeans(n_classes)
    for images, labels in iter_image_chunks(image_store, "train"):
        accumulator.add(images, labels)
    means = accumulator.means()
    labels_test, predictions = [], {d: [] for d in distances}
    for images, labels in iter_image_chunks(image_store, "test"):
        labels_test.append(labels)
        for distance in distances:
            predictions[distance].append(nearest_class_mean(images, means, distance))
    joined = {d: np.concatenate(p) if p else np.empty(0, np.int64) for d, p in predictions.items()}
    return means, np.concatenate(labels_test) if labels_test else np.empty(0, np.int64), joined


def class_means_figure(means: np.ndarray, class_names, title: str):
    """The report's Figure 1: class means in a grid of two columns (5x2 for ten classes)."""
    from matplotlib.figure import Figure

    n = len(means)
    rows = (n + 1) // 2
    fig = Figure(figsize=(4.4, 1.9 * rows + 0.5))
    axes = fig.subplots(rows, 2, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        image = means[i]
        cmap = "gray" if image.shape[-1] == 1 else None
        image = image[..., 0] if image.shape[-1] == 1 else image / 255.0
        ax.imshow(image, cmap=cmap)
        ax.set_title(class_names[i], fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def compute_baseline(image_store, metrics_csv, class_means_png, dataset: str = "", dpi: int = 100) -> pd.DataFrame:
    """Class means of the train split, L1/L2 nearest-mean accuracy on the test split, and Figure 1."""
    attrs = open_complete(image_store).attrs
    class_names = list(attrs["class_names"])
    means, y_test, predictions = streamed_baseline(image_store, len(class_names))
    table = baseline_table(y_test, predictions, len(class_names))
    table.insert(0, "dataset", dataset)
    table = add_intervals(table, {"accuracy": "n_test"})
    write_table(table[list(BASELINE_COLUMNS)], metrics_csv)
    n_train = sum(attrs["counts"]["train"].values())
    l1 = table.loc[table.distance == "l1", "accuracy"].item()
    title = (f"{dataset}: class means of {n_train} training images\n"
             f"L1 nearest-class-mean accuracy {l1:.3f} on {len(y_test)} test images")
    save_figure(class_means_figure(means, class_names, title), class_means_png, dpi)
    return table
