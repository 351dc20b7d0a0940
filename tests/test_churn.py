"""Churn: hand-computed metrics, populations, awkward data, synthetic ground truth, pipeline truth."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_project
from journeylab import churn
from journeylab.errors import InputError

CUTS = {"train": ["2024-09-01", "2024-10-01", "2024-11-01", "2024-12-01"], "eval": "2025-03-01", "score": "2025-07-01"}


# ----------------------------------------------------------------------------- metrics by hand
def test_ece_hand_computed():
    # one row per bin: (|0-.1| + |1-.2| + |1-.8| + |0-.9|) / 4 = 0.5
    assert churn.expected_calibration_error([0, 1, 1, 0], [0.1, 0.2, 0.8, 0.9], 10) == pytest.approx(0.5)
    # 2 bins: [0,.5): p mean .3, y mean 0 -> 2/5*.3 ; [.5,1]: p mean .7333, y mean 1 -> 3/5*.26667 ; = .28
    assert churn.expected_calibration_error([0, 0, 1, 1, 1], [0.2, 0.4, 0.6, 0.7, 0.9], 2) == pytest.approx(0.28)
    # p = 1.0 falls in the last bin; perfectly calibrated constant -> 0
    assert churn.expected_calibration_error([1, 1], [1.0, 1.0], 10) == pytest.approx(0.0)
    assert churn.expected_calibration_error([0, 1, 0, 1], [0.5] * 4, 10) == pytest.approx(0.0)


def test_lift_and_capture_hand_computed():
    y = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    lift, capture = churn.top_fraction_lift(y, p, 0.1)       # top 1: one dissolution; base rate .2
    assert (lift, capture) == pytest.approx((5.0, 0.5))
    lift, capture = churn.top_fraction_lift(y, p, 0.3)       # top 3: 2 of 3 -> rate .667 / .2
    assert (lift, capture) == pytest.approx((10 / 3, 1.0))
    # a constant score carries no information: lift 1, capture = the fraction (ties shared pro rata)
    assert churn.top_fraction_lift(y, [0.3] * 10, 0.1) == pytest.approx((1.0, 0.1))
    # ties at the threshold: scores [.9,.5,.5,.5] y [0,1,0,0], top 2 -> 0 + 1 * (1/3) dissolutions
    lift, capture = churn.top_fraction_lift([0, 1, 0, 0], [0.9, 0.5, 0.5, 0.5], 0.5)
    assert capture == pytest.approx(1 / 3) and lift == pytest.approx((1 / 3 / 2) / 0.25)


def test_lift_table_and_calibration_table():
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    p = np.linspace(1, 0.1, 10)
    t = churn.lift_table(y, p, n_groups=5)
    assert t["n"].tolist() == [2] * 5
    assert t["dissolutions"].tolist() == [2, 0, 1, 0, 0]
    assert t["lift"].iloc[0] == pytest.approx(1.0 / 0.3)
    assert t["cumulative_capture"].tolist() == pytest.approx([2 / 3, 2 / 3, 1, 1, 1])
    c = churn.calibration_table([0, 1, 1], [0.05, 0.95, 0.91], 10)
    assert c["bin"].tolist() == [0, 9] and c["n"].tolist() == [1, 2]
    assert c["observed_rate"].tolist() == [0.0, 1.0]


def test_single_class_gives_null_auc_with_note():
    m = churn.classification_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert m["roc_auc"] is None and "single class" in m["roc_auc_note"]
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.09) / 3)
    assert m["n_scored"] == 3 and m["base_rate"] == 0.0


def test_feature_family_maps_drivers():
    assert churn.feature_family("touches_support_30d") == "touches_support"
    assert churn.feature_family("last_nps") == churn.feature_family("satisfaction") == "satisfaction"
    assert churn.feature_family("complaints_90d") == churn.feature_family("complaints_total") == "complaints"
    assert churn.feature_family("days_since_last_activity") == "recency"


class _OnlyA:
    """A 'model' whose score is column a: permuting b cannot change anything."""

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-X["a"].to_numpy()))
        return np.c_[1 - p, p]


def test_grouped_permutation_importance_known_answer():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)})
    y = (X["a"] > 0).astype(int)
    imp = churn.grouped_permutation_importance(_OnlyA(), X, y, {"a": ["a"], "b": ["b"]}, n_repeats=2, seed=1)
    assert imp["driver"].tolist() == ["a", "b"]
    assert imp.set_index("driver").loc["b", "importance"] == 0.0
    assert imp.set_index("driver").loc["a", "importance"] == pytest.approx(0.5, abs=0.08)  # AUC 1 -> ~0.5


def test_grouped_early_stopping_holds_out_whole_customers():
    """Each customer appears at 5 cutoffs with the same features and a coin-flip label: nothing
    generalises to new customers, but a row-level validation split holds copies of training rows,
    so its loss keeps falling (no early stop). Holding out whole customers stops after
    n_iter_no_change rounds."""
    from journeylab.grouped_boosting import GroupedHistGradientBoostingClassifier
    rng = np.random.default_rng(3)
    n_cust, reps = 2000, 5
    Xc = rng.normal(size=(n_cust, 4))
    yc = rng.integers(0, 2, n_cust)
    X, y = np.repeat(Xc, reps, axis=0), np.repeat(yc, reps)
    groups = np.repeat(np.arange(n_cust), reps)
    kw = dict(max_iter=150, learning_rate=0.3, max_leaf_nodes=31, min_samples_leaf=5, early_stopping=True,
              n_iter_no_change=10, random_state=0)
    rows = GroupedHistGradientBoostingClassifier(**kw).fit(X, y)
    cust = GroupedHistGradientBoostingClassifier(**kw).fit(X, y, groups=groups)
    assert rows.validation_customers_ == 0 and rows.n_iter_ == 150          # memorised copies look like skill
    assert cust.validation_customers_ == 200 and cust.n_iter_ <= 20          # 10% of 2,000 customers held out
    # one class only in the held-out customers: plain row-level split, never a crash
    y1 = np.where(np.isin(groups, np.arange(5)), 1, 0)
    one = GroupedHistGradientBoostingClassifier(**{**kw, "max_iter": 5}).fit(X, y1, groups=groups)
    assert one.n_iter_ >= 1
    # through the pipeline and the customer-grouped calibration folds (groups sliced per fold)
    df = pd.DataFrame(X, columns=list("abcd"))
    gbm = {k: kw[k] for k in ("max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf")}
    fitted = churn.fit_models(df, y, groups, list("abcd"), [], {**churn.DEFAULTS, "gbm": gbm})  # n_iter_no_change 20
    folds = churn.gbm_trees(fitted["gbm"])
    assert len(folds) == 3 and all(f["trees"] <= 30 and f["validation_customers"] > 0 for f in folds), folds


def test_blockwise_and_threaded_predictions_equal_plain_ones():
    """The GBM predicts in 5,000-row blocks and predict_risk splits large tables over threads:
    both row-wise, so the numbers equal scikit-learn's one-call prediction exactly."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from journeylab.grouped_boosting import GroupedHistGradientBoostingClassifier
    rng = np.random.default_rng(5)
    X = rng.normal(size=(12000, 6))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=len(X)) > 0).astype(int)
    kw = dict(max_iter=30, early_stopping=False, random_state=0)
    ours = GroupedHistGradientBoostingClassifier(**kw).fit(X, y)
    plain = HistGradientBoostingClassifier(**kw).fit(X, y)
    assert ours.PREDICT_BLOCK_ROWS < len(X)
    np.testing.assert_array_equal(ours.predict_proba(X), plain.predict_proba(X))
    np.testing.assert_array_equal(ours.decision_function(X), plain.decision_function(X))
    df = pd.DataFrame(X, columns=list("abcdef"))
    fitted = churn.fit_models(df, y, np.arange(len(y)) // 3, list("abcdef"), [], churn.DEFAULTS)
    for est in fitted.values():
        one = est.predict_proba(df)[:, 1]
        np.testing.assert_array_equal(churn.predict_risk(est, df, n_jobs=2, min_rows=1000), one)
        np.testing.assert_array_equal(churn.predict_risk(est, df, n_jobs=3, min_rows=1000), one)


def test_lifecycle_rules():
    f = pd.DataFrame({
        "cutoff": ["2025-01-01"] * 6,
        "frequency": [0, 0, 1, 2, 5, 3],
        "active_at_cutoff": [False, False, True, True, True, False],
        "days_since_last_activity": [10, 200, 5, 5, 5, 5],
        "days_since_first_purchase": [np.nan, np.nan, 20, 300, 400, 400],
    })
    st = churn.lifecycle_stage(f, inactivity_days=90, commitment_min_purchases=4, commitment_min_days=180)
    assert st.tolist() == ["awareness", "dissolution", "exploration", "expansion", "commitment", "dissolution"]
    d = churn.lifecycle_distribution(f, inactivity_days=90)
    assert len(d) == 5 and d["share"].sum() == pytest.approx(1.0)
    assert d.set_index("stage").loc["dissolution", "customers"] == 2


def test_population_excludes_unobservable_never_retained():
    f, _ = churn.synthetic_features(300, ["2024-12-01", "2025-05-01"], window_end="2025-07-01", horizon_days=90, seed=3)
    pop, acc = churn.population(f, ["2024-12-01", "2025-05-01"])
    late = acc[1]
    assert late["n"] == 0 and late["excluded_label_unobservable"] == late["active"] > 0
    assert "past the observation end" in late["note"]
    assert (churn.cutoff_key(pop["cutoff"]) == "2024-12-01").all()
    assert pop["dissolved_within_horizon"].notna().all()


def test_cutoff_key_formats_distinct_values_keeps_index_and_nulls():
    s = pd.Series([pd.Timestamp("2024-09-01", tz="UTC"), pd.NaT, pd.Timestamp("2024-09-01 13:00", tz="UTC")], index=[7, 3, 5])
    k = churn.cutoff_key(s)
    assert k.index.tolist() == [7, 3, 5]
    assert k.iloc[0] == k.iloc[2] == "2024-09-01" and pd.isna(k.iloc[1])
    assert churn.cutoff_key(["2025-03-01"]).tolist() == ["2025-03-01"]


def test_fast_bgnbd_fit_matches_reference_fitter_on_cdnow():
    from journeylab.bgnbd import BetaGeoFitter
    d = pd.read_csv(Path(__file__).parent / "data" / "cdnow_customers_summary.csv")
    ref = BetaGeoFitter().fit(d["frequency"], d["recency"], d["T"])
    fast = churn.fit_bgnbd(d["frequency"], d["recency"], d["T"])
    # Fader, Hardie & Lee (2005): r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4
    assert fast.params_.to_dict() == pytest.approx({"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}, abs=1e-3)
    assert fast.params_.to_dict() == pytest.approx(ref.params_.to_dict(), rel=1e-4)
    assert fast.log_likelihood_ == pytest.approx(ref.log_likelihood_, abs=1e-4)
    # weights = counts of identical rows give the same fit as the repeated rows
    g = d.groupby(["frequency", "recency", "T"]).size().reset_index(name="w")
    fw = churn.fit_bgnbd(g["frequency"], g["recency"], g["T"], weights=g["w"])
    assert fw.params_.to_dict() == pytest.approx(fast.params_.to_dict(), rel=1e-4)


# ----------------------------------------------------------------------------- run_stage on synthetic tables
def _synthetic_project(root: Path, n: int = 3000, seed: int = 1, mutate=None, **overrides) -> dict:
    params = make_project(root, **{"churn.n_threads": 1, **overrides})
    c = params["churn"]
    f, truth = churn.synthetic_features(n, list(c["train_cutoffs"]) + [c["eval_cutoff"], c["score_cutoff"]],
                                        window_end=params["window"]["end"], horizon_days=c["horizon_days"], seed=seed)
    if mutate:
        f = mutate(f)
    f.to_parquet(root / "data/journeys/customer_features.parquet")
    truth.to_parquet(root / "data/raw/truth_churn.parquet")
    (root / "data/raw/truth.json").write_text(json.dumps(
        {"churn": {"drivers": {"complaints_90d": 0.7, "satisfaction": -0.35}, "oracle_auc": 0.75}}))
    return params


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("churn_synth")
    params = _synthetic_project(root)
    return params, churn.run_stage(params), root


def test_run_stage_recovers_synthetic_truth(synthetic_run):
    _, m, root = synthetic_run
    gbm = m["models"]["gbm"]
    # out of time, gradient boosting reaches the oracle (true risk) AUC on the same customers
    assert m["oracle_auc_eval"] is not None and m["oracle_auc_eval_n"] == gbm["n_scored"]
    assert abs(gbm["roc_auc"] - m["oracle_auc_eval"]) < 0.03
    assert gbm["ece"] < 0.04 and m["models"]["logistic"]["ece"] < 0.04
    assert m["truth_drivers_in_top"] == {"complaints_90d": True, "satisfaction": True}
    assert [d["driver"] for d in m["top_drivers"][:2]] == ["satisfaction", "complaints"]
    sat = m["top_drivers"][0]
    assert sat["direction"] == "decreases" and "falls" in sat["summary"]
    for name in ("logistic", "gbm", "bgnbd"):
        for key in ("roc_auc", "pr_auc", "brier", "ece", "lift_top_decile", "capture_top_decile", "n_scored", "base_rate"):
            assert key in m["models"][name], (name, key)
    assert m["survival"]["c_index_eval"] > 0.55
    assert m["bgnbd"]["one_purchase_share"] > 0 and "P(alive) = 1" in m["bgnbd"]["one_purchase_note"]
    assert m["train"]["n"] == sum(c["n"] for c in m["train"]["by_cutoff"])
    assert "last_csat" in m["features"]["dropped_null_or_constant"]  # no csat at all: dropped, not a crash
    written = json.loads((root / "metrics/churn.json").read_text())
    assert written["models"]["gbm"]["roc_auc"] == pytest.approx(gbm["roc_auc"])


def test_run_stage_outputs(synthetic_run):
    _, m, root = synthetic_run
    out = root / "data/results/churn"
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["split"]) == {"eval", "score"}
    assert (scores["split"] == "score").sum() == m["scored"]["n"]
    assert (scores["split"] == "eval").sum() == m["eval"]["n"]
    assert scores[["p_dissolve_gbm", "p_dissolve_logistic", "p_dissolve_bgnbd"]].apply(lambda s: s.between(0, 1).all()).all()
    for name in ("lifecycle", "importance", "partial_dependence", "calibration", "lift", "survival_coefficients"):
        assert (out / f"{name}.parquet").exists(), name
    lift = pd.read_parquet(out / "lift.parquet")
    assert set(lift["model"]) == {"logistic", "gbm", "bgnbd"}
    # the aggregates carry no customer ids
    for name in ("lifecycle", "importance", "partial_dependence", "calibration", "lift"):
        assert "customer_id" not in pd.read_parquet(out / f"{name}.parquet").columns


def test_too_few_dissolutions_no_model_clear_note(tmp_path):
    params = _synthetic_project(tmp_path, n=400, **{"churn.min_dissolutions": 100000})
    m = churn.run_stage(params)
    assert m["models"]["gbm"]["roc_auc"] is None
    assert "min_dissolutions = 100000" in m["models"]["gbm"]["roc_auc_note"]
    assert m["models"]["bgnbd"]["roc_auc"] is not None  # the unsupervised baseline still runs
    assert m["survival"]["c_index_eval"] is None and m["top_drivers"] is None


def test_eval_horizon_past_observation_end(tmp_path):
    params = _synthetic_project(tmp_path, n=400, **{"churn.eval_cutoff": "2025-05-01"})
    m = churn.run_stage(params)
    assert m["eval"]["n"] == 0 and "past the observation end" in m["eval"]["note"]
    assert m["models"]["gbm"]["roc_auc"] is None and m["models"]["gbm"]["roc_auc_note"]
    assert m["scored"]["n"] > 0  # scoring still happens


def test_single_class_training_cutoff_and_missing_surveys(tmp_path):
    def mutate(f):
        f = f.copy()
        first = churn.cutoff_key(f["cutoff"]) == "2024-09-01"
        f.loc[first, "dissolved_within_horizon"] = False   # single class at one cutoff
        f["last_nps"] = np.nan                             # no survey answers at all
        f["n_surveys"] = 0
        return f
    params = _synthetic_project(tmp_path, n=800, mutate=mutate)
    m = churn.run_stage(params)
    assert "single class" in m["train"]["by_cutoff"][0]["note"]
    assert "last_nps" in m["features"]["dropped_null_or_constant"]
    assert m["models"]["gbm"]["roc_auc"] > 0.55  # complaints, recency, segment still carry signal


def test_missing_features_file_message(tmp_path):
    params = make_project(tmp_path)
    with pytest.raises(InputError, match="journeylab build"):
        churn.run_stage(params)


def test_missing_column_message(tmp_path):
    params = make_project(tmp_path)
    pd.DataFrame({"cutoff": ["2025-01-01"], "customer_id": ["a"]}).to_parquet(
        tmp_path / "data/journeys/customer_features.parquet")
    with pytest.raises(InputError, match="active_at_cutoff"):
        churn.run_stage(params)


# ----------------------------------------------------------------------------- full pipeline (simulate -> ingest -> build)
def _pipeline_ready() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(f"journeylab.{m}") for m in ("simulate", "ingest", "engine"))


needs_pipeline = pytest.mark.skipif(not _pipeline_ready(), reason="simulate/ingest/engine not in the tree yet")


@needs_pipeline
def test_leakage_events_after_cutoff_change_nothing(project_factory):
    """Deleting every event at/after the eval cutoff leaves features (<= eval cutoff) and eval scores unchanged."""
    from conftest import run_stages
    a = run_stages(project_factory(**{"simulate.n_customers": 1500}), ("simulate", "ingest", "build", "churn"))
    ra = Path(a["_root"])
    b = project_factory(**{"simulate.n_customers": 1500})
    rb = Path(b["_root"])
    ev = pd.read_parquet(ra / "data/clean/events.parquet")
    cut = pd.Timestamp(a["churn"]["eval_cutoff"], tz="UTC")
    kept = ev[ev["ts"] < cut]
    assert len(kept) < len(ev)
    kept.to_parquet(rb / "data/clean/events.parquet")
    (rb / "data/raw").mkdir(parents=True, exist_ok=True)
    run_stages(b, ("build", "churn"))

    def feats(root):
        f = pd.read_parquet(root / "data/journeys/customer_features.parquet")
        f = f[churn.cutoff_key(f["cutoff"]) <= a["churn"]["eval_cutoff"]]
        cols = [c for c in f.columns if c not in churn.LABEL_COLUMNS]
        return f[cols].sort_values(["cutoff", "customer_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(feats(ra), feats(rb))

    def scores(root):
        s = pd.read_parquet(root / "data/results/churn/scores.parquet")
        return s[s["split"] == "eval"].sort_values("customer_id").reset_index(drop=True)
    sa, sb = scores(ra), scores(rb)
    pd.testing.assert_frame_equal(sa, sb)


@needs_pipeline
@pytest.mark.slow
@pytest.mark.xdist_group("default_data")
def test_default_simulation_truth(default_project):
    m = churn.run_stage(default_project)
    gbm = m["models"]["gbm"]
    oracle = m["oracle_auc_eval"] if m.get("oracle_auc_eval") is not None else m["oracle_auc"]
    assert oracle is not None
    assert abs(gbm["roc_auc"] - oracle) <= 0.03, (gbm["roc_auc"], oracle)
    assert gbm["ece"] < 0.03
    assert all(m["truth_drivers_in_top"].values()), m["truth_drivers_in_top"]
    assert gbm["roc_auc"] > m["models"]["bgnbd"]["roc_auc"]
    # early stopping on held-out customers ends every calibration fold before max_iter at this size
    folds = m["train"]["gbm_trees_by_fold"]
    assert len(folds) == 3 and all(0 < f["trees"] < f["max_iter"] and f["validation_customers"] > 0 for f in folds), folds


def test_row_caps_are_sampled_and_stated(tmp_path):
    caps = {"churn.max_train_rows": 1200, "churn.survival_max_rows": 600, "churn.bgnbd_max_rows": 500,
            "churn.importance_rows": 300, "churn.pd_rows": 100}
    params = _synthetic_project(tmp_path, n=1000, **caps)
    m = churn.run_stage(params)
    assert m["train"]["n"] > 1200 and m["train"]["sampled_rows"] == 1200
    assert m["survival"]["n_train"] == 600
    assert set(m["bgnbd"]["fit_rows_by_cutoff"].values()) == {500}
    assert m["bgnbd"]["n_fit"] == 500 and "bgnbd_max_rows" in m["bgnbd"]["fit_note"]
    assert m["explanations"]["importance_rows"] == 300 and m["explanations"]["pd_rows"] == 100
    assert m["models"]["bgnbd"]["n_scored"] == m["eval"]["n"]     # every eval row is scored, caps or not
    assert set(m["timings_s"]) >= {"load", "bgnbd", "fit_models", "evaluate", "survival", "explain"}


def test_driver_is_described_by_the_member_that_moves_the_risk():
    # 'recency' family: recency_days is a perfect rank copy of days_since_last_activity (same Spearman rho with
    # the risk), but the model only uses days_since_last_activity: that member must describe the driver
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 60, 600)
    X = pd.DataFrame({"recency_days": np.sqrt(b), "days_since_last_activity": b, "frequency": rng.integers(1, 5, 600)})

    class Model:
        def predict_proba(self, X):
            p = 1 / (1 + np.exp(-(X["days_since_last_activity"].to_numpy() / 10 - 3)))
            return np.column_stack([1 - p, p])
    y = (rng.random(600) < Model().predict_proba(X)[:, 1]).astype(int)
    s = {**churn.DEFAULTS, "importance_repeats": 1, "top_drivers": 1}
    imp, pdt, drivers = churn.explain(Model(), X, y, ["recency_days", "days_since_last_activity", "frequency"], [], s)
    assert imp["driver"].iloc[0] == "recency"
    assert drivers[0]["feature"] == "days_since_last_activity" and drivers[0]["direction"] == "increases"
    assert drivers[0]["risk_high"] - drivers[0]["risk_low"] > 0.5
