"""ResNet-18 weights: state_dict files round-trip, bad files are named, the hash-checked download, and the
torchvision enum as the one source of the ImageNet file's URL, name, hash prefix and normalisation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from embedscope.features import extract_features
from embedscope.resnet import (
    IMAGENET_HASH_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMAGENET_WEIGHTS_FILE,
    IMAGENET_WEIGHTS_URL,
    WeightsError,
    build_resnet18,
    download_imagenet_weights,
    imagenet_weights_path,
)
from embedscope.store import load_features, write_image_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A seeded random ResNet-18 state_dict saved the way torchvision ships its weights."""
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    model = build_resnet18("random", seed=7)
    torch.save(model.state_dict(), path)
    return path, model


def test_saved_state_dict_round_trips(saved):
    path, model = saved
    loaded = build_resnet18(str(path))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(build_resnet18("random", seed=0).conv1.weight, loaded.conv1.weight)


def test_path_weights_feed_extraction(saved, tmp_path):
    path, model = saved
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)
    write_image_store(tmp_path / "images.zarr", images, np.arange(6) % 2, np.zeros(6), ["a", "b"])
    extract_features(tmp_path / "images.zarr", tmp_path / "f.zarr", "resnet18", {"weights": str(path)})
    layer4 = load_features(tmp_path / "f.zarr", "layer4")
    assert layer4.attrs["weights"] == str(path)
    assert layer4.attrs["settings"]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    from embedscope.resnet import preprocess

    with torch.no_grad():
        body = torch.nn.Sequential(*list(model.eval().children())[:8])
        expected = body(preprocess(images)).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(layer4.features, expected, rtol=1e-4, atol=1e-5)


def test_truncated_file_is_named(saved, tmp_path):
    path, _ = saved
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"truncated\.pth.*could not be read"):
        build_resnet18(str(truncated))


def test_wrong_architecture_is_named(tmp_path):
    from torchvision.models import resnet34

    wrong = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(WeightsError, match=r"resnet34\.pth is not a ResNet-18 state_dict"):
        build_resnet18(str(wrong))
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_state_dict)
    with pytest.raises(WeightsError, match=r"list\.pth does not hold a state_dict"):
        build_resnet18(str(not_a_state_dict))


def test_missing_imagenet_file_says_where_to_put_it(tmp_path):
    with pytest.raises(WeightsError, match=rf"{tmp_path}/weights/{IMAGENET_WEIGHTS_FILE}"):
        build_resnet18("imagenet", resources=tmp_path)


def test_download_checks_hash(saved, tmp_path):
    path, _ = saved
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    destination = tmp_path / "weights" / IMAGENET_WEIGHTS_FILE
    download_imagenet_weights(destination, url=path.as_uri(), hash_prefix=sha[:8])
    assert destination.read_bytes() == path.read_bytes()

    other = tmp_path / "other" / IMAGENET_WEIGHTS_FILE
    with pytest.raises(WeightsError, match="hash"):
        download_imagenet_weights(other, url=path.as_uri(), hash_prefix="00000000")
    assert not other.exists() and list(other.parent.iterdir()) == []


def test_download_offline_says_where_to_put_it(tmp_path):
    destination = tmp_path / "weights" / IMAGENET_WEIGHTS_FILE
    with pytest.raises(WeightsError, match=rf"could not download .* place it at {destination}"):
        download_imagenet_weights(destination, url=(tmp_path / "nowhere.pth").as_uri())
    assert not destination.exists()


def test_download_rejects_wrong_architecture(tmp_path):
    wrong = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), wrong)
    destination = tmp_path / "weights" / IMAGENET_WEIGHTS_FILE
    with pytest.raises(WeightsError, match="not a ResNet-18 state_dict"):
        download_imagenet_weights(destination, url=wrong.as_uri(), hash_prefix=None)
    assert not destination.exists()


def test_imagenet_file_comes_from_torchvision_enum():
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    assert IMAGENET_WEIGHTS_URL == weights.url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert IMAGENET_WEIGHTS_FILE == "resnet18-f37072fd.pth" and IMAGENET_HASH_PREFIX == "f37072fd"
    assert str(imagenet_weights_path("resources")) == "resources/weights/resnet18-f37072fd.pth"
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
