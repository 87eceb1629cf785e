# Helpers shared by all rule files (config validation, wildcard values, target lists); no rules here.

import sys
from pathlib import Path

from snakemake.utils import validate

# The workflow's library lives in src/; make it importable for the helpers below even without an install.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from embedscope.layers import EXTRACTOR_LAYERS, ACTIVATION_EXTRACTORS, BODY_LAYERS  # noqa: E402
from embedscope.configcheck import check_config  # noqa: E402
from embedscope.download import staged_paths  # noqa: E402

validate(config, workflow.source_path("../schemas/config.schema.yaml"))
check_config(config)

DATASETS = list(config["datasets"])
EXTRACTORS = list(config["extractors"])
FINETUNE = "resnet18_finetuned" in EXTRACTORS
ENV = "../envs/embedscope.yaml"


wildcard_constraints:
    dataset="|".join(DATASETS),
    extractor="|".join(EXTRACTOR_LAYERS),
    layer="[A-Za-z0-9_]+",


def dataset_settings(dataset):
    return config["datasets"][dataset]


def layers_of(extractor):
    return list(EXTRACTOR_LAYERS[extractor])


def uses_cuda():
    """Whether torch jobs will run on CUDA: decides the `gpu=1` resource of GPU-capable rules."""
    device = config.get("device", "auto")
    if device == "cuda":
        return True
    if device == "cpu":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


GPU = 1 if uses_cuda() else 0


def gpu_resources(mem_mb, runtime):
    """Resources of a torch rule: memory and time, plus `gpu=1` only when it will use CUDA."""
    resources = {"mem_mb": mem_mb, "runtime": runtime}
    if GPU:
        resources["gpu"] = 1
    return resources


IMAGENET_WEIGHTS = "resources/weights/resnet18-f37072fd.pth"
# The file the `resnet18.weights` setting reads (frozen extraction, fine-tuning, activation figures): the
# ImageNet file, the given path, or nothing for random init.
RESNET18_WEIGHTS_FILES = {"random": [], "imagenet": [IMAGENET_WEIGHTS]}.get(
    config["resnet18"]["weights"], [config["resnet18"]["weights"]]
)


def store_path(dataset, extractor):
    return f"results/features/{dataset}/{extractor}.zarr"


def torchvision_files(name, root="resources/datasets"):
    """The raw files torchvision keeps for a dataset: what `snakemake download` stages."""
    return staged_paths(name, root)


def ingest_inputs(wildcards):
    """Staged raw files of a torchvision dataset (fetched by the local download rules), else nothing."""
    settings = dataset_settings(wildcards.dataset)
    if settings["source"] == "torchvision" and not settings.get("root"):
        return torchvision_files(settings["name"])
    return []


def activation_image(dataset):
    index = dataset_settings(dataset).get("activation_image")
    return config["figures"]["activation_image"] if index is None else index


# ---- target lists: one function per stage, gathered by all_targets() -------------------------------


def data_targets():
    return expand("results/data/{dataset}.zarr", dataset=DATASETS)


def baseline_targets():
    return expand(
        ["results/baseline/{dataset}/metrics.csv", "results/figures/{dataset}/class_means.png"],
        dataset=DATASETS,
    )


def feature_targets():
    return expand("results/features/{dataset}/{extractor}.zarr", dataset=DATASETS, extractor=EXTRACTORS)


def finetune_targets():
    if not FINETUNE:
        return []
    return expand(
        [
            "results/models/{dataset}/resnet18_finetuned.pt",
            "results/models/{dataset}/training_log.csv",
            "results/models/{dataset}/predictions.csv",
        ],
        dataset=DATASETS,
    )


def tsne_targets():
    return [
        f"results/tsne/{dataset}/{extractor}/{layer}.csv"
        for dataset in DATASETS
        for extractor in EXTRACTORS
        for layer in layers_of(extractor)
    ]


def figure_targets():
    targets = []
    for dataset in DATASETS:
        fig = f"results/figures/{dataset}"
        for extractor in EXTRACTORS:
            for layer in layers_of(extractor):
                targets.append(f"{fig}/tsne/{extractor}/{layer}.png")
                targets.append(f"{fig}/tsne_thumbs/{extractor}/{layer}.png")
            targets.append(f"{fig}/tsne_layers/{extractor}.png")
        activation_extractors = [e for e in ACTIVATION_EXTRACTORS if e in EXTRACTORS]
        for extractor in activation_extractors:
            targets += [f"{fig}/activations/{extractor}/{layer}.png" for layer in BODY_LAYERS]
        if activation_extractors:
            targets.append(f"{fig}/activations/input.png")
        if FINETUNE:
            targets += [
                f"{fig}/training/loss.png",
                f"{fig}/training/lr.png",
                f"{fig}/top_losses.png",
                f"{fig}/confusion.png",
            ]
    return targets


def metrics_targets():
    return expand(
        [
            "results/metrics/{dataset}/classifiers.csv",
            "results/metrics/{dataset}/classifiers.md",
            "results/metrics/{dataset}/embedding_quality.csv",
            "results/metrics/{dataset}/embedding_quality.md",
            "results/figures/{dataset}/metrics/accuracy_by_layer.png",
            "results/figures/{dataset}/metrics/depth.png",
        ],
        dataset=DATASETS,
    )


def explorer_targets():
    return expand("results/explorer/{dataset}.html", dataset=DATASETS)


def all_targets():
    return (
        data_targets()
        + baseline_targets()
        + feature_targets()
        + finetune_targets()
        + tsne_targets()
        + figure_targets()
        + metrics_targets()
        + explorer_targets()
    )
