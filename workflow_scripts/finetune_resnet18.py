import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.finetune import finetune_resnet18  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake, seed=snakemake.params.seed, deterministic=snakemake.params.deterministic)  # noqa: F821
finetune_resnet18(
    snakemake.input.data,  # noqa: F821
    snakemake.output.model,  # noqa: F821
    snakemake.output.training_log,  # noqa: F821
    snakemake.output.predictions,  # noqa: F821
    finetune=snakemake.params.finetune,  # noqa: F821
    resnet18=snakemake.params.resnet18,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    deterministic=snakemake.params.deterministic,  # noqa: F821
    device=device,
    resources=snakemake.params.resources,  # noqa: F821
)
