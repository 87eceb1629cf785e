# Figures (issue 5): every figure of the report, one target each, under results/figures/{dataset}/.
# t-SNE maps (Figs. 2-6, 15-17), thumbnail maps (3.1-6.1), all layers side by side, activation maps of one test
# image (7-14) and the fine-tuning plots (loss, one-cycle lr, top losses, confusion matrix).

FIG = "results/figures/{dataset}"
FIG_LOG = "results/logs/figures/{dataset}"


TSNE = "results/tsne/{dataset}/{extractor}/{layer}"
rule plot_tsne:
    input:
        csv=f"{TSNE}.csv",
        meta=f"{TSNE}.json",
    output:
        report(
            f"{FIG}/tsne/{{extractor}}/{{layer}}.png",
            caption="../report/tsne.rst",
            category="t-SNE",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "extractor": "{extractor}", "layer": "{layer}", "figure": "t-SNE"},
        ),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIG_LOG}/tsne/{{extractor}}/{{layer}}.log",
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
        csv=f"{TSNE}.csv",
        meta=f"{TSNE}.json",
        images="results/data/{dataset}.zarr",
    output:
        report(
            f"{FIG}/tsne_thumbs/{{extractor}}/{{layer}}.png",
            caption="../report/tsne_thumbs.rst",
            category="t-SNE",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "extractor": "{extractor}",
                "layer": "{layer}",
                "figure": "t-SNE thumbnails",
            },
        ),
    params:
        thumbnail_size=config["figures"]["thumbnail_size"],
        dpi=config["figures"]["dpi"],
    log:
        f"{FIG_LOG}/tsne_thumbs/{{extractor}}/{{layer}}.log",
    benchmark:
        "results/benchmarks/figures/{dataset}/tsne_thumbs/{extractor}/{layer}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_tsne_thumbs.py"


rule plot_tsne_layers:
    input:
        csv=lambda w: expand(f"{TSNE}.csv", dataset=w.dataset, extractor=w.extractor, layer=layers_of(w.extractor)),
        meta=lambda w: expand(f"{TSNE}.json", dataset=w.dataset, extractor=w.extractor, layer=layers_of(w.extractor)),
    output:
        report(
            f"{FIG}/tsne_layers/{{extractor}}.png",
            caption="../report/tsne_layers.rst",
            category="t-SNE",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "extractor": "{extractor}", "layer": "all", "figure": "t-SNE by layer"},
        ),
    params:
        layers=lambda w: layers_of(w.extractor),
        dpi=config["figures"]["dpi"],
    log:
        f"{FIG_LOG}/tsne_layers/{{extractor}}.log",
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
            f"results/models/{w.dataset}/resnet18_finetuned.pt"
            if w.extractor == "resnet18_finetuned"
            else RESNET18_WEIGHTS_FILES
        ),
        images="results/data/{dataset}.zarr",
    output:
        report(
            f"{FIG}/activations/{{extractor}}/{{layer}}.png",
            caption="../report/activations.rst",
            category="Activations",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "extractor": "{extractor}",
                "layer": "{layer}",
                "figure": "activation maps",
            },
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
        f"{FIG_LOG}/activations/{{extractor}}/{{layer}}.log",
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
        images="results/data/{dataset}.zarr",
    output:
        report(
            f"{FIG}/activations/input.png",
            caption="../report/activation_input.rst",
            category="Activations",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "extractor": "input", "layer": "input", "figure": "input image"},
        ),
    params:
        position=lambda w: activation_image(w.dataset),
        dpi=config["figures"]["dpi"],
    log:
        f"{FIG_LOG}/activations/input.log",
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
        training_log="results/models/{dataset}/training_log.csv",
    output:
        loss=report(
            f"{FIG}/training/loss.png",
            caption="../report/training_loss.rst",
            category="Fine-tuning",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "training loss"},
        ),
        lr=report(
            f"{FIG}/training/lr.png",
            caption="../report/training_lr.rst",
            category="Fine-tuning",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "learning rate"},
        ),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIG_LOG}/training.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_training.py"


rule plot_top_losses:
    input:
        predictions="results/models/{dataset}/predictions.csv",
        images="results/data/{dataset}.zarr",
    output:
        report(
            f"{FIG}/top_losses.png",
            caption="../report/top_losses.rst",
            category="Fine-tuning",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "top losses"},
        ),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIG_LOG}/top_losses.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_top_losses.py"


rule plot_confusion:
    input:
        predictions="results/models/{dataset}/predictions.csv",
        images="results/data/{dataset}.zarr",
    output:
        report(
            f"{FIG}/confusion.png",
            caption="../report/confusion.rst",
            category="Fine-tuning",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "confusion matrix"},
        ),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{FIG_LOG}/confusion.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow_scripts/plot_confusion.py"
