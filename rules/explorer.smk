# The interactive explorer: every t-SNE map of a dataset in one self-contained HTML page (Bokeh, inline
# resources, no network) -> EXPLORER, linked from the Snakemake report.


# (extractor, layer) of every t-SNE map, in menu order: the enabled extractors, each with its layers in order.
EXPLORER_MAPS = [[extractor, layer] for extractor in EXTRACTORS for layer in layers_of(extractor)]


rule build_explorer:
    input:
        images=IMAGES,
        # one csv per EXPLORER_MAPS entry, in the same order
        tsne=lambda w: [TSNE_CSV.format(dataset=w.dataset, extractor=e, layer=layer) for e, layer in EXPLORER_MAPS],
        quality=f"{METRICS}/embedding_quality.csv",
        predictions=[PREDICTIONS] if FINETUNE else [],
    output:
        html=report_entry(EXPLORER, "explorer", "Explorer", figure="explorer"),
    params:
        maps=EXPLORER_MAPS,
        trustworthiness_k=config["metrics"]["trustworthiness_k"],
    log:
        f"{LOGS}/explorer/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/explorer/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: explorer_size(w)["mem_mb"],
        runtime=lambda w: explorer_size(w)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/build_explorer.py"
