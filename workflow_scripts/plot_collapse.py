import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_collapse
from embedscope.runtime import start_job

start_job(snakemake)
plot_collapse(
    snakemake.input.collapse,
    snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    dpi=snakemake.params.dpi,
)
