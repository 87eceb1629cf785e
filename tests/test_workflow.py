"""The real DAG end to end on a small embedded config (the `small_run` fixture), and its guarantees."""

import re
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import REPO, SMALL_CONFIG, run_snakemake, write_config
from explorer_page import expected_quality_table, quality_tables
from reference.make_default_study_reference import (
    SMALL_REFERENCE,
    differences,
    read_reference,
    study_numbers,
    value,
)

from embedscope.artifacts import (
    read_baseline,
    read_cka,
    read_collapse,
    read_embedding_quality,
    read_training_log,
)
from embedscope.layers import BODY_LAYERS, CKA_LAYERS, EXTRACTOR_LAYERS
from embedscope.similarity import cka_matrix, same_layer_cka

pytestmark = pytest.mark.e2e
DS = "mnist_small"
SCRIPT = REPO / "tests" / "reference" / "make_default_study_reference.py"


def test_every_stage_wrote_its_outputs(small_run):
    results = small_run / "results"
    assert (results / f"data/{DS}.zarr/zarr.json").is_file()
    group = zarr.open_group(str(results / f"data/{DS}.zarr"), mode="r")
    assert group["images"].shape == (500, 28, 28, 1) and group.attrs["complete"] is True
    metrics = read_baseline(results / f"baseline/{DS}/metrics.csv")
    l1 = metrics.loc[metrics.distance == "l1", "accuracy"].item()
    assert l1 == value(read_reference(SMALL_REFERENCE), "baseline", "l1", "accuracy")
    for extractor, dims in {
        "scattering": {"scattering": 3969},
        "resnet18": {"conv1": 64, "layer2": 128, "layer3": 256, "layer4": 512},
        "resnet18_finetuned": {"layer4": 512, "head_pool": 1024, "head_hidden": 512, "softmax": 10},
    }.items():
        store = zarr.open_group(str(results / f"features/{DS}/{extractor}.zarr"), mode="r")
        assert store.attrs["complete"] is True
        for layer, dim in dims.items():
            assert store[f"{layer}/features"].shape == (500, dim), (extractor, layer)
    for path in ["models/{ds}/resnet18_finetuned.pt", "models/{ds}/training_log.csv", "models/{ds}/predictions.csv",
                 "figures/{ds}/class_means.png", "figures/{ds}/tsne/resnet18_finetuned/head_hidden.png",
                 "figures/{ds}/tsne_thumbs/scattering/scattering.png", "figures/{ds}/activations/input.png",
                 "figures/{ds}/activations/resnet18/layer4.png", "metrics/{ds}/classifiers.csv",
                 "metrics/{ds}/embedding_quality.md", "explorer/{ds}.html"]:
        assert (results / path.format(ds=DS)).stat().st_size > 0, path


def test_small_study_numbers_are_the_reference(small_run):
    """Every key number of the run (baseline, classifiers, embedding quality, CNN) is tests/reference's."""
    assert differences(study_numbers(small_run / "results", DS), read_reference(SMALL_REFERENCE)) == []


def test_reference_script_checks_a_run(small_run, tmp_path):
    check = [sys.executable, str(SCRIPT), str(small_run / "results"), "--dataset", DS, "--check"]
    result = subprocess.run([*check, "--out", str(SMALL_REFERENCE)], capture_output=True, text=True)
    assert result.returncode == 0 and "every number matches" in result.stdout, result.stdout + result.stderr
    # a reference written from this run equals the committed one, line for line
    written = tmp_path / "small_study.csv"
    write = [sys.executable, str(SCRIPT), str(small_run / "results"), "--dataset", DS, "--out", str(written)]
    subprocess.run(write, check=True, capture_output=True)
    assert written.read_text() == SMALL_REFERENCE.read_text()
    other = read_reference(SMALL_REFERENCE)
    other.loc[other["table"] == "cnn", "value"] -= 1 / 200  # one test image fewer right
    other.to_csv(tmp_path / "other.csv", index=False)
    result = subprocess.run([*check, "--out", str(tmp_path / "other.csv")], capture_output=True, text=True)
    assert result.returncode == 1 and "cnn / resnet18_finetuned / test_accuracy: run" in result.stdout


def test_explorer_shows_each_layers_quality_numbers(small_run):
    results = small_run / "results"
    tables = quality_tables((results / f"explorer/{DS}.html").read_text())
    maps = [(e, layer) for e in SMALL_CONFIG["extractors"] for layer in EXTRACTOR_LAYERS[e]]
    assert sorted(tables) == sorted(maps)
    quality = read_embedding_quality(results / f"metrics/{DS}/embedding_quality.csv").set_index(["extractor", "layer"])
    for key in maps:
        assert tables[key] == expected_quality_table(quality.loc[key]), key
        assert tables[key]["n"] == str(SMALL_CONFIG["datasets"][DS]["n_test"])


def test_layer_similarity_table_and_heatmap(small_run):
    """cka.csv holds every ordered pair of pixels and layers once (the fine-tuned network's whole body too, computed
    from its checkpoint): symmetric, 1 on the diagonal, in [0, 1] (the plain estimator), on the whole 200-image
    test split; cka.md lists the frozen vs fine-tuned same-layer values; the heatmap exists."""
    results = small_run / "results"
    table = read_cka(results / f"metrics/{DS}/cka.csv")
    sets = [("pixels", "pixels")] + [(e, layer) for e in SMALL_CONFIG["extractors"] for layer in CKA_LAYERS[e]]
    assert sets[-11:] == [("resnet18_finetuned", layer) for layer in (*BODY_LAYERS, "head_pool", "head_hidden",
                                                                      "softmax")]
    pairs = list(zip(table["features_a"], table["layer_a"], table["features_b"], table["layer_b"], strict=True))
    assert sorted(pairs) == sorted((*a, *b) for a in sets for b in sets)
    names, matrix = cka_matrix(table)
    assert names == sets and set(table["n"]) == {SMALL_CONFIG["datasets"][DS]["n_test"]}
    assert np.array_equal(matrix, matrix.T) and np.all(np.diag(matrix) == 1.0)
    assert np.all((matrix >= 0) & (matrix <= 1 + 1e-12))  # Cauchy-Schwarz, up to rounding
    assert (results / f"figures/{DS}/cka.png").stat().st_size > 0
    text = (results / f"metrics/{DS}/cka.md").read_text()
    assert "plain (biased)" in text and "## Frozen vs fine-tuned, same layer" in text
    assert "started from the same weights (weights random, seed 0, resize None)" in text
    same = same_layer_cka(table)
    assert same["layer"].tolist() == list(BODY_LAYERS) and same["cka"].between(0, 1 + 1e-12).all()


def test_collapse_statistics_of_every_epoch(small_run):
    results = small_run / "results"
    table = read_collapse(results / f"metrics/{DS}/collapse.csv")
    _, epochs, _ = read_training_log(results / f"models/{DS}/training_log.csv")
    # one block of statistics per training epoch, in the training log's order
    assert list(dict.fromkeys(zip(table.stage, table.epoch, strict=True))) == list(
        zip(epochs.stage, epochs.epoch, strict=True))
    per_epoch = table.groupby(["stage", "epoch"]).size()
    assert set(per_epoch) == {2 * 5 + 1}  # NC1, three NC2, NC4 for both layers; NC3 for head_hidden
    n_train, n_test = (SMALL_CONFIG["datasets"][DS][k] for k in ("n_train", "n_test"))
    assert set(table.loc[table.metric != "nc4_ncc_agreement", "images"]) == {n_train}  # 300 < collapse_points
    assert set(table.loc[table.metric == "nc4_ncc_agreement", "images"]) == {n_test}
    assert (results / f"figures/{DS}/collapse.png").stat().st_size > 0


def test_every_job_has_a_log(small_run):
    logs = list((small_run / "results" / "logs").rglob("*.log"))
    # the fixture's run wrote the first main log (named by its start time); later tests may add dry runs
    main_log = sorted((small_run / ".snakemake" / "log").glob("*.snakemake.log"))[0]
    jobs = int(re.search(r"^total\s+(\d+)\s*$", main_log.read_text(), re.M).group(1))
    assert jobs == 76 and len(logs) == jobs - 1  # every job but rule `all` writes one
    tsne_log = small_run / "results/logs/tsne" / DS / "scattering/scattering.log"
    assert tsne_log.is_file()


def test_rerun_schedules_nothing(small_run):
    result = run_snakemake(small_run, "-n", "--cores", "1")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_one_figure_dry_run_schedules_nothing(small_run):
    result = run_snakemake(small_run, "-n", "--cores", "1", f"results/figures/{DS}/tsne/scattering/scattering.png")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_bad_config_stops_before_any_job(tmp_path):
    config = {**SMALL_CONFIG, "extractors": ["scattering", "vgg16"]}
    write_config(tmp_path, config)
    result = run_snakemake(tmp_path, "--cores", "1", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "vgg16" in output and "extractors" in output
    assert not (tmp_path / "results").exists()


def test_same_config_same_numbers(small_run, tmp_path):
    """A second run of the same config on CPU gives identical stores, predictions and t-SNE coordinates."""
    write_config(tmp_path, SMALL_CONFIG)
    targets = [f"results/tsne/{DS}/scattering/scattering.csv", f"results/models/{DS}/predictions.csv",
               f"results/features/{DS}/resnet18.zarr", f"results/baseline/{DS}/metrics.csv"]
    run_snakemake(tmp_path, "--cores", "2", *targets)
    for target in targets:
        first, second = small_run / target, tmp_path / target
        if target.endswith(".zarr"):
            a, b = zarr.open_group(str(first), mode="r"), zarr.open_group(str(second), mode="r")
            for layer in a.attrs["layers"]:
                assert np.array_equal(a[f"{layer}/features"][...], b[f"{layer}/features"][...]), layer
        else:
            assert first.read_bytes() == second.read_bytes(), target
