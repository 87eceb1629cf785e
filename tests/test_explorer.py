"""The explorer page built from small synthetic inputs in the real on-disk formats (no browser here)."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from explorer_page import doc_json, expected_quality_table, quality_tables

from embedscope.artifacts import (
    ArtifactError,
    read_embedding_quality,
    read_predictions,
    read_tsne,
    write_collapse,
    write_text,
    write_tsne,
)
from embedscope.explorer import (
    ExplorerError,
    build_explorer,
    explorer_document,
    layer_key,
    png_data_uri,
    scale_unit,
)
from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.synthetic import write_synthetic_inputs

MAPS = [(e, layer) for e, layers in EXTRACTOR_LAYERS.items() for layer in layers]  # 13 maps


class Resources(HTMLParser):
    """Every src/href of script, link, img and iframe tags."""

    def __init__(self):
        super().__init__()
        self.urls, self.scripts = [], 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        if tag in ("script", "link", "img", "iframe"):
            self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explorer")
    inputs = write_synthetic_inputs(folder / "in", 120, MAPS, n_train=30)
    stats = build_explorer(folder / "out" / "synthetic.html", **inputs)
    return folder / "out" / "synthetic.html", inputs, stats


def test_page_is_self_contained(page):
    path, _, stats = page
    text = path.read_text()
    parser = Resources()
    parser.feed(text)
    assert parser.scripts >= 2  # inline BokehJS + the document
    assert not [u for u in parser.urls if re.match(r"(https?:)?//", u)], parser.urls
    assert stats == {"points": 120, "maps": 13, "bytes": path.stat().st_size}
    assert not list(path.parent.glob(".*tmp*"))


def test_page_holds_every_layer_and_point(page):
    path, inputs, _ = page
    text = path.read_text()
    for extractor, layer in MAPS:
        assert f"{extractor} / {layer}" in text
    doc = doc_json(text)
    flat = json.dumps(doc)
    assert flat.count("data:image/png;base64,") == 120  # ONE thumbnail set, not one per layer
    for extractor, layer in MAPS:
        assert f'"x__{layer_key(extractor, layer)}"' in flat


def test_document_contents(page):
    _, inputs, _ = page
    from bokeh.models import ColumnDataSource, CustomJS, Legend, Select

    layout = explorer_document(**inputs)
    sources = [m for m in layout.references() if isinstance(m, ColumnDataSource) and m.name == "points"]
    assert len(sources) == 1
    data = sources[0].data
    assert len(data["index"]) == 120 and len(data["thumb"]) == 120
    assert all(t.startswith("data:image/png;base64,") for t in data["thumb"])
    (select,) = [m for m in layout.references() if isinstance(m, Select)]
    assert [v for v, _ in select.options] == [layer_key(e, layer) for e, layer in MAPS]
    (legend,) = [m for m in layout.references() if isinstance(m, Legend)]
    assert legend.click_policy == "hide" and [i.label.value for i in legend.items] == [f"class {c}" for c in range(10)]
    assert any(isinstance(m, CustomJS) and "x__" in m.code for m in layout.references())
    # misclassified points come from predictions.csv, joined by sample index
    pred = read_predictions(inputs["predictions_csv"]).set_index("index")
    wrong = pred["pred"] != pred["label"]
    status = pd.Series(data["status"], index=data["index"])
    assert (status.loc[wrong.index[wrong]] == "misclassified").all()
    assert (status.loc[wrong.index[~wrong]] == "correct").all()
    assert np.allclose(pd.Series(data["prob"], index=data["index"]).loc[pred.index], pred["prob"])
    # every map scaled into [-1, 1], same point order as the index column
    tsne = read_tsne(inputs["maps"][3][2]).set_index("index").loc[data["index"]]
    x, _ = scale_unit(tsne["x"].to_numpy(), tsne["y"].to_numpy())
    assert np.allclose(data[f"x__{layer_key(*MAPS[3])}"], x)
    assert np.abs(np.r_[data["x"], data["y"]]).max() <= 1 + 1e-6


def test_quality_numbers_per_layer(page):
    path, inputs, _ = page
    tables = quality_tables(path.read_text())
    assert sorted(tables) == sorted(MAPS)
    quality = read_embedding_quality(inputs["quality_csv"]).set_index(["extractor", "layer"])
    for key in MAPS:
        assert tables[key] == expected_quality_table(quality.loc[key]), key
    # the synthetic rows tell the maps apart: map 12 has trustworthiness 0.9 + 12/1000
    assert tables[MAPS[12]]["trustworthiness"] == "0.912"


def test_predictions_from_finetuned_csv_and_none(tmp_path):
    inputs = write_synthetic_inputs(tmp_path, 40, [("scattering", "scattering"), ("resnet18_finetuned", "softmax")])
    data_with = explorer_document(**{**inputs, "predictions_csv": None}).select_one({"name": "points"}).data
    assert "misclassified" in data_with["status"]
    only = {**inputs, "predictions_csv": None, "maps": inputs["maps"][:1]}
    data_none = explorer_document(**only).select_one({"name": "points"}).data
    assert set(data_none["status"]) == {"no prediction"} and set(data_none["pred_name"]) == {"n/a"}


def test_bad_inputs_name_the_file(tmp_path):
    inputs = write_synthetic_inputs(tmp_path, 30, [("scattering", "scattering"), ("resnet18", "conv1")])
    bad = tmp_path / "tsne" / "resnet18" / "conv1.csv"
    frame = read_tsne(bad)
    write_tsne(bad, frame.iloc[:-1])
    with pytest.raises(ExplorerError, match="conv1.csv holds other points"):
        explorer_document(**inputs)
    write_tsne(bad, frame.assign(label=(frame["label"] + 1) % 10))
    with pytest.raises(ExplorerError, match="conv1.csv: column 'label' disagrees"):
        explorer_document(**inputs)
    write_tsne(bad, frame.assign(y=np.where(frame.index == 3, np.inf, frame["y"])))
    with pytest.raises(ArtifactError, match="conv1.csv: columns x, y must be finite"):
        explorer_document(**inputs)
    write_text(bad, "")
    with pytest.raises(ArtifactError, match="conv1.csv is not a readable CSV file"):
        explorer_document(**inputs)
    with pytest.raises(ExplorerError, match="no t-SNE maps"):
        explorer_document(**{**inputs, "maps": []})
    out = tmp_path / "out.html"
    with pytest.raises(ArtifactError):
        build_explorer(out, **inputs)
    assert not out.exists() and not list(tmp_path.glob(".out.html*"))


def test_png_data_uri_roundtrip():
    import base64
    import io

    from PIL import Image

    image = (np.arange(28 * 28).reshape(28, 28, 1) % 256).astype(np.uint8)
    uri = png_data_uri(image)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert np.array_equal(back, image[:, :, 0])
    rgb = np.zeros((4, 4, 3), np.uint8)
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(png_data_uri(rgb).split(",")[1])))).shape == (4, 4, 3)


@pytest.mark.e2e
def test_rule_build_explorer_and_report(tmp_path):
    """The real rule on synthetic inputs placed at the workflow's paths, then the page inside a report zip."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    maps = [(e, layer) for e, layers in EXTRACTOR_LAYERS.items() for layer in layers]
    inputs = write_synthetic_inputs(tmp_path / "synthetic", 60, maps, n_train=20)
    results = tmp_path / "results"
    (results / "data").mkdir(parents=True)
    Path(inputs["image_store"]).rename(results / "data" / "mnist5k.zarr")
    for extractor, layer, csv in inputs["maps"]:
        target = results / "tsne" / "mnist5k" / extractor / f"{layer}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        Path(csv).rename(target)
    for name, folder in (("embedding_quality.csv", "metrics"), ("predictions.csv", "models")):
        (results / folder / "mnist5k").mkdir(parents=True)
        Path(tmp_path / "synthetic" / name).rename(results / folder / "mnist5k" / name)
    # the report holds every report-marked output of the jobs upstream, the fine-tuning job's collapse table too
    write_collapse(results / "metrics" / "mnist5k" / "collapse.csv", [])
    snakemake = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(repo / "Snakefile"),
        "--configfile",
        str(repo / "config.yaml"),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
    ]
    target = "results/explorer/mnist5k.html"
    run = subprocess.run([*snakemake, target, "--allowed-rules", "build_explorer"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    page = (tmp_path / target).read_text()
    assert json.dumps(doc_json(page)).count("data:image/png;base64,") == 60 and "resnet18_finetuned / softmax" in page
    assert (tmp_path / "results/logs/explorer/mnist5k.log").exists()
    run = subprocess.run([*snakemake, "--report", str(tmp_path / "report.zip"), target], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    assert any(n.endswith("/mnist5k.html") for n in names), names


def test_only_the_drawn_points_images_are_read(tmp_path, monkeypatch):
    """Every chunk of the image store that holds no drawn point is overwritten with bytes that cannot be
    decoded: reading the whole store now fails, and the page still builds, so those chunks are never read."""
    from embedscope import store
    from embedscope.store import StoreError, read_image_store

    monkeypatch.setattr(store, "CHUNK_BYTES", 28 * 28 * 4)  # 4 rows per chunk
    inputs = write_synthetic_inputs(tmp_path, 12, [("scattering", "scattering"), ("resnet18", "conv1")], n_train=20)
    images = read_image_store(inputs["image_store"])
    assert images.images.shape[1:] == (28, 28, 1)
    drawn = np.array([25, 24, 27])  # test rows of chunk 6 (rows 24..27), listed out of order
    for _, _, csv in inputs["maps"]:
        frame = read_tsne(csv)
        write_tsne(csv, frame.set_index("index").loc[drawn].reset_index())
    chunks = sorted((Path(inputs["image_store"]) / "images" / "c").iterdir(), key=lambda p: int(p.name))
    assert len(chunks) == 8
    for chunk in chunks:
        if chunk.name != "6":
            for part in chunk.rglob("*"):
                if part.is_file():
                    part.write_bytes(b"not a zstd frame")
    with pytest.raises(Exception):  # noqa: B017 - zarr names no single error type for an undecodable chunk
        read_image_store(inputs["image_store"])
    out = tmp_path / "page.html"
    stats = build_explorer(out, **inputs, trustworthiness_k=7)
    assert stats["points"] == 3
    layout = explorer_document(**inputs)
    source = layout.select_one({"name": "points"}).data
    expected = {int(i): png_data_uri(images.images[i]) for i in drawn}
    assert {int(i): t for i, t in zip(source["index"], source["thumb"], strict=True)} == expected
    assert "t-SNE trustworthiness (k=7)" in out.read_text()
    with pytest.raises(StoreError, match="has 32 rows"):
        store.read_image_rows(inputs["image_store"], [32])


def test_trustworthiness_label_names_the_configured_k(tmp_path):
    inputs = write_synthetic_inputs(tmp_path, 20, [("scattering", "scattering")])
    build_explorer(tmp_path / "k3.html", **inputs, trustworthiness_k=3)
    build_explorer(tmp_path / "none.html", **inputs)
    assert "t-SNE trustworthiness (k=3)" in (tmp_path / "k3.html").read_text()
    assert "k=10" not in (tmp_path / "k3.html").read_text()
    text = (tmp_path / "none.html").read_text()
    assert "t-SNE trustworthiness" in text and "t-SNE trustworthiness (k=" not in text
