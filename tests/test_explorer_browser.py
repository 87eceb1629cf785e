"""The explorer page in a real headless browser: Debian's Chromium driven by Playwright's Python API.

Never `playwright install`: the system browser is used (`apt-get install -y chromium`; .ci/run installs it).
"""

import shutil
from pathlib import Path

import pytest

from embedscope.explorer import build_explorer, layer_key
from embedscope.layers import EXTRACTOR_LAYERS
from embedscope.synthetic import write_synthetic_inputs

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
MAPS = [(e, layer) for e, layers in EXTRACTOR_LAYERS.items() for layer in layers]
N_POINTS = 200

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} missing: apt-get install -y chromium"),
]

POINTS_JS = """() => {
  const source = Bokeh.documents[0].get_model_by_name("points");
  return {length: source.length, x: Array.from(source.data.x), y: Array.from(source.data.y)};
}"""

# Screen position of one point: the plot's frame maps data to canvas pixels; add the canvas' page offset.
SCREEN_JS = """(i) => {
  const doc = Bokeh.documents[0];
  const plot = doc.get_model_by_name("tsne_plot");
  const source = doc.get_model_by_name("points");
  const view = Bokeh.index.find_one(plot);
  const box = view.canvas_view.el.getBoundingClientRect();
  return {x: box.left + view.frame.x_scale.compute(source.data.x[i]),
          y: box.top + view.frame.y_scale.compute(source.data.y[i])};
}"""


def launch(playwright, user_dir):
    return playwright.chromium.launch_persistent_context(
        str(user_dir),
        executable_path=CHROMIUM,
        args=ARGS,
        headless=True,
        viewport={"width": 1200, "height": 800},
    )


def open_page(context, path):
    """Open a file:// page; record console errors, page errors and every request URL."""
    page = context.new_page()
    record = {"errors": [], "requests": []}
    page.on("console", lambda m: m.type == "error" and record["errors"].append(m.text))
    page.on("pageerror", lambda e: record["errors"].append(str(e)))
    page.on("request", lambda r: record["requests"].append(r.url))
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_function("window.embedscope_ready_ms !== undefined", timeout=30_000)
    return page, record


@pytest.fixture(scope="module")
def explorer_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explorer_browser")
    inputs = write_synthetic_inputs(folder / "in", N_POINTS, MAPS, n_train=20)
    build_explorer(folder / "synthetic.html", **inputs)
    return folder / "synthetic.html", folder


def test_page_in_chromium(explorer_page):
    from playwright.sync_api import sync_playwright

    path, folder = explorer_page
    with sync_playwright() as playwright:
        context = launch(playwright, folder / "user-data")
        try:
            page, record = open_page(context, path)

            before = page.evaluate(POINTS_JS)
            assert before["length"] == N_POINTS
            assert page.evaluate("Bokeh.documents[0].is_idle")

            # switching the layer menu swaps the plotted coordinates (and the quality table)
            target = layer_key("resnet18", "layer3")
            page.locator("select").select_option(label="resnet18 / layer3")
            page.wait_for_function("(k) => Bokeh.documents[0].get_model_by_name('layer').value === k", arg=target)
            after = page.evaluate(POINTS_JS)
            assert after["length"] == N_POINTS
            assert after["x"] != before["x"] and after["y"] != before["y"]
            expected = page.evaluate(
                "(k) => Array.from(Bokeh.documents[0].get_model_by_name('points').data['x__' + k])", target
            )
            assert after["x"] == expected
            assert "resnet18 / layer3" in page.evaluate("Bokeh.documents[0].get_model_by_name('quality').text")

            # hovering a point shows a tooltip with its thumbnail
            page.wait_for_timeout(300)
            spot = page.evaluate(SCREEN_JS, 0)
            page.mouse.move(spot["x"] - 20, spot["y"] - 20)
            page.mouse.move(spot["x"], spot["y"], steps=4)
            tooltip_img = page.locator(".bk-Tooltip img").first
            tooltip_img.wait_for(state="visible", timeout=10_000)
            assert tooltip_img.get_attribute("src").startswith("data:image/png;base64,")

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "explorer.png"))

            assert record["errors"] == []
            foreign = [u for u in record["requests"] if not u.startswith(("file:", "data:", "about:"))]
            assert foreign == [], foreign
        finally:
            context.close()


def test_legend_click_hides_a_class(explorer_page):
    from playwright.sync_api import sync_playwright

    path, folder = explorer_page
    with sync_playwright() as playwright:
        context = launch(playwright, folder / "user-data-2")
        try:
            page, record = open_page(context, path)
            page.locator(".bk-Legend").first.wait_for(state="visible")
            visible = "() => Bokeh.documents[0].get_model_by_name('class_0').visible"
            assert page.evaluate(visible)
            # first legend item: locate it through the legend view's bbox
            spot = page.evaluate(
                """() => {
                  const plot = Bokeh.documents[0].get_model_by_name("tsne_plot");
                  const view = Bokeh.index.find_one(plot);
                  const legend = view.renderer_views.get(plot.right[0]);
                  const box = view.canvas_view.el.getBoundingClientRect();
                  const bbox = legend.bbox;
                  return {x: box.left + bbox.left + 20, y: box.top + bbox.top + legend.model.title_standoff + 30};
                }"""
            )
            page.mouse.click(spot["x"], spot["y"])
            page.wait_for_function(f"!({visible})()", timeout=5_000)
            assert record["errors"] == []
        finally:
            context.close()
