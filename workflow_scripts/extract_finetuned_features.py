import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.finetune import extract_finetuned_features  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
extract_finetuned_features(
    snakemake.input.data,  # noqa: F821
    snakemake.input.model,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    batch_size=snakemake.params.batch_size,  # noqa: F821
    device=device,
)
