# torchvision's ImageNet ResNet-18 weights, fetched by a local rule (a cluster's login node has the network,
# its compute nodes need not). The rule exists only when `resnet18.weights: imagenet`: naming the file asks
# torchvision, and a config without ImageNet weights should not import torch while Snakemake builds the DAG.

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
