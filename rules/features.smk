# Feature extraction: results/data/{dataset}.zarr -> results/features/{dataset}/{extractor}.zarr, one group per
# layer (scattering: `scattering`; resnet18: the eight body children, globally average-pooled;
# resnet18_finetuned: layer4, head_pool, head_hidden and softmax of the fine-tuned checkpoint).
# With `shards: k` > 1 in the extractor's config section, k jobs each write the rows of one shard into a temporary
# store (FEATURE_SHARD) and `gather_features` joins them into the same store one job would write.


rule extract_features:
    input:
        images=IMAGES,
        # The frozen ResNet-18 reads its weights file (if any), the fine-tuned extractor its checkpoint.
        weights=lambda w: RESNET18_WEIGHTS_FILES if w.extractor == "resnet18" else [],
        model=lambda w: MODEL.format(dataset=w.dataset) if w.extractor == "resnet18_finetuned" else [],
    output:
        store=directory(FEATURES),
    wildcard_constraints:
        extractor=one_of(UNSHARDED_EXTRACTORS),
    params:
        # The extractor's config section; the fine-tuned extractor's settings are in its checkpoint, and it
        # shares resnet18's batch size.
        settings=lambda w: extraction_settings(w.extractor),
        batch_size=lambda w: config[extraction_section(w.extractor)]["batch_size"],
        seed=config["seed"],
        resources="resources",
    log:
        f"{LOGS}/features/{{dataset}}/{{extractor}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{extractor}}.tsv"
    threads: 4
    resources:
        **gpu_resources(
            mem_mb=lambda w: extraction_size(w)["mem_mb"],
            runtime=lambda w: extraction_size(w)["runtime"],
        ),
    conda:
        ENV
    script:
        "../workflow_scripts/extract_features.py"


use rule extract_features as extract_feature_shard with:
    output:
        store=temp(directory(FEATURE_SHARD)),
    wildcard_constraints:
        extractor=one_of(SHARDED_EXTRACTORS),
        shard=r"\d+",
        shards=r"\d+",
    params:
        shard=lambda w: (int(w.shard), int(w.shards)),
    log:
        f"{LOGS}/features/{{dataset}}/{{extractor}}.{{shard}}-of-{{shards}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{extractor}}.{{shard}}-of-{{shards}}.tsv"
    resources:
        **gpu_resources(
            mem_mb=lambda w: extraction_size(w, "shard")["mem_mb"],
            runtime=lambda w: extraction_size(w, "shard")["runtime"],
        ),


# A fine-tuning replicate's store (finetune.replicates > 1), from its own checkpoint, in one job whatever
# resnet18.shards says (the replicates' jobs already run side by side).
use rule extract_features as extract_replicate_features with:
    input:
        images=IMAGES,
        weights=[],
        model=REPLICATE_MODEL,
    output:
        store=directory(REPLICATE_FEATURES),
    wildcard_constraints:
        extractor="resnet18_finetuned",
    log:
        f"{LOGS}/features/{{dataset}}/replicates/{{replicate}}/{{extractor}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/replicates/{{replicate}}/{{extractor}}.tsv"


rule gather_features:
    input:
        shards=shard_stores,
    output:
        store=directory(FEATURES),
    wildcard_constraints:
        extractor=one_of(SHARDED_EXTRACTORS),
    log:
        f"{LOGS}/features/{{dataset}}/{{extractor}}.gather.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{extractor}}.gather.tsv"
    resources:
        mem_mb=lambda w: extraction_size(w, "gather")["mem_mb"],
        runtime=lambda w: extraction_size(w, "gather")["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/gather_features.py"
