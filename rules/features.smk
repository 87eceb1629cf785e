# Feature extraction: results/data/{dataset}.zarr -> results/features/{dataset}/{extractor}.zarr,
# one group per layer (scattering: `scattering`; resnet18: the eight body children, globally average-pooled).

rule extract_features:
    input:
        images="results/data/{dataset}.zarr",
        weights=lambda w: RESNET18_WEIGHTS_FILES if w.extractor == "resnet18" else [],
    output:
        store=directory("results/features/{dataset}/{extractor,scattering|resnet18}.zarr"),
    params:
        settings=lambda w: {k: v for k, v in config[w.extractor].items() if k != "batch_size"},
        batch_size=lambda w: config[w.extractor]["batch_size"],
        device=config["device"],
        seed=config["seed"],
        resources="resources",
    log:
        "results/logs/features/{dataset}/{extractor}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/{extractor}.tsv"
    threads: 4
    resources:
        **gpu_resources(mem_mb=4000, runtime=120),
    conda:
        ENV
    script:
        "../workflow_scripts/extract_features.py"
