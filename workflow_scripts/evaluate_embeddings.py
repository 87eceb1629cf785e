import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.metrics import evaluate_embeddings
from embedscope.runtime import start_job

start_job(snakemake)
evaluate_embeddings(
    snakemake.params.extractors,
    list(snakemake.input.stores),
    list(snakemake.input.tsne),
    snakemake.output.csv,
    snakemake.output.md,
    dataset=snakemake.wildcards.dataset,
    settings=snakemake.params.metrics,
    threads=snakemake.threads,
    weights=snakemake.params.weights,
    seed=snakemake.params.seed,
    replicate_csvs=list(snakemake.input.replicates),
)
