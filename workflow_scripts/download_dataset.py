import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.download import stage_dataset
from embedscope.runtime import setup_logging

setup_logging()
stage_dataset(snakemake.params.name, snakemake.params.root, only=[snakemake.params.relpath])
