"""The reference files of tests/reference: complete for their config, and the comparison that uses them."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO, SMALL_CONFIG
from reference.make_default_study_reference import (
    DEFAULT_REFERENCE,
    EMBEDDING_METRICS,
    SMALL_REFERENCE,
    differences,
    read_reference,
    value,
)
from snakemake.utils import validate

from embedscope.layers import EXTRACTOR_LAYERS


def _config(config: dict) -> dict:
    validate(config, str(REPO / "schemas" / "config.schema.yaml"))  # fills in the defaults, as the workflow does
    return config


def expected_lines(config: dict) -> set[tuple[str, str, str]]:
    """(table, row, metric) of every number the reference of a run of ``config`` must hold."""
    layers = [(e, layer) for e in config["extractors"] for layer in EXTRACTOR_LAYERS[e]]
    lines = {("baseline", d, m) for d in ("l1", "l2") for m in ("accuracy", "macro_f1")}
    sets = [("pixels", "pixels"), *layers]
    rows = [f"{f}/{layer}/{c}" for f, layer in sets for c in config["metrics"]["classifiers"]]
    rows += ["pixels/pixels/class_mean_l1", "pixels/pixels/class_mean_l2", "resnet18_finetuned/output/cnn"]
    lines |= {("classifiers", r, m) for r in rows for m in ("accuracy", "macro_f1")}
    lines |= {("embedding_quality", f"{e}/{layer}", m) for e, layer in layers for m in EMBEDDING_METRICS}
    return lines | {("cnn", "resnet18_finetuned", "test_accuracy")}


@pytest.mark.parametrize(("reference", "config"), [
    (DEFAULT_REFERENCE, yaml.safe_load((REPO / "config.yaml").read_text())),
    (SMALL_REFERENCE, SMALL_CONFIG),
], ids=["default", "small"])
def test_reference_holds_every_number_of_its_config_once(reference, config):
    table = read_reference(reference)
    keys = list(zip(table["table"], table["row"], table["metric"], strict=True))
    assert len(keys) == len(set(keys))
    assert set(keys) == expected_lines(_config(dict(config)))
    # numbers that two tables both hold agree: the baseline's rows, the CNN's accuracy
    for distance in ("l1", "l2"):
        for metric in ("accuracy", "macro_f1"):
            assert value(table, "baseline", distance, metric) == value(
                table, "classifiers", f"pixels/pixels/class_mean_{distance}", metric)
    assert value(table, "cnn", "resnet18_finetuned", "test_accuracy") == value(
        table, "classifiers", "resnet18_finetuned/output/cnn", "accuracy")


def test_default_reference_key_numbers():
    # the default study (config.yaml, mnist5k: 3,000 train / 2,000 test, CPU) as the finished run wrote them
    table = read_reference(DEFAULT_REFERENCE)
    assert value(table, "baseline", "l1", "accuracy") == 0.644  # 1,288 of 2,000
    assert value(table, "baseline", "l2", "accuracy") == 0.8015
    assert value(table, "classifiers", "scattering/scattering/logreg", "accuracy") == 0.9805
    assert value(table, "cnn", "resnet18_finetuned", "test_accuracy") == 0.964


def test_differences_name_every_changed_or_missing_number():
    reference = read_reference(DEFAULT_REFERENCE)
    assert differences(reference.copy(), reference) == []
    run = reference.copy()
    at = run.index[(run["row"] == "scattering/scattering/logreg") & (run["metric"] == "accuracy")][0]
    run.loc[at, "value"] += 1 / 2000  # one more test image right
    nc1 = run.index[(run["row"] == "resnet18/conv1") & (run["metric"] == "nc1")][0]
    run.loc[nc1, "value"] *= 1 + 1e-9  # a float's last digits, within the tolerance
    run = run.drop(index=run.index[run["table"] == "cnn"])
    problems = differences(run, reference)
    assert len(problems) == 2, problems
    assert problems[0].startswith("classifiers / scattering/scattering/logreg / accuracy: run 0.981")
    assert problems[1] == "cnn / resnet18_finetuned / test_accuracy: 0.964 in the reference, not in the run"
    run.loc[nc1, "value"] *= 1 + 1e-5
    assert len(differences(run, reference)) == 3
