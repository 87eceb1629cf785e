"""Figures: each writes a PNG of the expected pixel size, not blank, the same pixels for the same input,
with no overlapping text; the thumbnail canvas puts thumbnails where the coordinates say."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Annotation, Text
from PIL import Image

from embedscope import figures
from embedscope.artifacts import (
    CLASSIFIER_COLUMNS,
    EMBEDDING_COLUMNS,
    ArtifactError,
    read_predictions,
    read_training_log,
    read_tsne,
    read_tsne_meta,
    write_predictions,
    write_table,
    write_training_log,
    write_tsne,
)
from embedscope.intervals import add_intervals
from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.metrics import CLASSIFIERS
from embedscope.store import write_image_store

CLASSES = [str(i) for i in range(10)]
N_IMAGES = 120


def digit_like_images(n, rng):
    """28x28 grayscale images: a bright bar whose position depends on the class, plus noise."""
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28, 1)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 4 + 2 * c : 7 + 2 * c, 4:24, 0] = 255
        images[i, 4:24, 12:15, 0] = 180
    return images, labels


def write_metric_tables(root, rng):
    """classifiers.csv and embedding_quality.csv of the three extractors, numbers drawn at random."""
    sets = [("pixels", "pixels")] + [(e, layer) for e, layers in EXTRACTOR_LAYERS.items() for layer in layers]
    scores = {c: rng.uniform(0.5, 1.0) for c in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
    rows = [{"dataset": "toy", "features": f, "layer": layer, "D": 64, "classifier": c, **scores,
             "fit_seconds": 0.1} for f, layer in sets for c in CLASSIFIERS]
    rows += [{**rows[0], "classifier": c, "accuracy": a} for c, a in (("class_mean_l1", 0.8), ("cnn", 0.97))]
    write_table(add_intervals(pd.DataFrame(rows, columns=CLASSIFIER_COLUMNS), {"accuracy": 40}),
                root / "classifiers.csv")
    quality = [{"dataset": "toy", "extractor": e, "layer": layer, "D": 64, "n": 40, "n_test": 40,
                **{c: rng.uniform(0.1, 1.0) for c in EMBEDDING_COLUMNS[6:]}} for e, layer in sets[1:]]
    quality = add_intervals(pd.DataFrame(quality, columns=EMBEDDING_COLUMNS),
                            {"knn_accuracy_2d": "n", "ncc_accuracy": "n_test"})
    write_table(quality, root / "embedding_quality.csv")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    rng = np.random.default_rng(0)
    images, labels = digit_like_images(N_IMAGES, rng)
    split = (np.arange(N_IMAGES) % 3 == 0).astype(np.uint8)  # every third image is a test image
    store = root / "data.zarr"
    write_image_store(store, images, labels, split, CLASSES, {"source": "synthetic"})
    test_index = np.flatnonzero(split == 1)
    test_labels = labels[test_index]
    pred = test_labels.copy()
    pred[::7] = (pred[::7] + 3) % 10
    angle = test_labels * 2 * np.pi / 10
    tsne = pd.DataFrame({"index": test_index, "x": 10 * np.cos(angle) + rng.normal(0, 1, len(test_index)),
                         "y": 10 * np.sin(angle) + rng.normal(0, 1, len(test_index)), "label": test_labels,
                         "pred": pred, "prob": rng.uniform(0.3, 1.0, len(test_index))})
    meta = {"n": len(tsne), "dim": 512, "dim_tsne_input": 50, "method": "opentsne", "perplexity": 15.0,
            "weights": "random", "class_names": CLASSES, "compute": COMPUTE}
    write_tsne(root / "layer4.csv", tsne, root / "layer4.json", meta)
    # half a random distribution, half the (sometimes wrong) prediction: the argmax is `pred`
    probs = 0.5 * rng.dirichlet(np.ones(10), size=len(test_index)) + 0.5 * np.eye(10)[pred]
    loss = -np.log(probs[np.arange(len(test_index)), test_labels])
    write_predictions(root / "predictions.csv", test_index, test_labels, probs, loss)
    rows, step = [], 0
    for stage, epochs, peaks in ((1, 2, [3e-3] * 3), (2, 2, [1e-4, 3e-4, 1e-3])):
        for epoch in range(epochs):
            for _ in range(6):
                scale = 0.5 + 0.5 * np.sin(np.pi * (step % 12) / 12)
                rows.append({"kind": "step", "stage": stage, "epoch": epoch, "step": step,
                             **{f"lr_{g}": p * scale for g, p in enumerate(peaks)},
                             "train_loss": 2.3 * np.exp(-step / 8) + 0.05})
                step += 1
            rows.append({"kind": "epoch", "stage": stage, "epoch": epoch, "step": step - 1,
                         "train_loss": 2.3 * np.exp(-step / 8), "test_loss": 2.0 * np.exp(-step / 9) + 0.1,
                         "test_accuracy": 1 - np.exp(-step / 6)})
    write_training_log(root / "training_log.csv", rows, n_groups=3)
    write_metric_tables(root, rng)
    return root


COMPUTE = {"device": "cuda", "device_name": "NVIDIA H200", "precision": "fp32", "torch": "2.5.1", "cuda": "12.4",
           "tf32_matmul": False, "tf32_cudnn": True, "threads": 8}
FOOTER = "features computed on cuda (NVIDIA H200), fp32 (TF32 allowed), torch 2.5.1, CUDA 12.4"


def decoded(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def check_png(path_a, path_b, size):
    a, b = decoded(path_a), decoded(path_b)
    assert (a.shape[1], a.shape[0]) == size, f"{path_a.name}: {a.shape[1]}x{a.shape[0]} px, expected {size}"
    assert a.astype(np.float64).var() > 100.0, f"{path_a.name} looks blank"
    assert np.array_equal(a, b), f"{path_a.name}: two renders of the same input differ"


def tsne_kwargs(files):
    return dict(dataset="toy", extractor="resnet18_finetuned", layer="layer4", dpi=60)


def render_twice(tmp_path, name, plot, *args, **kwargs):
    outs = [tmp_path / f"a_{name}.png", tmp_path / f"b_{name}.png"]
    for out in outs:
        plot(*args, out, **kwargs)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    return outs


def test_tsne_scatter(files, tmp_path):
    outs = render_twice(tmp_path, "tsne", figures.plot_tsne, files / "layer4.csv", files / "layer4.json",
                        **tsne_kwargs(files))
    check_png(*outs, (11 * 60, 9 * 60))


def test_tsne_thumbs(files, tmp_path):
    outs = render_twice(tmp_path, "thumbs", figures.plot_tsne_thumbs, files / "layer4.csv", files / "layer4.json",
                        files / "data.zarr", thumbnail_size=12, **tsne_kwargs(files))
    side = figures.thumbnail_canvas_px(40, 12)
    check_png(*outs, (side + 192, side + 78))  # canvas + (2.8 + 0.4) in and (1.1 + 0.2) in at 60 dpi
    pixels = decoded(outs[0])
    red = (pixels[..., 0] > 240) & (pixels[..., 1] < 20) & (pixels[..., 2] < 20)
    assert red.sum() > 6 * 4 * 12  # six misclassified points, framed


def test_tsne_layers(files, tmp_path):
    csv, meta = files / "layer4.csv", files / "layer4.json"
    outs = render_twice(tmp_path, "layers", figures.plot_tsne_layers, [csv] * 5, [meta] * 5,
                        dataset="toy", extractor="resnet18", layers=["a", "b", "c", "d", "e"], dpi=60)
    check_png(*outs, (round((4.2 * 4 + 2.2) * 60), round((4.2 * 2 + 1.2) * 60)))


def test_activations_random_resnet(files, tmp_path):
    outs = render_twice(tmp_path, "act", figures.plot_activations, files / "data.zarr", dataset="toy",
                        extractor="resnet18", layer="layer1", position=3, weights="random", dpi=60)
    check_png(*outs, (600, 660))
    with pytest.raises(ValueError, match="figures.activation_image"):
        figures.plot_activations(files / "data.zarr", tmp_path / "x.png", dataset="toy", extractor="resnet18",
                                 layer="conv1", position=10_000)


def test_activation_maps_of_a_body():
    from embedscope.layers import BODY_LAYERS
    from embedscope.resnet import body_of, build_resnet18

    body = body_of(build_resnet18("random"))
    image = np.zeros((28, 28, 1), dtype=np.uint8)
    image[8:20, 12:16] = 255
    maps = figures.activation_maps(body, image)
    assert list(maps) == list(BODY_LAYERS)
    assert maps["conv1"].shape == (64, 14, 14) and maps["layer4"].shape == (512, 1, 1)
    assert maps["bn1"].min() < 0 <= maps["relu"].min()  # bn1 copied before the in-place ReLU ran
    fig = figures.draw_activation_grid(maps["layer2"], "toy · layer2")
    assert len(fig.axes) == 64


def test_activations_finetuned_checkpoint(files, tmp_path):
    import torch

    from embedscope import finetune

    model = finetune.FinetunedResNet18(10, "random")
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "class_names": CLASSES}, path)
    out = tmp_path / "ft.png"
    figures.plot_activations(files / "data.zarr", out, dataset="toy", extractor="resnet18_finetuned",
                             layer="conv1", position=0, model_path=path, dpi=60)
    assert decoded(out).shape == (660, 600, 3)


def test_activation_input(files, tmp_path):
    outs = render_twice(tmp_path, "input", figures.plot_activation_input, files / "data.zarr", dataset="toy",
                        position=2, dpi=60)
    check_png(*outs, (300, 348))


def test_training_plots(files, tmp_path):
    for name in ("a", "b"):
        figures.plot_training(files / "training_log.csv", tmp_path / f"{name}_loss.png",
                              tmp_path / f"{name}_lr.png", dataset="toy", dpi=60)
    check_png(tmp_path / "a_loss.png", tmp_path / "b_loss.png", (660, 360))
    check_png(tmp_path / "a_lr.png", tmp_path / "b_lr.png", (660, 360))
    bad = tmp_path / "bad.csv"
    write_training_log(bad, [{"kind": "epoch", "stage": 1, "epoch": 0, "step": 0, "lr_0": 1e-3, "train_loss": 1.0,
                              "test_loss": 1.0, "test_accuracy": 0.5}], n_groups=1)
    with pytest.raises(ArtifactError, match="bad.csv has no step rows"):
        figures.plot_training(bad, tmp_path / "l.png", tmp_path / "r.png", dataset="toy")


def test_top_losses(files, tmp_path):
    outs = render_twice(tmp_path, "top", figures.plot_top_losses, files / "predictions.csv", files / "data.zarr",
                        dataset="toy", dpi=60)
    check_png(*outs, (600, 690))


def test_confusion(files, tmp_path):
    outs = render_twice(tmp_path, "conf", figures.plot_confusion, files / "predictions.csv", files / "data.zarr",
                        dataset="toy", dpi=60)
    check_png(*outs, (540, 510))
    counts = figures.confusion_counts([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert counts.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_metric_plots(files, tmp_path):
    for name in ("a", "b"):
        figures.plot_metrics(files / "classifiers.csv", files / "embedding_quality.csv", tmp_path / f"{name}_acc.png",
                             tmp_path / f"{name}_depth.png", dataset="toy", dpi=60, weights="random")
    n_sets, n_layers = 14, 13  # pixels + 13 layers; 13 layers
    check_png(tmp_path / "a_acc.png", tmp_path / "b_acc.png", (round((0.45 * n_sets + 2) * 60), round(4.2 * 60)))
    check_png(tmp_path / "a_depth.png", tmp_path / "b_depth.png", (round((0.45 * n_layers + 2) * 60), round(5.5 * 60)))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_accuracy_plots_draw_the_intervals():
    table = add_intervals(pd.DataFrame({
        "dataset": "toy", "features": ["pixels", "scattering", "pixels", "pixels"],
        "layer": ["pixels", "scattering", "pixels", "pixels"], "D": 4,
        "classifier": ["logreg", "logreg", "class_mean_l1", "cnn"], "accuracy": [0.5, 0.9, 0.6, 0.95],
        "macro_precision": 0.5, "macro_recall": 0.5, "macro_f1": 0.5, "fit_seconds": 0.1}), {"accuracy": 20})
    errors = figures.interval_errors(table, "accuracy")
    assert np.allclose(errors, [table["accuracy"] - table["accuracy_low"], table["accuracy_high"] - table["accuracy"]])
    assert figures.interval_errors(table, "macro_f1") is None
    assert figures.interval_errors(table.assign(accuracy_low=np.nan), "accuracy")[0].tolist() == [0.0] * 4
    ax = figures.draw_accuracy_by_layer(table, CLASSIFIERS, "toy").axes[0]
    # one line (and error bar) per feature set of logreg: pixels, then scattering
    segments = [seg for c in ax.containers if type(c).__name__ == "ErrorbarContainer"
                for seg in c.lines[2][0].get_segments()]
    assert np.allclose([s[:, 1] for s in segments], table[["accuracy_low", "accuracy_high"]].to_numpy()[:2])
    # the baseline's and the CNN's interval bands, in data coordinates
    bands = [(p.get_y(), p.get_y() + p.get_height()) for p in ax.patches]
    assert np.allclose(bands, table[["accuracy_low", "accuracy_high"]].to_numpy()[2:])


def test_compose_canvas_places_and_frames():
    thumbs = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    canvas = figures.compose_thumbnail_canvas(np.array([[0.0, 0.0], [1.0, 1.0]]), thumbs, 40, pad=2,
                                              frame=np.array([False, True]))
    dark = np.argwhere(canvas.sum(-1) < 30)
    assert dark.min(0).tolist() == [34, 2]  # (0, 0): bottom left
    assert np.array_equal(canvas[2, 34], [255, 0, 0])  # (1, 1): top right, framed in red
    assert canvas.shape == (40, 40, 3)


def visible_texts(fig):
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        axes = text.axes
        if axes is not None and text in axes.get_xticklabels() + axes.get_yticklabels():
            lo, hi = sorted(axes.get_xlim() if text in axes.get_xticklabels() else axes.get_ylim())
            loc = text.get_position()[0 if text in axes.get_xticklabels() else 1]
            if not lo <= loc <= hi:
                continue
        boxes.append((text.get_text(), text.get_window_extent(renderer)))
    return boxes


def assert_no_overlap(fig, ignore_cells=False):
    boxes = visible_texts(fig)
    if ignore_cells:  # confusion-matrix cell numbers sit inside their own cells
        boxes = [b for b in boxes if not b[0].isdigit() or len(b[0]) > 3]
    for (ta, a), (tb, b) in combinations(boxes, 2):
        assert not a.overlaps(b) or a.width * a.height == 0 or b.width * b.height == 0, f"{ta!r} overlaps {tb!r}"


def test_no_overlapping_text(files):
    table = read_tsne(files / "layer4.csv")
    meta = read_tsne_meta(files / "layer4.json")
    title = figures.tsne_title("toy", "resnet18_finetuned", "head_hidden", meta)
    assert "toy" in title and "head_hidden" in title and "N=40" in title and "D=512" in title
    assert "random" in title
    footer = figures.tsne_footer(meta)
    assert footer == FOOTER
    for fig in (figures.draw_tsne(table, CLASSES, title, footer),
                figures.draw_tsne_layers([table] * 4, list("abcd"), [1, 2, 3, 4], CLASSES, title, footer),
                figures.draw_tsne_thumbs(table, np.zeros((len(table), 28, 28, 1), np.uint8), CLASSES, title, 12, 60,
                                         footer)):
        assert FOOTER in [text for text, _ in visible_texts(fig)]
        assert_no_overlap(fig)
    steps, epochs, lrs = read_training_log(files / "training_log.csv")
    assert_no_overlap(figures.draw_training_loss(steps, epochs, "toy: loss\nsecond line"))
    assert_no_overlap(figures.draw_training_lr(steps, lrs, "toy: lr\nsecond line"))
    preds = read_predictions(files / "predictions.csv").head(9)
    images = np.zeros((9, 28, 28, 1), dtype=np.uint8)
    assert_no_overlap(figures.draw_top_losses(preds, images, CLASSES, "toy: top losses"))
    counts = figures.confusion_counts(preds["label"], preds["pred"], 10)
    assert_no_overlap(figures.draw_confusion(counts, CLASSES, "toy: confusion\nline two"), ignore_cells=True)


def test_cka_heatmap(tmp_path):
    from embedscope.artifacts import CKA_COLUMNS, write_table

    sets = [("pixels", "pixels", 36), ("resnet18", "conv1", 64), ("resnet18", "layer1", 64),
            ("resnet18_finetuned", "layer4", 512)]
    matrix = np.array([[1.0, 0.4, 0.3, np.nan], [0.4, 1.0, 0.9, np.nan], [0.3, 0.9, 1.0, np.nan],
                       [np.nan, np.nan, np.nan, np.nan]])
    rows = [{"dataset": "toy", "features_a": fa, "layer_a": la, "D_a": da, "features_b": fb, "layer_b": lb,
             "D_b": db, "n": 50, "cka": matrix[i, j]}
            for i, (fa, la, da) in enumerate(sets) for j, (fb, lb, db) in enumerate(sets)]
    csv = tmp_path / "cka.csv"
    write_table(pd.DataFrame(rows, columns=CKA_COLUMNS), csv)
    outs = render_twice(tmp_path, "cka", figures.plot_cka, csv, dataset="toy", dpi=60, weights="random")
    check_png(*outs, (round(7.2 * 60), 6 * 60))  # 4 sets: the 6-inch minimum, plus 1.2 for the colour bar
    fig = figures.draw_cka([s[:2] for s in sets], matrix, "title", {"resnet18": "resnet18 (random)"})
    # a block label above and beside each extractor of several layers or a label of its own; none for pixels
    blocks = [a.get_text() for a in fig.findobj(Annotation)]
    assert blocks == ["resnet18 (random)", "resnet18\n(random)", "resnet18_finetuned", "resnet18_finetuned"]
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert texts.count("0.90") == 2 and "nan" not in texts  # values in the cells, NaN cells left blank
