import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_training
from embedscope.runtime import start_job

start_job(snakemake)
plot_training(
    snakemake.input.training_log,
    snakemake.output.loss,
    snakemake.output.lr,
    dataset=snakemake.wildcards.dataset,
    dpi=snakemake.params.dpi,
)
