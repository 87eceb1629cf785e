"""Fine-tuning: model head, freezing, one-cycle schedule, learning, checkpoints, resume, fine-tuned features."""

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from embedscope import checkpoint as ckpt
from embedscope import finetune as ft
from embedscope.artifacts import read_collapse, read_predictions, read_training_log
from embedscope.collapse import COLLAPSE_METRICS, collapse_statistics
from embedscope.features import extract_features
from embedscope.layers import BODY_LAYERS, FINETUNED_LAYERS
from embedscope.resnet import ConcatPool2d, FinetunedResNet18, FinetuneError, preprocess
from embedscope.store import layer_names, load_features, open_complete, read_image_store, write_image_store

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
    model = FinetunedResNet18(n_classes).eval()
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
    assert torch.equal(ConcatPool2d()(x), expected)


def stage1_optimizer(model):
    """Stage 1 of the quick recipe on ``model``: body frozen but BatchNorm, one-cycle over 10 steps."""
    ft.freeze_body(model, frozen=True)
    recipe = ft.recipe_from_config(quick_recipe())
    lrs = ft.stage_lrs(recipe, 1)
    optimizer = ft.make_optimizer(model, recipe, lrs)
    return optimizer, ft.one_cycle(optimizer, recipe, lrs, 10)


def test_stage1_step_freezes_convs_but_trains_batchnorm():
    model = FinetunedResNet18(2)
    optimizer, scheduler = stage1_optimizer(model)
    images, labels = toy_images(16)
    loader = ft.make_loader(images, labels, 16, shuffle=True)
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
    assert peak == 24  # torch's first phase ends at step pct_start * total - 1
    assert math.isclose(lr.max(), 3e-3, rel_tol=1e-12)
    assert math.isclose(lr[0], 3e-3 / 25, rel_tol=1e-12)
    assert math.isclose(lr[-1], 3e-3 / 25 / 1e4, rel_tol=1e-12)  # the last step reaches initial / final_div_factor
    assert np.all(np.diff(lr[: peak + 1]) > 0) and np.all(np.diff(lr[peak:]) < 0)
    assert math.isclose(moms[0], 0.95, rel_tol=1e-12) and math.isclose(moms[peak], 0.85, rel_tol=1e-12)
    assert math.isclose(moms[-1], 0.95, rel_tol=1e-12)
    assert np.allclose(curve, curve[:, :1])  # stage 1: the same lr in every group


def test_stage2_group_lrs_in_configured_ratio():
    recipe = quick_recipe(stage2_lr_min=1e-6, stage2_lr_max=1e-4, lr_groups=3)
    assert np.allclose(ft.stage_lrs(ft.recipe_from_config(recipe), 2), [1e-6, 1e-5, 1e-4])
    curve, _ = lr_curve(recipe, 2, total=40)
    assert np.allclose(curve[:, 1] / curve[:, 0], 10.0) and np.allclose(curve[:, 2] / curve[:, 1], 10.0)
    assert math.isclose(curve[:, 2].max(), 1e-4, rel_tol=1e-12)
    model = FinetunedResNet18(3)
    groups = ft.layer_groups(model, 3)
    front = {id(p) for name in BODY_LAYERS[:6] for p in getattr(model.body, name).parameters()}
    assert {id(p) for p in groups[0]} == front
    assert {id(p) for p in groups[2]} == {id(p) for p in model.head.parameters()}
    assert sum(len(g) for g in groups) == len(list(model.parameters()))


def test_bad_recipe_names_the_key():
    with pytest.raises(FinetuneError, match="finetune.lr_groups"):
        ft.recipe_from_config({"lr_groups": 4})
    with pytest.raises(FinetuneError, match="finetune.stage2_lr_min"):
        ft.recipe_from_config({"stage2_lr_min": 1e-2, "stage2_lr_max": 1e-3})
    with pytest.raises(FinetuneError, match="finetune.bogus"):
        ft.recipe_from_config({"bogus": 1})


def test_loader_yields_uint8_batches_in_randperm_order_of_the_seed():
    images, labels = toy_images(100)
    loader = ft.make_loader(images, labels, 32, shuffle=True, drop_last=True, seed=3)
    for seed in (7, 8):
        loader.batch_sampler.set_seed(seed)
        batches = list(loader)
        order = torch.randperm(100, generator=torch.Generator().manual_seed(seed))
        assert len(batches) == len(loader) == 3  # 100 // 32: the partial batch of 4 is dropped
        for i, (x, y) in enumerate(batches):
            assert x.dtype == torch.uint8 and tuple(x.shape) == (32, SIZE, SIZE, 1)
            assert torch.equal(x, torch.from_numpy(images)[order[32 * i : 32 * (i + 1)]])
            assert torch.equal(y, torch.from_numpy(labels)[order[32 * i : 32 * (i + 1)]])
    ordered = list(ft.make_loader(images, labels, 32))
    assert [len(y) for _, y in ordered] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([x for x, _ in ordered]), torch.from_numpy(images))
    # fewer images than one batch: drop_last keeps the only (partial) batch
    assert [len(y) for _, y in ft.make_loader(images[:20], labels[:20], 32, shuffle=True, drop_last=True)] == [20]


def test_loader_holds_the_given_array_and_leaves_the_global_generator_alone():
    images, labels = toy_images(64)
    loader = ft.make_loader(images, labels, 16, shuffle=True, drop_last=True)
    assert np.shares_memory(loader.dataset.images.numpy(), images)
    assert loader.num_workers == 0 and not loader.pin_memory  # on the CPU: no workers, no pinned copies
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    list(loader)
    assert torch.equal(torch.rand(3), expected)  # dropout masks seeded per epoch stay where they were


def test_training_data_is_one_preallocated_array_per_split(toy_store):
    data, fingerprint = ft._read_data(toy_store)
    whole = read_image_store(toy_store)
    for split in ("train", "test"):
        assert data.images[split].dtype == np.uint8 and data.images[split].flags.owndata
        assert np.array_equal(data.images[split], whole.subset(split)[0])
        assert np.array_equal(data.index[split], whole.indices(split))
    train, test = ft._loaders(data, 16, 0, "cpu", workers=4)
    assert np.shares_memory(train.dataset.images.numpy(), data.images["train"])
    assert np.shares_memory(test.dataset.images.numpy(), data.images["test"])
    assert train.num_workers == 0  # workers only on CUDA
    # the digest of the whole arrays, hashed at once as before: resume files and checkpoints keep their digests
    digest = hashlib.sha256()
    for array in (whole.images, whole.labels, whole.split):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    assert fingerprint == digest.hexdigest()[:16]


def test_scheduler_steps_only_after_a_real_optimizer_step():
    """A real CPU GradScaler; the gradient of batch 1 is made infinite, so GradScaler skips that step."""
    torch.manual_seed(0)
    images, labels = toy_images(64)
    model = FinetunedResNet18(2)
    optimizer, scheduler = stage1_optimizer(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    backward_passes = []

    def poison_second_batch(grad):
        backward_passes.append(1)
        return grad * math.inf if len(backward_passes) == 2 else grad

    model.head.fc2.weight.register_hook(poison_second_batch)
    seen = []
    loader = ft.make_loader(images, labels, 16)
    ft.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, "cpu", 0, scheduler, scaler,
                       lambda loss, step_lrs: seen.append(step_lrs[0]))
    assert scaler.get_scale() == 512.0  # backed off once, after batch 1
    assert scheduler.last_epoch == 3  # 4 batches, 3 optimizer steps
    assert seen[1] == seen[2]  # batch 2 trains with batch 1's learning rate: the skipped step did not advance it
    assert len(set(seen)) == 3


def test_step_losses_are_reported_in_order_and_a_non_finite_one_names_the_batch():
    reported = []
    losses = ft.StepLosses(lambda loss, lrs: reported.append((loss, lrs)), "stage 1 epoch 0")
    values = [0.5, 0.25, 2.0 / 3.0] * 40
    for i, value in enumerate(values):
        losses.add(torch.tensor(value), 2 + i % 2, [0.1 * i])
    assert [v for v, _ in reported] == [float(torch.tensor(v)) for v in values[: ft.LOSS_SYNC_STEPS * 2]]
    expected = 0.0
    for i, value in enumerate(values):
        expected += float(torch.tensor(value)) * (2 + i % 2)
    assert losses.mean() == expected / sum(2 + i % 2 for i in range(len(values)))
    assert [v for v, _ in reported] == [float(torch.tensor(v)) for v in values]
    bad = ft.StepLosses(None, "stage 2 epoch 1")
    bad.add(torch.tensor(1.0), 4, [0.1])
    bad.add(torch.tensor(math.nan), 4, [0.1])
    with pytest.raises(FinetuneError, match="training loss is nan at stage 2 epoch 1, batch 1"):
        bad.mean()


def test_learns_two_easy_classes():
    torch.manual_seed(0)
    images, labels = toy_images(200)
    model = FinetunedResNet18(2, seed=0)
    train = ft.make_loader(images, labels, 32, shuffle=True, drop_last=True)
    test = ft.make_loader(images, labels, 100)
    ft.fit(model, train, test, quick_recipe(stage1_epochs=2, stage2_epochs=2), seed=0)
    result = ft.evaluate(model, nn.CrossEntropyLoss(), test, "cpu")
    # 195 of the 200 (seeded, on the CPU); accuracy is a float32 mean of the hits, one hit more or less is 0.005
    assert result["accuracy"] == pytest.approx(195 / 200, rel=1e-6), result["accuracy"]


def write_toy_store(path, class_names=("top", "bottom")):
    """96 toy images, every third one in the test split (32 test, 64 train)."""
    images, labels = toy_images(96, seed=1)
    split = (np.arange(96) % 3 == 0).astype(np.uint8)
    write_image_store(path, images, labels, split, list(class_names))
    return images


@pytest.fixture
def toy_store(tmp_path):
    path = tmp_path / "toy.zarr"
    write_toy_store(path)
    return path


def run_training(store, out, stage1_epochs=1, stage2_epochs=1, **kwargs):
    recipe = quick_recipe(stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs, batch_size=16)
    return ft.finetune_resnet18(
        store, out / "resnet18_finetuned.pt", out / "training_log.csv", out / "predictions.csv",
        finetune=recipe, resnet18={"weights": "random"}, seed=0, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run (1 + 1 epochs, random weights) on the toy store: (store, images, models dir, result)."""
    root = tmp_path_factory.mktemp("trained")
    images = write_toy_store(root / "toy.zarr")
    torch.use_deterministic_algorithms(True)
    result = run_training(root / "toy.zarr", root / "models")
    return root / "toy.zarr", images, root / "models", result


def test_checkpoint_round_trips_with_weights_only(trained):
    _, _, out, result = trained
    checkpoint = torch.load(out / "resnet18_finetuned.pt", weights_only=True)
    assert checkpoint["class_names"] == ["top", "bottom"] and checkpoint["stage"] == 2 and checkpoint["epoch"] == 0
    assert checkpoint["n_classes"] == 2 and checkpoint["config"]["finetune"]["stage2_lr_max"] == 1e-3
    assert {"optimizer", "scheduler", "scaler", "config_digest", "train_seconds", "package_versions"} <= set(checkpoint)
    compute = checkpoint["compute"]  # where it was trained: plain values, so weights_only=True loads them
    assert (compute["device"], compute["precision"], compute["cuda"], compute["deterministic_algorithms"]) == (
        "cpu", "fp32", None, True)
    assert compute["torch"] == torch.__version__ and compute["threads"] == torch.get_num_threads()
    model, loaded = ckpt.load_finetuned(out / "resnet18_finetuned.pt")
    assert not model.training and loaded["test_accuracy"] == result["test_accuracy"]
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not (out / "resume").exists()
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "resnet18_finetuned.pt", "training_log.csv"]


def test_training_log_and_predictions(trained):
    _, _, out, result = trained
    steps, epochs, lr_columns = read_training_log(out / "training_log.csv")
    header = (out / "training_log.csv").read_text().splitlines()[0]
    assert header == "kind,stage,epoch,step,lr_0,lr_1,lr_2,train_loss,test_loss,test_accuracy"
    assert lr_columns == ["lr_0", "lr_1", "lr_2"]
    assert list(steps.step) == list(range(len(steps))) and len(steps) == 2 * 4  # 64 train images / 16
    assert list(zip(epochs.stage, epochs.epoch, strict=True)) == [(1, 0), (2, 0)]
    assert list(epochs.step) == [3, 7]
    assert steps.test_loss.isna().all() and epochs.lr_0.isna().all() and epochs.test_accuracy.notna().all()
    s1 = steps[steps.stage == 1]
    assert np.allclose(s1.lr_0, s1.lr_2)
    s2 = steps[steps.stage == 2]
    assert np.allclose(s2.lr_2 / s2.lr_0, 10.0)

    pred = read_predictions(out / "predictions.csv")
    assert list(pred.columns) == ["index", "label", "pred", "prob", "loss", "prob_0", "prob_1"]
    assert list(pred["index"]) == list(np.arange(96)[np.arange(96) % 3 == 0])
    assert np.allclose(pred[["prob_0", "prob_1"]].sum(axis=1), 1, atol=1e-5)
    assert np.isclose((pred.pred == pred.label).mean(), result["test_accuracy"])
    assert np.allclose(pred.loss, -np.log(np.where(pred.label == 0, pred.prob_0, pred.prob_1)), atol=1e-4)


def direct_embeddings(model_path, images, batch_size):
    """FinetunedResNet18.embeddings on ``images`` in slices of ``batch_size``, without the extraction code."""
    model, _ = ckpt.load_finetuned(model_path)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            parts.append(model.embeddings(preprocess(images[start : start + batch_size])))
    return {layer: torch.cat([p[layer] for p in parts]).numpy() for layer in FINETUNED_LAYERS}


@pytest.mark.parametrize("batch_size", [96, 40])  # every image in one call; three batches (the last partial)
def test_finetuned_store_equals_embeddings_of_all_images(trained, tmp_path, batch_size):
    data, images, out, _ = trained
    store = tmp_path / "resnet18_finetuned.zarr"
    layers = extract_features(data, store, "resnet18_finetuned", model_path=out / "resnet18_finetuned.pt",
                              batch_size=batch_size)
    assert layers == layer_names(store) == list(FINETUNED_LAYERS)
    expected = direct_embeddings(out / "resnet18_finetuned.pt", images, batch_size)
    for layer in FINETUNED_LAYERS:
        got = load_features(store, layer)
        assert got.features.dtype == np.float32
        assert np.array_equal(got.features, expected[layer]), layer
        assert list(got.index) == list(range(96)) and list(got.labels) == list(np.arange(96) % 2)
    assert {layer: load_features(store, layer).features.shape[1] for layer in FINETUNED_LAYERS} == {
        "layer4": 512, "head_pool": 1024, "head_hidden": 512, "softmax": 2}


def test_finetuned_store_attributes(trained, tmp_path):
    data, _, out, result = trained
    store = tmp_path / "resnet18_finetuned.zarr"
    model_path = out / "resnet18_finetuned.pt"
    extract_features(data, store, "resnet18_finetuned", model_path=model_path, batch_size=40, seed=5)
    checkpoint = torch.load(model_path, weights_only=True)
    attrs = dict(open_complete(store).attrs)
    assert sorted(attrs) == ["class_names", "complete", "compute", "config_digest", "extractor", "image_shape",
                             "image_store", "layers", "model", "model_compute", "model_config_digest",
                             "model_test_accuracy", "package_versions", "seed", "settings", "weights"]
    assert attrs["compute"]["device"] == "cpu" and attrs["compute"]["precision"] == "fp32"
    assert attrs["model_compute"] == checkpoint["compute"]  # the extraction's record beside the training's
    assert attrs["extractor"] == "resnet18_finetuned" and attrs["weights"] == "random"
    assert attrs["settings"] == {"resize": None, "finetune": checkpoint["config"]["finetune"]}
    assert attrs["image_store"] == str(data) and attrs["model"] == str(model_path)
    assert attrs["image_shape"] == [16, 16, 1] and attrs["class_names"] == ["top", "bottom"]
    assert attrs["model_config_digest"] == checkpoint["config_digest"]
    assert attrs["model_test_accuracy"] == result["test_accuracy"]
    assert attrs["seed"] == 0  # the checkpoint's training seed, not the extraction job's
    assert sorted(attrs["package_versions"]) == ["numpy", "torch", "torchvision", "zarr"]
    layer_attrs = {layer: load_features(store, layer).attrs for layer in FINETUNED_LAYERS}
    assert {layer: a["shape_before_pooling"] for layer, a in layer_attrs.items()} == {
        "layer4": [512, 1, 1], "head_pool": [1024], "head_hidden": [512], "softmax": [2]}
    assert {layer: a["pooling"] for layer, a in layer_attrs.items()} == {
        "layer4": "global average", "head_pool": "concat (average || max), BatchNorm1d", "head_hidden": "none",
        "softmax": "none"}
    assert all(a["extractor"] == "resnet18_finetuned" and a["layer"] == layer for layer, a in layer_attrs.items())


def test_softmax_of_test_split_equals_predictions(trained, tmp_path):
    data, _, out, _ = trained
    store = tmp_path / "resnet18_finetuned.zarr"
    extract_features(data, store, "resnet18_finetuned", model_path=out / "resnet18_finetuned.pt", batch_size=40)
    pred = read_predictions(out / "predictions.csv")
    test = load_features(store, "softmax", "test")
    assert np.allclose(test.features, pred[["prob_0", "prob_1"]].to_numpy(), atol=1e-5)


def test_mixed_precision_setting_names_what_each_device_autocasts_to():
    assert ft.amp_dtype(True, "cuda") == ft.amp_dtype("fp16", "cuda:0") == torch.float16
    assert ft.amp_dtype(True, "cpu") is ft.amp_dtype("fp16", "cpu") is ft.amp_dtype(False, "cuda") is None
    assert ft.amp_dtype("bf16", "cpu") == ft.amp_dtype("bf16", "cuda") == torch.bfloat16
    assert [ft.precision_label(d) for d in (None, torch.float16, torch.bfloat16)] == [
        "fp32", "fp16 autocast", "bf16 autocast"]
    with pytest.raises(FinetuneError, match="finetune.mixed_precision' is 'fp8'"):
        ft.recipe_from_config({"mixed_precision": "fp8"})


def test_bf16_autocast_on_cpu_predicts_what_the_softmax_store_holds(toy_store, tmp_path):
    """The mixed-precision path end to end on the CPU: training under bfloat16 autocast, then predictions.csv and
    the softmax layer of the fine-tuned store, both fp32 passes, agree on every test image's class."""
    dtypes = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: dtypes.add(output.dtype) if isinstance(module, nn.Linear) else None)
    try:
        ft.finetune_resnet18(toy_store, tmp_path / "m.pt", tmp_path / "log.csv", tmp_path / "predictions.csv",
                             finetune=quick_recipe(batch_size=16, mixed_precision="bf16"),
                             resnet18={"weights": "random"})
    finally:
        hook.remove()
    assert dtypes == {torch.bfloat16, torch.float32}  # training autocast; the final pass did not
    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    assert checkpoint["compute"]["precision"] == "bf16 autocast"
    assert checkpoint["scaler"] == {}  # no GradScaler: bfloat16 has fp32's exponent range
    extract_features(toy_store, tmp_path / "f.zarr", "resnet18_finetuned", model_path=tmp_path / "m.pt",
                     batch_size=40)
    softmax = load_features(tmp_path / "f.zarr", "softmax", "test")
    pred = read_predictions(tmp_path / "predictions.csv")
    assert list(softmax.index) == list(pred["index"])
    assert np.array_equal(softmax.features.argmax(1), pred["pred"].to_numpy())
    assert np.allclose(softmax.features, pred[["prob_0", "prob_1"]].to_numpy(), atol=1e-5)


def test_finetuned_extraction_refuses_other_classes(trained, tmp_path):
    _, _, out, _ = trained
    other = tmp_path / "other.zarr"
    write_toy_store(other, class_names=("left", "right"))
    with pytest.raises(FinetuneError, match=r"trained on classes \['top', 'bottom'\], but .*other\.zarr"):
        extract_features(other, tmp_path / "f.zarr", "resnet18_finetuned", model_path=out / "resnet18_finetuned.pt")
    with pytest.raises(ValueError, match="needs its checkpoint"):
        extract_features(other, tmp_path / "f.zarr", "resnet18_finetuned")
    assert not (tmp_path / "f.zarr").exists()


def test_unusable_checkpoints_are_named(trained, tmp_path):
    _, _, out, _ = trained
    with pytest.raises(FinetuneError, match=r"missing\.pt does not exist"):
        ckpt.load_finetuned(tmp_path / "missing.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "class_names": ["a", "b"], "code": nn.Linear(2, 2)}, pickled)
    with pytest.raises(FinetuneError, match=r"pickled\.pt could not be read with torch\.load\(weights_only=True\)"):
        ckpt.load_finetuned(pickled)
    plain = tmp_path / "plain.pt"
    torch.save(FinetunedResNet18(2).state_dict(), plain)
    with pytest.raises(FinetuneError, match=r"plain\.pt is not a fine-tuned ResNet-18 checkpoint"):
        ckpt.load_finetuned(plain)
    checkpoint = torch.load(out / "resnet18_finetuned.pt", weights_only=True)
    wrong = tmp_path / "three_classes.pt"
    torch.save({**checkpoint, "class_names": ["a", "b", "c"]}, wrong)
    with pytest.raises(FinetuneError, match=r"three_classes\.pt: Error\(s\) in loading state_dict"):
        ckpt.load_finetuned(wrong)


def test_collapse_statistics_leave_training_as_it_is(trained, tmp_path):
    store, images, plain, _ = trained
    out = tmp_path / "models"
    run_training(store, out, collapse_path=out / "collapse.csv")
    a = torch.load(plain / "resnet18_finetuned.pt", weights_only=True)
    b = torch.load(out / "resnet18_finetuned.pt", weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for name in ("training_log.csv", "predictions.csv"):
        assert (plain / name).read_text() == (out / name).read_text(), name
    table = read_collapse(out / "collapse.csv")
    assert list(table.columns) == ["stage", "epoch", "layer", "metric", "value", "images"]
    epochs = [(1, 0), (2, 0)]
    assert list(dict.fromkeys(zip(table.stage, table.epoch, strict=True))) == epochs
    expected = [(s, e, layer, m) for s, e in epochs for layer in ft.COLLAPSE_LAYERS for m in COLLAPSE_METRICS
                if m != "nc3_self_duality" or layer == "head_hidden"]
    assert list(zip(table.stage, table.epoch, table.layer, table.metric, strict=True)) == expected
    # default collapse_points (1,000) is more than the 64 train images: all of them; NC4 over the 32 test images
    assert set(table.loc[table.metric != "nc4_ncc_agreement", "images"]) == {64}
    assert set(table.loc[table.metric == "nc4_ncc_agreement", "images"]) == {32}
    assert np.isfinite(table.value).all() and table.value.ge(0).all()

    # the last epoch's statistics are those of the final model, passed over all images at once
    last = table[(table.stage == 2) & (table.epoch == 0) & (table.layer == "head_hidden")]
    model, _ = ckpt.load_finetuned(out / "resnet18_finetuned.pt")
    data = read_image_store(store)
    split, labels = data.split, data.labels
    with torch.inference_mode():
        batch = preprocess(torch.from_numpy(images))
        logits, layers = model.forward_with_layers(batch)
    hidden = layers["head_hidden"].numpy()
    train, test = split == 0, split == 1
    want = collapse_statistics(hidden[train], labels[train], 2, hidden[test], logits.argmax(1).numpy()[test],
                               weights=model.head.fc2.weight.detach().numpy())
    got = dict(zip(last.metric, last.value, strict=True))
    assert set(got) == set(want)
    for metric, value in want.items():
        assert np.isclose(got[metric], value, rtol=1e-4, atol=1e-6), (metric, got[metric], value)


def test_too_few_collapse_points_name_the_key(toy_store, tmp_path):
    recipe = quick_recipe(collapse_points=1)
    with pytest.raises(FinetuneError, match="finetune.collapse_points"):
        ft.finetune_resnet18(toy_store, tmp_path / "m.pt", tmp_path / "log.csv", tmp_path / "p.csv",
                             tmp_path / "collapse.csv", finetune=recipe, resnet18={"weights": "random"})
    assert not any(tmp_path.glob("*.csv"))


def test_resume_after_interruption_matches_uninterrupted_run(toy_store, tmp_path):
    full = tmp_path / "full"
    run_training(toy_store, full, stage2_epochs=2, collapse_path=full / "collapse.csv")

    def crash(stage, epoch):
        if (stage, epoch) == (2, 0):
            raise ft.TrainingInterrupted("simulated crash")

    part = tmp_path / "part"
    with pytest.raises(ft.TrainingInterrupted):
        run_training(toy_store, part, stage2_epochs=2, on_epoch_end=crash, collapse_path=part / "collapse.csv")
    resume = ckpt.default_resume_path(part / "resnet18_finetuned.pt")
    assert resume == part / "resume" / "resnet18_finetuned.resume.pt" and resume.is_file()
    assert not (part / "resnet18_finetuned.pt").exists()
    assert torch.load(resume, weights_only=True)["stage"] == 2

    seen = []
    run_training(toy_store, part, stage2_epochs=2, on_epoch_end=lambda s, e: seen.append((s, e)),
                 collapse_path=part / "collapse.csv")
    assert seen == [(2, 1)]  # only the epoch after the interruption ran again
    assert not resume.exists()
    a = torch.load(full / "resnet18_finetuned.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "resnet18_finetuned.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (full / "training_log.csv").read_text() == (part / "training_log.csv").read_text()
    assert (full / "collapse.csv").read_text() == (part / "collapse.csv").read_text()  # earlier epochs kept


def test_resume_file_is_used_only_for_its_own_settings(tmp_path):
    model = FinetunedResNet18(2)
    path = ckpt.default_resume_path(tmp_path / "resnet18_finetuned.pt")
    training = {"optimizer": {}, "scheduler": {}, "scaler": {}, "stage": 1, "epoch": 0}
    rows = [{"kind": "step", "stage": 1, "epoch": 0, "step": 0, "lr_0": 1e-3, "train_loss": 0.5}]
    ckpt.save_resume(path, model, training, rows, "digest-a", 3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["resnet18_finetuned.resume.pt"]  # no temporary left
    assert ckpt.load_resume(path, "digest-b") is None
    state = ckpt.load_resume(path, "digest-a")
    assert state["rows"] == rows and (state["stage"], state["epoch"], state["n_groups"]) == (1, 0, 3)
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    path.write_bytes(b"not a torch file")
    assert ckpt.load_resume(path, "digest-a") is None
    assert ckpt.load_resume(None, "digest-a") is None
    ckpt.remove_resume(path)
    assert not path.parent.exists()


def test_embedding_shapes_leave_batchnorm_statistics_and_mode_alone():
    model = FinetunedResNet18(3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.embedding_shapes((28, 28)) == {"layer4": [512, 1, 1], "head_pool": [1024], "head_hidden": [512],
                                                "softmax": [3]}
    assert model.embedding_shapes((64, 64))["layer4"] == [512, 2, 2]
    assert model.training and model.body.training
    for key, value in model.state_dict().items():
        assert torch.equal(before[key], value), key
