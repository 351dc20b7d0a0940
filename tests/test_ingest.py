"""Ingest: mapping, kind rules, quarantine reasons, accounting, time zones, encodings, file errors.

Expected numbers are counted by hand from the files in tests/data/ingest (see its README).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from journeylab import cli, ingest
from journeylab.errors import InputError

DATA = Path(__file__).resolve().parent / "data" / "ingest"

NO_EXTRAS = {"ingest.extra_columns": []}


def _project(project_factory, file: str | None = None, **overrides) -> dict:
    params = project_factory(**overrides)
    if file is not None:
        root = Path(params["_root"])
        shutil.copy(DATA / file, root / "data" / "raw" / file)
        params["ingest"]["input"] = f"data/raw/{file}"
    return params


def _run(params) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    m = ingest.run_stage(params)
    root = Path(params["_root"])
    return (m, pd.read_parquet(root / "data/clean/events.parquet"),
            pd.read_parquet(root / "data/clean/quarantine.parquet"))


def _ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


# ----------------------------------------------------------------------------- dirty.csv: every reason

@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory):
    """dirty.csv through ingest once for the tests of this section: (params, metrics, events, quarantine)."""
    from conftest import make_project
    params = make_project(tmp_path_factory.mktemp("dirty"))
    shutil.copy(DATA / "dirty.csv", Path(params["_root"]) / "data/raw/dirty.csv")
    params["ingest"]["input"] = "data/raw/dirty.csv"
    return (params, *_run(params))


@pytest.fixture
def dirty(dirty_run):
    return dirty_run[1:]


def test_each_quarantine_reason_and_accounting(dirty):
    m, events, quar = dirty
    # rows: 19 = 7 clean + 10 quarantined + 2 duplicates (rows 2 and 16)
    assert (m["rows_read"], m["rows_clean"], m["rows_quarantined"], m["rows_duplicate"]) == (19, 7, 10, 2)
    assert m["rows_read"] == m["rows_clean"] + m["rows_quarantined"] + m["rows_duplicate"]
    assert {k: v for k, v in m["quarantined_by_reason"].items() if v} == {
        "missing_customer_id": 2,     # rows 3, 14
        "missing_timestamp": 1,       # row 13
        "unparseable_timestamp": 1,   # row 4
        "outside_window": 2,          # row 5 (before start), row 6 (== end, end exclusive)
        "unknown_touchpoint": 1,      # row 11 (tiktok; row 14 is counted as missing id)
        "unparseable_value": 1,       # row 17 ("abc")
        "negative_revenue": 1,        # row 8
        "score_out_of_scale": 1,      # row 9 (csat 7 > 5)
    }
    assert m["customers"] == 4 and m["ts_min"] == "2024-01-01T00:00:00Z" and m["ts_max"] == "2024-05-06T09:00:00Z"
    assert m["kinds"] == {"touch": 3, "conversion": 1, "dissolution": 2, "survey": 1}
    assert m["files"][0]["rows_read"] == 19 and m["files"][0]["rows_duplicate"] == 2
    # clean rows: exact ids and values
    assert events["event_id"].tolist() == [0, 1, 7, 10, 12, 15, 18]
    assert len(events) == m["rows_clean"]
    # quarantine: every non-clean row once, duplicates included with reason `duplicate`
    assert len(quar) == m["rows_quarantined"] + m["rows_duplicate"]
    assert quar.set_index("event_id")["reason"].to_dict() == {
        2: "duplicate", 3: "missing_customer_id", 4: "unparseable_timestamp", 5: "outside_window",
        6: "outside_window", 8: "negative_revenue", 9: "score_out_of_scale", 11: "unknown_touchpoint",
        13: "missing_timestamp", 14: "missing_customer_id", 16: "duplicate", 17: "unparseable_value"}
    # several problems: primary reason by priority, all listed in `reasons`
    row14 = quar.set_index("event_id").loc[14]
    assert row14["reasons"] == "missing_customer_id,unparseable_timestamp,unknown_touchpoint"
    # raw values kept as strings, with provenance
    row17 = quar.set_index("event_id").loc[17]
    assert row17["revenue"] == "abc" and row17["source_row"] == 18 and row17["source_file"] == "data/raw/dirty.csv"
    assert set(events["event_id"]).isdisjoint(quar["event_id"])
    assert sorted(set(events["event_id"]) | set(quar["event_id"])) == list(range(19))


def test_clean_values_schema_and_kind_rules(dirty):
    m, ev, _ = dirty
    ev = ev.set_index("event_id")
    assert ev.loc[0, "touchpoint"] == "paid_search"            # "Paid Search" normalised
    assert ev.loc[18, "touchpoint"] == "social"                # " social " stripped
    assert ev.loc[15, "touchpoint"] == "direct"                # "Direct"
    assert ev.loc[1, "kind"] == "conversion" and ev.loc[1, "value"] == 120.5
    assert ev.loc[12, "kind"] == "dissolution" and ev.loc[18, "kind"] == "dissolution"   # cancellation, lead_lost
    assert ev.loc[10, "kind"] == "survey" and ev.loc[10, "score"] == 10 and ev.loc[10, "survey"] == "nps"
    assert ev.loc[0, "kind"] == "touch"
    assert ev.loc[0, "phase"] == "pre_purchase" and ev.loc[0, "channel_group"] == "search" and ev.loc[0, "paid"]
    assert ev.loc[12, "phase"] == "post_purchase" and not ev.loc[12, "paid"]
    assert ev.loc[15, "ts"] == _ts("2024-05-05 09:00")          # +03:00 offset -> UTC
    assert ev.loc[0, "segment"] == "smb" and ev.loc[0, "campaign"] == "spring" and pd.isna(ev.loc[7, "campaign"])


def test_parquet_schema_on_disk(dirty_run):
    params, _, ev, _ = dirty_run
    assert str(ev["ts"].dtype) == "datetime64[us, UTC]" and ev["paid"].dtype == bool
    root = Path(params["_root"])
    s = pq.read_schema(root / "data/clean/events.parquet")
    assert s.field("ts").type == pa.timestamp("us", tz="UTC")
    for col in ("customer_id", "touchpoint", "kind", "survey", "stage", "phase", "channel_group", "segment"):
        assert s.field(col).type == pa.string(), col
    assert s.field("paid").type == pa.bool_() and s.field("event_id").type == pa.int64()
    assert s.field("value").type == pa.float64() and s.field("score").type == pa.float64()
    assert s.names[:12] == ["customer_id", "ts", "touchpoint", "kind", "value", "score", "survey", "stage",
                            "phase", "channel_group", "paid", "event_id"]
    qs = pq.read_schema(root / "data/clean/quarantine.parquet")
    assert all(qs.field(c).type == pa.string() for c in ("customer_id", "timestamp", "revenue", "score", "reason"))
    dq = json.loads((root / "metrics/data_quality.json").read_text())
    assert dq["rows_read"] == dq["rows_clean"] + dq["rows_quarantined"] + dq["rows_duplicate"] == 19


def test_unknown_touchpoint_policy_other_and_aliases(project_factory):
    params = _project(project_factory, "dirty.csv", **{"ingest.unknown_touchpoint": "other"})
    m, ev, _ = _run(params)
    assert m["rows_clean"] == 8 and m["quarantined_by_reason"]["unknown_touchpoint"] == 0
    row = ev.set_index("event_id").loc[11]
    assert (row["touchpoint"], row["phase"], row["channel_group"]) == ("other", "unknown", "other")
    assert pd.isna(row["paid"]) or row["paid"] is None
    assert m["rows_touchpoint_other"] == 1 and m["unknown_touchpoints_top"] == {"tiktok": 2}
    # an alias maps tiktok onto the taxonomy key `social`
    params = _project(project_factory, "dirty.csv", **{"ingest.aliases": {"TikTok": "social"}})
    m, ev, _ = _run(params)
    assert m["rows_clean"] == 8 and ev.set_index("event_id").loc[11, "touchpoint"] == "social"


# ----------------------------------------------------------------------------- mapping without event column

def test_mapping_renamed_columns_without_event_column(project_factory):
    params = _project(project_factory, "renamed.csv", **{
        "ingest.columns": {"customer_id": "Client ID", "ts": "When", "touchpoint": "Channel",
                           "value": "Amount", "score": "Rating"},
        "ingest.extra_columns": {"region": "Region"},
        "ingest.aliases": {"Google Ads": "paid_search"},
        "ingest.default_score_scale": [1, 5]})
    m, ev, quar = _run(params)
    assert (m["rows_read"], m["rows_clean"], m["rows_quarantined"], m["rows_duplicate"]) == (5, 5, 0, 0)
    assert quar.empty
    # no event column: survey if a score, conversion if value > 0, else touch
    assert ev["kind"].tolist() == ["touch", "conversion", "touch", "survey", "touch"]
    assert ev["touchpoint"].tolist() == ["email", "website", "paid_search", "support", "store"]
    assert ev["value"].tolist()[1] == 99.9 and ev["score"].tolist()[3] == 4.0
    assert ev["region"].tolist() == ["north", "north", "south", "south", "south"]
    assert "segment" not in ev.columns
    assert ev["survey"].isna().all() and ev["stage"].isna().all()
    assert m["customers"] == 2
    # default_score_scale applies when there is no survey column
    params["ingest"]["default_score_scale"] = [0, 3]
    m2 = ingest.run_stage(params)
    assert m2["quarantined_by_reason"]["score_out_of_scale"] == 1 and m2["rows_clean"] == 4


# ----------------------------------------------------------------------------- time zones

def test_timezones_naive_moscow_and_offsets(project_factory):
    params = _project(project_factory, "timezones.csv", **NO_EXTRAS, **{
        "ingest.timezone": "Europe/Moscow", "ingest.timestamp_formats": ["%d.%m.%Y %H:%M"]})
    m, ev, _ = _run(params)
    assert m["rows_clean"] == 6
    assert ev["ts"].tolist() == [
        _ts("2024-03-01 07:00"),            # naive, Moscow (UTC+3)
        _ts("2024-03-01 10:00"),            # Z
        _ts("2024-03-01 09:00"),            # +01:00
        _ts("2024-02-29 21:00"),            # date only = local midnight
        _ts("2024-07-01 09:30:00.250"),     # fractional seconds, Moscow has no DST
        _ts("2024-03-01 07:00"),            # dd.mm.yyyy via ingest.timestamp_formats
    ]
    # without the extra format the last row is unparseable; naive UTC default
    params["ingest"]["timestamp_formats"] = []
    params["ingest"]["timezone"] = "UTC"
    m, ev, _ = _run(params)
    assert m["quarantined_by_reason"]["unparseable_timestamp"] == 1
    assert ev["ts"].iloc[0] == _ts("2024-03-01 10:00")


def test_unknown_timezone_is_a_clear_error(project_factory):
    params = _project(project_factory, "timezones.csv", **NO_EXTRAS, **{"ingest.timezone": "Mars/Olympus"})
    with pytest.raises(InputError, match="Mars/Olympus"):
        ingest.run_stage(params)


# ----------------------------------------------------------------------------- encodings and CSV options

RU_TAXONOMY = {
    "контекстная_реклама": {"phase": "pre_purchase", "group": "search", "paid": True},
    "сайт": {"phase": "purchase", "group": "owned", "paid": False},
    "рассылка": {"phase": "pre_purchase", "group": "email", "paid": False},
}


def test_cp1251_with_cyrillic(project_factory):
    params = _project(project_factory, "cp1251.csv", **{
        "ingest.csv.encoding": "cp1251",
        "ingest.columns": {"customer_id": "клиент", "ts": "время", "touchpoint": "канал", "event": "событие",
                           "value": "сумма"},
        "ingest.kind_rules": {"conversion": ["Покупка"]},
        "ingest.extra_columns": {"segment": "сегмент"},
        "ingest.taxonomy": RU_TAXONOMY})
    m, ev, _ = _run(params)
    assert (m["rows_read"], m["rows_clean"]) == (3, 3)
    assert ev["customer_id"].tolist() == ["к1", "к1", "к2"]
    assert ev["touchpoint"].tolist() == ["контекстная_реклама", "сайт", "рассылка"]
    assert ev["kind"].tolist() == ["touch", "conversion", "touch"]
    assert ev["segment"].tolist() == ["Малый бизнес", "Малый бизнес", "Крупный бизнес"]
    assert ev["value"].tolist()[1] == 1500.5


def test_utf8_bom_semicolon_decimal_comma(project_factory):
    params = _project(project_factory, "bom_semicolon.csv", **{
        "ingest.csv": {"delimiter": ";", "encoding": "utf-8-sig", "header": True, "decimal": ","},
        "ingest.extra_columns": ["segment"]})
    m, ev, _ = _run(params)
    assert (m["rows_read"], m["rows_clean"]) == (3, 3)
    assert m["columns_mapped"]["customer_id"] == "customer_id"    # BOM not part of the first column name
    assert ev["value"].tolist()[1:] == [1234.5, 0.75]
    assert ev["kind"].tolist() == ["touch", "conversion", "conversion"]
    assert m["optional_columns_missing"] == ["score (score)", "survey (survey)", "stage (stage)"]


def test_transcoding_names_the_bad_byte(tmp_path):
    src = tmp_path / "export.csv"
    src.write_bytes("id,канал\n1,сайт\n".encode("cp1251") + b"2,\x98\n")   # 0x98 is undefined in cp1251
    with pytest.raises(InputError) as info:
        ingest.transcode_to_utf8(src, tmp_path / "out.csv", "cp1251")
    msg = str(info.value)
    assert "export.csv" in msg and "cp1251" in msg and "0x98" in msg and "line 3" in msg and "latin-1" in msg
    src.write_bytes("id,канал\n1,сайт\n".encode("cp1251"))
    ingest.transcode_to_utf8(src, tmp_path / "out.csv", "cp1251")
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == "id,канал\n1,сайт\n"


# ----------------------------------------------------------------------------- file-level errors

def _cli(params, capsys, *args) -> tuple[int, str]:
    code = cli.main(["--params", str(Path(params["_root"]) / "params.yaml"), *args])
    return code, capsys.readouterr().err


def _save(params):
    import yaml
    p = {k: v for k, v in params.items() if k != "_root"}
    (Path(params["_root"]) / "params.yaml").write_text(yaml.safe_dump(p, allow_unicode=True))


@pytest.mark.parametrize("case, file, overrides, expected", [
    ("missing", None, {"ingest.input": "data/raw/nope.csv"}, ["nope.csv", "not found", "journeylab simulate"]),
    ("empty", "empty.csv", {}, ["empty.csv", "empty"]),
    ("header only", "header_only.csv", {}, ["header_only.csv", "no data rows"]),
    ("delimiter", "bom_semicolon.csv", {}, ["bom_semicolon.csv", "delimiter ','", "probably ';'-delimited",
                                            "ingest.csv.delimiter: ';'"]),
    ("column", "dirty.csv", {"ingest.columns.ts": "event_time"},
     ["dirty.csv", "'event_time'", "ingest.columns.ts", "Columns found: customer_id, timestamp, touchpoint"]),
    ("encoding", "cp1251.csv", {}, ["cp1251.csv", "utf-8", "cp1251", "latin-1", "utf-8-sig"]),
    ("not parquet", "not_parquet.parquet", {}, ["not_parquet.parquet", "not a readable Parquet file",
                                                "ingest.format: csv"]),
    ("malformed line", "malformed.csv", {}, ["malformed.csv", "line 4", "Expected Number of Columns: 3 Found: 4"]),
    ("all quarantined", "dirty.csv", {"window.start": "2030-01-01", "window.end": "2031-01-01"},
     ["dirty.csv", "all 19 rows were quarantined", "outside_window 13, missing_customer_id 2", "window.start"]),
])
def test_file_level_errors(project_factory, capsys, case, file, overrides, expected):
    params = _project(project_factory, file, **overrides)
    _save(params)
    with pytest.raises(InputError) as info:
        ingest.run_stage(params)
    msg = str(info.value)
    for text in expected:
        assert text in msg, (case, text, msg)
    assert "\n" not in msg.strip()                       # one paragraph
    code, err = _cli(params, capsys, "ingest")
    assert code == 2 and "Traceback" not in err and expected[0] in err
    if case == "all quarantined":   # the accounting is still written (and no stale clean events survive)
        root = Path(params["_root"])
        dq = json.loads((root / "metrics/data_quality.json").read_text())
        assert (dq["rows_clean"], dq["rows_quarantined"], dq["rows_duplicate"]) == (0, 17, 2)
        assert len(pd.read_parquet(root / "data/clean/quarantine.parquet")) == 19
        assert len(pd.read_parquet(root / "data/clean/events.parquet")) == 0


# ----------------------------------------------------------------------------- several files, parquet input

def test_folder_of_mixed_files_and_parquet_row_numbers(project_factory, tmp_path):
    params = _project(project_factory, None, **NO_EXTRAS)
    root = Path(params["_root"])
    folder = root / "data/raw/exports"
    folder.mkdir()
    shutil.copy(DATA / "timezones.csv", folder / "a.csv")   # 6 rows, event_id 0..5 (last one unparseable)
    pq.write_table(pa.table({
        "customer_id": ["p1", "p1", None, "p1"],
        "timestamp": pa.array([1709287200_000000, 1709287200_000000, 1709287200_000000, 1709290800_000000],
                              type=pa.timestamp("us")),                       # naive 2024-03-01 10:00 / 11:00
        "touchpoint": ["email", "email", "email", "website"],
    }), folder / "b.parquet")                                                   # 4 rows, event_id 6..9
    params["ingest"]["input"] = "data/raw/exports"
    m, ev, quar = _run(params)
    assert (m["rows_read"], m["rows_clean"], m["rows_quarantined"], m["rows_duplicate"]) == (10, 7, 2, 1)
    assert [f["file"] for f in m["files"]] == ["data/raw/exports/a.csv", "data/raw/exports/b.parquet"]
    assert [(f["rows_read"], f["rows_clean"]) for f in m["files"]] == [(6, 5), (4, 2)]
    assert quar.set_index("event_id")["reason"].to_dict() == {
        5: "unparseable_timestamp", 7: "duplicate", 8: "missing_customer_id"}
    assert quar.set_index("event_id").loc[8, "source_file"] == "data/raw/exports/b.parquet"
    assert quar.set_index("event_id").loc[8, "source_row"] == 3
    assert ev["event_id"].tolist() == [0, 1, 2, 3, 4, 6, 9]          # raw order kept across files
    p = ev.set_index("event_id")
    assert p.loc[9, "ts"] == _ts("2024-03-01 11:00") and p.loc[9, "kind"] == "touch"   # no event column mapped


# ----------------------------------------------------------------------------- validate

def test_validate_summary_writes_nothing(project_factory, capsys, monkeypatch):
    params = _project(project_factory, None)
    _save(params)
    monkeypatch.chdir(DATA)
    s = ingest.validate("dirty.csv", params)
    assert (s["rows_read"], s["rows_clean"], s["rows_quarantined"], s["rows_duplicate"]) == (19, 7, 10, 2)
    root = Path(params["_root"])
    assert not (root / "data/clean/events.parquet").exists() and not (root / "metrics/data_quality.json").exists()
    text = ingest.format_summary(s)
    assert "rows read:" in text and "missing_customer_id" in text and "c1" not in text   # no customer ids
    code = cli.main(["--params", str(root / "params.yaml"), "validate", "dirty.csv"])
    out = capsys.readouterr().out
    assert code == 0 and "rows clean:" in out and "unknown touchpoints (quarantine): tiktok 2" in out
    code, err = _cli(params, capsys, "validate", "missing.csv")
    assert code == 2 and "missing.csv" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- simulate -> ingest

def _simulator_available() -> bool:
    try:
        from journeylab import simulate  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _simulator_available(), reason="journeylab.simulate not there yet")
def test_simulate_then_ingest_matches_injected_dirty_rows(project_factory):
    from journeylab import simulate
    params = project_factory(**{"simulate.n_customers": 500, "simulate.dirty_fraction": 0.02,
                                "simulate.truth_mc_leads": 2000, "simulate.oracle_replicates": 2})  # truth precision irrelevant here
    simulate.run_stage(params)
    root = Path(params["_root"])
    truth = json.loads((root / "data/raw/truth.json").read_text())
    dirty = truth["dirty_rows"]
    m = ingest.run_stage(params)
    assert m["rows_read"] == m["rows_clean"] + m["rows_quarantined"] + m["rows_duplicate"]
    assert m["rows_read"] == truth["counts"]["rows_written"]
    assert m["rows_clean"] == truth["counts"]["events"]
    assert m["rows_duplicate"] == dirty["duplicate"]
    r = m["quarantined_by_reason"]
    assert r["missing_customer_id"] == dirty["missing_customer_id"]
    assert r["outside_window"] == dirty["out_of_window"]
    assert r["negative_revenue"] == dirty["negative_revenue"]
    assert r["score_out_of_scale"] == dirty["out_of_scale_score"]
    assert r["unknown_touchpoint"] == dirty["unknown_touchpoint"]
    assert m["rows_quarantined"] == dirty["total"] - dirty["duplicate"]
    assert min(dirty[k] for k in dirty if k != "total") > 0      # every kind exercised


# ----------------------------------------------------------------------------- property: reference model

def _expected_reason(row: dict, seen: set) -> str | None:
    """Pure-Python reference of the documented rules (default params, window 2024-01-01..2025-07-01)."""
    key = tuple(row.values())
    if key in seen:
        return "duplicate"
    seen.add(key)
    tp = row["touchpoint"].strip().lower().replace(" ", "_")
    checks = [
        ("missing_customer_id", not row["customer_id"].strip()),
        ("missing_timestamp", not row["timestamp"].strip()),
        ("unparseable_timestamp", row["timestamp"] == "bad"),
        ("outside_window", row["timestamp"].startswith("2023")),
        ("missing_touchpoint", not tp),
        ("unknown_touchpoint", tp == "tiktok"),
        ("unparseable_value", row["revenue"] == "x"),
        ("negative_revenue", row["revenue"] == "-1"),
        ("unparseable_score", row["score"] == "abc"),
        ("score_out_of_scale", row["score"] == "11" and row["survey"] in ("nps", "csat")
         or row["score"] == "0" and row["survey"] == "csat"),
    ]
    return next((r for r, bad in checks if bad), None)


@pytest.fixture(scope="module")
def property_params(tmp_path_factory):
    from conftest import make_project
    params = make_project(tmp_path_factory.mktemp("prop"), **{"ingest.extra_columns": []})
    return params


def test_reasons_match_reference_model(property_params, tmp_path_factory):
    import csv
    from hypothesis import HealthCheck, given, settings, strategies as st
    pools = {"customer_id": ["c1", "c2", " ", ""], "timestamp": ["2024-03-01 10:00:00", "2024-05-01T10:00:00+02:00",
                                                               "bad", "", "2023-06-01"],
             "touchpoint": ["email", "Paid Search", "tiktok", ""], "event_type": ["touch", "purchase", "nps_response"],
             "revenue": ["", "10", "-1", "x"], "score": ["", "5", "11", "0", "abc"], "survey": ["", "nps", "csat"]}
    row = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in pools.items()})

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(row, min_size=1, max_size=40))
    def check(rows):
        folder = tmp_path_factory.mktemp("case")
        path = folder / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(pools) + ["stage"])
            w.writeheader()
            w.writerows([{**r, "stage": ""} for r in rows])
        seen: set = set()
        expected = {i: _expected_reason(r, seen) for i, r in enumerate(rows)}
        out = {"events": folder / "e.parquet", "quarantine": folder / "q.parquet", "metrics": folder / "m.json"}
        m = ingest.ingest(property_params, input_spec=str(path), out=out, raise_if_all_quarantined=False)
        q = pd.read_parquet(out["quarantine"]).set_index("event_id")["reason"].to_dict()
        assert q == {i: r for i, r in expected.items() if r}
        assert pd.read_parquet(out["events"])["event_id"].tolist() == [i for i, r in expected.items() if r is None]
        assert m["rows_read"] == len(rows) == m["rows_clean"] + m["rows_quarantined"] + m["rows_duplicate"]
    check()
