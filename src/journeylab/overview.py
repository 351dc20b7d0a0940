"""Journey-map numbers for the overview report: Ibis aggregations over clean events and engine tables.

Each function returns a compact pandas table or dict (aggregates only, never customer rows).
Sections whose data is absent return ``None``; the report then says so in one line.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .config import get, path as project_path

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------- inputs

def load_events(params: dict):
    """Clean events as an Ibis table (engine backend when available, else embedded DuckDB); None if absent."""
    p = project_path(params, get(params, "engine.input", get(params, "ingest.output", "data/clean/events.parquet")))
    if not p.exists():
        return None
    import copy
    q = copy.deepcopy(params)
    if str(get(q, "backend.name", "duckdb")).lower() == "duckdb":
        q.setdefault("backend", {})["duckdb_path"] = ":memory:"  # reports never lock the pipeline's database file
    try:
        from . import engine
    except ImportError:  # engine not installed yet: plain embedded DuckDB
        import ibis
        con = ibis.duckdb.connect()
        con.raw_sql("SET TimeZone = 'UTC'")
        return con.read_parquet(str(p))
    return engine.load_events(engine.connect(q), str(p))


def filter_events(events, *, date_from: str | None = None, as_of: str | None = None,
                  where: dict | None = None):
    """Events with ``date_from <= ts`` and ``ts < as_of + 1 day`` (UTC dates, both optional) and
    attribute filters ``where`` = {column: value or list of values}, e.g. {"segment": "smb"}.

    Raises InputError naming the column when a filter column is not in the events."""
    import datetime as _dt

    import ibis

    from .errors import InputError
    e = events
    if date_from:
        e = e.filter(e.ts >= ibis.timestamp(str(_dt.date.fromisoformat(str(date_from)[:10])), timezone="UTC"))
    if as_of:
        end = _dt.date.fromisoformat(str(as_of)[:10]) + _dt.timedelta(days=1)
        e = e.filter(e.ts < ibis.timestamp(str(end), timezone="UTC"))
    for col, val in (where or {}).items():
        if col not in e.columns:
            raise InputError(f"report filter: column '{col}' is not in the clean events (columns: "
                             f"{', '.join(e.columns)}). Map it in ingest.extra_columns or fix the notebook parameter.")
        vals = [str(v) for v in (val if isinstance(val, (list, tuple, set)) else [val])]
        e = e.filter(e[col].cast("string").isin(vals))
    return e


def report_filter(where: dict | None) -> dict | None:
    """A notebook's ``segment_filter`` checked for sharing: its values are printed in the report,
    so filtering on ``customer_id`` (a customer identifier) is refused with a ConfigError."""
    from .errors import ConfigError
    if where and "customer_id" in where:
        raise ConfigError("segment_filter: reports never single out customers, so customer_id cannot be a "
                          "report filter. Filter on an attribute such as segment, platform or campaign.")
    return where


def journey_table(params: dict, name: str) -> pd.DataFrame | None:
    """An engine table ``data/journeys/<name>.parquet`` as pandas (compact tables only), None if absent."""
    p = project_path(params, get(params, "engine.output_dir", "data/journeys")) / f"{name}.parquet"
    return pd.read_parquet(p) if p.exists() else None


# ----------------------------------------------------------------------------- statistics

def wilson_ci(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (NaNs when n == 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def nps(promoters: float, detractors: float, n: float, z: float = Z95) -> tuple[float, float, float]:
    """Net promoter score in points (-100..100) with a normal CI from the multinomial variance.

    NPS = 100 (p_P - p_D); Var = (p_P + p_D - (p_P - p_D)^2) / n.
    """
    if n <= 0:
        return (math.nan, math.nan, math.nan)
    pp, pd_ = promoters / n, detractors / n
    score = pp - pd_
    se = math.sqrt(max(pp + pd_ - score * score, 0.0) / n)
    return (100 * score, 100 * max(-1.0, score - z * se), 100 * min(1.0, score + z * se))


def rate_ratio(a: float, n1: float, c: float, n0: float, z: float = Z95) -> tuple[float, float, float]:
    """Risk ratio (a/n1)/(c/n0) with a log-normal CI; 0.5 added to every cell when a or c is zero."""
    if n1 <= 0 or n0 <= 0:
        return (math.nan, math.nan, math.nan)
    if a == 0 or c == 0:
        a, c, n1, n0 = a + 0.5, c + 0.5, n1 + 1, n0 + 1
    rr = (a / n1) / (c / n0)
    se = math.sqrt(max(1 / a - 1 / n1 + 1 / c - 1 / n0, 0.0))
    return (rr, rr * math.exp(-z * se), rr * math.exp(z * se))


def pareto(revenue: Any, top: float = 0.2, points: int = 201) -> dict:
    """Revenue concentration of per-customer totals: top-share, Gini and a downsampled Lorenz curve.

    ``top_share`` = revenue share of the top ``top`` fraction of customers (linear interpolation
    between customers); curve: customer_share (largest first) vs cumulative revenue_share.
    """
    x = np.sort(np.asarray(revenue, dtype=float))[::-1]
    x = x[np.isfinite(x)]
    n, total = len(x), float(x.sum()) if len(x) else 0.0
    if n == 0 or total <= 0:
        return {"customers": n, "revenue": total, "top_share": None, "gini": None, "curve": None}
    cum = np.concatenate([[0.0], np.cumsum(x) / total])
    pop = np.arange(n + 1) / n
    asc = x[::-1]
    gini = float(2 * np.sum(np.arange(1, n + 1) * asc) / (n * total) - (n + 1) / n)
    grid = np.linspace(0, 1, min(points, n + 1))
    curve = pd.DataFrame({"customer_share": grid, "revenue_share": np.interp(grid, pop, cum)})
    return {"customers": n, "revenue": total, "top_share": float(np.interp(top, pop, cum)), "gini": gini,
            "curve": curve}


# ----------------------------------------------------------------------------- sections

def row_accounting(dq: dict | None) -> pd.DataFrame | None:
    """Where every raw row went (read = clean + quarantined + duplicates), with quarantine reasons."""
    if not dq:
        return None
    rows = [("rows read", dq.get("rows_read")), ("clean rows (used)", dq.get("rows_clean")),
            ("duplicates removed", dq.get("rows_duplicate")), ("quarantined", dq.get("rows_quarantined"))]
    for reason, n in sorted((dq.get("quarantined_by_reason") or {}).items(), key=lambda kv: -(kv[1] or 0)):
        if not n:
            continue
        rows.append((f"  quarantined: {reason.replace('_', ' ')}", n))
    out = pd.DataFrame(rows, columns=["rows", "count"])
    read = dq.get("rows_read") or 0
    out["share_of_read"] = [(v or 0) / read if read else math.nan for v in out["count"]]
    return out


def accounting_balanced(dq: dict | None) -> bool | None:
    """True when rows_read == rows_clean + rows_quarantined + rows_duplicate."""
    if not dq or dq.get("rows_read") is None:
        return None
    return dq["rows_read"] == (dq.get("rows_clean") or 0) + (dq.get("rows_quarantined") or 0) + (dq.get("rows_duplicate") or 0)


def totals(events) -> dict:
    """Events, customers, conversions, converting customers, revenue, dissolutions, surveys."""
    import ibis
    e = events
    agg = e.aggregate(
        events=e.count(),
        customers=e.customer_id.nunique(),
        conversions=(e.kind == "conversion").sum(),
        converters=ibis.cases((e.kind == "conversion", e.customer_id), else_=ibis.null()).nunique(),
        revenue=ibis.cases((e.kind == "conversion", e.value), else_=0.0).sum(),
        dissolutions=(e.kind == "dissolution").sum(),
        surveys=(e.kind == "survey").sum(),
        ts_min=e.ts.min(), ts_max=e.ts.max(),
    ).to_pandas().iloc[0].to_dict()
    for k in ("events", "customers", "conversions", "converters", "dissolutions", "surveys"):
        agg[k] = int(agg[k] or 0)
    agg["revenue"] = float(agg["revenue"] or 0.0)
    agg["conversion_rate"] = agg["converters"] / agg["customers"] if agg["customers"] else math.nan
    return agg


def volumes(events, unit: str = "week") -> pd.DataFrame:
    """Events and distinct customers per period (``week`` | ``month`` | ``day``) and kind.

    ``partial`` marks periods not wholly inside the data's time span [first event's day,
    last event] (e.g. the last, unfinished week): their counts are not comparable with the rest."""
    e = events
    code = {"week": "W", "month": "M", "day": "D"}[unit]
    m = e.mutate(period=e.ts.truncate(code))
    out = (m.group_by(["period", "kind"])
           .aggregate(events=m.count(), customers=m.customer_id.nunique()).to_pandas())
    per = pd.to_datetime(out["period"])
    out["period"] = per.dt.tz_convert(None) if per.dt.tz is not None else per
    span = e.aggregate(lo=e.ts.min(), hi=e.ts.max()).to_pandas().iloc[0]
    lo, hi = (pd.Timestamp(span["lo"]), pd.Timestamp(span["hi"]))
    lo, hi = [x.tz_convert(None) if x.tzinfo is not None else x for x in (lo, hi)]
    step = {"week": pd.DateOffset(weeks=1), "month": pd.DateOffset(months=1), "day": pd.DateOffset(days=1)}[unit]
    end = out["period"] + step
    out["partial"] = (out["period"] < lo.floor("D")) | (end > hi.floor("D") + pd.Timedelta(days=1))
    return out.sort_values(["period", "kind"]).reset_index(drop=True)


def _customer_summary(events):
    e = events
    import ibis
    return e.group_by("customer_id").aggregate(
        first_ts=e.ts.min(),
        first_conv=ibis.cases((e.kind == "conversion", e.ts), else_=ibis.null()).min(),
        last_conv=ibis.cases((e.kind == "conversion", e.ts), else_=ibis.null()).max(),
        last_diss=ibis.cases((e.kind == "dissolution", e.ts), else_=ibis.null()).max(),
    )


def touchpoints_by_phase(events, taxonomy: list[str] | None = None) -> pd.DataFrame:
    """Per touchpoint: phase, touches, reach (customers, share), later-conversion rate, CSAT/NPS.

    conversion_rate = share of touched customers with a conversion after their first touch of it.
    """
    import ibis
    e = events
    cust = _customer_summary(e)
    n_customers = e.customer_id.nunique().to_pandas()
    t = e.filter(e.kind == "touch")
    first = t.group_by(["touchpoint", "phase", "customer_id"]).aggregate(first_touch=t.ts.min(), touches=t.count())
    j = first.join(cust, "customer_id")
    per_tp = j.group_by(["touchpoint", "phase"]).aggregate(
        touches=j.touches.sum(), reach=j.count(),
        converted_after=(j.last_conv.notnull() & (j.last_conv > j.first_touch)).sum(),
    ).to_pandas()
    s = e.filter(e.kind == "survey")
    sat = s.group_by("touchpoint").aggregate(
        csat_n=(s.survey == "csat").sum(),
        csat_mean=ibis.cases((s.survey == "csat", s.score), else_=ibis.null()).mean(),
        csat_top2=((s.survey == "csat") & (s.score >= 4)).sum(),
        nps_n=(s.survey == "nps").sum(),
        nps_prom=((s.survey == "nps") & (s.score >= 9)).sum(),
        nps_det=((s.survey == "nps") & (s.score <= 6)).sum(),
    ).to_pandas()
    out = per_tp.merge(sat, on="touchpoint", how="left")
    out["reach_share"] = out["reach"] / n_customers if n_customers else math.nan
    out["conversion_rate"] = out["converted_after"] / out["reach"]
    out["csat_share"] = np.where(out["csat_n"].fillna(0) > 0, out["csat_top2"] / out["csat_n"].where(out["csat_n"] > 0), np.nan)
    out["nps"] = [nps(p, d, n)[0] if n and n > 0 else np.nan
                  for p, d, n in zip(out["nps_prom"].fillna(0), out["nps_det"].fillna(0), out["nps_n"].fillna(0))]
    phase_order = {"pre_purchase": 0, "purchase": 1, "post_purchase": 2}
    tax = {tp: i for i, tp in enumerate(taxonomy or [])}
    out["_p"] = out["phase"].map(phase_order).fillna(3)
    out["_t"] = out["touchpoint"].map(tax).fillna(999)
    out = out.sort_values(["_p", "_t", "touchpoint"]).drop(columns=["_p", "_t"]).reset_index(drop=True)
    cols = ["phase", "touchpoint", "touches", "reach", "reach_share", "conversion_rate", "csat_mean",
            "csat_share", "csat_n", "nps", "nps_n"]
    return out[cols]


def survey_scores(events, survey: str = "nps") -> pd.DataFrame | None:
    """NPS (promoters 9-10 minus detractors 0-6, CI) or CSAT (share of 4-5, Wilson CI) per touchpoint + overall."""
    e = events
    s = e.filter((e.kind == "survey") & (e.survey == survey) & e.score.notnull())
    if survey == "nps":
        agg = dict(n=s.count(), promoters=(s.score >= 9).sum(), detractors=(s.score <= 6).sum())
    else:
        agg = dict(n=s.count(), satisfied=(s.score >= 4).sum(), mean_score=s.score.mean())
    per = s.group_by("touchpoint").aggregate(**agg).to_pandas()
    if per.empty or per["n"].sum() == 0:
        return None
    overall = per.drop(columns=["touchpoint"] + (["mean_score"] if survey != "nps" else [])).sum()
    overall["touchpoint"] = "all touchpoints"
    if survey != "nps":
        overall["mean_score"] = float((per["mean_score"] * per["n"]).sum() / per["n"].sum())
    per = per.sort_values("n", ascending=False)
    d = pd.concat([per, overall.to_frame().T], ignore_index=True)
    if survey == "nps":
        vals = [nps(float(p), float(q), float(n)) for p, q, n in zip(d["promoters"], d["detractors"], d["n"])]
        d["nps"], d["ci_low"], d["ci_high"] = zip(*vals)
    else:
        d["csat"] = d["satisfied"].astype(float) / d["n"].astype(float)
        cis = [wilson_ci(float(k), float(n)) for k, n in zip(d["satisfied"], d["n"])]
        d["ci_low"], d["ci_high"] = zip(*cis)
    for c in d.columns:
        if c != "touchpoint":
            d[c] = pd.to_numeric(d[c])
    return d.reset_index(drop=True)


def touchpoint_effects(events, min_customers: int = 20) -> pd.DataFrame | None:
    """Association of each touchpoint with later conversion and dissolution (rate ratios, 95% CI).

    Population: all customers for pre-purchase/purchase touchpoints (dissolution = lead lost without
    buying), customers with a purchase for post-purchase ones (dissolution = cancellation). Touched customers: outcome after their first touch of the touchpoint;
    others: outcome after their first event (first purchase for post-purchase). Rating: positive
    when conversion is significantly higher or dissolution significantly lower (and nothing
    significantly worse), negative for the reverse, neutral when the CIs cover 1 (or both).
    Association, not causation.
    """
    e = events
    cust = _customer_summary(e)
    t = e.filter(e.kind == "touch")
    first = t.group_by(["touchpoint", "phase", "customer_id"]).aggregate(first_touch=t.ts.min())
    j = first.join(cust, "customer_id")
    post = j.phase == "post_purchase"
    ref = post.ifelse(j.first_conv, j.first_ts)
    inpop = (~post) | j.first_conv.notnull()
    # dissolution: for pre-purchase/purchase touchpoints a lost lead (dissolved, never bought),
    # for post-purchase ones a cancellation
    lost_ok = post | j.first_conv.isnull()
    j = j.filter(inpop).mutate(ref=ref, lost_ok=lost_ok)
    touched = j.group_by(["touchpoint", "phase"]).aggregate(
        n1=j.count(),
        conv1=(j.last_conv.notnull() & (j.last_conv > j.first_touch)).sum(),
        diss1=(j.lost_ok & j.last_diss.notnull() & (j.last_diss > j.first_touch)).sum(),
        conv_ref=(j.last_conv.notnull() & (j.last_conv > j.ref)).sum(),
        diss_ref=(j.lost_ok & j.last_diss.notnull() & (j.last_diss > j.ref)).sum(),
    ).to_pandas()
    if touched.empty:
        return None
    c = cust
    pops = {}
    for label, pop in (("all", c), ("customers", c.filter(c.first_conv.notnull()))):
        refcol = pop.first_conv if label == "customers" else pop.first_ts
        ok = pop.first_conv.notnull() if label == "customers" else pop.first_conv.isnull()
        pops[label] = pop.aggregate(
            n=pop.count(),
            conv=(pop.last_conv.notnull() & (pop.last_conv > refcol)).sum(),
            diss=(ok & pop.last_diss.notnull() & (pop.last_diss > refcol)).sum(),
        ).to_pandas().iloc[0]
    rows = []
    for r in touched.itertuples(index=False):
        P = pops["customers" if r.phase == "post_purchase" else "all"]
        n0 = float(P["n"]) - r.n1
        conv0, diss0 = float(P["conv"]) - r.conv_ref, float(P["diss"]) - r.diss_ref
        if r.n1 < min_customers or n0 < min_customers:
            continue
        crr = rate_ratio(r.conv1, r.n1, conv0, n0)
        drr = rate_ratio(r.diss1, r.n1, diss0, n0)
        good = (crr[1] > 1) or (drr[2] < 1)
        bad = (crr[2] < 1) or (drr[1] > 1)
        rating = "positive" if good and not bad else "negative" if bad and not good else "neutral"
        rows.append({"touchpoint": r.touchpoint, "phase": r.phase, "touched": int(r.n1), "not_touched": int(n0),
                     "conversion_touched": r.conv1 / r.n1, "conversion_not_touched": conv0 / n0 if n0 else math.nan,
                     "conversion_rr": crr[0], "conversion_rr_low": crr[1], "conversion_rr_high": crr[2],
                     "dissolution_touched": r.diss1 / r.n1, "dissolution_not_touched": diss0 / n0 if n0 else math.nan,
                     "dissolution_rr": drr[0], "dissolution_rr_low": drr[1], "dissolution_rr_high": drr[2],
                     "rating": rating})
    if not rows:
        return None
    return pd.DataFrame(rows)


def revenue_concentration(events, top: float = 0.2) -> dict | None:
    """Pareto numbers over paying customers' total revenue (see :func:`pareto`); None without revenue."""
    e = events
    conv = e.filter((e.kind == "conversion") & e.value.notnull())
    per = conv.group_by("customer_id").aggregate(revenue=conv.value.sum())
    rev = per.select("revenue").to_pandas()["revenue"].to_numpy()
    out = pareto(rev, top=top)
    return out if out["top_share"] is not None else None


def funnel(params: dict, events=None, stages: list[str] | None = None,
           use_engine_table: bool = True) -> pd.DataFrame | None:
    """Stage funnel: the engine's ``funnel`` table (``use_engine_table``, the whole pipeline run);
    else computed from ``events`` (e.g. a filtered view) with the engine's own definition."""
    f = journey_table(params, "funnel") if use_engine_table else None
    if f is not None and len(f):
        return f.sort_values("stage_order").reset_index(drop=True) if "stage_order" in f else f
    if events is None:
        return None
    if not use_engine_table:
        from . import engine
        order = list(stages or get(params, "engine.stages", None) or engine.DEFAULT_STAGES)
        f = engine.funnel(events, stages=order).to_pandas()
        f = f[f["customers"] > 0].sort_values("stage_order").reset_index(drop=True)
        return f if len(f) else None
    e = events.filter(events.stage.notnull())
    seen = e.group_by("stage").aggregate(customers=e.customer_id.nunique()).to_pandas()
    if seen.empty:
        return None
    from .schema import DEFAULT_STAGES
    order = list(stages or DEFAULT_STAGES)
    order += [s for s in seen["stage"] if s not in order]
    rank = {s: i for i, s in enumerate(order)}
    cm = e.mutate(stage_order=e.stage.cases(*[(s, i) for s, i in rank.items()], else_=len(order)))
    reached = cm.group_by("customer_id").aggregate(max_order=cm.stage_order.max()).to_pandas()
    rows = []
    for s, i in sorted(rank.items(), key=lambda kv: kv[1]):
        if s not in set(seen["stage"]):
            continue
        rows.append({"stage": s, "stage_order": i, "customers": int((reached["max_order"] >= i).sum())})
    f = pd.DataFrame(rows)
    prev = f["customers"].shift(1)
    f["conversion_from_previous"] = f["customers"] / prev
    f["drop_off_from_previous"] = 1 - f["conversion_from_previous"]
    f["median_days_in_stage"] = np.nan
    return f


def time_to_conversion(params: dict, events=None) -> dict | None:
    """Naive average time to conversion next to the survival answer (metrics/survival.json)."""
    import json
    p = project_path(params, get(params, "survival.metrics", "metrics/survival.json"))
    m = json.loads(p.read_text()) if p.exists() else None
    if not m:
        return None
    med = m.get("median_days_to_conversion")
    if isinstance(med, dict):
        med_v, lo, hi = med.get("estimate", med.get("value")), med.get("ci_low"), med.get("ci_high")
    else:
        med_v = med
        ci = m.get("median_days_to_conversion_ci") or [None, None]
        lo, hi = (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (ci.get("low"), ci.get("high")) if isinstance(ci, dict) else (None, None)
    from .report import p_convert
    pconv = {h: v[0] for h, v in p_convert(m).items()}
    return {"naive_days": m.get("atc_naive_days"), "median_days": med_v, "median_ci": (lo, hi),
            "median_note": m.get("median_days_to_conversion_note"), "rmst_days": m.get("rmst_days"),
            "p_convert": pconv, "n_journeys": m.get("n_journeys"), "n_converted": m.get("n_converted"),
            "n_lost": m.get("n_lost"), "n_censored": m.get("n_censored")}


def executive_summary(tot: dict | None, tps: pd.DataFrame | None = None, nps_table: pd.DataFrame | None = None,
                      conc: dict | None = None, atc: dict | None = None, effects: pd.DataFrame | None = None) -> list[str]:
    """3-6 plain-language sentences with the actual numbers of the journey map."""
    from .report import fmt_int, fmt_num, fmt_pct
    out = []
    if not tot:
        return ["No clean events are available yet: run `journeylab ingest` first."]
    out.append(f"Between {str(tot['ts_min'])[:10]} and {str(tot['ts_max'])[:10]} we observed "
               f"{fmt_int(tot['customers'])} customers and {fmt_int(tot['events'])} events; "
               f"{fmt_int(tot['converters'])} customers ({fmt_pct(tot['conversion_rate'])}) bought at least once, "
               f"for {fmt_int(tot['conversions'])} purchases worth {fmt_num(tot['revenue'], 0)} in revenue.")
    if tps is not None and len(tps):
        pre = tps[tps["phase"] == "pre_purchase"]
        if len(pre):
            top = pre.sort_values("reach", ascending=False).iloc[0]
            out.append(f"The widest-reaching touchpoint before purchase is {top['touchpoint']}, seen by "
                       f"{fmt_pct(top['reach_share'])} of customers; {fmt_pct(top['conversion_rate'])} of them bought afterwards.")
    if atc and atc.get("naive_days") is not None:
        if atc.get("median_days") is not None:
            lo, hi = atc["median_ci"]
            ci = f" (95% CI {fmt_num(lo)}–{fmt_num(hi)})" if lo is not None and hi is not None else ""
            out.append(f"The usual 'average time to conversion' says {fmt_num(atc['naive_days'])} days, but counting "
                       f"leads that have not converted yet, half of the leads who convert need {fmt_num(atc['median_days'])} "
                       f"days{ci}.")
        else:
            out.append(f"The naive average time to conversion is {fmt_num(atc['naive_days'])} days; "
                       f"the censoring-aware median is not available ({atc.get('median_note') or 'not reached'}).")
    if nps_table is not None and len(nps_table):
        o = nps_table.iloc[-1]
        out.append(f"Overall NPS is {fmt_num(o['nps'], 0)} (95% CI {fmt_num(o['ci_low'], 0)} to {fmt_num(o['ci_high'], 0)}) "
                   f"from {fmt_int(o['n'])} answers.")
    if effects is not None and len(effects):
        e = effects.sort_values("conversion_rr", ascending=False)
        neg = e[e["rating"] == "negative"]["touchpoint"].tolist()[:3]
        pos = e[e["rating"] == "positive"]["touchpoint"].tolist()[:3]
        if neg or pos:
            out.append(f"Touchpoints most associated with better outcomes: {', '.join(pos) or 'none'}; "
                       f"with worse outcomes: {', '.join(neg) or 'none'} (association, not proof of cause).")
    if conc:
        out.append(f"Revenue is concentrated: the top 20% of paying customers bring {fmt_pct(conc['top_share'])} "
                   f"of revenue (Gini {fmt_num(conc['gini'], 2)}).")
    return out[:6]
