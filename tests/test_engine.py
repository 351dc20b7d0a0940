"""Engine tables against hand-computed answers on tiny logs (DuckDB, in memory)."""
from __future__ import annotations

import math

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet  # noqa: F401
import pytest

from journeylab import engine

D0 = pd.Timestamp("2024-01-01", tz="UTC")
PHASE = {"website": "purchase", "store": "purchase", "billing": "post_purchase", "complaint": "post_purchase"}
SCHEMA = pa.schema([("customer_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("touchpoint", pa.string()),
                    ("kind", pa.string()), ("value", pa.float64()), ("score", pa.float64()), ("survey", pa.string()),
                    ("stage", pa.string()), ("phase", pa.string()), ("channel_group", pa.string()),
                    ("paid", pa.bool_()), ("event_id", pa.int64()), ("segment", pa.string())])
PARAMS = {"window": {"start": "2024-01-01", "end": "2025-01-01"},
          "engine": {"lookback_days": 90, "study_start": "2024-03-01", "lost_inactivity_days": 60,
                     "markov_max_order": 3, "time_decay_half_life_days": 7},
          "churn": {"train_cutoffs": ["2024-03-01"], "eval_cutoff": None, "score_cutoff": None,
                    "horizon_days": 90, "inactivity_days": 90}}


def log(rows) -> pa.Table:
    """rows: (customer, day, touchpoint, kind='touch', value=None, extra dict) -> clean events."""
    recs = []
    for i, r in enumerate(rows):
        cust, day, tp = r[0], r[1], r[2]
        kind = r[3] if len(r) > 3 else "touch"
        value = r[4] if len(r) > 4 else None
        extra = r[5] if len(r) > 5 else {}
        phase = "unknown" if kind == "dissolution" else PHASE.get(tp, "pre_purchase")
        recs.append({"customer_id": cust, "ts": D0 + pd.Timedelta(days=day), "touchpoint": tp, "kind": kind,
                     "value": value, "score": extra.get("score"), "survey": extra.get("survey"),
                     "stage": extra.get("stage"), "phase": phase, "channel_group": "g", "paid": False,
                     "event_id": i, "segment": extra.get("segment")})
    return pa.Table.from_pylist(recs, schema=SCHEMA)


def run(fn, rows, **over):
    con = ibis.duckdb.connect()
    con.con.register("ev", rows if isinstance(rows, pa.Table) else log(rows))
    events = con.table("ev")
    opts = {**engine.options_from_params(PARAMS), **over}
    df = con.to_pyarrow(getattr(engine, fn)(events, **opts)).to_pandas()
    return df


# ----------------------------------------------------------------------------- journeys
JOURNEY_LOG = [
    ("c1", 0, "paid_search"), ("c1", 10, "email"), ("c1", 12, "billing", "touch", None, {"segment": "smb"}),
    ("c1", 20, "website", "conversion", 50.0), ("c1", 20, "social"),   # same time as conversion -> journey 1
    ("c1", 30, "display"),                                             # 220 days before conversion 2: outside lookback
    ("c1", 200, "referral"), ("c1", 250, "store", "conversion", 30.0), ("c1", 300, "email"),
    ("c2", 5, "website", "conversion", 10.0),                           # conversion without touches
]


def test_journeys_split_at_conversions_with_lookback():
    j = run("journeys", JOURNEY_LOG).sort_values(["customer_id", "journey_index"]).reset_index(drop=True)
    assert list(zip(j.customer_id, j.journey_index, j.journey_type)) == [
        ("c1", 1, "acquisition"), ("c1", 2, "repeat"), ("c1", 3, "repeat"), ("c2", 1, "acquisition")]
    assert list(j.n_touches) == [3, 1, 1, 0]
    assert list(j.first_touchpoint[:3]) == ["paid_search", "referral", "email"]
    assert list(j.last_touchpoint[:3]) == ["social", "referral", "email"]
    assert j.first_touchpoint.isna()[3]
    assert list(j.n_paid_search) == [1, 0, 0, 0] and "n_display" not in j.columns  # outside lookback
    assert list(j.n_email) == [1, 0, 1, 0] and list(j.n_social) == [1, 0, 0, 0]
    assert "n_billing" not in j.columns                    # post-purchase touches are not path touches
    assert list(j.converted) == [True, True, False, True]
    assert list(j.revenue) == [50.0, 30.0, 0.0, 10.0]
    assert list(j.duration_days) == [20.0, 50.0, 0.0, 0.0]
    assert j.start_ts[0] == D0 and j.end_ts[1] == D0 + pd.Timedelta(days=250)
    assert j.conversion_ts.isna()[2]
    assert list(j.segment) == ["smb", "smb", "smb", None]


def test_paths_aggregate_channelattribution_format():
    p = run("paths", JOURNEY_LOG).sort_values(["journey_type", "path"]).reset_index(drop=True)
    assert p.to_dict("records") == [
        {"journey_type": "acquisition", "path": "", "conversions": 1.0, "nulls": 0.0, "value": 10.0},
        {"journey_type": "acquisition", "path": "paid_search > email > social", "conversions": 1.0, "nulls": 0.0, "value": 50.0},
        {"journey_type": "repeat", "path": "email", "conversions": 0.0, "nulls": 1.0, "value": 0.0},
        {"journey_type": "repeat", "path": "referral", "conversions": 1.0, "nulls": 0.0, "value": 30.0}]


@pytest.mark.parametrize("collapse,last_n,expected", [
    (False, None, "a > a > b > a"), (True, None, "a > b > a"), (False, 2, "b > a"), (True, 2, "b > a"),
    (False, 3, "a > b > a")])
def test_path_options(collapse, last_n, expected):
    rows = [("x", 1, "a"), ("x", 2, "a"), ("x", 3, "b"), ("x", 4, "a"), ("x", 5, "website", "conversion", 1.0),
            ("y", 1, "a"), ("y", 1, "a")]  # y: two touches at the same time, not converted
    p = run("paths", rows, collapse_repeats=collapse, max_path_length=last_n)
    got = dict(zip(p.path, p.conversions))
    assert got[expected] == 1.0
    assert p.nulls.sum() == 1.0


# ----------------------------------------------------------------------------- transitions
TRANS_LOG = [("p", 1, "a"), ("p", 2, "a"), ("p", 3, "b"), ("p", 4, "website", "conversion", 5.0),
             ("q", 1, "a"), ("q", 2, "b"), ("q", 3, "a"), ("q", 4, "b")]
TRANS_EXPECTED = {
    1: {("(start)", "a"): 2, ("a", "b"): 3, ("b", "a"): 1, ("b", "(conversion)"): 1, ("b", "(null)"): 1},
    2: {("(start)", "a,a"): 1, ("a,a", "a,b"): 1, ("a,b", "(conversion)"): 1, ("(start)", "a,b"): 1,
        ("a,b", "b,a"): 1, ("b,a", "a,b"): 1, ("a,b", "(null)"): 1},
    3: {("(start)", "a,a,b"): 1, ("a,a,b", "(conversion)"): 1, ("(start)", "a,b,a"): 1,
        ("a,b,a", "b,a,b"): 1, ("b,a,b", "(null)"): 1},
}


def test_transitions_hand_computed_and_match_attribution():
    t = run("transitions", TRANS_LOG)
    for k, exp in TRANS_EXPECTED.items():
        sub = t[t.order == k]
        assert {(a, b): c for a, b, c in zip(sub.state_from, sub.state_to, sub["count"])} == exp
    attribution = pytest.importorskip("journeylab.attribution")
    p = run("paths", TRANS_LOG)
    for k in (1, 2, 3):
        ref = attribution.transition_counts(p, order=k)
        ref = {(a, b): float(c) for a, b, c in zip(ref.state_from, ref.state_to, ref["count"])}
        sub = t[t.order == k]
        assert {(a, b): c for a, b, c in zip(sub.state_from, sub.state_to, sub["count"])} == ref


def test_transitions_equal_attribution_on_random_paths():
    attribution = pytest.importorskip("journeylab.attribution")
    rng = np.random.default_rng(3)
    rows = []
    for c in range(60):
        n = int(rng.integers(1, 7))
        for i in range(n):
            rows.append((f"c{c}", i, str(rng.choice(["a", "b", "c"]))))
        if rng.random() < 0.5:
            rows.append((f"c{c}", n, "website", "conversion", 1.0))
    t = run("transitions", rows)
    p = run("paths", rows)
    p = p[p.journey_type == "acquisition"]
    for k in (1, 2, 3):
        ref = attribution.transition_counts(p, order=k).sort_values(["state_from", "state_to"]).reset_index(drop=True)
        sub = t[(t.order == k) & (t.journey_type == "acquisition")].sort_values(["state_from", "state_to"])
        assert list(zip(sub.state_from, sub.state_to)) == list(zip(ref.state_from, ref.state_to))
        assert np.allclose(sub["count"].to_numpy(), ref["count"].to_numpy())


# ----------------------------------------------------------------------------- coalitions, heuristics
def test_coalitions():
    c = run("coalitions", TRANS_LOG + [("r", 1, "b"), ("r", 2, "a"), ("r", 3, "store", "conversion", 7.0)])
    assert c.to_dict("records") == [{"journey_type": "acquisition", "coalition": "a,b", "n_touchpoints": 2,
                                     "journeys": 3, "conversions": 2.0, "value": 12.0}]


HEUR_LOG = [
    ("c1", 0, "x"), ("c1", 0, "website", "conversion", 10.0),
    ("c2", 0, "x"), ("c2", 7, "direct"), ("c2", 14, "website", "conversion", 20.0),
    ("c3", 0, "direct"), ("c3", 1, "y"), ("c3", 2, "z"), ("c3", 3, "y"), ("c3", 3, "website", "conversion", 40.0),
    ("c4", 0, "direct"), ("c4", 1, "direct"), ("c4", 2, "website", "conversion", 8.0),
    ("c5", 0, "x"),                                   # not converted: gets no credit
]


def test_heuristics_hand_computed():
    h = run("heuristics", HEUR_LOG)
    got = {(m, tp): c for m, tp, c in zip(h.model, h.touchpoint, h.conversions)}
    g = lambda m: {tp: round(v, 9) for (mm, tp), v in got.items() if mm == m and v > 1e-12}
    r = lambda d: {k: round(v, 9) for k, v in d.items()}
    assert g("first") == r({"x": 2, "direct": 2})
    assert g("last") == r({"x": 1, "direct": 2, "y": 1})
    assert g("last_non_direct") == r({"x": 2, "y": 1, "direct": 1})       # c4: all direct -> last touch
    assert g("linear") == r({"x": 1.5, "direct": 0.5 + 0.25 + 1, "y": 0.5, "z": 0.25})
    assert g("linear_unique") == r({"x": 1.5, "direct": 0.5 + 1 / 3 + 1, "y": 1 / 3, "z": 1 / 3})
    assert g("position_based") == r({"x": 1.5, "direct": 0.5 + 0.4 + 1, "y": 0.1 + 0.4, "z": 0.1})
    w3 = [2 ** (-3 / 7), 2 ** (-2 / 7), 2 ** (-1 / 7), 1.0]
    w4 = [2 ** (-2 / 7), 2 ** (-1 / 7)]
    assert g("time_decay") == r({"x": 1 + 0.25 / 0.75, "direct": 0.5 / 0.75 + w3[0] / sum(w3) + 1,
                                 "y": (w3[1] + w3[3]) / sum(w3), "z": w3[2] / sum(w3)})
    for m in engine.HEURISTIC_MODELS:
        sub = h[h.model == m]
        assert math.isclose(sub.conversions.sum(), 4.0) and math.isclose(sub.value.sum(), 78.0)
    v = {(m, tp): x for m, tp, x in zip(h.model, h.touchpoint, h.value)}
    assert math.isclose(v[("position_based", "y")], 0.5 * 40.0)
    assert math.isclose(v[("time_decay", "x")], 10.0 + 20.0 / 3)


# ----------------------------------------------------------------------------- survival, exposure
# study_start = day 60, window end = day 366, lost after 60 days without activity
SURV_LOG = [
    ("s1", 40, "email"), ("s1", 70, "social"), ("s1", 80, "website", "conversion", 5.0),   # late entry, converts
    ("s2", 100, "email"), ("s2", 110, "lead_lost", "dissolution"),                        # explicit loss
    ("s3", 100, "email"), ("s3", 150, "social"),                                          # lost by inactivity
    ("s4", 340, "email"), ("s4", 350, "email"),                                           # censored at window end
    ("s5", 10, "email"), ("s5", 20, "website", "conversion", 5.0),                        # ended before study start
    ("s6", 300, "social"), ("s6", 320, "lead_lost", "dissolution"), ("s6", 330, "website", "conversion", 1.0),
    ("s7", 50, "email"), ("s7", 55, "social"),                                            # lost at day 55 < study start
]


def test_survival_outcomes_and_late_entry():
    s = run("survival", SURV_LOG).set_index("customer_id").sort_index()
    assert list(s.index) == ["s1", "s2", "s3", "s4", "s6"]
    assert list(s.event) == [1, 2, 2, 0, 2]
    assert list(s.entry_days) == [20.0, 0.0, 0.0, 0.0, 0.0]
    assert list(s.duration_days) == [40.0, 10.0, 50.0, 26.0, 20.0]
    assert s.loc["s4", "end_ts"] == pd.Timestamp("2025-01-01", tz="UTC")
    assert s.loc["s1", "n_email"] == 1 and s.loc["s1", "n_social"] == 1
    assert (s.journey_type == "acquisition").all()


def test_exposure_intervals_and_cumulative_counts():
    x = run("exposure", SURV_LOG).sort_values(["customer_id", "start"])
    got = [(r.customer_id, r.start, r.stop, r.event, r.cum_email, r.cum_social) for r in x.itertuples()]
    assert got == [
        ("s1", 20.0, 30.0, 0, 1, 0), ("s1", 30.0, 40.0, 1, 1, 1),   # interval (0, 30] truncated at entry 20
        ("s2", 0.0, 10.0, 2, 1, 0),
        ("s3", 0.0, 50.0, 2, 1, 0),
        ("s4", 0.0, 10.0, 0, 1, 0), ("s4", 10.0, 26.0, 0, 2, 0),
        ("s6", 0.0, 20.0, 2, 0, 1)]


def test_survival_clock_not_truncated_by_attribution_lookback():
    # lead touched on day 70 and day 180, converts on day 200 (130 days after its first touch);
    # study_start 2024-03-01 is day 60, so there is no late entry
    rows = [("L", 70, "email"), ("L", 180, "social"), ("L", 200, "website", "conversion", 5.0)]
    j = run("journeys", rows)
    assert list(j.duration_days) == [20.0] and list(j.first_touchpoint) == ["social"]   # attribution: lookback 90
    s = run("survival", rows)
    assert list(s.duration_days) == [130.0] and list(s.first_touchpoint) == ["email"] and list(s.event) == [1]
    x = run("exposure", rows).sort_values("start")
    assert [(r.start, r.stop, r.event, r.cum_email, r.cum_social) for r in x.itertuples()] == [
        (0.0, 110.0, 0, 1, 0), (110.0, 130.0, 1, 1, 1)]
    s30 = run("survival", rows, survival_lookback_days=30.0)   # an explicit survival lookback still applies
    assert list(s30.duration_days) == [20.0]


# ----------------------------------------------------------------------------- customer features
FEAT_LOG = [
    ("k", 0, "paid_search", "touch", None, {"segment": "smb"}),
    ("k", 20, "website", "conversion", 100.0, {"stage": "purchase"}),
    ("k", 40, "website", "survey", None, {"survey": "nps", "score": 9.0}),
    ("k", 45, "website", "survey", None, {"survey": "nps", "score": 3.0}),
    ("k", 50, "complaint"),
    ("k", 55, "email", "touch", None, {"stage": "loyalty"}),
    ("k", 59.5, "website", "conversion", 50.0),
    ("k", 60, "social", "touch", None, {"stage": "awareness"}),     # at the cutoff: label side only
    ("k", 100, "cancellation", "dissolution"),
    ("m", 61, "email"),                                             # only after the cutoff: no row
    ("n", 10, "email"),
]


def test_customer_features_hand_computed():
    f = run("customer_features", FEAT_LOG).set_index("customer_id")
    assert sorted(f.index) == ["k", "n"]
    k = f.loc["k"]
    assert k.cutoff == pd.Timestamp("2024-03-01", tz="UTC")
    exp = {"recency_days": 0.5, "days_since_last_activity": 0.5, "frequency": 2, "days_since_first_purchase": 40.0,
           "monetary_total": 150.0, "monetary_mean": 75.0, "tenure_days": 60.0, "touches_paid_search_7d": 0,
           "touches_paid_search_30d": 0, "touches_paid_search_90d": 1, "touches_email_7d": 1,
           "touches_complaint_7d": 0, "touches_complaint_30d": 1, "touches_pre_purchase_90d": 2,
           "touches_post_purchase_30d": 1, "touches_social_7d": 0, "last_nps": 3.0, "n_surveys": 2,
           "complaints_90d": 1, "complaints_total": 1, "current_stage": "loyalty", "segment": "smb",
           "is_customer": True, "active_at_cutoff": True, "label_observable": True,
           "dissolved_within_horizon": True, "days_to_dissolution": 40.0, "dissolution_observed": True}
    assert {c: k[c] for c in exp} == exp
    assert pd.isna(k.last_csat)
    n = f.loc["n"]
    assert pd.isna(n.recency_days) and n.frequency == 0 and not n.is_customer and not n.active_at_cutoff
    assert n.days_since_last_activity == 50.0 and n.dissolved_within_horizon == True  # noqa: E712
    assert n.days_to_dissolution == 0.0 and n.dissolution_observed == True  # noqa: E712


def test_label_null_when_horizon_passes_window_end():
    f = run("customer_features", FEAT_LOG, cutoffs=["2024-12-01"])
    assert not f.label_observable.any() and f.dissolved_within_horizon.isna().all()


def _random_log(seed=5, n_cust=40, n_events=1200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tps = ["paid_search", "email", "social", "complaint", "website"]
    kinds = rng.choice(["touch", "conversion", "dissolution", "survey"], n_events, p=[0.8, 0.1, 0.03, 0.07])
    rows = []
    for i in range(n_events):
        kind = str(kinds[i])
        extra = {"segment": str(rng.choice(["a", "b"])), "stage": str(rng.choice(["awareness", "interest", "purchase"]))}
        if kind == "survey":
            extra.update(survey=str(rng.choice(["nps", "csat"])), score=float(rng.integers(1, 6)))
        rows.append((f"c{rng.integers(n_cust)}", float(rng.uniform(0, 300)), str(rng.choice(tps)), kind,
                     float(rng.uniform(1, 100)) if kind == "conversion" else None, extra))
    return log(rows).to_pandas()


def _post_cutoff_variants(base: pd.DataFrame, cut) -> list[pd.DataFrame]:
    """Logs that differ from ``base`` only in events at/after ``cut``."""
    post = base.ts >= cut
    rng = np.random.default_rng(1)
    variants = []
    v = base[~post | (rng.random(len(base)) < 0.3)]                                   # delete most post-cutoff events
    variants.append(v)
    v = base.copy()                                                                    # shuffle post-cutoff contents
    for col in ["touchpoint", "kind", "value", "score", "survey", "stage", "segment"]:
        v.loc[post, col] = rng.permutation(v.loc[post, col].to_numpy())
    variants.append(v)
    v = base.copy()                                                                    # move post-cutoff events later
    v.loc[post, "ts"] = v.loc[post, "ts"] + pd.Timedelta(days=3)
    v.loc[post, "customer_id"] = rng.permutation(v.loc[post, "customer_id"].to_numpy())
    variants.append(v)
    return variants


def test_features_do_not_leak_post_cutoff_events():
    base = _random_log()
    cut = pd.Timestamp("2024-06-01", tz="UTC")
    variants = _post_cutoff_variants(base, cut)
    opts = {"cutoffs": [str(cut.date())]}
    ref = run("customer_features", pa.Table.from_pandas(base, schema=SCHEMA, preserve_index=False), **opts)
    feat_cols = [c for c in ref.columns if c not in engine.FEATURE_LABEL_COLUMNS]
    ref = ref.sort_values("customer_id").reset_index(drop=True)
    labels_changed = False
    for v in variants:
        got = run("customer_features", pa.Table.from_pandas(v, schema=SCHEMA, preserve_index=False), **opts)
        got = got.sort_values("customer_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(got[feat_cols], ref[feat_cols])
        labels_changed |= not got.dissolved_within_horizon.equals(ref.dissolved_within_horizon)
    assert labels_changed   # the perturbations are real: labels do see post-cutoff events


# ----------------------------------------------------------------------------- customer features = reference
def reference_customer_attributes(events, attrs):
    """First non-null value per customer by (ts, event_id) with a row_number window (reference)."""
    e = engine.journey_events(events)
    out = e.select("customer_id").distinct()
    for a in attrs:
        f = e.filter(e[a].notnull())
        w = ibis.window(group_by=f.customer_id, order_by=[f.ts, f.event_id])
        f = f.mutate(_rn=ibis.row_number().over(w))
        f = f.filter(f._rn == 0).select("customer_id", a, **{f"{a}__t": f.t})
        out = out.left_join(f, "customer_id").select(out, f[a], f[f"{a}__t"])
    return out


def reference_customer_features(events, **opts):
    """The straightforward formulation (events x cutoffs, one conditional sum per feature),
    kept as the reference for the near-one-pass engine.customer_features."""
    e = engine.journey_events(events)
    tps = opts.get("all_touchpoints")
    if tps is None:
        tps = engine.discover_touchpoints(e)
    attrs = opts.get("attrs")
    if attrs is None:
        attrs = engine.attribute_columns(events)
    ca = opts.get("customer_attrs")
    ca = engine.customer_attributes(e, attrs) if ca is None else ca
    windows = [int(x) for x in opts.get("feature_windows_days", [7, 30, 90])]
    H = float(opts.get("horizon_days", 90)) * engine.SECONDS_PER_DAY
    inact = float(opts.get("inactivity_days", 90)) * engine.SECONDS_PER_DAY
    wend = engine._epoch(opts["window_end"])
    from journeylab.schema import PHASES
    import pandas as pd
    cuts = sorted(str(x) for x in opts["cutoffs"])
    cm = ibis.memtable(pd.DataFrame({
        "cutoff": pd.to_datetime(cuts, utc=True).astype("datetime64[us, UTC]"),
        "_c": [engine._epoch(x) for x in cuts]}))
    # events x cutoffs (a handful of cutoffs): one aggregation for every cutoff
    x0 = e.select("customer_id", "ts", "t", "kind", "touchpoint", "phase", "value", "survey", "score",
                  "stage", "event_id").cross_join(cm)
    c = x0._c
    pre = x0.ts < x0.cutoff
    post = ~pre
    conv, touch, diss = x0.kind == "conversion", x0.kind == "touch", x0.kind == "dissolution"
    feats = {}
    for tp in tps:
        for w in windows:
            feats[f"touches_{engine.safe_name(tp)}_{w}d"] = (pre & touch & (x0.touchpoint == tp)
                                                      & (x0.t >= c - w * engine.SECONDS_PER_DAY)).cast("int64").sum().cast("int64")
    for ph in PHASES:
        for w in windows:
            feats[f"touches_{ph}_{w}d"] = (pre & touch & (x0.phase == ph)
                                           & (x0.t >= c - w * engine.SECONDS_PER_DAY)).cast("int64").sum().cast("int64")
    a = x0.group_by(["cutoff", "_c", "customer_id"]).aggregate(
        _n_pre=pre.cast("int64").sum().cast("int64"),
        _first_t=x0.t.min(where=pre), _last_t=x0.t.max(where=pre),
        _last_conv=x0.t.max(where=pre & conv), _first_conv=x0.t.min(where=pre & conv),
        frequency=(pre & conv).cast("int64").sum().cast("int64"),
        monetary_total=ibis.coalesce(x0.value.sum(where=pre & conv), 0.0),
        monetary_mean=x0.value.mean(where=pre & conv),
        n_surveys=(pre & (x0.kind == "survey")).cast("int64").sum().cast("int64"),
        complaints_90d=(pre & touch & (x0.touchpoint == "complaint")
                        & (x0.t >= c - 90 * engine.SECONDS_PER_DAY)).cast("int64").sum().cast("int64"),
        complaints_total=(pre & touch & (x0.touchpoint == "complaint")).cast("int64").sum().cast("int64"),
        _last_diss=x0.t.max(where=pre & diss),
        **feats,
        _diss_after=x0.t.min(where=post & diss),
        _n_in_h=(post & (x0.t < c + H)).cast("int64").sum().cast("int64"),
        _diss_in_h=(post & diss & (x0.t < c + H)).cast("int64").sum().cast("int64"),
        _last_seen=x0.t.max(),
    )
    a = a.filter(a._n_pre > 0)
    keys = ["cutoff", "customer_id"]
    # last survey answers and current stage (events before the cutoff)
    sv = x0.filter((x0.ts < x0.cutoff) & (x0.kind == "survey") & x0.survey.isin(["nps", "csat"])
                   & x0.score.notnull())
    ws = ibis.window(group_by=[sv.cutoff, sv.customer_id, sv.survey],
                     order_by=[ibis.desc(sv.ts), ibis.desc(sv.event_id)])
    sv = sv.mutate(_rn=ibis.row_number().over(ws))
    sv = sv.filter(sv._rn == 0)
    last_s = sv.group_by(keys).aggregate(
        last_nps=sv.score.max(where=sv.survey == "nps"), last_csat=sv.score.max(where=sv.survey == "csat"))
    st = x0.filter((x0.ts < x0.cutoff) & x0.stage.notnull())
    wst = ibis.window(group_by=[st.cutoff, st.customer_id], order_by=[ibis.desc(st.ts), ibis.desc(st.event_id)])
    st = st.mutate(_rn=ibis.row_number().over(wst))
    st = st.filter(st._rn == 0).select(*keys, current_stage=st.stage)
    x = a.left_join(last_s, keys).select(a, last_s.last_nps, last_s.last_csat)
    x = x.left_join(st, keys).select(x, st.current_stage)
    x = x.left_join(ca, "customer_id").select(
        x, **{at: ibis.ifelse(ca[f"{at}__t"] < x._c, ca[at], ibis.null("string")) for at in attrs})
    c = x._c
    is_cust = x.frequency > 0
    dissolved = x._last_diss.notnull() & (x._last_conv.isnull() | (x._last_diss > x._last_conv))
    dsla = (c - x._last_t) / engine.SECONDS_PER_DAY
    observable = (c + H) <= wend
    label = ibis.ifelse(observable, (x._diss_in_h > 0) | (x._n_in_h == 0), ibis.null("boolean"))
    gone = (wend - x._last_seen) > inact
    ddays = ibis.cases((x._diss_after.notnull(), engine._days(x._diss_after, c)),
                       (gone, ibis.greatest(engine._days(x._last_seen, c), 0.0)),
                       else_=(wend - c) / engine.SECONDS_PER_DAY)
    x = x.mutate(
        recency_days=engine._days(c, x._last_conv), days_since_last_activity=dsla,
        days_since_first_purchase=engine._days(c, x._first_conv), tenure_days=engine._days(c, x._first_t),
        is_customer=is_cust, active_at_cutoff=is_cust & ~dissolved & (dsla <= inact / engine.SECONDS_PER_DAY),
        label_observable=observable, dissolved_within_horizon=label,
        days_to_dissolution=ddays, dissolution_observed=x._diss_after.notnull() | gone)
    cols = ["cutoff", "customer_id", "recency_days", "days_since_last_activity", "frequency",
            "days_since_first_purchase", "monetary_total", "monetary_mean", "tenure_days", *feats,
            "last_nps", "last_csat", "n_surveys", "complaints_90d", "complaints_total", "current_stage",
            *attrs, "is_customer", "active_at_cutoff", "label_observable", "dissolved_within_horizon",
            "days_to_dissolution", "dissolution_observed"]
    return x.select(*cols)


def _both_features(table: pa.Table, **over):
    """(engine.customer_features, reference) on the same log, sorted by (cutoff, customer_id)."""
    con = ibis.duckdb.connect()
    con.con.register("ev", table)
    events = con.table("ev")
    opts = {**engine.options_from_params(PARAMS), **over}
    ref_opts = {**opts, "customer_attrs": reference_customer_attributes(events, engine.attribute_columns(events))}
    got = con.to_pyarrow(engine.customer_features(events, **opts)).to_pandas()
    ref = con.to_pyarrow(reference_customer_features(events, **ref_opts)).to_pandas()
    key = ["cutoff", "customer_id"]
    return (got.sort_values(key).reset_index(drop=True), ref.sort_values(key).reset_index(drop=True))


def _assert_same_features(got, ref):
    assert list(got.columns) == list(ref.columns)
    assert len(got) == len(ref) > 0
    for c in got.columns:
        a, b = got[c], ref[c]
        assert a.isna().equals(b.isna()), c
        if a.dtype.kind == "f":
            assert np.allclose(a[a.notna()].to_numpy(), b[b.notna()].to_numpy(), rtol=1e-12, atol=1e-9), c
        else:
            assert (a[a.notna()].to_numpy() == b[b.notna()].to_numpy()).all(), c
        assert a.dtype == b.dtype, c


BOUNDARY_CUTOFFS = ["2024-03-01", "2024-05-01", "2024-06-01", "2024-08-15"]


def _boundary_log(seed=11) -> pd.DataFrame:
    """Random log plus events exactly at cutoffs, at cutoff - 7/30/90 days, at cutoff + horizon,
    same-time surveys (ties broken by event_id) and customers seen only after some cutoff."""
    base = _random_log(seed=seed, n_cust=30, n_events=900)
    rows = []
    for c in BOUNDARY_CUTOFFS:
        d = (pd.Timestamp(c, tz="UTC") - D0).days
        for cust in ("b1", "b2"):
            for off in (0, -7, -30, -90, 90, -1e-6):
                rows.append((cust, d + off, "complaint" if off == -90 else "email"))
            rows.append((cust, d - 2, "website", "survey", None, {"survey": "nps", "score": 4.0}))
            rows.append((cust, d - 2, "website", "survey", None, {"survey": "nps", "score": 8.0}))
            rows.append((cust, d - 3, "website", "survey", None, {"survey": "csat", "score": 2.0}))
            rows.append((cust, d - 1, "store", "conversion", 20.0, {"stage": "purchase", "segment": "z"}))
        rows.append(("b2", d, "cancellation", "dissolution"))
        rows.append(("late_" + c, d + 1, "email", "touch", None, {"segment": "late"}))
    extra = log(rows).to_pandas()
    extra["event_id"] += len(base)
    return pd.concat([base, extra], ignore_index=True)


def test_customer_features_equal_reference_random_log():
    tbl = pa.Table.from_pandas(_boundary_log(), schema=SCHEMA, preserve_index=False)
    got, ref = _both_features(tbl, cutoffs=BOUNDARY_CUTOFFS)
    _assert_same_features(got, ref)
    assert got.cutoff.nunique() == len(BOUNDARY_CUTOFFS) and got.last_nps.notna().any()


def test_customer_features_equal_reference_after_post_cutoff_changes():
    base = _boundary_log(seed=12)
    cut = pd.Timestamp("2024-06-01", tz="UTC")
    for v in _post_cutoff_variants(base, cut):
        tbl = pa.Table.from_pandas(v, schema=SCHEMA, preserve_index=False)
        got, ref = _both_features(tbl, cutoffs=BOUNDARY_CUTOFFS)
        _assert_same_features(got, ref)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A small simulated project run through simulate -> ingest (clean events only)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_project, run_stages
    root = tmp_path_factory.mktemp("engine_sim")
    params = make_project(root, **{"simulate.n_customers": 150})
    run_stages(params, ("simulate", "ingest"))
    return root, params


def test_customer_features_equal_reference_simulated(simulated):
    root, params = simulated
    tbl = pa.parquet.read_table(str(root / "data/clean/events.parquet"))
    got, ref = _both_features(tbl, **{k: v for k, v in engine.options_from_params(params).items()
                                      if k in ("cutoffs", "window_end", "horizon_days", "inactivity_days")})
    _assert_same_features(got, ref)
    assert got.cutoff.nunique() == len(engine.options_from_params(params)["cutoffs"])


def test_build_equals_table_functions(simulated):
    """build_all (shared materialised base tables, journey window over path touches /
    conversions / dissolutions only, both touch numberings from one window) gives the same
    tables as calling every table function on the plain events."""
    root, params = simulated
    p = {**params, "backend": {**params["backend"], "duckdb_path": "data/interim/test_build.duckdb"}}
    out = engine.build_all(p)
    con = ibis.duckdb.connect()
    events = con.read_parquet(str(root / "data/clean/events.parquet"))
    opts = engine.options_from_params(params)
    for name in engine.TABLES:
        keys = engine._SORT_KEYS[name]
        direct = con.to_pyarrow(getattr(engine, name)(events, **opts)).to_pandas()
        built = pd.read_parquet(out[name])
        assert len(built) == len(direct) > 0, name
        direct = direct[list(built.columns)].sort_values(keys).reset_index(drop=True)
        built = built.sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(built, direct, check_dtype=False, check_exact=False, rtol=1e-12, atol=1e-9)


# ----------------------------------------------------------------------------- funnel
def test_funnel_numbers():
    st = lambda s: {"stage": s}
    rows = [("f1", 0, "a", "touch", None, st("awareness")), ("f1", 2, "a", "touch", None, st("interest")),
            ("f1", 10, "website", "conversion", 1.0, st("purchase")),
            ("f2", 0, "a", "touch", None, st("awareness")), ("f2", 5, "a", "touch", None, st("interest")),
            ("f3", 1, "a", "touch", None, st("awareness")),
            ("f4", 0, "a", "touch", None, st("interest")), ("f4", 4, "a", "touch", None, st("evaluation")),
            ("f5", 3, "a")]
    f = run("funnel", rows).sort_values("stage_order")
    assert list(f.stage) == ["awareness", "interest", "evaluation", "purchase", "loyalty"]
    assert list(f.customers) == [4, 3, 2, 1, 0]
    assert np.allclose(f.conversion_from_previous.to_numpy()[1:], [0.75, 2 / 3, 0.5, 0.0])
    assert np.allclose(f.drop_off_from_previous.to_numpy()[1:], [0.25, 1 / 3, 0.5, 1.0])
    assert pd.isna(f.conversion_from_previous.iloc[0])
    assert list(f.median_days_in_stage[:2]) == [3.5, 6.0] and list(f.mean_days_in_stage[:2]) == [3.5, 6.0]
    assert f.median_days_in_stage[2:].isna().all()


def test_load_events_errors(tmp_path):
    con = ibis.duckdb.connect()
    with pytest.raises(engine.InputError, match="journeylab ingest"):
        engine.load_events(con, tmp_path / "missing.parquet")
    pd.DataFrame({"customer_id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(engine.InputError, match="ts"):
        engine.load_events(con, tmp_path / "bad.parquet")
