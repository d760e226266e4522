"""Typed, validated configuration: one place for every setting and its default.

The defaults are the field defaults of the section models; ``conf/default.yaml`` is
generated from them (``usersegments config --defaults``) and a test keeps the two
equal. A run's config is the defaults, merged with the YAML file given by
``--config``, then the repeated ``--set dotted.key=value`` overrides, then
``--output`` (which sets ``store.root``). Unknown keys, wrong types and
out-of-range values fail before any work starts, naming the key, the value
given, what is allowed and where the value came from.

Modules:

- ``section``: the base of every section (unknown keys rejected) and shared field checks;
- ``models``: the spark, store, input and embed sections and ``Config``, the whole;
- ``segmenting``: the profile, cluster, interests and label sections;
- ``stages``: the recommend, evaluate, update, report, privacy and tune sections;
- ``finetune``: the finetune section (``usersegments finetune``: pairs, training, promotion);
- ``stream``: the stream section (``usersegments stream``: source, trigger, checkpoint);
- ``loader``: ``load_config``, ``config_from_dict`` (YAML, ``--set``, merging) and
  ``with_settings`` (dotted settings replaced in a config);
- ``messages``: validation errors as one-line ``ConfigError`` messages;
- ``reference``: ``defaults_yaml`` and ``config_reference``, generated from the model.
"""

from usersegments.config.finetune import FinetuneConfig
from usersegments.config.loader import config_from_dict, load_config, with_settings
from usersegments.config.models import (
    DEFAULT_MODEL,
    ColumnMapping,
    Config,
    EmbedConfig,
    InputConfig,
    ItemColumnMapping,
    SparkConfig,
    StoreConfig,
)
from usersegments.config.reference import config_reference, defaults_yaml
from usersegments.config.segmenting import (
    ClusterConfig,
    InterestsConfig,
    LabelConfig,
    ProfileConfig,
    SubClusterConfig,
)
from usersegments.config.stages import (
    EvaluateConfig,
    PrivacyConfig,
    RecommendConfig,
    ReportConfig,
    TuneConfig,
    UpdateConfig,
)
from usersegments.config.stream import StreamConfig

__all__ = [
    "DEFAULT_MODEL",
    "ClusterConfig",
    "ColumnMapping",
    "Config",
    "EmbedConfig",
    "EvaluateConfig",
    "FinetuneConfig",
    "InputConfig",
    "InterestsConfig",
    "ItemColumnMapping",
    "LabelConfig",
    "PrivacyConfig",
    "ProfileConfig",
    "RecommendConfig",
    "ReportConfig",
    "SparkConfig",
    "StreamConfig",
    "StoreConfig",
    "SubClusterConfig",
    "TuneConfig",
    "UpdateConfig",
    "config_from_dict",
    "config_reference",
    "defaults_yaml",
    "load_config",
    "with_settings",
]
