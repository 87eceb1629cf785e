import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.download import verify_inputs  # noqa: E402
from embedscope.runtime import setup_logging  # noqa: E402

setup_logging()
verify_inputs(snakemake.input)  # noqa: F821
