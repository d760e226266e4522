"""The segment explorer in a real browser: Debian's headless Chromium driven by Playwright.

The planted run's store is copied and updated with a later window of events (two runs,
so the movement views have something to show), then the report is opened from
``file://``: it must load with no console error and no request to anything but
``file://``, draw the sampled number of map points, open a segment's page from the
hierarchy and from the list, filter segments by search, and draw the Sankey.
Screenshots of every page go to ``output/report-screenshots/`` (``USERSEGMENTS_SCREENSHOTS``
overrides) for CI to keep as artifacts.

Chromium comes from apt (``apt-get install -y chromium``), installed here when missing
and root; without it and without root the test skips, except under CI (``CI`` set).
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def report_root(request, tmp_path_factory) -> tuple[Path, bool]:
    """A store with two runs or more and its report: ``USERSEGMENTS_REPORT_STORE`` when
    set (e.g. ``output/demo`` after ``make demo DEMO_ARGS=--dynamic``, to take the README's
    screenshots), else a copy of the planted store after an update with two later weeks of
    events. Returns the root and whether the map must be a sample."""
    given = os.environ.get("USERSEGMENTS_REPORT_STORE")
    if given:
        return Path(given).resolve(), False
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
    assert cli.main(args) == 0
    return store_root, True


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


def test_the_report_works_offline_in_a_browser(spark, report_root, browser):
    from pyspark.sql import functions as F

    from usersegments.config import load_config
    from usersegments.store import TableStore

    root, sampled = report_root
    store = TableStore.from_config(spark, load_config(output=str(root)))
    page, shots = browser.page, screenshots()
    index = root / "report" / "index.html"
    page.goto(index.as_uri())
    page.wait_for_selector("#page-overview .kpi")
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # The map draws every sampled user, and as many as the report stage recorded.
    page.goto(f"{index.as_uri()}#map")
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
    assert expected < users if sampled else expected <= users
    page.screenshot(path=str(shots / "map.png"))

    # Clicking the largest segment in the hierarchy opens its page.
    largest = store.read("segments").orderBy("size", ascending=False).first()["segment_id"]
    page.goto(f"{index.as_uri()}#hierarchy")
    page.wait_for_selector("#hierarchy-figure .treemaplayer")
    page.screenshot(path=str(shots / "hierarchy.png"))
    box = page.locator(f"#hierarchy-figure text:has-text('{largest}')").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector(f"[id='seg-{largest}']:not([hidden])")
    assert page.evaluate("location.hash") == f"#segment/{largest}"

    # The list opens a segment's page too; its figures and flows are drawn.
    page.goto(f"{index.as_uri()}#segments")
    page.screenshot(path=str(shots / "segments.png"), full_page=True)
    other = page.locator("#segment-list tbody tr").nth(1).get_attribute("data-segment")
    page.click(f"#segment-list a[href='#segment/{other}']")
    section = page.locator(f"[id='seg-{other}']")
    section.wait_for(state="visible")
    page.wait_for_selector(f"[id='seg-{other}'] [data-seg-figure='size'] .main-svg")
    page.screenshot(path=str(shots / "segment.png"), full_page=True)
    for item in section.locator("ol.items li").all_inner_texts():
        parts = [p.strip().casefold() for p in item.split(" | ")]
        assert len(parts) == len(set(parts)), f"item text repeated: {item!r}"

    # Search filters the list by keyword (one the other segments do not all share).
    rows = page.locator("#segment-list tbody tr")
    visible = page.locator("#segment-list tbody tr:not([hidden])")
    shown = []
    for keyword in section.locator(".kw").all_inner_texts():
        page.fill("#search", keyword)
        shown = visible.evaluate_all("rows => rows.map(r => r.dataset.segment)")
        assert other in shown, keyword
        if len(shown) < rows.count():
            break
    assert 1 <= len(shown) < rows.count(), "no keyword of the segment narrows the list"
    page.fill("#search", "zzqx-no-such-term")
    assert visible.count() == 0
    page.fill("#search", "")

    # Two runs: the Sankey between them, and sizes over runs.
    page.goto(f"{index.as_uri()}#movement")
    page.wait_for_selector("#sankey-figure .sankey")
    assert page.locator("#run-from option").count() >= 2
    page.screenshot(path=str(shots / "movement.png"), full_page=True)
    page.goto(f"{index.as_uri()}#quality")
    page.wait_for_selector("#page-quality table")
    page.screenshot(path=str(shots / "quality.png"), full_page=True)

    assert browser.errors == []
    offline = [u for u in browser.requests if not u.startswith("file://")]
    assert offline == [], f"requests beyond file://: {offline[:5]}"
    assert not re.search(r"\bnan\b", index.read_text(encoding="utf-8"), re.IGNORECASE)
