# Fine-tuning (report section 3): ResNet-18 + fastai's head, trained in two one-cycle stages, then the
# fine-tuned layers (layer4, head_pool, head_hidden, softmax) of every image into a feature store.


rule finetune_resnet18:
    input:
        data="results/data/{dataset}.zarr",
        weights=RESNET18_WEIGHTS_FILES,
    output:
        model="results/models/{dataset}/resnet18_finetuned.pt",
        training_log="results/models/{dataset}/training_log.csv",
        predictions="results/models/{dataset}/predictions.csv",
    params:
        finetune=config["finetune"],
        resnet18=config["resnet18"],
        seed=config["seed"],
        deterministic=config["deterministic"],
        device=config["device"],
        resources="resources",
    log:
        "results/logs/models/{dataset}/resnet18_finetuned.log",
    benchmark:
        "results/benchmarks/models/{dataset}/resnet18_finetuned.tsv"
    threads: 8
    resources:
        **gpu_resources(mem_mb=8000, runtime=240),
    conda:
        ENV
    script:
        "../workflow_scripts/finetune_resnet18.py"


rule extract_finetuned_features:
    input:
        data="results/data/{dataset}.zarr",
        model="results/models/{dataset}/resnet18_finetuned.pt",
    output:
        directory("results/features/{dataset}/resnet18_finetuned.zarr"),
    params:
        batch_size=config["resnet18"]["batch_size"],
        device=config["device"],
    log:
        "results/logs/features/{dataset}/resnet18_finetuned.log",
    benchmark:
        "results/benchmarks/features/{dataset}/resnet18_finetuned.tsv"
    threads: 4
    resources:
        **gpu_resources(mem_mb=8000, runtime=60),
    conda:
        ENV
    script:
        "../workflow_scripts/extract_finetuned_features.py"
