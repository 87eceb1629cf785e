import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.runtime import start_job
from embedscope.similarity import compute_cka

start_job(snakemake)
compute_cka(
    snakemake.input.images,
    snakemake.params.extractors,
    list(snakemake.input.stores),
    snakemake.output.csv,
    snakemake.output.md,
    dataset=snakemake.wildcards.dataset,
    n_points=snakemake.params.points,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
)
