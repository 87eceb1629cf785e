# Dataset ingest: any configured source -> results/data/{dataset}.zarr (images, labels, split, class names).
# An image folder's files are the rule's inputs and its listing a param, so adding, changing or removing an
# image reruns ingest and what depends on it; memory and time requests follow the dataset's size.


rule ingest_dataset:
    input:
        ingest_inputs,
    output:
        directory(IMAGES),
    params:
        settings=lambda w: dataset_settings(w.dataset),
        resources="resources",
        listing=ingest_fingerprint,
    log:
        f"{LOGS}/data/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/{{dataset}}.tsv"
    threads: ingest_threads
    resources:
        mem_mb=lambda w, threads: ingest_size(w, threads)["mem_mb"],
        runtime=lambda w, threads: ingest_size(w, threads)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/ingest_dataset.py"
