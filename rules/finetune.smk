# Fine-tuning (report section 3): ResNet-18 + fastai's head, trained in two one-cycle stages; the checkpoint,
# the training log, the test predictions and the neural-collapse statistics of every epoch. Its feature store
# is written by `extract_features`. With finetune.replicates > 1, replicate r >= 1 is the same job with seed + r
# on its own paths (REPLICATE_*).


rule finetune_resnet18:
    input:
        data=IMAGES,
        weights=RESNET18_WEIGHTS_FILES,
    output:
        model=MODEL,
        training_log=TRAINING_LOG,
        predictions=PREDICTIONS,
        collapse=report_entry(COLLAPSE, "collapse_table", "Fine-tuning", table="neural collapse"),
    params:
        finetune=FINETUNE_RECIPE,
        resnet18=config["resnet18"],
        seed=config["seed"],
        deterministic=config["deterministic"],
        resources="resources",
    log:
        f"{LOGS}/models/{{dataset}}/resnet18_finetuned.log",
    benchmark:
        f"{BENCHMARKS}/models/{{dataset}}/resnet18_finetuned.tsv"
    threads: 8
    resources:
        **gpu_resources(
            mem_mb=lambda w, threads: finetune_size(w, threads)["mem_mb"],
            runtime=lambda w, threads: finetune_size(w, threads)["runtime"],
        ),
    conda:
        ENV
    script:
        "../workflow_scripts/finetune_resnet18.py"


use rule finetune_resnet18 as finetune_replicate with:
    output:
        model=REPLICATE_MODEL,
        training_log=REPLICATE_TRAINING_LOG,
        predictions=REPLICATE_PREDICTIONS,
        collapse=REPLICATE_COLLAPSE,
    params:
        seed=lambda w: replicate_seed(w.replicate),
    log:
        f"{LOGS}/models/{{dataset}}/replicates/{{replicate}}/resnet18_finetuned.log",
    benchmark:
        f"{BENCHMARKS}/models/{{dataset}}/replicates/{{replicate}}/resnet18_finetuned.tsv"
