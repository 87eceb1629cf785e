import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.metrics import evaluate_replicate_classifiers
from embedscope.runtime import start_job

start_job(snakemake)
evaluate_replicate_classifiers(
    snakemake.input.images,
    snakemake.input.store,
    snakemake.input.predictions,
    snakemake.output.csv,
    dataset=snakemake.wildcards.dataset,
    settings=snakemake.params.metrics,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
)
