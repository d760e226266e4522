"""The segment explorer in a real browser: Debian's headless Chromium driven by Playwright.

The planted run's store is copied and updated with a later window of events (two runs,
so the movement views have something to show; the update's console output is kept),
then the report is opened from ``file://``. Every test ends with no console error and no
request to anything but ``file://``. They check the overview's figures and news; the map
(exactly ``report.map_sample`` points, a hover naming the segment, its size and top
items, a legend click hiding one segment, no overlapping text); the hierarchy (hover
keywords, a click opens the segment's page); the list and segment pages (items each
once, size and reach over runs, drift, flows that link to other segments); the search by
keyword and by item text; the Sankey between the runs chosen in the drop-downs (labels
never overlapping) and sizes over runs; the page inlined for a notebook, drawn in a
frame. Screenshots of every page go to ``output/report-screenshots/``
(``USERSEGMENTS_SCREENSHOTS`` overrides) for CI to keep as artifacts.

Chromium comes from apt (``apt-get install -y chromium``), installed here when missing
and root; without it and without root the test skips, except under CI (``CI`` set).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PLANTED_OVERRIDES, REPO, set_args
from usersegments import cli

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAP_SAMPLE = 300  # below the planted 700 users, so the map draws a sample
PAGES = ("overview", "map", "hierarchy", "segments", "movement", "quality")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test)", pytrace=False)
    pytest.skip(reason)


def chromium() -> str:
    """Debian's Chromium, installed with apt when missing and running as root."""
    found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("Chromium not installed (as root: apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            _unavailable(f"{' '.join(command)} failed: {done.stderr[-1000:]}")
    return CHROMIUM


def screenshots() -> Path:
    folder = Path(
        os.environ.get("USERSEGMENTS_SCREENSHOTS", REPO / "output" / "report-screenshots")
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class ReportRoot:
    """The store whose report the browser opens, and what its last command printed."""

    root: Path
    sampled: bool  # whether the map must show a sample (fewer users than segmented)
    printed: str = ""  # the update's console output ("" for a store given from outside)


@pytest.fixture(scope="module")
def report_root(request, tmp_path_factory) -> ReportRoot:
    """A store with two runs or more and its report: ``USERSEGMENTS_REPORT_STORE`` when
    set (e.g. ``output/demo`` after ``make demo DEMO_ARGS=--dynamic``, to take the README's
    screenshots), else a copy of the planted store after an update with two later weeks of
    events (no truth table: its console output must show no truth figure)."""
    given = os.environ.get("USERSEGMENTS_REPORT_STORE")
    if given:
        return ReportRoot(Path(given).resolve(), sampled=False)
    from usersegments.testing.synthetic import GeneratorSettings, generate, write

    planted = request.getfixturevalue("planted")
    root = tmp_path_factory.mktemp("browser")
    store_root = root / "store"
    shutil.copytree(planted.store.root, store_root)
    settings = planted.data.settings
    later = generate(
        GeneratorSettings(
            users=settings.users, seed=22, days=14, end=settings.end + timedelta(days=14)
        )
    )
    paths = write(later, root / "window2")
    overrides = set_args(*PLANTED_OVERRIDES, f"report.map_sample={MAP_SAMPLE}")
    args = ["update", "--output", str(store_root), *overrides]
    args += ["--events", paths["events_parquet"], "--items", paths["items"]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # rich prints to the current sys.stdout
        assert cli.main(args) == 0
    return ReportRoot(store_root, sampled=True, printed=out.getvalue())


@dataclass
class Browser:
    """A Chromium page and what it logged: console errors and every URL requested."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Chromium page on a fresh profile, recording console errors and requests."""
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        out = Browser(context.new_page())
        out.page.set_default_timeout(120_000)  # a busy CI machine draws slowly
        out.page.on("console", lambda m: m.type == "error" and out.errors.append(m.text))
        out.page.on("pageerror", lambda e: out.errors.append(str(e)))
        out.page.on("request", lambda r: out.requests.append(r.url))
        yield out
        context.close()


# Text boxes of one figure that overlap (by more than a pixel each way): labels, legend
# entries, titles. Empty and invisible texts and hover labels are left out.
OVERLAPPING_TEXT = """(selector) => {
  const boxes = [];
  document.querySelectorAll(selector + " svg text").forEach((t) => {
    const text = (t.textContent || "").trim();
    if (!text || t.closest(".hoverlayer")) { return; }  // hover labels float over all
    for (let e = t; e && e.nodeType === 1; e = e.parentElement) {
      const style = getComputedStyle(e);
      if (style.display === "none" || style.visibility === "hidden" ||
          Number(style.opacity) === 0) { return; }
    }
    const r = t.getBoundingClientRect();
    if (r.width >= 1 && r.height >= 1) { boxes.push({text, r}); }
  });
  const found = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i].r, b = boxes[j].r;
      if (a.left < b.right - 1 && b.left < a.right - 1 &&
          a.top < b.bottom - 1 && b.top < a.bottom - 1) {
        found.push(boxes[i].text + " / " + boxes[j].text);
      }
    }
  }
  return found;
}"""


@dataclass
class Opened:
    """The report under test: its page, the store, the screenshot folder."""

    page: Any
    index: Path
    store: Any
    shots: Path
    browser: Browser

    def go(self, where: str = "") -> None:
        self.page.mouse.move(0, 0)  # no hover label left from an earlier test
        self.page.goto(f"{self.index.as_uri()}{where}")

    def overlapping(self, selector: str) -> list[str]:
        """Overlapping texts of the figure once it is drawn: a redraw moves the Sankey's
        nodes for a moment, so this waits (10 s at most) for a state without overlap."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(
                f"({OVERLAPPING_TEXT})({selector!r}).length === 0", timeout=10_000
            )
        except PlaywrightTimeout:
            pass
        return self.page.evaluate(OVERLAPPING_TEXT, selector)

    def hover_text(self, selector: str) -> str:
        hover = self.page.locator(f"{selector} .hoverlayer .hovertext")
        hover.first.wait_for()
        return " ".join(hover.all_text_contents())


@pytest.fixture(scope="module")
def opened(spark, report_root, browser) -> Opened:
    from usersegments.config import load_config
    from usersegments.store import TableStore

    store = TableStore.from_config(spark, load_config(output=str(report_root.root)))
    index = report_root.root / "report" / "index.html"
    return Opened(browser.page, index, store, screenshots(), browser)


@pytest.fixture(autouse=True)
def offline_and_quiet(request):
    """Every browser test ends with no console error and no request beyond file://."""
    if "opened" not in request.fixturenames:
        yield
        return
    browser = request.getfixturevalue("browser")
    browser.errors.clear()
    browser.requests.clear()
    yield
    assert browser.errors == []
    offline = [u for u in browser.requests if not u.startswith(("file://", "about:"))]
    assert offline == [], f"requests beyond file://: {offline[:5]}"


def test_overview_loads_offline_with_runs_changes_and_ingest(opened, report_root):
    opened.go()
    page = opened.page
    page.wait_for_selector("#page-overview .kpi")
    kpis = dict(
        zip(
            page.locator(".kpi .name").all_inner_texts(),
            page.locator(".kpi .value").all_inner_texts(),
            strict=True,
        )
    )
    assert int(kpis["runs so far"]) >= 2 and int(kpis["segments"].replace(",", "")) > 0
    assert "silhouette" in kpis
    # Two runs: the news since the previous run, not the first-run note.
    changes = page.locator("#page-overview ul.changes li, #page-overview p.muted")
    assert "first run on record" not in " ".join(changes.all_inner_texts())
    page.wait_for_selector("#page-overview [data-figure='ingest'] .main-svg")
    page.screenshot(path=str(opened.shots / "overview.png"), full_page=True)
    html = opened.index.read_text(encoding="utf-8")
    assert not re.search(r"\bnan\b", html, re.IGNORECASE)
    scripts = re.findall(r"<script src='([^']+)'", html)
    assert len(scripts) == 1 and scripts[0].startswith("assets/plotly-")


def test_update_console_shows_segments_and_the_report_and_no_truth(report_root):
    printed = report_root.printed
    if not printed:
        pytest.skip("a store given from outside: no command ran here")
    assert re.search(r"segments: (all \d+|the \d+ largest of \d+)", printed)
    assert f"report: {report_root.root / 'report' / 'index.html'}" in printed.replace("\n", "")
    # The update had no truth table: no ARI/NMI column, nothing unmeasured as "nan".
    assert not re.search(r"\b(nan|None|ARI|NMI)\b", printed)


def test_map_draws_the_sample_with_hover_legend_toggle_and_no_overlapping_text(opened, report_root):
    from pyspark.sql import functions as F

    page, store = opened.page, opened.store
    opened.go("#map")
    points = page.locator("#map-figure .scatterlayer path.point")
    expected = int(page.get_attribute("#map-figure", "data-points"))
    page.wait_for_function(
        f"document.querySelectorAll('#map-figure .scatterlayer path.point').length == {expected}"
    )
    recorded = (
        store.read("run_metrics")
        .filter((F.col("stage") == "report") & (F.col("metric") == "map_users"))
        .orderBy(F.desc("recorded_at"))
        .first()["value"]
    )
    users = store.read("user_segments").count()
    assert points.count() == expected == int(recorded) > 0
    if report_root.sampled:
        assert expected == MAP_SAMPLE < users  # exactly report.map_sample users
    else:
        assert expected <= users
    assert opened.overlapping("#map-figure") == []
    page.screenshot(path=str(opened.shots / "map.png"))

    # Hover: the point's segment label, id, size and top items.
    traces = page.locator("#map-figure .scatterlayer .trace")
    first = traces.first.locator("path.point").first
    box = first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    hover = opened.hover_text("#map-figure")
    segments = {r["segment_id"]: r for r in store.read("segments").collect()}
    named = [s for s in segments if s in hover]
    assert named, hover
    row = segments[named[0]]
    assert f"{row['size']:,} users" in hover
    if "not described" not in hover:  # a segment below the privacy floor is not described
        assert "•" in hover and row["label"].split(" · ")[0] in hover

    # A legend click hides that one segment's points (not its cluster's), a second shows them.
    own = traces.first.locator("path.point").count()
    page.locator("#map-figure .legend .traces .legendtoggle").first.click()
    page.wait_for_function(
        "document.querySelectorAll('#map-figure .scatterlayer path.point').length == "
        f"{expected - own}"
    )
    page.locator("#map-figure .legend .traces .legendtoggle").first.click()
    page.wait_for_function(
        f"document.querySelectorAll('#map-figure .scatterlayer path.point').length == {expected}"
    )


def test_hierarchy_hover_names_keywords_and_a_click_opens_the_segment(opened):
    page, store = opened.page, opened.store
    largest = store.read("segments").orderBy("size", ascending=False).first()
    seg = largest["segment_id"]
    opened.go("#hierarchy")
    page.wait_for_selector("#hierarchy-figure .treemaplayer")
    assert opened.overlapping("#hierarchy-figure") == []
    page.screenshot(path=str(opened.shots / "hierarchy.png"))
    box = page.locator(f"#hierarchy-figure text:has-text('{seg}')").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    hover = opened.hover_text("#hierarchy-figure")
    assert seg in hover and largest["keywords"][0] in hover
    page.mouse.click(x, y)
    page.wait_for_selector(f"[id='seg-{seg}']:not([hidden])")
    assert page.evaluate("location.hash") == f"#segment/{seg}"


def test_segment_list_opens_pages_with_items_once_history_and_flows(opened):
    page = opened.page
    opened.go("#segments")
    page.wait_for_selector("#segment-list tbody tr")
    page.screenshot(path=str(opened.shots / "segments.png"), full_page=True)
    other = page.locator("#segment-list tbody tr").nth(1).get_attribute("data-segment")
    page.click(f"#segment-list a[href='#segment/{other}']")
    section = page.locator(f"[id='seg-{other}']")
    section.wait_for(state="visible")
    size = f"[id='seg-{other}'] [data-seg-figure='size']"
    page.wait_for_selector(f"{size} .main-svg")
    page.wait_for_selector(f"[id='seg-{other}'] [data-seg-figure='drift'] .main-svg")
    page.screenshot(path=str(opened.shots / "segment.png"), full_page=True)
    # Size and reach over runs: one line each, a point per run.
    lines = page.locator(f"{size} .scatterlayer .trace")
    assert lines.count() == 2 and "reach" in page.locator(f"{size} .legend").text_content()
    items = section.locator("ol.items li").all_inner_texts()
    assert items
    for item in items:
        parts = [p.strip().casefold() for p in item.split(" | ")]
        assert len(parts) == len(set(parts)), f"item text repeated: {item!r}"
    # Some segment gained or lost users since the previous run: its flows link to the
    # segments they came from or went to.
    flows = page.locator("section.segment table a[href^='#segment/']")
    assert flows.count() > 0
    target = flows.first.get_attribute("href")
    opened.go(target)
    page.wait_for_selector(f"[id='seg-{target.split('/', 1)[1]}']:not([hidden])")


def test_search_filters_segments_by_keyword_and_item_text(opened):
    page = opened.page
    opened.go("#segments")
    rows = page.locator("#segment-list tbody tr")
    visible = page.locator("#segment-list tbody tr:not([hidden])")
    other = rows.nth(1).get_attribute("data-segment")
    section = page.locator(f"[id='seg-{other}']")
    shown: list[str] = []
    for keyword in section.locator(".kw").all_text_contents():
        page.fill("#search", keyword)
        shown = visible.evaluate_all("rows => rows.map(r => r.dataset.segment)")
        assert other in shown, keyword
        if len(shown) < rows.count():
            break
    assert 1 <= len(shown) < rows.count(), "no keyword of the segment narrows the list"
    item = section.locator("ol.items li").first.text_content().strip()
    page.fill("#search", item)
    shown = visible.evaluate_all("rows => rows.map(r => r.dataset.segment)")
    assert other in shown and len(shown) < rows.count(), item
    page.fill("#search", "zzqx-no-such-term")
    assert visible.count() == 0
    page.fill("#search", "")
    assert visible.count() == rows.count()


def test_movement_draws_a_sankey_between_runs_chosen_and_sizes_over_runs(opened):
    page = opened.page
    opened.go("#movement")
    page.wait_for_selector("#sankey-figure .sankey")
    options = page.locator("#run-from option")
    assert options.count() >= 2
    assert opened.overlapping("#sankey-figure") == []
    labels = [t for t in page.locator("#sankey-figure .node-label").all_text_contents() if t]
    assert labels, "no node of the Sankey is labelled"
    page.wait_for_selector("#page-movement [data-figure='sizes'] .main-svg")
    stacked = page.locator("#page-movement [data-figure='sizes'] .scatterlayer .trace")
    assert stacked.count() >= 2
    page.screenshot(path=str(opened.shots / "movement.png"), full_page=True)
    # Another pair of runs from the drop-downs redraws the Sankey between them.
    title = page.locator("#sankey-figure .gtitle")
    before = title.text_content()
    last = options.nth(options.count() - 1).get_attribute("value")
    page.select_option("#run-from", last)
    page.wait_for_function(
        "(before) => document.querySelector('#sankey-figure .gtitle').textContent !== before",
        arg=before,
    )
    chosen = options.nth(options.count() - 1).text_content()
    assert title.text_content().startswith(f"Users from {chosen} (left)")
    assert opened.overlapping("#sankey-figure") == []
    # Grouped by coarse cluster (the default with many segments): cluster nodes only.
    nodes = page.locator("#sankey-figure .sankey-node")
    segments_drawn = nodes.count()
    if not page.is_checked("#by-cluster"):
        page.check("#by-cluster")
    page.wait_for_function(
        "document.querySelector('#sankey-figure .node-label') && Array.from("
        "document.querySelectorAll('#sankey-figure .node-label')).every("
        "t => t.textContent === '' || /^(cluster \\d+|not segmented)$/.test(t.textContent))"
    )
    clusters = opened.store.read("user_segments").select("cluster_id").distinct().count()
    assert 0 < nodes.count() <= 2 * (clusters + 1) and nodes.count() <= segments_drawn
    assert opened.overlapping("#sankey-figure") == []
    opened.go("#quality")
    page.wait_for_selector("#page-quality table")
    page.screenshot(path=str(opened.shots / "quality.png"), full_page=True)


def test_the_page_inlined_for_a_notebook_draws_in_a_frame(spark, opened):
    """``display_report`` on Databricks: the page with plotly.js inlined, shown in a cell's
    frame (here an iframe's srcdoc), opened on the Sankey."""
    from usersegments.config import load_config
    from usersegments.report import display_report

    shown: list[str] = []
    cfg = load_config(output=opened.store.root)
    display_report({"displayHTML": shown.append}, opened.store, cfg, page="movement")
    page = opened.page
    page.goto("about:blank")
    page.evaluate(
        "(html) => { const f = document.createElement('iframe'); f.id = 'cell';"
        " f.style.width = '1200px'; f.style.height = '900px'; f.srcdoc = html;"
        " document.body.appendChild(f); }",
        shown[0],
    )
    frame = page.frame_locator("#cell")
    frame.locator("#sankey-figure .sankey").wait_for()
    frame.locator("nav a[data-nav='map']").click()
    frame.locator("#map-figure .scatterlayer path.point").first.wait_for()
