import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.datasets import ingest_dataset
from embedscope.runtime import setup_logging

setup_logging()
ingest_dataset(
    snakemake.params.settings,
    snakemake.output[0],
    resources=snakemake.params.resources,
    dataset=snakemake.wildcards.dataset,
)
