"""Feature extraction: values against kymatio / a manual forward, store layout, other-process reads, the rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from embedscope.features import extract_features, gather_feature_shards, shard_rows
from embedscope.layers import BODY_CHANNELS, BODY_LAYERS
from embedscope.resnet import body_of, build_resnet18, preprocess
from embedscope.store import StoreError, layer_names, load_features, read_image_store, write_image_store

torch.set_num_threads(1)

RESNET = {"weights": "random", "resize": None}
SCATTERING = {"J": 2, "L": 8}


def make_store(path, n=150, size=28, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    labels = np.arange(n) % 10
    split = (np.arange(n) % 3 == 0).astype(np.uint8)
    write_image_store(path, images, labels, split, [f"c{i}" for i in range(10)], {"source": "test"})
    return images


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    """150 28x28 grayscale images; batch 32 and 132-row scattering chunks exercise the chunk buffering."""
    root = tmp_path_factory.mktemp("gray")
    images = make_store(root / "images.zarr")
    extract_features(root / "images.zarr", root / "scattering.zarr", "scattering", SCATTERING, batch_size=32)
    extract_features(root / "images.zarr", root / "resnet18.zarr", "resnet18", RESNET, batch_size=32)
    return root, images


def kymatio_direct(images):
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    n, h, w, c = images.shape
    scattering = ScatteringTorch2D(J=2, shape=(h, w), L=8)
    per_channel = [
        scattering(torch.from_numpy(images[..., k].astype(np.float32) / 255.0)).reshape(n, -1) for k in range(c)
    ]
    return torch.cat(per_channel, dim=1).numpy()


def manual_forward(images, model):
    expected = {}
    x = preprocess(images)
    with torch.no_grad():
        for name, child in body_of(model.eval()).named_children():
            x = child(x)
            expected[name] = x.mean(dim=(2, 3)).clone().numpy()
    return expected


def test_scattering_equals_kymatio_direct(gray):
    root, images = gray
    features = load_features(root / "scattering.zarr", "scattering")
    assert features.features.shape == (150, 3969)
    assert features.features.dtype == np.float32
    some = [0, 1, 77, 131, 132, 149]  # either side of a chunk boundary (132 rows of 3,969 floats)
    np.testing.assert_allclose(features.features[some], kymatio_direct(images[some]), rtol=1e-5, atol=1e-6)
    assert features.attrs["shape_before_pooling"] == [1, 81, 7, 7]


def test_resnet18_layers_equal_manual_forward(gray):
    root, images = gray
    assert layer_names(root / "resnet18.zarr") == list(BODY_LAYERS)
    expected = manual_forward(images, build_resnet18("random", seed=0))
    for layer in BODY_LAYERS:
        got = load_features(root / "resnet18.zarr", layer)
        assert got.features.shape == (150, BODY_CHANNELS[layer])
        np.testing.assert_allclose(got.features, expected[layer], rtol=1e-4, atol=1e-5, err_msg=layer)
    dims = [load_features(root / "resnet18.zarr", layer).features.shape[1] for layer in BODY_LAYERS]
    assert dims == [64, 64, 64, 64, 64, 128, 256, 512]


def test_store_rows_labels_split_match_image_store(gray):
    root, _ = gray
    images = read_image_store(root / "images.zarr")
    test = load_features(root / "resnet18.zarr", "layer4", split="test")
    np.testing.assert_array_equal(test.index, images.indices("test"))
    np.testing.assert_array_equal(test.labels, images.labels[test.index])
    full = load_features(root / "resnet18.zarr", "layer4")
    np.testing.assert_array_equal(full.features[test.index], test.features)


READER = r"""
import json, sys, zarr
g = zarr.open_group(sys.argv[1], mode="r")
out = {"complete": g.attrs["complete"], "layers": g.attrs["layers"], "layer": {}}
for name in g.attrs["layers"]:
    a = dict(g[name].attrs)
    f = g[name]["features"]
    out["layer"][name] = {"attrs": a, "shape": list(f.shape), "chunks": list(f.chunks), "sum": float(f[...].sum())}
print(json.dumps(out))
"""


@pytest.mark.parametrize("extractor", ["scattering", "resnet18"])
def test_store_attributes_and_plain_zarr_from_another_process(gray, extractor):
    root, _ = gray
    path = root / f"{extractor}.zarr"
    out = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["complete"] is True
    for layer, info in seen["layer"].items():
        attrs = info["attrs"]
        assert attrs["extractor"] == extractor and attrs["layer"] == layer
        assert attrs["weights"] == ("random" if extractor == "resnet18" else "none")
        assert len(attrs["shape_before_pooling"]) == (4 if extractor == "scattering" else 3)
        assert {"torch", "zarr", "numpy", "kymatio", "torchvision"} <= set(attrs["package_versions"])
        assert len(attrs["config_digest"]) == 16
        assert info["chunks"][1] == info["shape"][1]  # chunked along samples only
        local = zarr.open_group(str(path), mode="r")[layer]["features"][...]
        assert info["sum"] == pytest.approx(float(local.sum()), rel=1e-6)


def test_three_channel_store(tmp_path):
    images = make_store(tmp_path / "rgb.zarr", n=12, size=32, channels=3)
    extract_features(tmp_path / "rgb.zarr", tmp_path / "s.zarr", "scattering", SCATTERING, batch_size=5)
    extract_features(tmp_path / "rgb.zarr", tmp_path / "r.zarr", "resnet18", RESNET, batch_size=5)
    scattering = load_features(tmp_path / "s.zarr", "scattering")
    assert scattering.features.shape == (12, 3 * 81 * 8 * 8)
    np.testing.assert_allclose(scattering.features, kymatio_direct(images), rtol=1e-5, atol=1e-6)
    expected = manual_forward(images, build_resnet18("random", seed=0))
    for layer in BODY_LAYERS:
        np.testing.assert_allclose(load_features(tmp_path / "r.zarr", layer).features, expected[layer],
                                   rtol=1e-4, atol=1e-5)


def test_two_runs_identical_and_digest_tracks_config(tmp_path):
    make_store(tmp_path / "images.zarr", n=20)
    extract_features(tmp_path / "images.zarr", tmp_path / "a.zarr", "resnet18", RESNET, batch_size=8)
    extract_features(tmp_path / "images.zarr", tmp_path / "b.zarr", "resnet18", RESNET, batch_size=8)
    a, b = (load_features(tmp_path / f"{x}.zarr", "layer4") for x in "ab")
    np.testing.assert_array_equal(a.features, b.features)
    extract_features(tmp_path / "images.zarr", tmp_path / "c.zarr", "resnet18", {**RESNET, "resize": 64})
    c = load_features(tmp_path / "c.zarr", "layer4")
    assert c.attrs["config_digest"] != a.attrs["config_digest"]
    assert c.attrs["shape_before_pooling"] == [512, 2, 2]


def test_stores_record_where_they_were_computed(tmp_path):
    """Every store and layer says where it was made: a CPU run under known switches records exactly these."""
    import platform

    make_store(tmp_path / "images.zarr", n=8)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for extractor, settings in (("scattering", SCATTERING), ("resnet18", RESNET)):
            extract_features(tmp_path / "images.zarr", tmp_path / f"{extractor}.zarr", extractor, settings)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    expected = {"device": "cpu", "device_name": platform.processor() or platform.machine(), "precision": "fp32",
                "torch": torch.__version__, "cuda": None, "cudnn": None, "tf32_matmul": None, "tf32_cudnn": None,
                "cudnn_benchmark": None, "cudnn_deterministic": None, "deterministic_algorithms": True,
                "threads": 1}
    for extractor in ("scattering", "resnet18"):
        group = zarr.open_group(str(tmp_path / f"{extractor}.zarr"), mode="r")
        assert group.attrs["compute"] == expected
        assert all(group[layer].attrs["compute"] == expected for layer in group.attrs["layers"])


def test_bad_inputs_leave_nothing(tmp_path):
    make_store(tmp_path / "images.zarr", n=4)
    with pytest.raises(ValueError, match="unknown extractor"):
        extract_features(tmp_path / "images.zarr", tmp_path / "x.zarr", "sift", {})
    with pytest.raises(StoreError, match="does not exist"):
        extract_features(tmp_path / "missing.zarr", tmp_path / "x.zarr", "scattering", SCATTERING)
    with pytest.raises(ValueError, match="scattering.J"):
        extract_features(tmp_path / "images.zarr", tmp_path / "x.zarr", "scattering", {"J": 6, "L": 8})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.zarr"]


def test_shard_rows_are_whole_batches_covering_every_row():
    assert [shard_rows(150, 32, i, 4) for i in range(4)] == [(0, 64), (64, 128), (128, 150), (150, 150)]
    assert [shard_rows(100, 16, i, 4) for i in range(4)] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert [shard_rows(10, 256, i, 2) for i in range(2)] == [(0, 10), (10, 10)]
    with pytest.raises(ValueError, match="shard 4 is not one of 0..3"):
        shard_rows(100, 16, 4, 4)


def store_contents(path):
    """Root and layer attributes, and every array with its chunking, of a feature store."""
    group = zarr.open_group(str(path), mode="r")
    arrays = {(layer, name): (group[layer][name][...], group[layer][name].chunks)
              for layer in group.attrs["layers"] for name in ("features", "labels", "split", "index")}
    return dict(group.attrs), {layer: dict(group[layer].attrs) for layer in group.attrs["layers"]}, arrays


def assert_same_store(a, b):
    attrs_a, layers_a, arrays_a = store_contents(a)
    attrs_b, layers_b, arrays_b = store_contents(b)
    assert attrs_a == attrs_b and layers_a == layers_b and arrays_a.keys() == arrays_b.keys()
    for key, (values, chunks) in arrays_a.items():
        assert np.array_equal(values, arrays_b[key][0]) and chunks == arrays_b[key][1], key


@pytest.mark.parametrize(("extractor", "settings"), [("scattering", SCATTERING), ("resnet18", RESNET)])
def test_gathered_shards_equal_one_run(gray, tmp_path, extractor, settings):
    root, _ = gray
    shards = [tmp_path / f"{i}-of-4.zarr" for i in range(4)]  # 64, 64, 22 and 0 rows
    for i, path in enumerate(shards):
        extract_features(root / "images.zarr", path, extractor, settings, batch_size=32, shard=(i, 4))
    assert zarr.open_group(str(shards[1]), mode="r").attrs["shard"] == {"shard": 1, "of": 4, "rows": [64, 128]}
    assert layer_names(shards[3]) == []
    gather_feature_shards(shards, tmp_path / "gathered.zarr")
    assert_same_store(tmp_path / "gathered.zarr", root / f"{extractor}.zarr")
    with pytest.raises(StoreError, match="is not shard 0 of 3"):
        gather_feature_shards(shards[1:], tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()


MINI_SNAKEFILE = """
configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/download.smk"
include: "rules/features.smk"


rule all:
    input:
        expand("results/features/{dataset}/{extractor}.zarr", dataset=DATASETS, extractor=EXTRACTORS),
    default_target: True
"""


def mini_workflow(tmp_path, weights="random", shards=1):
    """The real rules/ and workflow_scripts/ with a Snakefile that includes only data, downloads and features."""

    repo = Path(__file__).resolve().parents[1]
    for name in ("rules", "workflow_scripts", "schemas", "envs", "report", "src"):
        (tmp_path / name).symlink_to(repo / name)
    (tmp_path / "Snakefile").write_text(MINI_SNAKEFILE)
    (tmp_path / "config.yaml").write_text(
        "datasets:\n  tiny: {source: embedded, n_train: 60, n_test: 40}\n"
        f"extractors: [scattering, resnet18]\ndevice: cpu\nresnet18: {{weights: {weights}, batch_size: 32, "
        f"shards: {shards}}}\nscattering: {{batch_size: 16, shards: {shards}}}\n"
    )
    return mini_command(tmp_path)


def mini_command(workdir) -> list[str]:
    """Snakemake on the mini workflow in ``workdir`` (options follow)."""
    return [str(Path(sys.executable).with_name("snakemake")), "--directory", str(workdir), "-s",
            str(workdir / "Snakefile")]


@pytest.fixture(scope="module")
def unsharded_run(tmp_path_factory):
    """The mini workflow run once, one extraction job per extractor (shards: 1)."""
    workdir = tmp_path_factory.mktemp("unsharded")
    snakemake = mini_workflow(workdir)
    subprocess.run([*snakemake, "--cores", "2"], check=True, capture_output=True, text=True)
    return workdir


@pytest.mark.e2e
def test_rules_build_both_stores(unsharded_run):
    snakemake = mini_command(unsharded_run)
    lint = subprocess.run([*snakemake, "--lint"], capture_output=True, text=True)
    assert "features.smk" not in lint.stdout + lint.stderr
    for extractor, dims in (("scattering", [3969]), ("resnet18", [64, 64, 64, 64, 64, 128, 256, 512])):
        store = unsharded_run / f"results/features/tiny/{extractor}.zarr"
        layers = layer_names(store)
        assert [load_features(store, layer).features.shape for layer in layers] == [(100, d) for d in dims]
        assert (unsharded_run / f"results/logs/features/tiny/{extractor}.log").stat().st_size > 0
        assert (unsharded_run / f"results/benchmarks/features/tiny/{extractor}.tsv").exists()


@pytest.mark.e2e
def test_imagenet_weights_come_from_download_rule(tmp_path):
    snakemake = mini_workflow(tmp_path, weights="imagenet")
    out = subprocess.run([*snakemake, "-n", "--cores", "1", "results/features/tiny/resnet18.zarr"],
                         capture_output=True, text=True, check=True)
    assert "download_weights" in out.stdout
    assert "resources/weights/resnet18-f37072fd.pth" in out.stdout


@pytest.mark.e2e
def test_sharded_rules_write_the_store_of_one_job(tmp_path, unsharded_run):
    # 4 shards of whole batches over 100 images: 32, 32, 32 and 4 images each (batches of 16 and 32)
    snakemake = mini_workflow(tmp_path, shards=4)
    subprocess.run([*snakemake, "--cores", "2"], check=True, capture_output=True, text=True)
    logs = tmp_path / "results/logs/features/tiny"
    for extractor in ("scattering", "resnet18"):
        assert_same_store(tmp_path / f"results/features/tiny/{extractor}.zarr",
                          unsharded_run / f"results/features/tiny/{extractor}.zarr")
        assert not (tmp_path / f"results/features/tiny/{extractor}.shards").exists()  # temp(): gone once gathered
        assert sorted(p.name for p in logs.glob(f"{extractor}.*")) == [
            f"{extractor}.{i}-of-4.log" for i in range(4)] + [f"{extractor}.gather.log"]
        assert (unsharded_run / f"results/logs/features/tiny/{extractor}.log").is_file()
