import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.finetune import finetune_resnet18
from embedscope.runtime import start_job

device = start_job(snakemake, seed=snakemake.params.seed, deterministic=snakemake.params.deterministic)
finetune_resnet18(
    snakemake.input.data,
    snakemake.output.model,
    snakemake.output.training_log,
    snakemake.output.predictions,
    snakemake.output.collapse,
    finetune=snakemake.params.finetune,
    resnet18=snakemake.params.resnet18,
    seed=snakemake.params.seed,
    deterministic=snakemake.params.deterministic,
    device=device,
    resources=snakemake.params.resources,
    workers=snakemake.threads,
)
