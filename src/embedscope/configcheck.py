"""Checks the schema cannot express, run at workflow start so a bad config stops before any job."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

EMBEDDED_SIZE = 5000


class ConfigError(ValueError):
    """A config value is valid JSON-schema-wise but unusable."""


def check_config(config: Mapping[str, Any]) -> None:
    problems = []
    for dataset, settings in config["datasets"].items():
        key = f"datasets.{dataset}"
        n_train, n_test = settings.get("n_train"), settings.get("n_test")
        if settings["source"] == "embedded":
            total = (n_train or 0) + (n_test or 0)
            if total > EMBEDDED_SIZE:
                problems.append(f"{key}: n_train + n_test = {total}, but the embedded MNIST subset has "
                                f"{EMBEDDED_SIZE} images")
        if settings["source"] == "imagefolder":
            root = Path(settings["root"])
            if not root.is_dir():
                problems.append(f"{key}.root: {root} is not a folder (expected root/<class>/*.png|jpg)")
        if settings["source"] != "imagefolder" and settings.get("image_size") is not None:
            problems.append(f"{key}.image_size is only used by source imagefolder; use resnet18.resize instead")
        max_points, test = settings.get("max_points"), settings.get("n_test")
        if max_points is not None and test is not None and max_points > test:
            problems.append(f"{key}.max_points = {max_points} exceeds n_test = {test}")
        index, test = settings.get("activation_image"), settings.get("n_test")
        if index is not None and test is not None and index >= test:
            problems.append(f"{key}.activation_image = {index} is not an index into the {test} test images")
    weights = config["resnet18"]["weights"]
    uses_resnet = any(e.startswith("resnet18") for e in config["extractors"])
    if uses_resnet and weights not in ("imagenet", "random") and not Path(weights).is_file():
        problems.append(f"resnet18.weights: {weights!r} is neither 'imagenet', 'random' nor an existing file")
    index = config["figures"]["activation_image"]
    for dataset, settings in config["datasets"].items():
        test = settings.get("n_test")
        if settings.get("activation_image") is None and test is not None and index >= test:
            problems.append(f"figures.activation_image = {index} is not an index into datasets.{dataset}'s "
                            f"{test} test images")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
