"""Journey simulator: reproducibility, schema, and ground truth with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from journeylab import simulate as sm
from journeylab.config import load_params
from journeylab.errors import ConfigError

START, END = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2025-07-01", tz="UTC")


def _params(**overrides):
    base = {"simulate.truth_mc_leads": 20000}
    base.update(overrides)
    return load_params(overrides=base)


@pytest.fixture(scope="module")
def sim():
    """3000 customers in memory: (events, truth, truth_churn)."""
    return sm.simulate_events(_params(), n_customers=3000, seed=123, return_churn=True)


def _clean(events: pd.DataFrame) -> pd.DataFrame:
    """Rows that are not injected problems (dirty copies sit at their source row's time)."""
    e = events[events.customer_id.notna() & (events.timestamp >= START) & (events.timestamp < END)]
    e = e[~e.duplicated(keep="first")]
    e = e[~(e.revenue < 0) & e.touchpoint.isin(sm.model_from_params(_params())["channels"].keys() | set(sm.POST_TOUCHPOINTS))]
    return e[~((e.survey == "nps") & ~e.score.between(0, 10))]


# ----------------------------------------------------------------------------- files
def test_run_stage_byte_reproducible_and_schema(project_factory):
    hashes = []
    for seed in (5, 5, 6):
        params = project_factory(**{"simulate.n_customers": 300, "simulate.seed": seed, "simulate.truth_mc_leads": 2000})
        metrics = sm.run_stage(params)
        root = params["_root"]
        hashes.append((sm.file_sha256(f"{root}/data/raw/events.parquet"),
                       sm.file_sha256(f"{root}/data/raw/truth.json"),
                       sm.file_sha256(f"{root}/data/raw/truth_churn.parquet")))
    assert hashes[0] == hashes[1]
    assert all(a != b for a, b in zip(hashes[0], hashes[2]))
    schema = pq.read_schema(f"{root}/data/raw/events.parquet")
    assert schema.names == ["customer_id", "timestamp", "touchpoint", "event_type", "revenue", "score",
                            "survey", "stage", "segment", "platform", "campaign"]
    assert str(schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("customer_id").type) == "string"
    truth = json.loads(open(f"{root}/data/raw/truth.json").read())
    assert metrics["events"] == truth["counts"]["events"]
    assert pq.read_metadata(f"{root}/data/raw/events.parquet").num_rows == truth["counts"]["rows_written"]
    tc = pq.read_table(f"{root}/data/raw/truth_churn.parquet")
    assert tc.schema.names[:3] == ["cutoff", "customer_id", "true_risk"]


def test_chunking_does_not_change_the_log():
    p = _params(**{"simulate.truth_mc_leads": 1000})
    one, t1 = sm.simulate_events(p, n_customers=300, seed=9, chunk_customers=300)
    many, t2 = sm.simulate_events(p, n_customers=300, seed=9, chunk_customers=160)
    pd.testing.assert_frame_equal(one, many)
    assert t1["incremental_conversions"] == t2["incremental_conversions"]
    assert t1["churn"] == t2["churn"]


def test_events_inside_window_and_dirty_counts(sim):
    ev, truth, _ = sim
    d = truth["dirty_rows"]
    outside = (ev.timestamp < START) | (ev.timestamp >= END)
    assert outside.sum() == d["out_of_window"] > 0
    assert ev.customer_id.isna().sum() == d["missing_customer_id"] > 0
    assert (ev.revenue < 0).sum() == d["negative_revenue"] > 0
    nps_bad = (ev.survey == "nps") & ~ev.score.between(0, 10)
    assert nps_bad.sum() == d["out_of_scale_score"] > 0
    assert ev.touchpoint.isin(sm.UNKNOWN_TOUCHPOINTS).sum() == d["unknown_touchpoint"] > 0
    assert ev.duplicated(keep="first").sum() == d["duplicate"] > 0
    n = truth["counts"]["events"]
    assert len(ev) == n + d["total"] == truth["counts"]["rows_written"]
    # Binomial(n, dirty_fraction) total: within 4 standard deviations
    f = 0.002
    assert abs(d["total"] - n * f) < 4 * math.sqrt(n * f * (1 - f))
    assert ev.timestamp.dtype == "datetime64[us, UTC]"


# ----------------------------------------------------------------------------- lead phase
def test_conversion_time_is_exact_cox_inversion():
    """Vectorised inversion == a per-lead reference loop over the piecewise-constant hazard."""
    model = sm.model_from_params(_params())
    h = sm._Hash(77)
    n = 300
    cust = np.arange(n, dtype=np.int64)
    seg = np.zeros(n, dtype=np.int64)
    T = 5.0 + 200.0 * h.u(cust, 1000)
    E = -np.log(h.u(cust, 1001))
    arr = np.zeros(n, dtype=np.int64)
    tc = sm._generate_touches(h, cust, seg, T, arr, model)
    beta = np.array([c["beta"] for c in model["channels"].values()])
    h0 = np.full(n, 0.01)
    got = sm._conversion_times(tc, beta, h0, T, E)
    for i in range(n):
        rows = np.flatnonzero(tc.lead == i)
        times, chans = tc.time[rows], tc.chan[rows]
        assert times[0] == 0 and np.all(np.diff(times) > 0) and times[-1] < T[i]
        H, lp, expected = 0.0, 0.0, np.nan
        for j in range(len(rows)):
            lp += beta[chans[j]]
            end = times[j + 1] if j + 1 < len(rows) else T[i]
            rate = 0.01 * math.exp(lp)
            if H + rate * (end - times[j]) >= E[i]:
                expected = times[j] + (E[i] - H) / rate
                break
            H += rate * (end - times[j])
        if np.isnan(expected):
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert 50 < np.isfinite(got).sum() < n


def test_zero_betas_match_competing_risks_formula():
    """All beta = 0: P(convert by d) = h0/(h0+mu) * (1 - exp(-(h0+mu) d))."""
    h0, mu = 0.01, 0.02
    model = sm.model_from_params(_params(**{"simulate.model": {
        "channels": {c: {"beta": 0.0} for c in sm.DEFAULT_MODEL["channels"]},
        "segments": {s: {"h0": h0, "lost": mu} for s in sm.DEFAULT_MODEL["segments"]}}}))
    n = 40000
    leads = sm.simulate_leads(model, n, seed=3, horizon_days=1e5)
    for d in (30, 1e5):
        p = h0 / (h0 + mu) * (1 - math.exp(-(h0 + mu) * d))
        got = (leads.conv_time <= d).mean()
        assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / n), (d, got, p)
    # lost times ~ Exp(mu): mean 1/mu
    assert leads.lost_time.mean() == pytest.approx(1 / mu, rel=4 / math.sqrt(n))


def test_truth_cif_matches_in_sample(sim):
    _, truth, _ = sim
    n = truth["p_convert_by_day_in_sample_leads"]
    assert n > 2000
    for d in ("7", "30", "90"):
        p, q = truth["p_convert_by_day"][d], truth["p_convert_by_day_in_sample"][d]
        assert abs(p - q) < 4 * math.sqrt(p * (1 - p) / n) + 4 * math.sqrt(p * (1 - p) / 20000)
    assert truth["p_convert_by_day"]["7"] < truth["p_convert_by_day"]["30"] < truth["p_convert_by_day"]["90"]


def test_incremental_conversions_follow_the_betas(sim):
    ev, truth, _ = sim
    inc = truth["incremental_conversions"]
    assert inc["display"] == 0.0                      # beta = 0: switching it off changes nothing
    assert inc["referral"] > 30 and inc["sales_call"] > 30 and inc["email"] > 30
    assert inc["offer"] < 0                            # negative beta: conversions rise without it
    assert sum(truth["incremental_share"].values()) == pytest.approx(1.0)
    clean = _clean(ev)
    first = clean[(clean.event_type == "purchase") & (clean.stage == "purchase")]
    assert len(first) == first.customer_id.nunique() == truth["acquisition_conversions"]
    assert truth["conversions_all_channels_off"] < truth["acquisition_conversions"]


def test_lost_leads_and_lifecycle_rules(sim):
    ev, truth, _ = sim
    c = truth["counts"]
    share = c["leads_lost_explicit"] / c["leads_lost"]
    assert abs(share - 0.7) < 4 * math.sqrt(0.21 / c["leads_lost"])
    clean = _clean(ev).sort_values(["customer_id", "timestamp"], kind="stable")
    assert (clean.event_type == "lead_lost").sum() == c["leads_lost_explicit"]
    assert (clean.groupby("customer_id").stage.first() == "awareness").all()
    first_buy = clean[clean.stage == "purchase"].groupby("customer_id").timestamp.min()
    t = clean.join(first_buy.rename("t_buy"), on="customer_id")
    lead_stage = t.stage.isin(["awareness", "interest", "evaluation"]) & (t.event_type == "touch")
    assert not (lead_stage & (t.timestamp >= t.t_buy)).any()        # lead touches stop at purchase
    assert not ((t.stage == "loyalty") & ~(t.timestamp > t.t_buy)).any()
    post = {"billing", "transactional_email", "newsletter", "support", "complaint"}
    assert not (t.touchpoint.isin(post) & t.t_buy.isna()).any()
    end = clean[clean.event_type.isin(["cancellation", "lead_lost"])].groupby("customer_id").timestamp.max()
    t = clean.join(end.rename("t_end"), on="customer_id")
    assert not (t.timestamp > t.t_end).any()                           # nothing after dissolution


# ----------------------------------------------------------------------------- churn truth
def test_churn_oracle_is_calibrated_and_matches_truth(sim):
    """true_risk is an exact probability of the engine label: mean risk == mean label."""
    _, truth, tc = sim
    assert set(tc.columns) >= {"cutoff", "customer_id", "true_risk", "label"}
    r, y = tc.true_risk.to_numpy(), tc.label.to_numpy()
    assert ((r >= 0) & (r <= 1)).all()
    assert y[r == 1].all()                                 # already silently dissolved
    alive = r < 1
    se = math.sqrt((r[alive] * (1 - r[alive])).sum()) / alive.sum()
    assert abs(y[alive].mean() - r[alive].mean()) < 4 * se + 1e-3
    q = pd.qcut(r[alive], 4, labels=False, duplicates="drop")
    for k in np.unique(q):
        m = q == k
        assert abs(y[alive][m].mean() - r[alive][m].mean()) < 4 * math.sqrt((r[alive][m] * (1 - r[alive][m])).sum()) / m.sum() + 1e-3
    ev = tc[tc.cutoff == pd.Timestamp(truth["churn"]["eval_cutoff"], tz="UTC")]
    assert truth["churn"]["n_eval"] == len(ev) > 500
    assert truth["churn"]["oracle_auc"] == pytest.approx(roc_auc_score(ev.label, ev.true_risk))
    assert truth["churn"]["base_rate"] == pytest.approx(ev.label.mean())
    assert truth["churn"]["drivers"] == sm.DEFAULT_MODEL["post_purchase"]["drivers"]


def test_satisfaction_drives_surveys_and_complaints(sim):
    ev, _, _ = sim
    clean = _clean(ev)
    nps = clean[clean.survey == "nps"].groupby("customer_id").score.mean()
    comp = clean[clean.touchpoint == "complaint"].groupby("customer_id").size().reindex(nps.index, fill_value=0)
    low, high = comp[nps <= 5].mean(), comp[nps >= 9].mean()
    assert low > 2 * high
    assert clean[clean.survey == "csat"].score.between(1, 5).all()


def test_unknown_channel_in_model_is_a_config_error():
    with pytest.raises(ConfigError, match="tiktok"):
        sm.model_from_params(_params(**{"simulate.model": {"channels": {"tiktok": {"rate": 0.1, "beta": 0.1, "arrival_share": 0}}}}))


def test_truth_churn_population_and_labels_follow_the_engine_definitions(sim):
    """Recompute, from the events alone, the engine's active population and label at the eval cutoff."""
    ev, truth, tc = sim
    clean = _clean(ev)
    c = pd.Timestamp(truth["churn"]["eval_cutoff"], tz="UTC")
    H, inact = pd.Timedelta(days=truth["churn"]["horizon_days"]), pd.Timedelta(days=truth["churn"]["inactivity_days"])
    before, after = clean[clean.timestamp < c], clean[(clean.timestamp >= c) & (clean.timestamp < c + H)]
    g = before.groupby("customer_id")
    buyer = g.event_type.apply(lambda s: (s == "purchase").any())
    cancelled = g.event_type.apply(lambda s: s.isin(["cancellation", "lead_lost"]).any())
    recent = g.timestamp.max() >= c - inact
    active = buyer & ~cancelled & recent
    expected = set(active[active].index)
    got = tc[tc.cutoff == c].set_index("customer_id")
    assert set(got.index) == expected
    any_after = after.groupby("customer_id").size()
    cancel_after = after[after.event_type == "cancellation"].groupby("customer_id").size()
    label = ~got.index.isin(any_after.index) | got.index.isin(cancel_after.index)
    assert (got.label.to_numpy() == label).all()


def test_demo_media_costs_are_touches_times_unit_cost(small_project):
    import pandas as pd
    from journeylab.config import path
    raw = pd.read_parquet(path(small_project, small_project["simulate"]["output"]), columns=["touchpoint", "event_type"])
    costs = pd.read_csv(path(small_project, small_project["simulate"]["costs"])).set_index("touchpoint")
    unit = small_project["simulate"]["cost_per_touch"]
    assert set(costs.index) == set(unit)                      # only the paid touchpoints priced in params
    for tp, u in unit.items():
        n = int(((raw.touchpoint == tp) & (raw.event_type == "touch")).sum())
        assert costs.loc[tp, "touches"] == n and costs.loc[tp, "cost"] == pytest.approx(n * u, abs=0.01)
