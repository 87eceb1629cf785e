"""The report's non-learned baseline (section 2, Figure 1): nearest class-mean image under L1 or L2."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from embedscope.artifacts import BASELINE_COLUMNS, save_figure, write_table
from embedscope.store import read_image_store


def class_mean_images(images: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean image of each class, float64 (C, H, W, channels); a class with no image is an error."""
    images = np.asarray(images, dtype=np.float64)
    means = np.empty((n_classes, *images.shape[1:]), dtype=np.float64)
    for c in range(n_classes):
        members = images[labels == c]
        if len(members) == 0:
            raise ValueError(f"class {c} has no training image, so it has no mean")
        means[c] = members.mean(axis=0)
    return means


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


def baseline_table(images_train, labels_train, images_test, labels_test, n_classes) -> pd.DataFrame:
    means = class_mean_images(images_train, labels_train, n_classes)
    rows = []
    for distance in ("l1", "l2"):
        pred = nearest_class_mean(images_test, means, distance)
        rows.append({
            "method": "nearest_class_mean",
            "distance": distance,
            "accuracy": accuracy_score(labels_test, pred),
            "macro_f1": f1_score(labels_test, pred, average="macro", labels=np.arange(n_classes), zero_division=0),
            "n_test": len(labels_test),
        })
    return pd.DataFrame(rows)


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
    data = read_image_store(image_store)
    x_train, y_train, _ = data.subset("train")
    x_test, y_test, _ = data.subset("test")
    n_classes = len(data.class_names)
    table = baseline_table(x_train, y_train, x_test, y_test, n_classes)
    table.insert(0, "dataset", dataset)
    write_table(table[list(BASELINE_COLUMNS)], metrics_csv)
    means = class_mean_images(x_train, y_train, n_classes)
    l1 = table.loc[table.distance == "l1", "accuracy"].item()
    title = (f"{dataset}: class means of {len(y_train)} training images\n"
             f"L1 nearest-class-mean accuracy {l1:.3f} on {len(y_test)} test images")
    save_figure(class_means_figure(means, data.class_names, title), class_means_png, dpi)
    return table
