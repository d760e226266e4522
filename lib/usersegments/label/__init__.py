"""Label: describe each segment with keywords, representative items and a label.

- **Keywords** by class-based TF-IDF (c-TF-IDF): every segment is one class, its
  document is the texts of its members' events. Web and e-mail addresses are
  removed, texts are split into lowercase runs of letters and digits, and terms
  are the 1..``label.ngram_max``-grams of that contiguous sequence that begin and
  end with a content token (not a stop word, number or single character), so
  every term occurs as written. A term counts once per event, weighted by the
  profile's event weight divided by the member's total, so every member weighs
  the same. ``score(t, c) = tf(t, c) / |c| * log(1 + A / f(t))``, ``|c|`` the
  class's total term weight, ``A`` the mean of those totals, ``f(t)`` the term's
  weight over all classes. A keyword must be used by ``label.min_members``
  members, be more frequent in its segment than in the others, and not be spread
  over more than ``1 + label.max_segment_share * (K - 1)`` of the K segments
  (boilerplate: reply prefixes, signatures), nor begin or end with such a
  word. Each segment's best
  ``label.keyword_candidates`` terms reach the driver, where near-duplicates
  merge, words compared up to a plural "s"/"es" ("stars five" and "five"
  after "five stars", "guns" after "gun"; an n-gram replaces its
  part when it scores ``label.phrase_share`` of it) down to ``label.n_keywords``.
- **Top items**: among the segment's ``label.item_candidates`` most touched items,
  the ``label.n_top_items`` whose text vector is nearest (cosine) to the centroid.
- **Label**: the first ``label.label_keywords`` keywords that do not repeat one
  another, joined by ``label.separator`` ("trail running · ultramarathon"); or,
  when ``label.generator`` names a local text-generation model, its phrasing of
  the keywords and items.

Modules: ``terms`` (tokens and n-grams of event texts), ``keywords`` (c-TF-IDF and
the distinctive, non-repeating keywords), ``items`` (representative items),
``naming`` (labels from keywords, or a local generator), ``stage`` (``run_label``).
"""

from usersegments.label.items import item_hashes, item_texts, representative_items
from usersegments.label.keywords import class_tfidf, distinct_keywords, segment_keywords
from usersegments.label.naming import LabelGenerator, label_from_keywords, label_segments
from usersegments.label.stage import member_events, run_label
from usersegments.label.terms import event_terms, stop_words

__all__ = [
    "LabelGenerator",
    "class_tfidf",
    "distinct_keywords",
    "event_terms",
    "item_hashes",
    "item_texts",
    "label_from_keywords",
    "label_segments",
    "member_events",
    "representative_items",
    "run_label",
    "segment_keywords",
    "stop_words",
]
