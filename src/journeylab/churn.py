"""Churn / relationship-dissolution prediction (``journeylab churn``).

Input: the engine's ``data/journeys/customer_features.parquet`` (one row per (cutoff, customer_id);
features from events before the cutoff, labels from events at/after it; docs/DESIGN.md item 8).

Populations (params ``churn``):
* train: rows at ``train_cutoffs`` (stacked) with ``active_at_cutoff`` and an observable label;
* eval (out of time): rows at ``eval_cutoff`` with ``active_at_cutoff`` and an observable label;
* score: rows at ``score_cutoff`` with ``active_at_cutoff`` (labels unknown).
Rows whose horizon runs past the observation end (``label_observable`` false or a null label)
are excluded and counted, never treated as retained.

Models: calibrated (isotonic, customer-grouped 3-fold ``CalibratedClassifierCV``) scikit-learn
pipelines: ``logistic`` (signed-log1p + median imputation with missing indicators + scaling,
one-hot categoricals, L2 logistic regression) and ``gbm`` (HistGradientBoostingClassifier, native
NaN and categorical handling, early stopping on held-out customers: ``metrics.train.gbm_trees_by_fold``); a penalised Cox model of ``days_to_dissolution`` (C-index);
the BG/NBD baseline (:mod:`journeylab.bgnbd`, fitted by :func:`fit_bgnbd` with the analytic gradient),
fitted at each cutoff on every customer's purchase history before it, scoring P(no purchase within the horizon) because P(alive) = 1 for every
one-purchase customer (the one-purchase trap). The model evaluated at ``eval_cutoff`` is the one that
scores ``score_cutoff``.

Large tables: fits use seeded row samples above fixed caps (``max_train_rows`` stacked training rows,
``survival_max_rows`` for the Cox fit, ``bgnbd_max_rows`` purchasers per cutoff for BG/NBD,
``importance_rows``/``pd_rows`` holdout rows for explanations; each stated in the metrics), so their
cost stops growing with the number of customers; evaluation metrics and scores always use every row.
None of the caps binds at the default simulation size.

Missing survey scores (``last_nps``/``last_csat`` null): NaN for the gradient-boosted model (it learns
a branch for "no answer"), median + missing-indicator for the logistic model. Columns null
everywhere or constant are dropped and listed in the metrics.

Lifecycle stages (Dwyer, Schurr & Oh 1987), first rule that matches, per (cutoff, customer):
1. ``dissolution``: a customer no longer ``active_at_cutoff`` (explicitly dissolved or no activity for
   ``churn.inactivity_days``), or a non-customer with no activity for ``inactivity_days``;
2. ``awareness``: no purchase yet (still active);
3. ``exploration``: one purchase (trial);
4. ``commitment``: >= ``lifecycle.commitment_min_purchases`` purchases and first purchase
   >= ``lifecycle.commitment_min_days`` ago;
5. ``expansion``: the other repeat customers.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import config
from .bgnbd import BetaGeoFitter, bgnbd_inputs
from .errors import InputError, JourneylabError
from .schema import LIFECYCLE_STAGES

LABEL_COLUMNS = ("label_observable", "dissolved_within_horizon", "days_to_dissolution", "dissolution_observed")
KEY_COLUMNS = ("cutoff", "customer_id")
NON_FEATURES = {*KEY_COLUMNS, *LABEL_COLUMNS, "is_customer", "active_at_cutoff"}
REQUIRED_COLUMNS = (*KEY_COLUMNS, "active_at_cutoff", "label_observable", "dissolved_within_horizon",
                    "frequency", "recency_days", "days_since_first_purchase", "days_since_last_activity")
MODEL_NAMES = ("logistic", "gbm")
# BG/NBD outputs added per cutoff (features from pre-cutoff purchases only; also model inputs when churn.bgnbd_features)
BGNBD_COLUMNS = {"p_alive": "bgnbd_p_alive", "p_no_purchase_horizon": "bgnbd_p_no_purchase",
                 "expected_purchases_horizon": "bgnbd_expected_purchases"}
BASELINE = "bgnbd"

DEFAULTS: dict[str, Any] = {
    "output_dir": "data/results/churn",
    "metrics": "metrics/churn.json",
    "features": "data/journeys/customer_features.parquet",
    "horizon_days": 90,
    "inactivity_days": 90,
    "min_dissolutions": 50,
    "seed": 7,
    "bgnbd_features": False,        # BG/NBD P(alive), P(no purchase in H), E[purchases in H] as model inputs
    "calibration": "isotonic",       # isotonic | sigmoid
    "calibration_folds": 3,
    "logistic_C": 0.1,
    "gbm": {"learning_rate": 0.1, "max_iter": 300, "max_leaf_nodes": 15, "min_samples_leaf": 40,
            "l2_regularization": 1.0},
    # row caps (seeded samples, stated in the metrics); none binds at the default simulation size (20k customers)
    "max_train_rows": 100000,       # stacked training rows above this are sampled (metrics train.sampled_rows)
    "survival_max_rows": 30000,     # Cox fit on at most this many training rows (metrics survival.n_train)
    "bgnbd_max_rows": 100000,       # BG/NBD fitted per cutoff on at most this many purchasers (seeded sample); all scored
    "survival_penalizer": 0.1,
    "importance_rows": 10000,       # holdout rows used for permutation importance (metrics explanations)
    "importance_repeats": 3,
    "n_threads": 1,                 # OpenMP/BLAS threads (null = backend.threads); 1 is robust on a shared machine
    "n_jobs": None,                 # threads predicting large tables in row blocks (null = backend.threads);
                                    # predictions are row-wise: results do not depend on it
    "top_drivers": 5,
    "pd_rows": 2000,
    "pd_grid": 8,
    "n_bins": 10,                   # calibration bins (equal width on [0, 1])
    "top_fraction": 0.1,            # lift / capture: top decile
    "lifecycle": {"commitment_min_purchases": 4, "commitment_min_days": 180},
}


# ----------------------------------------------------------------------------- settings & input
def settings(params: dict) -> dict:
    """``params['churn']`` over :data:`DEFAULTS` (nested dicts merged)."""
    user = dict(params.get("churn") or {})
    out = {**DEFAULTS, **user}
    for key in ("gbm", "lifecycle"):
        out[key] = {**DEFAULTS[key], **(user.get(key) or {})}
    return out


def cutoff_key(values) -> pd.Series:
    """Cutoffs (strings, dates or timestamps, tz-aware or not) -> 'YYYY-MM-DD' strings (null stays null).

    Formats each distinct cutoff once (a features table has millions of rows but a handful of cutoffs)."""
    s = pd.Series(values)
    codes, uniq = pd.factorize(pd.to_datetime(s, utc=True))
    labels = np.append(np.asarray(pd.DatetimeIndex(uniq).strftime("%Y-%m-%d"), dtype=object), np.nan)
    return pd.Series(labels[codes], index=s.index, dtype=object)   # code -1 (NaT) -> the trailing NaN


def load_features(path: str | Path) -> pd.DataFrame:
    """Read customer_features.parquet and check the columns churn needs."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: customer features not found. Run `journeylab build` first "
                         "(it writes data/journeys/customer_features.parquet from the clean events).")
    df = pd.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} missing; churn needs the engine's customer_features "
                         "table (docs/DESIGN.md, Engine tables item 8). Rebuild it with `journeylab build`.")
    if df.empty:
        raise InputError(f"{path}: the customer features table is empty: no customer has an event before any cutoff. "
                         "Check churn.train_cutoffs/eval_cutoff against the window of the data.")
    return df


def feature_columns(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric, categorical) model inputs: every column except keys, labels and population flags."""
    numeric, categorical = [], []
    for c in df.columns:
        if c in NON_FEATURES or c.startswith("_"):
            continue
        if pd.api.types.is_bool_dtype(df[c]) or pd.api.types.is_numeric_dtype(df[c]):
            numeric.append(c)
        elif pd.api.types.is_datetime64_any_dtype(df[c]):
            continue
        else:
            categorical.append(c)
    return numeric, categorical


def prepare_X(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Model matrix: numerics as float64 (NaN kept), categoricals as str with '(missing)'."""
    X = pd.DataFrame(index=df.index)
    for c in numeric:
        X[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in categorical:
        v = df[c].astype("object")
        X[c] = v.where(v.notna(), "(missing)").astype(str)
    return X


MIN_NON_NULL = 20  # a feature needs this many non-null training values (HistGradientBoosting fails on all-NaN folds)


def usable_features(X: pd.DataFrame, numeric: list[str], categorical: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Drop columns with < MIN_NON_NULL values or constant (no NaN) in training; return (numeric, categorical, dropped)."""
    dropped = [c for c in (*numeric, *categorical)
               if X[c].notna().sum() < MIN_NON_NULL or (X[c].nunique(dropna=True) <= 1 and not X[c].isna().any())]
    return ([c for c in numeric if c not in dropped], [c for c in categorical if c not in dropped], dropped)


def population(features: pd.DataFrame, cutoffs: list[str], require_label: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """Rows at ``cutoffs`` that are active (and, if ``require_label``, have an observable label), with an accounting per cutoff.

    Rows come cutoff by cutoff in the order of ``cutoffs``, each in table order; one row take of the
    wide table at the end (the masks are computed on single columns)."""
    key = cutoff_key(features["cutoff"]).to_numpy()
    active_all = features["active_at_cutoff"].fillna(False).astype(bool).to_numpy()
    label = features["dissolved_within_horizon"]
    ok_all = (features["label_observable"].fillna(False).astype(bool) & label.notna()).to_numpy()
    positions, accounting = [], []
    for c in cutoffs:
        at = key == c
        active = at & active_all
        entry: dict[str, Any] = {"cutoff": c, "customers": int(at.sum()), "active": int(active.sum())}
        if require_label:
            keep = active & ok_all
            kept = label[keep]
            entry["excluded_label_unobservable"] = int((active & ~ok_all).sum())
            entry["n"] = int(keep.sum())
            entry["dissolutions"] = int(kept.astype(bool).sum())
            if entry["customers"] == 0:
                entry["note"] = "no rows at this cutoff in customer_features (cutoff outside the data?)"
            elif entry["n"] == 0 and entry["active"] > 0:
                entry["note"] = "horizon runs past the observation end: labels not observable, cutoff not used"
            elif kept.nunique() == 1:
                entry["note"] = "single class at this cutoff (only one outcome observed); kept in the stacked training set"
        else:
            keep = active
            entry["n"] = int(keep.sum())
        accounting.append(entry)
        positions.append(np.flatnonzero(keep))
    return features.iloc[np.concatenate(positions) if positions else []], accounting


# ----------------------------------------------------------------------------- metrics
def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |mean(y_b) - mean(p_b)| over equal-width bins [k/B, (k+1)/B) (last bin closed)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if y.size == 0:
        return float("nan")
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for k in np.unique(b):
        m = b == k
        total += m.sum() / y.size * abs(y[m].mean() - p[m].mean())
    return float(total)


def top_fraction_lift(y, p, fraction: float = 0.1) -> tuple[float, float]:
    """(lift, capture rate) of the top ``fraction`` of customers by score.

    Top k = round(fraction N) (at least 1); customers tied with the k-th score share the remaining
    places pro rata, so a constant score gives lift 1. lift = rate in top / base rate;
    capture = dissolutions in top / all dissolutions.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    n = y.size
    if n == 0 or y.sum() == 0:
        return float("nan"), float("nan")
    k = max(1, int(round(fraction * n)))
    threshold = np.sort(p)[::-1][k - 1]
    above = p > threshold
    tie = p == threshold
    pos_top = y[above].sum() + (k - above.sum()) * y[tie].sum() / tie.sum()
    capture = pos_top / y.sum()
    lift = (pos_top / k) / y.mean()
    return float(lift), float(capture)


def lift_table(y, p, n_groups: int = 10) -> pd.DataFrame:
    """Deciles by score (1 = highest risk; ties broken by order): n, dissolutions, rate, lift, cumulative capture."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    order = np.argsort(-p, kind="stable")
    group = np.empty(y.size, dtype=int)
    group[order] = np.arange(y.size) * n_groups // max(y.size, 1) + 1
    t = (pd.DataFrame({"decile": group, "y": y, "p": p}).groupby("decile")
         .agg(n=("y", "size"), dissolutions=("y", "sum"), mean_score=("p", "mean")).reset_index())
    base = y.mean() if y.size else float("nan")
    t["rate"] = t["dissolutions"] / t["n"]
    t["lift"] = t["rate"] / base if base > 0 else np.nan
    t["cumulative_capture"] = t["dissolutions"].cumsum() / y.sum() if y.sum() > 0 else np.nan
    return t


def calibration_table(y, p, n_bins: int = 10) -> pd.DataFrame:
    """Reliability curve on equal-width bins: bin, lower, upper, n, mean_predicted, observed_rate."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    t = pd.DataFrame({"bin": b, "y": y, "p": p}).groupby("bin").agg(
        n=("y", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean")).reset_index()
    t["lower"] = t["bin"] / n_bins
    t["upper"] = (t["bin"] + 1) / n_bins
    return t[["bin", "lower", "upper", "n", "mean_predicted", "observed_rate"]]


def classification_metrics(y, p, n_bins: int = 10, fraction: float = 0.1) -> dict:
    """ROC-AUC, PR-AUC (average precision), Brier, ECE, top-decile lift and capture, n, base rate.

    Ranking metrics are null with a ``<key>_note`` when only one class is present."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    out: dict[str, Any] = {"n_scored": int(y.size), "base_rate": float(y.mean()) if y.size else None}
    if y.size == 0:
        for k in ("roc_auc", "pr_auc", "brier", "ece", "lift_top_decile", "capture_top_decile"):
            out[k] = None
            out[f"{k}_note"] = "no evaluable customers"
        return out
    out["brier"] = float(brier_score_loss(y, p))
    out["ece"] = expected_calibration_error(y, p, n_bins)
    if np.unique(y).size < 2:
        note = (f"single class in the evaluation set (all {'dissolved' if y[0] else 'retained'}): "
                "ranking metrics undefined")
        for k in ("roc_auc", "pr_auc", "lift_top_decile", "capture_top_decile"):
            out[k] = None
            out[f"{k}_note"] = note
        return out
    out["roc_auc"] = float(roc_auc_score(y, p))
    out["pr_auc"] = float(average_precision_score(y, p))
    lift, capture = top_fraction_lift(y, p, fraction)
    out["lift_top_decile"], out["capture_top_decile"] = lift, capture
    return out


# ----------------------------------------------------------------------------- models
def _signed_log1p(x):
    """sign(x) * log(1 + |x|), on the raw array (a DataFrame round trip costs ~4x more)."""
    a = np.asarray(x, dtype=float)
    return np.copysign(np.log1p(np.abs(a)), a)


def make_logistic(numeric: list[str], categorical: list[str], C: float = 0.1, seed: int = 0):
    """Pipeline: signed log1p -> median impute (+ missing indicators) -> scale; one-hot categoricals; L2 logistic."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    num = Pipeline([("log", FunctionTransformer(_signed_log1p, feature_names_out="one-to-one")),
                    ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                    ("scale", StandardScaler())])
    cat = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=0.005, max_categories=30,
                        sparse_output=False)
    pre = ColumnTransformer([("num", num, numeric), ("cat", cat, categorical)], verbose_feature_names_out=False)
    return Pipeline([("pre", pre), ("model", LogisticRegression(C=C, max_iter=2000, random_state=seed))])


def make_gbm(numeric: list[str], categorical: list[str], seed: int = 0, **hgb: Any):
    """Pipeline: ordinal-encode categoricals (native categorical splits), NaN kept;
    :class:`~journeylab.grouped_boosting.GroupedHistGradientBoostingClassifier` (early stopping on held-out customers when
    ``fit`` gets ``model__groups``; 20 rounds without improvement of the validation log-loss)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    from .grouped_boosting import GroupedHistGradientBoostingClassifier

    enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                         max_categories=60)
    pre = ColumnTransformer([("num", "passthrough", numeric), ("cat", enc, categorical)],
                            verbose_feature_names_out=False)
    mask = [False] * len(numeric) + [True] * len(categorical)
    model = GroupedHistGradientBoostingClassifier(categorical_features=mask if categorical else None,
                                                  random_state=seed, early_stopping=True, n_iter_no_change=20, **hgb)
    return Pipeline([("pre", pre), ("model", model)])


def predict_risk(model, X: pd.DataFrame, n_jobs: int = 1, min_rows: int = 20000) -> np.ndarray:
    """P(dissolution) = ``model.predict_proba(X)[:, 1]``; tables of >= ``min_rows`` rows are split in
    ``n_jobs`` parts predicted on threads, one OpenMP thread each (tree walks and BLAS release the
    GIL). Row-wise, so the result does not depend on the split (tested)."""
    n = len(X)
    if n_jobs <= 1 or n < max(int(min_rows), 2):
        return model.predict_proba(X)[:, 1]
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    bounds = np.linspace(0, n, int(n_jobs) + 1).astype(int)
    parts = [X.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def one(part):   # OpenMP's thread count is per calling thread: limit it in each worker
        with threadpool_limits(limits=1, user_api="openmp"):
            return model.predict_proba(part)[:, 1]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(len(parts)) as ex:
        return np.concatenate(list(ex.map(one, parts)))


def gbm_trees(model) -> list[dict]:
    """Trees grown and early-stopping customers held out, per calibration fold of a calibrated GBM."""
    out = []
    for cc in getattr(model, "calibrated_classifiers_", []):
        hgb = cc.estimator[-1]
        out.append({"trees": int(hgb.n_iter_), "max_iter": int(hgb.max_iter),
                    "validation_customers": int(getattr(hgb, "validation_customers_", 0))})
    return out


def calibrated(pipeline, groups, method: str = "isotonic", folds: int = 3):
    """CalibratedClassifierCV on customer-grouped folds (a customer's cutoffs never straddle fit and calibration)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    splits = list(GroupKFold(n_splits=folds).split(np.zeros(len(groups)), groups=groups))
    return CalibratedClassifierCV(pipeline, method=method, cv=splits, ensemble=True)


def fit_models(X: pd.DataFrame, y: np.ndarray, groups, numeric: list[str], categorical: list[str], s: dict) -> dict:
    """Fit the calibrated logistic and gradient-boosted pipelines; returns {name: fitted estimator}."""
    models = {"logistic": make_logistic(numeric, categorical, C=s["logistic_C"], seed=s["seed"]),
              "gbm": make_gbm(numeric, categorical, seed=s["seed"], **s["gbm"])}
    # the GBM's early stopping holds out whole customers too (sliced per calibration fold)
    fit_params = {"gbm": {"model__groups": np.asarray(groups)}}
    fitted = {}
    for name, pipe in models.items():
        est = calibrated(pipe, groups, method=s["calibration"], folds=s["calibration_folds"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted[name] = est.fit(X[numeric + categorical], y, **fit_params.get(name, {}))
    return fitted


# ----------------------------------------------------------------------------- survival
def fit_dissolution_survival(train: pd.DataFrame, evaluate: pd.DataFrame, numeric: list[str], categorical: list[str],
                             penalizer: float = 0.1, max_rows: int = 50000, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Penalised Cox PH on days_to_dissolution / dissolution_observed; C-index on train and eval rows.

    Covariates: the logistic pipeline's preprocessing (signed log1p, imputation, scaling, one-hot).
    Returns (metrics, coefficient table feature/coef/hazard_ratio)."""
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index

    need = {"days_to_dissolution", "dissolution_observed"}
    if not need <= set(train.columns):
        return {"c_index_eval": None, "c_index_eval_note": "customer_features has no days_to_dissolution/"
                "dissolution_observed columns: survival model skipped"}, pd.DataFrame()

    def clean(df):
        d = df[pd.to_numeric(df["days_to_dissolution"], errors="coerce").notna()]
        return d[pd.to_numeric(d["days_to_dissolution"]) >= 0]

    tr, ev = clean(train), clean(evaluate)
    if len(tr) > max_rows:
        tr = tr.sample(max_rows, random_state=seed)
    events = int(tr["dissolution_observed"].astype(bool).sum()) if len(tr) else 0
    if events < 10:
        return {"c_index_eval": None, "c_index_eval_note": f"only {events} observed dissolutions in training: "
                "survival model skipped"}, pd.DataFrame()
    pre = make_logistic(numeric, categorical).named_steps["pre"]
    Xtr = pd.DataFrame(pre.fit_transform(prepare_X(tr, numeric, categorical)), columns=pre.get_feature_names_out())
    keep = [c for c in Xtr.columns if Xtr[c].std() > 1e-9]
    Xtr = Xtr[keep]
    d = Xtr.assign(_T=np.maximum(tr["days_to_dissolution"].to_numpy(float), 1e-6),
                   _E=tr["dissolution_observed"].astype(bool).to_numpy())
    cph = CoxPHFitter(penalizer=penalizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph.fit(d, duration_col="_T", event_col="_E")
    out: dict[str, Any] = {"model": "cox_ph", "penalizer": penalizer, "n_train": int(len(tr)),
                           "dissolutions_train": events, "c_index_train": float(cph.concordance_index_)}
    if len(ev) and ev["dissolution_observed"].astype(bool).any():
        Xev = pd.DataFrame(pre.transform(prepare_X(ev, numeric, categorical)), columns=pre.get_feature_names_out())[keep]
        risk = cph.predict_partial_hazard(Xev).to_numpy()
        out["n_eval"] = int(len(ev))
        try:
            out["c_index_eval"] = float(concordance_index(ev["days_to_dissolution"].to_numpy(float), -risk,
                                                          ev["dissolution_observed"].astype(bool).to_numpy()))
        except ZeroDivisionError:
            out["c_index_eval"] = None
            out["c_index_eval_note"] = "no comparable pairs after the evaluation cutoff (all times tied or censored)"
    else:
        out["c_index_eval"] = None
        out["c_index_eval_note"] = "no observed dissolution after the evaluation cutoff"
    coef = pd.DataFrame({"feature": cph.params_.index, "coef": cph.params_.to_numpy(),
                         "hazard_ratio": np.exp(cph.params_.to_numpy())})
    return out, coef.sort_values("coef", key=np.abs, ascending=False).reset_index(drop=True)


# ----------------------------------------------------------------------------- BG/NBD baseline
def fit_bgnbd(x, t_x, T, weights=None) -> BetaGeoFitter:
    """Maximum-likelihood BG/NBD fit with the analytic gradient (same likelihood, scaling and start as
    :class:`journeylab.bgnbd.BetaGeoFitter`, which needs ~500 likelihood evaluations per fit: finite-difference
    L-BFGS-B then Nelder-Mead). Terms that depend only on x are computed once per distinct x.
    Falls back to ``BetaGeoFitter.fit`` if the optimiser does not converge. Returns a fitted BetaGeoFitter."""
    from scipy import optimize, special

    x = np.asarray(x, float)
    tx = np.asarray(t_x, float)
    T_ = np.asarray(T, float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, float)
    scale = float(np.max(T_)) or 1.0
    txs, Ts = tx / scale, T_ / scale
    ux, inv = np.unique(x, return_inverse=True)
    pos = x > 0
    wsum = w.sum()

    def nll_grad(logp):
        r, alpha, a, b = np.exp(logp)
        # per distinct x
        gl = special.gammaln(r + ux) - special.gammaln(r)
        bl = special.betaln(a, b + ux) - special.betaln(a, b)
        bx1 = np.where(ux > 0, b + ux - 1, 1.0)
        lbx1 = np.log(bx1)
        d_r_x = special.digamma(r + ux) - special.digamma(r)
        d_a_x = special.digamma(a + b) - special.digamma(a + b + ux)
        d_b_x = special.digamma(b + ux) - special.digamma(b) + d_a_x
        rx = (r + x)
        lT = np.log(alpha + Ts)
        ltx = np.log(alpha + txs)
        A3 = -rx * lT
        A4 = np.where(pos, np.log(a) - lbx1[inv] - rx * ltx, -np.inf)
        lse = np.logaddexp(A3, A4)
        ll = gl[inv] + r * np.log(alpha) + bl[inv] + lse
        w3 = np.exp(A3 - lse)
        w4 = 1.0 - w3
        g_r = d_r_x[inv] + np.log(alpha) - w3 * lT - w4 * ltx
        g_al = r / alpha - w3 * rx / (alpha + Ts) - w4 * rx / (alpha + txs)
        g_a = d_a_x[inv] + np.where(pos, w4 / a, 0.0)
        g_b = d_b_x[inv] - np.where(pos, w4 / bx1[inv], 0.0)
        f = -(w * ll).sum() / wsum
        grad = -np.array([(w * g).sum() for g in (g_r, g_al, g_a, g_b)]) / wsum * np.array([r, alpha, a, b])
        if not np.isfinite(f):
            return np.inf, np.zeros(4)
        return f, grad

    def nll_grad_quiet(logp):
        # line-search trial points far from the optimum overflow exp/log: they return inf (rejected), no warning
        with np.errstate(all="ignore"):
            return nll_grad(logp)

    res = optimize.minimize(nll_grad_quiet, np.zeros(4), jac=True, method="L-BFGS-B",
                            options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})
    if not (res.success and np.isfinite(res.fun)):
        return BetaGeoFitter().fit(x, tx, T_, weights=w)
    from .bgnbd import log_likelihood_individual
    p = np.exp(res.x)
    m = BetaGeoFitter()
    m.params_ = pd.Series({"r": p[0], "alpha": p[1] * scale, "a": p[2], "b": p[3]})
    m.log_likelihood_ = float((w * log_likelihood_individual(m._p(), x, tx, T_)).sum())
    m.n_customers_ = float(wsum)
    m.converged_ = True
    return m


def bgnbd_baseline(at_cutoff: pd.DataFrame, score_rows: pd.DataFrame, horizon_days: float,
                   max_rows: int | None = None, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Fit BG/NBD on every purchaser's history at one cutoff (at most ``max_rows`` purchasers, a seeded
    sample, when there are more); score ``score_rows`` (all of them).

    Returns (frame with p_alive, p_no_purchase_horizon, expected_purchases_horizon indexed like
    score_rows; info dict). Time unit: weeks inside the fit (days / 7), results are unit-free."""
    inp = bgnbd_inputs(at_cutoff).dropna()
    inp = inp[inp["T"] > 0]
    info: dict[str, Any] = {"n_customers": int(len(inp))}
    out = pd.DataFrame(index=score_rows.index, columns=["p_alive", "p_no_purchase_horizon", "expected_purchases_horizon"],
                       dtype=float)
    if len(inp) < 20 or (inp["x"] > 0).sum() < 5:
        info["note"] = f"only {len(inp)} purchasers ({int((inp['x'] > 0).sum())} with a repeat purchase): BG/NBD not fitted"
        return out, info
    if max_rows and len(inp) > max_rows:
        inp = inp.sample(int(max_rows), random_state=seed)
        info["n_fit"] = int(max_rows)
        info["fit_note"] = f"fitted on a seeded sample of {int(max_rows)} of {info['n_customers']} purchasers (churn.bgnbd_max_rows); all are scored"
    g = (inp / [1, 7, 7]).round(4).groupby(["x", "t_x", "T"]).size().reset_index(name="w")
    m = fit_bgnbd(g["x"], g["t_x"], g["T"], weights=g["w"])
    info.update({"params": {k: float(v) for k, v in m.params_.items()}, "time_unit": "weeks",
                 "log_likelihood": m.log_likelihood_,
                 "one_purchase_share": float((inp["x"] == 0).mean())})
    s = bgnbd_inputs(score_rows)
    ok = s.notna().all(axis=1)
    x, tx, T = s.loc[ok, "x"], s.loc[ok, "t_x"] / 7, s.loc[ok, "T"] / 7
    h = horizon_days / 7
    out.loc[ok, "p_alive"] = m.conditional_probability_alive(x, tx, T)
    out.loc[ok, "p_no_purchase_horizon"] = m.conditional_probability_no_purchases_up_to_time(h, x, tx, T)
    out.loc[ok, "expected_purchases_horizon"] = m.conditional_expected_number_of_purchases_up_to_time(h, x, tx, T)
    info["model"] = m
    return out, info


# ----------------------------------------------------------------------------- explanations
def feature_family(column: str) -> str:
    """Manager-level driver a feature belongs to (touches_support_30d -> touches_support, last_nps -> satisfaction)."""
    aliases = {"last_nps": "satisfaction", "last_csat": "satisfaction", "recency_days": "recency",
               "days_since_last_activity": "recency", "monetary_total": "monetary", "monetary_mean": "monetary",
               "tenure_days": "tenure", "days_since_first_purchase": "tenure", "complaints_total": "complaints",
               "satisfaction": "satisfaction", "recency": "recency", "nps": "satisfaction", "csat": "satisfaction"}
    if column in aliases:
        return aliases[column]
    if column.startswith("bgnbd_"):
        return "purchase_pattern_bgnbd"
    base = re.sub(r"_\d+d$", "", column)
    return "complaints" if base.startswith(("complaint", "touches_complaint")) else base


def grouped_permutation_importance(model, X: pd.DataFrame, y, groups: dict[str, list[str]], n_repeats: int = 3,
                                   seed: int = 0) -> pd.DataFrame:
    """Drop in holdout ROC-AUC when all columns of a group are permuted together (same row shuffle).

    Returns driver, importance (mean AUC drop), std, n_features, sorted descending."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    base = roc_auc_score(y, predict_risk(model, X))
    rows = []
    for name, cols in groups.items():
        drops = []
        for _ in range(n_repeats):
            perm = rng.permutation(len(X))
            Xp = X.copy()
            Xp[cols] = X[cols].to_numpy()[perm]
            drops.append(base - roc_auc_score(y, predict_risk(model, Xp)))
        rows.append({"driver": name, "importance": float(np.mean(drops)), "std": float(np.std(drops)),
                     "n_features": len(cols), "features": ",".join(cols)})
    return pd.DataFrame(rows).sort_values("importance", ascending=False).reset_index(drop=True)


def partial_dependence_table(model, X: pd.DataFrame, feature: str, categorical: bool = False, grid: int = 8) -> pd.DataFrame:
    """Average predicted dissolution probability when ``feature`` is set to each grid value for every row.

    Grid: quantiles 5%..95% of non-null values (numeric, unique) or the 8 most common categories."""
    v = X[feature]
    if categorical:
        values = list(v.value_counts().index[:grid])
    else:
        nn = v.dropna()
        if nn.empty:
            return pd.DataFrame(columns=["feature", "value", "mean_probability", "share_at_or_below"])
        values = list(np.unique(np.quantile(nn, np.linspace(0.05, 0.95, grid))))
    rows = []
    for val in values:
        Xv = X.copy()
        Xv[feature] = val
        rows.append({"feature": feature, "value": val, "mean_probability": float(model.predict_proba(Xv)[:, 1].mean()),
                     "share_at_or_below": None if categorical else float((v.dropna() <= val).mean())})
    return pd.DataFrame(rows)


def describe_driver(driver: str, feature: str, pd_table: pd.DataFrame, importance: float, categorical: bool) -> dict:
    """Plain-language summary of one driver from its partial dependence."""
    if pd_table.empty:
        return {"driver": driver, "feature": feature, "importance": importance, "direction": None,
                "summary": f"{driver}: no values to summarise"}
    lo, hi = pd_table.iloc[0], pd_table.iloc[-1]
    pmin, pmax = pd_table["mean_probability"].min(), pd_table["mean_probability"].max()
    if categorical:
        best = pd_table.loc[pd_table["mean_probability"].idxmin()]
        worst = pd_table.loc[pd_table["mean_probability"].idxmax()]
        text = (f"{driver} ({feature}): predicted dissolution risk is highest for '{worst['value']}' "
                f"({worst['mean_probability']:.0%}) and lowest for '{best['value']}' ({best['mean_probability']:.0%}).")
        direction = "categorical"
    else:
        direction = "increases" if hi["mean_probability"] > lo["mean_probability"] else "decreases"
        text = (f"{driver} ({feature}): as it goes from {lo['value']:.3g} to {hi['value']:.3g} (5th to 95th percentile), "
                f"predicted dissolution risk {'rises' if direction == 'increases' else 'falls'} from "
                f"{lo['mean_probability']:.0%} to {hi['mean_probability']:.0%}.")
    text += f" Scrambling it costs {importance:.3f} ROC-AUC on the holdout."
    return {"driver": driver, "feature": feature, "importance": importance, "direction": direction,
            "risk_low": float(pmin), "risk_high": float(pmax), "summary": text}


def importance_model(model):
    """The estimator permutation importance is measured on: for a calibrated ensemble
    (``CalibratedClassifierCV(ensemble=True)``) its first fold's fitted pipeline, uncalibrated.
    ROC-AUC is rank-based and isotonic calibration is monotone, so the AUC drop is that of the
    model's own ranking; one fold model instead of three (and no calibrators) is ~3x cheaper,
    which matters because importance needs (groups x repeats) predictions of the holdout."""
    cc = getattr(model, "calibrated_classifiers_", None)
    if cc:
        est = getattr(cc[0], "estimator", None)
        if est is not None and hasattr(est, "predict_proba"):
            return est
    return model


def explain(model, X: pd.DataFrame, y, numeric: list[str], categorical: list[str], s: dict) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Grouped permutation importance (holdout), partial dependence of the top drivers, plain-word summaries."""
    rng_state = s["seed"]
    Xi, yi = X, np.asarray(y)
    if len(X) > s["importance_rows"]:
        idx = np.random.default_rng(rng_state).choice(len(X), s["importance_rows"], replace=False)
        Xi, yi = X.iloc[idx], yi[idx]
    groups: dict[str, list[str]] = {}
    for c in numeric + categorical:
        groups.setdefault(feature_family(c), []).append(c)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # many small predictions: threads only add overhead
        imp_model = importance_model(model)
        imp = grouped_permutation_importance(imp_model, Xi, yi, groups, s["importance_repeats"], rng_state)
    imp["rank"] = np.arange(1, len(imp) + 1)
    Xp = Xi.iloc[: s["pd_rows"]] if len(Xi) > s["pd_rows"] else Xi
    p = model.predict_proba(Xp)[:, 1]
    pd_tables, drivers = [], []
    for _, row in imp.head(s["top_drivers"]).iterrows():
        cols = groups[row["driver"]]
        # representative feature: among the members most correlated (Spearman, |rho|) with the predicted risk,
        # the one with the widest partial dependence
        def rho(c):
            if c in categorical:
                return -1.0
            v = Xp[c]
            if v.notna().sum() < 3 or v.nunique() < 2:
                return -2.0
            r = pd.Series(p, index=Xp.index)[v.notna()].corr(v.dropna(), method="spearman")
            return abs(r) if np.isfinite(r) else -2.0
        rhos = {c: rho(c) for c in cols}
        ranked = sorted(cols, key=rhos.get, reverse=True)
        num_cols = [c for c in ranked if c not in categorical and rhos[c] >= 0][:4]
        if len(num_cols) > 1:
            # several members (recency_days / days_since_last_activity, 7/30/90-day windows): describe the one
            # whose partial dependence moves the risk most (chosen on the cheap one-fold model)
            with threadpool_limits(limits=1):
                spans = {c: partial_dependence_table(imp_model, Xp, c, grid=s["pd_grid"])["mean_probability"] for c in num_cols}
            feat = max(num_cols, key=lambda c: (spans[c].max() - spans[c].min()) if len(spans[c]) else -1.0)
        else:
            feat = ranked[0]
        is_cat = feat in categorical
        with threadpool_limits(limits=1):
            t = partial_dependence_table(model, Xp, feat, categorical=is_cat, grid=s["pd_grid"])
        t.insert(0, "driver", row["driver"])
        if not t.empty:
            pd_tables.append(t.assign(value=t["value"].astype(str)))
        drivers.append(describe_driver(row["driver"], feat, t, float(row["importance"]), is_cat))
    pdt = pd.concat(pd_tables, ignore_index=True) if pd_tables else pd.DataFrame()
    return imp, pdt, drivers


# ----------------------------------------------------------------------------- lifecycle
def lifecycle_stage(features: pd.DataFrame, inactivity_days: float = 90, commitment_min_purchases: int = 4,
                    commitment_min_days: float = 180) -> pd.Series:
    """Lifecycle stage per row by the rules in the module docstring."""
    freq = pd.to_numeric(features["frequency"], errors="coerce").fillna(0)
    customer = freq >= 1
    active = features["active_at_cutoff"].fillna(False).astype(bool)
    idle = pd.to_numeric(features["days_since_last_activity"], errors="coerce").fillna(np.inf) > inactivity_days
    since_first = pd.to_numeric(features["days_since_first_purchase"], errors="coerce").fillna(0)
    stage = np.select(
        [customer & ~active, ~customer & idle, ~customer, freq == 1,
         (freq >= commitment_min_purchases) & (since_first >= commitment_min_days)],
        ["dissolution", "dissolution", "awareness", "exploration", "commitment"], default="expansion")
    return pd.Series(stage, index=features.index, name="lifecycle_stage")


def lifecycle_distribution(features: pd.DataFrame, **rules: Any) -> pd.DataFrame:
    """Customers and share per (cutoff, stage), every stage listed (zeros included)."""
    st = lifecycle_stage(features, **rules)
    t = pd.crosstab(cutoff_key(features["cutoff"]), st).reindex(columns=list(LIFECYCLE_STAGES), fill_value=0)
    long = t.stack().rename("customers").reset_index()
    long.columns = ["cutoff", "stage", "customers"]
    long["share"] = long["customers"] / long.groupby("cutoff")["customers"].transform("sum")
    return long


# ----------------------------------------------------------------------------- truth
def oracle_auc_on(evaluated: pd.DataFrame, truth_churn: pd.DataFrame, cutoff: str) -> tuple[float | None, int]:
    """ROC-AUC of the simulator's true_risk on the evaluated customers (labels from the features table)."""
    from sklearn.metrics import roc_auc_score

    t = truth_churn[cutoff_key(truth_churn["cutoff"]) == cutoff][["customer_id", "true_risk"]]
    m = evaluated[["customer_id", "dissolved_within_horizon"]].assign(customer_id=lambda d: d["customer_id"].astype(str)) \
        .merge(t.assign(customer_id=t["customer_id"].astype(str)), on="customer_id", how="inner")
    if len(m) == 0 or m["dissolved_within_horizon"].nunique() < 2:
        return None, int(len(m))
    return float(roc_auc_score(m["dissolved_within_horizon"].astype(int), m["true_risk"])), int(len(m))


def _driver_matches(driver: str, top: list[str]) -> bool:
    return feature_family(driver) in top or driver in top


# ----------------------------------------------------------------------------- stage
def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _null_nan(d: dict) -> dict:
    """NaN -> None with a note (metrics contract: absent numbers are null with '<key>_note')."""
    out = dict(d)
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
            out.setdefault(f"{k}_note", "not defined for this evaluation set (e.g. no dissolutions)")
    return out


def run_stage(params: dict) -> dict:
    """Train, evaluate out of time, compare with BG/NBD, explain, score; write metrics and result tables."""
    from threadpoolctl import threadpool_limits

    s = settings(params)
    threads = s["n_threads"] or config.get(params, "backend.threads", None)
    s["n_jobs"] = max(1, int(s["n_jobs"] or config.get(params, "backend.threads", None) or 1))
    with threadpool_limits(limits=int(threads) if threads else None):
        return _run(params, s)


def _run(params: dict, s: dict) -> dict:
    import time
    clock = {"t": time.perf_counter()}
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock["t"], 2)
        clock["t"] = now
    out_dir = config.path(params, s["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    features = load_features(config.path(params, s["features"]))
    lap("load")
    H = float(s["horizon_days"])
    train_cutoffs = [str(c) for c in (s.get("train_cutoffs") or [])]
    eval_cutoff = str(s.get("eval_cutoff"))
    score_cutoff = str(s.get("score_cutoff") or "")
    if not train_cutoffs or eval_cutoff in ("", "None"):
        raise InputError("params.yaml churn: train_cutoffs and eval_cutoff are required (dates, YYYY-MM-DD).")
    train_cutoffs = list(cutoff_key(train_cutoffs))
    eval_cutoff = cutoff_key([eval_cutoff]).iloc[0]
    if score_cutoff:
        score_cutoff = cutoff_key([score_cutoff]).iloc[0]
    if max(train_cutoffs) >= eval_cutoff:
        raise InputError(f"params.yaml churn: eval_cutoff {eval_cutoff} must be later than every train cutoff "
                         f"({', '.join(train_cutoffs)}) for an out-of-time evaluation.")

    # --- BG/NBD at every cutoff used (fitted on everyone's purchase history before that cutoff only)
    key = cutoff_key(features["cutoff"])
    # (features was read above: adding the BG/NBD columns in place mutates nobody else's frame)
    for col in BGNBD_COLUMNS.values():
        features[col] = np.nan
    bg_infos = {}
    for c in [*train_cutoffs, eval_cutoff, *([score_cutoff] if score_cutoff else [])]:
        at = key == c
        if at.any():
            b, bg_infos[c] = bgnbd_baseline(features[at], features[at], H, s["bgnbd_max_rows"], s["seed"])
            for src, col in BGNBD_COLUMNS.items():
                features.loc[at, col] = b[src].to_numpy(float)
    bg_info = bg_infos.get(eval_cutoff, {"note": f"no rows at eval_cutoff {eval_cutoff}"})

    lap("bgnbd")
    metrics: dict[str, Any] = {"horizon_days": H, "inactivity_days": s["inactivity_days"],
                               "train_cutoffs": train_cutoffs, "eval_cutoff": eval_cutoff, "score_cutoff": score_cutoff,
                               "min_dissolutions": int(s["min_dissolutions"])}
    train, acc_train = population(features, train_cutoffs)
    evaluate, acc_eval = population(features, [eval_cutoff])
    n_pos = int(train["dissolved_within_horizon"].astype(bool).sum()) if len(train) else 0
    n_neg = int(len(train) - n_pos)
    metrics["train"] = {"n": int(len(train)), "dissolutions": n_pos,
                        "base_rate": n_pos / len(train) if len(train) else None, "by_cutoff": acc_train}
    metrics["eval"] = acc_eval[0]
    if len(train) > s["max_train_rows"]:
        train = train.sample(int(s["max_train_rows"]), random_state=s["seed"])
        metrics["train"]["sampled_rows"] = int(len(train))

    numeric, categorical = feature_columns(features)
    if not s["bgnbd_features"]:
        numeric = [c for c in numeric if c not in BGNBD_COLUMNS.values()]
    Xtr_all = prepare_X(train, numeric, categorical)
    numeric, categorical, dropped = usable_features(Xtr_all, numeric, categorical) if len(train) else (numeric, categorical, [])
    metrics["features"] = {"numeric": len(numeric), "categorical": categorical, "dropped_null_or_constant": dropped}
    ytr = train["dissolved_within_horizon"].astype(int).to_numpy()
    yev = evaluate["dissolved_within_horizon"].astype(int).to_numpy()
    Xtr = Xtr_all[numeric + categorical]
    Xev = prepare_X(evaluate, numeric, categorical)

    # --- BG/NBD baseline at eval cutoff
    base_eval = evaluate[list(BGNBD_COLUMNS.values())].set_axis(list(BGNBD_COLUMNS), axis=1)
    model_metrics: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    if base_eval["p_no_purchase_horizon"].notna().all() and len(evaluate):
        predictions[BASELINE] = base_eval["p_no_purchase_horizon"].to_numpy(float)
        model_metrics[BASELINE] = _null_nan(classification_metrics(yev, predictions[BASELINE], s["n_bins"], s["top_fraction"]))
        model_metrics[BASELINE]["score"] = "P(no purchase within the horizon) under BG/NBD"
    else:
        model_metrics[BASELINE] = {"roc_auc": None, "roc_auc_note": bg_info.get("note", "no evaluable customers")}
    metrics["bgnbd"] = {k: v for k, v in bg_info.items() if k != "model"}
    metrics["bgnbd"]["fit_rows_by_cutoff"] = {c: i.get("n_fit", i.get("n_customers")) for c, i in bg_infos.items()}
    metrics["bgnbd"]["one_purchase_note"] = ("P(alive) = 1 for every one-purchase customer (BG/NBD can only drop out "
                                             "after a repeat purchase); the baseline therefore scores P(no purchase "
                                             "within the horizon), which ranks them by age.")

    # --- supervised models
    enough = min(n_pos, n_neg) >= int(s["min_dissolutions"])
    fitted: dict[str, Any] = {}
    if not enough:
        which = "dissolutions" if n_pos <= n_neg else "retained customers"
        note = (f"only {min(n_pos, n_neg)} {which} among {len(train)} labelled training rows at cutoffs "
                f"{', '.join(train_cutoffs)}; at least churn.min_dissolutions = {s['min_dissolutions']} of each outcome "
                "are needed: no model trained. Use more or earlier train_cutoffs, a longer horizon, or more data.")
        for name in MODEL_NAMES:
            model_metrics[name] = {"roc_auc": None, "roc_auc_note": note}
        metrics["models_note"] = note
    else:
        groups = train["customer_id"].astype(str).to_numpy()
        fitted = fit_models(Xtr, ytr, groups, numeric, categorical, s)
        lap("fit_models")
        metrics["train"]["gbm_trees_by_fold"] = gbm_trees(fitted["gbm"])
        for name, est in fitted.items():
            if len(evaluate):
                predictions[name] = predict_risk(est, Xev, s["n_jobs"])
                model_metrics[name] = _null_nan(classification_metrics(yev, predictions[name], s["n_bins"], s["top_fraction"]))
            else:
                model_metrics[name] = {"roc_auc": None, "roc_auc_note": acc_eval[0].get("note", "no evaluable customers at eval_cutoff")}
    metrics["models"] = model_metrics
    if fitted and model_metrics["gbm"].get("roc_auc") is not None and model_metrics[BASELINE].get("roc_auc") is not None:
        metrics["gbm_minus_bgnbd_roc_auc"] = model_metrics["gbm"]["roc_auc"] - model_metrics[BASELINE]["roc_auc"]

    # --- aggregate tables: calibration and lift for every scored model
    cal, lift = [], []
    for name, p in predictions.items():
        cal.append(calibration_table(yev, p, s["n_bins"]).assign(model=name))
        if yev.sum() > 0:
            lift.append(lift_table(yev, p).assign(model=name))
    if cal:
        pd.concat(cal, ignore_index=True).to_parquet(out_dir / "calibration.parquet", index=False)
    if lift:
        pd.concat(lift, ignore_index=True).to_parquet(out_dir / "lift.parquet", index=False)
    lap("evaluate")

    # --- survival ("when")
    if enough:
        surv, coef = fit_dissolution_survival(train, evaluate, numeric, categorical, s["survival_penalizer"],
                                              s["survival_max_rows"], s["seed"])
        if not coef.empty:
            coef.to_parquet(out_dir / "survival_coefficients.parquet", index=False)
    else:
        surv = {"c_index_eval": None, "c_index_eval_note": metrics["models_note"]}
    metrics["survival"] = surv

    lap("survival")
    # --- explanations
    if "gbm" in fitted and yev.size and np.unique(yev).size == 2:
        imp, pdt, drivers = explain(fitted["gbm"], Xev, yev, numeric, categorical, s)
        metrics["explanations"] = {
            "importance_rows": int(min(len(Xev), s["importance_rows"])), "importance_repeats": int(s["importance_repeats"]),
            "pd_rows": int(min(len(Xev), s["importance_rows"], s["pd_rows"])), "pd_grid": int(s["pd_grid"]),
            "note": (f"permutation importance on a seeded sample of at most churn.importance_rows = {s['importance_rows']} "
                     f"holdout rows (of {len(Xev)}), measured on the first calibration fold's gradient-boosting "
                     f"model (uncalibrated ranking); partial dependence of the calibrated model on at most "
                     f"churn.pd_rows = {s['pd_rows']} of them")}
        imp.to_parquet(out_dir / "importance.parquet", index=False)
        if not pdt.empty:
            pdt.to_parquet(out_dir / "partial_dependence.parquet", index=False)
        metrics["top_drivers"] = drivers
    else:
        metrics["top_drivers"] = None
        metrics["top_drivers_note"] = "no trained model or a single-class holdout: no permutation importance"

    lap("explain")
    # --- lifecycle over all cutoffs
    rules = {"inactivity_days": s["inactivity_days"], **s["lifecycle"]}
    life = lifecycle_distribution(features, **rules)
    life.to_parquet(out_dir / "lifecycle.parquet", index=False)
    metrics["lifecycle_eval_cutoff"] = {r.stage: float(r.share) for r in life[life["cutoff"] == eval_cutoff].itertuples()}

    # --- truth (simulated data only)
    truth_path = config.truth_file(params)   # None unless the input is the simulator's output
    if truth_path is not None:
        truth = json.loads(truth_path.read_text()).get("churn") or {}
        metrics["oracle_auc"] = truth.get("oracle_auc")
        metrics["truth_drivers"] = truth.get("drivers")
        tc_path = config.truth_file(params, "simulate.truth_churn", "data/raw/truth_churn.parquet")
        if tc_path is not None and len(evaluate):
            auc, n = oracle_auc_on(evaluate, pd.read_parquet(tc_path), eval_cutoff)
            metrics["oracle_auc_eval"] = auc
            metrics["oracle_auc_eval_n"] = n
            if auc is None:
                metrics["oracle_auc_eval_note"] = "no evaluated customer in truth_churn.parquet, or a single class"
            elif model_metrics.get("gbm", {}).get("roc_auc") is not None:
                metrics["gbm_minus_oracle_roc_auc"] = model_metrics["gbm"]["roc_auc"] - auc
        if metrics["top_drivers"] and truth.get("drivers"):
            top = [d["driver"] for d in metrics["top_drivers"]]
            metrics["truth_drivers_in_top"] = {d: _driver_matches(d, top) for d in truth["drivers"]}

    # --- scoring (customer-level; never rendered into HTML)
    frames = []
    if len(evaluate):
        frames.append(_score_frame(evaluate, "eval", fitted, Xev, base_eval, rules, predictions, s["n_jobs"]))
    if score_cutoff:
        score_rows, acc_score = population(features, [score_cutoff], require_label=False)
        metrics["scored"] = acc_score[0]
        if len(score_rows):
            base_score = score_rows[list(BGNBD_COLUMNS.values())].set_axis(list(BGNBD_COLUMNS), axis=1)
            frames.append(_score_frame(score_rows, "score", fitted, prepare_X(score_rows, numeric, categorical),
                                       base_score, rules, None, s["n_jobs"]))
        else:
            metrics["scored"]["note"] = f"no active customers at score_cutoff {score_cutoff} in customer_features"
    if frames:
        pd.concat(frames, ignore_index=True).to_parquet(out_dir / "scores.parquet", index=False)

    lap("lifecycle_truth_scoring")
    metrics["timings_s"] = timings
    metrics = _json_safe(metrics)
    mpath = config.path(params, s["metrics"])
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(metrics, indent=2))
    return metrics


def _score_frame(rows: pd.DataFrame, split: str, fitted: dict, X: pd.DataFrame, base: pd.DataFrame, rules: dict,
                 known: dict | None = None, n_jobs: int = 1) -> pd.DataFrame:
    """Customer-level scores; ``known`` = predictions already computed on these rows (not predicted again)."""
    out = pd.DataFrame({"customer_id": rows["customer_id"].astype(str).to_numpy(),
                        "cutoff": cutoff_key(rows["cutoff"]).to_numpy(), "split": split})
    for name, est in fitted.items():
        p = (known or {}).get(name)
        out[f"p_dissolve_{name}"] = p if p is not None and len(p) == len(out) else predict_risk(est, X, n_jobs)
    out["p_dissolve_bgnbd"] = base["p_no_purchase_horizon"].to_numpy(float)
    out["p_alive_bgnbd"] = base["p_alive"].to_numpy(float)
    out["expected_purchases_bgnbd"] = base["expected_purchases_horizon"].to_numpy(float)
    out["lifecycle_stage"] = lifecycle_stage(rows, **rules).to_numpy()
    return out


# ----------------------------------------------------------------------------- synthetic table (tests, benchmark)
def synthetic_features(n_customers: int, cutoffs: list[str], window_end: str = "2025-07-01", horizon_days: float = 90,
                       seed: int = 0, touchpoints: tuple[str, ...] = ("email", "support", "website", "newsletter"),
                       n_pad_features: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A customer_features-shaped table with a known risk model (for tests and the benchmark).

    true logit = -1.6 + 0.7 complaints_90d - 0.35 (last_nps - 7) [0 when no survey] + 0.012 (days_since_last_activity - 30)
                 - 0.25 log1p(frequency) + 0.4 [segment == 'smb'];
    label ~ Bernoulli(sigmoid(logit)); observable when cutoff + horizon <= window_end.
    Returns (features, truth with cutoff, customer_id, true_risk)."""
    rng = np.random.default_rng(seed)
    end = pd.Timestamp(window_end, tz="UTC")
    frames, truth = [], []
    ids = np.array([f"c{i:07d}" for i in range(n_customers)])
    segment = rng.choice(["consumer", "smb", "enterprise"], n_customers, p=[0.6, 0.3, 0.1])
    for c in cutoffs:
        ct = pd.Timestamp(c, tz="UTC")
        n = n_customers
        freq = rng.poisson(1.5, n)
        first = rng.uniform(1, 400, n)
        rec = np.where(freq > 0, first * rng.uniform(0, 1, n), np.nan)
        rec = np.where(freq == 1, first, rec)
        act = np.minimum(rng.exponential(35, n), first + rng.uniform(0, 30, n))
        nps = np.where(rng.uniform(size=n) < 0.4, rng.integers(0, 11, n).astype(float), np.nan)
        comp = rng.poisson(0.4, n)
        logit = (-1.6 + 0.7 * comp - 0.35 * np.nan_to_num(nps - 7) + 0.012 * (act - 30)
                 - 0.25 * np.log1p(freq) + 0.4 * (segment == "smb"))
        risk = 1 / (1 + np.exp(-logit))
        y = rng.uniform(size=n) < risk
        observable = ct + pd.Timedelta(days=horizon_days) <= end
        room = (end - ct).days
        t_dis = np.where(y, rng.uniform(0, horizon_days, n), horizon_days + rng.exponential(200, n))
        df = pd.DataFrame({
            "cutoff": ct, "customer_id": ids,
            "recency_days": rec, "days_since_last_activity": act, "frequency": freq,
            "days_since_first_purchase": np.where(freq > 0, first, np.nan),
            "monetary_total": freq * rng.gamma(2, 40, n), "tenure_days": first + rng.uniform(0, 60, n),
            "last_nps": nps, "last_csat": np.nan, "n_surveys": (~np.isnan(nps)).astype(int),
            "complaints_90d": comp, "complaints_total": comp + rng.poisson(0.3, n),
            "current_stage": rng.choice(["purchase", "loyalty", "evaluation"], n), "segment": segment,
            "is_customer": freq > 0, "active_at_cutoff": (freq > 0) & (act <= 90),
            "label_observable": observable,
            "dissolved_within_horizon": pd.array(np.where(observable, y, None), dtype="boolean"),
            "days_to_dissolution": np.minimum(t_dis, room), "dissolution_observed": t_dis <= room,
        })
        for tp in touchpoints:
            for w in (7, 30, 90):
                df[f"touches_{tp}_{w}d"] = rng.poisson(w / 30, n)
        for k in range(n_pad_features):
            df[f"pad_{k}"] = rng.normal(size=n)
        df["monetary_mean"] = df["monetary_total"] / df["frequency"].replace(0, np.nan)
        frames.append(df)
        truth.append(pd.DataFrame({"cutoff": ct, "customer_id": ids, "true_risk": risk}))
    return pd.concat(frames, ignore_index=True), pd.concat(truth, ignore_index=True)
