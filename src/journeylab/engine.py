"""Journey engine: clean events -> compact journey tables, written once in Ibis.

The same expressions run on DuckDB (embedded, file-backed, default) and on Spark
(``backend.name: spark``). Every table is a public function
``engine.<name>(events: ibis.Table, **options) -> ibis.Table``; :func:`build_all` writes them
to ``data/journeys/<name>.parquet`` (timestamps in microseconds, UTC).
Time unit for every duration: days (float64; 1 s = 1/86400 day).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import ibis
import ibis.expr.datatypes as dt
from ibis import _

from . import config
from .errors import ConfigError, InputError, JourneylabError
from .schema import CANONICAL_COLUMNS, CONVERSION, NULL, PATH_SEP, START, STATE_SEP, safe_name

TABLES = ("journeys", "paths", "transitions", "coalitions", "heuristics", "survival",
          "exposure", "customer_features", "funnel")
DEFAULT_STAGES = ("awareness", "interest", "evaluation", "purchase", "loyalty")
HEURISTIC_MODELS = ("first", "last", "last_non_direct", "linear", "linear_unique",
                    "position_based", "time_decay")
SECONDS_PER_DAY = 86400.0
_REQUIRED = ("customer_id", "ts", "touchpoint", "kind", "event_id")


# --------------------------------------------------------------------------- backends
def connect(params: dict) -> ibis.BaseBackend:
    """Ibis backend from ``params['backend']``: DuckDB (file-backed at ``duckdb_path``, with
    ``memory_limit``, ``threads``, temp directory next to the database file) or Spark
    (``name: spark``: SparkSession on ``spark_master`` + ``spark_conf``, session time zone UTC)."""
    b = dict(params.get("backend") or {})
    name = str(b.get("name", "duckdb")).lower()
    if name == "duckdb":
        db = b.get("duckdb_path") or ":memory:"
        kwargs: dict[str, Any] = {}
        if db != ":memory:":
            db_path = config.path(params, db)
            db_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = config.path(params, b.get("temp_directory") or str(Path(db).with_suffix(".tmp")))
            tmp.mkdir(parents=True, exist_ok=True)
            kwargs["temp_directory"] = str(tmp)
            db = str(db_path)
        if b.get("memory_limit"):
            kwargs["memory_limit"] = str(b["memory_limit"])
        if b.get("threads"):
            kwargs["threads"] = int(b["threads"])
        con = ibis.duckdb.connect(db, **kwargs)
        con.raw_sql("SET TimeZone = 'UTC'")
        con.raw_sql("SET preserve_insertion_order = false")
        return con
    if name == "spark":
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise ConfigError("params.yaml backend.name is 'spark' but pyspark is not installed. "
                              "Install the extra (pip install 'journeylab[spark]') and Java 17, "
                              "or set backend.name: duckdb.") from None
        builder = SparkSession.builder.master(str(b.get("spark_master") or "local[*]")).appName("journeylab")
        conf = {"spark.sql.session.timeZone": "UTC",
                "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
                "spark.sql.shuffle.partitions": "8",
                "spark.ui.enabled": "false"}
        conf.update({str(k): str(v) for k, v in (b.get("spark_conf") or {}).items()})
        for k, v in conf.items():
            builder = builder.config(k, v)
        session = builder.getOrCreate()
        session.conf.set("spark.sql.session.timeZone", "UTC")
        return ibis.pyspark.connect(session)
    raise ConfigError(f"params.yaml backend.name is '{name}'; use 'duckdb' (default) or 'spark'.")


def backend_name(con) -> str:
    """'duckdb' or 'pyspark'."""
    return getattr(con, "name", type(con).__module__)


def load_events(con, path: str | os.PathLike) -> ibis.Table:
    """Clean events (docs/DESIGN.md 'Canonical clean events') as an Ibis table.

    Raises InputError when the file is missing or lacks a canonical column."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: clean events not found. Run `journeylab ingest` first "
                         f"(or set engine.input in params.yaml to the clean Parquet file).")
    t = con.read_parquet(str(p))
    missing = [c for c in _REQUIRED if c not in t.columns]
    if missing:
        raise InputError(f"{p}: column(s) {', '.join(missing)} missing; the engine expects the canonical "
                         f"clean-event schema ({', '.join(CANONICAL_COLUMNS)}). Produce the file with "
                         f"`journeylab ingest`.")
    return t
