import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.baseline import compute_baseline
from embedscope.runtime import start_job

start_job(snakemake)
compute_baseline(
    snakemake.input[0],
    snakemake.output.metrics,
    snakemake.output.figure,
    dataset=snakemake.wildcards.dataset,
    dpi=snakemake.params.dpi,
)
