"""Segment labels: joined keywords, or a local text-generation model's phrasing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from usersegments.config import LabelConfig
from usersegments.errors import ConfigError


def label_from_keywords(keywords: Sequence[str], parts: int, separator: str) -> str:
    """A short label: the first ``parts`` keywords that do not repeat one another.

    A phrase that contains an already chosen word replaces it ("trail" then
    "trail running" gives "trail running"); a keyword whose words are all chosen
    already is skipped.
    """
    chosen: list[str] = []
    for keyword in keywords:
        words = set(keyword.split())
        overlapping = [c for c in chosen if set(c.split()) & words]
        if not overlapping:
            if len(chosen) < parts:
                chosen.append(keyword)
            continue
        for c in overlapping:
            if set(c.split()) < words:  # a longer phrase of a chosen keyword
                chosen[chosen.index(c)] = keyword
                break
        chosen = list(dict.fromkeys(chosen))
    return separator.join(chosen)


class LabelGenerator:
    """Phrases labels with a local transformers text-generation model (``label.generator``)."""

    def __init__(self, path: str, max_new_tokens: int) -> None:
        if not Path(path).is_dir():
            raise ConfigError(
                f"label.generator {path!r} is not a folder; set it to a local transformers "
                "text-generation model folder or to null"
            )
        from transformers import pipeline

        self.max_new_tokens = max_new_tokens
        self._pipe = pipeline("text-generation", model=path, device="cpu")

    @staticmethod
    def prompt(keywords: Sequence[str], items: Sequence[str]) -> str:
        """The instruction given to the model for one segment."""
        return (
            "Name this audience of shoppers in a few words.\n"
            f"Keywords: {', '.join(keywords)}\n"
            f"Items: {'; '.join(items)}\n"
            "Name:"
        )

    def phrase(self, keywords: Sequence[str], items: Sequence[str]) -> str:
        """The model's label for one segment: its first non-empty line, or '' when none."""
        prompt = self.prompt(keywords, items)
        out = self._pipe(
            prompt,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            return_full_text=False,
        )
        text = out[0]["generated_text"] if out else ""
        lines = [line.strip(" \t\"'") for line in text.splitlines()]
        return next((line for line in lines if line), "")[:120]


def label_segments(
    segments: pd.DataFrame,
    keywords: dict[str, list[str]],
    top_items: dict[str, list[str]],
    item_text: dict[str, str],
    cfg: LabelConfig,
) -> tuple[pd.DataFrame, int]:
    """``segments`` with keywords, top_items and label filled; and how many labels a
    generator phrased (0 without ``label.generator``)."""
    out = segments.copy()
    out["keywords"] = [keywords.get(s, []) for s in out["segment_id"]]
    out["top_items"] = [top_items.get(s, []) for s in out["segment_id"]]
    out["label"] = [
        label_from_keywords(k, cfg.label_keywords, cfg.separator) or s
        for s, k in zip(out["segment_id"], out["keywords"], strict=True)
    ]
    generated = 0
    if cfg.generator:
        generator = LabelGenerator(cfg.generator, cfg.generator_max_new_tokens)
        labels = []
        for label, kws, items in zip(out["label"], out["keywords"], out["top_items"], strict=True):
            phrased = generator.phrase(kws, [item_text.get(i, i) for i in items])
            generated += bool(phrased)
            labels.append(phrased or label)
        out["label"] = labels
    return out, generated
