import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.download import verify_inputs
from embedscope.runtime import setup_logging

setup_logging()
verify_inputs(snakemake.input)
