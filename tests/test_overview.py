"""Journey-map numbers (overview.py) against hand-computed answers on tiny event logs."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest

from journeylab import overview


def _events(rows) -> ibis.Table:
    df = pd.DataFrame(rows, columns=["customer_id", "ts", "touchpoint", "kind", "value", "score", "survey",
                                     "stage", "phase"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")  # canonical: us, UTC
    df["value"] = df["value"].astype("float64")
    df["score"] = df["score"].astype("float64")
    for c in ("survey", "stage"):
        df[c] = df[c].astype("string")
    path = Path(tempfile.mkdtemp(prefix="jl-overview-")) / "events.parquet"
    df.to_parquet(path, index=False)
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    return con.read_parquet(str(path))


def _survey_rows(tp, survey, scores):
    return [(f"s{tp}{i}", "2024-02-01", tp, "survey", None, s, survey, None, "post_purchase")
            for i, s in enumerate(scores)]


def test_nps_hand_computed():
    # 10 answers: 5 promoters (9,10), 2 passives (7,8), 3 detractors (<=6) -> NPS = 50 - 30 = 20
    scores = [10, 9, 9, 10, 9, 8, 7, 6, 0, 3]
    t = overview.survey_scores(_events(_survey_rows("support", "nps", scores)), "nps")
    row = t[t["touchpoint"] == "support"].iloc[0]
    assert row["n"] == 10 and row["promoters"] == 5 and row["detractors"] == 3
    assert row["nps"] == pytest.approx(20.0)
    # Var = (0.5 + 0.3 - 0.2^2) / 10 = 0.076 -> half width 1.96 * sqrt(0.076) = 0.5403
    half = 1.959963984540054 * math.sqrt(0.076) * 100
    assert row["ci_low"] == pytest.approx(20 - half) and row["ci_high"] == pytest.approx(20 + half)
    assert t.iloc[-1]["touchpoint"] == "all touchpoints"


def test_csat_wilson_hand_computed():
    # 8 of 10 answers are 4 or 5 -> CSAT 0.8; Wilson 95% CI (0.4902, 0.9433)
    scores = [5, 5, 4, 4, 4, 5, 4, 4, 2, 3]
    t = overview.survey_scores(_events(_survey_rows("billing", "csat", scores)), "csat")
    row = t[t["touchpoint"] == "billing"].iloc[0]
    assert row["csat"] == pytest.approx(0.8)
    assert row["ci_low"] == pytest.approx(0.4902, abs=1e-4)
    assert row["ci_high"] == pytest.approx(0.9433, abs=1e-4)
    assert row["mean_score"] == pytest.approx(4.0)


def test_wilson_and_nps_edge_cases():
    assert all(math.isnan(v) for v in overview.wilson_ci(0, 0))
    lo, hi = overview.wilson_ci(0, 20)
    assert lo == 0.0 and 0 < hi < 0.2
    assert overview.nps(10, 0, 10) == (100.0, 100.0, 100.0)


def test_pareto_hand_computed():
    out = overview.pareto([1, 2, 3, 4, 10])
    # top 20% = 1 of 5 customers = 10 / 20 of revenue; Gini = 2*80/(5*20) - 6/5 = 0.4
    assert out["top_share"] == pytest.approx(0.5)
    assert out["gini"] == pytest.approx(0.4)
    c = out["curve"]
    assert c["revenue_share"].iloc[0] == 0 and c["revenue_share"].iloc[-1] == pytest.approx(1.0)
    equal = overview.pareto([5] * 10)
    assert equal["gini"] == pytest.approx(0.0) and equal["top_share"] == pytest.approx(0.2)
    assert overview.pareto([])["top_share"] is None


def test_rate_ratio_and_rating():
    rr, lo, hi = overview.rate_ratio(30, 100, 10, 100)
    assert rr == pytest.approx(3.0)
    se = math.sqrt(1 / 30 - 1 / 100 + 1 / 10 - 1 / 100)
    assert lo == pytest.approx(3 * math.exp(-1.959963984540054 * se))
    assert hi == pytest.approx(3 * math.exp(1.959963984540054 * se))


def _journey_log():
    """40 customers: 20 see `email` and 15 of them buy later; 20 do not and 2 buy. Complainers dissolve."""
    rows = []
    for i in range(40):
        cid = f"c{i:02d}"
        rows.append((cid, "2024-01-02", "social", "touch", None, None, None, "awareness", "pre_purchase"))
        if i < 20:
            rows.append((cid, "2024-01-05", "email", "touch", None, None, None, "interest", "pre_purchase"))
        buys = (i < 15) or (20 <= i < 22)
        if buys:
            rows.append((cid, "2024-01-10", "website", "conversion", 100.0 if i else 1000.0, None, None, "purchase", "purchase"))
            if i % 2 == 0:  # every second buyer complains, complainers all cancel later
                rows.append((cid, "2024-02-01", "complaint", "touch", None, None, None, "loyalty", "post_purchase"))
                rows.append((cid, "2024-03-01", "website", "dissolution", None, None, None, None, "post_purchase"))
    return rows


def test_touchpoints_by_phase_and_effects():
    ev = _events(_journey_log())
    tps = overview.touchpoints_by_phase(ev, taxonomy=["social", "email", "complaint"])
    email = tps.set_index("touchpoint").loc["email"]
    assert email["reach"] == 20 and email["reach_share"] == pytest.approx(0.5)
    assert email["conversion_rate"] == pytest.approx(15 / 20)
    assert list(tps["touchpoint"]) == ["social", "email", "complaint"]  # phase, then taxonomy order
    eff = overview.touchpoint_effects(ev, min_customers=5).set_index("touchpoint")
    # email: 15/20 touched vs 2/20 not touched buy later -> RR 7.5, positive
    assert eff.loc["email", "conversion_rr"] == pytest.approx(7.5)
    assert eff.loc["email", "rating"] == "positive"
    # complaint (post purchase, population = 17 buyers): 9 complainers all dissolve, 8 others none
    assert eff.loc["complaint", "touched"] == 9 and eff.loc["complaint", "not_touched"] == 8
    assert eff.loc["complaint", "dissolution_touched"] == 1.0
    assert eff.loc["complaint", "rating"] == "negative"
    assert "social" not in eff.index  # everyone saw social: no comparison group


def test_totals_concentration_funnel(tmp_path):
    ev = _events(_journey_log())
    tot = overview.totals(ev)
    assert tot["customers"] == 40 and tot["converters"] == 17 and tot["conversions"] == 17
    assert tot["revenue"] == pytest.approx(16 * 100 + 1000)
    conc = overview.revenue_concentration(ev)
    # 17 paying customers: top 20% = 3.4 customers = 1000 + 2*100 + 0.4*100 = 1240 of 2600
    assert conc["top_share"] == pytest.approx(1240 / 2600)
    f = overview.funnel({"_root": str(tmp_path)}, ev)
    assert list(f["stage"]) == ["awareness", "interest", "purchase", "loyalty"]
    # reached = got to the stage or a later one
    assert list(f["customers"]) == [40, 22, 17, 9]  # interest: 20 emailed + 2 buyers without email
    assert f["conversion_from_previous"].iloc[1] == pytest.approx(22 / 40)
    g = overview.funnel({"_root": str(tmp_path)}, ev.mutate(event_id=ibis.row_number().cast("int64")),
                        use_engine_table=False)           # a filtered view: the engine's definition on events
    # engine definition: reached = furthest stage is this one or later, so evaluation counts the 17 buyers
    assert list(g["stage"]) == ["awareness", "interest", "evaluation", "purchase", "loyalty"]
    assert list(g["customers"]) == [40, 22, 17, 17, 9] and "median_days_in_stage" in g
    vol = overview.volumes(ev, "month")
    assert vol.loc[vol["kind"] == "conversion", "events"].sum() == 17
    # partial periods: a log from 2024-01-10 to 2024-03-31 23:00 has a partial January only
    span = _events([("a", "2024-01-10 08:00", "email", "touch", None, None, None, None, "pre_purchase"),
                    ("a", "2024-02-15 08:00", "email", "touch", None, None, None, None, "pre_purchase"),
                    ("b", "2024-03-31 23:00", "email", "touch", None, None, None, None, "pre_purchase")])
    v = overview.volumes(span, "month").set_index("period")["partial"]
    assert v.to_dict() == {pd.Timestamp("2024-01-01"): True, pd.Timestamp("2024-02-01"): False,
                           pd.Timestamp("2024-03-01"): False}


def test_row_accounting():
    dq = {"rows_read": 110, "rows_clean": 100, "rows_quarantined": 7, "rows_duplicate": 3,
          "quarantined_by_reason": {"missing_customer_id": 5, "bad_timestamp": 2}}
    t = overview.row_accounting(dq)
    assert list(t["count"]) == [110, 100, 3, 7, 5, 2]
    assert overview.accounting_balanced(dq) is True
    assert overview.accounting_balanced({**dq, "rows_clean": 99}) is False
    assert overview.row_accounting(None) is None


def test_filter_events_by_dates_and_attributes():
    rows = [("a", "2024-01-05 10:00", "email", "touch", None, None, None, None, "pre_purchase"),
            ("a", "2024-02-01 00:00", "email", "touch", None, None, None, None, "pre_purchase"),
            ("b", "2024-02-10 23:59", "email", "touch", None, None, None, None, "pre_purchase"),
            ("b", "2024-02-11 00:00", "email", "touch", None, None, None, None, "pre_purchase")]
    ev = _events(rows)
    got = overview.filter_events(ev, date_from="2024-02-01", as_of="2024-02-10").to_pandas()
    assert list(got["customer_id"]) == ["a", "b"]                 # from 02-01 00:00 through the whole of 02-10
    only_b = overview.filter_events(ev, where={"customer_id": ["b"]}).to_pandas()
    assert len(only_b) == 2
    with pytest.raises(Exception, match="column 'segment' is not in the clean events"):
        overview.filter_events(ev, where={"segment": "smb"})


def test_report_filter_refuses_customer_ids():
    assert overview.report_filter({"segment": "smb"}) == {"segment": "smb"} and overview.report_filter(None) is None
    with pytest.raises(Exception, match="never single out customers"):
        overview.report_filter({"customer_id": "c1"})
