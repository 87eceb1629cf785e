import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_cka
from embedscope.runtime import start_job

start_job(snakemake)
plot_cka(
    snakemake.input.csv,
    snakemake.output.png,
    dataset=snakemake.wildcards.dataset,
    dpi=snakemake.params.dpi,
    weights=snakemake.params.weights,
)
