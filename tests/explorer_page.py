"""Reading an explorer page back: its Bokeh document and the per-layer embedding-quality tables inside it."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

from embedscope.explorer import COUNT_COLUMNS, QUALITY_LABELS


def doc_json(text: str):
    """The Bokeh document JSON embedded in the page."""
    match = re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', text, re.S)
    assert match, "no Bokeh document JSON in the page"
    return json.loads(match.group(1))


class _QualityTable(HTMLParser):
    """The title (<b>extractor / layer</b>) and the (label, value) cells of one quality table."""

    def __init__(self):
        super().__init__()
        self.title, self.rows, self._tag, self._cells = "", [], None, []

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "tr":
            self._cells = []

    def handle_endtag(self, tag):
        if tag == "tr":
            self.rows.append(tuple(self._cells))
        self._tag = None

    def handle_data(self, data):
        if self._tag == "b":
            self.title += data
        elif self._tag == "td":
            self._cells.append(data.strip())


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def quality_tables(page_text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(extractor, layer) -> {embedding-quality column: the text the page shows}, for every table in the page.

    The first layer's table is in the side panel's Div and again, like every layer's, in the layer menu's
    callback; every copy must read the same."""
    labels = {label: column for column, label in QUALITY_LABELS.items()}
    tables: dict[tuple[str, str], dict[str, str]] = {}
    for escaped in _strings(doc_json(page_text)):
        text = html.unescape(escaped)  # the page HTML-escapes the document JSON inside its <script>
        if not (text.startswith("<b>") and "<table" in text):
            continue
        parser = _QualityTable()
        parser.feed(text)
        extractor, layer = parser.title.split(" / ")
        assert all(len(row) == 2 for row in parser.rows), parser.rows
        # the trustworthiness label names its k ("t-SNE trustworthiness (k=10)"), as the run's config set it
        table = {labels[re.sub(r" \(k=\d+\)$", "", label)]: shown for label, shown in parser.rows}
        assert tables.setdefault((extractor, layer), table) == table, (extractor, layer)
    return tables


def expected_quality_table(row) -> dict[str, str]:
    """What the page must show for one embedding-quality row: the counts whole, the rest to three decimals, an
    accuracy followed by its interval columns in brackets."""
    def shown(column):
        if column in COUNT_COLUMNS:
            return str(int(row[column]))
        text = f"{round(float(row[column]), 3):.3f}"
        if f"{column}_low" in row.index:
            text += f" [{round(float(row[column + '_low']), 3):.3f}, {round(float(row[column + '_high']), 3):.3f}]"
        return text

    return {column: shown(column) for column in QUALITY_LABELS}
