import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.download import stage_dataset  # noqa: E402
from embedscope.runtime import setup_logging  # noqa: E402

setup_logging()
stage_dataset(snakemake.params.name, snakemake.params.root, only=[snakemake.params.relpath])  # noqa: F821
