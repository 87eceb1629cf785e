"""Linear CKA (embedscope.similarity): known answers, invariances, the chunked Gram, and the table from stores."""

from __future__ import annotations

import numpy as np
import pytest

from embedscope.artifacts import CKA_COLUMNS, ArtifactError, read_cka
from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.similarity import (
    centred_gram,
    cka_from_grams,
    cka_matrix,
    cka_sample,
    cka_table,
    compute_cka,
    linear_cka,
)
from embedscope.store import FeatureStoreWriter, StoreError, load_feature_rows, write_image_store
from embedscope.tsne import tsne_subset


def direct_cka(x, y):
    """Kornblith et al.'s feature-space form: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    xc = np.asarray(x, np.float64) - np.mean(x, axis=0)
    yc = np.asarray(y, np.float64) - np.mean(y, axis=0)
    return np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def hsic_cka(x, y):
    """The kernel form with the centring matrix H: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, m = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m))


def orthogonal(rng, size):
    q, r = np.linalg.qr(rng.normal(size=(size, size)))
    return q * np.sign(np.diag(r))


def test_cka_of_two_vectors_is_their_squared_correlation():
    # centred a = (-1.5, -0.5, 0.5, 1.5), b = (-0.5, 0.5, -0.5, 0.5): a.b = 1, |a|^2 = 5, |b|^2 = 1 -> 1 / 5
    a = np.array([[0.0], [1.0], [2.0], [3.0]])
    b = np.array([[0.0], [1.0], [0.0], [1.0]])
    assert np.isclose(linear_cka(a, b), 0.2, rtol=0, atol=1e-15)
    # orthogonal centred columns: no alignment at all
    assert np.isclose(linear_cka(b, np.array([[0.0], [0.0], [1.0], [1.0]])), 0.0, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("n", "p", "q"), [(7, 3, 5), (12, 20, 4), (30, 6, 6)])
def test_cka_equals_the_direct_formulas_on_small_matrices(n, p, q):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, p)), rng.normal(size=(n, q)) + 0.5 * rng.normal(size=(n, 1))
    expected = direct_cka(x, y)
    assert np.isclose(hsic_cka(x, y), expected, rtol=1e-12)
    assert np.isclose(linear_cka(x, y), expected, rtol=1e-12)
    assert np.isclose(linear_cka(x.astype(np.float32), y), direct_cka(x.astype(np.float32), y), rtol=1e-12)
    assert 0 <= linear_cka(x, y) <= 1


def test_cka_is_one_with_itself_and_invariant_to_orthogonal_transforms_scaling_and_shifts():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(25, 6)), rng.normal(size=(25, 4))
    assert linear_cka(x, x) == 1.0
    assert np.isclose(linear_cka(x, x @ orthogonal(rng, 6)), 1.0, rtol=0, atol=1e-13)
    assert np.isclose(linear_cka(x, 3.7 * x + 2.0), 1.0, rtol=0, atol=1e-13)
    reference = linear_cka(x, y)
    for transformed in (x @ orthogonal(rng, 6), 0.01 * x, 250.0 * x - 3.0):
        assert np.isclose(linear_cka(transformed, y), reference, rtol=1e-12)
        assert np.isclose(linear_cka(y, transformed), reference, rtol=1e-12)
    # scaling one column only is no isotropic scaling: CKA changes
    assert not np.isclose(linear_cka(x * np.array([10.0, 1, 1, 1, 1, 1]), y), reference, rtol=1e-3)


@pytest.mark.parametrize("columns_per_block", [1, 3, 7, 100])
def test_the_chunked_gram_equals_the_in_memory_one(columns_per_block):
    rng = np.random.default_rng(2)
    x = rng.normal(loc=5.0, size=(9, 7)).astype(np.float32)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    gram = centred_gram(x, block_bytes=8 * 9 * columns_per_block)
    assert gram.dtype == np.float64 and gram.shape == (9, 9)
    assert np.allclose(gram, centred @ centred.T, rtol=1e-12, atol=1e-12)
    assert np.allclose(gram.sum(axis=0), 0, atol=1e-10)  # centred: H K H has zero row sums
    y = rng.normal(size=(9, 3))
    assert np.isclose(linear_cka(x, y, block_bytes=8 * 9 * columns_per_block), direct_cka(x, y), rtol=1e-12)


def test_cka_matrix_is_exactly_symmetric_with_a_unit_diagonal_and_nan_for_a_constant_layer():
    rng = np.random.default_rng(3)
    layers = [rng.normal(size=(11, d)) for d in (2, 5, 9)] + [np.ones((11, 4))]
    matrix = cka_from_grams([centred_gram(x) for x in layers])
    assert np.array_equal(matrix[:3, :3], matrix[:3, :3].T)
    assert np.all(np.diag(matrix)[:3] == 1.0)
    assert np.isnan(matrix[3]).all() and np.isnan(matrix[:, 3]).all()
    for i in range(3):
        for j in range(3):
            assert np.isclose(matrix[i, j], direct_cka(layers[i], layers[j]), rtol=1e-12)


# ---- the table, from an image store and feature stores --------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An image store (3 classes x 16 images, 12 test) and two feature stores; the fine-tuned one lists its rows
    in reverse order, and its layer4 is the scattering layer rotated and scaled."""
    root = tmp_path_factory.mktemp("cka")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 16)
    images = rng.integers(0, 256, size=(48, 6, 6, 1)).astype(np.uint8)
    split = np.tile([0, 0, 1, 0], 12).astype(np.uint8)
    order = rng.permutation(48)
    labels, images, split = labels[order], images[order], split[order]
    data = root / "data.zarr"
    write_image_store(data, images, labels, split, ["a", "b", "c"])
    values = {("scattering", "scattering"): rng.normal(size=(48, 5)) + labels[:, None]}
    for depth, layer in enumerate(EXTRACTOR_LAYERS["resnet18_finetuned"]):
        values["resnet18_finetuned", layer] = rng.normal(size=(48, 3 + depth)) * (1 + labels[:, None])
    values["resnet18_finetuned", "layer4"] = 2.5 * values["scattering", "scattering"] @ orthogonal(rng, 5) + 1.0
    paths = {}
    for extractor in ("scattering", "resnet18_finetuned"):
        paths[extractor] = root / f"{extractor}.zarr"
        rows = np.arange(48) if extractor == "scattering" else np.arange(48)[::-1]
        with FeatureStoreWriter(paths[extractor], labels[rows], split[rows], rows) as writer:
            for layer in EXTRACTOR_LAYERS[extractor]:
                writer.write(layer, 0, values[extractor, layer][rows])
    return {"data": data, "paths": paths, "values": values, "images": images, "labels": labels, "split": split,
            "root": root}


def test_the_subsample_is_seeded_stratified_and_of_the_test_split(stores):
    test = np.flatnonzero(stores["split"] == 1)
    sample = cka_sample(stores["data"], 9, seed=4)
    assert np.array_equal(sample, test[tsne_subset(stores["labels"][test], 9, 4)])
    assert np.array_equal(sample, cka_sample(stores["data"], 9, seed=4)) and len(sample) == 9
    assert np.array_equal(np.bincount(stores["labels"][sample], minlength=3), [3, 3, 3])
    assert np.array_equal(cka_sample(stores["data"], 1000, seed=4), test)


def test_feature_rows_are_read_by_sample_index(stores):
    path = stores["paths"]["resnet18_finetuned"]
    wanted = np.array([40, 2, 17, 17])
    rows = load_feature_rows(path, "head_pool", wanted)
    assert np.array_equal(rows.index, wanted) and np.array_equal(rows.labels, stores["labels"][wanted])
    assert np.array_equal(rows.features, stores["values"]["resnet18_finetuned", "head_pool"][wanted].astype(
        np.float32))
    with pytest.raises(StoreError, match="lacks 1 of the 2 samples"):
        load_feature_rows(path, "head_pool", [3, 48])


@pytest.mark.parametrize("block_bytes", [8 * 9, 64 * 1024 * 1024])  # one column at a time, or every column
def test_the_table_equals_the_in_memory_computation(stores, block_bytes):
    extractors = ["scattering", "resnet18_finetuned"]
    table = cka_table(stores["data"], extractors, [stores["paths"][e] for e in extractors], "toy", n_points=9,
                      seed=4, block_bytes=block_bytes)
    assert list(table.columns) == list(CKA_COLUMNS)
    sample = cka_sample(stores["data"], 9, seed=4)
    sets = {("pixels", "pixels"): stores["images"][sample].reshape(9, -1).astype(np.float32) / 255.0}
    sets |= {key: value[sample].astype(np.float32) for key, value in stores["values"].items()}
    names, matrix = cka_matrix(table)
    assert names == [("pixels", "pixels"), ("scattering", "scattering"),
                     *[("resnet18_finetuned", layer) for layer in EXTRACTOR_LAYERS["resnet18_finetuned"]]]
    assert len(table) == len(names) ** 2 and set(table["n"]) == {9} and set(table["dataset"]) == {"toy"}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert np.isclose(matrix[i, j], direct_cka(sets[a], sets[b]), rtol=1e-6), (a, b)
    assert np.array_equal(matrix, matrix.T) and np.all(np.diag(matrix) == 1.0)
    rotated = names.index(("resnet18_finetuned", "layer4"))
    assert np.isclose(matrix[1, rotated], 1.0, rtol=0, atol=1e-6)
    widths = dict(zip(zip(table["features_a"], table["layer_a"], strict=True), table["D_a"], strict=True))
    assert widths["pixels", "pixels"] == 36 and widths["resnet18_finetuned", "softmax"] == 6


def test_the_csv_round_trips_and_bad_tables_are_refused(stores, tmp_path):
    csv, md = tmp_path / "cka.csv", tmp_path / "cka.md"
    table = compute_cka(stores["data"], ["scattering"], [stores["paths"]["scattering"]], csv, md, dataset="toy",
                        n_points=6, seed=4)
    assert read_cka(csv).equals(table)
    text = md.read_text()
    assert text.startswith("# Layer similarity on toy") and "plain (biased)" in text and "n = 6 test images" in text
    assert "| pixels     |   1.0000 |" in text and "scattering |" in text
    table.iloc[1:].to_csv(tmp_path / "partial.csv", index=False)
    read_cka(tmp_path / "partial.csv")  # a missing pair is not the reader's business; a repeated one is
    table.iloc[[0, 0, 1, 2, 3]].to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(ArtifactError, match="appears twice"):
        read_cka(tmp_path / "twice.csv")


def test_a_stale_store_is_refused(stores, tmp_path):
    labels = stores["labels"].copy()
    labels[stores["split"] == 1] = (labels[stores["split"] == 1] + 1) % 3
    stale = tmp_path / "scattering.zarr"
    with FeatureStoreWriter(stale, labels, stores["split"], np.arange(48)) as writer:
        writer.write("scattering", 0, stores["values"]["scattering", "scattering"])
    with pytest.raises(StoreError, match="labels of the CKA subsample disagree"):
        cka_table(stores["data"], ["scattering"], [stale], n_points=6)
