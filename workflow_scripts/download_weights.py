import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.resnet import download_imagenet_weights  # noqa: E402
from embedscope.runtime import setup_logging  # noqa: E402

setup_logging()
download_imagenet_weights(snakemake.output[0], url=snakemake.params.url)  # noqa: F821
