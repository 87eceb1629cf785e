import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.runtime import start_job
from embedscope.tsne import run_tsne

start_job(snakemake)
run_tsne(
    snakemake.input.features,
    snakemake.wildcards.layer,
    snakemake.output.csv,
    snakemake.output.meta,
    predictions=snakemake.input.predictions or None,
    max_points=snakemake.params.max_points,
    method=snakemake.params.method,
    perplexity=snakemake.params.perplexity,
    pca_components=snakemake.params.pca_components,
    n_iter=snakemake.params.n_iter,
    ints_in_interval=snakemake.params.ints_in_interval,
    neighbors=snakemake.params.neighbors,
    seed=snakemake.params.seed,
    n_jobs=snakemake.threads,
    info={"dataset": snakemake.wildcards.dataset, "extractor": snakemake.wildcards.extractor},
)
