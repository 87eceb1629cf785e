# t-SNE (issue 5): the test split (or a seeded stratified subset of max_points, the same for every extractor)
# of every (dataset, extractor, layer) -> results/tsne/{dataset}/{extractor}/{layer}.csv (+ a .json sidecar
# with N, D, class names and the settings, read by the figure titles).


rule embed_tsne:
    input:
        features=lambda w: store_path(w.dataset, w.extractor),
        # resnet18_finetuned only: predictions.csv supplies the pred and prob columns.
        predictions=lambda w: (
            f"results/models/{w.dataset}/predictions.csv" if w.extractor == "resnet18_finetuned" else []
        ),
    output:
        csv="results/tsne/{dataset}/{extractor}/{layer}.csv",
        meta="results/tsne/{dataset}/{extractor}/{layer}.json",
    params:
        method=config["tsne"]["method"],
        perplexity=config["tsne"]["perplexity"],
        pca_components=config["tsne"]["pca_components"],
        n_iter=config["tsne"]["n_iter"],
        ints_in_interval=config["tsne"]["ints_in_interval"],
        neighbors=config["tsne"]["neighbors"],
        seed=config["tsne"]["seed"],
        max_points=lambda w: dataset_settings(w.dataset).get("max_points"),
    log:
        "results/logs/tsne/{dataset}/{extractor}/{layer}.log",
    benchmark:
        "results/benchmarks/tsne/{dataset}/{extractor}/{layer}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    script:
        "../workflow_scripts/embed_tsne.py"
