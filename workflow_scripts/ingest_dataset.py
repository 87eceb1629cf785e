import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.datasets import ingest_dataset
from embedscope.runtime import start_job

start_job(snakemake)
ingest_dataset(
    snakemake.params.settings,
    snakemake.output[0],
    resources=snakemake.params.resources,
    dataset=snakemake.wildcards.dataset,
    threads=snakemake.threads,
)
