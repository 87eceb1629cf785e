import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_top_losses
from embedscope.runtime import start_job

start_job(snakemake)
plot_top_losses(
    snakemake.input.predictions,
    snakemake.input.images,
    snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    dpi=snakemake.params.dpi,
)
