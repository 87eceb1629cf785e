"""What only a GPU can check, run by bench/gpu_check.sh (`pytest -m cuda tests/test_cuda.py`).

Deselected in every other run (pyproject's addopts has `-m "not cuda"`), so a CPU-only machine never collects
them as skips; on a machine without CUDA they skip, naming why.
"""

import numpy as np
import pytest
import torch
from test_checkpoint import tensors

from embedscope.artifacts import read_predictions
from embedscope.checkpoint import read_checkpoint
from embedscope.features import build_extractor, run_extraction
from embedscope.finetune import finetune_resnet18
from embedscope.store import load_features, write_image_store

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 600
    labels = np.arange(n) % 10
    images = (rng.random((n, 28, 28, 1)) * 60 + labels[:, None, None, None] * 19).astype(np.uint8)
    split = (np.arange(n) % 4 == 0).astype(np.uint8)
    path = tmp_path_factory.mktemp("cuda") / "data.zarr"
    write_image_store(path, images, labels, split, [str(c) for c in range(10)], {"source": "synthetic"})
    return path


@pytest.mark.parametrize("extractor, settings", [("scattering", {"J": 2, "L": 8}), ("resnet18", {"weights": "random"})])
def test_cuda_features_equal_cpu_features(image_store, tmp_path, extractor, settings):
    stores = {}
    for device in ("cpu", "cuda"):
        model = build_extractor(extractor, settings, image_store, device)
        stores[device] = tmp_path / f"{device}.zarr"
        run_extraction(image_store, stores[device], model, 128, model.store_attrs(0))
    for layer in model.layers:
        cpu, cuda = (load_features(stores[d], layer).features for d in ("cpu", "cuda"))
        assert np.allclose(cpu, cuda, rtol=1e-3, atol=1e-4), layer


def test_mixed_precision_fine_tuning_predicts_what_the_softmax_store_holds(image_store, tmp_path):
    """Training under fp16 autocast; predictions.csv and the softmax layer both from fp32 passes: equal argmax."""
    out = tmp_path / "models"
    finetune_resnet18(image_store, out / "model.pt", out / "log.csv", out / "predictions.csv",
                      finetune={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 32, "mixed_precision": True},
                      resnet18={"weights": "random"}, device="cuda")
    model = build_extractor("resnet18_finetuned", {}, image_store, "cuda", model_path=out / "model.pt")
    run_extraction(image_store, tmp_path / "finetuned.zarr", model, 128, model.store_attrs(0))
    softmax = load_features(tmp_path / "finetuned.zarr", "softmax", "test")
    predictions = read_predictions(out / "predictions.csv")
    position = {int(i): row for row, i in enumerate(softmax.index)}
    stored = softmax.features[[position[int(i)] for i in predictions["index"]]]
    assert np.array_equal(stored.argmax(1), predictions["pred"].to_numpy())
    checkpoint = read_checkpoint(out / "model.pt")  # weights_only=True
    assert {t.device.type for t in tensors(checkpoint)} == {"cpu"}  # written by a CUDA run
