import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.features import gather_feature_shards
from embedscope.runtime import start_job

start_job(snakemake)
gather_feature_shards(snakemake.input.shards, snakemake.output.store)
