# Metric tables (issue 6): classifiers on raw pixels and every (extractor, layer), plus the class-mean baseline
# and the fine-tuned CNN; embedding quality of every layer and its t-SNE map; the two summary figures.


rule evaluate_classifiers:
    input:
        images="results/data/{dataset}.zarr",
        stores=lambda w: [store_path(w.dataset, extractor) for extractor in EXTRACTORS],
        baseline="results/baseline/{dataset}/metrics.csv",
        predictions=(["results/models/{dataset}/predictions.csv"] if FINETUNE else []),
    output:
        csv=report(
            "results/metrics/{dataset}/classifiers.csv",
            caption="../report/classifiers.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "classifiers"},
        ),
        md="results/metrics/{dataset}/classifiers.md",
    params:
        extractors=EXTRACTORS,
        metrics=config["metrics"],
        seed=config["seed"],
        weights=config["resnet18"]["weights"],
        device="cpu",
    log:
        "results/logs/metrics/{dataset}/classifiers.log",
    benchmark:
        "results/benchmarks/metrics/{dataset}/classifiers.tsv"
    threads: 4
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        ENV
    script:
        "../workflow_scripts/evaluate_classifiers.py"


rule evaluate_embeddings:
    input:
        stores=lambda w: [store_path(w.dataset, extractor) for extractor in EXTRACTORS],
        tsne=lambda w: [
            f"results/tsne/{w.dataset}/{extractor}/{layer}.csv"
            for extractor in EXTRACTORS
            for layer in layers_of(extractor)
        ],
    output:
        csv=report(
            "results/metrics/{dataset}/embedding_quality.csv",
            caption="../report/embedding_quality.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "embedding quality"},
        ),
        md="results/metrics/{dataset}/embedding_quality.md",
    params:
        extractors=EXTRACTORS,
        metrics=config["metrics"],
        weights=config["resnet18"]["weights"],
        device="cpu",
    log:
        "results/logs/metrics/{dataset}/embedding_quality.log",
    benchmark:
        "results/benchmarks/metrics/{dataset}/embedding_quality.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow_scripts/evaluate_embeddings.py"


rule plot_metrics:
    input:
        classifiers="results/metrics/{dataset}/classifiers.csv",
        embeddings="results/metrics/{dataset}/embedding_quality.csv",
    output:
        accuracy=report(
            "results/figures/{dataset}/metrics/accuracy_by_layer.png",
            caption="../report/accuracy_by_layer.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "accuracy by layer"},
        ),
        depth=report(
            "results/figures/{dataset}/metrics/depth.png",
            caption="../report/depth.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "NC1 and 2-D kNN by layer"},
        ),
    params:
        dpi=config["figures"]["dpi"],
        weights=config["resnet18"]["weights"],
        device="cpu",
    log:
        "results/logs/figures/{dataset}/metrics.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_metrics.py"
