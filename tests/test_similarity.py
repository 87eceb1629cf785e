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


# ---- the fine-tuned body's layers, computed for the subsample from the checkpoint -----------------------------


def save_toy_checkpoint(path, model, class_names, seed=0):
    from embedscope.checkpoint import save_checkpoint

    training = {"optimizer": {}, "scheduler": {}, "scaler": {}, "stage": 2, "epoch": 0}
    config = {"resnet18": {"weights": "random", "resize": None}, "finetune": {}, "seed": seed}
    save_checkpoint(path, model, training, class_names, config, "toy", {"accuracy": 0.5, "loss": 1.0}, 0.0)


def nudged(model, layers, scale, seed):
    """``model`` with noise added to every parameter and running mean of the body children ``layers``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for name, value in getattr(model.body, layer).state_dict(keep_vars=True).items():
                if value.dtype.is_floating_point and not name.endswith("running_var"):
                    value.add_(scale * torch.randn(value.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """An image store (3 classes x 15 images of 16 x 16, 15 test), the frozen resnet18 store (random weights, seed
    0), a "fine-tuned" checkpoint whose network is that one with layer3 and layer4 moved (and a head), its store,
    and a second checkpoint whose layer4 is not the store's."""
    from embedscope.features import extract_features
    from embedscope.resnet import FinetunedResNet18

    root = tmp_path_factory.mktemp("cka_networks")
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 15)
    images = rng.integers(0, 256, size=(45, 16, 16, 1)).astype(np.uint8)
    images[labels == 1, :8] //= 4  # some class structure for the layers to show
    split = np.tile([0, 0, 1], 15).astype(np.uint8)
    classes = ["a", "b", "c"]
    data = root / "data.zarr"
    write_image_store(data, images, labels, split, classes)
    frozen = root / "resnet18.zarr"
    extract_features(data, frozen, "resnet18", {"weights": "random", "resize": None}, batch_size=8, seed=0)
    model = nudged(FinetunedResNet18(len(classes), "random", seed=0), ["layer3", "layer4"], 0.05, seed=1).eval()
    checkpoint, other = root / "finetuned.pt", root / "other.pt"
    save_toy_checkpoint(checkpoint, model, classes)
    tuned = root / "resnet18_finetuned.zarr"
    extract_features(data, tuned, "resnet18_finetuned", batch_size=8, model_path=checkpoint)
    save_toy_checkpoint(other, nudged(FinetunedResNet18(len(classes), "random", seed=0), ["layer4"], 0.5, seed=2),
                        classes)
    return {"data": data, "frozen": frozen, "tuned": tuned, "checkpoint": checkpoint, "other": other,
            "model": model, "images": images, "root": root}


def direct_body(model, images):
    """The body children's outputs, each averaged over space, by a hand-rolled forward pass."""
    import torch

    from embedscope.resnet import preprocess

    layers = {}
    with torch.no_grad():
        x = preprocess(images)
        for name, child in model.body.named_children():
            x = child(x)
            layers[name] = x.mean(dim=(2, 3)).numpy().copy()  # before the next child (ReLU is in place)
    return layers


def test_the_finetuned_body_layers_equal_a_direct_forward_pass_and_layer4_the_stores(networks):
    from embedscope.layers import BODY_LAYERS
    from embedscope.similarity import finetuned_body_rows

    sample = cka_sample(networks["data"], 12, seed=0)
    rows = finetuned_body_rows(networks["checkpoint"], networks["data"], sample, batch_size=5)
    expected = direct_body(networks["model"], networks["images"][sample])
    assert list(rows) == list(BODY_LAYERS) == list(expected)
    for layer in BODY_LAYERS:
        assert rows[layer].dtype == np.float32 and rows[layer].shape == expected[layer].shape, layer
        assert np.allclose(rows[layer], expected[layer], rtol=1e-5, atol=1e-6), layer
    stored = load_feature_rows(networks["tuned"], "layer4", sample).features
    assert np.allclose(rows["layer4"], stored, rtol=1e-5, atol=1e-6)


def test_the_table_has_the_finetuned_body_and_its_same_layer_diagonal(networks):
    from embedscope.layers import BODY_LAYERS, CKA_LAYERS, FINETUNED_BODY_ONLY
    from embedscope.similarity import same_layer_cka

    extractors = ["resnet18", "resnet18_finetuned"]
    table = cka_table(networks["data"], extractors, [networks["frozen"], networks["tuned"]], n_points=12, seed=0,
                      model_path=networks["checkpoint"], batch_size=5)
    names, matrix = cka_matrix(table)
    assert names == [("pixels", "pixels"), *[(e, layer) for e in extractors for layer in CKA_LAYERS[e]]]
    assert CKA_LAYERS["resnet18_finetuned"] == (*BODY_LAYERS, "head_pool", "head_hidden", "softmax")
    sample = cka_sample(networks["data"], 12, seed=0)
    sets = {("pixels", "pixels"): networks["images"][sample].reshape(12, -1).astype(np.float32) / 255.0}
    body = direct_body(networks["model"], networks["images"][sample])
    for extractor, store in zip(extractors, [networks["frozen"], networks["tuned"]], strict=True):
        for layer in EXTRACTOR_LAYERS[extractor]:
            sets[extractor, layer] = load_feature_rows(store, layer, sample).features
    sets |= {("resnet18_finetuned", layer): body[layer] for layer in FINETUNED_BODY_ONLY}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert np.isclose(matrix[i, j], direct_cka(sets[a], sets[b]), rtol=1e-5), (a, b)
    assert table.attrs["layer4_difference"] < 1e-6
    same = same_layer_cka(table)
    assert list(same["layer"]) == list(BODY_LAYERS)
    values = dict(zip(same["layer"], same["cka"], strict=True))
    # conv1 ... layer2 were not moved: the same layer up to the last bits; layer3 and layer4 were
    assert all(np.isclose(values[layer], 1.0, rtol=0, atol=1e-6) for layer in BODY_LAYERS[:6]), values
    assert values["layer3"] < 0.999 and values["layer4"] < 0.999, values
    # without the checkpoint the fine-tuned block is its store's layers, as before
    plain = cka_table(networks["data"], extractors, [networks["frozen"], networks["tuned"]], n_points=12, seed=0)
    assert cka_matrix(plain)[0] == [("pixels", "pixels"), *[(e, layer) for e in extractors
                                                            for layer in EXTRACTOR_LAYERS[e]]]
    assert plain.attrs["layer4_difference"] is None and same_layer_cka(plain)["layer"].tolist() == ["layer4"]


def test_a_checkpoint_that_is_not_the_stores_is_refused(networks):
    with pytest.raises(StoreError, match="layer4 differs from the checkpoint's layer4"):
        cka_table(networks["data"], ["resnet18", "resnet18_finetuned"], [networks["frozen"], networks["tuned"]],
                  n_points=12, model_path=networks["other"])


def test_both_networks_start_from_the_same_seeded_weights_and_the_note_says_so(networks, tmp_path):
    import torch

    from embedscope.resnet import FinetunedResNet18, build_resnet18
    from embedscope.similarity import shared_start

    frozen = build_resnet18("random", seed=0).state_dict()
    body = FinetunedResNet18(3, "random", seed=0).body.state_dict()
    assert list(body) == [key for key in frozen if not key.startswith("fc.")]
    assert all(torch.equal(body[key], frozen[key]) for key in body)
    assert not torch.equal(FinetunedResNet18(3, "random", seed=1).body.state_dict()["conv1.weight"],
                           frozen["conv1.weight"])
    same, line = shared_start(networks["frozen"], networks["checkpoint"])
    assert same and "same weights (weights random, seed 0, resize None)" in line
    reseeded = tmp_path / "seed1.pt"
    save_toy_checkpoint(reseeded, networks["model"], ["a", "b", "c"], seed=1)
    same, line = shared_start(networks["frozen"], reseeded)
    assert not same and "did not start from the same weights" in line and "seed 1" in line

    csv, md = tmp_path / "cka.csv", tmp_path / "cka.md"
    compute_cka(networks["data"], ["resnet18", "resnet18_finetuned"], [networks["frozen"], networks["tuned"]], csv,
                md, dataset="toy", n_points=12, model_path=networks["checkpoint"], batch_size=5)
    text = md.read_text()
    assert "conv1, bn1, relu, maxpool, layer1, layer2, layer3 are not in its feature store" in text
    assert "## Frozen vs fine-tuned, same layer" in text and "started from the same weights" in text
    assert "Changed most: layer" in text and "| conv1   |" in text
