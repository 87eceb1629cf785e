"""The real DAG on non-default sources: a tiny generated CIFAR-10 (torchvision's pickle batches in
cifar-10-python.tar.gz) through `rule all` with every extractor, a folder of generated PNGs (imagefolder)
through the scattering features, the classifier table and the class-mean figure, and an image folder (a 16-bit PNG
and a file of another suffix among its files) whose added or removed files rerun ingest and what depends on it,
and nothing when nothing changed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_snakemake, write_config
from PIL import Image, ImageDraw

from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.store import layer_names, load_features, read_image_store
from embedscope.synthetic import CIFAR10_CLASSES, write_cifar10_raw, write_imagefolder, write_png

pytestmark = pytest.mark.e2e

# 80 train + 50 test images of 3x32x32 (seed 0: every class has 5..11 train and 2..8 test images).
CIFAR_TRAIN, CIFAR_TEST = 80, 50
SCATTERING_D = 3 * 81 * 8 * 8  # per channel: 1 + J*L + L^2*J(J-1)/2 = 81 maps of 32/2^J = 8 x 8 (J=2, L=8)
# On a hundred images threads buy nothing, and a rule asking for more than one runs alone on 2 cores: one thread
# each lets two of the ~70 short jobs (most of their time is Python and torch starting) run side by side.
ONE_THREAD = ["--set-threads", *(f"{rule}=1" for rule in (
    "extract_features", "finetune_resnet18", "embed_tsne", "evaluate_classifiers",
    "evaluate_embeddings"))]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

# What the seeded run gives on the CPU, one thread per job: correct predictions of the 50 test images by
# (logreg, random_forest, knn) on each feature set, and trustworthiness (k = 10) of each layer's map. Every
# classifier row and every map is compared, so a change anywhere between the archive and the tables shows.
CIFAR_CORRECT = {
    ("pixels", "pixels"): (50, 19, 50),
    ("scattering", "scattering"): (50, 10, 50),
    ("resnet18", "conv1"): (33, 17, 24),
    ("resnet18", "bn1"): (33, 17, 24),
    ("resnet18", "relu"): (37, 18, 23),
    ("resnet18", "maxpool"): (36, 13, 24),
    ("resnet18", "layer1"): (30, 16, 19),
    ("resnet18", "layer2"): (26, 8, 15),
    ("resnet18", "layer3"): (29, 12, 23),
    ("resnet18", "layer4"): (22, 7, 18),
    ("resnet18_finetuned", "layer4"): (16, 7, 16),
    ("resnet18_finetuned", "head_pool"): (18, 6, 16),
    ("resnet18_finetuned", "head_hidden"): (11, 12, 15),
    ("resnet18_finetuned", "softmax"): (8, 10, 9),
}
CIFAR_OTHER_CORRECT = {("pixels", "pixels", "class_mean_l1"): 50, ("pixels", "pixels", "class_mean_l2"): 50,
                       ("resnet18_finetuned", "output", "cnn"): 5}
# 1 - 2 * (rank excess) / (n k (2n - 3k - 1)): one neighbour moved changes it by at least 2 / 34500
CIFAR_TRUSTWORTHINESS = {
    ("scattering", "scattering"): 0.7143768115942029,
    ("resnet18", "conv1"): 0.8110144927536231,
    ("resnet18", "bn1"): 0.7929275362318841,
    ("resnet18", "relu"): 0.8307246376811595,
    ("resnet18", "maxpool"): 0.7116521739130435,
    ("resnet18", "layer1"): 0.7427826086956522,
    ("resnet18", "layer2"): 0.7348405797101449,
    ("resnet18", "layer3"): 0.699304347826087,
    ("resnet18", "layer4"): 0.6823188405797102,
    ("resnet18_finetuned", "layer4"): 0.6733333333333333,
    ("resnet18_finetuned", "head_pool"): 0.6715942028985508,
    ("resnet18_finetuned", "head_hidden"): 0.7020869565217391,
    ("resnet18_finetuned", "softmax"): 0.8267826086956522,
}


def cifar_config(root) -> dict:
    # Sizes chosen for 50 test points: 3 * perplexity < 50, trustworthiness_k (10) < 50 / 2, kNN k (5) below
    # the smallest class's train count; batch 16 divides the 80 train images (no batch of 1 for BatchNorm).
    return {
        "datasets": {"cifar_tiny": {"source": "torchvision", "name": "CIFAR10", "root": str(root), "seed": 0}},
        "extractors": ["scattering", "resnet18", "resnet18_finetuned"],
        "device": "cpu",
        "resnet18": {"weights": "random"},
        "finetune": {"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 16,
                     "stage2_lr_min": 1.0e-4, "stage2_lr_max": 1.0e-3},
        # scikit-learn's t-SNE: 0.1 s on 50 points, where openTSNE's FFT gradients cost ~7 s per layer whatever N
        "tsne": {"method": "sklearn", "perplexity": 5, "n_iter": 250},
        "metrics": {"random_forest_trees": 5, "knn_k": 5},
    }


def test_tiny_cifar10_through_rule_all(tmp_path):
    root = tmp_path / "cifar"
    write_cifar10_raw(root, n_train=CIFAR_TRAIN, n_test=CIFAR_TEST, seed=0, archive=True)
    # only the archive, as torchvision ships it: the reader must not fall back to the extracted folder
    for path in sorted((root / "cifar-10-batches-py").iterdir()):
        path.unlink()
    (root / "cifar-10-batches-py").rmdir()
    work = tmp_path / "run"
    write_config(work, cifar_config(root))
    run_snakemake(work, "--cores", "2", *ONE_THREAD, env=ENV)
    results = work / "results"

    store = read_image_store(results / "data" / "cifar_tiny.zarr")
    assert store.images.shape == (CIFAR_TRAIN + CIFAR_TEST, 32, 32, 3) and store.images.dtype == np.uint8
    assert store.class_names == CIFAR10_CLASSES
    assert int((store.split == 0).sum()) == CIFAR_TRAIN and int((store.split == 1).sum()) == CIFAR_TEST
    assert store.attrs["source_name"] == "CIFAR10" and store.attrs["input_files"] == ["cifar-10-python.tar.gz"]

    features = results / "features" / "cifar_tiny"
    scattering = load_features(features / "scattering.zarr", "scattering")
    assert scattering.features.shape == (CIFAR_TRAIN + CIFAR_TEST, SCATTERING_D)
    assert np.isfinite(scattering.features).all()
    assert load_features(features / "resnet18.zarr", "layer4").features.shape[1] == 512
    assert list(layer_names(features / "resnet18_finetuned.zarr")) == list(EXTRACTOR_LAYERS["resnet18_finetuned"])
    softmax = load_features(features / "resnet18_finetuned.zarr", "softmax", split="test").features
    assert softmax.shape == (CIFAR_TEST, 10) and np.allclose(softmax.sum(1), 1, atol=1e-4)

    for extractor, layers in EXTRACTOR_LAYERS.items():
        for layer in layers:
            table = pd.read_csv(results / "tsne" / "cifar_tiny" / extractor / f"{layer}.csv")
            assert len(table) == CIFAR_TEST and np.isfinite(table[["x", "y"]].to_numpy()).all()
            meta = json.loads((results / "tsne" / "cifar_tiny" / extractor / f"{layer}.json").read_text())
            assert meta["class_names"] == CIFAR10_CLASSES  # what the t-SNE figures' legends are drawn from
            for kind in ("tsne", "tsne_thumbs"):
                assert (results / "figures" / "cifar_tiny" / kind / extractor / f"{layer}.png").stat().st_size > 0
    assert meta["dim"] == 10  # resnet18_finetuned/softmax: one column per CIFAR class
    assert {"pred", "prob"} <= set(table.columns)

    predictions = pd.read_csv(results / "models" / "cifar_tiny" / "predictions.csv")
    assert len(predictions) == CIFAR_TEST and [f"prob_{c}" for c in range(10)] == list(predictions.columns[-10:])

    classifiers = pd.read_csv(results / "metrics" / "cifar_tiny" / "classifiers.csv")
    scattering_rows = classifiers[classifiers["features"] == "scattering"]
    assert set(scattering_rows["D"]) == {SCATTERING_D}
    layer4 = classifiers[(classifiers["features"] == "resnet18") & (classifiers["layer"] == "layer4")]
    assert set(layer4["D"]) == {512}
    accuracy = dict(zip(zip(classifiers["features"], classifiers["layer"], classifiers["classifier"], strict=True),
                        classifiers["accuracy"], strict=True))
    expected = {(*key, name): n / CIFAR_TEST for key, counts in CIFAR_CORRECT.items()
                for name, n in zip(("logreg", "random_forest", "knn"), counts, strict=True)}
    expected |= {key: n / CIFAR_TEST for key, n in CIFAR_OTHER_CORRECT.items()}
    assert accuracy == pytest.approx(expected, abs=1e-12)
    quality = pd.read_csv(results / "metrics" / "cifar_tiny" / "embedding_quality.csv")
    assert len(quality) == sum(len(v) for v in EXTRACTOR_LAYERS.values()) and (quality["n"] == CIFAR_TEST).all()
    trustworthiness = dict(zip(zip(quality["extractor"], quality["layer"], strict=True), quality["trustworthiness"],
                               strict=True))
    assert trustworthiness == pytest.approx(CIFAR_TRUSTWORTHINESS, abs=1e-9)

    figures = results / "figures" / "cifar_tiny"
    for name in ("class_means.png", "confusion.png", "top_losses.png", "activations/input.png",
                 "metrics/accuracy_by_layer.png", "training/loss.png"):
        assert (figures / name).stat().st_size > 0, name
    html = (results / "explorer" / "cifar_tiny.html").read_text()
    assert all(name in html for name in CIFAR10_CLASSES)


# ---- imagefolder -------------------------------------------------------------------------------------------

SHAPES = {"blue_square": (40, 60, 220), "green_cross": (40, 200, 60), "red_disc": (220, 40, 40)}
PER_CLASS = 20
ODD_SIZE = (48, 40)  # width, height of the one image that must be resized


def write_shapes(root, seed: int = 0) -> None:
    """root/{class}/{i:02d}.png: a coloured shape at a random place and size on a noisy grey background."""
    rng = np.random.default_rng(seed)
    for name, colour in SHAPES.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            size = ODD_SIZE if (name, i) == ("red_disc", 0) else (32, 32)
            background = rng.integers(90, 160, size=(size[1], size[0], 3), dtype=np.uint8)
            img = Image.fromarray(background, "RGB")
            draw = ImageDraw.Draw(img)
            r = int(rng.integers(6, 11))
            cx, cy = (int(rng.integers(r, s - r)) for s in size)
            box = (cx - r, cy - r, cx + r, cy + r)
            if name == "red_disc":
                draw.ellipse(box, fill=colour)
            elif name == "blue_square":
                draw.rectangle(box, fill=colour)
            else:
                draw.line((cx - r, cy, cx + r, cy), fill=colour, width=4)
                draw.line((cx, cy - r, cx, cy + r), fill=colour, width=4)
            img.save(root / name / f"{i:02d}.png")


def test_imagefolder_pngs_to_classifier_table(tmp_path):
    root = tmp_path / "shapes"
    write_shapes(root)
    work = tmp_path / "run"
    write_config(work, {
        "datasets": {"shapes": {"source": "imagefolder", "root": str(root), "image_size": [32, 32],
                                "n_train": 45, "n_test": 15, "seed": 0}},
        "extractors": ["scattering"],
        "device": "cpu",
        # 15 test points: trustworthiness needs k < 15 / 2 (checked at workflow start even for these targets)
        "metrics": {"random_forest_trees": 5, "knn_k": 5, "trustworthiness_k": 7},
    })
    targets = ["results/metrics/shapes/classifiers.csv", "results/figures/shapes/class_means.png"]
    run_snakemake(work, *ONE_THREAD, "--cores", "2", *targets, env=ENV)  # targets after a one-value option

    store = read_image_store(work / "results" / "data" / "shapes.zarr")
    assert store.images.shape == (3 * PER_CLASS, 32, 32, 3) and store.images.dtype == np.uint8
    assert store.class_names == sorted(SHAPES)  # the folder names, sorted
    assert store.attrs["resized"] is True and store.attrs["channels"] == 3
    assert store.attrs["original_sizes"] == {"32x32": 3 * PER_CLASS - 1, f"{ODD_SIZE[1]}x{ODD_SIZE[0]}": 1}
    for split, n in ((0, 45), (1, 15)):
        assert np.bincount(store.labels[store.split == split], minlength=3).tolist() == [n // 3] * 3
    # the dominant colour channel of each class's mean image names its colour
    for label, name in enumerate(store.class_names):
        mean = store.images[store.labels == label].reshape(-1, 3).astype(float).mean(0)
        assert int(np.argmax(mean)) == {"red": 0, "green": 1, "blue": 2}[name.split("_")[0]], (name, mean)

    features = load_features(work / "results" / "features" / "shapes" / "scattering.zarr", "scattering")
    assert features.features.shape == (3 * PER_CLASS, SCATTERING_D)
    classifiers = pd.read_csv(work / "results" / "metrics" / "shapes" / "classifiers.csv")
    assert {"pixels", "scattering"} <= set(classifiers["features"])
    assert set(classifiers.loc[classifiers["features"] == "scattering", "D"]) == {SCATTERING_D}
    # correct predictions of the 15 test images (seeded, on the CPU)
    correct = {("pixels", "logreg"): 15, ("pixels", "random_forest"): 14, ("pixels", "knn"): 13,
               ("scattering", "logreg"): 13, ("scattering", "random_forest"): 8, ("scattering", "knn"): 13,
               ("pixels", "class_mean_l1"): 12, ("pixels", "class_mean_l2"): 14}
    accuracy = dict(zip(zip(classifiers["features"], classifiers["classifier"], strict=True), classifiers["accuracy"],
                        strict=True))
    assert accuracy == pytest.approx({key: n / 15 for key, n in correct.items()}, abs=1e-12)
    assert (work / "results" / "figures" / "shapes" / "class_means.png").stat().st_size > 0
    assert not (work / "results" / "tsne").exists()  # only what the two targets need ran


# ---- imagefolder: the folder's files are tracked ------------------------------------------------------------

TRACKED_TARGETS = ["results/baseline/folder/metrics.csv", "results/metrics/folder/classifiers.csv"]
TRACKED_JOBS = {"ingest_dataset": 1, "compute_baseline": 1, "extract_features": 1, "evaluate_classifiers": 1}


def _scheduled(work) -> dict[str, int]:
    """The jobs a dry run of TRACKED_TARGETS would run ({} when there is nothing to be done)."""
    result = run_snakemake(work, "-n", *TRACKED_TARGETS)
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return {name: int(count) for name, count in (line.split() for line in table) if name != "total"}


def test_adding_or_removing_an_image_reruns_ingest_and_its_dependants(tmp_path):
    root = tmp_path / "folder"
    files = write_imagefolder(root, n_per_class=12, size=(32, 32), n_classes=3)
    # a folder as users have them: a dark 16-bit PNG, whose depth comes from its mode (every value / 257, however
    # dark: its largest is 255), and a file of another suffix, counted and reported but not read
    dark = (np.arange(32 * 32) % 256).astype(np.uint16).reshape(32, 32)
    Image.fromarray(dark).save(root / "class_1" / "sixteen_bit.png")
    assert Image.open(root / "class_1" / "sixteen_bit.png").mode == "I;16"
    (root / "class_2" / "scan.webp").write_bytes(b"RIFF")
    work = tmp_path / "run"
    write_config(work, {
        "datasets": {"folder": {"source": "imagefolder", "root": str(root), "image_size": [32, 32], "n_test": 9,
                                "seed": 0}},
        "extractors": ["scattering"],
        "device": "cpu",
        "metrics": {"random_forest_trees": 5, "knn_k": 3, "trustworthiness_k": 4},  # 9 test points
    })
    run_snakemake(work, *ONE_THREAD, "--cores", "2", *TRACKED_TARGETS, env=ENV)
    store = read_image_store(work / "results/data/folder.zarr")
    assert store.attrs["n_files"] == 37 and store.attrs["channels"] == 3
    # 0..128 -> 0, 129..255 -> 1, repeated to RGB among the colour images
    stored = np.repeat(np.rint(dark / 257).astype(np.uint8)[..., None], 3, axis=-1)
    assert int(stored.max()) == 1
    rows = [i for i, image in enumerate(store.images) if np.array_equal(image, stored)]
    assert len(rows) == 1 and store.labels[rows[0]] == 1
    assert store.attrs["ignored_files"] == 1 and store.attrs["ignored_paths"] == ["class_2/scan.webp"]
    assert (f"dataset folder: 1 file(s) under {root} are not .png/.jpg/.jpeg images in the layout and were not read: "
            "class_2/scan.webp") in (work / "results/logs/data/folder.log").read_text()
    assert _scheduled(work) == {}

    added = write_png(root / "class_0" / "extra.png", np.full((32, 32, 3), 128, np.uint8))
    assert _scheduled(work) == TRACKED_JOBS
    added.unlink()  # back to the files of the finished run
    assert _scheduled(work) == {}

    files[-1].unlink()
    assert _scheduled(work) == TRACKED_JOBS
    run_snakemake(work, *ONE_THREAD, "--cores", "2", *TRACKED_TARGETS, env=ENV)
    assert read_image_store(work / "results/data/folder.zarr").attrs["n_files"] == 36
    assert _scheduled(work) == {}
