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
    n_jobs=snakemake.threads,
    info={"dataset": snakemake.wildcards.dataset, "extractor": snakemake.wildcards.extractor},
    **snakemake.params.tsne,
)
