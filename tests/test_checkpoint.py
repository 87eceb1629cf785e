"""The checkpoint and resume writers: every tensor saved on the CPU, readable with weights_only=True anywhere."""

import torch

from embedscope.checkpoint import on_cpu, read_checkpoint, save_checkpoint, save_resume
from embedscope.resnet import FinetunedResNet18


def tensors(value):
    """Every tensor inside a loaded checkpoint, at any depth."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)


def trained_states():
    torch.manual_seed(0)
    model = FinetunedResNet18(3, "random")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = model(torch.randn(4, 3, 28, 28)).sum()
    loss.backward()
    optimizer.step()  # AdamW now holds exp_avg / exp_avg_sq tensors per parameter
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    training = {"optimizer": optimizer.state_dict(), "scheduler": {"last_epoch": 1, "base_lrs": [1e-3]},
                "scaler": scaler.state_dict(), "stage": 1, "epoch": 0}
    return model, training


def test_checkpoint_and_resume_hold_only_cpu_tensors_and_load_with_weights_only(tmp_path):
    model, training = trained_states()
    save_checkpoint(tmp_path / "model.pt", model, training, ["a", "b", "c"], {"seed": 0}, "digest",
                    {"accuracy": 0.5, "loss": 1.0}, 1.0)
    save_resume(tmp_path / "resume.pt", model, training, [{"kind": "step", "train_loss": 1.0}], "digest", 3)
    for name in ("model.pt", "resume.pt"):
        loaded = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        found = list(tensors(loaded))
        assert len(found) > 2 * len(list(model.parameters()))  # weights plus both Adam moments of each
        assert {t.device.type for t in found} == {"cpu"}, name
    checkpoint = read_checkpoint(tmp_path / "model.pt")
    assert checkpoint["class_names"] == ["a", "b", "c"]
    assert torch.equal(checkpoint["optimizer"]["state"][0]["exp_avg"], training["optimizer"]["state"][0]["exp_avg"])


def test_on_cpu_keeps_structure_and_values():
    value = {"a": [torch.ones(2, requires_grad=True), (torch.zeros(1), 3)], "b": "text", "c": {"d": 1.5}}
    moved = on_cpu(value)
    assert isinstance(moved["a"], list) and isinstance(moved["a"][1], tuple)
    assert torch.equal(moved["a"][0], torch.ones(2)) and not moved["a"][0].requires_grad
    assert moved["a"][1][1] == 3 and moved["b"] == "text" and moved["c"] == {"d": 1.5}
