"""Input files Spark cannot read (corrupt, half-written, columns it cannot take) as one
clear ``InputError`` naming the file and the fix, never a Java stack trace."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pyspark.errors import AnalysisException

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


def unusable_columns(paths: Sequence[str], exc: AnalysisException) -> InputError:
    """The error for input whose columns Spark refuses: names that differ only in case, a
    type Spark has no counterpart for, or any other refusal while reading the input."""
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
    condition = exc.getCondition() or ""
    said = next((line.strip() for line in str(exc).splitlines() if line.strip()), condition)[:300]
    if condition == "COLUMN_ALREADY_EXISTS":
        fix = (
            "two columns have names that differ only in case, which Spark takes for one name: "
            "rename or drop one of them"
        )
    elif condition.startswith("UNSUPPORTED") or "Illegal Parquet type" in said:
        fix = "a column has a type Spark cannot read: write it as text, a number or a timestamp"
    else:
        fix = "check the file and the input.columns mapping"
    return InputError(
        f"input {where} cannot be read ({said}): {fix}, then rerun; nothing was written"
    )


@contextmanager
def reading(paths: Sequence[str]) -> Iterator[None]:
    """Turn Spark's failure to read one of ``paths`` into an ``InputError`` naming it."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        text = str(exc)
        if not any(marker in text for marker in _UNREADABLE_MARKERS):
            if isinstance(exc, AnalysisException):
                raise unusable_columns(paths, exc) from exc
            raise
        # Spark names the file as a file: URI; a local path is a substring of it.
        named = [p for p in paths if p in text]
        where = named[0] if named else ", ".join(paths)
        raise unreadable_input(where, exc) from exc
