"""Pseudonymous user ids: keyed HMAC at ingest, the key never from YAML."""

from __future__ import annotations

import pytest

from tests.conftest import make_config
from tests.helpers import new_run
from usersegments.config import PrivacyConfig
from usersegments.errors import ConfigError
from usersegments.ingest import run_ingest
from usersegments.privacy import KEY_VARIABLE, pseudonym, pseudonym_key
from usersegments.store import TableStore
from usersegments.testing.synthetic import GeneratorSettings, generate, write

KEY = "k" * 32


def test_key_comes_from_the_environment_and_must_be_long_enough(monkeypatch):
    on = PrivacyConfig(pseudonymize_user_ids=True)
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match=KEY_VARIABLE):
        pseudonym_key(on)
    monkeypatch.setenv(KEY_VARIABLE, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        pseudonym_key(on)
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    assert pseudonym_key(on) == KEY.encode()
    with pytest.raises(ConfigError, match="Databricks secrets are not available"):
        monkeypatch.delenv(KEY_VARIABLE)
        pseudonym_key(PrivacyConfig(pseudonymize_user_ids=True, secret_scope="usersegments"))


def test_pseudonyms_are_stable_per_key_and_differ_between_keys():
    a, b = KEY.encode(), ("z" * 32).encode()
    assert pseudonym("u000001", a) == pseudonym("u000001", a)
    assert pseudonym("u000001", a) != pseudonym("u000002", a)
    assert pseudonym("u000001", a) != pseudonym("u000001", b)
    assert len(pseudonym("u000001", a)) == 64 and "u000001" not in pseudonym("u000001", a)


def test_ingest_without_a_key_fails_before_writing(spark, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    paths = write(generate(GeneratorSettings(users=20, seed=1)), tmp_path / "in")
    cfg = make_config(tmp_path / "store", "privacy.pseudonymize_user_ids=true")
    store = TableStore.from_config(spark, cfg)
    run = new_run(spark, store, cfg, "ingest")
    with pytest.raises(ConfigError, match="no key was given"):
        run_ingest(spark, store, cfg, run, events=[paths["events_csv"]], items=paths["items"])
    assert not store.exists("events") and not store.exists("events_rejected")
