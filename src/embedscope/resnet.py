"""ResNet-18: construction, weights, the image preprocessing every ResNet stage shares, and the fine-tuned model.

torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` is the one source of the ImageNet file's URL, file name and
SHA-256 prefix, and of the normalisation every ResNet stage applies (whatever the weights: the report
normalised its inputs this way for random initialisation too).

:class:`FinetunedResNet18` is the body (``BODY_LAYERS``) + fastai v1's head that fine-tuning trains
(:mod:`embedscope.finetune`); its checkpoint is read and written by :mod:`embedscope.checkpoint`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.hub import HASH_REGEX
from torchvision.models import ResNet18_Weights, resnet18

from embedscope.layers import BODY_CHANNELS, BODY_LAYERS

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
IMAGENET_WEIGHTS_URL = IMAGENET_WEIGHTS.url
IMAGENET_WEIGHTS_FILE = IMAGENET_WEIGHTS_URL.rsplit("/", 1)[-1]  # resnet18-f37072fd.pth
# The prefix torch.hub's check_hash reads from the file name ("-<sha256 prefix>."), as torchvision checks it.
IMAGENET_HASH_PREFIX = HASH_REGEX.search(IMAGENET_WEIGHTS_FILE).group(1)
_IMAGENET_TRANSFORMS = IMAGENET_WEIGHTS.transforms()
IMAGENET_MEAN = tuple(_IMAGENET_TRANSFORMS.mean)
IMAGENET_STD = tuple(_IMAGENET_TRANSFORMS.std)

BODY_CHANNELS_OUT = BODY_CHANNELS[BODY_LAYERS[-1]]  # 512: what the head's concat pooling doubles


class WeightsError(RuntimeError):
    """A weights setting or file is unusable."""


class FinetuneError(RuntimeError):
    """A fine-tuning setting, input or checkpoint is unusable."""


def imagenet_weights_path(resources: str | Path = "resources") -> Path:
    return Path(resources) / "weights" / IMAGENET_WEIGHTS_FILE


def weights_file(weights: str, resources: str | Path = "resources") -> Path | None:
    """The file a ``weights`` setting reads: None for ``random``."""
    if weights == "random":
        return None
    if weights == "imagenet":
        return imagenet_weights_path(resources)
    return Path(weights)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict with ``weights_only=True``; name the file in every failure."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"weights file {path} could not be read as a torch state_dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state_dict (a dict of tensors)")
    return state


def build_resnet18(weights: str = "random", resources: str | Path = "resources", seed: int = 0) -> nn.Module:
    """torchvision ResNet-18 with ``weights``: ``imagenet``, ``random`` (seeded) or a state_dict path."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet18(weights=None)
    path = weights_file(weights, resources)
    if path is None:
        return model
    if weights == "imagenet" and not path.is_file():
        raise WeightsError(
            f"ImageNet weights not found at {path}. Run `snakemake download --cores 1` on a machine with "
            f"network, or place torchvision's {IMAGENET_WEIGHTS_FILE} there."
        )
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"weights file {path} is not a ResNet-18 state_dict: {first}") from exc
    return model


def body_of(model: nn.Module) -> nn.Sequential:
    """The eight body children of a torchvision ResNet as a named Sequential (shares parameters)."""
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in BODY_LAYERS))


def preprocess(images: np.ndarray | torch.Tensor, resize: int | None = None) -> torch.Tensor:
    """uint8 (N,H,W,C) -> float (N,3,H,W), ImageNet-normalised; grayscale replicated to 3 channels.

    Runs where ``images`` are: fine-tuning hands it uint8 batches already on the device.
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    if resize:
        x = nn.functional.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def download_imagenet_weights(
    destination: str | Path,
    url: str = IMAGENET_WEIGHTS_URL,
    hash_prefix: str | None = IMAGENET_HASH_PREFIX,
) -> Path:
    """Fetch torchvision's ImageNet ResNet-18 file to ``destination``, checking its SHA-256 prefix.

    Uses torch.hub's download (the check torchvision does with ``check_hash=True``); the file is written to a
    temporary sibling and renamed only once the hash matched and it loads as a ResNet-18 state_dict.
    Offline, the error says where to put the file by hand.
    """
    import os
    import urllib.error

    from torch.hub import download_url_to_file

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
    try:
        try:
            download_url_to_file(url, str(tmp), hash_prefix=hash_prefix, progress=False)
        except (urllib.error.URLError, OSError) as exc:
            raise WeightsError(
                f"could not download {url} ({exc}). Without network, fetch that file elsewhere and place it at "
                f"{destination} (torchvision's {IMAGENET_WEIGHTS_FILE}, sha256 starting {hash_prefix})."
            ) from exc
        except RuntimeError as exc:  # torch.hub: 'invalid hash value (expected ..., got ...)'
            raise WeightsError(f"download of {url} failed its hash check for {destination}: {exc}") from exc
        state = load_state_dict_file(tmp)
        try:
            resnet18(weights=None).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise WeightsError(f"downloaded file {url} is not a ResNet-18 state_dict: {first}") from exc
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s -> %s", url, destination)
    return destination


# ---- the fine-tuned model ------------------------------------------------------------------------------------


class ConcatPool2d(nn.Module):
    """Adaptive average pooling || adaptive max pooling along channels: (N, C, H, W) -> (N, 2C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [nn.functional.adaptive_avg_pool2d(x, 1), nn.functional.adaptive_max_pool2d(x, 1)], 1
        )


def make_head(n_classes: int, in_channels: int = BODY_CHANNELS_OUT, hidden: int = 512) -> nn.Sequential:
    """fastai v1's ``create_head``: indices 0..8 are the report's ``linear[1][i]``."""
    if int(n_classes) < 2:
        raise FinetuneError(f"fine-tuning needs at least 2 classes, got {n_classes}")
    return nn.Sequential(
        OrderedDict(
            pool=ConcatPool2d(),
            flatten=nn.Flatten(),
            bn1=nn.BatchNorm1d(2 * in_channels),
            drop1=nn.Dropout(0.25),
            fc1=nn.Linear(2 * in_channels, hidden),
            relu=nn.ReLU(inplace=True),
            bn2=nn.BatchNorm1d(hidden),
            drop2=nn.Dropout(0.5),
            fc2=nn.Linear(hidden, int(n_classes)),
        )
    )


class FinetunedResNet18(nn.Module):
    """ResNet-18 body (children named BODY_LAYERS) + the report's head."""

    def __init__(
        self, n_classes: int, weights: str = "random", resources: str | Path = "resources", seed: int = 0
    ):
        super().__init__()
        self.body = body_of(build_resnet18(weights, resources, seed=seed))
        self.head = make_head(n_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            for module in self.head.modules():  # fastai's apply_init(head, kaiming_normal_)
                if isinstance(module, nn.Linear):
                    nn.init.kaiming_normal_(module.weight)
                    nn.init.zeros_(module.bias)

    @property
    def n_classes(self) -> int:
        return self.head.fc2.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward_with_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits (the same operations as :meth:`forward`, so the same numbers) and the body's and head's
        layers of one batch: layer4's map pooled over space, head_pool and head_hidden (the last linear layer's
        input), in the batch's dtype."""
        h = self.head
        fmap = self.body(x)
        pooled = h.drop1(h.bn1(h.flatten(h.pool(fmap))))
        hidden = h.drop2(h.bn2(h.relu(h.fc1(pooled))))
        return h.fc2(hidden), {"layer4": fmap.float().mean(dim=(2, 3)), "head_pool": pooled, "head_hidden": hidden}

    def embeddings(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four stored layers (FINETUNED_LAYERS) of one batch; call in eval mode."""
        logits, layers = self.forward_with_layers(x)
        return {
            "layer4": layers["layer4"],
            "head_pool": layers["head_pool"].float(),
            "head_hidden": layers["head_hidden"].float(),
            "softmax": torch.softmax(logits.float(), dim=1),
        }

    def embedding_shapes(self, image_shape: tuple[int, ...]) -> dict[str, list[int]]:
        """Each stored layer's shape before pooling for inputs of (H, W): layer4's map is (512, H', W').

        Runs the body once in eval mode (a train-mode pass would move the BatchNorm running statistics).
        """
        height, width = (int(s) for s in image_shape[:2])
        parameter = next(self.body.parameters())
        was_training = self.training
        with torch.no_grad():
            fmap = self.body.eval()(torch.zeros(1, 3, height, width, dtype=parameter.dtype,
                                                device=parameter.device))
        self.train(was_training)
        return {
            "layer4": list(fmap.shape[1:]),
            "head_pool": [2 * BODY_CHANNELS_OUT],
            "head_hidden": [self.head.fc1.out_features],
            "softmax": [self.n_classes],
        }
