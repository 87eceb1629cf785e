import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.metrics import evaluate_replicate_embeddings
from embedscope.runtime import start_job

start_job(snakemake)
evaluate_replicate_embeddings(
    snakemake.input.store,
    list(snakemake.input.tsne),
    snakemake.output.csv,
    dataset=snakemake.wildcards.dataset,
    settings=snakemake.params.metrics,
    threads=snakemake.threads,
    seed=snakemake.params.seed,
)
