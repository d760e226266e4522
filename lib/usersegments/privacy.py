"""Pseudonymous user ids: a keyed HMAC-SHA256 applied at ingest, before anything is stored.

With ``privacy.pseudonymize_user_ids`` on, every user id that reaches a table is
``HMAC-SHA256(key, id)`` in hex. The key is a secret: it comes from the
``USERSEGMENTS_PSEUDONYM_KEY`` environment variable or, on Databricks, from the
secret scope ``privacy.secret_scope`` (key name ``privacy.secret_key``); never
from YAML. The same key gives the same pseudonym on every run, so updates find
their users again; a new key starts a new population.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.config import PrivacyConfig
from usersegments.errors import ConfigError
from usersegments.schema import EVENTS, TEXTS, conform
from usersegments.store import TableStore

KEY_VARIABLE = "USERSEGMENTS_PSEUDONYM_KEY"
MIN_KEY_CHARS = 16
REDACTED_RECORD = "[redacted: privacy.pseudonymize_user_ids is on; sha256 {digest}]"


def pseudonym_key(cfg: PrivacyConfig, spark: SparkSession | None = None) -> bytes:
    """The HMAC key: ``$USERSEGMENTS_PSEUDONYM_KEY``, else the Databricks secret
    ``cfg.secret_scope``/``cfg.secret_key``; a clear error when there is none."""
    key = os.environ.get(KEY_VARIABLE, "")
    if not key and cfg.secret_scope:
        key = _databricks_secret(spark, cfg.secret_scope, cfg.secret_key)
    if not key:
        raise ConfigError(
            "privacy.pseudonymize_user_ids is on but no key was given: export "
            f"{KEY_VARIABLE}=<a secret of at least {MIN_KEY_CHARS} characters> (or, on "
            "Databricks, set privacy.secret_scope to a scope holding privacy.secret_key); "
            "the key never goes in a YAML file"
        )
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(
            f"the pseudonym key has {len(key)} characters; use at least {MIN_KEY_CHARS} "
            f"(e.g. the output of `openssl rand -hex 32`) in {KEY_VARIABLE}"
        )
    return key.encode("utf-8")


def _databricks_secret(spark: SparkSession | None, scope: str, name: str) -> str:
    """Secret ``name`` of Databricks scope ``scope``; ConfigError naming the fix when it
    cannot be read (outside Databricks, or no such secret)."""
    try:
        from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"privacy.secret_scope is {scope!r} but Databricks secrets are not available "
            f"here; outside Databricks export {KEY_VARIABLE} instead"
        ) from None
    try:
        return DBUtils(spark).secrets.get(scope=scope, key=name)
    except Exception as exc:  # the Databricks client raises its own types
        raise ConfigError(
            f"cannot read secret {name!r} from scope {scope!r} ({exc}); create it with "
            f"`databricks secrets put-secret {scope} {name}`"
        ) from None


def pseudonym(user_id: str, key: bytes) -> str:
    """HMAC-SHA256 of ``user_id`` (as given) under ``key``, in hex."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymize_ids(ids: pd.Series, key: bytes) -> pd.Series:
    """``pseudonym`` of each non-null id of ``ids`` (pandas; used for truth files)."""
    return ids.map(lambda v: None if v is None or pd.isna(v) else pseudonym(str(v), key))


def pseudonym_column(ids: Column, key: bytes) -> Column:
    """``pseudonym`` of a string column, computed in a pandas UDF (the key travels in the
    function, not in the query plan); null and blank ids stay as they are."""

    @F.pandas_udf("string")
    def _pseudonyms(values: pd.Series) -> pd.Series:
        return pseudonymize_ids(values, key)

    trimmed = F.trim(ids)
    return F.when(trimmed != "", _pseudonyms(trimmed)).otherwise(ids)


def pseudonymize_raw(raw: DataFrame, key: bytes) -> DataFrame:
    """Raw ingest rows with ``user_id`` pseudonymized and unparsed ``raw_record`` lines
    (where the id cannot be found) replaced by their SHA-256, so no raw id is stored."""
    redacted = F.format_string(
        REDACTED_RECORD.replace("{digest}", "%s"), F.sha2(F.col("raw_record"), 256)
    )
    return raw.withColumn("user_id", pseudonym_column(F.col("user_id"), key)).withColumn(
        "raw_record", F.when(F.col("raw_record").isNotNull(), redacted)
    )


# ---------------------------------------------------------------------------
# Texts out of the behaviour log (privacy.drop_text_after_embedding)


def move_texts_out_of_events(store: TableStore) -> int:
    """Keep each text of ``events`` once in ``texts`` (text_hash, text) and set it to null
    in ``events``, which then links users to hashes only; returns the events changed.

    Two idempotent merges, texts first: a crash between them leaves every text
    findable, and the next embed finishes the move.
    """
    with_text = store.read("events").filter(F.col("text").isNotNull())
    if with_text.isEmpty():
        return 0
    texts = with_text.select("text_hash", "text").dropDuplicates(["text_hash"])
    store.merge(conform(texts, TEXTS), "texts", on=["text_hash"], when_matched="ignore")
    hashed_only = conform(with_text.withColumn("text", F.lit(None).cast("string")), EVENTS)
    moved = store.merge(hashed_only, "events", on=["event_id"], when_not_matched="ignore")
    return moved.updated


def with_texts(store: TableStore, events: DataFrame) -> DataFrame:
    """``events`` (any frame with ``text_hash`` and ``text``) with every text in place: from
    ``texts`` where events keep only the hash. Narrow the frame first: this joins it."""
    if not store.exists("texts"):
        return events
    kept = store.read("texts").select("text_hash", F.col("text").alias("_kept_text"))
    return (
        events.join(kept, "text_hash", "left")
        .withColumn("text", F.coalesce(F.col("text"), F.col("_kept_text")))
        .select(*events.columns)
    )
