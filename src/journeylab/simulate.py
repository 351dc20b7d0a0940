"""Journey simulator with ground truth (CLI: ``journeylab simulate``).

Writes the built-in raw event log ``data/raw/events.parquet`` (raw schema of docs/DESIGN.md),
``data/raw/truth.json`` and ``data/raw/truth_churn.parquet``. Time unit: days since
``window.start`` (UTC midnight); timestamps are floored to microseconds.

Randomness
    Every random number is a counter-based hash ``u(seed, customer, stream, k)`` (SplitMix64
    finaliser) -> uniform in (0, 1). Nothing depends on how customers are split into chunks, so
    the log is identical for any ``simulate.chunk_customers`` (only Parquet row groups differ),
    and re-simulating with a channel switched off uses common random numbers by construction.

Model (all true parameters are copied to truth.json)
    Customers. Index i = 0..n-1, id ``C%09d``; arrival a_i ~ U(0, W) (W = window length);
    segment, platform, campaign ~ categorical (``segments.*.share``, ``platforms``, ``campaigns``).
    Lead phase. The arrival is a touch of channel ``arrival_share`` at t = 0 (t = days since
    arrival). Touches of channel c arrive as Poisson processes of rate r_c * m_segment per day
    (pre-purchase channels and purchase-phase website/store/sales_call/offer).
    Conversion hazard (exact time-varying Cox model)::

        h(t) = h0[segment] * exp(sum_c beta_c * N_c(t-)),   N_c(t-) = touches of c in [0, t)

    simulated exactly: the hazard is constant between touches, the conversion time solves
    H(t) = E with one E ~ Exp(1) per lead. Competing "lost" time L ~ Exp(mu[segment]); touches
    stop at conversion or L; a share ``lost_event_share`` of lost leads gets a ``lead_lost`` event
    at L, the rest go silent. Conversion = ``purchase`` event at ``purchase_touchpoint[segment]``,
    revenue ~ lognormal(revenue_log_mean, revenue_log_sd).
    Post-purchase (daily discrete time, day d covers [d, d+1)). Latent satisfaction s ~ N(0, 1).
    A share ``contractual_share[segment]`` is contractual (``billing`` touch every 30 days,
    explicit ``cancellation`` at dissolution); the rest is non-contractual (repeat purchases with
    customer rate lambda ~ Gamma, silent dropout). At the start of each day an alive customer
    dissolves with probability 1 - exp(-h_d)::

        h_d = base[segment] * k_contract * exp(b_sat*s + b_comp*complaints_90d + b_rec*min(R, cap)/30)

    (complaints_90d = complaints in [d-90, d), R = days since the last purchase). Survivors then
    have, per type e, an event that day with probability 1 - exp(-rate_e): newsletter, website,
    email, offer, support (rate * exp(slope*s)), complaint (rate * exp(slope*s)), purchase
    (lambda). Purchases are followed by a ``transactional_email``; support, store and purchases
    by a CSAT survey (prob ``csat_prob``, score clip(round(csat_mean + csat_slope*s + noise), 1, 5),
    touchpoint = the rated touchpoint); NPS every ``nps_every_days`` from day ``nps_first_day``
    after the first purchase (score clip(round(nps_mean + nps_slope*s + noise), 0, 10),
    touchpoint = the customer's purchase touchpoint). After dissolution: no events at all.
    Funnel stage rule: arrival touch = awareness; later pre-purchase-phase touches before the
    first purchase = interest; purchase-phase touches before it = evaluation; the first purchase =
    purchase; every later event (repeat purchases, service, surveys, cancellation) = loyalty;
    ``lead_lost`` carries the stage of the lead's last touch.

Ground truth (truth.json)
    ``p_convert_by_day``: cumulative incidence of the first conversion (before lost) by day d
    since arrival from latent times of ``truth_mc_leads`` fresh leads (no window censoring);
    ``p_convert_by_day_in_sample``: the same among simulated leads with >= 90 days of follow-up.
    ``incremental_conversions[c]``: in-window acquisition conversions minus those with channel c
    switched off (its touches, including an arrival touch of c, removed; same arrival, other
    touches and Exp(1) draw); ``incremental_share`` = incremental / sum over channels.
    ``churn``: for each cutoff c (days at midnight) with c + H <= window end, the population the
    engine scores (>= 1 purchase before c, no cancellation before c, last event >= c -
    inactivity_days); engine label = cancellation in [c, c+H) or no event in [c, c+H);
    ``true_risk`` = P(label = 1 | latent state at c): 1 if already silently dissolved; for
    non-contractual alive customers exactly sum_j S_j p_j + S_H along the no-event path
    (S_{j+1} = S_j (1-p_j)(1-q_j), p_j dissolution, q_j any-event probability); for contractual
    customers 1 - mean_k prod_j (1 - p_jk) over ``oracle_replicates`` simulated complaint/purchase
    paths. ``oracle_auc`` = ROC-AUC(label, true_risk) at ``churn.eval_cutoff``.
    Dirty rows (``dirty_fraction`` per clean row, each with exactly one problem): exact duplicate,
    missing customer_id, timestamp outside the window, negative revenue, out-of-scale score,
    unknown touchpoint. They are extra rows; truth ignores them; counts in ``dirty_rows``.
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import special, stats

from .config import get, path as project_path
from .errors import ConfigError

US_PER_DAY = 86_400_000_000

DEFAULT_MODEL: dict[str, Any] = {
    "segments": {
        "consumer": {"share": 0.6, "h0": 0.006, "lost": 0.012, "rate_multiplier": 1.0,
                     "contractual_share": 0.3, "revenue_log_mean": 4.0, "revenue_log_sd": 0.6,
                     "dissolution_base": 0.0012,
                     "purchase_touchpoint": {"website": 0.7, "store": 0.3, "sales_call": 0.0}},
        "smb": {"share": 0.3, "h0": 0.0045, "lost": 0.010, "rate_multiplier": 0.9,
                "contractual_share": 0.6, "revenue_log_mean": 5.5, "revenue_log_sd": 0.7,
                "dissolution_base": 0.0009,
                "purchase_touchpoint": {"website": 0.5, "store": 0.2, "sales_call": 0.3}},
        "enterprise": {"share": 0.1, "h0": 0.003, "lost": 0.008, "rate_multiplier": 0.8,
                       "contractual_share": 0.9, "revenue_log_mean": 7.5, "revenue_log_sd": 0.8,
                       "dissolution_base": 0.0006,
                       "purchase_touchpoint": {"website": 0.2, "store": 0.0, "sales_call": 0.8}},
    },
    # rate: touches per day while a lead; beta: log hazard ratio per touch; arrival_share: first touch.
    "channels": {
        "paid_search":    {"rate": 0.040, "beta": 0.15, "arrival_share": 0.20},
        "organic_search": {"rate": 0.040, "beta": 0.10, "arrival_share": 0.20},
        "social":         {"rate": 0.050, "beta": 0.05, "arrival_share": 0.15},
        "display":        {"rate": 0.060, "beta": 0.00, "arrival_share": 0.10},
        "email":          {"rate": 0.040, "beta": 0.20, "arrival_share": 0.05},
        "referral":       {"rate": 0.015, "beta": 0.45, "arrival_share": 0.10},
        "direct":         {"rate": 0.030, "beta": 0.08, "arrival_share": 0.15},
        "review_site":    {"rate": 0.020, "beta": 0.25, "arrival_share": 0.05},
        "website":        {"rate": 0.050, "beta": 0.12, "arrival_share": 0.0},
        "store":          {"rate": 0.010, "beta": 0.30, "arrival_share": 0.0},
        "sales_call":     {"rate": 0.012, "beta": 0.50, "arrival_share": 0.0},
        "offer":          {"rate": 0.020, "beta": -0.10, "arrival_share": 0.0},
    },
    "platforms": {"web": 0.5, "ios": 0.25, "android": 0.25},
    "campaigns": {"brand": 0.3, "seasonal_sale": 0.2, "retargeting": 0.2, "none": 0.3},
    "lost_event_share": 0.7,
    "post_purchase": {
        "rates": {"newsletter": 0.35, "website": 0.08, "email": 0.02, "offer": 0.01,
                  "support": 0.012, "complaint": 0.004},
        "support_satisfaction_slope": -0.6,
        "complaint_satisfaction_slope": -1.0,
        "repeat_rate_shape": 2.0,
        "repeat_rate_mean": 0.02,
        "contractual_repeat_rate": 0.004,
        "contractual_hazard_multiplier": 0.8,
        "billing_every_days": 30,
        "nps_first_day": 7, "nps_every_days": 30, "nps_response": 0.8,
        "nps_mean": 7.0, "nps_slope": 2.0, "nps_noise": 0.3,
        "csat_prob": 0.6, "csat_mean": 3.5, "csat_slope": 1.0, "csat_noise": 0.4,
        "drivers": {"satisfaction": -1.2, "complaints_90d": 0.6, "recency_30d": 0.10},
        "recency_cap_days": 360,
    },
}

EVENT_TYPES = ["touch", "purchase", "cancellation", "lead_lost", "nps_response", "csat_response"]
ET = {n: i for i, n in enumerate(EVENT_TYPES)}
STAGES = ["awareness", "interest", "evaluation", "purchase", "loyalty"]
ST = {n: i for i, n in enumerate(STAGES)}
SURVEYS = ["nps", "csat"]
POST_TOUCHPOINTS = ["billing", "transactional_email", "newsletter", "support", "complaint"]
UNKNOWN_TOUCHPOINTS = ["tv", "podcast", "affiliate", "billboard"]
DIRTY_KINDS = ["duplicate", "missing_customer_id", "out_of_window", "negative_revenue",
               "out_of_scale_score", "unknown_touchpoint"]
RAW_SCHEMA = pa.schema([
    ("customer_id", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")),
    ("touchpoint", pa.string()), ("event_type", pa.string()), ("revenue", pa.float64()),
    ("score", pa.float64()), ("survey", pa.string()), ("stage", pa.string()),
    ("segment", pa.string()), ("platform", pa.string()), ("campaign", pa.string()),
])

# Random streams (one per purpose; never reuse a number for two purposes).
(S_ARRIVAL, S_SEGMENT, S_PLATFORM, S_CAMPAIGN, S_ARRCHAN, S_LOST, S_EXP, S_LOSTEVT, S_NTOUCH,
 S_TTIME, S_TCHAN, S_SAT, S_CONTRACT, S_LAMBDA, S_PTP, S_REV, S_DIE, S_DIE_T, S_NPS, S_NPS_NOISE,
 S_CSAT, S_CSAT_NOISE, S_EVT, S_EVT_T, S_BILL_T, S_DIRTY, S_DIRTY_KIND, S_DIRTY_VAL, S_ORACLE,
 S_FIRST_CSAT) = range(1, 31)

_G1 = np.uint64(0x9E3779B97F4A7C15)
_G2 = np.uint64(0xD1B54A32D192ED03)
_G3 = np.uint64(0x8CB92BA72F3D8DD7)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (bijective avalanche) on a uint64 array, in place on a copy."""
    x = np.array(x, dtype=np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _C1
        x ^= x >> np.uint64(27)
        x *= _C2
        x ^= x >> np.uint64(31)
    return x


class _Hash:
    """Counter-based uniforms ``u(customer, stream, k)`` in (0, 1), keyed by the seed.

    u = mix(ck + stream*G2 + k*G3) with the customer key ck = mix(customer*G1 ^ seedkey)."""

    def __init__(self, seed: int):
        self.key = _mix(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _G1)[0]

    def ckey(self, cust) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _mix((np.asarray(cust).astype(np.uint64) * _G1) ^ self.key)

    def uk(self, ck: np.ndarray, stream: int, k=0) -> np.ndarray:
        """Uniforms from precomputed customer keys ``ck``."""
        with np.errstate(over="ignore"):
            h = ck + (np.asarray(k).astype(np.uint64) * _G3 + np.uint64(stream) * _G2)
        h = _mix(h)  # SplitMix64 output function over a Weyl-type counter
        return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)

    def u(self, cust, stream: int, k=0) -> np.ndarray:
        return self.uk(self.ckey(cust), stream, k)


def _categorical(u: np.ndarray, probs) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    cum = np.cumsum(p / p.sum())
    return np.minimum(np.searchsorted(cum, u, side="right"), len(p) - 1)


def _deep_merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def model_from_params(params: dict) -> dict:
    """DEFAULT_MODEL deep-merged with ``simulate.model`` from params (overrides win)."""
    model = _deep_merge(DEFAULT_MODEL, get(params, "simulate.model", None) or {})
    taxonomy = get(params, "ingest.taxonomy", None) or {}
    for tp in model["channels"]:
        if taxonomy and tp not in taxonomy:
            raise ConfigError(f"params.yaml: simulate.model.channels has '{tp}', which is not in "
                              f"ingest.taxonomy. Use one of {sorted(taxonomy)} or add it to the taxonomy.")
        missing = [k for k in ("rate", "beta", "arrival_share") if not isinstance(model["channels"][tp].get(k), (int, float))]
        if missing:
            raise ConfigError(f"params.yaml: simulate.model.channels.{tp} needs numeric {', '.join(missing)} "
                              f"(touches per day, log hazard ratio per touch, share of arrivals).")
    return model


# --------------------------------------------------------------------------- lead phase
class _SegPlan:
    """Row layout for exact per-lead cumulative sums (position-major: all first rows, all second rows, ...).

    Each lead's running sum is out[k] = out[k-1] + v[k] along its own rows only, so results do
    not depend on which other leads share the chunk."""

    def __init__(self, starts: np.ndarray, counts: np.ndarray):
        n = len(counts)
        order = np.argsort(-counts, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        N = int(counts.sum())
        lead = np.repeat(np.arange(n), counts)
        k = np.arange(N) - np.repeat(starts, counts)
        self.perm = np.argsort(k * max(n, 1) + rank[lead], kind="stable")
        sorted_counts = counts[order]
        kmax = int(counts.max()) if n else 0
        self.m = [int(np.searchsorted(-sorted_counts, -kk, side="left")) for kk in range(kmax)]  # leads with count > kk
        self.bounds = np.concatenate([[0], np.cumsum(self.m)]).astype(np.int64)

    def cumsum(self, values: np.ndarray) -> np.ndarray:
        v = values[self.perm]
        b, m = self.bounds, self.m
        for kk in range(1, len(m)):
            v[b[kk]:b[kk] + m[kk]] += v[b[kk - 1]:b[kk - 1] + m[kk]]
        out = np.empty_like(values)
        out[self.perm] = v
        return out


class _Touches:
    """Lead-phase touches of a set of leads, sorted by (lead, time); arrival touch first."""

    def __init__(self, lead, time, chan, starts, counts, plan):
        self.lead, self.time, self.chan, self.starts, self.counts = lead, time, chan, starts, counts
        self.plan = plan


def _generate_touches(h: _Hash, cust: np.ndarray, seg: np.ndarray, T: np.ndarray,
                      arrival_chan: np.ndarray, model: dict, stream_offset: int = 0) -> _Touches:
    """Arrival touch at t=0 plus a superposed Poisson process on (0, T_i) of all channels."""
    ch = model["channels"]
    rates = np.array([ch[c]["rate"] for c in ch])
    mult = np.array([s["rate_multiplier"] for s in model["segments"].values()])
    total = rates.sum() * mult[seg]
    mu = np.maximum(total * T, 1e-12)
    n = stats.poisson.ppf(h.u(cust, S_NTOUCH + stream_offset), mu).astype(np.int64)
    counts = n + 1
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    N = int(counts.sum())
    lead = np.repeat(np.arange(len(cust)), counts)
    k = np.arange(N) - np.repeat(starts, counts)  # 0 = arrival, 1.. = Poisson touches
    ck = h.ckey(cust)[lead]
    # sorted uniform order statistics from exponential spacings: U_(k) = S_k / S_(n+1)
    e = -np.log(h.uk(ck, S_TTIME + stream_offset, k))
    first = k == 0
    e0 = e[starts]
    e[first] = 0.0
    plan = _SegPlan(starts, counts)
    S_k = plan.cumsum(e)
    total = S_k[starts + counts - 1] + e0
    time = T[lead] * (S_k / total[lead])
    chan = _categorical(h.uk(ck, S_TCHAN + stream_offset, k), rates)
    chan[first] = arrival_chan
    return _Touches(lead, time, chan, starts, counts, plan)


def _conversion_times(tc: _Touches, beta: np.ndarray, h0: np.ndarray, T: np.ndarray,
                      E: np.ndarray) -> np.ndarray:
    """Exact first-conversion time (days since arrival) under the time-varying Cox hazard; NaN if none before T."""
    lp = tc.plan.cumsum(beta[tc.chan])
    end = np.empty_like(tc.time)
    end[:-1] = tc.time[1:]
    last = tc.starts + tc.counts - 1
    end[last] = T
    rate = h0[tc.lead] * np.exp(lp)
    inc = np.minimum(rate * (end - tc.time), 60.0)
    H = tc.plan.cumsum(inc)
    Ecap = np.minimum(E, 50.0)
    below = np.bincount(tc.lead, weights=(H < Ecap[tc.lead]).astype(float), minlength=len(T)).astype(np.int64)
    conv = below < tc.counts
    j = np.minimum(tc.starts + below, len(tc.time) - 1)
    t = tc.time[j] + (Ecap - (H[j] - inc[j])) / rate[j]
    t = np.clip(t, tc.time[j], end[j])
    return np.where(conv, t, np.nan)


def _model_arrays(model: dict):
    ch = model["channels"]
    segs = model["segments"]
    return (list(ch), np.array([ch[c]["beta"] for c in ch], dtype=float),
            np.array([ch[c]["arrival_share"] for c in ch], dtype=float),
            list(segs), np.array([s["share"] for s in segs.values()]),
            np.array([s["h0"] for s in segs.values()]), np.array([s["lost"] for s in segs.values()]))


def simulate_leads(model: dict, n: int, seed: int, horizon_days: float = 90.0,
                   offset: int = 1 << 40, beta: np.ndarray | None = None) -> pd.DataFrame:
    """Latent lead phase of ``n`` fresh leads (no window): columns segment, lost_time, conv_time (NaN = none before min(lost, horizon))."""
    h = _Hash(seed)
    chans, betas, arr_share, segs, seg_share, h0s, mus = _model_arrays(model)
    cust = np.arange(n, dtype=np.int64) + offset
    seg = _categorical(h.u(cust, S_SEGMENT), seg_share)
    L = -np.log(h.u(cust, S_LOST)) / mus[seg]
    E = -np.log(h.u(cust, S_EXP))
    T = np.minimum(L, horizon_days)
    arr = _categorical(h.u(cust, S_ARRCHAN), arr_share)
    tc = _generate_touches(h, cust, seg, T, arr, model)
    conv = _conversion_times(tc, betas if beta is None else beta, h0s[seg], T, E)
    return pd.DataFrame({"segment": np.array(segs)[seg], "lost_time": L, "conv_time": conv})


# --------------------------------------------------------------------------- chunk simulation
class _Events:
    def __init__(self):
        self.parts: list[dict] = []

    def add(self, cust, t, tp, et, stage, rev=None, score=None, survey=None):
        n = len(cust)
        if n == 0:
            return
        full = lambda v, fill, dtype: (np.full(n, fill, dtype=dtype) if v is None
                                       else np.broadcast_to(np.asarray(v, dtype=dtype), (n,)))
        self.parts.append({"cust": np.asarray(cust, dtype=np.int64), "t": np.asarray(t, dtype=float),
                           "tp": full(tp, 0, np.int16), "et": full(et, 0, np.int8),
                           "stage": full(stage, -1, np.int8), "rev": full(rev, np.nan, float),
                           "score": full(score, np.nan, float), "survey": full(survey, -1, np.int8)})

    def concat(self) -> dict:
        keys = ["cust", "t", "tp", "et", "stage", "rev", "score", "survey"]
        if not self.parts:
            return {k: np.array([]) for k in keys}
        return {k: np.concatenate([p[k] for p in self.parts]) for k in keys}


class _Setup:
    """Everything derived once from params (shared by all chunks)."""

    def __init__(self, params: dict, n_customers: int, seed: int):
        self.params = params
        self.model = model_from_params(params)
        self.n = int(n_customers)
        self.seed = int(seed)
        self.h = _Hash(seed)
        start = pd.Timestamp(get(params, "window.start"), tz="UTC")
        end = pd.Timestamp(get(params, "window.end"), tz="UTC")
        if start.normalize() != start or end.normalize() != end or end <= start:
            raise ConfigError("params.yaml: window.start/window.end must be dates (UTC midnight) with end after start.")
        self.start, self.end = start, end
        self.W = (end - start).days
        self.start_us = int(start.value // 1000)
        (self.chans, self.beta, self.arr_share, self.segs, self.seg_share, self.h0,
         self.mu) = _model_arrays(self.model)
        segm = self.model["segments"]
        self.tp_names = list(dict.fromkeys(self.chans + ["website", "store", "sales_call", "offer", "email"]
                                           + POST_TOUCHPOINTS))
        self.tp_code = {n: i for i, n in enumerate(self.tp_names)}
        self.all_tp = self.tp_names + UNKNOWN_TOUCHPOINTS
        self.chan_code = np.array([self.tp_code[c] for c in self.chans], dtype=np.int16)
        tax = get(params, "ingest.taxonomy", None) or {}
        self.chan_phase = np.array([(tax.get(c) or {}).get("phase", "pre_purchase") for c in self.chans])
        self.ptp_names = ["website", "store", "sales_call"]
        self.ptp_probs = np.array([[segm[s]["purchase_touchpoint"].get(p, 0.0) for p in self.ptp_names]
                                   for s in self.segs])
        self.platforms = list(self.model["platforms"])
        self.campaigns = list(self.model["campaigns"])
        self.dirty_fraction = float(get(params, "simulate.dirty_fraction", 0.0) or 0.0)
        H = int(get(params, "churn.horizon_days", 90))
        self.H = H
        self.inactivity = int(get(params, "churn.inactivity_days", 90))
        self.K = int(get(params, "simulate.oracle_replicates", 16))
        cut = list(get(params, "churn.train_cutoffs", []) or []) + [get(params, "churn.eval_cutoff", None)]
        self.cutoffs = []  # (label, day index)
        for c in dict.fromkeys([c for c in cut if c]):
            d = (pd.Timestamp(c, tz="UTC") - start).days
            if 0 < d and d + H <= self.W:
                self.cutoffs.append((str(pd.Timestamp(c).date()), d))
        ev = get(params, "churn.eval_cutoff", None)
        self.eval_cutoff = str(pd.Timestamp(ev).date()) if ev else None


def _ids(cust: np.ndarray) -> list[str]:
    return [f"C{int(c):09d}" for c in cust]


def _simulate_chunk(S: _Setup, lo: int, hi: int) -> dict:
    """Simulate customers lo..hi-1: returns events (dict of arrays), customer attributes, truth partials."""
    h, m = S.h, S.model
    pp = m["post_purchase"]
    cust = np.arange(lo, hi, dtype=np.int64)
    n = len(cust)
    W = float(S.W)
    a = W * h.u(cust, S_ARRIVAL)
    seg = _categorical(h.u(cust, S_SEGMENT), S.seg_share)
    plat = _categorical(h.u(cust, S_PLATFORM), list(m["platforms"].values()))
    camp = _categorical(h.u(cust, S_CAMPAIGN), list(m["campaigns"].values()))
    arr = _categorical(h.u(cust, S_ARRCHAN), S.arr_share)
    L = -np.log(h.u(cust, S_LOST)) / S.mu[seg]
    E = -np.log(h.u(cust, S_EXP))
    T = np.minimum(L, W - a)
    tc = _generate_touches(h, cust, seg, T, arr, m)
    conv = _conversion_times(tc, S.beta, S.h0[seg], T, E)
    converted = ~np.isnan(conv)
    # counterfactuals: channel switched off (common random numbers)
    incremental = {}
    for ci, c in enumerate(S.chans):
        b = S.beta.copy()
        b[ci] = 0.0
        incremental[c] = int(converted.sum() - (~np.isnan(_conversion_times(tc, b, S.h0[seg], T, E))).sum())
    base_all_off = int((~np.isnan(_conversion_times(tc, np.zeros_like(S.beta), S.h0[seg], T, E))).sum())

    ev = _Events()
    # lead-phase touches before conversion / lost
    keep = np.isnan(conv[tc.lead]) | (tc.time < conv[tc.lead])
    k_lead, k_time, k_chan = tc.lead[keep], tc.time[keep], tc.chan[keep]
    is_first = np.zeros(len(tc.lead), dtype=bool)
    is_first[tc.starts] = True
    k_first = is_first[keep]
    stage = np.where(k_first, ST["awareness"],
                     np.where(S.chan_phase[k_chan] == "purchase", ST["evaluation"], ST["interest"]))
    ev.add(k_lead, a[k_lead] + k_time, S.chan_code[k_chan], ET["touch"], stage.astype(np.int8))
    # lead lost (competing risk inside the window)
    lost = ~converted & (L < W - a)
    explicit = lost & (h.u(cust, S_LOSTEVT) < m["lost_event_share"])
    last_stage = np.zeros(n, dtype=np.int8)
    last_stage[k_lead] = stage  # rows sorted by time within lead: the last assignment wins
    last_tp = np.zeros(n, dtype=np.int16)
    last_tp[k_lead] = S.chan_code[k_chan]
    il = np.flatnonzero(explicit)
    ev.add(il, a[il] + L[il], last_tp[il], ET["lead_lost"], last_stage[il])

    # first purchase
    ic = np.flatnonzero(converted)
    tconv = a[ic] + conv[ic]
    cseg = seg[ic]
    u_ptp = h.u(cust[ic], S_PTP)
    cum = np.cumsum(S.ptp_probs / S.ptp_probs.sum(axis=1, keepdims=True), axis=1)
    ptp = np.minimum((u_ptp[:, None] >= cum[cseg]).sum(axis=1), 2)
    ptp_code = np.array([S.tp_code[p] for p in S.ptp_names], dtype=np.int16)[ptp]
    rmean = np.array([m["segments"][s]["revenue_log_mean"] for s in S.segs])
    rsd = np.array([m["segments"][s]["revenue_log_sd"] for s in S.segs])

    def revenue(idx_conv, k):
        z = special.ndtri(h.u(cust[ic[idx_conv]], S_REV, k))
        return np.round(np.exp(rmean[cseg[idx_conv]] + rsd[cseg[idx_conv]] * z), 2)

    allj = np.arange(len(ic))
    ev.add(ic, tconv, ptp_code, ET["purchase"], ST["purchase"], rev=revenue(allj, 0))
    day_end = np.floor(tconv) + 1.0
    ev.add(ic, tconv + 0.25 * (day_end - tconv), S.tp_code["transactional_email"], ET["touch"], ST["loyalty"])
    sat = special.ndtri(h.u(cust[ic], S_SAT))

    def csat_score(cidx, k):
        z = special.ndtri(h.u(cust[ic[cidx]], S_CSAT_NOISE, k))
        return np.clip(np.round(pp["csat_mean"] + pp["csat_slope"] * sat[cidx] + pp["csat_noise"] * z), 1, 5)

    fc = h.u(cust[ic], S_FIRST_CSAT) < pp["csat_prob"]
    jf = allj[fc]
    ev.add(ic[jf], tconv[jf] + 0.5 * (day_end[jf] - tconv[jf]), ptp_code[jf], ET["csat_response"],
           ST["loyalty"], score=csat_score(jf, 0), survey=SURVEYS.index("csat"))

    post = _post_purchase(S, ev, cust, ic, cseg, sat, tconv, ptp_code, revenue, csat_score)

    out = ev.concat()
    order = np.lexsort((out["t"], out["cust"]))
    out = {k: v[order] for k, v in out.items()}
    return {"events": out, "cust": cust, "seg": seg, "plat": plat, "camp": camp, "a": a,
            "conv": conv, "lost": lost, "explicit_lost": explicit, "incremental": incremental,
            "base_all_off": base_all_off, "post": post}


def _post_purchase(S: _Setup, ev: _Events, cust, ic, cseg, sat, tconv, ptp_code, revenue, csat_score) -> dict:
    """Daily discrete-time post-purchase simulation for converted customers (local index ic)."""
    h, m = S.h, S.model
    pp = m["post_purchase"]
    nc = len(ic)
    gc = cust[ic]  # global customer index
    ck = h.ckey(gc)
    W = S.W
    contract_share = np.array([m["segments"][s]["contractual_share"] for s in S.segs])
    contract = h.uk(ck, S_CONTRACT) < contract_share[cseg]
    lam = special.gammaincinv(pp["repeat_rate_shape"], h.uk(ck, S_LAMBDA)) * (pp["repeat_rate_mean"] / pp["repeat_rate_shape"])
    lam = np.where(contract, pp["contractual_repeat_rate"], lam)
    base = np.array([m["segments"][s]["dissolution_base"] for s in S.segs])[cseg]
    base = base * np.where(contract, pp["contractual_hazard_multiplier"], 1.0)
    drv = pp["drivers"]
    cap = float(pp["recency_cap_days"])
    rates = pp["rates"]
    fixed_names = [k for k in rates if k not in ("support", "complaint")]
    fixed_total = float(sum(rates[k] for k in fixed_names))
    p_fixed = {k: 1.0 - math.exp(-rates[k]) for k in fixed_names}
    p_support = 1.0 - np.exp(-rates["support"] * np.exp(pp["support_satisfaction_slope"] * sat))
    p_complaint = 1.0 - np.exp(-rates["complaint"] * np.exp(pp["complaint_satisfaction_slope"] * sat))
    p_purchase = 1.0 - np.exp(-lam)
    # q0 = P(no event of the Poisson-like types on a day | alive)
    log_q0 = -(fixed_total + rates["support"] * np.exp(pp["support_satisfaction_slope"] * sat)
               + rates["complaint"] * np.exp(pp["complaint_satisfaction_slope"] * sat) + lam)
    sat_term = drv["satisfaction"] * sat
    conv_day = np.floor(tconv).astype(np.int64)
    alive = np.ones(nc, dtype=bool)
    diss_time = np.full(nc, np.nan)
    last_purchase = tconv.copy()
    last_event_day = conv_day.copy()
    comp_days: list[np.ndarray] = []  # complaint (customer, day) pairs, for complaints_90d at cutoffs
    ring = np.zeros((91, nc), dtype=np.int16)  # ring[d % 91] = complaints on day d
    comp90 = np.zeros(nc, dtype=np.int64)
    tp = S.tp_code
    csat_i = SURVEYS.index("csat")
    oracle = []
    cutoff_days = {d: lab for lab, d in S.cutoffs}
    n_repeat = 0
    st = {"sat_term": sat_term, "base": base, "cap": cap, "drv": drv, "contract": contract, "alive": alive,
          "conv_day": conv_day, "last_event_day": last_event_day, "last_purchase": last_purchase,
          "p_complaint": p_complaint, "p_purchase": p_purchase, "log_q0": log_q0, "ck": ck, "ic": ic}

    base_sat = base * np.exp(sat_term)
    comp_tab = np.exp(drv["complaints_90d"] * np.arange(400))  # complaints_90d is a small count

    def hazard(idx, d, c90, lastp):
        """P(dissolve on day d | alive at its start) = 1 - exp(-h_d)."""
        rec = np.minimum(d - lastp, cap) * (drv["recency_30d"] / 30.0)
        c = np.minimum(np.asarray(c90, dtype=np.int64), 399)
        return -np.expm1(-base_sat[idx] * comp_tab[c] * np.exp(rec))

    st["hazard"] = hazard
    first_day = int(conv_day.min()) + 1 if nc else W
    for d in range(first_day, W):
        slot = d % 91
        comp90 -= ring[slot]
        ring[slot] = 0
        if d in cutoff_days:
            oracle.append(_oracle(S, st, d, cutoff_days[d], ring, comp90))
        idx = np.flatnonzero(alive & (conv_day < d))
        if len(idx) == 0:
            continue
        gk = ck[idx]
        die = h.uk(gk, S_DIE, d) < hazard(idx, d, comp90[idx], last_purchase[idx])
        if die.any():
            dd = idx[die]
            alive[dd] = False
            diss_time[dd] = d + h.uk(ck[dd], S_DIE_T, d)
            cc = dd[contract[dd]]
            ev.add(ic[cc], diss_time[cc], tp["billing"], ET["cancellation"], ST["loyalty"])
            idx = idx[~die]
            gk = ck[idx]
        any_ev = np.zeros(len(idx), dtype=bool)

        def when(e, sel):
            return d + h.uk(gk[sel], S_EVT_T + 64 * e, d)

        for e, name in enumerate(fixed_names):
            o = h.uk(gk, S_EVT + 64 * e, d) < p_fixed[name]
            any_ev |= o
            ev.add(ic[idx[o]], when(e, o), tp[name], ET["touch"], ST["loyalty"])
        # support (+ CSAT)
        o = h.uk(gk, S_EVT + 64 * 10, d) < p_support[idx]
        any_ev |= o
        sidx = idx[o]
        ts = when(10, o)
        ev.add(ic[sidx], ts, tp["support"], ET["touch"], ST["loyalty"])
        cs = h.uk(ck[sidx], S_CSAT, d) < pp["csat_prob"]
        ev.add(ic[sidx[cs]], ts[cs] + 0.5 * (d + 1 - ts[cs]), tp["support"], ET["csat_response"], ST["loyalty"],
               score=csat_score(sidx[cs], 2 * d + 1), survey=csat_i)
        # complaint
        o = h.uk(gk, S_EVT + 64 * 11, d) < p_complaint[idx]
        any_ev |= o
        cidx = idx[o]
        ev.add(ic[cidx], when(11, o), tp["complaint"], ET["touch"], ST["loyalty"])
        ring[slot, cidx] += 1
        comp90[cidx] += 1
        # repeat purchase (+ transactional email, CSAT)
        o = h.uk(gk, S_EVT + 64 * 12, d) < p_purchase[idx]
        any_ev |= o
        pidx = idx[o]
        if len(pidx):
            n_repeat += len(pidx)
            tp_t = when(12, o)
            ev.add(ic[pidx], tp_t, ptp_code[pidx], ET["purchase"], ST["loyalty"], rev=revenue(pidx, d))
            ev.add(ic[pidx], tp_t + 0.25 * (d + 1 - tp_t), tp["transactional_email"], ET["touch"], ST["loyalty"])
            cs = h.uk(ck[pidx], S_CSAT, 100_000 + d) < pp["csat_prob"]
            ev.add(ic[pidx[cs]], tp_t[cs] + 0.5 * (d + 1 - tp_t[cs]), ptp_code[pidx[cs]], ET["csat_response"],
                   ST["loyalty"], score=csat_score(pidx[cs], 2 * d + 2), survey=csat_i)
            last_purchase[pidx] = tp_t
        # billing (contractual)
        since = d - conv_day[idx]
        b = contract[idx] & (since % pp["billing_every_days"] == 0)
        any_ev |= b
        ev.add(ic[idx[b]], d + h.uk(gk[b], S_BILL_T, d), tp["billing"], ET["touch"], ST["loyalty"])
        # NPS
        nd = _nps_day(pp, since)
        if nd.any():
            nd[nd] = h.uk(gk[nd], S_NPS, d) < pp["nps_response"]
            any_ev |= nd
            z = special.ndtri(h.uk(gk[nd], S_NPS_NOISE, d))
            score = np.clip(np.round(pp["nps_mean"] + pp["nps_slope"] * sat[idx[nd]] + pp["nps_noise"] * z), 0, 10)
            ev.add(ic[idx[nd]], d + h.uk(gk[nd], S_EVT_T + 64 * 13, d), ptp_code[idx[nd]], ET["nps_response"],
                   ST["loyalty"], score=score, survey=SURVEYS.index("nps"))
        last_event_day[idx[any_ev]] = d
    return {"contract": contract, "alive": alive, "diss_time": diss_time, "sat": sat, "oracle": oracle,
            "n_repeat": n_repeat}


def _nps_day(pp: dict, since: np.ndarray) -> np.ndarray:
    """Day of an NPS invitation: ``since`` = days since the first purchase's day."""
    first, every = pp["nps_first_day"], pp["nps_every_days"]
    return (since >= first) & ((since - first) % every == 0)


def _oracle(S: _Setup, st: dict, dc: int, label: str, ring: np.ndarray, comp90: np.ndarray) -> dict:
    """True P(engine label = 1 | latent state at the start of day dc) for the engine's active population.

    Complaints already in the 90-day window expire on known days; complaints made during the
    horizon (H <= 90) do not expire before its end."""
    pp = S.model["post_purchase"]
    H = S.H
    alive, contract, conv_day = st["alive"], st["contract"], st["conv_day"]
    hazard = st["hazard"]
    explicit_before = contract & ~alive  # a contractual dissolution before dc is a cancellation event
    pop = (conv_day < dc) & ~explicit_before & (st["last_event_day"] >= dc - S.inactivity)
    idx = np.flatnonzero(pop)
    risk = np.full(len(idx), np.nan)
    risk[~alive[idx]] = 1.0
    # complaints_90d on day dc+j without new complaints: comp90 - complaints expiring on days dc+1..dc+j
    expire = np.stack([ring[(dc + j) % 91] for j in range(1, H)]) if H > 1 else np.zeros((0, len(comp90)))

    def c90_path(sel):
        c = np.empty((H, len(sel)))
        c[0] = comp90[sel]
        if H > 1:
            c[1:] = comp90[sel][None, :] - np.cumsum(expire[:, sel], axis=0)
        return c

    # non-contractual alive: exact along the no-event path
    nsel = np.flatnonzero(alive[idx] & ~contract[idx])
    if len(nsel):
        nidx = idx[nsel]
        c90 = c90_path(nidx)
        surv = np.ones(len(nidx))
        P = np.zeros(len(nidx))
        lp = st["last_purchase"][nidx]
        q0 = np.exp(st["log_q0"][nidx])
        for j in range(H):
            d = dc + j
            p = hazard(nidx, d, c90[j], lp)
            P += surv * p
            nps = _nps_day(pp, d - conv_day[nidx])
            no_event = q0 * np.where(nps, 1.0 - pp["nps_response"], 1.0)
            surv = surv * (1.0 - p) * no_event
        risk[nsel] = P + surv
    # contractual alive: Monte Carlo over complaint / purchase paths, dissolution integrated out
    csel = np.flatnonzero(alive[idx] & contract[idx])
    if len(csel):
        K = S.K
        cidx = idx[csel]
        c90 = c90_path(cidx)
        rep = np.repeat(np.arange(len(cidx)), K)
        crep = cidx[rep]
        kk = np.tile(np.arange(K, dtype=np.int64), len(cidx))
        gk = st["ck"][crep]
        new = np.zeros(len(rep))
        lp = st["last_purchase"][crep].copy()
        logS = np.zeros(len(rep))
        pc, pb = st["p_complaint"][crep], st["p_purchase"][crep]
        for j in range(H):
            d = dc + j
            logS += np.log1p(-np.minimum(hazard(crep, d, c90[j][rep] + new, lp), 1.0 - 1e-12))
            key = (kk * 4096 + j) * 2
            new += S.h.uk(gk, S_ORACLE + 64 * dc, key) < pc
            op = S.h.uk(gk, S_ORACLE + 64 * dc, key + 1) < pb
            lp = np.where(op, d + 0.5, lp)
        risk[csel] = 1.0 - np.exp(logS).reshape(len(cidx), K).mean(axis=1)
    return {"cutoff": label, "day": dc, "local": st["ic"][idx], "risk": risk}


# --------------------------------------------------------------------------- assembling rows
def _dirty(S: _Setup, ev: dict, cust: np.ndarray) -> tuple[dict, dict]:
    """Per clean row: with prob dirty_fraction emit one extra dirty copy (one problem each)."""
    n = len(ev["t"])
    counts = {k: 0 for k in DIRTY_KINDS}
    if n == 0 or S.dirty_fraction <= 0:
        return ev, counts
    gcust = cust[ev["cust"]]
    first = np.r_[True, ev["cust"][1:] != ev["cust"][:-1]]
    grp_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    k = np.arange(n) - grp_start  # row ordinal within customer
    sel = np.flatnonzero(S.h.u(gcust, S_DIRTY, k) < S.dirty_fraction)
    kind = np.minimum((S.h.u(gcust[sel], S_DIRTY_KIND, k[sel]) * len(DIRTY_KINDS)).astype(int), len(DIRTY_KINDS) - 1)
    uval = S.h.u(gcust[sel], S_DIRTY_VAL, k[sel])
    d = {key: v[sel].copy() for key, v in ev.items()}
    d["missing_id"] = np.zeros(len(sel), dtype=bool)
    for i, name in enumerate(DIRTY_KINDS):
        counts[name] = int((kind == i).sum())
    m = kind == 1
    d["missing_id"][m] = True
    m = kind == 2  # outside the window: 1-30 days before start or after end
    before = uval < 0.5
    d["t"][m] = np.where(before[m], -1.0 - 29.0 * uval[m] * 2, S.W + 1.0 + 29.0 * (uval[m] - 0.5) * 2)
    m = kind == 3  # negative revenue on a purchase row
    d["et"][m] = ET["purchase"]
    d["rev"][m] = -np.round(1.0 + 200.0 * uval[m], 2)
    d["tp"][m] = S.tp_code["website"]
    d["score"][m] = np.nan
    d["survey"][m] = -1
    m = kind == 4  # survey answer outside its scale
    d["et"][m] = ET["nps_response"]
    d["survey"][m] = SURVEYS.index("nps")
    d["score"][m] = np.where(uval[m] < 0.5, 11.0 + np.floor(uval[m] * 178), -1.0)
    d["rev"][m] = np.nan
    m = kind == 5  # unknown touchpoint on a plain touch
    d["tp"][m] = len(S.tp_names) + np.minimum((uval[m] * len(UNKNOWN_TOUCHPOINTS)).astype(int), len(UNKNOWN_TOUCHPOINTS) - 1)
    d["et"][m] = ET["touch"]
    d["rev"][m] = np.nan
    d["score"][m] = np.nan
    d["survey"][m] = -1
    # place each dirty row right after its source row
    pos = sel + 1
    out = {}
    for key in ev:
        out[key] = np.insert(ev[key], pos, d[key])
    missing = np.zeros(n, dtype=bool)
    out["missing_id"] = np.insert(missing, pos, d["missing_id"])
    return out, counts


def _dict_array(codes: np.ndarray, names: list[str]) -> pa.Array:
    codes = np.asarray(codes, dtype=np.int32)
    idx = pa.array(codes, mask=codes < 0, type=pa.int32())
    return pa.DictionaryArray.from_arrays(idx, pa.array(names, type=pa.string())).cast(pa.string())


def _to_table(S: _Setup, ch: dict, ev: dict) -> pa.Table:
    cust = ch["cust"]
    ids = pa.array(_ids(cust), type=pa.string())
    local = ev["cust"].astype(np.int32)
    id_col = pa.DictionaryArray.from_arrays(pa.array(local, mask=ev["missing_id"], type=pa.int32()), ids).cast(pa.string())
    us = S.start_us + np.floor(ev["t"] * US_PER_DAY).astype(np.int64)
    return pa.table({
        "customer_id": id_col,
        "timestamp": pa.array(us, type=pa.timestamp("us", tz="UTC")),
        "touchpoint": _dict_array(ev["tp"], S.all_tp),
        "event_type": _dict_array(ev["et"], EVENT_TYPES),
        "revenue": pa.array(ev["rev"], mask=np.isnan(ev["rev"]), type=pa.float64()),
        "score": pa.array(ev["score"], mask=np.isnan(ev["score"]), type=pa.float64()),
        "survey": _dict_array(ev["survey"], SURVEYS),
        "stage": _dict_array(ev["stage"], STAGES),
        "segment": _dict_array(ch["seg"][local], S.segs),
        "platform": _dict_array(ch["plat"][local], S.platforms),
        "campaign": _dict_array(ch["camp"][local], S.campaigns),
    }, schema=RAW_SCHEMA)


# --------------------------------------------------------------------------- driver
def _iter_chunks(S: _Setup, chunk: int) -> Iterator[tuple[pa.Table, dict, dict]]:
    for lo in range(0, S.n, chunk):
        hi = min(S.n, lo + chunk)
        ch = _simulate_chunk(S, lo, hi)
        ev = ch["events"]
        n_clean = len(ev["t"])
        labels = _realised_labels(S, ch, ev)
        dirty_ev, dcounts = _dirty(S, ev, ch["cust"])
        if "missing_id" not in dirty_ev:
            dirty_ev["missing_id"] = np.zeros(len(dirty_ev["t"]), dtype=bool)
        table = _to_table(S, ch, dirty_ev)
        part = {
            "n_clean": n_clean, "dirty": dcounts, "labels": labels,
            "n_purchase": int((ev["et"] == ET["purchase"]).sum()),
            "n_cancel": int((ev["et"] == ET["cancellation"]).sum()),
            "n_lead_lost": int((ev["et"] == ET["lead_lost"]).sum()),
            "n_survey": int(np.isin(ev["et"], [ET["nps_response"], ET["csat_response"]]).sum()),
        }
        yield table, ch, part


def _realised_labels(S: _Setup, ch: dict, ev: dict) -> list[dict]:
    """Engine labels for the oracle populations, from the simulated events after each cutoff."""
    out = []
    n = len(ch["cust"])
    for o in ch["post"]["oracle"]:
        d0, d1 = o["day"], o["day"] + S.H
        inh = (ev["t"] >= d0) & (ev["t"] < d1)
        anyc = np.bincount(ev["cust"][inh], minlength=n) > 0
        canc = np.bincount(ev["cust"][inh & (ev["et"] == ET["cancellation"])], minlength=n) > 0
        lab = canc[o["local"]] | ~anyc[o["local"]]
        out.append({"cutoff": o["cutoff"], "customer": ch["cust"][o["local"]], "risk": o["risk"],
                    "label": lab})
    return out


def _truth_churn_table(S: _Setup, labels: list[dict]) -> pa.Table:
    if not labels:
        return pa.table({"cutoff": pa.array([], pa.timestamp("us", tz="UTC")), "customer_id": pa.array([], pa.string()),
                         "true_risk": pa.array([], pa.float64()), "label": pa.array([], pa.bool_())})
    cut = np.concatenate([np.full(len(x["customer"]), int(pd.Timestamp(x["cutoff"], tz="UTC").value // 1000), dtype=np.int64)
                          for x in labels])
    cust = np.concatenate([x["customer"] for x in labels])
    return pa.table({
        "cutoff": pa.array(cut, type=pa.timestamp("us", tz="UTC")),
        "customer_id": pa.array(_ids(cust), type=pa.string()),
        "true_risk": pa.array(np.concatenate([x["risk"] for x in labels]), type=pa.float64()),
        "label": pa.array(np.concatenate([x["label"] for x in labels]), type=pa.bool_()),
    })


class _Acc:
    """Accumulates truth over chunks."""

    def __init__(self, S: _Setup):
        self.S = S
        self.customers = 0
        self.events = 0
        self.rows = 0
        self.acq = 0
        self.base_all_off = 0
        self.inc = {c: 0 for c in S.chans}
        self.dirty = {k: 0 for k in DIRTY_KINDS}
        self.leads_lost = 0
        self.leads_lost_explicit = 0
        self.purchases = 0
        self.repeat = 0
        self.cancel = 0
        self.surveys = 0
        self.contractual = 0
        self.dissolved = 0
        self.insample_n = 0
        self.insample_conv = {d: 0 for d in (7, 30, 90)}
        self.eval_risk: list[np.ndarray] = []
        self.eval_label: list[np.ndarray] = []

    def add(self, table: pa.Table, ch: dict, part: dict) -> None:
        S = self.S
        self.customers += len(ch["cust"])
        self.events += part["n_clean"]
        self.rows += table.num_rows
        conv = ch["conv"]
        self.acq += int((~np.isnan(conv)).sum())
        self.base_all_off += ch["base_all_off"]
        for c, v in ch["incremental"].items():
            self.inc[c] += v
        for k, v in part["dirty"].items():
            self.dirty[k] += v
        self.leads_lost += int(ch["lost"].sum())
        self.leads_lost_explicit += int(ch["explicit_lost"].sum())
        self.purchases += part["n_purchase"]
        self.cancel += part["n_cancel"]
        self.surveys += part["n_survey"]
        self.repeat += ch["post"]["n_repeat"]
        self.contractual += int(ch["post"]["contract"].sum())
        self.dissolved += int((~ch["post"]["alive"]).sum())
        full = ch["a"] + 90.0 <= S.W
        self.insample_n += int(full.sum())
        for d in self.insample_conv:
            self.insample_conv[d] += int((conv[full] <= d).sum())
        for lab in part["labels"]:
            if lab["cutoff"] == S.eval_cutoff:
                self.eval_risk.append(lab["risk"])
                self.eval_label.append(lab["label"])


def _finish_truth(S: _Setup, acc: _Acc) -> dict:
    from sklearn.metrics import roc_auc_score

    m = S.model
    tax = get(S.params, "ingest.taxonomy", None) or {}
    n_mc = int(get(S.params, "simulate.truth_mc_leads", 200_000))
    conv_by = {d: 0 for d in (7, 30, 90)}
    for lo in range(0, n_mc, 50_000):  # chunks of fresh leads (results do not depend on the chunking)
        ct = simulate_leads(m, min(50_000, n_mc - lo), S.seed, offset=(1 << 40) + lo)["conv_time"].to_numpy()
        for d in conv_by:
            conv_by[d] += int((ct <= d).sum())
    p_by_day = {str(d): v / n_mc for d, v in conv_by.items()} if n_mc > 0 else None
    inc_total = sum(acc.inc.values())
    risk = np.concatenate(acc.eval_risk) if acc.eval_risk else np.array([])
    label = np.concatenate(acc.eval_label) if acc.eval_label else np.array([], dtype=bool)
    if len(label) and 0 < label.sum() < len(label):
        oracle_auc, note = float(roc_auc_score(label, risk)), None
    else:
        oracle_auc, note = None, "no eval cutoff inside the window, or a single class among active customers"
    sim = {k: v for k, v in (S.params.get("simulate") or {}).items() if k != "model"}
    truth = {
        "params": {"simulate": sim, "seed": S.seed, "n_customers": S.n, "model": m},
        "window": {"start": str(S.start.date()), "end": str(S.end.date()), "days": S.W},
        "channels": {c: {"log_hazard_ratio": float(m["channels"][c]["beta"]),
                         "rate_per_day": float(m["channels"][c]["rate"]),
                         "arrival_share": float(m["channels"][c]["arrival_share"]),
                         "phase": (tax.get(c) or {}).get("phase")} for c in S.chans},
        "rate_multiplier_by_segment": {s: float(m["segments"][s]["rate_multiplier"]) for s in S.segs},
        "segment_share": {s: float(m["segments"][s]["share"]) for s in S.segs},
        "baseline_conversion_hazard_per_day": {s: float(m["segments"][s]["h0"]) for s in S.segs},
        "lost_hazard_per_day": {s: float(m["segments"][s]["lost"]) for s in S.segs},
        "lost_event_share": float(m["lost_event_share"]),
        "p_convert_by_day": p_by_day,
        "p_convert_by_day_mc_leads": n_mc,
        "p_convert_by_day_in_sample": ({str(d): v / acc.insample_n for d, v in acc.insample_conv.items()}
                                       if acc.insample_n else None),
        "p_convert_by_day_in_sample_leads": acc.insample_n,
        "incremental_conversions": {c: float(v) for c, v in acc.inc.items()},
        "incremental_share": {c: (float(v) / inc_total if inc_total else None) for c, v in acc.inc.items()},
        "acquisition_conversions": acc.acq,
        "conversions_all_channels_off": acc.base_all_off,
        "churn": {
            "horizon_days": S.H, "inactivity_days": S.inactivity, "eval_cutoff": S.eval_cutoff,
            "cutoffs": [c for c, _ in S.cutoffs],
            "drivers": {k: float(v) for k, v in m["post_purchase"]["drivers"].items()},
            "driver_features": {"satisfaction": "last_nps, last_csat (score = mean + slope*s + noise)",
                                "complaints_90d": "complaints_90d", "recency_30d": "recency_days / 30 (capped)"},
            "contractual_share_by_segment": {s: float(m["segments"][s]["contractual_share"]) for s in S.segs},
            "dissolution_base_hazard_per_day": {s: float(m["segments"][s]["dissolution_base"]) for s in S.segs},
            "oracle_auc": oracle_auc, "base_rate": float(label.mean()) if len(label) else None,
            "n_eval": int(len(label)), "mean_true_risk": float(risk.mean()) if len(risk) else None,
        },
        "counts": {"customers": acc.customers, "events": acc.events, "rows_written": acc.rows,
                   "conversions": acc.purchases, "acquisition_conversions": acc.acq,
                   "repeat_purchases": acc.repeat, "leads_lost": acc.leads_lost,
                   "leads_lost_explicit": acc.leads_lost_explicit, "cancellations": acc.cancel,
                   "surveys": acc.surveys, "contractual_customers": acc.contractual,
                   "dissolved_customers": acc.dissolved},
        "dirty_rows": {**acc.dirty, "total": int(sum(acc.dirty.values()))},
        "funnel_stage_rule": ("awareness = arrival touch; interest = later pre_purchase touches before the first "
                              "purchase; evaluation = purchase-phase touches before it; purchase = first purchase; "
                              "loyalty = every later event; lead_lost carries the stage of the last touch"),
    }
    if note:
        truth["churn"]["oracle_auc_note"] = note
    return truth


def _setup(params: dict, n_customers: int | None, seed: int | None) -> _Setup:
    n = int(n_customers if n_customers is not None else get(params, "simulate.n_customers"))
    s = int(seed if seed is not None else get(params, "simulate.seed"))
    if n < 1:
        raise ConfigError("params.yaml: simulate.n_customers must be a positive integer.")
    return _Setup(params, n, s)


def simulate_events(params: dict, n_customers: int | None = None, seed: int | None = None,
                    chunk_customers: int | None = None, return_churn: bool = False):
    """Simulate in memory: ``(events DataFrame in the raw schema (dirty rows included), truth dict)``.

    With ``return_churn=True`` also returns the truth_churn DataFrame (cutoff, customer_id, true_risk, label)."""
    S = _setup(params, n_customers, seed)
    chunk = int(chunk_customers or get(params, "simulate.chunk_customers", 50_000))
    acc = _Acc(S)
    tables, churn = [], []
    for table, ch, part in _iter_chunks(S, chunk):
        acc.add(table, ch, part)
        tables.append(table)
        churn.extend(part["labels"])
    events = pa.concat_tables(tables).to_pandas() if tables else RAW_SCHEMA.empty_table().to_pandas()
    truth = _finish_truth(S, acc)
    if return_churn:
        return events, truth, _truth_churn_table(S, churn).to_pandas()
    return events, truth


def run_stage(params: dict) -> dict:
    """Stream the log to ``simulate.output`` chunk by chunk; write truth.json and truth_churn.parquet."""
    S = _setup(params, None, None)
    chunk = int(get(params, "simulate.chunk_customers", 50_000))
    out = project_path(params, get(params, "simulate.output"))
    truth_path = project_path(params, get(params, "simulate.truth"))
    churn_path = project_path(params, get(params, "simulate.truth_churn"))
    for p in (out, truth_path, churn_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    acc = _Acc(S)
    tmp = out.with_name(out.name + ".tmp")
    ctmp = churn_path.with_name(churn_path.name + ".tmp")
    cwriter = None
    with pq.ParquetWriter(tmp, RAW_SCHEMA, compression="zstd") as writer:
        for table, ch, part in _iter_chunks(S, chunk):
            writer.write_table(table, row_group_size=1_000_000)
            acc.add(table, ch, part)
            ct = _truth_churn_table(S, part["labels"])
            if cwriter is None:
                cwriter = pq.ParquetWriter(ctmp, ct.schema, compression="zstd")
            cwriter.write_table(ct)
    if cwriter is not None:
        cwriter.close()
    tmp.replace(out)
    ctmp.replace(churn_path)
    truth = _finish_truth(S, acc)
    truth_path.write_text(json.dumps(truth, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    costs_path = get(params, "simulate.costs", None)
    if costs_path:
        media_costs(out, get(params, "simulate.cost_per_touch", None) or DEFAULT_COST_PER_TOUCH).to_csv(
            project_path(params, costs_path), index=False)
    return {"customers": truth["counts"]["customers"], "events": truth["counts"]["events"],
            "rows_written": truth["counts"]["rows_written"], "conversions": truth["counts"]["conversions"],
            "acquisition_conversions": truth["acquisition_conversions"],
            "dirty_rows": truth["dirty_rows"]["total"], "oracle_auc": truth["churn"]["oracle_auc"],
            "p_convert_by_day": truth["p_convert_by_day"], "output": str(out)}


DEFAULT_COST_PER_TOUCH = {"paid_search": 1.20, "social": 0.60, "display": 0.25, "offer": 4.00}


def media_costs(events_path: str | Path, cost_per_touch: dict) -> pd.DataFrame:
    """Demo media spend for the attribution report: cost = touches x cost per touch (currency
    units) for each paid touchpoint of the raw log. Columns: touchpoint, touches, cost_per_touch, cost."""
    import duckdb
    con = duckdb.connect()
    try:
        n = con.execute("SELECT touchpoint, count(*) AS touches FROM read_parquet(?) WHERE event_type = 'touch' "
                        "GROUP BY touchpoint", [str(events_path)]).df()
    finally:
        con.close()
    unit = pd.Series({str(k): float(v) for k, v in cost_per_touch.items()}, name="cost_per_touch")
    out = n[n["touchpoint"].isin(unit.index)].merge(unit.rename_axis("touchpoint").reset_index(), on="touchpoint")
    out["cost"] = (out["touches"] * out["cost_per_touch"]).round(2)
    return out.sort_values("touchpoint").reset_index(drop=True)[["touchpoint", "touches", "cost_per_touch", "cost"]]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (used to check byte reproducibility)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
