import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.finetune import extract_finetuned_features
from embedscope.runtime import start_job

device = start_job(snakemake)
extract_finetuned_features(
    snakemake.input.data,
    snakemake.input.model,
    snakemake.output[0],
    batch_size=snakemake.params.batch_size,
    device=device,
)
