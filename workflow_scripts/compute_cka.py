import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

if snakemake.input.model:
    import torch  # noqa: F401  (before start_job, which then sets torch's threads and seeds)

from embedscope.runtime import start_job
from embedscope.similarity import compute_cka

device = start_job(snakemake)
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
    model_path=snakemake.input.model or None,
    device=device,
    batch_size=snakemake.params.batch_size,
)
