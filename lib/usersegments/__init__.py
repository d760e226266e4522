"""usersegments: dynamic interest segments from user behaviour logs.

Spark computes, a BERT-family transformer reads the texts, clustering runs in
two levels, and every result is a Delta table. See README.md and
ARCHITECTURE.md; the command line is ``usersegments --help``.
"""

from usersegments.config import Config, load_config
from usersegments.errors import (
    ConfigError,
    InputError,
    SchemaMismatchError,
    StoreError,
    UserSegmentsError,
)

__all__ = [
    "Config",
    "ConfigError",
    "InputError",
    "SchemaMismatchError",
    "StoreError",
    "UserSegmentsError",
    "load_config",
]
