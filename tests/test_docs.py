"""The documentation agrees with the workflow: report categories, and the README's numbers for the default run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from reference.make_default_study_reference import DEFAULT_REFERENCE, read_reference, value

REPO = Path(__file__).resolve().parents[1]


def _calls(text: str, name: str):
    """The source text of every call `name(...)` in a rule file, parentheses balanced."""
    for match in re.finditer(rf"\b{name}\(", text):
        depth, start = 0, match.start()
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                yield text[start:end + 1]
                break


def declared_categories() -> dict[str, set[str]]:
    """Category -> rule files declaring it, from every report_entry(path, caption, category, ...) and every
    report(..., category="...") in rules/*.smk. The one report() with a computed category is report_entry's."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text()
        for source in _calls(text, "report_entry"):
            if source.startswith("report_entry(path,"):  # its definition
                continue
            call = ast.parse(source, mode="eval").body
            category = call.args[2] if len(call.args) > 2 else {k.arg: k.value for k in call.keywords}["category"]
            assert isinstance(category, ast.Constant), f"{path.name}: {source}"
            found.setdefault(category.value, set()).add(path.name)
        for source in _calls(text, "report"):
            call = ast.parse(source, mode="eval").body
            keywords = {k.arg: k.value for k in call.keywords}
            if "category" not in keywords:
                continue
            category = keywords["category"]
            if isinstance(category, ast.Name) and category.id == "category" and path.name == "common.smk":
                continue  # report_entry's own body
            assert isinstance(category, ast.Constant), f"{path.name}: {source}"
            found.setdefault(category.value, set()).add(path.name)
    return found


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def readme_categories() -> set[str]:
    section = " ".join(readme_section("HTML report").split())
    match = re.search(r"in the categories ([^,]+(?:, [^,]+)*) and ([^,]+), labelled", section)
    assert match, "the HTML report section names no categories ('in the categories A, B and C, labelled ...')"
    return {*match.group(1).split(", "), match.group(2)}


def workflow_rst_categories() -> set[str]:
    """The *italic* heads of the bullets under 'How to read each category' in report/workflow.rst."""
    text = (REPO / "report" / "workflow.rst").read_text()
    listing = text[text.index("**How to read each category**"):]
    heads = re.findall(r"^- (.+?): ", listing, re.M)
    assert heads, "report/workflow.rst lists no categories"
    names = set()
    for head in heads:
        parts = re.fullmatch(r"\*([^*]+)\*(?: and \*([^*]+)\*)?", head)
        assert parts, f"report/workflow.rst: bullet head {head!r} is not '*Category*' or '*A* and *B*'"
        names |= {p for p in parts.groups() if p}
    return names


def test_rules_declare_the_categories_the_report_test_expects():
    declared = declared_categories()
    assert set(declared) == {"Baseline", "Fine-tuning", "t-SNE", "Activations", "Metrics", "Explorer"}, declared
    assert declared["Metrics"] == {"metrics.smk"} and declared["Explorer"] == {"explorer.smk"}


def test_readme_names_every_report_category_and_no_other():
    assert readme_categories() == set(declared_categories())


def test_workflow_description_explains_every_report_category_and_no_other():
    assert workflow_rst_categories() == set(declared_categories())


# ---- the README's numbers for the default run -----------------------------------------------------------------

# (what the Quickstart says, as a pattern around the number) -> the reference line it must equal
HEADLINES = {
    r"L1\s+nearest-class-mean (\d\.\d+)": ("baseline", "l1", "accuracy"),
    r"scattering \+ logistic regression (\d\.\d+)": ("classifiers", "scattering/scattering/logreg", "accuracy"),
    r"fine-tuned ResNet-18\s+\(random init\) (\d\.\d+) test accuracy": ("cnn", "resnet18_finetuned", "test_accuracy"),
}


@pytest.mark.parametrize("pattern", list(HEADLINES), ids=[v[0] for v in HEADLINES.values()])
def test_readme_quickstart_numbers_are_the_default_study_reference(pattern):
    quickstart = readme_section("Quickstart")
    found = re.findall(pattern, quickstart)
    assert len(found) == 1, f"the Quickstart states {pattern!r} {len(found)} times"
    stated = found[0]
    decimals = len(stated.split(".")[1])
    expected = value(read_reference(DEFAULT_REFERENCE), *HEADLINES[pattern])
    assert stated == f"{round(expected, decimals):.{decimals}f}", (
        f"README Quickstart says {stated}, {DEFAULT_REFERENCE.name} has {expected!r} for {HEADLINES[pattern]}")


DEFAULT_TEST_IMAGES = 2000  # mnist5k's test split


def test_readme_intervals_are_those_of_the_default_study_reference():
    from embedscope.intervals import mcnemar_p_range, wilson_interval

    quickstart = readme_section("Quickstart")
    reference = read_reference(DEFAULT_REFERENCE)
    accuracies = {round(float(v), 4) for v in reference.loc[reference["metric"] == "accuracy", "value"]}
    stated = re.findall(r"(\d\.\d{4})\s+\[(\d\.\d{4}),\s+(\d\.\d{4})\]", quickstart)
    assert len(stated) >= 9, stated
    for number, low, high in stated:
        assert float(number) in accuracies, f"README states an accuracy {number} that the reference lacks"
        expected = wilson_interval(round(float(number) * DEFAULT_TEST_IMAGES), DEFAULT_TEST_IMAGES)
        assert (low, high) == tuple(f"{v:.4f}" for v in expected), (number, low, high)
    # the headline: scattering + logreg against the fine-tuned CNN, McNemar's p over every overlap of their errors
    right = [round(value(reference, *key) * DEFAULT_TEST_IMAGES) for key in (
        ("classifiers", "scattering/scattering/logreg", "accuracy"), ("cnn", "resnet18_finetuned", "test_accuracy"))]
    least, most = mcnemar_p_range(*right, DEFAULT_TEST_IMAGES)
    assert f"({right[0]:,} against {right[1]:,} right)" in quickstart
    assert f"p lies between {least:.0e} and {most:.2g} whatever" in quickstart.replace("\n  ", " ")
