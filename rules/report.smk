# The interactive explorer (issue 9): every t-SNE map of a dataset in one self-contained HTML page
# (Bokeh, inline resources, no network) -> results/explorer/{dataset}.html, linked from the Snakemake report.


# (extractor, layer) of every t-SNE map, in menu order: the enabled extractors, each with its layers in order.
EXPLORER_MAPS = [[extractor, layer] for extractor in EXTRACTORS for layer in layers_of(extractor)]


rule build_explorer:
    input:
        images="results/data/{dataset}.zarr",
        # one csv per EXPLORER_MAPS entry, in the same order
        tsne=lambda w: [f"results/tsne/{w.dataset}/{e}/{layer}.csv" for e, layer in EXPLORER_MAPS],
        quality="results/metrics/{dataset}/embedding_quality.csv",
        predictions=lambda w: [f"results/models/{w.dataset}/predictions.csv"] if FINETUNE else [],
    output:
        html=report(
            "results/explorer/{dataset}.html",
            caption="../report/explorer.rst",
            category="Explorer",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "explorer"},
        ),
    params:
        maps=EXPLORER_MAPS,
    log:
        "results/logs/explorer/{dataset}.log",
    benchmark:
        "results/benchmarks/explorer/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV
    script:
        "../workflow_scripts/build_explorer.py"
