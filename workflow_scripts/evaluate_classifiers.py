import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.metrics import evaluate_classifiers
from embedscope.runtime import start_job

start_job(snakemake)
evaluate_classifiers(
    snakemake.input.images,
    snakemake.params.extractors,
    list(snakemake.input.stores),
    snakemake.input.baseline,
    snakemake.input.predictions[0] if snakemake.input.predictions else None,
    snakemake.output.csv,
    snakemake.output.md,
    dataset=snakemake.wildcards.dataset,
    settings=snakemake.params.metrics,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    weights=snakemake.params.weights,
    replicate_csvs=list(snakemake.input.replicates),
)
