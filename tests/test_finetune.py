"""Fine-tuning: model head, freezing, one-cycle schedule, learning, checkpoints and resume (issue 4)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from embedscope import finetune as ft
from embedscope.layers import BODY_LAYERS, FINETUNED_LAYERS
from embedscope.store import layer_names, load_features, write_image_store

SIZE = 16  # small images keep ResNet-18 fast; layer4 is 1x1 here


def toy_images(n, seed=0, size=SIZE):
    """Two easy classes: bright top half (0) vs bright bottom half (1), with noise; uint8 NHWC."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, size, size, 1))
    half = size // 2
    images[labels == 0, :half] += 180
    images[labels == 1, half:] += 180
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)


def quick_recipe(**changes):
    recipe = {"batch_size": 32, "stage1_epochs": 1, "stage2_epochs": 1, "stage1_max_lr": 3e-3,
              "stage2_lr_min": 1e-4, "stage2_lr_max": 1e-3}
    return {**recipe, **changes}


@pytest.fixture(autouse=True)
def _cpu_deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("n_classes", [10, 3])
def test_head_shapes(n_classes):
    model = ft.FinetunedResNet18(n_classes).eval()
    assert list(dict(model.body.named_children())) == list(BODY_LAYERS)
    names = [type(m).__name__ for m in model.head]
    assert names == ["ConcatPool2d", "Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d",
                     "Dropout", "Linear"]
    assert model.head[3].p == 0.25 and model.head[7].p == 0.5
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        assert model(x).shape == (4, n_classes)
        emb = model.embeddings(x)
        assert model.head[:4](model.body(x)).shape == (4, 1024)
    assert {k: tuple(v.shape) for k, v in emb.items()} == {
        "layer4": (4, 512), "head_pool": (4, 1024), "head_hidden": (4, 512), "softmax": (4, n_classes)}
    assert tuple(emb) == FINETUNED_LAYERS
    assert torch.allclose(emb["softmax"].sum(1), torch.ones(4))
    assert torch.allclose(torch.softmax(model(x), 1), emb["softmax"], atol=1e-6)


def test_concat_pool_equals_torch_pools():
    x = torch.randn(3, 5, 7, 6)
    expected = torch.cat([nn.AdaptiveAvgPool2d(1)(x), nn.AdaptiveMaxPool2d(1)(x)], dim=1)
    assert torch.equal(ft.ConcatPool2d()(x), expected)


def test_stage1_step_freezes_convs_but_trains_batchnorm():
    model = ft.FinetunedResNet18(2)
    ft.freeze_body(model, frozen=True)
    recipe = ft.recipe_from_config(quick_recipe())
    lrs = ft.stage_lrs(recipe, 1)
    optimizer = ft.make_optimizer(model, recipe, lrs)
    scheduler = ft.one_cycle(optimizer, recipe, lrs, 10)
    images, labels = toy_images(16)
    loader = ft.BatchLoader(images, labels, 16, shuffle=True)
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    ft.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, "cpu", 0, scheduler)
    after = model.body.state_dict()
    convs = [k for k in before if "conv" in k or "downsample.0" in k]
    bns = [k for k in before if ("bn" in k or "downsample.1" in k) and k.endswith(("weight", "bias"))]
    assert convs and bns
    for key in convs:
        assert torch.equal(before[key], after[key]), key
    assert all(not torch.equal(before[key], after[key]) for key in bns)
    assert all(p.requires_grad for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)
               for p in m.parameters())
    ft.freeze_body(model, frozen=False)
    assert all(p.requires_grad for p in model.parameters())


def lr_curve(recipe, stage, total=100):
    model = nn.Linear(1, 1)
    recipe = ft.recipe_from_config(recipe)
    lrs = ft.stage_lrs(recipe, stage)
    optimizer = torch.optim.AdamW([{"params": [model.weight] if g == 0 else [], "lr": lr}
                                   for g, lr in enumerate(lrs)], betas=(0.95, 0.99))
    scheduler = ft.one_cycle(optimizer, recipe, lrs, total)
    curve, moms = [], []
    for _ in range(total):
        curve.append([g["lr"] for g in optimizer.param_groups])
        moms.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    return np.array(curve), np.array(moms)


def test_one_cycle_peaks_where_configured_and_ends_near_zero():
    recipe = quick_recipe(stage1_max_lr=3e-3, pct_start=0.25, div_factor=25.0, final_div_factor=1e4)
    curve, moms = lr_curve(recipe, 1, total=100)
    lr = curve[:, 0]
    peak = int(lr.argmax())
    assert abs(peak - 25) <= 1
    assert math.isclose(lr.max(), 3e-3, rel_tol=1e-3)
    assert math.isclose(lr[0], 3e-3 / 25, rel_tol=1e-3)
    assert lr[-1] < 3e-3 * 1e-4 and lr[-1] > 0
    assert np.all(np.diff(lr[: peak + 1]) > 0) and np.all(np.diff(lr[peak:]) < 0)
    assert math.isclose(moms[0], 0.95) and math.isclose(moms[peak], 0.85, abs_tol=1e-3)
    assert math.isclose(moms[-1], 0.95, abs_tol=1e-3)
    assert np.allclose(curve, curve[:, :1])  # stage 1: the same lr in every group


def test_stage2_group_lrs_in_configured_ratio():
    recipe = quick_recipe(stage2_lr_min=1e-6, stage2_lr_max=1e-4, lr_groups=3)
    assert np.allclose(ft.stage_lrs(ft.recipe_from_config(recipe), 2), [1e-6, 1e-5, 1e-4])
    curve, _ = lr_curve(recipe, 2, total=40)
    assert np.allclose(curve[:, 1] / curve[:, 0], 10.0) and np.allclose(curve[:, 2] / curve[:, 1], 10.0)
    assert math.isclose(curve[:, 2].max(), 1e-4, rel_tol=1e-3)
    model = ft.FinetunedResNet18(3)
    groups = ft.layer_groups(model, 3)
    front = {id(p) for name in BODY_LAYERS[:6] for p in getattr(model.body, name).parameters()}
    assert {id(p) for p in groups[0]} == front
    assert {id(p) for p in groups[2]} == {id(p) for p in model.head.parameters()}
    assert sum(len(g) for g in groups) == len(list(model.parameters()))


def test_bad_recipe_names_the_key():
    with pytest.raises(ft.FinetuneError, match="finetune.lr_groups"):
        ft.recipe_from_config({"lr_groups": 4})
    with pytest.raises(ft.FinetuneError, match="finetune.stage2_lr_min"):
        ft.recipe_from_config({"stage2_lr_min": 1e-2, "stage2_lr_max": 1e-3})
    with pytest.raises(ft.FinetuneError, match="finetune.bogus"):
        ft.recipe_from_config({"bogus": 1})


def test_learns_two_easy_classes():
    torch.manual_seed(0)
    images, labels = toy_images(200)
    model = ft.FinetunedResNet18(2, seed=0)
    train = ft.BatchLoader(images, labels, 32, shuffle=True, drop_last=True)
    test = ft.BatchLoader(images, labels, 100)
    ft.fit(model, train, test, quick_recipe(stage1_epochs=2, stage2_epochs=2), seed=0)
    result = ft.evaluate(model, nn.CrossEntropyLoss(), test, "cpu")
    assert result["accuracy"] >= 0.9, result["accuracy"]


@pytest.fixture
def toy_store(tmp_path):
    images, labels = toy_images(96, seed=1)
    split = (np.arange(96) % 3 == 0).astype(np.uint8)
    path = tmp_path / "toy.zarr"
    write_image_store(path, images, labels, split, ["top", "bottom"])
    return path


def run_training(store, out, stage1_epochs=1, stage2_epochs=1, **kwargs):
    recipe = quick_recipe(stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs, batch_size=16)
    return ft.finetune_resnet18(
        store, out / "resnet18_finetuned.pt", out / "training_log.csv", out / "predictions.csv",
        finetune=recipe, resnet18={"weights": "random"}, seed=0, **kwargs)


def test_checkpoint_round_trip_log_predictions_and_features(toy_store, tmp_path):
    import pandas as pd

    out = tmp_path / "models"
    result = run_training(toy_store, out)
    checkpoint = torch.load(out / "resnet18_finetuned.pt", weights_only=True)
    assert checkpoint["class_names"] == ["top", "bottom"] and checkpoint["stage"] == 2 and checkpoint["epoch"] == 0
    assert checkpoint["config"]["finetune"]["stage2_lr_max"] == 1e-3
    model, loaded = ft.load_finetuned(out / "resnet18_finetuned.pt")
    assert not model.training and loaded["test_accuracy"] == result["test_accuracy"]
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not (out / "resume").exists()

    log = pd.read_csv(out / "training_log.csv")
    assert list(log.columns) == ["kind", "stage", "epoch", "step", "lr_0", "lr_1", "lr_2", "train_loss",
                                 "test_loss", "test_accuracy"]
    steps, epochs = log[log.kind == "step"], log[log.kind == "epoch"]
    assert list(steps.step) == list(range(len(steps))) and len(steps) == 2 * 4  # 64 train images / 16
    assert list(zip(epochs.stage, epochs.epoch, strict=True)) == [(1, 0), (2, 0)]
    assert steps.test_loss.isna().all() and epochs.lr_0.isna().all() and epochs.test_accuracy.notna().all()
    s1 = steps[steps.stage == 1]
    assert np.allclose(s1.lr_0, s1.lr_2)
    s2 = steps[steps.stage == 2]
    assert np.allclose(s2.lr_2 / s2.lr_0, 10.0)

    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["index", "label", "pred", "prob", "loss", "prob_0", "prob_1"]
    assert list(pred["index"]) == list(np.arange(96)[np.arange(96) % 3 == 0])
    assert np.allclose(pred[["prob_0", "prob_1"]].sum(axis=1), 1, atol=1e-5)
    assert np.isclose((pred.pred == pred.label).mean(), result["test_accuracy"])
    assert np.allclose(pred.loss, -np.log(np.where(pred.label == 0, pred.prob_0, pred.prob_1)), atol=1e-4)

    store = tmp_path / "features" / "resnet18_finetuned.zarr"
    ft.extract_finetuned_features(toy_store, out / "resnet18_finetuned.pt", store, batch_size=40)
    assert layer_names(store) == list(FINETUNED_LAYERS)
    dims = {"layer4": 512, "head_pool": 1024, "head_hidden": 512, "softmax": 2}
    for layer, dim in dims.items():
        fs = load_features(store, layer)
        assert fs.features.shape == (96, dim) and list(fs.index) == list(range(96))
        assert fs.attrs["extractor"] == "resnet18_finetuned" and fs.attrs["layer"] == layer
        assert fs.attrs["weights"] == "random" and "torch" in fs.attrs["package_versions"]
    assert load_features(store, "layer4").attrs["shape_before_pooling"] == [512, 1, 1]
    test = load_features(store, "softmax", "test")
    assert np.allclose(test.features, pred[["prob_0", "prob_1"]].to_numpy(), atol=1e-5)


def test_resume_after_interruption_matches_uninterrupted_run(toy_store, tmp_path):
    full = tmp_path / "full"
    run_training(toy_store, full, stage2_epochs=2)

    def crash(stage, epoch):
        if (stage, epoch) == (2, 0):
            raise ft.TrainingInterrupted("simulated crash")

    part = tmp_path / "part"
    with pytest.raises(ft.TrainingInterrupted):
        run_training(toy_store, part, stage2_epochs=2, on_epoch_end=crash)
    resume = ft.default_resume_path(part / "resnet18_finetuned.pt")
    assert resume == part / "resume" / "resnet18_finetuned.resume.pt" and resume.is_file()
    assert not (part / "resnet18_finetuned.pt").exists()
    assert torch.load(resume, weights_only=True)["stage"] == 2

    seen = []
    run_training(toy_store, part, stage2_epochs=2, on_epoch_end=lambda s, e: seen.append((s, e)))
    assert seen == [(2, 1)]  # only the epoch after the interruption ran again
    assert not resume.exists()
    a = torch.load(full / "resnet18_finetuned.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "resnet18_finetuned.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (full / "training_log.csv").read_text() == (part / "training_log.csv").read_text()
