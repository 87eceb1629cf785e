# Dataset ingest: any configured source -> results/data/{dataset}.zarr (images, labels, split, class names).


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


# ---- staging (issue 8; data-sources helper) -----------------------------------------------------------
# `snakemake download --cores 1` fetches every input the config needs into resources/ and verifies it, as
# local rules (a cluster's login node fetches; compute nodes never need the network). Each staged file is
# a concrete, protected output (never a directory(), which would delete files a user placed there); files
# already present are not re-fetched, and ingest re-checks their MD5 before reading (verify_staged).

from embedscope.download import STAGED_RELPATH_PATTERN, config_downloads, relpath_dataset  # noqa: E402


localrules:
    download_dataset,
    download,


rule download_dataset:
    output:
        protected("resources/datasets/{staged}"),
    wildcard_constraints:
        staged=STAGED_RELPATH_PATTERN,
    params:
        name=lambda w: relpath_dataset(w.staged),
        root=lambda w, output: output[0][: -len(w.staged) - 1],
        relpath="{staged}",
    log:
        "results/logs/download/datasets/{staged}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        ENV
    script:
        "../workflow_scripts/download_dataset.py"


rule download:
    input:
        lambda w: config_downloads(config),
    log:
        "results/logs/download.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow_scripts/verify_downloads.py"
