import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.resnet import download_imagenet_weights
from embedscope.runtime import setup_logging

setup_logging()
download_imagenet_weights(snakemake.output[0])
