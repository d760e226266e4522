"""The words of the synthetic generator, read once from ``vocabulary.json`` (package data).

Each interest area has nouns and, per sub-style, the words that tell that style apart;
no distinctive word is shared between areas. Generic words, product forms and the
review and query templates are shared by all areas.
"""

from __future__ import annotations

import json
from importlib import resources


def _load_vocabulary() -> dict:
    """The generator's words, read once from the package data."""
    source = resources.files("usersegments.testing").joinpath("vocabulary.json")
    return json.loads(source.read_text(encoding="utf-8"))


_VOCABULARY = _load_vocabulary()

# Distinctive vocabulary: area -> (area nouns, {sub_style: sub-style words}).
# Sub-style words are what a reader uses to tell two styles apart.
AREAS: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    area: (entry["nouns"], entry["styles"]) for area, entry in _VOCABULARY["areas"].items()
}
GENERIC_WORDS: list[str] = _VOCABULARY["generic_words"]
PRODUCT_FORMS: list[str] = _VOCABULARY["product_forms"]
REVIEW_TEMPLATES: list[str] = _VOCABULARY["review_templates"]
QUERY_TEMPLATES: list[str] = _VOCABULARY["query_templates"]


def area_names() -> list[str]:
    """The planted interest areas, in a fixed order."""
    return list(AREAS)


def distinctive_words(area: str) -> set[str]:
    """Single words that identify ``area``: its nouns' and sub-styles' words."""
    nouns, styles = AREAS[area]
    phrases = list(nouns) + [w for words in styles.values() for w in words] + list(styles)
    generic = set(GENERIC_WORDS) | set(PRODUCT_FORMS)
    return {w for p in phrases for w in p.split() if w not in generic and len(w) > 2}
