# The report's baseline (section 2, Figure 1): class-mean images and nearest-class-mean accuracy.


rule compute_baseline:
    input:
        IMAGES,
    output:
        metrics=BASELINE,
        figure=report_entry(f"{FIGURES}/class_means.png", "class_means", "Baseline", figure="class means"),
    params:
        dpi=config["figures"]["dpi"],
    log:
        f"{LOGS}/baseline/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=lambda w: baseline_size(w)["mem_mb"],
        runtime=lambda w: baseline_size(w)["runtime"],
    conda:
        ENV
    script:
        "../workflow_scripts/compute_baseline.py"
