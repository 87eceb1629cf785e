# Helpers shared by all rule files (config validation, wildcard values, target lists); no rules here.

import functools
import math
import sys
from pathlib import Path

from snakemake.utils import validate

# The workflow's library lives in src/; make it importable for the helpers below even without an install.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from embedscope.layers import (  # noqa: E402
    ACTIVATION_EXTRACTORS,
    BODY_CHANNELS,
    BODY_LAYERS,
    EXTRACTOR_LAYERS,
    FINETUNED_BODY_ONLY,
)
from embedscope.configcheck import check_config  # noqa: E402
from embedscope.gpus import candidate_devices  # noqa: E402
from embedscope.download import staged_paths  # noqa: E402
from embedscope.footprint import (  # noqa: E402
    baseline_resources,
    cka_resources,
    classifier_resources,
    dataset_extent,
    embedding_resources,
    explorer_resources,
    extraction_resources,
    finetune_resources,
    ingest_resources,
    layer_widths,
    split_sizes,
    stored_extent,
    thumbnail_figure_resources,
    top_losses_resources,
    tsne_points,
    tsne_resources,
)
from embedscope.sources import list_imagefolder, torchvision_split_bounds  # noqa: E402

validate(config, workflow.source_path("../schemas/config.schema.yaml"))

DATASETS = list(config["datasets"])
EXTRACTORS = list(config["extractors"])
FINETUNE = "resnet18_finetuned" in EXTRACTORS
# Fine-tuning replicates (finetune.replicates): replicate 0 is the one run of a single replicate, on its paths;
# replicate r >= 1 trains with seed + r on the same data and writes the REPLICATE_* paths below.
REPLICATES = int(config["finetune"]["replicates"]) if FINETUNE else 1
EXTRA_REPLICATES = [str(r) for r in range(1, REPLICATES)]
# The training recipe: the finetune section without `replicates`, which says how often it runs, not how.
FINETUNE_RECIPE = {k: v for k, v in config["finetune"].items() if k != "replicates"}
ENV = "../envs/embedscope.yaml"

# ---- path templates: every file one stage hands to another, named once (README "Outputs") ---------------
IMAGES = "results/data/{dataset}.zarr"
BASELINE = "results/baseline/{dataset}/metrics.csv"
FEATURES = "results/features/{dataset}/{extractor}.zarr"
FEATURE_SHARD = "results/features/{dataset}/{extractor}.shards/{shard}-of-{shards}.zarr"  # temporary
MODEL = "results/models/{dataset}/resnet18_finetuned.pt"
TRAINING_LOG = "results/models/{dataset}/training_log.csv"
PREDICTIONS = "results/models/{dataset}/predictions.csv"
COLLAPSE = "results/metrics/{dataset}/collapse.csv"
REPLICATE_MODEL = "results/models/{dataset}/replicates/{replicate}/resnet18_finetuned.pt"
REPLICATE_TRAINING_LOG = "results/models/{dataset}/replicates/{replicate}/training_log.csv"
REPLICATE_PREDICTIONS = "results/models/{dataset}/replicates/{replicate}/predictions.csv"
REPLICATE_FEATURES = "results/features/{dataset}/replicates/{replicate}/{extractor}.zarr"
REPLICATE_STORE = "results/features/{dataset}/replicates/{replicate}/resnet18_finetuned.zarr"  # its only extractor
# one replicate's rows of the classifier and embedding-quality tables, merged into those tables
REPLICATE_CLASSIFIERS = "results/metrics/{dataset}/replicates/{replicate}/classifiers.csv"
REPLICATE_EMBEDDINGS = "results/metrics/{dataset}/replicates/{replicate}/embedding_quality.csv"
REPLICATE_COLLAPSE = "results/metrics/{dataset}/replicates/{replicate}/collapse.csv"
TSNE_CSV = "results/tsne/{dataset}/{extractor}/{layer}.csv"
TSNE_META = "results/tsne/{dataset}/{extractor}/{layer}.json"
FIGURES = "results/figures/{dataset}"
METRICS = "results/metrics/{dataset}"
EXPLORER = "results/explorer/{dataset}.html"
CKA_TABLE = "results/metrics/{dataset}/cka.csv"
CKA_FIGURE = "results/figures/{dataset}/cka.png"
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"


def report_entry(path, caption, category, **labels):
    """A report() output: caption from report/{caption}.rst, grouped by category and dataset, labelled."""
    return report(
        path,
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory="{dataset}",
        labels={"dataset": "{dataset}", **labels},
    )


wildcard_constraints:
    dataset="|".join(DATASETS),
    extractor="|".join(EXTRACTOR_LAYERS),
    layer="[A-Za-z0-9_]+",
    replicate=r"[1-9][0-9]*",


def replicate_seed(replicate):
    """The fine-tuning seed of a replicate: the run's seed plus the replicate's number (0 for the first)."""
    return int(config["seed"]) + int(replicate)


def replicate_paths(template, dataset, **wildcards):
    """One path of every extra replicate (1, 2, ...) of a fine-tuned output; none with one replicate."""
    return [template.format(dataset=dataset, replicate=r, **wildcards) for r in EXTRA_REPLICATES]


def dataset_settings(dataset):
    return config["datasets"][dataset]


def layers_of(extractor):
    return list(EXTRACTOR_LAYERS[extractor])


def submits_to_slurm():
    """Whether this run submits its jobs to SLURM: its default resources name a `slurm_partition`, as
    profiles/slurm (or `--default-resources slurm_partition=...`) does.

    Snakemake names the executor to a Snakefile only once jobs run (`workflow.executor_plugin`, which a dry run
    replaces by its own dry-run executor), so the resources a dry run shows could not follow from it.
    """
    defaults = workflow.resource_settings.default_resources
    return defaults is not None and "slurm_partition" in dict(defaults)


def uses_cuda():
    """Whether torch jobs will run on CUDA: decides the `gpu` resource (and GPU partition) of GPU-capable rules.

    `device: cuda` yes, `device: cpu` no. `device: auto` asks the NVIDIA driver (no torch import while the DAG is
    built) for a GPU visible here; a SLURM login node usually has none while the GPU nodes do, so a run that submits
    to SLURM counts as one with a GPU (a CPU-only cluster sets `device: cpu`).
    """
    device = config.get("device", "auto")
    if device in ("cuda", "cpu"):
        return device == "cuda"
    return bool(candidate_devices()) or submits_to_slurm()


GPU = 1 if uses_cuda() else 0


def gpu_resources(mem_mb, runtime):
    """Resources of a torch rule: memory and time; `gpu=1` only when it will use CUDA, and then, when submitting
    to SLURM, the GPU partition (config key `slurm.gpu_partition`). A job without a GPU keeps the profile's
    default partition, so `device: cpu` on a cluster asks for no GPU and no GPU partition."""
    resources = {"mem_mb": mem_mb, "runtime": runtime}
    if GPU:
        resources["gpu"] = 1
        if submits_to_slurm() and config["slurm"]["gpu_partition"]:
            resources["slurm_partition"] = config["slurm"]["gpu_partition"]
    return resources


# The file the `resnet18.weights` setting reads (frozen extraction, fine-tuning, activation figures): the
# ImageNet file, the given path, or nothing for random init. torchvision names the ImageNet file
# (embedscope.resnet), so torch is imported only for `weights: imagenet`, never while building other DAGs.
if config["resnet18"]["weights"] == "random":
    RESNET18_WEIGHTS_FILES = []
elif config["resnet18"]["weights"] == "imagenet":
    from embedscope.resnet import imagenet_weights_path

    IMAGENET_WEIGHTS = str(imagenet_weights_path("resources"))
    RESNET18_WEIGHTS_FILES = [IMAGENET_WEIGHTS]
else:
    RESNET18_WEIGHTS_FILES = [config["resnet18"]["weights"]]


def store_path(dataset, extractor):
    return FEATURES.format(dataset=dataset, extractor=extractor)


def torchvision_files(name, root="resources/datasets"):
    """The raw files torchvision keeps for a dataset: what `snakemake download` stages."""
    return staged_paths(name, root)


@functools.cache
def imagefolder_listing(root):
    """The image files of a configured image folder, listed once per Snakemake run (names and sizes, no decoding)."""
    return list_imagefolder(root)


# Values a later job would reject stop the run here, before any job; an image folder's listing (made here once,
# and used again for the ingest rule's inputs) gives its class counts.
check_config(config, imagefolder_listing)


def ingest_inputs(wildcards):
    """Staged raw files of a torchvision dataset (fetched by the local download rules), an image folder's image
    files (so that a new or changed image reruns ingest), else nothing."""
    settings = dataset_settings(wildcards.dataset)
    if settings["source"] == "torchvision" and not settings.get("root"):
        return torchvision_files(settings["name"])
    if settings["source"] == "imagefolder":
        return imagefolder_listing(settings["root"]).paths()
    return []


def ingest_fingerprint(wildcards):
    """A digest of an image folder's listing (names and sizes): a params change, so that removing an image
    reruns ingest too (a removed input file alone does not)."""
    settings = dataset_settings(wildcards.dataset)
    if settings["source"] == "imagefolder":
        return imagefolder_listing(settings["root"]).fingerprint()
    return ""


INGEST_THREADS = 4  # image folders decode in parallel; the other sources are read in one thread


def ingest_threads(wildcards):
    return INGEST_THREADS if dataset_settings(wildcards.dataset)["source"] == "imagefolder" else 1


@functools.cache
def torchvision_bounds(name, root):
    """At most how many train and test images a torchvision dataset under its own root holds (headers and file
    sizes only), once per Snakemake run."""
    return torchvision_split_bounds(name, root)


def extent_of(dataset):
    """How big a dataset is known to be before ingest (embedscope.footprint), for the rules' resources."""
    settings = dataset_settings(dataset)
    if settings["source"] == "torchvision" and settings.get("root"):
        bounds = torchvision_bounds(settings["name"], settings["root"])
        if bounds:
            return dataset_extent(settings, n_files=sum(bounds), n_test=bounds[1])
    if settings["source"] != "imagefolder":
        return dataset_extent(settings)
    listing = imagefolder_listing(settings["root"])
    return dataset_extent(settings, len(listing.entries), len(listing.class_names),
                          max((entry.size for entry in listing.entries), default=0))


def ingest_size(wildcards, threads):
    return ingest_resources(extent_of(wildcards.dataset), threads)


def baseline_size(wildcards):
    return baseline_resources(extent_of(wildcards.dataset))


# Sizes of the jobs that read feature stores or t-SNE points (embedscope.footprint): from the splits the
# dataset keeps, the widths of the enabled layers and the t-SNE points.
def splits_of(dataset):
    return split_sizes(dataset_settings(dataset), extent_of(dataset))


def map_points_of(dataset):
    return tsne_points(dataset_settings(dataset), extent_of(dataset))


def widths_of(dataset):
    scattering = config["scattering"]
    return layer_widths(EXTRACTORS, extent_of(dataset), scattering["J"], scattering["L"])


def finetuned_widths(dataset):
    return [d for (extractor, _), d in widths_of(dataset).items() if extractor == "resnet18_finetuned"]


def classifier_size(wildcards, threads):
    n_train, n_test = splits_of(wildcards.dataset)
    widths = list(widths_of(wildcards.dataset).values())
    return classifier_resources(extent_of(wildcards.dataset), n_train, n_test, widths, config["metrics"], threads)


def replicate_classifier_size(wildcards, threads):
    """One replicate's classifier job: the fine-tuned layers only, no raw pixels."""
    n_train, n_test = splits_of(wildcards.dataset)
    return classifier_resources(extent_of(wildcards.dataset), n_train, n_test, finetuned_widths(wildcards.dataset),
                                config["metrics"], threads, pixels=False)


def embedding_size(wildcards, threads):
    n_train, n_test = splits_of(wildcards.dataset)
    widths = list(widths_of(wildcards.dataset).values())
    return embedding_resources(n_train, n_test, map_points_of(wildcards.dataset), widths,
                               config["metrics"]["max_quality_points"], threads)


def cka_size(wildcards, threads):
    """Resources of layer_similarity: the raw pixels' width (H W C) beside every layer's; with fine-tuning, the
    fine-tuned body's layers its store lacks too, and the forward pass that computes them."""
    n_train, n_test = splits_of(wildcards.dataset)
    shape = extent_of(wildcards.dataset).image_shape
    widths = [math.prod(shape), *widths_of(wildcards.dataset).values()]
    body = "resnet18_finetuned" in EXTRACTORS
    if body:
        widths += [BODY_CHANNELS[layer] for layer in FINETUNED_BODY_ONLY]
    return cka_resources(n_train + n_test, n_test, config["metrics"]["cka_points"], widths, threads,
                         network_input=shape if body else None, resize=config["resnet18"]["resize"],
                         batch_size=config["resnet18"]["batch_size"])


def replicate_embedding_size(wildcards, threads):
    """One replicate's embedding-quality job: the fine-tuned layers only."""
    n_train, n_test = splits_of(wildcards.dataset)
    return embedding_resources(n_train, n_test, map_points_of(wildcards.dataset), finetuned_widths(wildcards.dataset),
                               config["metrics"]["max_quality_points"], threads)


def tsne_size(wildcards, threads):
    width = widths_of(wildcards.dataset)[wildcards.extractor, wildcards.layer]
    settings = config["tsne"]
    return tsne_resources(splits_of(wildcards.dataset)[1], map_points_of(wildcards.dataset), width,
                          settings["pca_components"], settings["n_iter"], threads)


def explorer_size(wildcards):
    n_maps = sum(len(layers_of(extractor)) for extractor in EXTRACTORS)
    return explorer_resources(extent_of(wildcards.dataset), map_points_of(wildcards.dataset), n_maps)


def thumbnail_figure_size(wildcards):
    return thumbnail_figure_resources(extent_of(wildcards.dataset), map_points_of(wildcards.dataset),
                                      config["figures"]["thumbnail_size"])


def top_losses_size(wildcards):
    return top_losses_resources(extent_of(wildcards.dataset), splits_of(wildcards.dataset)[1])


def extraction_section(extractor):
    """The config section of an extractor's batch size and shards: the fine-tuned extractor shares resnet18's."""
    return "resnet18" if extractor == "resnet18_finetuned" else extractor


def extraction_settings(extractor):
    """An extractor's config section without `shards`: how a store is split into jobs does not change it, so it
    is no params change of extraction either."""
    return {k: v for k, v in config.get(extractor, {}).items() if k != "shards"}


def feature_shards(extractor):
    return int(config[extraction_section(extractor)]["shards"])


SHARDED_EXTRACTORS = [e for e in EXTRACTOR_LAYERS if feature_shards(e) > 1]
UNSHARDED_EXTRACTORS = [e for e in EXTRACTOR_LAYERS if feature_shards(e) == 1]


def one_of(names):
    """A wildcard constraint that matches exactly `names` (nothing when there are none)."""
    return "|".join(names) if names else "(?!)"


def shard_stores(wildcards):
    shards = feature_shards(wildcards.extractor)
    return [FEATURE_SHARD.format(dataset=wildcards.dataset, extractor=wildcards.extractor, shard=i, shards=shards)
            for i in range(shards)]


def extraction_size(wildcards, job="all"):
    """Resources of one extraction job: `all` of the store, one `shard` of it, or the `gather` of the shards."""
    extractor = wildcards.extractor
    extent = stored_extent(extent_of(wildcards.dataset), dataset_settings(wildcards.dataset))
    section = config[extraction_section(extractor)]
    return extraction_resources(extent, extractor, section["batch_size"], config.get("scattering", {}),
                                resize=config["resnet18"]["resize"], shards=feature_shards(extractor), job=job,
                                cuda=bool(GPU))


def finetune_size(wildcards, threads):
    """Resources of fine-tuning; on CUDA its loader runs `threads` worker processes."""
    settings = dataset_settings(wildcards.dataset)
    extent = stored_extent(extent_of(wildcards.dataset), settings)
    recipe = FINETUNE_RECIPE
    n_train, n_test = split_sizes(settings, extent)
    probed = n_train if recipe["collapse_points"] is None else min(recipe["collapse_points"], n_train)
    return finetune_resources(extent, recipe["batch_size"], recipe["stage1_epochs"], recipe["stage2_epochs"],
                              resize=config["resnet18"]["resize"], cuda=bool(GPU), workers=threads if GPU else 0,
                              collapse_train=probed, collapse_test=n_test)


def activation_image(dataset):
    index = dataset_settings(dataset).get("activation_image")
    return config["figures"]["activation_image"] if index is None else index


# ---- target lists: one function per stage, gathered by all_targets() -------------------------------


def data_targets():
    return expand(IMAGES, dataset=DATASETS)


def baseline_targets():
    return expand([BASELINE, f"{FIGURES}/class_means.png"], dataset=DATASETS)


def feature_targets():
    replicated = [path for dataset in DATASETS
                  for path in replicate_paths(REPLICATE_STORE, dataset)]
    return expand(FEATURES, dataset=DATASETS, extractor=EXTRACTORS) + replicated


def finetune_targets():
    if not FINETUNE:
        return []
    replicated = [path for dataset in DATASETS
                  for template in (REPLICATE_MODEL, REPLICATE_TRAINING_LOG, REPLICATE_PREDICTIONS, REPLICATE_COLLAPSE)
                  for path in replicate_paths(template, dataset)]
    return expand([MODEL, TRAINING_LOG, PREDICTIONS, COLLAPSE], dataset=DATASETS) + replicated


def tsne_targets():
    return [
        TSNE_CSV.format(dataset=dataset, extractor=extractor, layer=layer)
        for dataset in DATASETS
        for extractor in EXTRACTORS
        for layer in layers_of(extractor)
    ]


def figure_targets():
    targets = []
    for dataset in DATASETS:
        fig = FIGURES.format(dataset=dataset)
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
                f"{fig}/collapse.png",
                f"{fig}/top_losses.png",
                f"{fig}/confusion.png",
            ]
    return targets


def metrics_targets():
    return expand(
        [
            f"{METRICS}/classifiers.csv",
            f"{METRICS}/classifiers.md",
            f"{METRICS}/embedding_quality.csv",
            f"{METRICS}/embedding_quality.md",
            f"{FIGURES}/metrics/accuracy_by_layer.png",
            f"{FIGURES}/metrics/depth.png",
            CKA_TABLE,
            CKA_FIGURE,
        ],
        dataset=DATASETS,
    )


def explorer_targets():
    return expand(EXPLORER, dataset=DATASETS)


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
