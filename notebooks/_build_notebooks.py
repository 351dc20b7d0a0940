"""Generate the report notebooks (run: python notebooks/_build_notebooks.py); the .ipynb files are committed.

Notebooks hold no business logic: they call journeylab library functions, plot and explain.
Every section degrades to one line when its input has not been produced yet.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMS_DOC = ("# Parameters (papermill). None = take the value from params.yaml.\n"
              "params_path = None   # path to params.yaml (None: the project's, found from the working directory)\n"
              "as_of = None         # report date YYYY-MM-DD (None: report.as_of or the window end)\n")


def md(text):
    return new_markdown_cell(text.strip())


def code(src, tags=()):
    c = new_code_cell(src.strip())
    if tags:
        c.metadata["tags"] = list(tags)
    return c


def build(name, cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["title"] = name
    nbformat.write(nb, str(HERE / f"{name}.ipynb"))


# ----------------------------------------------------------------------------- journey_overview
build("journey_overview", [
    code(PARAMS_DOC + 'volume_unit = "week"   # week | month | day\n'
         "min_customers = 30     # smallest group compared in the touchpoint ratings\n"
         "date_from = None       # YYYY-MM-DD: only events from this date (the report date ends the range)\n"
         'segment_filter = None  # only these customers, e.g. {"segment": "smb"} or {"platform": ["web", "app"]}\n',
         tags=["parameters"]),
    code("""
from journeylab import report, overview, plots
params = report.start("journey_overview", params_path, as_of, volume_unit=volume_unit, date_from=date_from,
                      segment_filter=segment_filter)
events = overview.load_events(params)
if events is not None and (date_from or segment_filter or as_of):
    events = overview.filter_events(events, date_from=date_from, as_of=params["report"]["as_of"], where=overview.report_filter(segment_filter))
    report.md(f"*Filtered view*: events {('from ' + str(date_from) + ' ') if date_from else ''}up to {params['report']['as_of']}"
              f"{(', customers with ' + ', '.join(f'{k} = {v}' for k, v in segment_filter.items())) if segment_filter else ''}. "
              "Row accounting and the survival-based time to conversion describe the whole pipeline run.")
dq = report.load_metrics(params, "data_quality")
tot = overview.totals(events) if events is not None else None
tps = overview.touchpoints_by_phase(events, plots.taxonomy_order(params)) if events is not None else None
nps_t = overview.survey_scores(events, "nps") if events is not None else None
csat_t = overview.survey_scores(events, "csat") if events is not None else None
eff = overview.touchpoint_effects(events, min_customers) if events is not None else None
conc = overview.revenue_concentration(events) if events is not None else None
atc = overview.time_to_conversion(params)
fun = overview.funnel(params, events, use_engine_table=not (date_from or segment_filter or as_of))
report.summary(overview.executive_summary(tot, tps, nps_t, conc, atc, eff))
"""),
    md("## Data quality and row accounting\n\nEvery raw row is accounted for: it is either used, removed as an exact duplicate, or set aside in quarantine with a reason."),
    code("""
acc = overview.row_accounting(dq)
if acc is None:
    report.unavailable("Row accounting", "metrics/data_quality.json has not been produced yet (run journeylab ingest)")
else:
    ok = overview.accounting_balanced(dq)
    report.md(f"Of {report.fmt_int(dq.get('rows_read'))} rows read, {report.fmt_int(dq.get('rows_clean'))} "
              f"({report.fmt_pct((dq.get('rows_clean') or 0) / max(dq.get('rows_read') or 1, 1), 1)}) are used in the analyses. "
              + ("The accounting balances: nothing was lost silently." if ok else "**The row accounting does not balance: check the ingest step.**"))
    report.table(acc, {"count": report.fmt_int, "share_of_read": lambda v: report.fmt_pct(v, 2)})
"""),
    md("## Volumes over time"),
    code("""
if events is None:
    report.unavailable("Volumes over time", "data/clean/events.parquet has not been produced yet")
else:
    vol_all = overview.volumes(events, volume_unit)
    vol = vol_all[~vol_all["partial"]]
    fig, ax = plots.new_ax()
    plots.volumes(vol if len(vol) else vol_all, ax=ax, unit=volume_unit)
    report.figure(fig)
    cut = sorted(vol_all.loc[vol_all["partial"], "period"].unique())
    if cut and len(vol):
        report.md(f"Incomplete {volume_unit}s at the edges of the data ({', '.join(f'{p:%Y-%m-%d}' for p in cut)}) are left out "
                  "of the figure, so a dip there is not mistaken for a drop in activity.")
    conv = vol[vol["kind"] == "conversion"]
    if len(conv):
        peak = conv.loc[conv["events"].idxmax()]
        report.md(f"Each line counts events per {volume_unit} (log scale, so small and large volumes are both visible). "
                  f"Purchases peaked in the {volume_unit} starting {peak['period']:%Y-%m-%d} with {report.fmt_int(peak['events'])} purchases.")
"""),
    md("## Touchpoints before, during and after purchase\n\n*Reach* is the share of all customers who had at least one contact with the touchpoint; *bought afterwards* is the share of them who made a purchase after their first contact; *CSAT* is the share of satisfaction answers of 4 or 5 (out of 5) about that touchpoint."),
    code("""
if tps is None or not len(tps):
    report.unavailable("Touchpoints by phase", "no touch events in the clean data")
else:
    for phase, label in plots.PHASE_LABELS.items():
        d = tps[tps["phase"] == phase]
        if not len(d):
            continue
        top = d.sort_values("reach", ascending=False).iloc[0]
        report.md(f"### {label.capitalize()}\\n\\n{len(d)} touchpoints; the most common is **{top['touchpoint']}** "
                  f"(reach {report.fmt_pct(top['reach_share'])}, {report.fmt_pct(top['conversion_rate'])} bought afterwards).")
        report.table(d.drop(columns=["phase"]).rename(columns={"conversion_rate": "bought_afterwards", "csat_share": "csat_4_or_5"}),
                     {"touches": report.fmt_int, "reach": report.fmt_int, "reach_share": report.fmt_pct,
                      "bought_afterwards": report.fmt_pct, "csat_mean": lambda v: report.fmt_num(v, 2),
                      "csat_4_or_5": report.fmt_pct, "csat_n": report.fmt_int, "nps": lambda v: report.fmt_num(v, 0),
                      "nps_n": report.fmt_int})
    fig, ax = plots.new_ax(9, 0.35 * len(tps) + 1.2)
    plots.touchpoint_bars(tps, "reach_share", ax=ax, pct=True, xlabel="customers reached (%)",
                          title="Reach of each touchpoint (colours are the same in every report)")
    report.figure(fig)
"""),
    md("## Stage funnel"),
    code("""
if fun is None:
    report.unavailable("Stage funnel", "no funnel stages in the data (engine table data/journeys/funnel.parquet absent and no stage column)")
else:
    fig, ax = plots.new_ax(9, 3.6)
    plots.funnel(fun, ax=ax)
    report.figure(fig)
    worst = fun.iloc[1:].sort_values("drop_off_from_previous", ascending=False)
    if len(worst):
        w = worst.iloc[0]
        report.md(f"{report.fmt_int(fun['customers'].iloc[0])} customers reached the first stage ({fun['stage'].iloc[0]}). "
                  f"The biggest leak is into **{w['stage']}**: {report.fmt_pct(w['drop_off_from_previous'])} of those who "
                  f"reached the previous stage never got there.")
    cols = [c for c in ["stage", "customers", "conversion_from_previous", "drop_off_from_previous",
                        "median_days_in_stage", "mean_days_in_stage"] if c in fun]
    report.table(fun[cols], {"customers": report.fmt_int, "conversion_from_previous": report.fmt_pct,
                             "drop_off_from_previous": report.fmt_pct, "median_days_in_stage": report.fmt_num,
                             "mean_days_in_stage": report.fmt_num})
"""),
    md("## How long does conversion take?\n\nThe usual *average time to conversion* only averages over customers who already bought; it ignores every lead still deciding or lost, and so it is biased. The survival analysis counts them."),
    code("""
if atc is None:
    report.unavailable("Time to conversion", "metrics/survival.json has not been produced yet (run journeylab survival)")
else:
    lo, hi = atc["median_ci"]
    med = (f"{report.fmt_num(atc['median_days'])} days (95% CI {report.fmt_num(lo)}–{report.fmt_num(hi)})"
           if atc["median_days"] is not None else f"not available ({atc.get('median_note') or 'not reached'})")
    pc = atc.get("p_convert") or {}
    pcs = ", ".join(f"{report.fmt_pct(v)} by day {k}" for k, v in pc.items() if v is not None)
    report.md(f"- Naive average time to conversion: **{report.fmt_num(atc['naive_days'])} days** (converted journeys only).\\n"
              f"- Survival (censoring-aware) median: **{med}**.\\n"
              + (f"- Probability that a new lead converts (lost leads counted as lost): {pcs}.\\n" if pcs else "")
              + f"\\nBased on {report.fmt_int(atc['n_journeys'])} journeys: {report.fmt_int(atc['n_converted'])} converted, "
              f"{report.fmt_int(atc['n_lost'])} lost, {report.fmt_int(atc['n_censored'])} still open. See the time-to-conversion report for detail.")
"""),
    md("## Satisfaction: NPS and CSAT per touchpoint\n\nNPS = % promoters (9–10) minus % detractors (0–6), from −100 to +100. CSAT = share of answers 4 or 5 on a 1–5 scale. Bars show 95% confidence intervals: wide bars mean few answers."),
    code("""
if nps_t is None:
    report.unavailable("NPS", "no NPS survey answers in the data")
else:
    o = nps_t.iloc[-1]
    report.md(f"Overall NPS is **{report.fmt_num(o['nps'], 0)}** (95% CI {report.fmt_num(o['ci_low'], 0)} to {report.fmt_num(o['ci_high'], 0)}) "
              f"from {report.fmt_int(o['n'])} answers: {report.fmt_pct(o['promoters'] / o['n'])} promoters and "
              f"{report.fmt_pct(o['detractors'] / o['n'])} detractors.")
    d = nps_t.iloc[:-1]
    fig, ax = plots.new_ax(9, 0.4 * len(d) + 1.2)
    plots.touchpoint_bars(d, "nps", ax=ax, err=("ci_low", "ci_high"), xlabel="NPS (points, −100 to 100)", title="NPS by rated touchpoint")
    report.figure(fig)
    report.table(nps_t, {"n": report.fmt_int, "promoters": report.fmt_int, "detractors": report.fmt_int,
                         "nps": lambda v: report.fmt_num(v, 1), "ci_low": lambda v: report.fmt_num(v, 1), "ci_high": lambda v: report.fmt_num(v, 1)})
if csat_t is None:
    report.unavailable("CSAT", "no CSAT survey answers in the data")
else:
    o = csat_t.iloc[-1]
    report.md(f"Overall CSAT is **{report.fmt_pct(o['csat'])}** satisfied (95% CI {report.fmt_pct(o['ci_low'])}–{report.fmt_pct(o['ci_high'])}) "
              f"from {report.fmt_int(o['n'])} answers; mean score {report.fmt_num(o['mean_score'], 2)} of 5.")
    d = csat_t.iloc[:-1]
    fig, ax = plots.new_ax(9, 0.4 * len(d) + 1.2)
    plots.touchpoint_bars(d, "csat", ax=ax, err=("ci_low", "ci_high"), pct=True, xlabel="CSAT: answers 4 or 5 (%)", title="CSAT by rated touchpoint")
    report.figure(fig)
    report.table(csat_t, {"n": report.fmt_int, "satisfied": report.fmt_int, "mean_score": lambda v: report.fmt_num(v, 2),
                          "csat": report.fmt_pct, "ci_low": report.fmt_pct, "ci_high": report.fmt_pct})
"""),
    md("## Which touchpoints go with better or worse outcomes?\n\nFor each touchpoint we compare customers who had it with those who did not: how often they bought afterwards and how often they were lost or cancelled afterwards (a *rate ratio* above 1 means more often). A touchpoint is **positive** when it goes with significantly more purchases or fewer losses, **negative** for the reverse, and **neutral** when the 95% confidence interval includes 1 (no clear difference). After-purchase touchpoints are compared among buyers only. This is an association, not proof that the touchpoint causes the outcome (see the attribution and survival reports for causal-style estimates)."),
    code("""
if eff is None:
    report.unavailable("Touchpoint ratings", f"no touchpoint with at least {min_customers} customers on each side of the comparison")
else:
    counts = eff["rating"].value_counts()
    report.md(f"{counts.get('positive', 0)} touchpoints rate positive, {counts.get('neutral', 0)} neutral and {counts.get('negative', 0)} negative. "
              f"Negative: {', '.join(eff.loc[eff['rating'] == 'negative', 'touchpoint']) or 'none'}.")
    fig, ax = plots.new_ax(9, 0.35 * len(eff) + 1.4)
    plots.rate_ratios(eff.rename(columns={"conversion_rr": "rr", "conversion_rr_low": "ci_low", "conversion_rr_high": "ci_high"}), ax=ax, outcome="later purchase")
    ax.set_title("Later purchase: touched vs not touched (line colour = rating)")
    report.figure(fig)
    show = eff[["touchpoint", "phase", "touched", "conversion_touched", "conversion_not_touched", "conversion_rr",
                "dissolution_touched", "dissolution_not_touched", "dissolution_rr", "rating"]]
    report.table(show, {"touched": report.fmt_int, "conversion_touched": report.fmt_pct, "conversion_not_touched": report.fmt_pct,
                        "conversion_rr": lambda v: report.fmt_num(v, 2), "dissolution_touched": report.fmt_pct,
                        "dissolution_not_touched": report.fmt_pct, "dissolution_rr": lambda v: report.fmt_num(v, 2)})
"""),
    md("## Revenue concentration"),
    code("""
if conc is None:
    report.unavailable("Revenue concentration", "no purchases with revenue in the data")
else:
    fig, ax = plots.new_ax(6.5, 4.5)
    plots.lorenz(conc["curve"], ax=ax)
    report.figure(fig)
    report.md(f"The top 20% of the {report.fmt_int(conc['customers'])} paying customers bring **{report.fmt_pct(conc['top_share'])}** "
              f"of the {report.fmt_num(conc['revenue'], 0)} total revenue. The Gini coefficient is {report.fmt_num(conc['gini'], 2)} "
              f"(0 = everyone spends the same, 1 = one customer brings everything).")
"""),
])

# ----------------------------------------------------------------------------- time_to_conversion
build("time_to_conversion", [
    code(PARAMS_DOC + "group_by = None        # list of grouping columns for the curves (None: survival.group_by)\n"
         "max_days = 180         # x-axis limit of the curves (days)\n"
         "min_group_size = 30    # groups with fewer journeys are left out of the curves (still in the tables)\n", tags=["parameters"]),
    code("""
from journeylab import report, plots
params = report.start("time_to_conversion", params_path, as_of)
m = report.load_metrics(params, "survival")
report.summary(report.survival_summary(m))
"""),
    md("## Probability of converting over time\n\nThe curve shows the share of new leads who have converted by each day after their journey started; leads that were lost can no longer convert (competing risk), and leads still open are counted for as long as we saw them. The band is the 95% confidence interval."),
    code("""
cif = report.result_table(params, "survival", "cif.parquet")
if m is None or cif is None:
    report.unavailable("Conversion curves", "survival results have not been produced yet (run journeylab survival)")
else:
    d = cif[(cif["group_col"] == "all")]
    d = d[d["time"] <= max_days]
    fig, ax = plots.new_ax()
    plots.curves(d.assign(cif=100 * d["cif"], ci_low=100 * d["ci_low"], ci_high=100 * d["ci_high"]), "time", "cif",
                 group="cause", ax=ax, lo="ci_low", hi="ci_high", xlabel="days since the journey started",
                 ylabel="share of leads (%)", title="Converted and lost by day (Aalen–Johansen)")
    report.figure(fig)
    report.md(report.survival_horizon_text(m))
"""),
    md("## By group"),
    code("""
cif = report.result_table(params, "survival", "cif.parquet")
groups = group_by or [g for g in (m or {}).get("by_group", {})]
if m is None or cif is None or not groups:
    report.unavailable("Curves by group", "no grouped survival results")
else:
    for g in groups:
        d = cif[(cif["group_col"] == g) & (cif["cause"] == "converted") & (cif["time"] <= max_days)]
        d = d[~d["group"].astype(str).isin(report.small_groups(m, g, min_group_size))]
        if not len(d):
            continue
        fig, ax = plots.new_ax()
        plots.curves(d.assign(cif=100 * d["cif"]), "time", "cif", group="group", ax=ax, xlabel="days since the journey started",
                     ylabel="converted (%)", title=f"Share converted by day, by {g.replace('_', ' ')}")
        report.figure(fig)
        report.md(report.survival_group_text(m, g, min_group_size))
        t = report.survival_group_table(m, g)
        if t is not None:
            report.table(t, {"journeys": report.fmt_int, "converted": report.fmt_int, "median_days": report.fmt_num,
                             **{c: report.fmt_pct for c in t.columns if c.startswith("p_convert")}})
"""),
    md("## What speeds up conversion? Touchpoint hazard ratios\n\nA hazard ratio of 1.2 means that one more contact through that touchpoint multiplies the conversion rate from then on by 1.2 (20% faster); below 1 means slower. Lines are 95% confidence intervals; a line crossing 1 means no clear effect."),
    code("""
hr = report.result_table(params, "survival", "hazard_ratios.csv")
if hr is None or not len(hr):
    report.unavailable("Touchpoint hazard ratios", ((m or {}).get("hazard_ratios_note") or "survival results have not been produced yet"))
else:
    hr = hr.sort_values("hr", ascending=False)
    fig, ax = plots.new_ax(9, 0.35 * len(hr) + 1.4)
    plots.rate_ratios(hr.rename(columns={"hr": "rr"}).assign(rating=[("positive" if l > 1 else "negative" if h < 1 else "neutral")
                      for l, h in zip(hr["ci_low"], hr["ci_high"])]), ax=ax, outcome="conversion hazard")
    ax.set_xlabel("hazard ratio per additional touch (log scale, 95% CI)")
    ax.set_title(f"Effect of one more touch on the conversion rate ({hr['model'].iloc[0].replace('_', ' ')})")
    report.figure(fig)
    report.md(report.hazard_text(m, hr))
"""),
    md("## Model checks"),
    code("""
if m is None:
    report.unavailable("Model checks", "survival results have not been produced yet")
else:
    report.md(report.survival_model_text(m))
"""),
])

# ----------------------------------------------------------------------------- churn
build("churn", [
    code(PARAMS_DOC, tags=["parameters"]),
    code("""
from journeylab import report, plots
params = report.start("churn", params_path, as_of)
m = report.load_metrics(params, "churn")
report.summary(report.churn_summary(m))
"""),
    md("## How well do the models rank customers at risk?\n\nEach model scores the customers active at the evaluation date; we then check who actually left within the horizon. ROC-AUC: 0.5 is guessing, 1.0 is perfect. *Capture in top 10%*: share of all leavers found among the 10% highest-risk customers. The BG/NBD baseline is a classic purchase-pattern model without any touchpoint or satisfaction data."),
    code("""
t = report.churn_model_table(m)
if t is None:
    report.unavailable("Model comparison", (m or {}).get("models_note") or "churn results have not been produced yet (run journeylab churn)")
else:
    report.table(t, {c: (lambda v: report.fmt_num(v, 3)) for c in t.columns if c != "model"})
    report.md(report.churn_model_text(m))
"""),
    md("## Calibration: do the risk scores mean what they say?"),
    code("""
cal = report.result_table(params, "churn", "calibration.parquet")
if cal is None or not len(cal):
    report.unavailable("Calibration", "no calibration table (no evaluated model)")
else:
    fig, ax = plots.new_ax(6.5, 4.5)
    plots.calibration(cal, ax=ax)
    report.figure(fig)
    report.md("Points on the diagonal mean that, among customers given a 30% risk, about 30% actually left.")
"""),
    md("## What drives dissolution?\n\nPermutation importance: how much the model's accuracy (ROC-AUC) drops when a factor is scrambled. Larger = the model relies on it more."),
    code("""
imp = report.result_table(params, "churn", "importance.parquet")
if imp is None or not len(imp):
    report.unavailable("Drivers", (m or {}).get("top_drivers_note") or "no importance table yet")
else:
    fig, ax = plots.new_ax(9, 4.5)
    plots.importance(imp, ax=ax)
    report.figure(fig)
    report.md(report.churn_driver_text(m))
"""),
    md("## Lifecycle stages over time"),
    code("""
life = report.result_table(params, "churn", "lifecycle.parquet")
if life is None or not len(life):
    report.unavailable("Lifecycle stages", "no lifecycle table yet")
else:
    fig, ax = plots.new_ax()
    plots.lifecycle(life, ax=ax)
    report.figure(fig)
    report.md(report.lifecycle_text(life))
"""),
])

# ----------------------------------------------------------------------------- attribution
build("attribution", [
    code(PARAMS_DOC + "models = None          # list of models to show (None: attribution.models)\n", tags=["parameters"]),
    code("""
from journeylab import report, plots
params = report.start("attribution", params_path, as_of)
m = report.load_metrics(params, "attribution")
att = report.result_table(params, "attribution", None)
report.summary(report.attribution_summary(m, att))
"""),
    md("## Every model side by side\n\nEach model splits the credit for conversions across touchpoints differently: *first*/*last* touch give everything to one contact, *linear*/*position based*/*time decay* share it by rule, and the data-driven models (Markov, Shapley, hazard-based) learn it from journeys that did and did not convert. Lines are 95% bootstrap confidence intervals."),
    code("""
if att is None or not len(att):
    report.unavailable("Attribution", "data/results/attribution.csv has not been produced yet (run journeylab attribute)")
else:
    show = report.attribution_models(att, models or (params.get("attribution") or {}).get("models"))
    fig, ax = plots.new_ax(9, 0.45 * show["touchpoint"].nunique() + 2)
    chart = show[show["model"].isin(["last", "linear", "position_based", "markov_1", "shapley", "hazard"])]
    plots.model_comparison(chart if len(chart) else show, ax=ax, title="Share of conversions credited to each touchpoint (main models; all in the table)")
    report.figure(fig)
    report.table(report.attribution_wide(show), {c: report.fmt_pct for c in report.attribution_wide(show).columns if c != "touchpoint"})
    main = [x for x in ["last", "linear", "markov_1", "markov_2", "shapley", "hazard"] if x in set(show["model"])]
    ci = report.attribution_ci_table(show, main)
    if ci is not None:
        report.md("**Uncertainty.** Share of conversions with its 95% bootstrap confidence interval (journeys resampled "
                  f"{report.fmt_int((m or {}).get('bootstrap_replicates'))} times) for the main models. Where intervals of two "
                  "touchpoints overlap, the data cannot tell which one deserves more credit.")
        report.table(ci)
"""),
    md("## Against the ground truth\n\nOn simulated data we know how many conversions each touchpoint really caused (by re-running the simulation without it). The distance below is the total share of credit given to the wrong touchpoints (0% = perfect)."),
    code("""
t = report.attribution_truth_table(m)
if t is None:
    report.unavailable("Ground-truth comparison", "no ground truth for this data (only the simulator provides it)")
else:
    report.table(t, {"l1_distance": report.fmt_pct})
    report.md(report.attribution_truth_text(m))
"""),
    md("## Cost and return"),
    code("""
t = report.attribution_cost_table(att)
if t is None:
    report.unavailable("Cost per conversion and ROAS", "no costs table configured (attribution.costs in params.yaml)")
else:
    report.md(report.attribution_cost_text(t))
    report.table(t, {c: (lambda v: report.fmt_num(v, 2)) for c in t.columns if c != "touchpoint"})
"""),
])
print("notebooks written to", HERE)
