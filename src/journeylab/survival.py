"""Time to conversion: censoring-aware answers next to the naive average.

Data: the engine's ``survival`` table (one row per journey: ``entry_days``, ``duration_days``,
``event`` 0 censored / 1 converted / 2 lost) and ``exposure`` (start/stop rows with cumulative
touch counts ``cum_<tp>``). Time unit: days.

What each estimate describes
----------------------------
* **Naive ATC** = sum(duration of converted journeys) / number converted. Ignores every journey
  that has not converted (yet): biased low.
* **Kaplan-Meier (KM)** with conversion as the event and lost journeys *censored at loss*:
  the *net* time to conversion, i.e. the distribution in a hypothetical world where no lead is
  lost. Its median / RMST answer "how long does conversion take for leads that stay in play".
  1 - KM is **not** the probability of converting (it ignores that lost leads never convert).
* **Aalen-Johansen (AJ)** cumulative incidence with "lost" as competing event: the real-world
  probability ``P(converted by day d)`` (crude risk). ``p_convert`` always comes from AJ.

Risk-set convention (exact, no jitter): a journey is at risk at time t iff
``entry <= t <= duration`` (lifelines' convention; with entry 0 this makes events at time 0
count, as in scikit-survival). Tied times are handled as one step.

Scaling: the same estimators run on event/at-risk *counts* (``event_counts`` in memory or
``aggregate_event_counts`` in Ibis), and touchpoint hazard ratios come either from lifelines'
``CoxTimeVaryingFitter`` (exact) or a piecewise-exponential Poisson model fitted by Newton on
person-time aggregated in the engine (``aggregate_person_time`` + ``PiecewiseExponentialFitter``).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from . import config
from .errors import InputError, JourneylabError

CENSORED, CONVERTED, LOST = 0, 1, 2
COUNT_COLS = ("n_entered", "n_converted", "n_lost", "n_censored")
REQUIRED_SURVIVAL_COLUMNS = ("entry_days", "duration_days", "event")


class ModelError(JourneylabError):
    """A model could not be fitted (the message says why)."""


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------

def validate_survival_table(df: pd.DataFrame, name: str = "survival table") -> pd.DataFrame:
    """Check columns/values of a survival table; returns a copy with float times and int events."""
    missing = [c for c in REQUIRED_SURVIVAL_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{name}: column(s) {missing} missing. The survival stage needs "
                         f"entry_days, duration_days and event (0 censored, 1 converted, 2 lost); "
                         f"rebuild the journey tables with `journeylab build`.")
    out = df.copy()
    out["entry_days"] = pd.to_numeric(out["entry_days"], errors="coerce").fillna(0.0).astype(float)
    out["duration_days"] = pd.to_numeric(out["duration_days"], errors="coerce").astype(float)
    if out["duration_days"].isna().any():
        raise InputError(f"{name}: {int(out['duration_days'].isna().sum())} rows have no duration_days. "
                         f"Every journey needs a duration; rebuild the journey tables.")
    bad_ev = ~out["event"].isin([0, 1, 2])
    if bad_ev.any():
        raise InputError(f"{name}: column event has values {sorted(out.loc[bad_ev, 'event'].unique().tolist())[:5]}; "
                         f"allowed are 0 (censored), 1 (converted), 2 (lost).")
    out["event"] = out["event"].astype(int)
    if (out["duration_days"] < 0).any() or (out["entry_days"] < 0).any():
        raise InputError(f"{name}: negative entry_days or duration_days in "
                         f"{int(((out['duration_days'] < 0) | (out['entry_days'] < 0)).sum())} rows. "
                         f"Times are days since journey start and must be >= 0.")
    if (out["entry_days"] > out["duration_days"]).any():
        raise InputError(f"{name}: {int((out['entry_days'] > out['duration_days']).sum())} rows enter after they end "
                         f"(entry_days > duration_days). Drop journeys that ended before the study start.")
    return out


# --------------------------------------------------------------------------------------
# counts and non-parametric estimators
# --------------------------------------------------------------------------------------

def _grid(x: np.ndarray, resolution: float | None) -> np.ndarray:
    """Round times up to the grid ``ceil(x / resolution) * resolution`` (None: unchanged)."""
    if not resolution:
        return np.asarray(x, dtype=float)
    return np.ceil(np.asarray(x, dtype=float) / resolution) * resolution


def event_counts(duration: Sequence[float], event: Sequence[int], entry: Sequence[float] | None = None,
                 weights: Sequence[float] | None = None, resolution: float | None = None) -> pd.DataFrame:
    """Counts per distinct time: ``time, n_entered, n_converted, n_lost, n_censored, at_risk``.

    ``at_risk(t) = #entered at <= t - #exited before t`` (entry <= t <= duration).
    ``resolution`` rounds times up to a grid (days), as the aggregated engine path does.
    """
    duration = _grid(duration, resolution)
    event = np.asarray(event, dtype=int)
    entry = np.zeros_like(duration) if entry is None else _grid(entry, resolution)
    w = np.ones_like(duration) if weights is None else np.asarray(weights, dtype=float)
    exits = pd.DataFrame({"time": duration, "n_converted": w * (event == CONVERTED),
                          "n_lost": w * (event == LOST), "n_censored": w * (event == CENSORED)})
    exits = exits.groupby("time", sort=False).sum()
    ent = pd.DataFrame({"time": entry, "n_entered": w}).groupby("time", sort=False).sum()
    counts = exits.join(ent, how="outer").fillna(0.0).sort_index().reset_index()
    return add_at_risk(counts[["time", *COUNT_COLS]])


def add_at_risk(counts: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Add ``at_risk`` to counts sorted by time (within each group of ``by``)."""
    counts = counts.sort_values([*by, "time"]).reset_index(drop=True)
    exits = counts["n_converted"] + counts["n_lost"] + counts["n_censored"]
    if by:
        g = counts.groupby(list(by), sort=False)
        entered = g["n_entered"].cumsum()
        exited_before = exits.groupby([counts[c] for c in by], sort=False).cumsum() - exits
    else:
        entered = counts["n_entered"].cumsum()
        exited_before = exits.cumsum() - exits
    counts["at_risk"] = (entered - exited_before).round(9)
    return counts


def kaplan_meier(counts: pd.DataFrame, event: str = "converted", alpha: float = 0.05) -> pd.DataFrame:
    """Kaplan-Meier from counts. ``event``: ``converted`` (lost censored) or ``any`` (converted or lost).

    S(t) = prod_{t_i <= t} (1 - d_i / n_i); Greenwood V = sum d / (n (n - d));
    CI by the exponential Greenwood (log(-log S)) transform, as lifelines.
    Returns ``time, at_risk, events, survival, greenwood, ci_low, ci_high``.
    """
    d = counts["n_converted"].to_numpy(float)
    if event == "any":
        d = d + counts["n_lost"].to_numpy(float)
    n = counts["at_risk"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(n > 0, d / n, 0.0)
        s = np.cumprod(1.0 - h)
        gw = np.cumsum(np.where((n > 0) & (n > d), d / (n * (n - d)), 0.0))
        z = stats.norm.ppf(1 - alpha / 2)
        v = np.log(s)
        lo = np.exp(-np.exp(np.log(-v) - z * np.sqrt(gw) / v))
        hi = np.exp(-np.exp(np.log(-v) + z * np.sqrt(gw) / v))
    lo = np.where(np.isfinite(lo), lo, np.where(s <= 0, 0.0, 1.0))
    hi = np.where(np.isfinite(hi), hi, np.where(s <= 0, 0.0, 1.0))
    out = pd.DataFrame({"time": counts["time"].to_numpy(float), "at_risk": n, "events": d, "survival": s,
                        "greenwood": gw, "ci_low": lo, "ci_high": hi})
    return out[_has_exits(counts)].reset_index(drop=True)


def _has_exits(counts: pd.DataFrame) -> np.ndarray:
    """Rows of counts where someone leaves (entry-only times carry no step)."""
    return ((counts["n_converted"] + counts["n_lost"] + counts["n_censored"]) > 0).to_numpy()


def _weighted_sq_dev_cumsum(f: np.ndarray, a: np.ndarray) -> np.ndarray:
    """sum_{k <= j} a_k (f_j - f_k)^2 for every j in O(n) (expanded square)."""
    return f ** 2 * np.cumsum(a) - 2 * f * np.cumsum(a * f) + np.cumsum(a * f ** 2)


def aalen_johansen(counts: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Exact Aalen-Johansen cumulative incidence of conversion and of loss (competing risks).

    F_c(t) = sum_{t_i <= t} S(t_i-) d_ci / n_i, S = KM of "any event". Variance: Aalen (1978) as in
    Pintilie (2006) eq. 4.5 (= scikit-survival's default), computed in O(n); CI log(-log) transform.
    Returns ``time, at_risk, n_converted, n_lost, survival_any, cif_converted, ci_low_converted,
    ci_high_converted, cif_lost, ci_low_lost, ci_high_lost``.
    """
    n = counts["at_risk"].to_numpy(float)
    dc = counts["n_converted"].to_numpy(float)
    dl = counts["n_lost"].to_numpy(float)
    dr = dc + dl
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.cumprod(1.0 - np.where(n > 0, dr / n, 0.0))
    s_prev = np.r_[1.0, s[:-1]]
    out = pd.DataFrame({"time": counts["time"].to_numpy(float), "at_risk": n, "n_converted": dc,
                        "n_lost": dl, "survival_any": s})
    z = stats.norm.isf(alpha / 2)
    eps = np.finfo(float).eps

    def safe_div(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)

    va = safe_div(dr, (n - 1) * (n - dr))
    vb = safe_div(np.ones_like(n), (n - 1) * n ** 2)
    vcb = safe_div(s_prev, n * (n - dr) * (n - 1))
    for name, d in (("converted", dc), ("lost", dl)):
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.cumsum(np.where(n > 0, d / n, 0.0) * s_prev)
        var_a = _weighted_sq_dev_cumsum(f, va)
        var_b = np.cumsum((n - d) * d * vb * s_prev ** 2)
        a_c = d * (n - d) * vcb
        var_c = -2 * (f * np.cumsum(a_c) - np.cumsum(a_c * f))
        var = np.maximum(var_a + var_b + var_c, 0.0)
        sigma = np.divide(np.sqrt(var), f, out=np.zeros_like(f), where=var > eps)
        mask = f > eps
        log_p = np.log(np.where(mask, f, 1.0))
        theta = np.divide(sigma, log_p, out=np.zeros_like(f), where=log_p < -eps)
        lo = np.where(mask, np.exp(np.exp(-z * theta) * log_p), 0.0)
        hi = np.where(mask, np.exp(np.exp(z * theta) * log_p), 0.0)
        out[f"cif_{name}"] = f
        out[f"ci_low_{name}"] = lo
        out[f"ci_high_{name}"] = hi
    return out[_has_exits(counts)].reset_index(drop=True)


def step_at(times: np.ndarray, values: np.ndarray, t: float, initial: float) -> float:
    """Right-continuous step function value at ``t`` (``initial`` before the first time)."""
    i = np.searchsorted(np.asarray(times), t, side="right") - 1
    return float(initial) if i < 0 else float(np.asarray(values)[i])


def first_time_below(times: np.ndarray, values: np.ndarray, q: float = 0.5) -> float | None:
    """First time the curve is <= q (KM median for q = 0.5); None when never reached."""
    idx = np.flatnonzero(np.asarray(values) <= q + 1e-12)
    return float(np.asarray(times)[idx[0]]) if len(idx) else None


def restricted_mean(times: np.ndarray, surv: np.ndarray, horizon: float) -> float:
    """RMST = integral_0^horizon S(t) dt of a right-continuous step curve starting at 1 (days)."""
    t = np.asarray(times, float)
    s = np.asarray(surv, float)
    keep = t < horizon
    knots = np.r_[0.0, t[keep], horizon]
    levels = np.r_[1.0, s[keep]]
    if len(t[keep]) and t[keep][0] == 0.0:   # step at 0 replaces the initial level
        knots = np.r_[0.0, t[keep][1:], horizon]
        levels = s[keep]
    return float(np.sum(np.diff(knots) * levels))


def logrank_from_counts(counts: pd.DataFrame, group_col: str, event: str = "converted") -> dict:
    """k-group log-rank test on counts (late entry respected through at_risk).

    U_g = sum_t (O_gt - E_gt), E_gt = n_gt d_t / n_t, hypergeometric covariance;
    chi2 = U' V^- U with k-1 df. Returns ``statistic, df, p_value, observed, expected``.
    """
    c = counts.copy()
    c["d"] = c["n_converted"] + (c["n_lost"] if event == "any" else 0.0)
    groups = sorted(c[group_col].dropna().unique().tolist(), key=str)
    if len(groups) < 2:
        return {"statistic": None, "df": 0, "p_value": None,
                "statistic_note": "only one group: nothing to compare"}
    # at-risk per group at every pooled time: step-expand each group's at_risk (at_risk at time t
    # = entered <= t - exited < t, so reconstruct from cumulative counts on the pooled grid)
    times = np.sort(c["time"].unique())
    nmat, dmat = [], []
    for g in groups:
        cg = c[c[group_col] == g].sort_values("time")
        tg = cg["time"].to_numpy()
        ent = np.cumsum(cg["n_entered"].to_numpy())
        ex = np.cumsum((cg["n_converted"] + cg["n_lost"] + cg["n_censored"]).to_numpy())
        i_le = np.searchsorted(tg, times, side="right") - 1      # last index with tg <= t
        i_lt = np.searchsorted(tg, times, side="left") - 1       # last index with tg < t
        entered = np.where(i_le >= 0, ent[np.maximum(i_le, 0)], 0.0)
        exited_before = np.where(i_lt >= 0, ex[np.maximum(i_lt, 0)], 0.0)
        nmat.append(entered - exited_before)
        dmat.append(cg.set_index("time")["d"].reindex(times, fill_value=0.0).to_numpy())
    n = np.array(nmat)
    d = np.array(dmat)
    n_tot = n.sum(0)
    d_tot = d.sum(0)
    ok = n_tot > 0
    n, d, n_tot, d_tot = n[:, ok], d[:, ok], n_tot[ok], d_tot[ok]
    e = n * d_tot / n_tot
    u = (d - e).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        fac = np.where(n_tot > 1, d_tot * (n_tot - d_tot) / (n_tot ** 2 * (n_tot - 1)), 0.0)
    k = len(groups)
    v = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            v[i, j] = np.sum(fac * (n_tot * n[i] * (i == j) - n[i] * n[j]))
    if d_tot.sum() == 0:
        return {"statistic": None, "df": k - 1, "p_value": None,
                "statistic_note": "no events in any group: log-rank test not defined",
                "groups": [str(g) for g in groups]}
    stat = float(u[:-1] @ np.linalg.pinv(v[:-1, :-1]) @ u[:-1])
    return {"statistic": stat, "df": k - 1, "p_value": float(stats.chi2.sf(stat, k - 1)),
            "groups": [str(g) for g in groups],
            "observed": {str(g): float(x) for g, x in zip(groups, d.sum(1))},
            "expected": {str(g): float(x) for g, x in zip(groups, e.sum(1))}}


# --------------------------------------------------------------------------------------
# fitter for the non-parametric curves
# --------------------------------------------------------------------------------------

class ConversionCurves:
    """KM (net time to conversion) and Aalen-Johansen (P(convert by t)) with late entry.

    ``fit(df)`` on a survival table or ``fit_counts(counts)`` on aggregated counts; returns self.
    Fitted: ``counts_, km_, aj_, median_, median_ci_, rmst_, p_convert_`` (dict horizon -> p),
    ``atc_naive_`` (mean duration of converted journeys, None if none).
    """

    def __init__(self, alpha: float = 0.05, horizons: Sequence[float] = (7, 30, 90), rmst_horizon: float = 90,
                 resolution: float | None = None, label: str = "all"):
        self.alpha, self.horizons, self.rmst_horizon = alpha, list(horizons), float(rmst_horizon)
        self.resolution, self.label = resolution, label

    def fit(self, df: pd.DataFrame, duration_col: str = "duration_days", event_col: str = "event",
            entry_col: str | None = "entry_days") -> "ConversionCurves":
        entry = df[entry_col] if entry_col and entry_col in df else None
        conv = df[event_col] == CONVERTED
        self.atc_naive_ = float(df.loc[conv, duration_col].mean()) if conv.any() else None
        return self.fit_counts(event_counts(df[duration_col], df[event_col], entry, resolution=self.resolution))

    def fit_counts(self, counts: pd.DataFrame, atc_naive: float | None = ...) -> "ConversionCurves":
        if atc_naive is not ...:
            self.atc_naive_ = atc_naive
        self.counts_ = counts
        self.n_ = float(counts["n_entered"].sum())
        self.n_converted_ = float(counts["n_converted"].sum())
        self.n_lost_ = float(counts["n_lost"].sum())
        self.n_censored_ = float(counts["n_censored"].sum())
        self.km_ = kaplan_meier(counts, "converted", self.alpha)
        self.aj_ = aalen_johansen(counts, self.alpha)
        t, s = self.km_["time"].to_numpy(), self.km_["survival"].to_numpy()
        self.median_ = first_time_below(t, s)
        # CI of the median: where the CI bands cross 0.5 (as lifelines)
        self.median_ci_ = (first_time_below(t, self.km_["ci_low"].to_numpy()),
                           first_time_below(t, self.km_["ci_high"].to_numpy()))
        self.median_cif_ = None
        cif = self.aj_["cif_converted"].to_numpy()
        hit = np.flatnonzero(cif >= 0.5)
        self.median_cif_ = float(t[hit[0]]) if len(hit) else None
        last = float(t.max()) if len(t) else 0.0
        self.rmst_ = restricted_mean(t, s, self.rmst_horizon) if len(t) else None
        self.rmst_beyond_followup_ = self.rmst_horizon > last
        self.p_convert_ = {}
        for h in self.horizons:
            at = self.aj_["time"].to_numpy()
            self.p_convert_[h] = {
                "p": step_at(at, cif, h, 0.0),
                "ci_low": step_at(at, self.aj_["ci_low_converted"].to_numpy(), h, 0.0),
                "ci_high": step_at(at, self.aj_["ci_high_converted"].to_numpy(), h, 0.0),
                "beyond_followup": bool(h > last)}
        return self

    def summary(self) -> dict:
        """Metrics dict with ``<key>_note`` strings for absent numbers."""
        m: dict[str, Any] = {"n_journeys": int(round(self.n_)), "n_converted": int(round(self.n_converted_)),
                             "n_lost": int(round(self.n_lost_)), "n_censored": int(round(self.n_censored_))}
        m["atc_naive_days"] = self.atc_naive_
        if self.atc_naive_ is None:
            m["atc_naive_days_note"] = "no conversions yet in this window: naive average time to conversion undefined"
        m["median_days_to_conversion"] = self.median_
        m["median_days_to_conversion_ci"] = list(self.median_ci_)
        m["median_days_to_conversion_meaning"] = ("Kaplan-Meier median with lost journeys censored: time by which half "
                                                   "of the leads would convert if none were lost")
        if self.median_ is None:
            m["median_days_to_conversion_note"] = (
                "no conversions yet in this window: median not reached" if self.n_converted_ == 0 else
                "fewer than half of the leads at risk converted during follow-up: median not reached")
        if self.median_ci_[1] is None and self.median_ is not None:
            m["median_days_to_conversion_ci_note"] = "upper confidence limit not reached during follow-up"
        m["median_days_p_convert_half"] = self.median_cif_
        if self.median_cif_ is None:
            m["median_days_p_convert_half_note"] = "P(convert) (Aalen-Johansen) never reaches 50%"
        m["rmst_days"] = self.rmst_
        m["rmst_horizon_days"] = self.rmst_horizon
        if self.rmst_ is None:
            m["rmst_days_note"] = "no journeys: restricted mean undefined"
        elif self.rmst_beyond_followup_:
            m["rmst_days_note"] = "horizon beyond the last observed time: curve carried forward"
        if self.atc_naive_ is not None and self.median_ is not None:
            m["atc_naive_vs_median_days"] = self.atc_naive_ - self.median_
        m["p_convert"] = {str(int(h) if float(h).is_integer() else h): v for h, v in self.p_convert_.items()}
        if self.n_converted_ == 0:
            m["p_convert_note"] = "no conversions yet in this window: every P(convert by day d) is 0 so far"
        if self.n_lost_ == 0:
            m["n_lost_note"] = "no lost journeys: Aalen-Johansen equals 1 - Kaplan-Meier here"
        if self.n_converted_ + self.n_lost_ == 0:
            m["n_censored_note"] = "all journeys censored: no event observed yet"
        return m

    def curves(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(km, cif) long tables with a ``group`` column for the report."""
        km = self.km_[["time", "at_risk", "survival", "ci_low", "ci_high"]].assign(group=self.label)
        parts = []
        for cause in ("converted", "lost"):
            parts.append(pd.DataFrame({"time": self.aj_["time"], "cause": cause, "cif": self.aj_[f"cif_{cause}"],
                                       "ci_low": self.aj_[f"ci_low_{cause}"],
                                       "ci_high": self.aj_[f"ci_high_{cause}"], "group": self.label}))
        return km, pd.concat(parts, ignore_index=True)

    def plot_km(self, ax=None, **kwargs):
        """Step plot of the KM conversion-free curve with its CI band."""
        return plot_km_curves(self.curves()[0], ax=ax, **kwargs)

    def plot_cif(self, ax=None, **kwargs):
        """Step plot of P(converted by t) and P(lost by t) with CI bands."""
        return plot_cif_curves(self.curves()[1], ax=ax, **kwargs)


def _ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        ax = plt.gca()
    return ax


def plot_km_curves(km: pd.DataFrame, ax=None, max_days: float | None = None):
    """Plot KM curves (table from km.parquet, one line per ``group``)."""
    ax = _ax(ax)
    for g, d in km.groupby("group", sort=False):
        d = d[d["time"] <= max_days] if max_days else d
        line, = ax.step(np.r_[0, d["time"]], np.r_[1, d["survival"]], where="post", label=str(g))
        ax.fill_between(np.r_[0, d["time"]], np.r_[1, d["ci_low"]], np.r_[1, d["ci_high"]], step="post",
                        alpha=0.2, color=line.get_color())
    ax.set_xlabel("days since journey start")
    ax.set_ylabel("not yet converted (KM, lost censored)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="small")
    return ax


def plot_cif_curves(cif: pd.DataFrame, ax=None, cause: str = "converted", max_days: float | None = None):
    """Plot Aalen-Johansen cumulative incidence (table from cif.parquet) for ``cause``."""
    ax = _ax(ax)
    for g, d in cif[cif["cause"] == cause].groupby("group", sort=False):
        d = d[d["time"] <= max_days] if max_days else d
        line, = ax.step(np.r_[0, d["time"]], np.r_[0, d["cif"]], where="post", label=str(g))
        ax.fill_between(np.r_[0, d["time"]], np.r_[0, d["ci_low"]], np.r_[0, d["ci_high"]], step="post",
                        alpha=0.2, color=line.get_color())
    ax.set_xlabel("days since journey start")
    ax.set_ylabel(f"P({cause} by day t) (Aalen-Johansen)")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize="small")
    return ax


def curves_by_group(df: pd.DataFrame, group_col: str, **kwargs) -> dict[str, ConversionCurves]:
    """One :class:`ConversionCurves` per value of ``group_col`` (missing values as '(missing)')."""
    g = df[group_col].astype("object").where(df[group_col].notna(), "(missing)")
    return {str(k): ConversionCurves(label=str(k), **kwargs).fit(d) for k, d in df.groupby(g, sort=True)}


def logrank_by_group(df: pd.DataFrame, group_col: str, resolution: float | None = None) -> dict:
    """Log-rank test of time to conversion (lost censored) between the groups of ``group_col``."""
    g = df[group_col].astype("object").where(df[group_col].notna(), "(missing)")
    parts = []
    for k, d in df.groupby(g, sort=True):
        c = event_counts(d["duration_days"], d["event"], d["entry_days"], resolution=resolution)
        parts.append(c.assign(**{group_col: str(k)}))
    return logrank_from_counts(pd.concat(parts, ignore_index=True), group_col)


# --------------------------------------------------------------------------------------
# engine (Ibis) aggregation
# --------------------------------------------------------------------------------------

def _ibis_grid(col, resolution: float | None):
    return col.cast("float64") if not resolution else (col.cast("float64") / resolution).ceil().cast("float64") * resolution


def aggregate_event_counts(table, group_cols: Sequence[str] = (), resolution: float | None = None) -> pd.DataFrame:
    """Event/entry counts per (group, time) computed in the engine (Ibis); returns a compact pandas table.

    Rows: distinct (rounded) times; columns ``*group_cols, time, n_entered, n_converted, n_lost,
    n_censored, at_risk``. Identical to :func:`event_counts` on the same rows.
    """
    t = table.mutate(_ev=table.event.cast("int64"), _time=_ibis_grid(table.duration_days, resolution),
                     _entry=_ibis_grid(table.entry_days.fill_null(0.0), resolution))
    exits = (t.group_by([*group_cols, "_time"])
             .aggregate(n_converted=(t._ev == CONVERTED).cast("float64").sum(),
                        n_lost=(t._ev == LOST).cast("float64").sum(),
                        n_censored=(t._ev == CENSORED).cast("float64").sum())
             .rename(time="_time").to_pandas())
    ent = (t.group_by([*group_cols, "_entry"]).aggregate(n_entered=t.count().cast("float64"))
           .rename(time="_entry").to_pandas())
    keys = [*group_cols, "time"]
    df = exits.merge(ent, on=keys, how="outer")
    for c in COUNT_COLS:
        df[c] = df[c].astype(float).fillna(0.0)
    return add_at_risk(df[[*group_cols, "time", *COUNT_COLS]], by=list(group_cols))


def aggregate_person_time(exposure, covariates: Sequence[str], breaks: Sequence[float], cap: int | None = None,
                          event_code: int = CONVERTED, by: Sequence[str] = ()) -> pd.DataFrame:
    """Person-time and events per (baseline interval x capped covariate pattern), in the engine.

    Each exposure row (start, stop] is split across the intervals [b_j, b_{j+1}); person-time is the
    overlap (days); an event counts in the interval holding ``stop``. Covariates are capped at ``cap``.
    ``by``: extra categorical columns kept as keys (adjustment, e.g. segment).
    Returns ``interval, *by, *covariates, person_time, events``.
    """
    import ibis
    b = list(breaks)
    if b[0] != 0:
        b = [0.0, *b]
    bt = ibis.memtable(pd.DataFrame({"interval": np.arange(len(b)), "b_lo": np.asarray(b, float),
                                     "b_hi": np.r_[b[1:], 1e12].astype(float)}))
    e = exposure
    cols = {c: (ibis.least(e[c], cap) if cap is not None else e[c]).cast("int64") for c in covariates}
    e = e.select(start=e.start.cast("float64"), stop=e.stop.cast("float64"),
                 ev=(e.event.cast("int64") == event_code).cast("float64"),
                 **{c: e[c].cast("string").fill_null("(missing)") for c in by}, **cols)
    # interval of the row's start (b_lo <= start < b_hi) and of its stop (b_lo < stop <= b_hi)
    i0 = sum(((e.start >= float(x)).cast("int64") for x in b[1:]), ibis.literal(0))
    i1 = sum(((e.stop > float(x)).cast("int64") for x in b[1:]), ibis.literal(0))
    e = e.mutate(_i0=i0, _i1=i1)
    keys = [*by, *covariates]
    # most rows lie inside one interval: aggregate them directly (no join)
    single = e.filter(e._i0 >= e._i1)        # (> only for zero-length rows at a break: event in stop's interval)
    a1 = single.group_by([single._i1.name("interval"), *keys]).aggregate(
        person_time=(single.stop - single.start).sum(), events=single.ev.sum())
    # rows spanning several intervals: split by an inequality join with the breaks
    multi = e.filter(e._i0 < e._i1)
    j = multi.join(bt, [multi.stop > bt.b_lo, multi.start < bt.b_hi])
    pt = (ibis.least(j.stop, j.b_hi) - ibis.greatest(j.start, j.b_lo))
    j = j.mutate(pt=ibis.greatest(pt, 0.0), d=ibis.ifelse((j.stop > j.b_lo) & (j.stop <= j.b_hi), j.ev, 0.0))
    a2 = j.group_by(["interval", *keys]).aggregate(person_time=j.pt.sum(), events=j.d.sum())
    u = a1.union(a2.select(a1.columns), distinct=False)
    agg = u.group_by(["interval", *keys]).aggregate(person_time=u.person_time.sum(), events=u.events.sum())
    return agg.to_pandas().sort_values(["interval", *by, *covariates]).reset_index(drop=True)


# --------------------------------------------------------------------------------------
# piecewise-exponential (Poisson) hazard model on aggregated person-time
# --------------------------------------------------------------------------------------

def _blas_single_thread(fn):
    """Run with one BLAS thread: the tall-skinny products here are memory-bound, and multi-threaded
    OpenBLAS spikes to seconds per product when the 2 cores are shared."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


class PiecewiseExponentialFitter:
    """Proportional hazards with a piecewise-constant baseline, fitted by Newton on aggregated counts.

    events ~ Poisson(person_time * exp(alpha_interval + x'beta)); log_hr = beta per one unit of x.
    Intervals without events are dropped (their alpha -> -inf contributes nothing to beta).
    ``penalizer``: ridge lambda/2 * |beta|^2. Fitted: ``params_``, ``se_``, ``summary_``,
    ``converged_``, ``n_iter_``, ``log_likelihood_``, ``baseline_hazard_`` (per day by interval).
    """

    def __init__(self, penalizer: float = 0.0, alpha: float = 0.05, max_iter: int = 100, tol: float = 1e-9):
        self.penalizer, self.alpha, self.max_iter, self.tol = penalizer, alpha, max_iter, tol

    @_blas_single_thread
    def fit(self, agg: pd.DataFrame, covariates: Sequence[str], interval_col: str = "interval",
            person_time_col: str = "person_time", events_col: str = "events") -> "PiecewiseExponentialFitter":
        covariates = list(covariates)
        a = agg[agg[person_time_col] > 0]
        ev_by_int = a.groupby(interval_col)[events_col].sum()
        live = ev_by_int[ev_by_int > 0].index
        a = a[a[interval_col].isin(live)]
        if a.empty or a[events_col].sum() == 0:
            raise ModelError("piecewise-exponential model: no events, so hazard ratios cannot be estimated")
        ints = np.sort(a[interval_col].unique())
        idx = np.searchsorted(ints, a[interval_col].to_numpy())
        Z = np.zeros((len(a), len(ints)))
        Z[np.arange(len(a)), idx] = 1.0
        X = np.c_[Z, a[covariates].to_numpy(float)]
        y = a[events_col].to_numpy(float)
        off = np.log(a[person_time_col].to_numpy(float))
        J, p = len(ints), len(covariates)
        theta = np.zeros(J + p)
        theta[:J] = np.log(a.groupby(interval_col)[events_col].sum().to_numpy() /
                           a.groupby(interval_col)[person_time_col].sum().to_numpy())
        pen = np.r_[np.zeros(J), np.full(p, self.penalizer)]

        def loglik(th):
            eta = off + X @ th
            return float(np.sum(y * eta - np.exp(eta)) - 0.5 * np.sum(pen * th ** 2))

        ll = loglik(theta)
        self.converged_ = False
        for it in range(1, self.max_iter + 1):
            mu = np.exp(off + X @ theta)
            grad = X.T @ (y - mu) - pen * theta
            H = (X * mu[:, None]).T @ X + np.diag(pen)
            try:
                step = np.linalg.solve(H, grad)
            except np.linalg.LinAlgError:
                step = np.linalg.lstsq(H, grad, rcond=None)[0]
            t = 1.0
            while t > 1e-8:
                new = theta + t * step
                ll_new = loglik(new)
                if np.isfinite(ll_new) and ll_new >= ll - 1e-12:
                    break
                t /= 2
            theta, dll = new, ll_new - ll
            ll = ll_new
            if abs(dll) < self.tol * (1 + abs(ll)) and np.max(np.abs(t * step)) < 1e-6:
                self.converged_ = True
                break
        self.n_iter_ = it
        mu = np.exp(off + X @ theta)
        H = (X * mu[:, None]).T @ X + np.diag(pen)
        cov = np.linalg.pinv(H)
        se = np.sqrt(np.maximum(np.diag(cov), 0))
        self.log_likelihood_ = ll
        self.params_ = pd.Series(theta[J:], index=covariates, name="log_hr")
        self.se_ = pd.Series(se[J:], index=covariates, name="se")
        self.baseline_hazard_ = pd.Series(np.exp(theta[:J]), index=ints, name="hazard_per_day")
        z = stats.norm.ppf(1 - self.alpha / 2)
        self.summary_ = pd.DataFrame({"log_hr": self.params_, "se": self.se_, "hr": np.exp(self.params_),
                                      "ci_low": np.exp(self.params_ - z * self.se_),
                                      "ci_high": np.exp(self.params_ + z * self.se_)})
        return self


# --------------------------------------------------------------------------------------
# touchpoint hazard ratios (time-varying Cox or PWE)
# --------------------------------------------------------------------------------------

class CountingProcessCox:
    """Cox partial likelihood on start/stop rows (late entry, time-varying covariates), Efron ties.

    Same estimator as lifelines' CoxTimeVaryingFitter (tested to 1e-6) but vectorised: risk-set sums
    at event times are suffix sums over rows sorted by stop minus rows sorted by start, and the
    Hessian is X' diag(w g) X with a per-row weight g (O(n p^2) per Newton step).
    A row is at risk at event time t iff start < t <= stop. ``penalizer``: ridge lambda/2 |beta|^2.
    Fitted: ``params_, se_, summary_, log_likelihood_, converged_, n_iter_``.
    """

    def __init__(self, penalizer: float = 0.0, alpha: float = 0.05, max_iter: int = 50, tol: float = 1e-9):
        self.penalizer, self.alpha, self.max_iter, self.tol = penalizer, alpha, max_iter, tol

    @_blas_single_thread
    def fit(self, start, stop, event, X: pd.DataFrame) -> "CountingProcessCox":
        start = np.asarray(start, float)
        stop = np.asarray(stop, float)
        ev = np.asarray(event).astype(bool)
        names = list(X.columns)
        Xv = X.to_numpy(float)
        if ev.sum() == 0:
            raise ModelError("Cox model: no events")
        mean = Xv.mean(0)
        Xc = Xv - mean                      # centring for numerical stability (does not change beta)
        tj, dj = np.unique(stop[ev], return_counts=True)
        # event-time index of each event row
        jev = np.searchsorted(tj, stop[ev])
        o_stop = np.argsort(stop, kind="stable")
        o_start = np.argsort(start, kind="stable")
        s_stop, s_start = stop[o_stop], start[o_start]
        i_stop = np.searchsorted(s_stop, tj, side="left")     # rows with stop >= t: suffix from here
        i_start = np.searchsorted(s_start, tj, side="left")   # rows with start >= t: suffix from here
        Xe = Xc[ev]
        sum_x_events = Xe.sum(0)
        lmax = int(dj.max())
        # (event time j, tie index l) pairs for Efron
        jj = np.repeat(np.arange(len(tj)), dj)
        ll_idx = np.concatenate([np.arange(d) for d in dj]) if len(dj) else np.zeros(0, int)
        phi = ll_idx / np.repeat(dj, dj)
        p = Xc.shape[1]
        pen = self.penalizer

        def suffix(a, order, idx):
            cs = np.concatenate([np.cumsum(a[order][::-1], axis=0)[::-1], np.zeros((1,) + a.shape[1:])])
            return cs[idx]

        def evaluate(beta, need_hess=True):
            eta = Xc @ beta
            w = np.exp(eta)
            S0 = suffix(w, o_stop, i_stop) - suffix(w, o_start, i_start)
            wx = Xc * w[:, None]
            S1 = suffix(wx, o_stop, i_stop) - suffix(wx, o_start, i_start)
            we = w[ev]
            E0 = np.bincount(jev, we, minlength=len(tj))
            E1 = np.zeros((len(tj), p))
            np.add.at(E1, jev, Xe * we[:, None])
            den = S0[jj] - phi * E0[jj]
            num = S1[jj] - phi[:, None] * E1[jj]
            loglik = float(eta[ev].sum() - np.log(den).sum() - 0.5 * pen * beta @ beta)
            grad = sum_x_events - (num / den[:, None]).sum(0) - pen * beta
            if not need_hess:
                return loglik, grad, None
            c = np.bincount(jj, 1.0 / den, minlength=len(tj))           # sum_l 1/den
            cphi = np.bincount(jj, phi / den, minlength=len(tj))        # sum_l phi/den
            C = np.r_[0.0, np.cumsum(c)]
            # g_i = sum_{j: start_i < t_j <= stop_i} c_j
            g = C[np.searchsorted(tj, stop, side="right")] - C[np.searchsorted(tj, start, side="right")]
            H2 = (Xc * (w * g)[:, None]).T @ Xc - (Xe * (we * cphi[jev])[:, None]).T @ Xe
            H1 = (num / den[:, None]).T @ (num / den[:, None])
            info = H2 - H1 + pen * np.eye(p)
            return loglik, grad, info

        beta = np.zeros(p)
        ll, grad, info = evaluate(beta)
        self.converged_ = False
        for it in range(1, self.max_iter + 1):
            try:
                step = np.linalg.solve(info, grad)
            except np.linalg.LinAlgError:
                step = np.linalg.lstsq(info, grad, rcond=None)[0]
            t = 1.0
            while True:
                new = beta + t * step
                ll_new, g_new, i_new = evaluate(new)
                if (np.isfinite(ll_new) and ll_new >= ll - 1e-10) or t < 1e-8:
                    break
                t /= 2
            dll = ll_new - ll
            beta, ll, grad, info = new, ll_new, g_new, i_new
            if abs(dll) < self.tol * (1 + abs(ll)) and np.max(np.abs(t * step)) < 1e-7:
                self.converged_ = True
                break
        self.n_iter_ = it
        cov = np.linalg.pinv(info)
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
        self.params_ = pd.Series(beta, index=names, name="log_hr")
        self.se_ = pd.Series(se, index=names, name="se")
        self.log_likelihood_ = ll
        z = stats.norm.ppf(1 - self.alpha / 2)
        self.summary_ = pd.DataFrame({"log_hr": self.params_, "se": self.se_, "hr": np.exp(self.params_),
                                      "ci_low": np.exp(self.params_ - z * self.se_),
                                      "ci_high": np.exp(self.params_ + z * self.se_),
                                      "p": 2 * stats.norm.sf(np.abs(self.params_ / self.se_.replace(0, np.nan)))})
        # Breslow baseline cumulative hazard at x = 0 (uncentred): H0(t) = sum_{t_j <= t} d_j / S0_j
        w = np.exp(Xc @ beta)
        S0 = suffix(w, o_stop, i_stop) - suffix(w, o_start, i_start)
        self.baseline_cumulative_hazard_ = pd.Series(np.cumsum(dj / S0) * np.exp(-mean @ beta), index=tj)
        return self

    def predict_partial_hazard(self, X: pd.DataFrame) -> np.ndarray:
        """exp(x'beta) per row."""
        return np.exp(X[self.params_.index].to_numpy(float) @ self.params_.to_numpy())

    def predict_survival_function(self, X: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
        """S(t | x) = exp(-H0(t) exp(x'beta)); array (n_rows, n_times)."""
        H0 = self.baseline_cumulative_hazard_
        h = np.array([step_at(H0.index.to_numpy(), H0.to_numpy(), t, 0.0) for t in times])
        return np.exp(-np.outer(self.predict_partial_hazard(X), h))


def exposure_covariates(exposure: pd.DataFrame | Any) -> list[str]:
    """The ``cum_<tp>`` columns of an exposure table (pandas or Ibis)."""
    return [c for c in exposure.columns if str(c).startswith("cum_")]


def screen_covariates(exposure: pd.DataFrame, covariates: Sequence[str], id_col: str = "journey_id") -> tuple[list[str], dict]:
    """Drop covariates that cannot be estimated; returns (kept, {covariate: reason}).

    Reasons: never non-zero (no variation); non-zero only in converting journeys (separation: the
    hazard ratio runs to infinity); non-zero only in journeys that never convert (HR -> 0).
    """
    kept, dropped = [], {}
    conv = exposure.groupby(id_col)["event"].max().eq(CONVERTED) if len(exposure) else pd.Series(dtype=bool)
    for c in covariates:
        touched = exposure.groupby(id_col)[c].max() > 0
        if exposure[c].nunique() <= 1 or not touched.any():
            dropped[c] = "no variation (never or always touched): effect not estimable"
        elif conv[touched].all():
            dropped[c] = ("seen only in converting journeys (separation): the hazard ratio would run to "
                          "infinity, so it is not estimated")
        elif not conv[touched].any():
            dropped[c] = ("seen only in journeys that never convert (separation): the hazard ratio would run "
                          "to zero, so it is not estimated")
        else:
            kept.append(c)
    return kept, dropped


def hr_sentence(touchpoint: str, hr: float, lo: float, hi: float) -> str:
    """'one more email multiplies the conversion rate by 1.12 (1.08-1.16)'."""
    return f"one more {touchpoint.replace('_', ' ')} touch multiplies the conversion rate by {hr:.2f} ({lo:.2f}–{hi:.2f})"


class TouchpointHazards:
    """Hazard ratio of conversion per additional touch of each touchpoint (cumulative exposure).

    ``method``: ``cox_time_varying`` (lifelines CoxTimeVaryingFitter on start/stop rows; late entry
    is built in because intervals start at entry) or ``piecewise_exponential`` (Poisson on person-time
    aggregated in the engine). Fitted: ``summary_`` (touchpoint, log_hr, se, hr, ci_low, ci_high,
    model), ``dropped_`` (covariate -> reason), ``notes_``, ``penalizer_``.
    """

    def __init__(self, method: str = "cox_time_varying", penalizer: float = 0.0, alpha: float = 0.05,
                 breaks: Sequence[float] = (0, 1, 3, 7, 14, 30, 60, 90, 180, 365), cap: int | None = 10):
        self.method, self.penalizer, self.alpha = method, penalizer, alpha
        self.breaks, self.cap = list(breaks), cap

    def fit(self, exposure, covariates: Sequence[str] | None = None, adjust: Sequence[str] = ()) -> "TouchpointHazards":
        """``exposure``: pandas (cox_time_varying or piecewise_exponential) or Ibis table (pwe).

        ``adjust``: categorical columns (e.g. segment) entered as dummies so touchpoint HRs are
        adjusted for them; their coefficients are in ``adjust_summary_``, not in ``summary_``.
        """
        self.notes_: list[str] = []
        self.adjust = [a for a in adjust if a in exposure.columns]
        covs = list(covariates) if covariates is not None else exposure_covariates(exposure)
        self.dropped_: dict[str, str] = {}
        if isinstance(exposure, pd.DataFrame):
            exposure = _with_journey_id(exposure)
            covs, self.dropped_ = screen_covariates(exposure, covs)
        if not covs:
            raise ModelError("touchpoint hazard model: no touchpoint has estimable exposure "
                             f"({'; '.join(f'{k}: {v}' for k, v in self.dropped_.items()) or 'no cum_ columns'})")
        self.penalizer_ = self.penalizer
        if self.method == "cox_time_varying":
            res = self._fit_ctv(exposure, covs)
        elif self.method == "piecewise_exponential":
            res = self._fit_pwe(exposure, covs)
        else:
            raise ValueError(f"unknown method {self.method!r}")
        res = res.copy()
        self.adjust_summary_ = res.loc[[i for i in res.index if i not in covs]]
        res = res.loc[[i for i in res.index if i in covs]]
        res.index.name = "covariate"
        res = res.reset_index()
        res.insert(0, "touchpoint", res["covariate"].str.replace("^cum_", "", regex=True))
        res["model"] = self.method
        self.summary_ = res.drop(columns="covariate")[["touchpoint", "log_hr", "se", "hr", "ci_low", "ci_high", "model"]]
        return self

    def _fit_ctv(self, exposure: pd.DataFrame, covs: list[str]) -> pd.DataFrame:
        d = exposure
        zero = (d["stop"] <= d["start"]).to_numpy()
        if zero.any():
            self.notes_.append(f"{int(zero.sum())} zero-length exposure intervals (events at the entry instant) "
                               "cannot enter a partial likelihood and were left out")
            d = d[~zero]
        X = d[covs].astype(float)
        if self.adjust:
            A, _ = design_matrix(d, self.adjust)
            X = pd.concat([X, A], axis=1)
        for pen in dict.fromkeys([self.penalizer, max(self.penalizer, 0.1), 1.0]):
            m = CountingProcessCox(penalizer=pen, alpha=self.alpha).fit(
                d["start"], d["stop"], d["event"] == CONVERTED, X)
            if m.converged_ and (m.params_.abs() < 10).all() and np.isfinite(m.se_).all():
                break
            self.notes_.append(f"time-varying Cox with penalizer {pen} did not converge "
                               f"(diverging coefficients: {list(m.params_.index[m.params_.abs() >= 10])})")
        else:
            raise ModelError("time-varying Cox did not converge even with a ridge penalty: " + "; ".join(self.notes_))
        if pen != self.penalizer:
            self.notes_.append(f"ridge penalizer {pen} applied (estimates shrunk towards 0)")
        self.penalizer_ = pen
        self.model_ = m
        return m.summary_

    def _fit_pwe(self, exposure, covs: list[str]) -> pd.DataFrame:
        if isinstance(exposure, pd.DataFrame):
            import ibis
            exposure = ibis.memtable(exposure[["start", "stop", "event", *self.adjust, *covs]])
        self.person_time_ = aggregate_person_time(exposure, covs, self.breaks, self.cap, by=self.adjust)
        pt = self.person_time_
        allcovs = list(covs)
        if self.adjust:
            A, _ = design_matrix(pt, self.adjust)
            pt = pd.concat([pt, A], axis=1)
            allcovs += list(A.columns)
        pen = self.penalizer
        for pen in dict.fromkeys([self.penalizer, max(self.penalizer, 0.1), 1.0]):
            m = PiecewiseExponentialFitter(penalizer=pen, alpha=self.alpha).fit(pt, allcovs)
            if m.converged_ and (m.params_.abs() < 10).all():
                break
            self.notes_.append(f"piecewise-exponential fit with penalizer {pen} did not converge "
                               f"(diverging coefficients: {list(m.params_.index[m.params_.abs() >= 10])})")
        else:
            raise ModelError("piecewise-exponential model did not converge: " + "; ".join(self.notes_))
        self.penalizer_ = pen
        self.model_ = m
        return m.summary_

    def sentences(self) -> list[str]:
        """One plain sentence per touchpoint, strongest effect (largest |log HR|) first."""
        s = self.summary_.iloc[np.argsort(-self.summary_["log_hr"].abs().to_numpy(), kind="stable")]
        return [hr_sentence(r.touchpoint, r.hr, r.ci_low, r.ci_high) for r in s.itertuples()]

    def plot(self, ax=None):
        """Forest plot: HR per additional touch with CI (log x axis)."""
        return plot_hazard_ratios(self.summary_, ax=ax)


def plot_hazard_ratios(hr: pd.DataFrame, ax=None):
    """Forest plot of a hazard_ratios.csv table."""
    ax = _ax(ax)
    h = hr.sort_values("hr").reset_index(drop=True)
    y = np.arange(len(h))
    ax.errorbar(h["hr"], y, xerr=[h["hr"] - h["ci_low"], h["ci_high"] - h["hr"]], fmt="o", capsize=3)
    ax.axvline(1.0, color="grey", lw=1, ls="--")
    ax.set_yticks(y, h["touchpoint"])
    ax.set_xscale("log")
    ax.set_xlabel("hazard ratio of conversion per additional touch (95% CI)")
    return ax


def _with_journey_id(df: pd.DataFrame) -> pd.DataFrame:
    if "journey_id" in df.columns:
        return df
    df = df.copy()
    if "customer_id" in df.columns and "journey_index" in df.columns:
        df["journey_id"] = df["customer_id"].astype(str) + "#" + df["journey_index"].astype(str)
    elif "customer_id" in df.columns:
        df["journey_id"] = df["customer_id"].astype(str)
    else:
        raise InputError("exposure table: needs customer_id (and journey_index) to identify journeys")
    return df


# --------------------------------------------------------------------------------------
# baseline Cox and AFT models on journey covariates
# --------------------------------------------------------------------------------------

def design_matrix(df: pd.DataFrame, categorical: Sequence[str], numeric: Sequence[str] = (),
                  max_levels: int = 30) -> tuple[pd.DataFrame, dict]:
    """One-hot design (reference = most frequent level) for baseline models; returns (X, references)."""
    parts, refs = [], {}
    for c in categorical:
        if c not in df.columns:
            continue
        s = df[c].astype("object").where(df[c].notna(), "(missing)").astype(str)
        vc = s.value_counts()
        if len(vc) < 2:
            continue
        keep = vc.index[:max_levels]
        s = s.where(s.isin(keep), "(other)")
        refs[c] = str(vc.index[0])
        dummies = pd.get_dummies(s, prefix=c, prefix_sep="=", dtype=float)
        parts.append(dummies.drop(columns=f"{c}={vc.index[0]}"))
    for c in numeric:
        if c in df.columns:
            parts.append(df[[c]].astype(float))
    X = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=df.index)
    X = X.loc[:, X.std() > 0] if len(X) else X
    return X, refs


@dataclass
class CoxResult:
    model: Any
    summary: pd.DataFrame
    ph_check: dict
    notes: list[str] = field(default_factory=list)


def fit_cox(df: pd.DataFrame, X: pd.DataFrame, penalizer: float = 0.0, duration_col: str = "duration_days",
            entry_col: str | None = "entry_days", ph_check: bool = True, ph_max_rows: int = 5000,
            seed: int = 0) -> CoxResult:
    """Cox PH on journey covariates, conversion = event (lost censored), Efron ties, late entry.

    Fitted as a counting process (entry, duration] by :class:`CountingProcessCox` (the same Efron
    estimator as lifelines, whose late-entry Cox is ~100x slower). Retries with a ridge penalty when
    the unpenalised fit diverges. ``ph_check``: lifelines' Schoenfeld-residual test (rank time) on
    journeys without late entry (at most ``ph_max_rows``), summarised in plain words.
    """
    T = df[duration_col].to_numpy(float)
    E = df["event"].to_numpy() == CONVERTED
    entry = df[entry_col].to_numpy(float) if entry_col and entry_col in df else np.zeros_like(T)
    start = np.minimum(entry, T) - 1e-9        # at risk iff entry <= t <= duration
    notes: list[str] = []
    if E.sum() == 0:
        raise ModelError("Cox model: no conversions, so no hazard ratios can be estimated")
    if X.shape[1] == 0:
        raise ModelError("Cox model: no covariate varies (a single group): nothing to estimate")
    for pen in dict.fromkeys([penalizer, max(penalizer, 0.1), 1.0]):
        m = CountingProcessCox(penalizer=pen).fit(start, T, E, X)
        if m.converged_ and (m.params_.abs() < 10).all():
            break
        notes.append(f"Cox fit with penalizer {pen} did not converge (diverging: "
                     f"{list(m.params_.index[m.params_.abs() >= 10])}; a level seen only in converting or only in "
                     "non-converting journeys causes this)")
    else:
        raise ModelError("Cox model did not converge: " + "; ".join(notes))
    if pen != penalizer:
        notes.append(f"ridge penalizer {pen} applied")
    check: dict[str, Any] = {}
    if ph_check:
        try:
            from lifelines import CoxPHFitter
            from lifelines.statistics import proportional_hazard_test
            d0 = X.assign(_T=T, _E=E.astype(int))[entry <= 0]
            if len(d0) > ph_max_rows:
                d0 = d0.sample(ph_max_rows, random_state=seed)
            d0 = d0.loc[:, (d0.std() > 0) | d0.columns.isin(["_T", "_E"])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m0 = CoxPHFitter(penalizer=pen).fit(d0, "_T", "_E")
                t = proportional_hazard_test(m0, d0, time_transform="rank")
            p = t.summary["p"]
            viol = p[p < 0.01].index.tolist()
            check = {"p_values": {str(k[0] if isinstance(k, tuple) else k): float(v) for k, v in p.items()},
                     "violations": [str(v[0] if isinstance(v, tuple) else v) for v in viol], "n": int(len(d0))}
            check["text"] = ("The proportional-hazards assumption looks reasonable: no covariate's effect changes "
                             "detectably over journey time (Schoenfeld residual test, all p >= 0.01)."
                             if not viol else
                             "The effect of " + ", ".join(check["violations"]) + " changes over journey time "
                             "(Schoenfeld residual test p < 0.01): read its hazard ratio as an average over time.")
        except Exception as exc:  # the check is descriptive; never block the stage on it
            check = {"text": f"proportional-hazards check not available: {str(exc)[:200]}"}
    return CoxResult(m, m.summary_, check, notes)


def compare_aft(df: pd.DataFrame, X: pd.DataFrame, duration_col: str = "duration_days",
                entry_col: str | None = "entry_days", penalizer: float = 0.0) -> dict:
    """Fit Weibull, log-normal and log-logistic AFT models (late entry), pick the lowest AIC.

    Returns ``{"aic": {model: aic}, "chosen": name, "model": fitter, "notes": [...]}``. Zero
    durations are moved to 1e-6 days (AFT likelihoods need t > 0).
    """
    from lifelines import LogLogisticAFTFitter, LogNormalAFTFitter, WeibullAFTFitter
    d = X.copy()
    t = df[duration_col].to_numpy(float)
    notes = []
    if (t <= 0).any():
        notes.append(f"{int((t <= 0).sum())} zero durations set to 1e-6 days for the parametric models")
    d["_T"] = np.maximum(t, 1e-6)
    d["_E"] = (df["event"].to_numpy() == CONVERTED).astype(int)
    if entry_col:
        d["_entry"] = np.minimum(df[entry_col].to_numpy(float), d["_T"].to_numpy() * (1 - 1e-6))
    aic, models = {}, {}
    for name, cls in (("weibull", WeibullAFTFitter), ("log_normal", LogNormalAFTFitter),
                      ("log_logistic", LogLogisticAFTFitter)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = cls(penalizer=penalizer).fit(d, "_T", "_E", entry_col="_entry" if entry_col else None)
            aic[name] = float(m.AIC_)
            models[name] = m
        except Exception as exc:
            notes.append(f"{name} AFT did not converge: {str(exc).splitlines()[0][:200]}")
    if not aic:
        raise ModelError("no AFT model converged: " + "; ".join(notes))
    chosen = min(aic, key=aic.get)
    return {"aic": aic, "chosen": chosen, "model": models[chosen], "notes": notes, "design": d}


def evaluate_holdout(train: pd.DataFrame, test: pd.DataFrame, X_train: pd.DataFrame, X_test: pd.DataFrame,
                     penalizer: float = 0.0) -> dict:
    """Cox fitted on the training period, scored on the holdout: Harrell's C, Uno's C, integrated Brier.

    Event = conversion (lost censored). Uno's C and the Brier score use the training censoring
    distribution (sksurv.metrics); the time grid is the 10th-80th percentiles of holdout times.
    """
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, integrated_brier_score
    from sksurv.util import Surv
    out: dict[str, Any] = {"c_index": {"harrell": None, "uno": None}, "integrated_brier": None,
                           "n_train": int(len(train)), "n_test": int(len(test))}
    e_test = test["event"].to_numpy() == CONVERTED
    if len(test) == 0 or e_test.sum() < 2:
        out["c_index_note"] = out["integrated_brier_note"] = (
            "the holdout period has fewer than 2 conversions: evaluation not possible")
        return out
    res = fit_cox(train, X_train, penalizer=penalizer, ph_check=False)
    X_test = X_test.reindex(columns=X_train.columns, fill_value=0.0)
    risk = res.model.predict_partial_hazard(X_test)
    t_test = test["duration_days"].to_numpy(float)
    t_train = train["duration_days"].to_numpy(float)
    out["c_index"]["harrell"] = float(concordance_index_censored(e_test, t_test, risk)[0])
    y_train = Surv.from_arrays(train["event"].to_numpy() == CONVERTED, t_train)
    tmax_train = t_train[train["event"].to_numpy() == CONVERTED].max() if (train["event"] == CONVERTED).any() else 0
    keep = t_test < t_train.max()
    y_test = Surv.from_arrays(e_test[keep], t_test[keep])
    tau = float(min(np.quantile(t_test[keep], 0.9), tmax_train)) if keep.any() else None
    try:
        out["c_index"]["uno"] = float(concordance_index_ipcw(y_train, y_test, risk[keep], tau=tau)[0])
    except Exception as exc:
        out["c_index_uno_note"] = f"Uno's C not computable: {exc}"
    try:
        ev_t = t_test[keep][e_test[keep]]
        grid = np.unique(np.quantile(ev_t, np.linspace(0.1, 0.8, 15)))
        grid = grid[(grid > t_test[keep].min()) & (grid < t_test[keep].max())]
        sf = res.model.predict_survival_function(X_test[keep], grid)
        out["integrated_brier"] = float(integrated_brier_score(y_train, y_test, sf, grid))
        out["integrated_brier_times_days"] = [float(grid[0]), float(grid[-1])]
    except Exception as exc:
        out["integrated_brier_note"] = f"integrated Brier score not computable: {exc}"
    return out


# --------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------

def _clean_json(obj):
    """Replace NaN/inf by None recursively (never pass NaN off as a number)."""
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _connect(params: dict):
    try:
        from . import engine  # type: ignore
        return engine.connect(params)
    except ImportError:
        import ibis
        return ibis.duckdb.connect()


def _select_journeys(df: pd.DataFrame, journey_type: str) -> pd.DataFrame:
    if journey_type in (None, "all") or "journey_type" not in df.columns:
        return df
    return df[df["journey_type"] == journey_type]


def _truth_comparison(params: dict, curves: ConversionCurves, hazards: pd.DataFrame | None) -> dict:
    p = config.truth_file(params)
    if p is None:   # not the simulator's data: no ground truth
        return {}
    try:
        truth = json.loads(p.read_text())
    except Exception:
        return {}
    out: dict[str, Any] = {}
    pc = truth.get("p_convert_by_day") or {}
    out["p_convert"] = {k: {"truth": v, "estimate": curves.p_convert_.get(float(k), curves.p_convert_.get(int(k), {})).get("p")}
                        for k, v in pc.items()} if pc else {}
    if hazards is not None and truth.get("channels"):
        cover = {}
        for r in hazards.itertuples():
            ch = truth["channels"].get(r.touchpoint)
            if ch is None or ch.get("log_hazard_ratio") is None:
                continue
            lo, hi = np.log(r.ci_low), np.log(r.ci_high)
            cover[r.touchpoint] = {"truth": ch["log_hazard_ratio"], "estimate": r.log_hr,
                                   "covered": bool(lo <= ch["log_hazard_ratio"] <= hi)}
        out["log_hazard_ratios"] = cover
        out["log_hazard_ratios_covered"] = f"{sum(v['covered'] for v in cover.values())} of {len(cover)}"
    return out


def run_stage(params: dict) -> dict:
    """`journeylab survival`: curves, tests, models -> data/results/survival/*, metrics/survival.json."""
    sp = params.get("survival", {})
    jdir = config.path(params, config.get(params, "engine.output_dir", "data/journeys"))
    out_dir = config.path(params, sp.get("output_dir", "data/results/survival"))
    metrics_path = config.path(params, sp.get("metrics", "metrics/survival.json"))
    surv_path, expo_path = jdir / "survival.parquet", jdir / "exposure.parquet"
    if not surv_path.exists():
        raise InputError(f"{surv_path}: survival table not found. Run `journeylab build` first "
                         f"(it writes data/journeys/survival.parquet).")
    horizons = [float(h) for h in sp.get("horizons_days", [7, 30, 90])]
    rmst_h = float(sp.get("rmst_horizon_days", 90))
    alpha = float(sp.get("alpha", 0.05))
    penalizer = float(sp.get("penalizer", 0.0) or 0.0)
    jt = sp.get("journey_type", "acquisition")
    exact_max = int(sp.get("exact_max_rows", 50000))
    resolution = sp.get("time_resolution_days")
    group_by = list(sp.get("group_by", ["first_touchpoint", "segment"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)

    con = _connect(params)
    import ibis
    st = con.read_parquet(str(surv_path))
    if jt not in (None, "all") and "journey_type" in st.columns:
        st = st.filter(st.journey_type == jt)
    n_rows = int(st.count().to_pyarrow().as_py())
    path = "exact" if n_rows <= exact_max else "aggregated"
    m: dict[str, Any] = {"journey_type": jt, "fitting_path": path,
                         "fitting_path_note": (f"{n_rows} journeys <= survival.exact_max_rows={exact_max}: exact fits (lifelines Cox/AFT, exact counting-process Cox for touchpoints)"
                                               if path == "exact" else
                                               f"{n_rows} journeys > survival.exact_max_rows={exact_max}: KM/AJ from "
                                               "engine-aggregated counts, touchpoint hazard ratios from a "
                                               "piecewise-exponential model on aggregated person-time, Cox/AFT/holdout "
                                               f"on a random sample of {exact_max} journeys")}
    if n_rows == 0:
        raise InputError(f"{surv_path}: no {jt} journeys. Check survival.journey_type or the study window.")

    # --- curves -----------------------------------------------------------------------
    res_path = resolution if path == "aggregated" else None
    if path == "aggregated":
        res_path = float(resolution or 1 / 24)
        st = st.mutate(entry_days=st.entry_days.fill_null(0.0))
        counts = aggregate_event_counts(st, (), res_path)
        atc = st.filter(st.event == CONVERTED).duration_days.mean().to_pyarrow().as_py()
        overall = ConversionCurves(alpha, horizons, rmst_h, label="all").fit_counts(counts, atc_naive=atc)
        m["time_resolution_days"] = res_path
        seed = int(sp.get("seed", 0))
        frac = exact_max / n_rows
        df = st.filter(ibis.random() < frac * 1.05).to_pandas()
        df = df.sample(min(len(df), exact_max), random_state=seed) if len(df) > exact_max else df
    else:
        df = st.to_pandas()
    df = validate_survival_table(df, str(surv_path))
    if path == "exact":
        overall = ConversionCurves(alpha, horizons, rmst_h, label="all").fit(df)
    m.update(overall.summary())
    km_all, cif_all = overall.curves()
    kms, cifs = [km_all.assign(group_col="all")], [cif_all.assign(group_col="all")]
    m["by_group"], m["logrank"] = {}, {}
    for g in group_by:
        if g not in df.columns:
            m["logrank"][g] = {"statistic": None, "statistic_note": f"column {g} not in the survival table"}
            continue
        if path == "aggregated":
            sg = st.mutate(**{g: st[g].cast("string").fill_null("(missing)")})
            cg = aggregate_event_counts(sg, (g,), res_path)
            conv = sg.filter(sg.event == CONVERTED)
            atc_g = conv.group_by(g).aggregate(atc=conv.duration_days.mean()).to_pandas().set_index(g)["atc"]
            fits = {str(k): ConversionCurves(alpha, horizons, rmst_h, label=str(k)).fit_counts(
                        c.drop(columns=g), float(atc_g[k]) if k in atc_g.index else None)
                    for k, c in cg.groupby(g)}
            m["logrank"][g] = logrank_from_counts(cg, g)
        else:
            fits = curves_by_group(df, g, alpha=alpha, horizons=horizons, rmst_horizon=rmst_h)
            m["logrank"][g] = logrank_by_group(df, g)
        m["by_group"][g] = {}
        for k, f in fits.items():
            s = f.summary()
            m["by_group"][g][k] = {key: s.get(key) for key in ("n_journeys", "n_converted", "n_lost", "median_days_to_conversion",
                                                              "median_days_to_conversion_note", "rmst_days", "p_convert", "atc_naive_days")
                                   if key in s}
            km, cif = f.curves()
            kms.append(km.assign(group_col=g))
            cifs.append(cif.assign(group_col=g))
    pd.concat(kms, ignore_index=True).to_parquet(out_dir / "km.parquet", index=False)
    pd.concat(cifs, ignore_index=True).to_parquet(out_dir / "cif.parquet", index=False)

    # --- touchpoint hazard ratios -------------------------------------------------------
    hr_table = None
    if expo_path.exists():
        ex = con.read_parquet(str(expo_path))
        if jt not in (None, "all") and "journey_type" in ex.columns:
            ex = ex.filter(ex.journey_type == jt)
        covs = exposure_covariates(ex)
        adjust = list(sp.get("hazard_adjust_for", ["segment"]))
        pwe_kwargs = dict(breaks=sp.get("pwe_breaks_days", [0, 1, 3, 7, 14, 30, 60, 90, 180, 365]),
                          cap=sp.get("pwe_max_count", 10))
        try:
            if path == "exact":
                exp_df = ex.to_pandas()
                th = TouchpointHazards("cox_time_varying", penalizer, alpha).fit(exp_df, covs, adjust)
                try:
                    pwe = TouchpointHazards("piecewise_exponential", penalizer, alpha, **pwe_kwargs).fit(
                        exp_df, th.summary_["touchpoint"].map(lambda t: f"cum_{t}").tolist(), adjust)
                    m["hazard_ratios_pwe"] = pwe.summary_.set_index("touchpoint").drop(columns="model").to_dict("index")
                except JourneylabError as exc:
                    m["hazard_ratios_pwe_note"] = str(exc)
            else:
                th = TouchpointHazards("piecewise_exponential", penalizer, alpha, **pwe_kwargs).fit(ex, covs, adjust)
            hr_table = th.summary_
            m["hazard_ratios"] = hr_table.set_index("touchpoint").drop(columns="model").to_dict("index")
            m["hazard_ratio_model"] = th.method
            m["hazard_ratio_sentences"] = th.sentences()
            if th.dropped_:
                m["hazard_ratios_dropped"] = th.dropped_
            if th.notes_:
                m["hazard_ratios_note"] = "; ".join(th.notes_)
        except JourneylabError as exc:
            m["hazard_ratios"] = None
            m["hazard_ratios_note"] = str(exc)
    else:
        m["hazard_ratios"] = None
        m["hazard_ratios_note"] = f"{expo_path} not found: touchpoint hazard ratios need the exposure table"
    (hr_table if hr_table is not None else
     pd.DataFrame(columns=["touchpoint", "log_hr", "se", "hr", "ci_low", "ci_high", "model"])
     ).to_csv(out_dir / "hazard_ratios.csv", index=False)

    # --- baseline Cox, AFT, holdout -----------------------------------------------------
    cats = [c for c in sp.get("cox_covariates", ["first_touchpoint", "segment"]) if c in df.columns]
    X, refs = design_matrix(df, cats)
    m["cox_reference_levels"] = refs
    if (df["event"] == CONVERTED).sum() == 0:
        note = "no conversions yet in this window: regression models not fitted"
        m.update({"cox": None, "cox_note": note, "aft_model": None, "aft_model_note": note,
                  "c_index": {"harrell": None, "uno": None}, "c_index_note": note,
                  "integrated_brier": None, "integrated_brier_note": note})
    else:
        try:
            cox = fit_cox(df, X, penalizer)
            s = cox.summary
            m["cox"] = s.to_dict("index")
            m["ph_check"] = cox.ph_check.get("text")
            m["ph_check_detail"] = cox.ph_check
            if cox.notes:
                m["cox_note"] = "; ".join(cox.notes)
        except JourneylabError as exc:
            m["cox"], m["cox_note"] = None, str(exc)
        try:
            aft_max = int(sp.get("aft_max_rows", 20000))
            sub = df.sample(aft_max, random_state=int(sp.get("seed", 0))) if len(df) > aft_max else df
            aft = compare_aft(sub, X.loc[sub.index], penalizer=penalizer)
            if len(sub) < len(df):
                m["aft_sample_rows"] = int(len(sub))
            mod = aft["model"]
            q = {}
            for pct in (0.25, 0.5, 0.75):
                # lifelines percentile p = survival probability; time by which (1-p) converted
                v = np.asarray(mod.predict_percentile(aft["design"], p=1 - pct)).ravel()
                q[str(pct)] = float(np.median(v)) if np.isfinite(v).all() else None
            m.update({"aft_model": aft["chosen"], "aft_aic": aft["aic"],
                      "aft_time_quantiles_days": q,
                      "aft_time_quantiles_meaning": "median over journeys of the predicted time by which 25/50/75% "
                                                    "would convert if none were lost"})
            if aft["notes"]:
                m["aft_model_note"] = "; ".join(aft["notes"])
        except JourneylabError as exc:
            m["aft_model"], m["aft_model_note"] = None, str(exc)
        hs = pd.Timestamp(sp.get("holdout_start", "2025-03-01"), tz="UTC")
        if "start_ts" in df.columns:
            start = pd.to_datetime(df["start_ts"], utc=True)
            tr, te = start < hs, start >= hs
            try:
                ev = evaluate_holdout(df[tr], df[te], X[tr], X[te], penalizer)
                m.update({k: v for k, v in ev.items() if k.startswith(("c_index", "integrated_brier"))})
                m["holdout"] = {"start": str(hs.date()), "n_train": ev["n_train"], "n_test": ev["n_test"]}
            except JourneylabError as exc:
                m.update({"c_index": {"harrell": None, "uno": None}, "c_index_note": str(exc),
                          "integrated_brier": None, "integrated_brier_note": str(exc)})
        else:
            m.update({"c_index": {"harrell": None, "uno": None}, "c_index_note": "no start_ts column: no time-based holdout",
                      "integrated_brier": None, "integrated_brier_note": "no start_ts column: no time-based holdout"})

    truth = _truth_comparison(params, overall, hr_table)
    if truth:
        m["truth"] = truth
    m = _clean_json(m)
    metrics_path.write_text(json.dumps(m, indent=2))
    return m


# --------------------------------------------------------------------------------------
# synthetic tables with known truth (tests, benchmarks)
# --------------------------------------------------------------------------------------

def synthetic_tables(n: int, seed: int = 0, log_hr: dict[str, float] | None = None,
                     touch_rate: dict[str, float] | None = None, base_hazard: float = 0.01,
                     lost_hazard: float = 0.005, max_followup: float = 180.0, late_entry_share: float = 0.2,
                     start: str = "2024-01-01", id_offset: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Survival and exposure tables (engine contract) from a known time-varying hazard.

    Touches of tp arrive as Poisson(rate_tp/day); conversion hazard = base * exp(sum_tp log_hr_tp * cum_tp),
    lost hazard constant; administrative censoring ~ U(0, max_followup). A share of journeys enters late
    (entry ~ U(0, 30) days, kept only if still open at entry). Returns (survival, exposure).
    """
    rng = np.random.default_rng(seed)
    log_hr = log_hr or {"email": 0.10, "paid_search": 0.25, "social": 0.0, "display": -0.10}
    touch_rate = touch_rate or {tp: 0.05 for tp in log_hr}
    tps = list(log_hr)
    b = np.array([log_hr[t] for t in tps])
    r = np.array([touch_rate[t] for t in tps])
    R = r.sum()
    cum = np.zeros((n, len(tps)))
    t = np.zeros(n)
    cens = rng.uniform(0, max_followup, n)
    alive = np.ones(n, bool)
    event = np.zeros(n, int)
    first = np.full(n, -1)
    rows = []
    while alive.any():
        idx = np.flatnonzero(alive)
        h = base_hazard * np.exp(cum[idx] @ b)
        total = h + lost_hazard + R
        dt = rng.exponential(1 / total)
        stop = t[idx] + dt
        u = rng.uniform(0, total)
        censored = stop >= cens[idx]
        stop = np.where(censored, cens[idx], stop)
        kind = np.where(censored, 0, np.where(u < h, CONVERTED, np.where(u < h + lost_hazard, LOST, 3)))
        ev_row = np.where(kind == 3, 0, kind)
        rows.append(pd.DataFrame({"row": idx, "start": t[idx], "stop": stop, "event": ev_row,
                                  **{f"cum_{tp}": cum[idx, k] for k, tp in enumerate(tps)}}))
        ended = kind != 3
        event[idx[ended]] = ev_row[ended]
        t[idx] = stop
        alive[idx[ended]] = False
        touched = idx[~ended]
        if len(touched):
            which = rng.choice(len(tps), size=len(touched), p=r / R)
            cum[touched, which] += 1
            nofirst = first[touched] < 0
            first[touched[nofirst]] = which[nofirst]
    late = rng.uniform(size=n) < late_entry_share
    entry = np.where(late, rng.uniform(0, 30, n), 0.0)
    keep = entry <= t
    entry = np.minimum(entry, t)
    seg = rng.choice(["b2b", "b2c"], n)
    ids = np.array([f"c{i + id_offset}" for i in range(n)])
    surv = pd.DataFrame({"customer_id": ids, "journey_index": 1, "journey_type": "acquisition",
                         "start_ts": pd.Timestamp(start, tz="UTC") + pd.to_timedelta(rng.uniform(0, 540, n), unit="D"),
                         "entry_days": entry, "duration_days": t, "event": event,
                         "first_touchpoint": np.where(first >= 0, np.array(tps, dtype=object)[np.maximum(first, 0)], "(none)"),
                         "segment": seg})
    surv = surv[keep].reset_index(drop=True)
    ex = pd.concat(rows, ignore_index=True)
    ex = ex[keep[ex["row"].to_numpy()]]
    e_entry = entry[ex["row"].to_numpy()]
    ex = ex[(ex["stop"] > e_entry) | ((ex["stop"] == e_entry) & (ex["event"] > 0))].copy()
    ex["start"] = np.maximum(ex["start"].to_numpy(), entry[ex["row"].to_numpy()])
    ex.insert(0, "customer_id", ids[ex["row"].to_numpy()])
    ex.insert(1, "journey_index", 1)
    ex.insert(2, "journey_type", "acquisition")
    ex["first_touchpoint"] = surv.set_index("customer_id")["first_touchpoint"].reindex(ex["customer_id"]).to_numpy()
    ex["segment"] = seg[ex["row"].to_numpy()]
    ex = ex.drop(columns="row").sort_values(["customer_id", "start"]).reset_index(drop=True)
    return surv, ex


def summary_json(curves: ConversionCurves) -> dict:
    """JSON-safe summary of fitted curves (NaN/inf -> None)."""
    return _clean_json(curves.summary())
