# Metric tables: classifiers on raw pixels and every (extractor, layer), plus the class-mean baseline and the
# fine-tuned CNN; embedding quality of every layer and its t-SNE map; the two summary figures; linear CKA between
# every pair of layers (and pixels) and its heatmap. With finetune.replicates > 1 each extra replicate's
# fine-tuned rows are scored in a job of their own and merged into both tables beside replicate 0's, with their
# mean and sd.

# The metrics settings each table reads, so that a setting reruns only the table it changes.
EMBEDDING_KEYS = ("knn_k", "trustworthiness_k", "max_quality_points")
SIMILARITY_KEYS = ("cka_points",)
CLASSIFIER_SETTINGS = {
    k: v for k, v in config["metrics"].items() if k not in (*EMBEDDING_KEYS[1:], *SIMILARITY_KEYS)
}
EMBEDDING_SETTINGS = {k: config["metrics"][k] for k in EMBEDDING_KEYS}


rule evaluate_classifiers:
    input:
        images=IMAGES,
        stores=lambda w: [store_path(w.dataset, extractor) for extractor in EXTRACTORS],
        baseline=BASELINE,
        predictions=[PREDICTIONS] if FINETUNE else [],
        replicates=lambda w: replicate_paths(REPLICATE_CLASSIFIERS, w.dataset),
    output:
        csv=report_entry(f"{METRICS}/classifiers.csv", "classifiers", "Metrics", table="classifiers"),
        md=f"{METRICS}/classifiers.md",
    params:
        extractors=EXTRACTORS,
        metrics=CLASSIFIER_SETTINGS,
        seed=config["seed"],
        weights=config["resnet18"]["weights"],
    log:
        f"{LOGS}/metrics/{{dataset}}/classifiers.log",
    benchmark:
        f"{BENCHMARKS}/metrics/{{dataset}}/classifiers.tsv"
    threads: 4
    resources:
        mem_mb=lambda w, threads: classifier_size(w, threads)["mem_mb"],
        runtime=lambda w, threads: classifier_size(w, threads)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/evaluate_classifiers.py"


rule evaluate_embeddings:
    input:
        stores=lambda w: [store_path(w.dataset, extractor) for extractor in EXTRACTORS],
        tsne=lambda w: [
            TSNE_CSV.format(dataset=w.dataset, extractor=extractor, layer=layer)
            for extractor in EXTRACTORS
            for layer in layers_of(extractor)
        ],
        replicates=lambda w: replicate_paths(REPLICATE_EMBEDDINGS, w.dataset),
    output:
        csv=report_entry(
            f"{METRICS}/embedding_quality.csv", "embedding_quality", "Metrics", table="embedding quality"
        ),
        md=f"{METRICS}/embedding_quality.md",
    params:
        extractors=EXTRACTORS,
        metrics=EMBEDDING_SETTINGS,
        seed=config["seed"],
        weights=config["resnet18"]["weights"],
    log:
        f"{LOGS}/metrics/{{dataset}}/embedding_quality.log",
    benchmark:
        f"{BENCHMARKS}/metrics/{{dataset}}/embedding_quality.tsv"
    threads: 2
    resources:
        mem_mb=lambda w, threads: embedding_size(w, threads)["mem_mb"],
        runtime=lambda w, threads: embedding_size(w, threads)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/evaluate_embeddings.py"


rule evaluate_replicate_classifiers:
    input:
        images=IMAGES,
        store=REPLICATE_STORE,
        predictions=REPLICATE_PREDICTIONS,
    output:
        csv=REPLICATE_CLASSIFIERS,
    params:
        metrics=CLASSIFIER_SETTINGS,
        seed=config["seed"],
    log:
        f"{LOGS}/metrics/{{dataset}}/replicates/{{replicate}}/classifiers.log",
    benchmark:
        f"{BENCHMARKS}/metrics/{{dataset}}/replicates/{{replicate}}/classifiers.tsv"
    threads: 4
    resources:
        mem_mb=lambda w, threads: replicate_classifier_size(w, threads)["mem_mb"],
        runtime=lambda w, threads: replicate_classifier_size(w, threads)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/evaluate_replicate_classifiers.py"


rule evaluate_replicate_embeddings:
    input:
        store=REPLICATE_STORE,
        # replicate 0's maps: the points the feature-space silhouette is taken on (the same test images)
        tsne=lambda w: [TSNE_CSV.format(dataset=w.dataset, extractor="resnet18_finetuned", layer=layer)
                        for layer in layers_of("resnet18_finetuned")],
    output:
        csv=REPLICATE_EMBEDDINGS,
    params:
        metrics=EMBEDDING_SETTINGS,
        seed=config["seed"],
    log:
        f"{LOGS}/metrics/{{dataset}}/replicates/{{replicate}}/embedding_quality.log",
    benchmark:
        f"{BENCHMARKS}/metrics/{{dataset}}/replicates/{{replicate}}/embedding_quality.tsv"
    threads: 2
    resources:
        mem_mb=lambda w, threads: replicate_embedding_size(w, threads)["mem_mb"],
        runtime=lambda w, threads: replicate_embedding_size(w, threads)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/evaluate_replicate_embeddings.py"


rule plot_metrics:
    input:
        classifiers=f"{METRICS}/classifiers.csv",
        embeddings=f"{METRICS}/embedding_quality.csv",
    output:
        accuracy=report_entry(
            f"{FIGURES}/metrics/accuracy_by_layer.png", "accuracy_by_layer", "Metrics", figure="accuracy by layer"
        ),
        depth=report_entry(
            f"{FIGURES}/metrics/depth.png", "depth", "Metrics", figure="NC1 and 2-D kNN by layer"
        ),
    params:
        dpi=config["figures"]["dpi"],
        weights=config["resnet18"]["weights"],
    log:
        f"{LOGS}/figures/{{dataset}}/metrics.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_metrics.py"


# Linear CKA reads the stores (and the fine-tuned checkpoint, for the body layers its store lacks); its figure
# rule alone sees the dpi and the weights (named in the heatmap).
rule layer_similarity:
    input:
        images=IMAGES,
        stores=lambda w: [store_path(w.dataset, extractor) for extractor in EXTRACTORS],
        # The fine-tuned body's layers before layer4 are not in its store: computed for the subsample from here.
        model=lambda w: MODEL.format(dataset=w.dataset) if "resnet18_finetuned" in EXTRACTORS else [],
    output:
        csv=report_entry(CKA_TABLE, "cka", "Metrics", table="layer similarity (CKA)"),
        md=f"{METRICS}/cka.md",
    params:
        extractors=EXTRACTORS,
        points=config["metrics"]["cka_points"],
        seed=config["seed"],
        # a forward pass of cka_points images: the CPU does it in seconds to a minute, bit-identical run to run,
        # and the job holds no GPU
        device="cpu",
        batch_size=config["resnet18"]["batch_size"],
    log:
        f"{LOGS}/metrics/{{dataset}}/cka.log",
    benchmark:
        f"{BENCHMARKS}/metrics/{{dataset}}/cka.tsv"
    threads: 2
    resources:
        mem_mb=lambda w, threads: cka_size(w, threads)["mem_mb"],
        runtime=lambda w, threads: cka_size(w, threads)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/compute_cka.py"


rule plot_cka:
    input:
        csv=CKA_TABLE,
    output:
        png=report_entry(CKA_FIGURE, "cka_heatmap", "Metrics", figure="layer similarity (CKA)"),
    params:
        dpi=config["figures"]["dpi"],
        weights=config["resnet18"]["weights"],
    log:
        f"{LOGS}/figures/{{dataset}}/cka.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_cka.py"
