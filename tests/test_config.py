"""Config: defaults, YAML merge, --set overrides and the error messages users see."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO
from usersegments.config import Config, defaults_yaml, load_config
from usersegments.errors import ConfigError


def test_defaults_file_is_generated_from_the_model():
    assert (REPO / "conf" / "default.yaml").read_text() == defaults_yaml()


def test_yaml_then_set_then_output_precedence(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("cluster:\n  k: 8\n  seed: 1\nstore:\n  root: /from/yaml\n")
    cfg = load_config(conf, ["cluster.k=12"], output="/from/flag")
    assert cfg.cluster.k == 12  # --set beats the file
    assert cfg.cluster.seed == 1  # the file beats the default
    assert cfg.store.root == "/from/flag"  # --output beats both
    assert cfg.cluster.max_iter == Config().cluster.max_iter


def test_set_parses_yaml_scalars_and_lists():
    cfg = load_config(
        overrides=[
            "cluster.k_candidates=[4, 6]",
            "embed.normalize=false",
            "profile.half_life_days=7.5",
            "cluster.k=auto",
        ]
    )
    assert cfg.cluster.k_candidates == [4, 6]
    assert cfg.embed.normalize is False
    assert cfg.profile.half_life_days == 7.5
    assert cfg.cluster.k == "auto"


def test_set_into_mappings_keeps_dotted_keys_and_defaults():
    cfg = load_config(
        overrides=[
            "spark.conf.spark.sql.adaptive.enabled=true",
            "profile.event_weights.add_to_cart=2.5",
        ]
    )
    assert cfg.spark.conf == {"spark.sql.adaptive.enabled": "true"}
    assert cfg.profile.event_weights["add_to_cart"] == 2.5
    assert cfg.profile.event_weights["purchase"] == 3.0  # defaults kept


def test_unknown_key_names_key_source_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["cluster.kk=3"])
    msg = str(err.value)
    assert "unknown config key 'cluster.kk'" in msg
    assert "--set cluster.kk=3" in msg
    assert "k_candidates" in msg


def test_unknown_key_in_file_names_the_file(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text("embed:\n  modle: x\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'embed.modle' \[from .*bad.yaml\]"):
        load_config(conf)


def test_wrong_type_names_key_value_and_rule():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["cluster.k=abc"])
    msg = str(err.value)
    assert "config key 'cluster.k' (got 'abc')" in msg
    assert "integer" in msg and "'auto'" in msg


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("embed.batch_size=0", "greater than or equal to 1"),
        ("cluster.k=1", "k must be >= 2"),
        ("input.timezone=Mars/Base", "unknown time zone 'Mars/Base'"),
        ("embed.device=tpu", "'auto', 'cpu' or 'cuda'"),
        ("profile.event_weights.view=-1", "event weights must be >= 0"),
        ("cluster.sub.distance_threshold=0.5", "set exactly one of"),
    ],
)
def test_out_of_range_values(override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(overrides=[override])


@pytest.mark.parametrize("bad", ["cluster.k", "=3", "cluster..k=3", ""])
def test_malformed_set(bad):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(overrides=[bad])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("cluster: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(listy)


@pytest.mark.parametrize("name", ["default.yaml", "local.yaml", "cluster.yaml", "databricks.yaml"])
def test_shipped_configs_load(name):
    path = REPO / "conf" / name
    assert path.is_file(), f"conf/{name} is missing"
    assert isinstance(load_config(path), Config)


def test_set_value_that_is_not_yaml_is_taken_as_text():
    with pytest.raises(ConfigError, match=r"config key 'cluster.k' \(got '\[4'\)"):
        load_config(overrides=["cluster.k=[4"])


def test_package_keeps_the_names_importers_use():
    import usersegments.config as config

    used = {
        "DEFAULT_MODEL",
        "Config",
        "EmbedConfig",
        "InputConfig",
        "LabelConfig",
        "PrivacyConfig",
        "ProfileConfig",
        "StoreConfig",
        "SubClusterConfig",
        "config_reference",
        "defaults_yaml",
        "load_config",
    }
    assert used <= set(config.__all__)
    assert all(hasattr(config, name) for name in config.__all__)


def test_fingerprint_tracks_settings():
    assert Config().fingerprint() == Config().fingerprint()
    assert load_config(overrides=["cluster.k=9"]).fingerprint() != Config().fingerprint()
