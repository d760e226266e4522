"""Fine-tuned encoder versions under ``<store.root>/models/encoder``.

Each training writes ``v{n}`` (a Hugging Face model folder: weights, tokenizer) and,
last, its ``finetune.json`` (training settings, the events version it learned from,
steps, loss curve, before/after scores): a folder without it is an unfinished
training, which a rerun of the same version resumes. ``PROMOTED`` names the version
that ``embed.model: finetuned:latest`` means; ``finetuned:vN`` names one directly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from usersegments.errors import SetupError
from usersegments.paths import is_local, local_path

FINETUNED_PREFIX = "finetuned:"
METADATA_FILE = "finetune.json"
PROMOTED_FILE = "PROMOTED"
_VERSION = re.compile(r"^v([1-9][0-9]*)$")


def is_finetuned(model: str) -> bool:
    """Whether ``embed.model`` names a fine-tuned version (``finetuned:latest`` or ``:vN``)."""
    return model.startswith(FINETUNED_PREFIX)


def models_folder(models_root: str | None) -> Path:
    """The local folder of the versions; a ``SetupError`` when the store is not local."""
    if not models_root:
        raise SetupError("embed.model names a fine-tuned encoder but no store root is known")
    if not is_local(models_root):
        raise SetupError(
            f"fine-tuned encoders are kept under the store root, and {models_root} is not a "
            "local path: copy the version folder to a path every executor can read and set "
            "embed.model to that folder"
        )
    return local_path(models_root)


def finished_versions(folder: Path) -> list[int]:
    """Version numbers whose training finished (their ``finetune.json`` exists), ascending."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _VERSION.match(child.name)
        if match and (child / METADATA_FILE).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def next_version(folder: Path) -> int:
    """The number a new training takes: one past every version folder, finished or not,
    except an unfinished last one, which the new training resumes."""
    numbers = (
        [int(m.group(1)) for c in folder.iterdir() if (m := _VERSION.match(c.name))]
        if folder.is_dir()
        else []
    )
    if not numbers:
        return 1
    last = max(numbers)
    return last if not (folder / f"v{last}" / METADATA_FILE).is_file() else last + 1


def promoted_version(folder: Path) -> int | None:
    """The version ``finetuned:latest`` means, or None before any promotion."""
    marker = folder / PROMOTED_FILE
    if not marker.is_file():
        return None
    match = _VERSION.match(marker.read_text(encoding="utf-8").strip())
    return int(match.group(1)) if match else None


def promote(folder: Path, version: int) -> None:
    """Make ``version`` what ``finetuned:latest`` means (an atomic rename of the marker)."""
    if version not in finished_versions(folder):
        raise SetupError(f"encoder version v{version} under {folder} did not finish training")
    staging = folder / f".{PROMOTED_FILE}.{os.getpid()}"
    staging.write_text(f"v{version}\n", encoding="utf-8")
    staging.replace(folder / PROMOTED_FILE)


def resolve_finetuned(model: str, models_root: str | None) -> Path:
    """The folder ``embed.model`` (``finetuned:latest`` or ``finetuned:vN``) names."""
    folder = models_folder(models_root)
    tag = model[len(FINETUNED_PREFIX) :]
    finished = finished_versions(folder)
    if tag == "latest":
        version = promoted_version(folder)
        if version is None:
            why = (
                f"versions {', '.join(f'v{v}' for v in finished)} exist but none was promoted: "
                "rerun `usersegments finetune --promote` or name one as finetuned:vN"
                if finished
                else "none exists yet: run `usersegments finetune --promote` first"
            )
            raise SetupError(f"embed.model is {model!r} but under {folder} {why}")
    else:
        match = _VERSION.match(tag)
        if not match:
            raise SetupError(
                f"embed.model {model!r}: write finetuned:latest or finetuned:vN (e.g. finetuned:v1)"
            )
        version = int(match.group(1))
    if version not in finished:
        raise SetupError(
            f"embed.model is {model!r} but v{version} under {folder} has not finished training "
            f"(finished: {', '.join(f'v{v}' for v in finished) or 'none'})"
        )
    return folder / f"v{version}"


def read_metadata(version_folder: Path) -> dict[str, Any]:
    """A version's ``finetune.json``."""
    return json.loads((version_folder / METADATA_FILE).read_text(encoding="utf-8"))


def write_metadata(version_folder: Path, metadata: dict[str, Any]) -> None:
    """Write ``finetune.json`` last: its presence marks the version finished."""
    staging = version_folder / f".{METADATA_FILE}.tmp"
    staging.write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
    staging.replace(version_folder / METADATA_FILE)
