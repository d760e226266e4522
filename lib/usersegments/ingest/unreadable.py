"""Input files that cannot be decoded (corrupt or half-written) as one clear ``InputError``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from usersegments.errors import InputError

# What Spark says when a file cannot be decoded (Parquet footer or pages, compression).
_UNREADABLE_MARKERS = ("FAILED_READ_FILE", "is not a Parquet file", "CANNOT_READ_FILE")


def unreadable_input(path: str, exc: BaseException) -> InputError:
    """The error for an input file that cannot be decoded: corrupt or half-written."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if any(m in line for m in _UNREADABLE_MARKERS)]
    reason = (telling or lines or [type(exc).__name__])[0][:300]
    return InputError(
        f"input file {path} cannot be read ({reason}): it is corrupt or half-written. Remove or "
        "replace it, or wait until its writer has finished, then rerun; nothing was written"
    )


@contextmanager
def reading(paths: Sequence[str]) -> Iterator[None]:
    """Turn Spark's failure to decode one of ``paths`` into an ``InputError`` naming it."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        text = str(exc)
        if not any(marker in text for marker in _UNREADABLE_MARKERS):
            raise
        # Spark names the file as a file: URI; a local path is a substring of it.
        named = [p for p in paths if p in text]
        where = named[0] if named else ", ".join(paths)
        raise unreadable_input(where, exc) from exc
