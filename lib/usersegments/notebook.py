"""Helpers that let the notebooks in ``notebooks/`` run unchanged on Databricks and
locally.

The notebooks are Databricks source files (``# Databricks notebook source``,
cells split by ``# COMMAND ----------``, markdown and ``%pip`` cells as
``# MAGIC`` lines). On Databricks, parameters come from ``dbutils.widgets`` and
results are drawn with ``display``/``displayHTML``; locally the same cells read
parameters from ``USERSEGMENTS_<NAME>`` environment variables (else the
defaults) and print. ``run_notebook`` executes a notebook's Python cells in
order, the way tests and ``python -m usersegments.notebook PATH`` run them.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usersegments.config import Config, load_config
from usersegments.errors import ConfigError

HEADER = "# Databricks notebook source"
CELL_SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"


def widgets(namespace: MutableMapping[str, Any], **defaults: str) -> dict[str, str]:
    """The notebook's parameters: text widgets on Databricks (created with
    ``defaults``), else ``USERSEGMENTS_<NAME>`` environment variables, else ``defaults``."""
    dbutils = namespace.get("dbutils")
    if dbutils is not None:
        for name, default in defaults.items():
            dbutils.widgets.text(name, str(default))
        return {name: dbutils.widgets.get(name) for name in defaults}
    return {
        name: os.environ.get(f"USERSEGMENTS_{name.upper()}", str(default))
        for name, default in defaults.items()
    }


def notebook_config(config: str, root: str, *overrides: str) -> Config:
    """The run config for a notebook: ``config`` (a YAML path, tried as given, then
    from the repository root, since Databricks runs a notebook from its own folder)
    with ``root`` as the store root."""
    candidates = [Path(config), Path.cwd().parent / config, Path(__file__).parents[2] / config]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(
            f"notebook config {config!r} not found (looked in {', '.join(map(str, candidates))});"
            " set the 'config' widget to a YAML file such as conf/databricks.yaml"
        )
    return load_config(str(found), list(overrides), root)


def displayer(namespace: MutableMapping[str, Any], rows: int = 20) -> Callable[..., None]:
    """A ``show(obj)`` for the notebook: Databricks' ``display`` (and ``displayHTML``
    for PNG bytes) when present, else a plain print of the first ``rows`` rows."""
    display = namespace.get("display")
    display_html = namespace.get("displayHTML")

    def show(obj: Any, title: str | None = None) -> None:
        if title:
            print(f"\n{title}")
        if isinstance(obj, bytes):
            if display_html is not None:
                encoded = base64.b64encode(obj).decode()
                display_html(f'<img src="data:image/png;base64,{encoded}"/>')
            else:
                print(f"[figure: {len(obj)} bytes of PNG; drawn by display on Databricks]")
            return
        if display is not None:
            display(obj)
        elif hasattr(obj, "toPandas") and hasattr(obj, "limit"):
            print(obj.limit(rows).toPandas().to_string(max_colwidth=60))
        elif hasattr(obj, "head") and hasattr(obj, "to_string"):
            print(obj.head(rows).to_string(max_colwidth=60))
        else:
            print(obj)

    return show


@dataclass
class NotebookStart:
    """What every notebook's first cell sets up: its parameters, the run config and a
    ``show`` for tables, frames and figures."""

    params: dict[str, str]
    cfg: Config
    show: Callable[..., None]


def start(namespace: MutableMapping[str, Any], **extra_widgets: str) -> NotebookStart:
    """The common first cell: widgets ``config`` (default ``conf/databricks.yaml`` on
    Databricks, else ``conf/local.yaml``) and ``root`` (default the config's
    ``store.root`` on Databricks, else ``output/notebooks``) plus ``extra_widgets``."""
    on_databricks = "dbutils" in namespace
    params = widgets(
        namespace,
        config="conf/databricks.yaml" if on_databricks else "conf/local.yaml",
        root="" if on_databricks else "output/notebooks",
        **extra_widgets,
    )
    cfg = notebook_config(params["config"], params["root"] or None)
    return NotebookStart(params=params, cfg=cfg, show=displayer(namespace))


def notebook_cells(source: str) -> list[str]:
    """The Python cells of a Databricks source notebook (markdown and ``%`` magic
    cells, written as ``# MAGIC`` lines, are left out)."""
    lines = source.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ConfigError(f"not a Databricks source notebook: the first line must be {HEADER!r}")
    cells, current = [], []
    for line in lines[1:]:
        if line.strip() == CELL_SEPARATOR:
            cells.append("\n".join(current))
            current = []
        else:
            current.append(line)
    cells.append("\n".join(current))
    return [
        cell
        for cell in cells
        if cell.strip() and not all(x.startswith(MAGIC) or not x.strip() for x in cell.splitlines())
    ]


def run_notebook(
    path: str | os.PathLike[str], namespace: MutableMapping[str, Any] | None = None
) -> MutableMapping[str, Any]:
    """Execute the Python cells of the notebook at ``path`` in order, in ``namespace``
    (pass ``{"spark": session}`` to reuse a session, as Databricks provides one);
    returns the namespace with every variable the notebook defined."""
    path = Path(path)
    ns: MutableMapping[str, Any] = namespace if namespace is not None else {}
    ns.setdefault("__name__", "__main__")
    for number, cell in enumerate(notebook_cells(path.read_text(encoding="utf-8")), start=1):
        code = compile(cell, f"{path}#cell{number}", "exec")
        exec(code, ns)  # noqa: S102 - running the notebook is the point
    return ns


def main(argv: list[str] | None = None) -> int:
    """``python -m usersegments.notebook NOTEBOOK...``: run notebooks locally, in order."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m usersegments.notebook notebooks/00_quickstart.py ...")
        return 2
    for path in paths:
        print(f"== {path}")
        run_notebook(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
