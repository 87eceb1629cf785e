"""Names of extractors and their layers (DESIGN.md), shared by the workflow and the library.

Kept free of heavy imports: the Snakefile imports it to build the DAG.
"""

# The eight children of torchvision's ResNet-18 before its pooling/fc head: the report's activation
# figures (7-14) and the `resnet18` feature store use exactly these, in this order.
BODY_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
BODY_CHANNELS = {"conv1": 64, "bn1": 64, "relu": 64, "maxpool": 64, "layer1": 64, "layer2": 128,
                 "layer3": 256, "layer4": 512}

FINETUNED_LAYERS = ("layer4", "head_pool", "head_hidden", "softmax")

EXTRACTOR_LAYERS: dict[str, tuple[str, ...]] = {
    "scattering": ("scattering",),
    "resnet18": BODY_LAYERS,
    "resnet18_finetuned": FINETUNED_LAYERS,
}

# The layer-similarity (CKA) table's layers of each extractor, in depth order: the fine-tuned network's body
# layers before layer4 are not in its store, so the table computes them for its subsample only (pooled as the
# frozen `resnet18` store pools them), which gives the frozen-vs-fine-tuned block its same-layer diagonal.
FINETUNED_BODY_ONLY = tuple(layer for layer in BODY_LAYERS if layer not in FINETUNED_LAYERS)
CKA_LAYERS: dict[str, tuple[str, ...]] = {
    **EXTRACTOR_LAYERS,
    "resnet18_finetuned": FINETUNED_BODY_ONLY + FINETUNED_LAYERS,
}

# Extractors whose body layers are drawn in the activation figures (report Figures 7-14).
ACTIVATION_EXTRACTORS = ("resnet18", "resnet18_finetuned")

# Fine-tuning's layer groups (fastai's resnet split), by the number of groups `finetune.lr_groups` asks for:
# each group gets its own learning rate in stage 2, and the training figures name the groups with these.
LR_GROUP_NAMES: dict[int, tuple[str, ...]] = {
    1: ("all",),
    2: ("body", "head"),
    3: ("body front", "body back", "head"),
}
