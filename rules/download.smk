# Staging: `snakemake download --cores 1` fetches every input the config needs (dataset files, ImageNet weights)
# into resources/ and verifies it. These are local rules so that a cluster's login node fetches and compute nodes never need the
# network. Each staged file is a concrete, protected output (never a directory(), which would delete files a
# user placed there); files already present are not re-fetched, and ingest re-checks their MD5 before
# reading them (embedscope.download.verify_staged).

from embedscope.download import STAGED_RELPATH_PATTERN, config_downloads, relpath_dataset


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
        f"{LOGS}/download/datasets/{{staged}}.log",
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
        f"{LOGS}/download.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow_scripts/verify_downloads.py"


# The ImageNet weights rule exists only when `resnet18.weights: imagenet`: naming the file asks torchvision, and a
# config without ImageNet weights should not import torch while Snakemake builds the DAG.
if config["resnet18"]["weights"] == "imagenet":

    localrules:
        download_weights,

    rule download_weights:
        output:
            IMAGENET_WEIGHTS,
        log:
            f"{LOGS}/weights/{Path(IMAGENET_WEIGHTS).stem}.log",
        threads: 1
        resources:
            mem_mb=1000,
            runtime=30,
        conda:
            ENV
        script:
            "../workflow_scripts/download_weights.py"
