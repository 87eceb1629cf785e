import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_activation_input
from embedscope.runtime import start_job

start_job(snakemake)
plot_activation_input(
    snakemake.input.images,
    snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    position=snakemake.params.position,
    dpi=snakemake.params.dpi,
)
