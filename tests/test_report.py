"""The Snakemake HTML report: one self-contained file that holds every figure of the run.

Snakemake 9's html reporter writes, for an ``.html`` target, one file with two JavaScript objects: ``results``
(result path -> name, labels, caption, mime type and the file itself as a base64 ``data:`` URI) and
``categories`` (category -> subcategory -> result paths). The tests read both back.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from conftest import SMALL_CONFIG, run_snakemake
from reference.make_default_study_reference import SMALL_REFERENCE, read_reference, value
from test_docs import declared_categories

pytestmark = pytest.mark.e2e


def _script_object(html: str, name: str):
    # the data objects are JSON literals on one line each (the bundled libraries also declare a `results`)
    match = re.search(rf"^\s*var {name} = ([{{\"].*);\s*$", html, re.M)
    assert match, f"no `var {name} = ...;` in the report"
    return json.loads(match.group(1))


def _decode(data_uri: str) -> bytes:
    header, _, payload = data_uri.partition(";base64,")
    assert header.startswith("data:") and payload, data_uri[:80]
    return base64.b64decode(payload)


@pytest.fixture(scope="module")
def report(small_run) -> dict:
    path = small_run / "results" / "report.html"
    run_snakemake(small_run, "--report", str(path), timeout=600)
    html = path.read_text(encoding="utf-8")
    return {"path": path, "html": html, "results": _script_object(html, "results"),
            "categories": _script_object(html, "categories"),
            "workflow": _script_object(html, "workflow_desc")}


def test_report_is_one_self_contained_html(report):
    html = report["html"]
    assert html.lstrip().lower().startswith("<!doctype html")
    # nothing is fetched: every script and stylesheet is inline, every result a data URI
    assert not re.search(r"<script[^>]+src=[\"']https?:", html)
    assert not re.search(r"<link[^>]+href=[\"']https?:", html)
    for entry in report["results"].values():
        assert entry["data_uri"].startswith("data:")


def test_every_figure_of_the_run_is_in_the_report(small_run, report):
    figures = sorted((small_run / "results" / "figures").rglob("*.png"))
    assert len(figures) > 20
    results = report["results"]
    missing = [str(p.relative_to(small_run)) for p in figures if str(p.relative_to(small_run)) not in results]
    assert not missing, f"figures not in the report: {missing}"
    for png in figures:
        entry = results[str(png.relative_to(small_run))]
        assert entry["mime_type"] == "image/png"
        assert _decode(entry["data_uri"]) == png.read_bytes(), png
        assert entry["caption"].strip(), f"{png} has no caption"
        assert entry["labels"].get("dataset") == "mnist_small", (png, entry["labels"])


def test_tables_categories_and_description(report):
    results, categories = report["results"], report["categories"]
    for table in ("classifiers.csv", "embedding_quality.csv"):
        key = f"results/metrics/mnist_small/{table}"
        assert key in results, key
        assert b"accuracy" in _decode(results[key]["data_uri"])
    # the small run has every extractor, the fine-tuned model and the explorer: every declared category shows
    assert set(categories) == set(declared_categories())
    assert "results/figures/mnist_small/metrics/depth.png" in categories["Metrics"]["mnist_small"]
    # the workflow description is rendered from report/workflow.rst with the run's config filled in
    text = report["workflow"]
    assert "embedscope" in text and "mnist_small" in text and "NC1" in text
    assert "{{" not in text and "{%" not in text


def test_metric_tables_of_the_run(small_run):
    from embedscope.artifacts import (
        CLASSIFIER_COLUMNS,
        EMBEDDING_COLUMNS,
        read_baseline,
        read_classifiers,
        read_embedding_quality,
    )
    from embedscope.layers import EXTRACTOR_LAYERS

    metrics = Path(small_run) / "results" / "metrics" / "mnist_small"
    classifiers = read_classifiers(metrics / "classifiers.csv")
    quality = read_embedding_quality(metrics / "embedding_quality.csv")
    assert list(classifiers.columns) == list(CLASSIFIER_COLUMNS) and list(quality.columns) == list(EMBEDDING_COLUMNS)
    layers = sum(len(EXTRACTOR_LAYERS[e]) for e in SMALL_CONFIG["extractors"])
    assert len(quality) == layers
    assert len(classifiers) == 3 * (1 + layers) + 2 + 1  # fitted sets, class-mean l1/l2, the CNN
    baseline = read_baseline(small_run / "results" / "baseline" / "mnist_small" / "metrics.csv")
    l1 = classifiers.loc[classifiers.classifier == "class_mean_l1", "accuracy"].item()
    assert l1 == pytest.approx(baseline.loc[baseline.distance == "l1", "accuracy"].item())
    scattering = classifiers[(classifiers.features == "scattering") & (classifiers.classifier == "logreg")]
    reference = read_reference(SMALL_REFERENCE)  # 300 training images; 0.9805 on the default 3,000
    assert scattering["accuracy"].item() == value(reference, "classifiers", "scattering/scattering/logreg", "accuracy")
