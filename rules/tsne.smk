# t-SNE: the test split (or a seeded stratified subset of max_points, the same for every extractor) of every
# (dataset, extractor, layer) -> TSNE_CSV, plus a JSON sidecar (TSNE_META) with N, D, class names and the
# settings, read by the figure titles.


rule embed_tsne:
    input:
        features=lambda w: store_path(w.dataset, w.extractor),
        # resnet18_finetuned only: predictions.csv supplies the pred and prob columns.
        predictions=lambda w: (
            PREDICTIONS.format(dataset=w.dataset) if w.extractor == "resnet18_finetuned" else []
        ),
    output:
        csv=TSNE_CSV,
        meta=TSNE_META,
    params:
        # every key of the section is a keyword of run_tsne
        tsne=config["tsne"],
        max_points=lambda w: dataset_settings(w.dataset).get("max_points"),
    log:
        f"{LOGS}/tsne/{{dataset}}/{{extractor}}/{{layer}}.log",
    benchmark:
        f"{BENCHMARKS}/tsne/{{dataset}}/{{extractor}}/{{layer}}.tsv"
    threads: 2
    resources:
        mem_mb=lambda w, threads: tsne_size(w, threads)["mem_mb"],
        runtime=lambda w, threads: tsne_size(w, threads)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/embed_tsne.py"
