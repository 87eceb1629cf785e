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
        (lambda c: c.update(extractors=[]), r"\[\] should be non-empty"),
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
    import inspect

    from embedscope import metrics, similarity, tsne
    from embedscope.finetune import FINETUNE_DEFAULTS

    # `replicates` says how often the workflow runs the recipe, so the recipe's defaults lack it
    assert {**FINETUNE_DEFAULTS, "replicates": 1} == schema_defaults("finetune")
    metrics_defaults = schema_defaults("metrics")
    assert metrics.DEFAULTS == {k: v for k, v in metrics_defaults.items() if k != "cka_points"}
    for function in (similarity.cka_table, similarity.compute_cka):  # the CKA table's own key
        assert inspect.signature(function).parameters["n_points"].default == metrics_defaults["cka_points"]
    tsne_defaults = schema_defaults("tsne")
    for function in (tsne.run_tsne, tsne.embed_tsne):
        repeated = keyword_defaults(function, "tsne")
        assert repeated and repeated == {key: tsne_defaults[key] for key in repeated}, function.__name__


# ---- values a later job would reject, refused at workflow start ----------------------------------------------


def _embedded(**settings):
    return {"source": "embedded", "seed": 0, **settings}


@pytest.mark.parametrize("change, message", [
    # scikit-learn's stratified split: one image per class on both sides of each cut
    (lambda c: c["datasets"].update(mnist5k=_embedded(n_train=3000, n_test=1995)),
     "datasets.mnist5k: n_train + n_test = 4995 leaves 5 of the embedded MNIST subset's 5000 images out; a stratified "
     "split leaves out none or at least 10 (one per class): n_train + n_test must be 5000 or at most 4990"),
    (lambda c: c["datasets"].update(mnist5k=_embedded(n_train=9, n_test=100)),
     "datasets.mnist5k: n_train = 9 gives 9 train images; a stratified split of the embedded MNIST subset's 10 "
     "classes needs at least 10 (one per class)"),
    (lambda c: c["datasets"].update(mnist5k=_embedded(n_train=4995)),
     "datasets.mnist5k: n_test = null (the rest, 5) gives 5 test images; a stratified split of the embedded MNIST "
     "subset's 10 classes needs at least 10 (one per class)"),
    (lambda c: c["datasets"].update(mnist5k=_embedded(n_test=5001)),
     "datasets.mnist5k: n_test = 5001, but the embedded MNIST subset has 5000 images"),
    (lambda c: c["datasets"].update(mnist5k=_embedded(n_test=4991)),
     "datasets.mnist5k: n_train = null (all but the 4991 test) gives 9 train images"),
    (lambda c: c["datasets"].update(mnist5k={"source": "torchvision", "name": "CIFAR10", "n_train": 49995}),
     "datasets.mnist5k.n_train = 49995: a stratified subsample of the official CIFAR10's 50000 train images leaves "
     "out none or at least 10 (one per class): n_train must be 50000 (or null) or at most 49990"),
    (lambda c: c["datasets"].update(mnist5k={"source": "torchvision", "name": "MNIST", "n_test": 10001}),
     "datasets.mnist5k.n_test = 10001, but the official MNIST has only 10000 test images"),
    (lambda c: c["datasets"].update(mnist5k={"source": "torchvision", "name": "MNIST", "root": "/data", "n_test": 5}),
     "datasets.mnist5k.n_test = 5: a stratified subsample of 10 classes needs at least 10 test images (one per "
     "class)"),
    # neighbourhoods larger than the points they run on (t-SNE on the test split, or max_points of it)
    (lambda c: c.setdefault("metrics", {}).update(trustworthiness_k=1000),
     "metrics.trustworthiness_k = 1000: trustworthiness needs k < n / 2 of datasets.mnist5k's 2000 t-SNE points "
     "(its test split); allowed at most 999"),
    (lambda c: c["datasets"]["mnist5k"].update(max_points=20),
     "metrics.trustworthiness_k = 10: trustworthiness needs k < n / 2 of datasets.mnist5k's 20 t-SNE points "
     "(datasets.mnist5k.max_points); allowed at most 9"),
    # trustworthiness runs on metrics.max_quality_points of the map's points where that is fewer
    (lambda c: c.setdefault("metrics", {}).update(max_quality_points=20),
     "metrics.trustworthiness_k = 10: trustworthiness needs k < n / 2 of the 20 points it runs on "
     "(metrics.max_quality_points = 20 of datasets.mnist5k's 2000 t-SNE points (its test split)); allowed at most 9"),
    (lambda c: (c["datasets"]["mnist5k"].update(max_points=300), c.update(metrics={"max_quality_points": 15})),
     "metrics.trustworthiness_k = 10: trustworthiness needs k < n / 2 of the 15 points it runs on "
     "(metrics.max_quality_points = 15 of datasets.mnist5k's 300 t-SNE points (datasets.mnist5k.max_points)); "
     "allowed at most 7"),
    (lambda c: c.setdefault("metrics", {}).update(knn_k=2000, classifiers=["logreg"]),
     "metrics.knn_k = 2000: the 2-D kNN accuracy votes among the other points of datasets.mnist5k's 2000 t-SNE "
     "points (its test split); allowed at most 1999"),
    (lambda c: (c["datasets"].update(mnist5k=_embedded(n_train=100, n_test=4900)), c.update(metrics={"knn_k": 101})),
     "metrics.knn_k = 101: the knn classifier is fitted on datasets.mnist5k's 100 train images; allowed at most 100 "
     "(or leave knn out of metrics.classifiers)"),
    # network settings against the image size
    (lambda c: c["scattering"].update(J=5),
     "scattering.J = 5: 2^J = 32 exceeds the side of datasets.mnist5k's 28x28 images; allowed at most 4"),
    (lambda c: c["tsne"].update(pca_components=1),
     "tsne.pca_components = 1: t-SNE starts from a 2-D PCA of its input, so the input needs at least 2 dimensions; "
     "use 0 (no PCA) or at least 2"),
    (lambda c: c["finetune"].update(collapse_points=9),
     "finetune.collapse_points = 9: the collapse statistics need a train image of each of datasets.mnist5k's 10 "
     "classes; allowed at least 10"),
])
def test_values_a_job_would_reject_are_refused(change, message):
    config = load()
    change(config)
    config = validated(config)
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert message in str(err.value)


def test_sizes_that_a_split_can_honour_pass():
    for settings in (_embedded(n_train=3000, n_test=1990), _embedded(n_train=10, n_test=10), _embedded(n_test=4990),
                     {"source": "torchvision", "name": "CIFAR10", "n_train": 49990, "n_test": 10000},
                     {"source": "torchvision", "name": "CIFAR10", "n_train": 50000, "max_points": 3200}):
        config = load()
        config["datasets"] = {"d": settings}
        config["metrics"] = {"trustworthiness_k": 4, "knn_k": 9}
        check_config(validated(config))
    config = load()
    config["metrics"] = {"trustworthiness_k": 10, "max_quality_points": 21}  # 10 < 21 / 2
    check_config(validated(config))
    config = load()
    config["scattering"]["J"] = 4  # 16 <= 28
    check_config(validated(config))
    config["datasets"] = {"c": {"source": "torchvision", "name": "CIFAR10"}}
    config["scattering"]["J"] = 5  # 32 <= 32
    check_config(validated(config))


def test_lr_groups_beyond_the_three_groups_is_a_schema_error():
    config = load()
    config["finetune"]["lr_groups"] = 4
    with pytest.raises(WorkflowError, match="4 is greater than the maximum of 3"):
        validate(config, SCHEMA)


def _folder(root, counts, size=(6, 6)):
    from PIL import Image

    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", size, i).save(root / name / f"{i}.png")
    return str(root)


def _with_folder(root, metrics=None, **settings):
    config = load()
    config["datasets"] = {"mine": {"source": "imagefolder", "root": str(root), **settings}}
    config["metrics"] = metrics or {"trustworthiness_k": 3, "knn_k": 3}
    return validated(config)


def test_an_image_folder_is_checked_from_its_listing(tmp_path):
    single = _folder(tmp_path / "single", {"cats": 12})
    with pytest.raises(ConfigError, match=f"datasets.mine.root: {single} holds a single class folder, 'cats'; "
                                          "classifiers, fine-tuning and the embedding metrics compare classes"):
        check_config(_with_folder(single))
    root = _folder(tmp_path / "three", {"a": 8, "b": 8, "c": 1})
    with pytest.raises(ConfigError) as err:
        check_config(_with_folder(root, n_train=14, n_test=4))
    assert str(err.value).splitlines()[1:] == [
        f"  datasets.mine: n_train + n_test = 18, but image folder {root} has 17 images",
    ]
    with pytest.raises(ConfigError) as err:
        check_config(_with_folder(root, n_train=13, n_test=4))
    assert str(err.value).splitlines()[1:] == [
        f"  datasets.mine: class(es) ['c'] of image folder {root} hold a single image; a stratified split needs at "
        "least 2 images of every class",
    ]
    root = _folder(tmp_path / "two", {"a": 10, "b": 10}, size=(20, 12))
    plans = check_config(_with_folder(root, n_test=10, image_size=[16, 20]))
    assert (plans["mine"].n_train, plans["mine"].n_test, plans["mine"].tsne_points) == (10, 10, 10)
    with pytest.raises(ConfigError, match=r"metrics.trustworthiness_k = 10: trustworthiness needs k < n / 2 of "
                                          r"datasets.mine's 4 t-SNE points \(its test split\); allowed at most 1"):
        check_config(_with_folder(root, {"trustworthiness_k": 10}, n_test=4))
    config = _with_folder(root, {"trustworthiness_k": 1, "knn_k": 1}, n_test=3)
    with pytest.raises(ConfigError, match=r"datasets.mine: t-SNE would run on 3 test images \(its test split\); it "
                                          r"needs at least 4"):
        check_config(config)
    config = _with_folder(root, image_size=[12, 20])
    config["scattering"]["J"] = 4
    with pytest.raises(ConfigError, match="scattering.J = 4: 2\\^J = 16 exceeds the side of datasets.mine's 12x20 "
                                          "images; allowed at most 3"):
        check_config(config)


def test_an_image_folder_with_train_and_test_folders_and_an_outside_link(tmp_path):
    _folder(tmp_path / "tt" / "train", {"a": 12, "b": 12})
    _folder(tmp_path / "tt" / "test", {"a": 6, "b": 6})
    root = tmp_path / "tt"
    plans = check_config(_with_folder(root, n_train=20))
    assert (plans["mine"].n_train, plans["mine"].n_test) == (20, 12)
    with pytest.raises(ConfigError, match=f"datasets.mine.n_train = 23: a stratified subsample of image folder "
                                          f"{root}'s 24 train images leaves out none or at least 2 .*: n_train must "
                                          "be 24 \\(or null\\) or at most 22"):
        check_config(_with_folder(root, n_train=23))
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "test" / "a" / "6.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ConfigError, match=rf"datasets.mine.root: 1 symbolic link\(s\) under {root} resolve outside "
                                          rf"it \(refused, never followed.*\n  {root}/test/a/6.png -> "
                                          rf"{tmp_path}/secret.png"):
        check_config(_with_folder(root))
