"""Validated ingest that loses nothing: raw CSV/Parquet -> canonical clean events.

Every raw row ends up in exactly one place:

* ``data/clean/events.parquet`` (canonical schema, docs/DESIGN.md), or
* ``data/clean/quarantine.parquet`` with a ``reason`` (rows counted in ``rows_quarantined``), or
* ``data/clean/quarantine.parquet`` with reason ``duplicate`` (counted only in ``rows_duplicate``).

Invariant (checked before anything is written): ``rows_read == rows_clean + rows_quarantined +
rows_duplicate``. The work runs inside DuckDB (through the Ibis DuckDB backend, file-backed
database in a temporary folder with spilling), so inputs larger than RAM stream: CSV files are
copied to Parquet by DuckDB (after a constant-memory transcode to UTF-8 when the configured
encoding is not UTF-8), then every check is one SQL pass.

Row reasons, in priority order (a row gets the first that applies in ``reason``; all its
problems are listed in ``reasons``): see :data:`REASONS`.
"""
from __future__ import annotations

import codecs
import glob as globlib
import gzip
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import config
from .errors import InputError, JourneylabError
from .schema import CANONICAL_COLUMNS, OTHER_TOUCHPOINT, REQUIRED_INPUT_COLUMNS, UNKNOWN_PHASE

#: Row-level quarantine reasons in priority order (first applicable wins).
REASONS = (
    "duplicate",               # identical raw values on all mapped columns as an earlier row
    "missing_customer_id",     # null / blank customer id
    "missing_timestamp",       # null / blank timestamp
    "unparseable_timestamp",   # not ISO / not in ingest.timestamp_formats
    "outside_window",          # ts < window.start or ts >= window.end
    "missing_touchpoint",      # null / blank touchpoint
    "unknown_touchpoint",      # not in the taxonomy (after aliases) and unknown_touchpoint: quarantine
    "unparseable_value",       # revenue present but not a number
    "negative_revenue",        # value < 0
    "unparseable_score",       # score present but not a number
    "score_out_of_scale",      # score outside ingest.score_scales[survey] (or default_score_scale)
)

CSV_EXTENSIONS = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
PARQUET_EXTENSIONS = (".parquet", ".pq", ".parq")
OPTIONAL_COLUMNS = ("event", "value", "score", "survey", "stage")
DELIMITER_CANDIDATES = (",", ";", "\t", "|")
_UTF8 = {"utf-8", "utf8", "utf-8-sig", "utf_8", "utf_8_sig"}
_CHUNK = 1 << 22  # 4 MiB transcoding chunks
MAX_CASE_MAP = 5000  # distinct raw touchpoints up to which the mapping is an order-preserving CASE


# --------------------------------------------------------------------------- helpers

def _q(name: str) -> str:
    """SQL-quoted identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def _lit(value: Any) -> str:
    """SQL string literal (None -> NULL)."""
    if value is None:
        return "NULL"
    return "'" + str(value).replace("'", "''") + "'"


def normalize_touchpoint(name: Any) -> str | None:
    """Python twin of the SQL normalisation: strip, lowercase, whitespace runs -> '_'."""
    if name is None:
        return None
    s = re.sub(r"\s+", "_", str(name).strip().lower())
    return s or None


def _norm_sql(expr: str) -> str:
    return f"nullif(regexp_replace(lower(trim(CAST({expr} AS VARCHAR))), '\\s+', '_', 'g'), '')"


def _display(path: Path, params: dict) -> str:
    try:
        return str(path.resolve().relative_to(config.root(params).resolve()))
    except ValueError:
        return str(path)


def _file_format(path: Path, fmt: str) -> str:
    if fmt in ("csv", "parquet"):
        return fmt
    if fmt != "auto":
        raise InputError(f"params.yaml: ingest.format is '{fmt}'; use auto (by file extension), csv or parquet.")
    name = path.name.lower()
    if name.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    if name.endswith(CSV_EXTENSIONS):
        return "csv"
    raise InputError(f"{path}: cannot tell the file format from the extension '{path.suffix}'. "
                     f"Use .csv/.tsv/.txt (optionally .gz) or .parquet, or set ingest.format: csv | parquet in params.yaml.")


def resolve_inputs(spec: str | list, params: dict, base: Path | None = None) -> list[Path]:
    """Input files for ``spec`` (file, glob or folder; a list of those), sorted by name.

    Relative paths resolve against ``base`` (default: the project root)."""
    base = base or config.root(params)
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    files: list[Path] = []
    for s in specs:
        p = Path(str(s)).expanduser()
        p = p if p.is_absolute() else base / p
        if any(ch in str(s) for ch in "*?["):
            found = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if Path(f).is_file())
            if not found:
                raise InputError(f"{s}: no file matches this pattern (looked in {p.parent}). Check ingest.input in "
                                 f"params.yaml, or run `journeylab simulate` first to create the built-in data.")
            files += found
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_"))
                           and f.name.lower().endswith(CSV_EXTENSIONS + PARQUET_EXTENSIONS))
            if not found:
                raise InputError(f"{p}: the folder holds no .csv/.tsv/.txt/.parquet file. Point ingest.input at the "
                                 f"data file(s) or put the exports in this folder.")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: input file not found. Check ingest.input in params.yaml (paths are relative to "
                             f"the project root {base}), or run `journeylab simulate` first to create the built-in data.")
    return files


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def transcode_to_utf8(src: Path, dst: Path, encoding: str) -> None:
    """Copy ``src`` (in ``encoding``) to ``dst`` as UTF-8, in 4 MiB chunks (constant memory)."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)("strict")
    except LookupError:
        raise InputError(f"{src}: ingest.csv.encoding '{encoding}' is not a known encoding. Use e.g. utf-8, "
                         f"utf-8-sig, cp1251 or latin-1.") from None
    offset, lines = 0, 1
    with _open_binary(src) as fin, open(dst, "w", encoding="utf-8", newline="") as fout:
        while True:
            chunk = fin.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                line = lines + chunk[:exc.start].count(b"\n")
                raise InputError(_encoding_message(src, encoding, f"byte 0x{chunk[exc.start]:02x} at byte offset "
                                                   f"{offset + exc.start} (line {line})")) from None
            if offset == 0 and text.startswith("\ufeff"):
                text = text[1:]
            fout.write(text)
            if not chunk:
                break
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _encoding_message(path: Path, encoding: str, where: str) -> str:
    return (f"{path}: the file cannot be decoded as {encoding} (ingest.csv.encoding): {where} is not valid "
            f"{encoding}. Set ingest.csv.encoding in params.yaml to the file's real encoding: cp1251 for Russian "
            f"Windows/Excel exports, latin-1 (or cp1252) for Western European ones, utf-8-sig for UTF-8 with a BOM.")


def _first_line(path: Path, encoding: str) -> str:
    enc = "utf-8-sig" if encoding.lower() in _UTF8 else encoding
    with _open_binary(path) as f:
        raw = f.read(65536)
    return raw.decode(enc, errors="replace").splitlines()[0] if raw.strip() else ""


# --------------------------------------------------------------------------- engine

def _connect(params: dict, workdir: Path):
    """Ibis DuckDB backend on a file-backed database in ``workdir`` (spills to workdir/spill)."""
    import ibis
    backend = params.get("backend", {}) or {}
    cfg = {"temp_directory": str(workdir / "spill"), "preserve_insertion_order": True}
    if backend.get("memory_limit"):
        cfg["memory_limit"] = str(backend["memory_limit"])
    if backend.get("threads"):
        cfg["threads"] = int(backend["threads"])
    con = ibis.duckdb.connect(str(workdir / "ingest.duckdb"), **cfg)
    con.raw_sql("SET TimeZone='UTC'")
    con.raw_sql("SET enable_progress_bar=false")
    return con


def _sql(con, query: str):
    return con.raw_sql(query)


def _fetch(con, query: str) -> list[tuple]:
    return con.raw_sql(query).fetchall()


def _stage_files(con, files: list[Path], params: dict, workdir: Path) -> tuple[str, list[dict]]:
    """Make every input readable as Parquet with a stable row number; return (SQL of the raw union, file infos)."""
    ing = params.get("ingest", {}) or {}
    fmt = str(ing.get("format", "auto") or "auto").lower()
    csv = ing.get("csv", {}) or {}
    delim = str(csv.get("delimiter", ",") or ",")
    encoding = str(csv.get("encoding", "utf-8") or "utf-8")
    header = bool(csv.get("header", True))
    infos: list[dict] = []
    offset = 0
    for i, f in enumerate(files):
        name = _display(f, params)
        kind = _file_format(f, fmt)
        if f.stat().st_size == 0:
            infos.append({"file": name, "path": f, "format": kind, "rows": 0, "parquet": None, "empty": True})
            continue
        if kind == "csv":
            src = f
            if encoding.lower() not in _UTF8:
                src = workdir / f"utf8_{i}.csv"
                transcode_to_utf8(f, src, encoding)
            staged = workdir / f"stage_{i}.parquet"
            reader = _csv_reader(src, delim, header)
            try:
                _sql(con, f"COPY (SELECT * FROM {reader}) TO {_lit(str(staged))} (FORMAT parquet, COMPRESSION zstd)")
            except Exception as exc:  # duckdb errors
                hint = _delimiter_message(f, params, len(_csv_header(src, delim, header)), force=True)
                raise InputError(hint or _csv_error_message(f, exc, delim, encoding)) from None
            pq = staged
        else:
            pq = f
        try:
            rows = _fetch(con, f"SELECT count(*) FROM read_parquet({_lit(str(pq))})")[0][0]
        except Exception as exc:
            raise InputError(f"{f}: not a readable Parquet file ({_first_sentence(exc)}). Check the file is complete "
                             f"(re-export it), or set ingest.format: csv if it is a CSV file with a .parquet name.") from None
        infos.append({"file": name, "path": f, "format": kind, "rows": int(rows), "parquet": pq, "empty": rows == 0,
                      "offset": offset})
        offset += int(rows)
    if not any(info["rows"] for info in infos):
        names = ", ".join(info["file"] for info in infos)
        what = "is empty (no data rows)" if len(infos) == 1 else "are all empty (no data rows)"
        raise InputError(f"{names}: the input {what}; there is nothing to ingest. Check that the export finished and "
                         f"that ingest.input points at the right file (a CSV needs a header line and at least one "
                         f"data row).")
    parts = []
    for idx, info in enumerate(infos):
        info["index"] = idx
        if not info["rows"]:
            continue
        parts.append(f"SELECT *, CAST(file_row_number AS BIGINT) + {info['offset']} AS _jl_event_id, "
                     f"CAST(file_row_number AS BIGINT) + 1 AS _jl_source_row, {idx} AS _jl_file "
                     f"FROM read_parquet({_lit(str(info['parquet']))}, file_row_number=true)")
    # file_row_number is the reader's column; drop it from the raw view
    union = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
    return f"SELECT * EXCLUDE (file_row_number) FROM ({union})", infos


def _csv_header(path: Path, delim: str, header: bool) -> list[str]:
    """Column names from the first line (``header``) or ``column0..`` (DuckDB's names, zero-padded)."""
    import csv as _csv
    line = _first_line(path, "utf-8")
    fields = next(_csv.reader([line], delimiter=delim), []) if line else []
    if not header:
        width = len(str(max(len(fields) - 1, 0)))
        return [f"column{str(i).zfill(width)}" for i in range(len(fields))]
    names, seen = [], {}
    for i, f in enumerate(fields):
        name = f.strip() or f"column{i}"
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen.setdefault(name, 0)
        names.append(name)
    return names


def _csv_reader(path: Path, delim: str, header: bool) -> str:
    """DuckDB read_csv with no sniffing (the sniffer may skip rows): all columns VARCHAR, strict."""
    names = _csv_header(path, delim, header)
    cols = "{" + ", ".join(f"{_lit(n)}: 'VARCHAR'" for n in names) + "}"
    return (f"read_csv({_lit(str(path))}, columns={cols}, auto_detect=false, delim={_lit(delim)}, quote='\"', "
            f"escape='\"', header={str(header).lower()}, skip=0, strict_mode=true, null_padding=false)")


def _first_sentence(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _csv_error_message(path: Path, exc: Exception, delim: str, encoding: str) -> str:
    text = str(exc)
    if "invalid unicode" in text.lower():
        m = re.search(r"Line: (\d+)", text)
        return _encoding_message(path, encoding, f"a byte sequence on line {m.group(1) if m else '?'}")
    m = re.search(r"CSV Error on Line: (\d+)", text)
    line = f" on line {m.group(1)}" if m else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = lines[0] if lines else type(exc).__name__
    if "sniffing" in detail.lower():
        detail += " " + (lines[1] if len(lines) > 1 else "")
    for ln in lines:
        if "Expected Number of Columns" in ln or "Original Line" in ln:
            detail += "; " + ln
    return (f"{path}: the CSV file cannot be read{line} with delimiter {delim!r} (ingest.csv.delimiter) "
            f"({detail}). Fix the line (e.g. unbalanced quotes or a different number of fields than the header), or "
            f"set ingest.csv.delimiter / ingest.csv.header to match the file.")


# --------------------------------------------------------------------------- mapping and checks

def _columns_of(con, raw_sql: str) -> dict[str, str]:
    rows = _fetch(con, f"DESCRIBE {raw_sql}")
    return {r[0]: str(r[1]).upper() for r in rows if not r[0].startswith("_jl_")}


def _match_column(wanted: str, available: dict[str, str]) -> str | None:
    if wanted in available:
        return wanted
    low = {c.strip().lower(): c for c in available}
    return low.get(str(wanted).strip().lower())


def _delimiter_message(path: Path, params: dict, n_columns: int | None, force: bool = False) -> str | None:
    """A wrong-delimiter message when the header line looks split on another delimiter, else None.

    ``force``: also when the header holds the configured delimiter fewer times than another one."""
    csv = (params.get("ingest", {}) or {}).get("csv", {}) or {}
    delim = str(csv.get("delimiter", ",") or ",")
    line = _first_line(path, str(csv.get("encoding", "utf-8")))
    counts = {d: line.count(d) for d in DELIMITER_CANDIDATES if d != delim}
    likely = max(counts, key=counts.get) if counts else None
    single = line.count(delim) == 0
    if not likely or counts[likely] == 0 or not (single or (force and counts[likely] > line.count(delim))):
        return None
    hint = (f"The header contains {likely!r} {counts[likely]} times, so the file is probably {likely!r}-delimited: "
            f"set ingest.csv.delimiter: {likely!r} in params.yaml"
            + (" (and ingest.csv.decimal: ',' if numbers use a decimal comma)." if likely == ";" else "."))
    split = f"split into {n_columns} column(s)" if n_columns else "not split"
    return (f"{path}: the header line ({line[:80]!r}) was {split} with the delimiter {delim!r} "
            f"(ingest.csv.delimiter), so the fields cannot be read. {hint}")


def _check_delimiter(infos: list[dict], available: dict[str, str], params: dict, force: bool = False) -> None:
    """Raise the wrong-delimiter InputError for a CSV read as one column (or, ``force``, missing columns)."""
    if len(available) != 1 and not force:
        return
    for info in infos:
        if info["format"] == "csv" and info["rows"]:
            msg = _delimiter_message(info["path"], params, len(available), force)
            if msg:
                raise InputError(msg)


def _mapping(con, raw_sql: str, infos: list[dict], params: dict) -> tuple[dict, dict, list, list, dict]:
    """Return (canonical -> raw column, extra name -> raw column, optional missing, extra missing, raw types)."""
    ing = params.get("ingest", {}) or {}
    cols = dict(ing.get("columns", {}) or {})
    available = _columns_of(con, raw_sql)
    _check_delimiter(infos, available, params)
    mapping: dict[str, str] = {}
    files = ", ".join(i["file"] for i in infos if i["rows"])
    for canon in REQUIRED_INPUT_COLUMNS:
        user = cols.get(canon)
        if not user:
            raise InputError(f"params.yaml: ingest.columns.{canon} is not set; {canon} is required. Map it to the "
                             f"column of {files} that holds it (columns found: {', '.join(available)}).")
        found = _match_column(str(user), available)
        if found is None:
            _check_delimiter(infos, available, params, force=True)
            raise InputError(f"{files}: required column '{user}' (mapped to {canon} by ingest.columns.{canon}) is not "
                             f"in the file. Columns found: {', '.join(available)}. Set ingest.columns.{canon} in "
                             f"params.yaml to the name of the column that holds the {canon}.")
        mapping[canon] = found
    missing_optional = []
    for canon in OPTIONAL_COLUMNS:
        user = cols.get(canon)
        if not user:
            continue
        found = _match_column(str(user), available)
        if found is None:
            missing_optional.append(f"{canon} ({user})")
        else:
            mapping[canon] = found
    extras_spec = ing.get("extra_columns") or []
    extras_spec = dict(extras_spec) if isinstance(extras_spec, dict) else {e: e for e in extras_spec}
    extras, missing_extra = {}, []
    reserved = set(CANONICAL_COLUMNS) | {"reason", "reasons", "source_file", "source_row"}
    for name, user in extras_spec.items():
        found = _match_column(str(user), available)
        if found is None:
            missing_extra.append(str(user))
        elif name in reserved:
            raise InputError(f"params.yaml: ingest.extra_columns names '{name}', which is a canonical column. "
                             f"Use another name for it (extra_columns can be a mapping new_name: user_column).")
        else:
            extras[name] = found
    return mapping, extras, missing_optional, missing_extra, available


def _ts_sql(col: str, dtype: str, tz: str, formats: list[str]) -> str:
    """SQL for a TIMESTAMPTZ from a raw timestamp column (naive values are local time in ``tz``)."""
    c = _q(col)
    if dtype.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"CAST({c} AS TIMESTAMPTZ)"
    if dtype.startswith("TIMESTAMP") or dtype == "DATE":
        return f"timezone({_lit(tz)}, CAST({c} AS TIMESTAMP))"
    s = f"trim(CAST({c} AS VARCHAR))"
    offset = r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?\s*([zZ]|UTC|utc|[+-]\d{2}(:?\d{2})?)$"
    alts = [f"timezone({_lit(tz)}, try_strptime({s}, {_lit(f)}))" for f in formats]
    naive = f"coalesce(timezone({_lit(tz)}, try_cast({s} AS TIMESTAMP)){''.join(', ' + a for a in alts)})"
    return (f"CASE WHEN regexp_matches({s}, {_lit(offset)}) THEN try_cast({s} AS TIMESTAMPTZ) ELSE {naive} END")


def _num_sql(col: str, dtype: str, decimal: str) -> tuple[str, str]:
    """(parsed DOUBLE, 'present but unparseable' flag) for a raw numeric column."""
    c = _q(col)
    if dtype != "VARCHAR":
        return f"try_cast({c} AS DOUBLE)", f"({c} IS NOT NULL AND try_cast({c} AS DOUBLE) IS NULL)"
    s = f"nullif(replace(trim({c}), ' ', ''), '')"
    if decimal == ",":
        s = f"replace(replace({s}, '.', ''), ',', '.')"
    return f"try_cast({s} AS DOUBLE)", f"({s} IS NOT NULL AND try_cast({s} AS DOUBLE) IS NULL)"


def _values_table(con, name: str, columns: list[tuple[str, str]], rows: list[tuple]) -> None:
    cols = ", ".join(f"{_q(c)} {t}" for c, t in columns)
    _sql(con, f"CREATE OR REPLACE TEMP TABLE {name} ({cols})")
    if rows:
        vals = ", ".join("(" + ", ".join("NULL" if v is None else (str(v).upper() if isinstance(v, bool) else _lit(v))
                                         for v in row) + ")" for row in rows)
        _sql(con, f"INSERT INTO {name} VALUES {vals}")


def _case_map(expr: str, pairs: list[tuple], cast: str = "VARCHAR") -> str:
    """``CASE expr WHEN k THEN v ... END`` (NULL when no pair)."""
    whens = " ".join(f"WHEN {_lit(k)} THEN {'NULL' if v is None else (str(v).upper() if isinstance(v, bool) else _lit(v))}"
                     for k, v in pairs if k is not None)
    return f"CAST(CASE {expr} {whens} END AS {cast})" if whens else f"CAST(NULL AS {cast})"


def _build_checked(con, raw_sql: str, mapping: dict, extras: dict, types: dict, params: dict) -> bool:
    """Create temp table ``checked``: parsed canonical columns + event_id + file index + reason(s).

    Returns True when the table is not in event_id order (outputs must be sorted)."""
    ing = params.get("ingest", {}) or {}
    win = params.get("window", {}) or {}
    tz = str(ing.get("timezone") or "UTC")
    decimal = str((ing.get("csv", {}) or {}).get("decimal", ".") or ".")
    formats = list(ing.get("timestamp_formats") or [])
    policy = str(ing.get("unknown_touchpoint", "other") or "other").lower()
    if policy not in ("other", "quarantine"):
        raise InputError(f"params.yaml: ingest.unknown_touchpoint is '{policy}'; use other or quarantine.")
    try:
        _fetch(con, f"SELECT timezone({_lit(tz)}, TIMESTAMP '2024-01-01')")
    except Exception:
        raise InputError(f"params.yaml: ingest.timezone '{tz}' is not a known time zone. Use an IANA name such as "
                         f"UTC or Europe/Moscow.") from None

    taxonomy = ing.get("taxonomy", {}) or {}
    _values_table(con, "jl_taxonomy", [("touchpoint", "VARCHAR"), ("phase", "VARCHAR"), ("channel_group", "VARCHAR"),
                                       ("paid", "BOOLEAN")],
                  [(normalize_touchpoint(k), (v or {}).get("phase"), (v or {}).get("group"), (v or {}).get("paid"))
                   for k, v in taxonomy.items()])
    aliases = ing.get("aliases", {}) or {}
    _values_table(con, "jl_aliases", [("alias", "VARCHAR"), ("touchpoint", "VARCHAR")],
                  [(normalize_touchpoint(k), normalize_touchpoint(v)) for k, v in aliases.items()])

    sel = {}
    sel["customer_id"] = f"nullif(trim(CAST({_q(mapping['customer_id'])} AS VARCHAR)), '')"  # ids stay strings
    ts_raw = _q(mapping["ts"])
    sel["_ts_missing"] = (f"({ts_raw} IS NULL OR trim({ts_raw}) = '')" if types[mapping["ts"]] == "VARCHAR"
                          else f"({ts_raw} IS NULL)")
    sel["ts"] = _ts_sql(mapping["ts"], types[mapping["ts"]], tz, formats)
    sel["_tp_norm"] = "m._m_norm"
    if "event" in mapping:
        rules = {str(v).strip().lower(): kind for kind, vals in reversed(list((ing.get("kind_rules") or {}).items()))
                 for v in (vals or [])}   # first kind listed wins when a value appears twice
        ev_raw = f"CAST({_q(mapping['event'])} AS VARCHAR)"
        # most frequent values first: a CASE tests its WHENs in order
        values = [r[0] for r in _fetch(con, f"SELECT {ev_raw} AS v FROM ({raw_sql}) GROUP BY 1 "
                                            f"ORDER BY count(*) DESC, 1 LIMIT {MAX_CASE_MAP + 1}")]
        if len(values) <= MAX_CASE_MAP:   # map each distinct raw value once (cheaper than lower/trim per row)
            pairs = [(v, rules[v.strip().lower()]) for v in values if v is not None and v.strip().lower() in rules]
            sel["_kind"] = f"coalesce({_case_map(ev_raw, pairs)}, 'touch')"
        else:
            ev = f"lower(trim({ev_raw}))"
            whens = " ".join(f"WHEN {ev} = {_lit(v)} THEN {_lit(k)}" for v, k in rules.items())
            sel["_kind"] = f"CASE {whens} ELSE 'touch' END" if whens else "'touch'"
    else:
        sel["_kind"] = None  # inferred below from score / value
    for canon in ("value", "score"):
        if canon in mapping:
            sel[canon], sel[f"_{canon}_bad"] = _num_sql(mapping[canon], types[mapping[canon]], decimal)
        else:
            sel[canon], sel[f"_{canon}_bad"] = "CAST(NULL AS DOUBLE)", "false"
    lower = "nullif(lower(trim(CAST({} AS VARCHAR))), '')"
    sel["survey"] = lower.format(_q(mapping["survey"])) if "survey" in mapping else "CAST(NULL AS VARCHAR)"
    sel["stage"] = lower.format(_q(mapping["stage"])) if "stage" in mapping else "CAST(NULL AS VARCHAR)"
    for name, col in extras.items():
        sel[f"x_{name}"] = f"CAST({_q(col)} AS VARCHAR)"
    kind_late = sel["_kind"] is None

    dup_cols = ", ".join(_q(c) for c in list(dict.fromkeys(list(mapping.values()) + list(extras.values()))))
    first = ", ".join(f"{expr} AS {_q(name)}" for name, expr in sel.items() if name != "_kind")
    kind_first = "" if kind_late else f", {sel['_kind']} AS _kind"
    start, end = win.get("start"), win.get("end")
    conds = []
    if start:
        conds.append(f"p.ts < TIMESTAMPTZ {_lit(str(start) + ' 00:00:00+00' if len(str(start)) <= 10 else start)}")
    if end:
        conds.append(f"p.ts >= TIMESTAMPTZ {_lit(str(end) + ' 00:00:00+00' if len(str(end)) <= 10 else end)}")
    outside = "(" + " OR ".join(conds) + ")" if conds else "false"
    scales = ing.get("score_scales", {}) or {}
    default_scale = ing.get("default_score_scale")
    scale_whens = " ".join(f"WHEN p.survey = {_lit(str(k).strip().lower())} THEN (p.score < {float(v[0])} OR "
                           f"p.score > {float(v[1])})" for k, v in scales.items())
    default_check = (f"(p.score < {float(default_scale[0])} OR p.score > {float(default_scale[1])})"
                     if default_scale else "false")
    out_of_scale = (f"(p.score IS NOT NULL AND CASE {scale_whens} WHEN p.survey IS NULL THEN {default_check} "
                    f"ELSE false END)") if scale_whens else f"(p.score IS NOT NULL AND p.survey IS NULL AND {default_check})"
    scale_known = " OR ".join([f"p.survey = {_lit(str(k).strip().lower())}" for k in scales]
                              + (["p.survey IS NULL"] if default_scale else []))
    unknown = "(p._tp_norm IS NOT NULL AND NOT p._tp_known)"
    checks = [
        ("missing_customer_id", "p.customer_id IS NULL"),
        ("missing_timestamp", "p._ts_missing"),
        ("unparseable_timestamp", "(NOT p._ts_missing AND p.ts IS NULL)"),
        ("outside_window", f"(p.ts IS NOT NULL AND {outside})"),
        ("missing_touchpoint", "p._tp_norm IS NULL"),
        ("unknown_touchpoint", unknown if policy == "quarantine" else "false"),
        ("unparseable_value", "p._value_bad"),
        ("negative_revenue", "p.value < 0"),
        ("unparseable_score", "p._score_bad"),
        ("score_out_of_scale", out_of_scale),
    ]
    reason = "CASE " + " ".join(f"WHEN {c} THEN {_lit(r)}" for r, c in checks) + " END"
    reasons = ("CASE WHEN reason IS NOT NULL THEN concat_ws(',', "   # reason: lateral alias (DuckDB)
               + ", ".join(f"CASE WHEN {c} THEN {_lit(r)} END" for r, c in checks) + ") END")
    extra_out = "".join(f", p.{_q('x_' + n)} AS {_q(n)}" for n in extras)
    kind_expr = ("CASE WHEN p.score IS NOT NULL THEN 'survey' WHEN p.value > 0 THEN 'conversion' ELSE 'touch' END"
                 if kind_late else "p._kind")
    # duplicates: candidate groups by a 64-bit hash, then exact comparison of the raw values within them
    dup_hash = f"hash({dup_cols})"
    _sql(con, f"""
        CREATE OR REPLACE TEMP TABLE jl_dups AS
        SELECT _jl_event_id AS _d_id FROM (
            SELECT _jl_event_id, row_number() OVER (PARTITION BY {dup_cols} ORDER BY _jl_event_id) AS rn
            FROM ({raw_sql}) WHERE {dup_hash} IN (
                SELECT h FROM (SELECT {dup_hash} AS h FROM ({raw_sql})) GROUP BY h HAVING count(*) > 1))
        WHERE rn > 1""")
    # touchpoints: normalise each distinct raw value once, then aliases and taxonomy
    tp_raw = f"CAST({_q(mapping['touchpoint'])} AS VARCHAR)"
    _sql(con, f"""
        CREATE OR REPLACE TEMP TABLE jl_tp AS
        SELECT d.v AS _m_v, d.n AS _m_norm, t.touchpoint AS _m_tp, t.phase AS _m_phase,
               t.channel_group AS _m_group, t.paid AS _m_paid, t.touchpoint IS NOT NULL AS _m_known
        , d.cnt AS _m_cnt
        FROM (SELECT v, cnt, {_norm_sql('v')} AS n FROM (SELECT {tp_raw} AS v, count(*) AS cnt FROM ({raw_sql})
                                                         GROUP BY 1)) d
        LEFT JOIN jl_aliases al ON d.n = al.alias
        LEFT JOIN jl_taxonomy t ON coalesce(al.touchpoint, d.n) = t.touchpoint""")
    # Small touchpoint vocabularies become CASE expressions (a projection keeps the raw row order, so the
    # outputs need no sort); large ones are joined and the outputs sorted by event_id.
    tp_map = _fetch(con, f"SELECT _m_v, _m_norm, _m_tp, _m_phase, _m_group, _m_paid FROM jl_tp WHERE _m_v IS NOT NULL "
                         f"ORDER BY _m_cnt DESC, _m_v LIMIT {MAX_CASE_MAP + 1}")
    if len(tp_map) <= MAX_CASE_MAP:
        # one CASE (most frequent raw values first) giving every mapped attribute as a struct
        def _v(x, typ="VARCHAR"):
            return f"CAST({'NULL' if x is None else (str(x).upper() if isinstance(x, bool) else _lit(x))} AS {typ})"
        whens = " ".join(
            f"WHEN {_lit(v)} THEN struct_pack(n := {_v(n)}, tp := {_v(t)}, phase := {_v(ph)}, grp := {_v(g)}, "
            f"paid := {_v(pd, 'BOOLEAN')})" for v, n, t, ph, g, pd in tp_map)
        null_struct = (f"struct_pack(n := {_v(None)}, tp := {_v(None)}, phase := {_v(None)}, grp := {_v(None)}, "
                       f"paid := {_v(None, 'BOOLEAN')})")
        tp_cols = (f"{f'CASE {tp_raw} {whens} ELSE {null_struct} END' if whens else null_struct} AS _m_s, "
                   f"struct_extract(_m_s, 'n') AS _tp_norm_m, struct_extract(_m_s, 'tp') AS _tp, "
                   f"struct_extract(_m_s, 'phase') AS _phase, struct_extract(_m_s, 'grp') AS _group, "
                   f"struct_extract(_m_s, 'paid') AS _paid, struct_extract(_m_s, 'tp') IS NOT NULL AS _tp_known")
        joins, needs_sort = "", False
        first = first.replace("m._m_norm AS", "_tp_norm_m AS")
    else:
        tp_cols = ("m._m_tp AS _tp, m._m_phase AS _phase, m._m_group AS _group, m._m_paid AS _paid, "
                   "coalesce(m._m_known, false) AS _tp_known")
        joins, needs_sort = f"LEFT JOIN jl_tp m ON {tp_raw} = m._m_v", True
    _sql(con, f"""
        CREATE OR REPLACE TEMP TABLE checked AS
        WITH p AS (
            SELECT _jl_event_id, _jl_file, {tp_cols}, {first}{kind_first}
            FROM ({raw_sql}) r {joins}
        )
        SELECT p.customer_id, CAST(p.ts AS TIMESTAMPTZ) AS ts,
               coalesce(p._tp, {_lit(OTHER_TOUCHPOINT)}) AS touchpoint,
               {kind_expr} AS kind, p.value, p.score, p.survey, p.stage,
               coalesce(p._phase, {_lit(UNKNOWN_PHASE)}) AS phase,
               coalesce(p._group, {_lit(OTHER_TOUCHPOINT)}) AS channel_group, p._paid AS paid,
               p._jl_event_id AS event_id{extra_out},
               p._jl_file AS _file, {reason} AS reason, {reasons} AS reasons,
               CASE WHEN {unknown} THEN p._tp_norm END AS _unknown_tp,
               (p.score IS NOT NULL AND NOT ({scale_known or 'false'})) AS _score_unchecked
        FROM p
    """)
    # duplicates: an in-place UPDATE keeps the row order
    _sql(con, """UPDATE checked SET reason = 'duplicate', reasons = 'duplicate' || coalesce(',' || reasons, '')
                 WHERE event_id IN (SELECT _d_id FROM jl_dups)""")
    return needs_sort


# --------------------------------------------------------------------------- main entry points

def ingest(params: dict, input_spec: Any = None, out: dict[str, Path] | None = None,
           base: Path | None = None, raise_if_all_quarantined: bool = True) -> dict:
    """Run the ingest; write clean/quarantine Parquet and the metrics JSON to ``out`` paths; return metrics.

    ``out`` keys: ``events``, ``quarantine``, ``metrics`` (default from ``params['ingest']``)."""
    ing = params.get("ingest", {}) or {}
    spec = input_spec if input_spec is not None else ing.get("input")
    if not spec:
        raise InputError("params.yaml: ingest.input is not set. Point it at a CSV/Parquet file, a glob or a folder.")
    files = resolve_inputs(spec, params, base)
    if out is None:
        out = {"events": config.path(params, ing.get("output", "data/clean/events.parquet")),
               "quarantine": config.path(params, ing.get("quarantine", "data/clean/quarantine.parquet")),
               "metrics": config.path(params, ing.get("metrics", "metrics/data_quality.json"))}
    interim = config.path(params, "data/interim")
    interim.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ingest_", dir=interim))
    try:
        con = _connect(params, workdir)
        try:
            return _run(con, files, spec, params, out, workdir, raise_if_all_quarantined)
        finally:
            con.disconnect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(con, files, spec, params, out, workdir, raise_if_all_quarantined) -> dict:
    raw_sql, infos = _stage_files(con, files, params, workdir)
    _sql(con, f"CREATE OR REPLACE TEMP VIEW jl_raw AS {raw_sql}")
    raw_sql = "SELECT * FROM jl_raw"
    mapping, extras, missing_opt, missing_extra, available = _mapping(con, raw_sql, infos, params)
    types = _columns_of(con, raw_sql)
    needs_sort = _build_checked(con, raw_sql, mapping, extras, types, params)

    rows_read = sum(i["rows"] for i in infos)
    (n_checked, n_clean, n_dup, n_quar, customers, ts_min, ts_max, n_other, n_unchecked) = _fetch(con, """
        SELECT count(*), count(*) FILTER (reason IS NULL), count(*) FILTER (reason = 'duplicate'),
               count(*) FILTER (reason IS NOT NULL AND reason <> 'duplicate'),
               count(DISTINCT customer_id) FILTER (reason IS NULL),
               strftime(min(ts) FILTER (reason IS NULL), '%Y-%m-%dT%H:%M:%SZ'),
               strftime(max(ts) FILTER (reason IS NULL), '%Y-%m-%dT%H:%M:%SZ'),
               count(*) FILTER (reason IS NULL AND touchpoint = 'other'),
               count(*) FILTER (reason IS NULL AND _score_unchecked)
        FROM checked""")[0]
    if n_checked != rows_read or rows_read != n_clean + n_quar + n_dup:  # pragma: no cover - internal guard
        raise JourneylabError(f"internal error: row accounting does not add up (read {rows_read}, checked {n_checked}, "
                              f"clean {n_clean}, quarantined {n_quar}, duplicate {n_dup}). Please report this bug.")
    by_reason = {r: int(n) for r, n in _fetch(con, "SELECT reason, count(*) FROM checked WHERE reason IS NOT NULL "
                                                   "AND reason <> 'duplicate' GROUP BY 1 ORDER BY 2 DESC, 1")}
    all_reasons = {r: 0 for r in REASONS if r != "duplicate"}
    all_reasons.update(by_reason)
    kinds = {k: 0 for k in ("touch", "conversion", "dissolution", "survey")}
    kinds.update({k: int(n) for k, n in _fetch(con, "SELECT kind, count(*) FROM checked WHERE reason IS NULL GROUP BY 1")})
    per_file = {int(f): (int(c), int(q), int(d)) for f, c, q, d in _fetch(con, """
        SELECT _file, count(*) FILTER (reason IS NULL), count(*) FILTER (reason IS NOT NULL AND reason <> 'duplicate'),
               count(*) FILTER (reason = 'duplicate') FROM checked GROUP BY 1""")}
    unknown_tps = {t: int(n) for t, n in _fetch(con, "SELECT _unknown_tp, count(*) FROM checked WHERE _unknown_tp IS NOT "
                                                     "NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20")}
    ing = params.get("ingest", {}) or {}
    metrics = {
        "input": spec if isinstance(spec, str) else list(map(str, spec)),
        "rows_read": int(rows_read), "rows_clean": int(n_clean), "rows_quarantined": int(n_quar),
        "rows_duplicate": int(n_dup), "quarantined_by_reason": all_reasons,
        "customers": int(customers), "ts_min": ts_min, "ts_max": ts_max,
        "kinds": kinds,
        "files": [{"file": i["file"], "format": i["format"], "rows_read": i["rows"],
                   "rows_clean": per_file.get(i["index"], (0, 0, 0))[0],
                   "rows_quarantined": per_file.get(i["index"], (0, 0, 0))[1],
                   "rows_duplicate": per_file.get(i["index"], (0, 0, 0))[2]} for i in infos],
        "columns_mapped": {k: v for k, v in mapping.items()},
        "extra_columns": extras,
        "optional_columns_missing": missing_opt,
        "extra_columns_missing": missing_extra,
        "kind_source": "event column" if "event" in mapping else
                       "inferred: survey if score present, conversion if value > 0, else touch (no event column mapped)",
        "unknown_touchpoint_policy": str(ing.get("unknown_touchpoint", "other")),
        "rows_touchpoint_other": int(n_other),
        "unknown_touchpoints_top": unknown_tps,
        "scores_unchecked": int(n_unchecked),
        "timezone_naive": str(ing.get("timezone") or "UTC"),
        "window": {"start": (params.get("window") or {}).get("start"), "end": (params.get("window") or {}).get("end")},
    }
    if ts_min is None:
        metrics["ts_min_note"] = metrics["ts_max_note"] = "no clean rows"
    _write_outputs(con, raw_sql, infos, extras, out, needs_sort)
    mpath = Path(out["metrics"])
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if n_clean == 0 and raise_if_all_quarantined:
        top = ", ".join(f"{r} {n}" for r, n in list(by_reason.items())[:3]) or f"duplicate {n_dup}"
        files_txt = ", ".join(i["file"] for i in infos if i["rows"])
        raise InputError(f"{files_txt}: all {rows_read} rows were quarantined, none is clean (top reasons: {top}). "
                         f"Check the column mapping (ingest.columns), ingest.timezone, the observation window "
                         f"(window.start/end) and the taxonomy / ingest.unknown_touchpoint in params.yaml; the rows "
                         f"and their reasons are in {out['quarantine']}.")
    return metrics


def _write_outputs(con, raw_sql: str, infos: list[dict], extras: dict, out: dict, needs_sort: bool) -> None:
    events, quarantine = Path(out["events"]), Path(out["quarantine"])
    for p in (events, quarantine):
        p.parent.mkdir(parents=True, exist_ok=True)
    extra_cols = "".join(f", {_q(n)}" for n in extras)
    tmp_e, tmp_q = events.with_suffix(".parquet.tmp"), quarantine.with_suffix(".parquet.tmp")
    _sql(con, f"""COPY (SELECT customer_id, ts, touchpoint, kind, value, score, survey, stage, phase, channel_group,
                        paid, event_id{extra_cols} FROM checked WHERE reason IS NULL{' ORDER BY event_id' if needs_sort else ''})
                  TO {_lit(str(tmp_e))} (FORMAT parquet, COMPRESSION zstd)""")
    raw_cols = _columns_of(con, raw_sql)
    added = {"reason", "reasons", "event_id", "source_file", "source_row"}
    rawsel = ", ".join(f"CAST(r.{_q(c)} AS VARCHAR) AS {_q(c + '_raw' if c in added else c)}" for c in raw_cols)
    _values_table(con, "jl_files", [("idx", "INTEGER"), ("file", "VARCHAR")],
                  [(i["index"], i["file"]) for i in infos])
    _sql(con, f"""COPY (SELECT {rawsel}, c.reason, c.reasons, c.event_id, f.file AS source_file,
                        r._jl_source_row AS source_row
                        FROM checked c JOIN ({raw_sql}) r ON r._jl_event_id = c.event_id
                        JOIN jl_files f ON f.idx = c._file
                        WHERE c.reason IS NOT NULL ORDER BY c.event_id)
                  TO {_lit(str(tmp_q))} (FORMAT parquet, COMPRESSION zstd)""")
    os.replace(tmp_e, events)
    os.replace(tmp_q, quarantine)


def run_stage(params: dict) -> dict:
    """`journeylab ingest`: ingest.input -> clean events, quarantine, metrics/data_quality.json; return the metrics."""
    return ingest(params)


def validate(path: str, params: dict) -> dict:
    """Data-quality summary of ``path`` (file, glob or folder; relative to the current folder) without writing
    the pipeline outputs. Same checks and keys as metrics/data_quality.json."""
    tmp = Path(tempfile.mkdtemp(prefix="jl_validate_"))
    try:
        out = {"events": tmp / "events.parquet", "quarantine": tmp / "quarantine.parquet", "metrics": tmp / "dq.json"}
        return ingest(params, input_spec=path, out=out, base=Path.cwd(), raise_if_all_quarantined=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_summary(summary: dict) -> str:
    """Human-readable data-quality summary (no customer ids)."""
    s = summary
    pct = (lambda n: f"{100.0 * n / s['rows_read']:.2f}%") if s.get("rows_read") else (lambda n: "-")
    lines = [f"input: {s.get('input')}",
             f"rows read:        {s['rows_read']:>12,}",
             f"rows clean:       {s['rows_clean']:>12,}  ({pct(s['rows_clean'])})",
             f"rows quarantined: {s['rows_quarantined']:>12,}  ({pct(s['rows_quarantined'])})",
             f"rows duplicate:   {s['rows_duplicate']:>12,}  ({pct(s['rows_duplicate'])})"]
    reasons = {r: n for r, n in s.get("quarantined_by_reason", {}).items() if n}
    if reasons:
        lines.append("quarantined by reason:")
        lines += [f"  {r:<24}{n:>12,}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    lines.append(f"customers: {s['customers']:,}   time span (UTC): {s.get('ts_min')} .. {s.get('ts_max')}")
    lines.append("kinds: " + ", ".join(f"{k} {n:,}" for k, n in s.get("kinds", {}).items()))
    if len(s.get("files", [])) > 1:
        lines.append("files:")
        lines += [f"  {f['file']}: read {f['rows_read']:,}, clean {f['rows_clean']:,}, quarantined "
                  f"{f['rows_quarantined']:,}, duplicate {f['rows_duplicate']:,}" for f in s["files"]]
    if s.get("unknown_touchpoints_top"):
        lines.append("unknown touchpoints (" + s.get("unknown_touchpoint_policy", "") + "): " +
                     ", ".join(f"{t} {n:,}" for t, n in s["unknown_touchpoints_top"].items()))
    if s.get("optional_columns_missing"):
        lines.append("mapped columns not in the file (left empty): " + ", ".join(s["optional_columns_missing"]))
    if s.get("extra_columns_missing"):
        lines.append("extra columns not in the file (skipped): " + ", ".join(s["extra_columns_missing"]))
    if s.get("rows_clean") == 0:
        lines.append("PROBLEM: no clean rows; `journeylab ingest` would stop. See the reasons above.")
    return "\n".join(lines)
