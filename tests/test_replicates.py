"""Fine-tuning replicates (finetune.replicates): the tables' replicate rows and their summaries, and the real DAG
adding a second replicate to a finished small run."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_snakemake
from reference.make_default_study_reference import SMALL_REFERENCE, differences, read_reference, study_numbers

from embedscope.artifacts import (
    REPLICATE_COLUMN,
    ArtifactError,
    first_replicate,
    read_classifiers,
    read_embedding_quality,
    write_table,
)
from embedscope.intervals import HIGH, LOW, add_intervals, wilson_interval
from embedscope.metrics import CLASSIFIER_ROW_KEYS, DESCRIPTIVE_COLUMNS, EMBEDDING_ROW_KEYS, add_replicates

DS = "mnist_small"
SCORES = ["accuracy", "accuracy_low", "accuracy_high", "macro_precision", "macro_recall", "macro_f1", "fit_seconds"]


def classifier_rows(rows):
    """A classifier table from (features, layer, classifier, accuracy, fit_seconds) tuples, its accuracies'
    intervals over 100 test images."""
    return add_intervals(pd.DataFrame([{"dataset": "toy", "features": f, "layer": layer, "D": 4, "classifier": c,
                                        "accuracy": a, "macro_precision": a / 2, "macro_recall": a / 4,
                                        "macro_f1": a / 8, "fit_seconds": s} for f, layer, c, a, s in rows],
                                      columns=["dataset", "features", "layer", "D", "classifier", "accuracy",
                                               "macro_precision", "macro_recall", "macro_f1", "fit_seconds"]),
                         {"accuracy": 100})


def test_add_replicates_on_a_hand_made_table():
    nan = float("nan")
    table = classifier_rows([("pixels", "pixels", "knn", 0.5, 1.0),
                             ("resnet18_finetuned", "layer4", "knn", 0.8, 2.0),
                             ("pixels", "pixels", "class_mean_l1", 0.4, 3.0),
                             ("resnet18_finetuned", "output", "cnn", 0.9, nan)])
    one = classifier_rows([("resnet18_finetuned", "output", "cnn", 0.7, nan),
                           ("resnet18_finetuned", "layer4", "knn", 0.6, 4.0)])
    two = classifier_rows([("resnet18_finetuned", "layer4", "knn", 0.7, 6.0),
                           ("resnet18_finetuned", "output", "cnn", 0.8, nan)])
    merged = add_replicates(table, [one, two], CLASSIFIER_ROW_KEYS)
    assert list(merged.columns) == ["dataset", "features", "layer", "D", "classifier", REPLICATE_COLUMN,
                                    *SCORES]
    # each replicated row in its place: replicates 0, 1, 2, then mean and sd; the others unchanged
    assert list(zip(merged["layer"], merged[REPLICATE_COLUMN], strict=True)) == [
        ("pixels", ""), ("layer4", "0"), ("layer4", "1"), ("layer4", "2"), ("layer4", "mean"), ("layer4", "sd"),
        ("pixels", ""), ("output", "0"), ("output", "1"), ("output", "2"), ("output", "mean"), ("output", "sd")]
    layer4 = merged[merged["layer"] == "layer4"].set_index(REPLICATE_COLUMN)
    assert np.allclose(layer4.loc[["0", "1", "2"], "accuracy"], [0.8, 0.6, 0.7])
    assert np.isclose(layer4.loc["mean", "accuracy"], 0.7)
    assert np.isclose(layer4.loc["sd", "accuracy"], 0.1)  # sqrt(((0.1)^2 + (0.1)^2 + 0) / 2)
    assert np.isclose(layer4.loc["mean", "macro_f1"], 0.7 / 8)
    assert np.isclose(layer4.loc["mean", "fit_seconds"], 4.0) and np.isclose(layer4.loc["sd", "fit_seconds"], 2.0)
    assert (layer4["D"] == 4).all()  # descriptive, kept
    cnn = merged[merged["classifier"] == "cnn"].set_index(REPLICATE_COLUMN)
    assert np.isclose(cnn.loc["mean", "accuracy"], 0.8) and np.isclose(cnn.loc["sd", "accuracy"], 0.1)
    assert math.isnan(cnn.loc["mean", "fit_seconds"])  # no replicate has one
    # a table with one replicate is the table itself
    assert add_replicates(table, [], CLASSIFIER_ROW_KEYS) is table


def test_a_summary_is_empty_where_a_replicate_lacks_the_value():
    nan = float("nan")
    columns = ["dataset", "extractor", "layer", "D", "n", "n_quality", "trustworthiness", "nc1"]
    table = pd.DataFrame([["toy", "resnet18_finetuned", "layer4", 8, 20, 20, 0.9, 0.5],
                          ["toy", "scattering", "scattering", 9, 20, 20, 0.8, 1.5]], columns=columns)
    one = pd.DataFrame([["toy", "resnet18_finetuned", "layer4", 8, 20, 20, nan, 0.25]], columns=columns)
    merged = add_replicates(table, [one], EMBEDDING_ROW_KEYS).set_index(["layer", REPLICATE_COLUMN])
    assert math.isnan(merged.loc[("layer4", "mean"), "trustworthiness"])
    assert math.isnan(merged.loc[("layer4", "sd"), "trustworthiness"])
    assert np.isclose(merged.loc[("layer4", "mean"), "nc1"], 0.375)
    assert np.isclose(merged.loc[("layer4", "sd"), "nc1"], np.std([0.5, 0.25], ddof=1))
    assert merged.loc[("layer4", "sd"), "n_quality"] == 20


def test_replicate_rows_must_match():
    table = classifier_rows([("resnet18_finetuned", "layer4", "knn", 0.8, 2.0)])
    with pytest.raises(ArtifactError, match="in 1 of 2 replicates"):
        add_replicates(table, [table, classifier_rows([])], CLASSIFIER_ROW_KEYS)
    other = classifier_rows([("resnet18_finetuned", "head_pool", "knn", 0.8, 2.0)])
    with pytest.raises(ArtifactError, match="0 time"):
        add_replicates(table, [other], CLASSIFIER_ROW_KEYS)
    with pytest.raises(ArtifactError, match="in 1 of 2 replicates"):  # one replicate each: neither has both
        add_replicates(table, [table, other], CLASSIFIER_ROW_KEYS)
    with pytest.raises(ArtifactError, match="replicate 1 has more than one row"):
        add_replicates(table, [pd.concat([table, table])], CLASSIFIER_ROW_KEYS)


def test_first_replicate_of_the_written_table_is_replicate_zeros_table(tmp_path):
    table = classifier_rows([("pixels", "pixels", "knn", 0.5, 1.0), ("resnet18_finetuned", "layer4", "knn", 0.8, 2.0)])
    other = classifier_rows([("resnet18_finetuned", "layer4", "knn", 0.6, 4.0)])
    write_table(add_replicates(table, [other], CLASSIFIER_ROW_KEYS), tmp_path / "t.csv")
    pd.testing.assert_frame_equal(first_replicate(read_classifiers(tmp_path / "t.csv")), table)
    assert first_replicate(table) is table


def test_a_replicates_classifier_job_is_sized_without_the_raw_pixels():
    from embedscope.footprint import classifier_resources, dataset_extent

    cifar = dataset_extent({"source": "torchvision", "name": "CIFAR10"})  # 32 x 32 x 3 = 3,072 pixel values
    settings = {"classifiers": ["logreg", "random_forest", "knn"], "random_forest_trees": 100}
    finetuned = [512, 1024, 512, 10]
    alone = classifier_resources(cifar, 50000, 10000, finetuned, settings, 4, pixels=False)
    with_pixels = classifier_resources(cifar, 50000, 10000, finetuned, settings, 4)
    # the raw pixels are one more set of width H W C, and the only difference
    assert classifier_resources(cifar, 50000, 10000, [3072, *finetuned], settings, 4, pixels=False) == with_pixels
    assert alone["mem_mb"] < with_pixels["mem_mb"] and alone["runtime"] < with_pixels["runtime"]


def summaries_hold(table: pd.DataFrame, keys, counts) -> int:
    """Assert every replicated row's mean and sd rows are those of its replicate rows; return how many.

    ``counts``: each accuracy's n (a number or a column), whose Wilson interval the mean row carries."""
    replicated = table[table[REPLICATE_COLUMN].notna()]
    groups = 0
    for _, group in replicated.groupby(list(keys), sort=False):
        rows = group.set_index(REPLICATE_COLUMN)
        per_replicate = rows.loc[["0", "1"]]
        for column in per_replicate.columns:
            if column in keys or not pd.api.types.is_numeric_dtype(table[column]):
                continue
            values = per_replicate[column].to_numpy(dtype=np.float64)
            if column in DESCRIPTIVE_COLUMNS:
                assert rows.loc["mean", column] == rows.loc["sd", column] == values[0]
                continue
            metric = column.removesuffix(LOW).removesuffix(HIGH)
            if metric != column:  # the mean's own test-set interval; an sd is no fraction of images
                n = counts[metric] if not isinstance(counts[metric], str) else rows.loc["mean", counts[metric]]
                low, high = wilson_interval(rows.loc["mean", metric] * n, n)
                want = low if column.endswith(LOW) else high
                assert np.isclose(rows.loc["mean", column], want, equal_nan=True), column
                assert np.isnan(rows.loc["sd", column]), column
                continue
            assert np.allclose(rows.loc["mean", column], values.mean(), equal_nan=True), column
            assert np.allclose(rows.loc["sd", column], values.std(ddof=1), equal_nan=True), column
        groups += 1
    return groups


@pytest.mark.e2e
def test_a_second_replicate_of_the_small_run(small_run, tmp_path):
    """finetune.replicates: 2 on a finished small run schedules only replicate 1's jobs and the tables (and what
    reads them); replicate 1 has its own seed and weights; the tables' summaries are those of their rows, and
    replicate 0's rows are the first run's."""
    import torch

    results = small_run / "results"
    assert not list(results.rglob("replicates"))  # one replicate: today's paths only
    assert REPLICATE_COLUMN not in read_classifiers(results / f"metrics/{DS}/classifiers.csv").columns
    work = tmp_path / "run"
    shutil.copytree(small_run, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["finetune"]["replicates"] = 2
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    plan = run_snakemake(work, "-n", "--cores", "2", "--quiet", "rules").stdout
    scheduled = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, re.M))
    scheduled.pop("total", None)
    assert scheduled == {rule: "1" for rule in (
        "finetune_replicate", "extract_replicate_features", "evaluate_replicate_classifiers",
        "evaluate_replicate_embeddings", "evaluate_classifiers", "evaluate_embeddings", "plot_metrics",
        "build_explorer", "all")}
    run_snakemake(work, "--cores", "2")
    assert "Nothing to be done" in run_snakemake(work, "-n", "--cores", "1").stdout

    new = work / "results"
    first = torch.load(new / f"models/{DS}/resnet18_finetuned.pt", map_location="cpu", weights_only=True)
    second = torch.load(new / f"models/{DS}/replicates/1/resnet18_finetuned.pt", map_location="cpu",
                        weights_only=True)
    assert (first["config"]["seed"], second["config"]["seed"]) == (0, 1)
    assert first["state_dict"].keys() == second["state_dict"].keys()
    floats = [k for k, v in first["state_dict"].items() if v.is_floating_point()]
    assert any(not torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in floats)
    assert (new / f"features/{DS}/replicates/1/resnet18_finetuned.zarr").is_dir()

    n_test = yaml.safe_load((work / "config.yaml").read_text())["datasets"][DS]["n_test"]
    tables = {"classifiers": (read_classifiers, CLASSIFIER_ROW_KEYS, 4 * 3 + 1, {"accuracy": n_test}),
              "embedding_quality": (read_embedding_quality, EMBEDDING_ROW_KEYS, 4,
                                    {"knn_accuracy_2d": "n", "ncc_accuracy": "n_test"})}
    for name, (read, keys, replicated, counts) in tables.items():
        table = read(new / f"metrics/{DS}/{name}.csv")
        assert summaries_hold(table, keys, counts) == replicated, name  # the fine-tuned layers' rows (and the CNN's)
        assert set(table.loc[table[REPLICATE_COLUMN].notna(), keys[1]]) == {"resnet18_finetuned"}
        # replicate 0 and the unreplicated rows are the first run's (classifier fit times apart)
        before = read(results / f"metrics/{DS}/{name}.csv")
        after = first_replicate(table)
        timing = [c for c in ("fit_seconds",) if c in before.columns]
        pd.testing.assert_frame_equal(after.drop(columns=timing), before.drop(columns=timing))
        assert re.search(rf"^\|.*\|\s*{REPLICATE_COLUMN}\s*\|", (new / f"metrics/{DS}/{name}.md").read_text(), re.M)
    embeddings = read_embedding_quality(new / f"metrics/{DS}/embedding_quality.csv").set_index(
        ["layer", REPLICATE_COLUMN])
    assert math.isnan(embeddings.loc[("head_hidden", "1"), "trustworthiness"])  # replicate 1 has no map
    assert not math.isnan(embeddings.loc[("head_hidden", "1"), "nc1"])
    # replicate 0's key numbers are still the stored reference's
    assert differences(study_numbers(new, DS), read_reference(SMALL_REFERENCE)) == []
