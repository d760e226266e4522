"""Building a run's config: the YAML file, ``--set`` overrides and ``--output``
merged over the defaults, then validated."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from usersegments.config.messages import describe_validation_error
from usersegments.config.models import Config
from usersegments.errors import ConfigError


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML with 1.2 booleans: only true/false, so `off` and `no` stay strings."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    output: str | None = None,
) -> Config:
    """Build the run's config: defaults <- YAML file <- ``--set`` overrides <- ``--output``.

    >>> cfg = load_config(overrides=["cluster.k=12"], output="/tmp/out")
    >>> cfg.cluster.k, cfg.store.root
    (12, '/tmp/out')

    Raises ``ConfigError`` naming the key, the value and its source on any problem.
    """
    # Start from the defaults as plain values so that mappings (spark.conf,
    # profile.event_weights) are merged key by key, not replaced whole.
    data: dict[str, Any] = Config().to_dict()
    sources: dict[str, str] = {}
    if path is not None:
        file_data = _read_yaml(Path(path))
        data = _deep_merge(data, file_data)
        for key in _dotted_keys(file_data):
            sources[key] = str(path)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        sources[key] = f"--set {item}"
    if output is not None:
        _set_dotted(data, "store.root", str(output))
        sources["store.root"] = "--output"
    return config_from_dict(data, sources)


def config_from_dict(data: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> Config:
    """Validate a (partial) config mapping over the defaults; errors become ``ConfigError``."""
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, data, sources or {})) from None


def with_settings(cfg: Config, settings: Mapping[str, Any], source: str) -> Config:
    """``cfg`` with each dotted key of ``settings`` set to its value, validated.

    A value replaces the setting whole (a mapping such as ``profile.event_weights`` is
    not merged key by key); ``source`` says where the values came from in errors.

    >>> with_settings(Config(), {"cluster.k": 12}, "example").cluster.k
    12
    """
    data = cfg.to_dict()
    for key, value in settings.items():
        _set_dotted(data, key, copy.deepcopy(value))
    return config_from_dict(data, dict.fromkeys(settings, source))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file")
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of sections, "
            f"got {type(loaded).__name__}"
        )
    return loaded


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {item!r} is not of the form dotted.key=value (e.g. --set cluster.k=12)"
        )
    try:
        value = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else ""
    except yaml.YAMLError:
        # Not YAML (an unbalanced bracket...): take the text as given; validation judges it.
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = _split_key(key)
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _split_key(key: str) -> list[str]:
    """Split a dotted key; below a free-form mapping (spark.conf...) the rest is one key."""
    parts = key.split(".")
    model: type[BaseModel] = Config
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return parts
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if getattr(annotation, "__origin__", None) is dict and i + 1 < len(parts):
            return [*parts[: i + 1], ".".join(parts[i + 1 :])]
        return parts
    return parts


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys.extend(_dotted_keys(value, dotted + "."))
    return keys
