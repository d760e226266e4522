"""Writing ``<root>/report/``: content-named images, the page swapped in one step, then
the images no page names any more removed.

Files go through ``pyarrow.fs``, so the root may be a local folder or an object-store URI.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from typing import Any

from usersegments.paths import is_local, local_path
from usersegments.report.gather import ReportData
from usersegments.report.plots import report_plots
from usersegments.report.render import render_html
from usersegments.store import TableStore

REPORT_DIR = "report"
PAGE = "index.html"


def write_report(store: TableStore, data: ReportData) -> str:
    """Render the plots and the page under ``<root>/report/``; returns the page's path.

    A crash half-way never leaves a page pointing at the wrong plots: images are named
    by their content and written first, the page replaces the old one in one step
    (a rename on local disks, a single object PUT on object stores), and only then
    are the images no page names any more removed.
    """
    plots = {name: png for name, png in report_plots(data).items() if png}
    images = {name: image_name(name, png) for name, png in plots.items()}
    page = render_html(data, images, datetime.now(timezone.utc))
    filesystem, root = _filesystem(store.root)
    folder = f"{root.rstrip('/')}/{REPORT_DIR}"
    filesystem.create_dir(folder, recursive=True)
    for name, png in plots.items():
        with filesystem.open_output_stream(f"{folder}/{images[name]}") as out:
            out.write(png)
    _replace_page(filesystem, folder, page.encode("utf-8"), rename=is_local(store.root))
    _remove_unused_images(filesystem, folder, set(images.values()))
    if is_local(store.root):
        return f"{folder}/{PAGE}"
    return f"{store.root.rstrip('/')}/{REPORT_DIR}/{PAGE}"


def image_name(plot: str, png: bytes) -> str:
    """``<plot>-<first 12 hex digits of the PNG's SHA-256>.png``: a new figure never
    overwrites one an older page still shows."""
    return f"{plot}-{hashlib.sha256(png).hexdigest()[:12]}.png"


def _filesystem(root: str) -> tuple[Any, str]:
    """The pyarrow filesystem holding ``root`` and the path of ``root`` on it."""
    from pyarrow import fs

    if is_local(root):
        return fs.LocalFileSystem(), os.path.abspath(local_path(root))
    return fs.FileSystem.from_uri(root)


def _replace_page(filesystem: Any, folder: str, page: bytes, rename: bool) -> None:
    """Put ``page`` at ``<folder>/index.html`` so readers see the old page or the new one.

    Local disks write a temporary file and rename it over the page; an object store's
    single PUT is already all or nothing.
    """
    index = f"{folder}/{PAGE}"
    target = f"{folder}/.{PAGE}.{os.getpid()}.tmp" if rename else index
    with filesystem.open_output_stream(target) as out:
        out.write(page)
    if rename:
        filesystem.move(target, index)


def _remove_unused_images(filesystem: Any, folder: str, used: set[str]) -> None:
    """Delete the PNGs in ``folder`` that the current page does not show."""
    from pyarrow import fs

    for info in filesystem.get_file_info(fs.FileSelector(folder)):
        if info.base_name.endswith(".png") and info.base_name not in used:
            filesystem.delete_file(info.path)
