"""Test data that ships with the wheel, for tests, demos and benchmarks.

Installed with the package (not only in the repository) so that notebooks,
benchmarks and ``usersegments generate`` can make realistic data anywhere.

Modules:

- ``synthetic``: the generator of behaviour logs with planted ground truth
  (personas, drift, skewed item popularity, focused secondary interests);
- ``bad_rows``: the planted bad rows (kinds real logs go wrong in) and duplicates;
- ``files``: ``write`` and ``output_paths``, the generated data as the files ingest reads;
- ``vocabulary``: the words of its interest areas, sub-styles, items, reviews and
  queries, read once from ``vocabulary.json`` (package data).
"""
