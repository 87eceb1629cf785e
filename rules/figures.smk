# Figures: every figure of the report, one target each, under FIGURES. t-SNE maps (Figs. 2-6, 15-17),
# thumbnail maps (3.1-6.1), all layers side by side, activation maps of one test image (7-14) and the
# fine-tuning plots (loss, one-cycle lr, top losses, confusion matrix).

FIGURE_LOGS = f"{LOGS}/figures/{{dataset}}"


rule plot_tsne:
    input:
        csv=TSNE_CSV,
        meta=TSNE_META,
    output:
        report_entry(
            f"{FIGURES}/tsne/{{extractor}}/{{layer}}.png",
            "tsne",
            "t-SNE",
            extractor="{extractor}",
            layer="{layer}",
            figure="t-SNE",
        ),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/tsne/{{extractor}}/{{layer}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_tsne.py"


rule plot_tsne_thumbs:
    input:
        csv=TSNE_CSV,
        meta=TSNE_META,
        images=IMAGES,
    output:
        report_entry(
            f"{FIGURES}/tsne_thumbs/{{extractor}}/{{layer}}.png",
            "tsne_thumbs",
            "t-SNE",
            extractor="{extractor}",
            layer="{layer}",
            figure="t-SNE thumbnails",
        ),
    params:
        thumbnail_size=config["figures"]["thumbnail_size"],
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/tsne_thumbs/{{extractor}}/{{layer}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{dataset}}/tsne_thumbs/{{extractor}}/{{layer}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: thumbnail_figure_size(w)["mem_mb"],
        runtime=lambda w: thumbnail_figure_size(w)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/plot_tsne_thumbs.py"


rule plot_tsne_layers:
    input:
        csv=lambda w: expand(TSNE_CSV, dataset=w.dataset, extractor=w.extractor, layer=layers_of(w.extractor)),
        meta=lambda w: expand(TSNE_META, dataset=w.dataset, extractor=w.extractor, layer=layers_of(w.extractor)),
    output:
        report_entry(
            f"{FIGURES}/tsne_layers/{{extractor}}.png",
            "tsne_layers",
            "t-SNE",
            extractor="{extractor}",
            layer="all",
            figure="t-SNE by layer",
        ),
    params:
        layers=lambda w: layers_of(w.extractor),
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/tsne_layers/{{extractor}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_tsne_layers.py"


rule plot_activations:
    input:
        model=lambda w: (
            MODEL.format(dataset=w.dataset) if w.extractor == "resnet18_finetuned" else RESNET18_WEIGHTS_FILES
        ),
        images=IMAGES,
    output:
        report_entry(
            f"{FIGURES}/activations/{{extractor}}/{{layer}}.png",
            "activations",
            "Activations",
            extractor="{extractor}",
            layer="{layer}",
            figure="activation maps",
        ),
    wildcard_constraints:
        extractor="|".join(ACTIVATION_EXTRACTORS),
        layer="|".join(BODY_LAYERS),
    params:
        position=lambda w: activation_image(w.dataset),
        weights=config["resnet18"]["weights"],
        resize=config["resnet18"]["resize"],
        seed=config["seed"],
        resources="resources",
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/activations/{{extractor}}/{{layer}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_activations.py"


rule plot_activation_input:
    input:
        images=IMAGES,
    output:
        report_entry(
            f"{FIGURES}/activations/input.png",
            "activation_input",
            "Activations",
            extractor="input",
            layer="input",
            figure="input image",
        ),
    params:
        position=lambda w: activation_image(w.dataset),
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/activations/input.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_activation_input.py"


rule plot_training:
    input:
        training_log=TRAINING_LOG,
    output:
        loss=report_entry(f"{FIGURES}/training/loss.png", "training_loss", "Fine-tuning", figure="training loss"),
        lr=report_entry(f"{FIGURES}/training/lr.png", "training_lr", "Fine-tuning", figure="learning rate"),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/training.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_training.py"


rule plot_collapse:
    input:
        collapse=COLLAPSE,
    output:
        report_entry(f"{FIGURES}/collapse.png", "collapse", "Fine-tuning", figure="neural collapse"),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/collapse.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_collapse.py"


rule plot_top_losses:
    input:
        predictions=PREDICTIONS,
        images=IMAGES,
    output:
        report_entry(f"{FIGURES}/top_losses.png", "top_losses", "Fine-tuning", figure="top losses"),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/top_losses.log",
    threads: 1
    resources:
        mem_mb=lambda w: top_losses_size(w)["mem_mb"],
        runtime=lambda w: top_losses_size(w)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/plot_top_losses.py"


rule plot_confusion:
    input:
        predictions=PREDICTIONS,
        images=IMAGES,
    output:
        report_entry(f"{FIGURES}/confusion.png", "confusion", "Fine-tuning", figure="confusion matrix"),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIGURE_LOGS}/confusion.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_confusion.py"
