# Feature extraction: results/data/{dataset}.zarr -> results/features/{dataset}/{extractor}.zarr, one group per
# layer (scattering: `scattering`; resnet18: the eight body children, globally average-pooled;
# resnet18_finetuned: layer4, head_pool, head_hidden and softmax of the fine-tuned checkpoint).


rule extract_features:
    input:
        images=IMAGES,
        # The frozen ResNet-18 reads its weights file (if any), the fine-tuned extractor its checkpoint.
        weights=lambda w: RESNET18_WEIGHTS_FILES if w.extractor == "resnet18" else [],
        model=lambda w: MODEL.format(dataset=w.dataset) if w.extractor == "resnet18_finetuned" else [],
    output:
        store=directory(FEATURES),
    params:
        # The extractor's config section; the fine-tuned extractor's settings are in its checkpoint, and it
        # shares resnet18's batch size.
        settings=lambda w: config.get(w.extractor, {}),
        batch_size=lambda w: config["resnet18" if w.extractor == "resnet18_finetuned" else w.extractor]["batch_size"],
        seed=config["seed"],
        resources="resources",
    log:
        f"{LOGS}/features/{{dataset}}/{{extractor}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{extractor}}.tsv"
    threads: 4
    resources:
        **gpu_resources(mem_mb=4000, runtime=120),
    conda:
        ENV
    script:
        "../workflow_scripts/extract_features.py"
