"""The base of every config section and the field checks several sections share."""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def stringify_values(value: Any) -> Any:
    """YAML reads `true` and `4` as bool and int; Spark and object stores want strings."""
    if not isinstance(value, Mapping):
        return value
    return {
        k: (str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v)
        for k, v in value.items()
    }


def check_timezone(value: str) -> str:
    """``value`` unchanged when it is an IANA time zone name; else a ValueError saying so."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'UTC'") from exc
    return value
