"""Pydantic validation errors turned into the one-line ``ConfigError`` message users
see: each bad key with the value given, the rule it broke and where it came from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from usersegments.config.models import Config

_MISSING = object()


def describe_validation_error(
    exc: ValidationError, data: Mapping[str, Any], sources: Mapping[str, str]
) -> str:
    """One line for ``exc``: unknown keys with the allowed ones, then every bad value.

    ``data`` is what was validated (to quote the value given) and ``sources`` maps
    dotted keys to where they were set (a file, ``--set ...``, ``--output``).
    """
    unknown: list[str] = []
    # One entry per key: a union type (e.g. int | 'auto') reports each branch separately.
    by_key: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
        loc = [part for part in loc if not _is_union_tag(part)]
        key = ".".join(loc) or "<root>"
        source = _source_of(key, sources)
        if err["type"] == "extra_forbidden":
            unknown.append(_unknown_key(key, loc, source))
            continue
        if key not in by_key:
            given = _lookup(data, loc)
            given_text = "" if given is _MISSING else f" (got {given!r})"
            by_key[key] = [f"config key '{key}'{given_text}{source}: "]
        by_key[key].append(err["msg"])
    lines = unknown + [head + " or ".join(dict.fromkeys(msgs)) for head, *msgs in by_key.values()]
    return "invalid configuration: " + "; ".join(lines)


def _unknown_key(key: str, loc: list[str], source: str) -> str:
    parent = ".".join(loc[:-1])
    allowed = ", ".join(_allowed_keys(loc[:-1]))
    where = f"section '{parent}'" if parent else "the top level"
    return f"unknown config key '{key}'{source}; allowed keys in {where}: {allowed}"


def _is_union_tag(part: str) -> bool:
    """Pydantic names the branch of a union in the error location; it is no config key."""
    return part in {"int", "str", "float", "bool", "none"} or part.startswith(
        ("literal[", "list[", "dict[")
    )


def _lookup(data: Mapping[str, Any], loc: list[str]) -> Any:
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _source_of(key: str, sources: Mapping[str, str]) -> str:
    """Where ``key`` was set: its own source, a parent's, else the first child's."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        source = sources.get(".".join(parts[:end]))
        if source:
            return f" [from {source}]"
    below = [src for k, src in sources.items() if k.startswith(key + ".")]
    return f" [from {below[0]}]" if below else ""


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return list(model.model_fields)
