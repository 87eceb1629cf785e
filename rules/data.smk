# Dataset ingest: any configured source -> results/data/{dataset}.zarr (images, labels, split, class names).


def ingest_inputs(wildcards):
    """Staged raw files of a torchvision dataset (fetched by the local download rules), else nothing."""
    settings = dataset_settings(wildcards.dataset)
    if settings["source"] == "torchvision" and not settings.get("root"):
        return torchvision_files(settings["name"])
    return []


rule ingest_dataset:
    input:
        ingest_inputs,
    output:
        directory("results/data/{dataset}.zarr"),
    params:
        settings=lambda w: dataset_settings(w.dataset),
        resources="resources",
    log:
        "results/logs/data/{dataset}.log",
    benchmark:
        "results/benchmarks/data/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow_scripts/ingest_dataset.py"
