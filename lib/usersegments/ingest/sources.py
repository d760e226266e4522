"""Finding the inputs: globs and folders expanded into groups of files read together."""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from usersegments.errors import InputError
from usersegments.ingest.unreadable import unreadable_input
from usersegments.paths import is_local, local_path

log = logging.getLogger(__name__)

_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass(frozen=True)
class InputSource:
    """One group of input files read with one reader call."""

    paths: tuple[str, ...]
    format: str


def resolve_inputs(paths: Sequence[str], fmt: str = "auto") -> list[InputSource]:
    """Expand globs and folders into groups of files of one format and one header/schema.

    Raises ``InputError`` for a path that matches nothing or whose format is unknown.
    """
    if not paths:
        raise InputError("no input given: pass --events PATH (files, folders or globs)")
    sources: list[InputSource] = []
    for given in paths:
        if not is_local(given):
            sources.append(InputSource((given,), _format_of(given, fmt)))
            continue
        # An empty path would read as the current folder; it matches nothing instead.
        matches = sorted(glob.glob(str(local_path(given)))) if given else []
        if not matches:
            raise InputError(f"--events {given!r} matches no file or folder")
        for match in matches:
            sources.extend(_sources_for_local(match, fmt))
    return _group_by_layout(sources)


def _sources_for_local(path: str, fmt: str) -> list[InputSource]:
    """The non-empty event files at a local file or folder (a Delta folder is one source)."""
    p = Path(path)
    if p.is_dir():
        if (p / "_delta_log").is_dir() or fmt == "delta":
            return [InputSource((str(p),), "delta")]
        files = sorted(
            str(f)
            for f in p.rglob("*")
            if f.is_file() and not f.name.startswith(("_", ".")) and _known_file(f.name, fmt)
        )
        if not files:
            raise InputError(f"folder {path!r} holds no event files (.parquet, .csv, .jsonl)")
        return [InputSource((f,), _format_of(f, fmt)) for f in files if not _empty_file(f)]
    source = InputSource((str(p),), _format_of(str(p), fmt))
    return [] if _empty_file(str(p)) else [source]


def _empty_file(path: str) -> bool:
    """A zero-byte file holds no rows (a writer may have only created it): skipped."""
    if os.path.getsize(path) > 0:
        return False
    log.warning("ingest: %s is empty (0 bytes): it holds no rows and is skipped", path)
    return True


def _known_file(name: str, fmt: str) -> bool:
    """Whether a file in a folder is an event file: any file once the format is set."""
    return fmt != "auto" or _extension_format(name) is not None


def _extension_format(name: str) -> str | None:
    """The format a file name's extension says (``.gz`` looked through), or None."""
    base = name[:-3] if name.endswith(".gz") else name
    return _EXTENSIONS.get(Path(base).suffix.lower())


def _format_of(path: str, fmt: str) -> str:
    """``fmt`` when set, else the extension's format; ``InputError`` when it says none."""
    if fmt != "auto":
        return fmt
    found = _extension_format(path)
    if found is None:
        raise InputError(
            f"cannot tell the format of {path!r} from its extension; set input.format "
            "(--format) to parquet, csv, jsonl or delta"
        )
    return found


def _group_by_layout(sources: list[InputSource]) -> list[InputSource]:
    """Merge single files of one format whose header (CSV) or schema (Parquet) agree."""
    groups: dict[tuple[str, str], list[str]] = {}
    singles: list[InputSource] = []
    for source in sources:
        path = source.paths[0]
        if source.format == "delta" or not is_local(path):
            singles.append(source)
            continue
        key = (source.format, _layout_signature(path, source.format))
        groups.setdefault(key, []).append(path)
    return singles + [InputSource(tuple(paths), key[0]) for key, paths in groups.items()]


def _layout_signature(path: str, fmt: str) -> str:
    """What must agree for files to be read in one call: the Parquet schema, the CSV header."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return str(pq.read_schema(path))
        except (OSError, ValueError) as exc:
            raise unreadable_input(path, exc) from exc
    try:
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8", errors="replace") as handle:
                return "|".join(next(csv.reader(handle), []))
    except (OSError, ValueError, StopIteration) as exc:
        # A file whose header cannot be read is its own group; Spark reports it.
        return f"unreadable:{path}:{exc}"
    return "any"  # JSON lines: Spark merges inferred schemas itself
