import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_metrics
from embedscope.runtime import start_job

start_job(snakemake)
plot_metrics(
    snakemake.input.classifiers,
    snakemake.input.embeddings,
    snakemake.output.accuracy,
    snakemake.output.depth,
    dataset=snakemake.wildcards.dataset,
    dpi=snakemake.params.dpi,
    weights=snakemake.params.weights,
)
