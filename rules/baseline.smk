# The report's baseline (section 2, Figure 1): class-mean images and nearest-class-mean accuracy.


rule compute_baseline:
    input:
        "results/data/{dataset}.zarr",
    output:
        metrics="results/baseline/{dataset}/metrics.csv",
        figure=report(
            "results/figures/{dataset}/class_means.png",
            caption="../report/class_means.rst",
            category="Baseline",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "class means"},
        ),
    params:
        dpi=config["figures"]["dpi"],
    log:
        "results/logs/baseline/{dataset}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/compute_baseline.py"
