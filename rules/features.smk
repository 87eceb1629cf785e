# Feature extraction (issue 3): results/data/{dataset}.zarr -> results/features/{dataset}/{extractor}.zarr,
# one group per layer (scattering: `scattering`; resnet18: the eight body children, globally average-pooled).

IMAGENET_WEIGHTS_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


localrules:
    download_weights,


rule extract_features:
    input:
        images="results/data/{dataset}.zarr",
        weights=lambda w: RESNET18_WEIGHTS_FILES if w.extractor == "resnet18" else [],
    output:
        store=directory("results/features/{dataset}/{extractor,scattering|resnet18}.zarr"),
    params:
        settings=lambda w: {k: v for k, v in config[w.extractor].items() if k != "batch_size"},
        batch_size=lambda w: config[w.extractor]["batch_size"],
        device=config["device"],
        seed=config["seed"],
        resources="resources",
    log:
        "results/logs/features/{dataset}/{extractor}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/{extractor}.tsv"
    threads: 4
    resources:
        **gpu_resources(mem_mb=4000, runtime=120),
    conda:
        ENV
    script:
        "../workflow_scripts/extract_features.py"


rule download_weights:
    output:
        IMAGENET_WEIGHTS,
    params:
        url=IMAGENET_WEIGHTS_URL,
    log:
        "results/logs/weights/resnet18-f37072fd.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow_scripts/download_weights.py"
