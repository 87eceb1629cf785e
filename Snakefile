# embedscope: what ResNet-18 and a wavelet scattering network make of image datasets, layer by layer.
# Data flow and output map: README.md ("Outputs"). Run: `snakemake --cores all`.

from snakemake.utils import min_version

min_version("9.0")


# The default quick study, unless a config file is given (`--configfile config/paper.yaml` replaces it
# rather than merging into it, so the full study does not also run mnist5k).
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/data.smk"
include: "rules/baseline.smk"
include: "rules/features.smk"
include: "rules/finetune.smk"
include: "rules/tsne.smk"
include: "rules/figures.smk"
include: "rules/metrics.smk"
include: "rules/explorer.smk"


report: "report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True
