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
        # every output is sorted explicitly before it is written, so DuckDB need not keep row order
        # (cheaper parallel scans, aggregations and writes); no progress bar in batch runs
        kwargs["preserve_insertion_order"] = bool(b.get("preserve_insertion_order", False))
        con = ibis.duckdb.connect(db, **kwargs)
        con.raw_sql("SET TimeZone = 'UTC'")
        try:   # inside a Jupyter kernel DuckDB refuses to touch the setting without ipywidgets
            con.raw_sql("SET enable_progress_bar = false")
        except Exception:  # noqa: BLE001 - cosmetic setting only
            pass
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


# --------------------------------------------------------------------------- options
def options_from_params(params: dict) -> dict:
    """Keyword options of the table functions from params.yaml (`engine`, `window`, `churn`)."""
    e = params.get("engine") or {}
    w = params.get("window") or {}
    c = params.get("churn") or {}
    cutoffs = [*(c.get("train_cutoffs") or []), c.get("eval_cutoff"), c.get("score_cutoff")]
    return {
        "lookback_days": float(e.get("lookback_days", 90)),
        "survival_lookback_days": (None if e.get("survival_lookback_days") is None
                                   else float(e["survival_lookback_days"])),
        "path_phases": list(e.get("path_phases") or ["pre_purchase", "purchase"]),
        "collapse_repeats": bool(e.get("collapse_repeats", False)),
        "max_path_length": e.get("max_path_length"),
        "markov_max_order": int(e.get("markov_max_order", 3)),
        "direct_touchpoints": list(e.get("direct_touchpoints") or ["direct"]),
        "position_based_weights": list(e.get("position_based_weights") or [0.4, 0.2, 0.4]),
        "time_decay_half_life_days": float(e.get("time_decay_half_life_days", 7)),
        "study_start": str(e.get("study_start") or w.get("start")),
        "lost_inactivity_days": float(e.get("lost_inactivity_days", 60)),
        "feature_windows_days": [int(x) for x in (e.get("feature_windows_days") or [7, 30, 90])],
        "stages": list(e.get("stages") or DEFAULT_STAGES),
        "window_end": str(w.get("end")),
        "cutoffs": sorted({str(x) for x in cutoffs if x}),
        "horizon_days": float(c.get("horizon_days", 90)),
        "inactivity_days": float(c.get("inactivity_days", 90)),
    }


def _ts(value: str):
    """UTC timestamp literal from 'YYYY-MM-DD[ HH:MM:SS]'."""
    return ibis.timestamp(str(value), timezone="UTC")


def _epoch(value: str) -> float:
    import pandas as pd
    return pd.Timestamp(str(value), tz="UTC").value / 1e9


def _secs(ts):
    """Seconds since 1970 as float64 (millisecond precision) from a timestamp column."""
    whole = ts.epoch_seconds().cast("float64").floor().cast("float64")  # DuckDB's epoch has a fraction
    return whole + ts.millisecond().cast("float64") / 1000.0


def attribute_columns(events: ibis.Table) -> list[str]:
    """Customer attributes: string columns of the clean events beyond the canonical ones."""
    internal = {"t", "journey_index", "is_conv"}
    return [c for c, typ in events.schema().items()
            if c not in CANONICAL_COLUMNS and c not in internal and typ.is_string()]


def discover_touchpoints(events: ibis.Table, phases: Sequence[str] | None = None) -> list[str]:
    """Sorted distinct touchpoints of `touch` events (optionally only the given phases)."""
    t = events.filter(events.kind == "touch")
    if phases is not None:
        t = t.filter(t.phase.isin(list(phases)))
    tps = sorted(str(x) for x in t.select("touchpoint").distinct().to_pyarrow().column(0).to_pylist()
                 if x is not None)
    safe = [safe_name(x) for x in tps]
    if len(set(safe)) != len(safe):
        dup = sorted({s for s in safe if safe.count(s) > 1})
        raise InputError(f"clean events: touchpoints {dup} differ only in case/punctuation, so their "
                         f"per-touchpoint columns would collide. Map them to one name in the ingest taxonomy.")
    return tps


# --------------------------------------------------------------------------- base tables
def journey_events(events: ibis.Table) -> ibis.Table:
    """Events + ``t`` (epoch seconds, float) + ``journey_index``.

    journey_index = 1 + number of conversions strictly earlier than the event (ties: a
    touch at the same time as a conversion belongs to that conversion's journey); the k-th
    conversion (by ts, event_id) has journey_index k."""
    if "journey_index" in events.columns:
        return events
    is_conv = (events.kind == "conversion").cast("int64")
    e = events.mutate(t=_secs(events.ts), is_conv=is_conv)
    w = ibis.cumulative_window(group_by=e.customer_id, order_by=[e.ts, e.is_conv, e.event_id])
    return e.mutate(journey_index=(e.is_conv.sum().over(w) + 1 - e.is_conv).cast("int64"))


def _timed(events: ibis.Table) -> ibis.Table:
    """Events + ``t`` (epoch seconds, float) without the journey window (for the tables that
    do not need journey_index: customer features and attributes, funnel, last activity)."""
    return events if "t" in events.columns else events.mutate(t=_secs(events.ts))


def _all_events(events: ibis.Table, opts: dict, timed: bool = True) -> ibis.Table:
    """Every clean event (``opts['events_all']`` in build_all, where ``events`` holds only the
    journey events: path touches, conversions and dissolutions). ``timed=False``: without
    ``t`` (callers that compare and aggregate ``ts`` and convert only the aggregates)."""
    ev = opts.get("events_all")
    ev = events if ev is None else ev
    return _timed(ev) if timed else ev


def _jtype(idx):
    return ibis.ifelse(idx == 1, "acquisition", "repeat")


def conversions_by_journey(events: ibis.Table) -> ibis.Table:
    """One row per conversion: customer_id, journey_index, conversion_ts, conv_t, revenue."""
    e = journey_events(events)
    c = e.filter(e.kind == "conversion")
    return c.select("customer_id", "journey_index", conversion_ts=c.ts, conv_t=c.t,
                    revenue=c.value.cast("float64"))


def journey_touches(events: ibis.Table, /, *, lookback_days: float = 90,
                    path_phases: Sequence[str] = ("pre_purchase", "purchase"), **_: Any) -> ibis.Table:
    """Path touches of every journey in time order (the base of every journey table).

    Columns: customer_id, journey_index, ts, t, event_id, touchpoint, pos (0-based, by
    ts then event_id), n (touches in the journey), converted, conv_t, conversion_ts, revenue.
    Kept: kind 'touch', phase in path_phases, t >= anchor - lookback_days, anchor = the
    conversion time (converted) or the journey's last path touch (not converted)."""
    limited = lookback_days is not None and float(lookback_days) < 1e8   # no limit: no anchor needed
    j = _touch_rows(events, path_phases, with_anchor=limited)
    if limited:
        j = j.filter(_within_lookback(j, lookback_days)).drop("_last_t")
    return _number(j)


def _touch_rows(events: ibis.Table, path_phases: Sequence[str], with_anchor: bool) -> ibis.Table:
    """Path touches (kind touch, phase in path_phases) with their journey's conversion (conv_t,
    conversion_ts, revenue, converted); ``with_anchor`` adds ``_last_t``, the journey's last path
    touch (the lookback anchor of an unconverted journey; aggregate + join, no window)."""
    e = journey_events(events)
    tch = e.filter((e.kind == "touch") & e.phase.isin(list(path_phases)))
    tch = tch.select("customer_id", "journey_index", "ts", "t", "event_id", "touchpoint")
    conv = conversions_by_journey(e)
    keys = ["customer_id", "journey_index"]
    j = tch.left_join(conv, keys).select(tch, conv.conv_t, conv.conversion_ts, conv.revenue)
    j = j.mutate(converted=j.conv_t.notnull())
    if with_anchor:
        last = tch.group_by(keys).aggregate(_last_t=tch.t.max())
        j = j.join(last, keys).select(j, last._last_t)
    return j


def _within_lookback(j: ibis.Table, lookback_days: float):
    """Touch at most ``lookback_days`` before its anchor (the conversion, else ``_last_t``)."""
    return j.t >= ibis.coalesce(j.conv_t, j._last_t) - float(lookback_days) * SECONDS_PER_DAY


_TOUCH_COLUMNS = ("customer_id", "journey_index", "ts", "t", "event_id", "touchpoint", "conv_t", "conversion_ts",
                  "revenue", "converted", "pos", "n")


def _touches_both(events: ibis.Table, lookback_days: float, path_phases: Sequence[str]) -> ibis.Table:
    """All path touches (no lookback: the survival touches) numbered once, plus the numbering
    of the attribution touches (``_kept``: within ``lookback_days`` of the anchor; kept touches
    are the latest ones of a journey, so their position is a running count of ``_kept``).
    One window pass instead of two; see :func:`_split_touches`."""
    j = _touch_rows(events, path_phases, with_anchor=True)
    j = j.mutate(_kept=_within_lookback(j, lookback_days).cast("int64")).drop("_last_t")
    wo = ibis.window(group_by=[j.customer_id, j.journey_index], order_by=[j.ts, j.event_id])
    wc = ibis.cumulative_window(group_by=[j.customer_id, j.journey_index], order_by=[j.ts, j.event_id])
    wj = ibis.window(group_by=[j.customer_id, j.journey_index])
    return j.mutate(pos=ibis.row_number().over(wo).cast("int64"), n=j.event_id.count().over(wj).cast("int64"),
                    _pos_lb=(j._kept.sum().over(wc) - 1).cast("int64"), _n_lb=j._kept.sum().over(wj).cast("int64"))


def _split_touches(both: ibis.Table) -> tuple[ibis.Table, ibis.Table]:
    """(attribution touches, survival touches) from :func:`_touches_both`."""
    st = both.select(*_TOUCH_COLUMNS)
    k = both.filter(both._kept == 1)
    return k.mutate(pos=k._pos_lb, n=k._n_lb).select(*_TOUCH_COLUMNS), st


def _number(j: ibis.Table) -> ibis.Table:
    """(Re)compute pos (0-based rank by ts, event_id) and n within each journey."""
    wo = ibis.window(group_by=[j.customer_id, j.journey_index], order_by=[j.ts, j.event_id])
    wj = ibis.window(group_by=[j.customer_id, j.journey_index])
    return j.mutate(pos=ibis.row_number().over(wo).cast("int64"), n=j.event_id.count().over(wj).cast("int64"))


def path_touches(touches: ibis.Table, /, *, collapse_repeats: bool = False,
                 max_path_length: int | None = None, **_: Any) -> ibis.Table:
    """Apply the path options to journey_touches: collapse consecutive repeats of a
    touchpoint, then keep only the last ``max_path_length`` touches; pos/n renumbered."""
    t = touches
    if collapse_repeats:
        wo = ibis.window(group_by=[t.customer_id, t.journey_index], order_by=t.pos)
        prev = t.touchpoint.lag().over(wo)
        t = _number(t.filter(prev.isnull() | (prev != t.touchpoint)))
    if max_path_length:
        t = _number(t.filter(t.pos >= t.n - int(max_path_length)))
    return t


def journey_list(events: ibis.Table, touches: ibis.Table) -> ibis.Table:
    """Every journey: those with path touches plus conversions without any (empty paths).

    Columns: customer_id, journey_index, journey_type, converted, conversion_ts, conv_t, revenue."""
    conv = conversions_by_journey(events)
    keys = touches.select("customer_id", "journey_index").distinct().union(
        conv.select("customer_id", "journey_index"), distinct=True)
    j = keys.left_join(conv, ["customer_id", "journey_index"]).select(
        keys.customer_id, keys.journey_index, conv.conversion_ts, conv.conv_t, conv.revenue)
    return j.mutate(journey_type=_jtype(j.journey_index), converted=j.conv_t.notnull())


def customer_attributes(events: ibis.Table, attrs: Sequence[str] | None = None) -> ibis.Table:
    """Per customer, the first non-null value (by ts, event_id) of each attribute column
    plus ``<attr>__t`` (its epoch seconds, used to keep features leak-free).

    One aggregation: the minimum of a (ts, event_id, value) struct over the non-null rows."""
    e = events
    attrs = attribute_columns(events) if attrs is None else list(attrs)
    aggs: dict[str, Any] = {}
    for a in attrs:
        has = e[a].notnull()
        aggs[f"_s_{a}"] = ibis.struct({"ts": e.ts, "event_id": e.event_id, "v": e[a]}).min(where=has)
    if not aggs:
        return e.select("customer_id").distinct()
    g = e.group_by("customer_id").aggregate(**aggs)
    return g.select("customer_id", *[x for a in attrs
                                     for x in (g[f"_s_{a}"].v.name(a), _secs(g[f"_s_{a}"].ts).name(f"{a}__t"))])


# --------------------------------------------------------------------------- tables
def _base(events: ibis.Table, opts: dict) -> tuple[ibis.Table, ibis.Table]:
    """(journey events, journey touches); reuse ``opts['touches']`` when given (build_all)."""
    e = journey_events(events)
    touches = opts.get("touches")
    if touches is None:
        touches = journey_touches(e, **opts)
    return e, touches


def _tps(touches: ibis.Table, opts: dict) -> list[str]:
    tps = opts.get("touchpoints")
    if tps is None:
        tps = sorted(str(x) for x in touches.select("touchpoint").distinct().to_pyarrow().column(0).to_pylist())
    return list(tps)


def _days(a, b):
    """(a - b) in days for epoch-second columns."""
    return (a - b) / SECONDS_PER_DAY


def journeys(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """One row per journey (docs/DESIGN.md Engine tables 1).

    start_ts = first path touch (conversion time for a conversion without touches);
    end_ts = conversion_ts when converted, else the last path touch; duration_days = end - start;
    n_<tp> = path touches of tp in the journey (after the lookback limit)."""
    e, touches = _base(events, opts)
    tps = _tps(touches, opts)
    agg = touches.group_by(["customer_id", "journey_index"]).aggregate(
        _start_ts=touches.ts.min(), _start_t=touches.t.min(), _last_ts=touches.ts.max(), _last_t=touches.t.max(),
        first_touchpoint=touches.touchpoint.max(where=touches.pos == 0),
        last_touchpoint=touches.touchpoint.max(where=touches.pos == touches.n - 1),
        n_touches=touches.event_id.count().cast("int64"),
        **{f"n_{safe_name(tp)}": (touches.touchpoint == tp).cast("int64").sum().cast("int64") for tp in tps})
    jl = journey_list(e, touches)
    j = jl.left_join(agg, ["customer_id", "journey_index"]).select(jl, *[agg[c] for c in agg.columns[2:]])
    start_ts = ibis.coalesce(j._start_ts, j.conversion_ts)
    start_t = ibis.coalesce(j._start_t, j.conv_t)
    end_ts = ibis.ifelse(j.converted, j.conversion_ts, j._last_ts)
    end_t = ibis.ifelse(j.converted, j.conv_t, j._last_t)
    counts = {c: ibis.coalesce(j[c], 0) for c in ["n_touches", *[f"n_{safe_name(tp)}" for tp in tps]]}
    out = j.select("customer_id", "journey_index", "journey_type", start_ts=start_ts, end_ts=end_ts,
                   first_touchpoint=j.first_touchpoint, last_touchpoint=j.last_touchpoint, **counts,
                   converted=j.converted, conversion_ts=j.conversion_ts,
                   revenue=ibis.ifelse(j.converted, ibis.coalesce(j.revenue, 0.0), 0.0),
                   duration_days=_days(end_t, start_t), _start_t=start_t, _end_t=end_t)
    attrs = opts.get("attrs")
    if attrs is None:
        attrs = attribute_columns(events)
    if attrs:
        ca = opts.get("customer_attrs")
        ca = customer_attributes(e, attrs) if ca is None else ca
        out = out.left_join(ca, "customer_id").select(out, *[ca[a] for a in attrs])
    if not opts.get("_keep_t"):
        out = out.drop("_start_t", "_end_t")
    return out


def _paths_per_journey(events: ibis.Table, opts: dict) -> tuple[ibis.Table, ibis.Table]:
    """(path touches after options, per-journey path string joined with jl)."""
    e, touches = _base(events, opts)
    pt = path_touches(touches, **opts)
    per = pt.group_by(["customer_id", "journey_index"]).aggregate(
        _arr=ibis.struct({"pos": pt.pos, "tp": pt.touchpoint}).collect())
    per = per.select("customer_id", "journey_index",
                     path=per._arr.sort().map(lambda s: s.tp).join(PATH_SEP))
    jl = journey_list(e, touches)
    j = jl.left_join(per, ["customer_id", "journey_index"]).select(jl, path=ibis.coalesce(per.path, ""))
    return pt, j


def paths(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """ChannelAttribution / mta path table: journey_type, path (" > " joined, time order),
    conversions, nulls, value (float). A conversion without path touches has path ""."""
    _, j = _paths_per_journey(events, opts)
    conv = j.converted.cast("float64")
    return j.group_by(["journey_type", "path"]).aggregate(
        conversions=conv.sum(), nulls=(1.0 - conv).sum(),
        value=ibis.ifelse(j.converted, ibis.coalesce(j.revenue, 0.0), 0.0).sum())


def transitions(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """Markov transition counts per journey_type and order k = 1..markov_max_order, with
    the state semantics of docs/DESIGN.md 'Markov states' (k-gram sliding windows of the
    path, shorter paths = one state, consecutive identical states collapsed, (start),
    (conversion), (null)). Columns: journey_type, order, state_from, state_to, count (float)."""
    e, touches = _base(events, opts)
    pt = path_touches(touches, **opts)
    jl = journey_list(e, touches)
    K = int(opts.get("markov_max_order", 3))
    pt = pt.select("customer_id", "journey_index", "pos", "n", "touchpoint", "converted")
    pt = pt.mutate(journey_type=_jtype(pt.journey_index))
    # one window pass: the K previous touchpoints of every touch. A row is "kept" at order k when
    # its state differs from the previous row's state; the previous kept state then equals the
    # previous row's state (dropped rows repeat their predecessor), so no second window is needed.
    wo = ibis.window(group_by=[pt.customer_id, pt.journey_index], order_by=pt.pos)
    lagged = pt.mutate(**{f"_l{j}": pt.touchpoint.lag(j).over(wo) for j in range(1, K + 1)})
    empty = jl.anti_join(pt, ["customer_id", "journey_index"])   # journeys without path touches
    emp = empty.select("journey_type", state_from=ibis.literal(START),
                       state_to=ibis.ifelse(empty.converted, CONVERSION, NULL))
    parts = []
    for k in range(1, K + 1):
        s = lagged

        def window(offset: int):   # state ending `offset` rows back: touches pos-offset-k+1 .. pos-offset
            cols = [s[f"_l{j}"] if j else s.touchpoint for j in range(offset, offset + k)]
            state = cols[0]
            for c in cols[1:]:
                state = ibis.ifelse(c.isnull(), "", c + STATE_SEP) + state
            return state
        state, prev = window(0), window(1)
        s = s.filter((s.pos >= k - 1) | ((s.n < k) & (s.pos == s.n - 1)))
        s = s.mutate(state=state, _prev=ibis.ifelse(s.pos >= k, prev, ibis.null("string")))
        inner = s.filter(s._prev.isnull() | (s._prev != s.state))
        inner = inner.select("journey_type", state_from=ibis.coalesce(inner._prev, START), state_to=inner.state)
        last = s.filter(s.pos == s.n - 1)
        term = last.select("journey_type", state_from=last.state,
                           state_to=ibis.ifelse(last.converted, CONVERSION, NULL))
        edges = inner.union(term).union(emp)
        parts.append(edges.group_by(["journey_type", "state_from", "state_to"]).aggregate(
            count=edges.journey_type.count().cast("float64")).mutate(order=ibis.literal(k, "int64")))
    out = parts[0]
    for p in parts[1:]:
        out = out.union(p)
    return out.select("journey_type", "order", "state_from", "state_to", "count")


def coalitions(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """Journeys, conversions and revenue by coalition = sorted distinct touchpoints of the
    path joined by ","; n_touchpoints = its size. Columns: journey_type, coalition,
    n_touchpoints, journeys, conversions, value."""
    e, touches = _base(events, opts)
    pt = path_touches(touches, **opts)
    d = pt.select("customer_id", "journey_index", "touchpoint").distinct()
    per = d.group_by(["customer_id", "journey_index"]).aggregate(_arr=d.touchpoint.collect())
    per = per.select("customer_id", "journey_index", coalition=per._arr.sort().join(STATE_SEP),
                     n_touchpoints=per._arr.length().cast("int64"))
    jl = journey_list(e, touches)
    j = jl.left_join(per, ["customer_id", "journey_index"]).select(
        jl, coalition=ibis.coalesce(per.coalition, ""), n_touchpoints=ibis.coalesce(per.n_touchpoints, 0))
    return j.group_by(["journey_type", "coalition"]).aggregate(
        n_touchpoints=j.n_touchpoints.max(), journeys=j.customer_id.count().cast("int64"),
        conversions=j.converted.cast("float64").sum(),
        value=ibis.ifelse(j.converted, ibis.coalesce(j.revenue, 0.0), 0.0).sum())


def heuristics(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """Heuristic attribution of converted journeys' paths (weights sum to 1 per journey):
    first, last, last_non_direct (last touch not in direct_touchpoints, else last),
    linear (1/n), linear_unique (1/u per distinct touchpoint), position_based (w1, wm, wl:
    n=1 -> 1; n=2 -> w1/(w1+wl), wl/(w1+wl); n>=3 -> w1, wm/(n-2) each, wl),
    time_decay (2^(-(conv_t - t)/half_life_days), normalised). value = weight x revenue.
    Columns: journey_type, model, touchpoint, conversions, value. Empty paths are not attributed."""
    _, touches = _base(events, opts)
    pt = path_touches(touches, **opts)
    pt = pt.filter(pt.converted).mutate(journey_type=_jtype(pt.journey_index),
                                        _rev=ibis.coalesce(pt.revenue, 0.0))
    w1, wm, wl = [float(x) for x in opts.get("position_based_weights", [0.4, 0.2, 0.4])]
    hl = float(opts.get("time_decay_half_life_days", 7))
    direct = list(opts.get("direct_touchpoints", ["direct"]))
    wj = ibis.window(group_by=[pt.customer_id, pt.journey_index])
    wjt = ibis.window(group_by=[pt.customer_id, pt.journey_index, pt.touchpoint])
    wjt_o = ibis.window(group_by=[pt.customer_id, pt.journey_index, pt.touchpoint], order_by=[pt.pos])
    nd_pos = pt.pos.max(where=~pt.touchpoint.isin(direct)).over(wj)
    decay = (-(pt.conv_t - pt.t) / SECONDS_PER_DAY / hl * 0.6931471805599453).exp()
    pt = pt.mutate(_lnd=ibis.coalesce(nd_pos, pt.n - 1), _decay=decay,
                   _ctp=pt.event_id.count().over(wjt),
                   _firstocc=(ibis.row_number().over(wjt_o) == 0).cast("int64"))
    pt = pt.mutate(_u=pt._firstocc.sum().over(wj).cast("int64"), _dsum=pt._decay.sum().over(wj))
    n = pt.n.cast("float64")
    weights = {
        "first": ibis.ifelse(pt.pos == 0, 1.0, 0.0),
        "last": ibis.ifelse(pt.pos == pt.n - 1, 1.0, 0.0),
        "last_non_direct": ibis.ifelse(pt.pos == pt._lnd, 1.0, 0.0),
        "linear": 1.0 / n,
        "linear_unique": 1.0 / (pt._u.cast("float64") * pt._ctp.cast("float64")),
        "position_based": ibis.cases(
            (pt.n == 1, 1.0),
            (pt.n == 2, ibis.ifelse(pt.pos == 0, w1 / (w1 + wl), wl / (w1 + wl))),
            (pt.pos == 0, w1), (pt.pos == pt.n - 1, wl), else_=wm / (n - 2.0)),
        "time_decay": pt._decay / pt._dsum,
    }
    parts = [pt.select("journey_type", "touchpoint", model=ibis.literal(m), _w=w, _rev=pt._rev)
             for m, w in weights.items()]
    u = parts[0]
    for p in parts[1:]:
        u = u.union(p)
    return u.group_by(["journey_type", "model", "touchpoint"]).aggregate(
        conversions=u._w.sum(), value=(u._w * u._rev).sum())


def survival_touches(events: ibis.Table, opts: dict) -> ibis.Table:
    """Path touches that define a journey's time line for survival/exposure: like
    journey_touches but limited by ``survival_lookback_days`` (None = no limit: the journey
    starts at its first path touch since the previous conversion). The attribution lookback
    (``lookback_days``) must not truncate durations: a 120-day journey would look like a
    90-day one and no lead would ever seem to convert after day ``lookback_days``."""
    st = opts.get("survival_touches")
    if st is not None:
        return st
    lb = opts.get("survival_lookback_days")
    if lb is not None and float(lb) == float(opts.get("lookback_days", 90)) and opts.get("touches") is not None:
        return opts["touches"]
    return journey_touches(journey_events(events), **{**opts, "lookback_days": 1e9 if lb is None else float(lb)})


def survival(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """One row per journey for time-to-conversion models (docs/DESIGN.md Engine tables 6).

    Outcome (first that applies): 2 at the first dissolution event of the journey (at or
    after start, strictly before its conversion); 1 at conversion; 2 at the last activity
    (any event of the journey) when window_end - last activity > lost_inactivity_days;
    else 0 censored at window_end. entry_days = max(0, study_start - start) in days;
    journeys whose end <= study_start are excluded."""
    e, touches = _base(events, opts)
    touches = survival_touches(e, opts)
    j = journeys(e, **{**opts, "touches": touches, "_keep_t": True})
    end_t_w = _epoch(opts["window_end"])
    study_t = _epoch(opts["study_start"])
    lost_s = float(opts.get("lost_inactivity_days", 60)) * SECONDS_PER_DAY
    # last activity matters only for journeys that did not convert, i.e. the customer's last
    # journey, whose last event is the customer's last event: one aggregation per customer
    ea = _all_events(events, opts, timed=False)
    act = ea.group_by("customer_id").aggregate(_act_ts=ea.ts.max())
    act = act.mutate(_act_t=_secs(act._act_ts))
    dis = e.filter(e.kind == "dissolution").select("customer_id", "journey_index", _d_t="t", _d_ts="ts")
    dj = dis.join(j.select("customer_id", "journey_index", "_start_t"), ["customer_id", "journey_index"])
    dj = dj.filter(dj._d_t >= dj._start_t)
    dfirst = dj.group_by(["customer_id", "journey_index"]).aggregate(_d_t=dj._d_t.min(), _d_ts=dj._d_ts.min())
    s = j.left_join(act, "customer_id").select(j, act._act_t, act._act_ts)
    s = s.left_join(dfirst, ["customer_id", "journey_index"]).select(s, dfirst._d_t, dfirst._d_ts)
    conv_t = ibis.ifelse(s.converted, s._end_t, ibis.null("float64"))
    by_diss = s._d_t.notnull() & (~s.converted | (s._d_t < conv_t))
    inactive = (end_t_w - s._act_t) > lost_s
    event = ibis.cases((by_diss, 2), (s.converted, 1), (inactive, 2), else_=0).cast("int64")
    end_t = ibis.cases((by_diss, s._d_t), (s.converted, s._end_t), (inactive, s._act_t),
                       else_=ibis.literal(end_t_w, "float64"))
    end_ts = ibis.cases((by_diss, s._d_ts), (s.converted, s.conversion_ts), (inactive, s._act_ts),
                        else_=_ts(opts["window_end"]))
    s = s.mutate(event=event, _e_t=end_t, end_ts=end_ts)
    s = s.filter(s._e_t > study_t)
    entry = ibis.greatest(study_t - s._start_t, 0.0) / SECONDS_PER_DAY
    tps = [c for c in j.columns if c.startswith("n_") and c != "n_touches"]
    attrs = [c for c in j.columns if c in set(opts.get("attrs") or attribute_columns(events))]
    return s.select("customer_id", "journey_index", "journey_type", "start_ts",
                    entry_days=entry, duration_days=_days(s._e_t, s._start_t), event=s.event,
                    end_ts=s.end_ts, first_touchpoint=s.first_touchpoint, last_touchpoint=s.last_touchpoint,
                    n_touches=s.n_touches, **{c: s[c] for c in tps}, **{a: s[a] for a in attrs})


def exposure(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """Counting-process intervals (start, stop] in days since journey start, split at every
    path-touch time before the journey's end; cum_<tp> = touches of tp at time <= start;
    event = survival outcome on the last interval, else 0. Intervals ending at or before
    entry_days are dropped, the first kept one starts at entry_days; zero-length intervals
    are dropped. Columns: customer_id, journey_index, journey_type, start, stop, event,
    cum_<tp>..., first_touchpoint, attributes."""
    e, touches = _base(events, opts)
    touches = survival_touches(e, opts)
    tps = _tps(touches, opts)
    s = opts.get("survival_table")
    if s is None:
        s = survival(e, **{**opts, "touches": touches})
    attrs = [a for a in (opts.get("attrs") if opts.get("attrs") is not None else attribute_columns(events))
             if a in s.columns]
    sv = s.select("customer_id", "journey_index", "journey_type", "entry_days", "duration_days",
                  "event", "first_touchpoint", *attrs)
    jt = touches.select("customer_id", "journey_index", "t", "touchpoint")
    first = jt.group_by(["customer_id", "journey_index"]).aggregate(_t0=jt.t.min())
    jt = jt.join(first, ["customer_id", "journey_index"])
    jt = jt.mutate(u=_days(jt.t, jt._t0)).join(sv.select("customer_id", "journey_index", "duration_days"),
                                                ["customer_id", "journey_index"])
    jt = jt.filter(jt.u < jt.duration_days)
    # one window over the touches: cumulative counts up to and including time u (RANGE frame: ties
    # included), then one row per distinct u (the last of its ties: the next row has a later u)
    keys = [jt.customer_id, jt.journey_index]
    w = ibis.window(group_by=keys, order_by=jt.u, range=(None, 0))
    wl = ibis.window(group_by=keys, order_by=jt.u)
    cum = jt.select("customer_id", "journey_index", "u", _next=jt.u.lead().over(wl),
                    **{f"cum_{safe_name(tp)}": (jt.touchpoint == tp).cast("int64").sum().over(w).cast("int64")
                       for tp in tps})
    cum = cum.filter(cum._next.isnull() | (cum._next != cum.u))
    x = cum.join(sv, ["customer_id", "journey_index"])
    stop = ibis.coalesce(x._next, x.duration_days)
    x = x.mutate(start=ibis.greatest(x.u, x.entry_days), stop=stop,
                 event=ibis.ifelse(x._next.isnull(), x.event, 0).cast("int64"))
    x = x.filter(x.stop > x.start)
    return x.select("customer_id", "journey_index", "journey_type", "start", "stop", "event",
                    *[f"cum_{safe_name(tp)}" for tp in tps], "first_touchpoint", *attrs)


def _cutoff_table(cuts: Sequence[str]) -> ibis.Table:
    """Memtable of the cutoffs: cutoff (timestamp[us, UTC]), _c (epoch seconds), _j (0-based rank)."""
    import pandas as pd
    return ibis.memtable(pd.DataFrame({
        "cutoff": pd.to_datetime(list(cuts), utc=True).astype("datetime64[us, UTC]"),
        "_c": [_epoch(x) for x in cuts], "_j": list(range(len(cuts)))}))


def _window_pairs(cuts: Sequence[str], levels: Sequence[int]) -> ibis.Table:
    """(bucket _b, cutoff j) pairs where cutoff j's longest window reaches events of bucket b
    (b <= j and cutoff_j - max window < cutoff_b), with the window starts ``_lv<i>`` =
    cutoff - levels[i] days (timestamps)."""
    import pandas as pd
    c = [pd.Timestamp(x, tz="UTC") for x in cuts]
    rows = []
    for j, cj in enumerate(c):
        for b in range(j + 1):
            if cj - pd.Timedelta(days=levels[-1]) < c[b]:
                rows.append({"_b": b, "cutoff": cj, "_c": _epoch(cuts[j]), "_j": j,
                             **{f"_lv{i}": cj - pd.Timedelta(days=w) for i, w in enumerate(levels)}})
    df = pd.DataFrame(rows)
    for col in ["cutoff", *[f"_lv{i}" for i in range(len(levels))]]:
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[us, UTC]")
    df["_b"] = df["_b"].astype("int64")
    return ibis.memtable(df)


def customer_features(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """One row per (cutoff, customer with any event before the cutoff); features from
    events with ts < cutoff only, labels from events with ts >= cutoff only
    (docs/DESIGN.md Engine tables 8). Durations in days.

    Near one pass over the events: every event gets the bucket ``_b`` = number of cutoffs
    at or before it (so it is before cutoff j exactly when ``_b <= j``); one aggregation per
    (customer, bucket) gives counts, first/last times, sums and the latest survey answers /
    stage (max of a (ts, event_id, value) struct), and a join of those few rows per customer
    with the cutoffs combines buckets ``<= j`` (features) and ``> j`` (labels: first event
    and first dissolution at/after the cutoff). Window counts come from touch events at most
    max-window days before a cutoff only (equi-join of their bucket with the few (bucket,
    cutoff) pairs a window can reach). Per-event work compares timestamps only; epoch seconds
    are computed on the aggregates (monotone, so min/max commute with the conversion)."""
    e = _all_events(events, opts, timed=False)
    tps = opts.get("all_touchpoints")
    if tps is None:
        tps = discover_touchpoints(e)
    attrs = opts.get("attrs")
    if attrs is None:
        attrs = attribute_columns(events)
    ca = opts.get("customer_attrs")
    ca = customer_attributes(e, attrs) if ca is None else ca
    windows = [int(x) for x in opts.get("feature_windows_days", [7, 30, 90])]
    H = float(opts.get("horizon_days", 90)) * SECONDS_PER_DAY
    inact = float(opts.get("inactivity_days", 90)) * SECONDS_PER_DAY
    wend = _epoch(opts["window_end"])
    from .schema import PHASES
    import pandas as pd
    cuts = sorted(str(x) for x in opts["cutoffs"])
    cm = _cutoff_table(cuts)
    i64 = "int64"

    # 1. per (customer, bucket): one pass over the events
    bucket = ibis.cases(*[(e.ts < _ts(c), j) for j, c in enumerate(cuts)], else_=len(cuts)).cast(i64)
    x = e.select("customer_id", "ts", "kind", "touchpoint", "value", "survey", "score", "stage",
                 "event_id", _b=bucket)
    conv, diss, surv = x.kind == "conversion", x.kind == "dissolution", x.kind == "survey"
    scored = surv & x.score.notnull()

    def latest(value, where):
        return ibis.struct({"ts": x.ts, "event_id": x.event_id, "v": value}).max(where=where)

    pb = x.group_by(["customer_id", "_b"]).aggregate(
        _n=x.count().cast(i64),
        _first_t=x.ts.min(), _last_t=x.ts.max(),
        _first_conv=x.ts.min(where=conv), _last_conv=x.ts.max(where=conv),
        _freq=conv.cast(i64).sum().cast(i64),
        _vsum=x.value.cast("float64").sum(where=conv), _vcnt=x.value.count(where=conv).cast(i64),
        _nsurv=surv.cast(i64).sum().cast(i64),
        _compl=((x.kind == "touch") & (x.touchpoint == "complaint")).cast(i64).sum().cast(i64),
        _first_diss=x.ts.min(where=diss), _last_diss=x.ts.max(where=diss),
        _nps=latest(x.score, scored & (x.survey == "nps")),
        _csat=latest(x.score, scored & (x.survey == "csat")),
        _stage=latest(x.stage, x.stage.notnull()))
    pb = pb.mutate(_nps=pb._nps.v, _csat=pb._csat.v, _stage=pb._stage.v)

    # 2. buckets x cutoffs: features from buckets <= j, labels from buckets > j
    y = pb.cross_join(cm)
    f, post = y._b <= y._j, y._b > y._j

    def carried(value):   # value of the latest bucket <= j that has one
        return ibis.struct({"b": y._b, "v": value}).max(where=f & value.notnull()).v

    a = y.group_by(["cutoff", "_c", "customer_id"]).aggregate(
        _n_pre=y._n.sum(where=f).cast(i64),
        _first_t=y._first_t.min(where=f), _last_t=y._last_t.max(where=f),
        _last_conv=y._last_conv.max(where=f), _first_conv=y._first_conv.min(where=f),
        frequency=y._freq.sum(where=f).cast(i64),
        _vsum=y._vsum.sum(where=f), _vcnt=y._vcnt.sum(where=f).cast(i64),
        n_surveys=y._nsurv.sum(where=f).cast(i64),
        complaints_total=y._compl.sum(where=f).cast(i64),
        _last_diss=y._last_diss.max(where=f),
        last_nps=carried(y._nps), last_csat=carried(y._csat), current_stage=carried(y._stage),
        _diss_after=y._first_diss.min(where=post), _next_t=y._first_t.min(where=post),
        _last_seen=y._last_t.max())
    a = a.filter(a._n_pre > 0)
    a = a.mutate(**{k: _secs(a[k]) for k in ("_first_t", "_last_t", "_last_conv", "_first_conv", "_last_diss",
                                             "_diss_after", "_next_t", "_last_seen")})
    a = a.mutate(monetary_total=ibis.coalesce(a._vsum, 0.0),
                 monetary_mean=ibis.ifelse(a._vcnt > 0, a._vsum / a._vcnt.cast("float64"), ibis.null("float64")))

    # 3. window counts: touch events within the longest window before each cutoff
    levels = sorted(set(windows) | {90})
    pairs = _window_pairs(cuts, levels)
    lo = pd.Timestamp(cuts[0], tz="UTC") - pd.Timedelta(days=levels[-1])
    tch = e.filter((e.kind == "touch") & (e.ts >= ibis.literal(lo.to_pydatetime(), dt.Timestamp(timezone="UTC")))
                   & (e.ts < _ts(cuts[-1])))
    tb = ibis.cases(*[(tch.ts < _ts(c), j) for j, c in enumerate(cuts)], else_=len(cuts)).cast(i64)
    tch = tch.select("customer_id", "ts", "touchpoint", "phase", _b=tb)
    r = tch.join(pairs, "_b")
    r = r.filter(r.ts >= r[f"_lv{len(levels) - 1}"])
    lvl = ibis.cases(*[(r.ts >= r[f"_lv{i}"], i) for i in range(len(levels))]).cast(i64)
    g = r.select("cutoff", "customer_id", "touchpoint", "phase", _k=lvl)

    # One aggregation of the touch rows straight to (cutoff, customer): an intermediate
    # (cutoff, customer, touchpoint, phase, level) count table was ~9 rows per output row at
    # 1e6 customers and, held while the wide aggregate ran, made DuckDB spill (160 s vs 73 s at
    # memory_limit 8GB). Plain sums of an int32 CASE vectorise better than many FILTER clauses
    # and keep the aggregate state small; the int32 cast after the sum is a real one (ibis drops
    # a cast to the int64 it infers for sum(), and DuckDB's sum is HUGEINT, written as DOUBLE).
    def cnt_if(cond):
        return ibis.ifelse(cond, ibis.literal(1, "int32"), ibis.literal(0, "int32")).sum().cast("int32")

    feats: dict[str, Any] = {}
    for tp in tps:
        for w in windows:
            feats[f"touches_{safe_name(tp)}_{w}d"] = cnt_if((g.touchpoint == tp) & (g._k <= levels.index(w)))
    for ph in PHASES:
        for w in windows:
            feats[f"touches_{ph}_{w}d"] = cnt_if((g.phase == ph) & (g._k <= levels.index(w)))
    wf = g.group_by(["cutoff", "customer_id"]).aggregate(
        **feats, complaints_90d=cnt_if((g.touchpoint == "complaint") & (g._k <= levels.index(90))))
    wcols = [*feats, "complaints_90d"]
    keys = ["cutoff", "customer_id"]
    x = a.left_join(wf, keys).select(a, **{k: ibis.coalesce(wf[k], 0).cast(i64) for k in wcols})
    x = x.left_join(ca, "customer_id").select(
        x, **{at: ibis.ifelse(ca[f"{at}__t"] < x._c, ca[at], ibis.null("string")) for at in attrs})
    c = x._c
    is_cust = x.frequency > 0
    dissolved = x._last_diss.notnull() & (x._last_conv.isnull() | (x._last_diss > x._last_conv))
    dsla = (c - x._last_t) / SECONDS_PER_DAY
    observable = (c + H) <= wend
    diss_in_h = ibis.coalesce(x._diss_after < c + H, False)
    none_in_h = x._next_t.isnull() | (x._next_t >= c + H)
    label = ibis.ifelse(observable, diss_in_h | none_in_h, ibis.null("boolean"))
    gone = (wend - x._last_seen) > inact
    ddays = ibis.cases((x._diss_after.notnull(), _days(x._diss_after, c)),
                       (gone, ibis.greatest(_days(x._last_seen, c), 0.0)),
                       else_=(wend - c) / SECONDS_PER_DAY)
    x = x.mutate(
        recency_days=_days(c, x._last_conv), days_since_last_activity=dsla,
        days_since_first_purchase=_days(c, x._first_conv), tenure_days=_days(c, x._first_t),
        is_customer=is_cust, active_at_cutoff=is_cust & ~dissolved & (dsla <= inact / SECONDS_PER_DAY),
        label_observable=observable, dissolved_within_horizon=label,
        days_to_dissolution=ddays, dissolution_observed=x._diss_after.notnull() | gone)
    cols = ["cutoff", "customer_id", "recency_days", "days_since_last_activity", "frequency",
            "days_since_first_purchase", "monetary_total", "monetary_mean", "tenure_days", *feats,
            "last_nps", "last_csat", "n_surveys", "complaints_90d", "complaints_total", "current_stage",
            *attrs, "is_customer", "active_at_cutoff", "label_observable", "dissolved_within_horizon",
            "days_to_dissolution", "dissolution_observed"]
    return x.select(*cols)


FEATURE_LABEL_COLUMNS = ("label_observable", "dissolved_within_horizon", "days_to_dissolution",
                         "dissolution_observed")


def funnel(events: ibis.Table, /, **opts: Any) -> ibis.Table:
    """Funnel over the events' `stage` column in the order ``stages``.

    customers = customers whose furthest stage reached is this one or later;
    conversion_from_previous = customers / customers of the previous stage; drop_off = 1 -
    conversion; days in stage = first entry into a later stage - first entry into this stage
    (customers who entered and later moved on; others are not counted)."""
    e = _all_events(events, opts, timed=False)
    stages = list(opts.get("stages") or DEFAULT_STAGES)
    st = e.filter(e.stage.isin(stages))
    order = ibis.cases(*[(st.stage == s, i + 1) for i, s in enumerate(stages)])
    st = st.mutate(_ord=order)
    per = st.group_by("customer_id").aggregate(
        _max=st._ord.max(), **{f"_f{i}": st.ts.min(where=st.stage == s) for i, s in enumerate(stages)})
    per = per.mutate(**{f"_f{i}": _secs(per[f"_f{i}"]) for i in range(len(stages))})
    rows = []
    for i, s in enumerate(stages):
        f = per[f"_f{i}"]
        later = [ibis.ifelse(per[f"_f{k}"] >= f, per[f"_f{k}"], ibis.null("float64"))
                 for k in range(i + 1, len(stages))]
        left = ibis.least(*later) if len(later) > 1 else (later[0] if later else ibis.null("float64"))
        d = _days(left, f)
        rows.append(per.aggregate(
            customers=(per._max >= i + 1).cast("int64").sum().cast("int64"),
            median_days_in_stage=d.median(), mean_days_in_stage=d.mean()).mutate(
            stage=ibis.literal(s), stage_order=ibis.literal(i + 1, "int64")))
    u = rows[0]
    for r in rows[1:]:
        u = u.union(r)
    w = ibis.window(order_by=u.stage_order)
    prev = u.customers.lag().over(w)
    conv = ibis.ifelse(prev > 0, u.customers.cast("float64") / prev.cast("float64"), ibis.null("float64"))
    return u.select("stage", "stage_order", "customers", conversion_from_previous=conv,
                    drop_off_from_previous=1.0 - conv, median_days_in_stage=u.median_days_in_stage,
                    mean_days_in_stage=u.mean_days_in_stage)


# --------------------------------------------------------------------------- build
_SORT_KEYS = {
    "journeys": ["customer_id", "journey_index"],
    "paths": ["journey_type", "path"],
    "transitions": ["journey_type", "order", "state_from", "state_to"],
    "coalitions": ["journey_type", "coalition"],
    "heuristics": ["journey_type", "model", "touchpoint"],
    "survival": ["customer_id", "journey_index"],
    "exposure": ["customer_id", "journey_index", "start"],
    "customer_features": ["cutoff", "customer_id"],
    "funnel": ["stage_order"],
}


def _materialise(con, expr: ibis.Table, name: str) -> ibis.Table:
    """Compute ``expr`` once and return a table reading the stored result."""
    if backend_name(con) == "pyspark":
        df = con._session.sql(con.compile(expr))
        df = df.cache()
        df.count()
        df.createOrReplaceTempView(name)
        return con.table(name)
    con.raw_sql(f'DROP TABLE IF EXISTS "{name}"')
    # temporary tables skip the database file's write-ahead log and checkpoints; under
    # memory_limit DuckDB's buffer manager still spills them to the temp directory
    return con.create_table(name, expr, temp=True)


def _write(con, expr: ibis.Table, path: Path, order_by: Sequence[str]) -> int:
    """Write a table to one Parquet file (timestamps in microseconds); returns row count."""
    import pyarrow.parquet as pq
    path.parent.mkdir(parents=True, exist_ok=True)
    expr = expr.order_by(list(order_by))
    if backend_name(con) == "duckdb":
        con.to_parquet(expr, str(path))
        return int(pq.ParquetFile(str(path)).metadata.num_rows)
    tbl = expr.to_pyarrow()
    pq.write_table(tbl, str(path), coerce_timestamps="us", allow_truncated_timestamps=False)
    return tbl.num_rows


def prepare(con, events: ibis.Table, opts: dict, materialise: bool = True) -> dict:
    """Discover touchpoints/attributes and materialise the shared base tables once
    (journey events, journey touches, customer attributes); returns the options to pass
    to every table function."""
    opts = dict(opts)
    ev_all = _timed(events)
    # journey_index (a window over each customer's events) only for the rows that need it:
    # path touches, conversions and dissolutions; the other tables scan the events directly
    phases = list(opts.get("path_phases") or ["pre_purchase", "purchase"])
    sub = events.filter(events.kind.isin(["conversion", "dissolution"])
                        | ((events.kind == "touch") & events.phase.isin(phases)))
    e = journey_events(sub.select("customer_id", "ts", "event_id", "kind", "touchpoint", "phase", "value"))
    if materialise:
        e = _materialise(con, e, "jl_events")
    opts["events_all"] = ev_all
    opts["attrs"] = attribute_columns(events)
    tp_phase = events.filter(events.kind == "touch").select("touchpoint", "phase").distinct()
    if materialise:
        tp_phase = _materialise(con, tp_phase, "jl_tp_phase")
    opts["all_touchpoints"] = discover_touchpoints(tp_phase.mutate(kind=ibis.literal("touch")))
    opts["touchpoints"] = discover_touchpoints(tp_phase.mutate(kind=ibis.literal("touch")), opts["path_phases"])
    ca = customer_attributes(ev_all, opts["attrs"])
    if materialise:
        ca = _materialise(con, ca, "jl_customer_attrs")
    lb = float(opts.get("lookback_days", 90))
    if opts.get("survival_lookback_days") is None and lb < 1e8:
        # default: survival touches = all path touches; both numberings from one window pass
        both = _touches_both(e, lb, phases)
        if materialise:
            both = _materialise(con, both, "jl_touches_both")
        touches, st = _split_touches(both)
        opts["touches"], opts["customer_attrs"], opts["events_j"] = touches, ca, e
    else:
        touches = journey_touches(e, **opts)
        if materialise:
            touches = _materialise(con, touches, "jl_touches")
        opts["touches"], opts["customer_attrs"], opts["events_j"] = touches, ca, e
        st = survival_touches(e, {**opts, "survival_touches": None})
        if materialise and st is not touches:
            st = _materialise(con, st, "jl_survival_touches")
    opts["survival_touches"] = st
    return opts


def build_tables(events: ibis.Table, opts: dict) -> dict[str, ibis.Table]:
    """All nine tables as Ibis expressions (``opts`` from :func:`prepare`)."""
    e = opts.get("events_j", events)
    return {name: globals()[name](e, **opts) for name in TABLES}


def build_all(params: dict) -> dict[str, str]:
    """Write every engine table to ``engine.output_dir/<name>.parquet`` and
    metrics/engine.json; returns {name: path}."""
    return {k: v for k, v in _build(params)[0].items()}


def _build(params: dict) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    e_par = params.get("engine") or {}
    con = connect(params)
    events = load_events(con, config.path(params, e_par.get("input", "data/clean/events.parquet")))
    opts = options_from_params(params)
    if not opts["cutoffs"]:
        raise ConfigError("params.yaml: churn.train_cutoffs / eval_cutoff / score_cutoff are empty; "
                          "customer_features needs at least one cutoff date.")
    out_dir = config.path(params, e_par.get("output_dir", "data/journeys"))
    seconds: dict[str, float] = {}
    ts = time.perf_counter()
    opts = prepare(con, events, opts, materialise=True)
    seconds["prepare"] = round(time.perf_counter() - ts, 3)
    rows, paths_out = {}, {}
    for name in TABLES:
        ts = time.perf_counter()
        expr = globals()[name](opts["events_j"], **opts)
        if name == "survival":
            expr = _materialise(con, expr, "jl_survival")
            opts["survival_table"] = expr
        p = out_dir / f"{name}.parquet"
        rows[name] = _write(con, expr, p, _SORT_KEYS[name])
        paths_out[name] = str(p)
        seconds[name] = round(time.perf_counter() - ts, 3)
    metrics = {"backend": backend_name(con), "rows": rows, "seconds": seconds,
               "seconds_total": round(time.perf_counter() - t0, 3),
               "events": int(opts["events_all"].count().to_pyarrow().as_py()),
               "touchpoints": opts["touchpoints"], "attributes": opts["attrs"]}
    mpath = config.path(params, e_par.get("metrics", "metrics/engine.json"))
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(metrics, indent=2))
    if metrics["backend"] == "duckdb":
        for t in ("jl_survival", "jl_customer_attrs", "jl_survival_touches", "jl_touches", "jl_touches_both",
                  "jl_tp_phase", "jl_events"):
            con.raw_sql(f'DROP TABLE IF EXISTS "{t}"')
        con.disconnect()
    return paths_out, metrics


def run_stage(params: dict) -> dict:
    """DVC stage `journeylab build`: write data/journeys/*.parquet and metrics/engine.json."""
    return _build(params)[1]
