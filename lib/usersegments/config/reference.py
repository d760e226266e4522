"""Documents generated from the model: ``conf/default.yaml`` (``defaults_yaml``) and
the README's configuration reference (``config_reference``)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from usersegments.config.models import Config


def defaults_yaml() -> str:
    """The text of ``conf/default.yaml``: every setting at its default, with a header."""
    header = (
        "# usersegments default configuration: generated from lib/usersegments/config/\n"
        "# by `usersegments config --defaults`; do not edit by hand (a test compares them).\n"
        "# Override in your own file passed with --config, or with --set key=value.\n"
    )
    return header + Config().to_yaml()


def config_reference() -> str:
    """Markdown: every setting with its default and meaning, one table per section,
    generated from the model (the README's "Configuration reference" is this text)."""
    out: list[str] = []
    for section, field in Config.model_fields.items():
        model = field.default_factory()
        out += [f"### `{section}`", "", _first_line(type(model).__doc__), ""]
        out += ["| key | default | meaning |", "|---|---|---|"]
        out += [
            f"| `{key}` | `{json.dumps(default)}` | {meaning} |"
            for key, default, meaning in _leaf_settings(model, section)
        ]
        out.append("")
    return "\n".join(out)


def _leaf_settings(model: BaseModel, prefix: str) -> list[tuple[str, Any, str]]:
    """(dotted key, default as JSON, meaning) of every non-section field, depth first."""
    rows: list[tuple[str, Any, str]] = []
    as_json = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            rows += _leaf_settings(value, f"{prefix}.{name}")
        else:
            meaning = (field.description or "").replace("|", "\\|")
            rows.append((f"{prefix}.{name}", as_json[name], meaning))
    return rows


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0].replace("``", "`") if text else ""
