# Dataset ingest: any configured source -> results/data/{dataset}.zarr (images, labels, split, class names).


rule ingest_dataset:
    input:
        ingest_inputs,
    output:
        directory(IMAGES),
    params:
        settings=lambda w: dataset_settings(w.dataset),
        resources="resources",
    log:
        f"{LOGS}/data/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow_scripts/ingest_dataset.py"
