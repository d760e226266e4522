"""Local paths versus object-store URIs (``s3://``, ``abfss://``, ``dbfs:/``...)."""

from __future__ import annotations

from pathlib import Path

_FILE_SCHEME = "file://"


def is_local(path: str) -> bool:
    """True for a plain path or a ``file://`` URI; False for any other scheme."""
    return "://" not in path or path.startswith(_FILE_SCHEME)


def local_path(path: str) -> Path:
    """The filesystem path of a local path or ``file://`` URI (``~`` expanded).

    Raises ``ValueError`` for an object-store URI: callers check ``is_local`` first.
    """
    if not is_local(path):
        raise ValueError(f"{path!r} is not a local path")
    plain = path[len(_FILE_SCHEME) :] if path.startswith(_FILE_SCHEME) else path
    return Path(plain).expanduser()
