"""Writing ``<root>/report/``: the bundled plotly.js under ``assets/``, the page swapped in
one step, then the files no page names any more removed; or showing it inline in a notebook.

Files go through ``pyarrow.fs``, so the root may be a local folder or an object-store URI.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping
from datetime import datetime, timezone
from typing import Any

from usersegments.config import Config
from usersegments.paths import is_local, local_path
from usersegments.report.gather import ReportData, gather
from usersegments.report.render import Rendered, render_html
from usersegments.store import TableStore

REPORT_DIR = "report"
PAGE = "index.html"
ASSETS = "assets"


def write_report(store: TableStore, data: ReportData, seed: int = 0) -> tuple[str, Rendered]:
    """Write the explorer under ``<root>/report/``; returns the page's path and what it shows.

    A crash half-way never leaves a page pointing at a missing or partial script: the
    script is named by its content and written (completely, then renamed) before the
    page, the page replaces the old one in one step (a rename on local disks, a single
    object PUT on object stores), and only then are files no page names removed.
    """
    script, script_name = plotly_bundle()
    rendered = render_html(data, datetime.now(timezone.utc), f"{ASSETS}/{script_name}", seed)
    filesystem, root = _filesystem(store.root)
    folder = f"{root.rstrip('/')}/{REPORT_DIR}"
    local = is_local(store.root)
    filesystem.create_dir(f"{folder}/{ASSETS}", recursive=True)
    asset = f"{folder}/{ASSETS}/{script_name}"
    if filesystem.get_file_info(asset).size != len(script):  # written once per folder
        _put(filesystem, asset, script, rename=local)
    _put(filesystem, f"{folder}/{PAGE}", rendered.html.encode("utf-8"), rename=local)
    _remove_unused(filesystem, folder, {PAGE, f"{ASSETS}/{script_name}"})
    if local:
        return f"{folder}/{PAGE}", rendered
    return f"{store.root.rstrip('/')}/{REPORT_DIR}/{PAGE}", rendered


def display_report(
    namespace: MutableMapping[str, Any],
    store: TableStore,
    cfg: Config,
    page: str = "overview",
    data: ReportData | None = None,
) -> str | None:
    """Show the explorer inline in a notebook cell, opened on ``page``: on Databricks
    (``displayHTML`` in ``namespace``) the whole page with plotly.js inlined, since the
    cell's frame cannot reach the report's ``assets/``; elsewhere one line naming the
    written report, gathering nothing. Returns the HTML shown (None when not shown)."""
    show = namespace.get("displayHTML")
    if show is None:
        url = f"{store.root.rstrip('/')}/{REPORT_DIR}/{PAGE}#{page}"
        print(f"[segment explorer, {page}: drawn inline by displayHTML on Databricks; see {url}]")
        return None
    if data is None:
        data = gather(store.spark, store, cfg)
    now = datetime.now(timezone.utc)
    html = render_html(data, now, None, seed=cfg.cluster.seed, start_page=page).html
    show(html)
    return html


def plotly_bundle() -> tuple[bytes, str]:
    """plotly.js from the installed plotly package and its file name,
    ``plotly-<version>-<first 12 hex digits of its SHA-256>.min.js``."""
    import plotly
    from plotly.offline import get_plotlyjs

    script = get_plotlyjs().encode("utf-8")
    digest = hashlib.sha256(script).hexdigest()[:12]
    return script, f"plotly-{plotly.__version__}-{digest}.min.js"


def _filesystem(root: str) -> tuple[Any, str]:
    """The pyarrow filesystem holding ``root`` and the path of ``root`` on it."""
    from pyarrow import fs

    if is_local(root):
        return fs.LocalFileSystem(), os.path.abspath(local_path(root))
    return fs.FileSystem.from_uri(root)


def _put(filesystem: Any, path: str, content: bytes, rename: bool) -> None:
    """Put ``content`` at ``path`` so readers see the old file or the new one, whole.

    Local disks write a temporary file beside it and rename it over; an object store's
    single PUT is already all or nothing.
    """
    folder, name = path.rsplit("/", 1)
    target = f"{folder}/.{name}.{os.getpid()}.tmp" if rename else path
    with filesystem.open_output_stream(target) as out:
        out.write(content)
    if rename:
        filesystem.move(target, path)


def _remove_unused(filesystem: Any, folder: str, used: set[str]) -> None:
    """Delete what the current page does not use: older scripts, the PNG images of
    earlier reports, temporary files of a crashed write."""
    from pyarrow import fs

    for info in filesystem.get_file_info(fs.FileSelector(folder, recursive=True)):
        relative = info.path[len(folder) + 1 :]
        if info.type == fs.FileType.File and relative not in used:
            filesystem.delete_file(info.path)
