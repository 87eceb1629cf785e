"""The config schema: defaults filled in, each kind of bad value rejected with the key named."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from embedscope.configcheck import ConfigError, check_config

REPO = Path(__file__).resolve().parent.parent
SCHEMA = str(REPO / "schemas" / "config.schema.yaml")


def load(name="config.yaml"):
    return yaml.safe_load((REPO / name).read_text())


def validated(config):
    config = copy.deepcopy(config)
    validate(config, SCHEMA)
    return config


def test_default_config_validates_and_gets_defaults():
    config = validated(load())
    assert config["tsne"]["pca_components"] == 50
    assert config["finetune"]["pct_start"] == 0.3
    assert config["datasets"]["mnist5k"]["max_points"] is None
    check_config(config)


def test_every_schema_key_has_description_and_default():
    schema = yaml.safe_load(Path(SCHEMA).read_text())

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            assert "default" in sub, f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}<id>.")

    walk(schema, "")


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda c: c["datasets"]["mnist5k"].update(source="ftp"), "ftp"),
        (lambda c: c["datasets"]["mnist5k"].update(n_train=-3), "-3"),
        (lambda c: c.update(extractors=["vgg16"]), "vgg16"),
        (lambda c: c.update(colour="red"), "colour"),
        (lambda c: c["tsne"].update(perplexity="fifteen"), "fifteen"),
        (lambda c: c["datasets"]["mnist5k"].update(source="torchvision"), "name"),
        (lambda c: c["datasets"]["mnist5k"].update(source="imagefolder"), "root"),
        (lambda c: c.update(device="tpu"), "tpu"),
    ],
)
def test_schema_rejects_bad_values(change, fragment):
    config = load()
    change(config)
    with pytest.raises(WorkflowError, match=fragment):
        validate(config, SCHEMA)


def test_semantic_checks_name_the_key(tmp_path):
    config = validated(load())
    config["datasets"]["mnist5k"]["n_train"] = 4000
    with pytest.raises(ConfigError, match=r"datasets\.mnist5k: n_train \+ n_test = 6000"):
        check_config(config)
    config = validated(load())
    config["resnet18"]["weights"] = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="resnet18.weights"):
        check_config(config)
    config = validated(load())
    config["figures"]["activation_image"] = 2000
    with pytest.raises(ConfigError, match="figures.activation_image"):
        check_config(config)
    config = validated(load())
    config["datasets"]["mine"] = {"source": "imagefolder", "root": str(tmp_path / "nowhere")}
    config = validated(config)
    with pytest.raises(ConfigError, match=r"datasets\.mine\.root"):
        check_config(config)


def schema_defaults(section):
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    return {key: node["default"] for key, node in schema["properties"][section]["properties"].items()}


def keyword_defaults(function, section):
    """The defaults a library function repeats for keys of one config section (only those it names)."""
    import inspect

    defaults = schema_defaults(section)
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if name in defaults and p.default is not inspect.Parameter.empty}


def test_defaults_repeated_in_code_equal_the_schemas():
    """Code that fills in defaults for callers that pass only part of a section agrees with the schema."""
    from embedscope import metrics, tsne
    from embedscope.finetune import FINETUNE_DEFAULTS

    assert FINETUNE_DEFAULTS == schema_defaults("finetune")
    assert metrics.DEFAULTS == schema_defaults("metrics")
    tsne_defaults = schema_defaults("tsne")
    for function in (tsne.run_tsne, tsne.embed_tsne):
        repeated = keyword_defaults(function, "tsne")
        assert repeated and repeated == {key: tsne_defaults[key] for key in repeated}, function.__name__
