"""Attribution: known answers from ChannelAttribution, hand computations, Shapley axioms, awkward data.

Reference numbers (constants below) were produced by ChannelAttribution 2.2.5 (GPL-3, PyPI sdist
built in a scratch venv outside this repository, not vendored) on tests/data/mta_data.csv.gz:
``heuristic_models(Data, "path", "total_conversions", var_value="total_conversion_value", sep=">")``
and ``markov_model(..., var_null="total_null", order=k, nsim_start=1e7, out_more=True)``.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from journeylab import attribution as A
from journeylab.errors import JourneylabError

DATA = Path(__file__).resolve().parent / "data" / "mta_data.csv.gz"
KW = dict(conversions="total_conversions", nulls="total_null", value="total_conversion_value")
CHANNELS = ["eta", "iota", "alpha", "beta", "theta", "lambda", "kappa", "zeta", "epsilon", "gamma", "delta", "mi"]

# ChannelAttribution 2.2.5 heuristic_models on the sample (exact, deterministic)
CA_FIRST = [3164.0, 4606.0, 6308.0, 2831.0, 1606.0, 902.0, 74.0, 27.0, 99.0, 165.0, 1.0, 2.0]
CA_LAST = [4167.0, 3355.0, 8447.0, 989.0, 653.0, 1207.0, 230.0, 107.0, 531.0, 92.0, 5.0, 2.0]
CA_LINEAR = [3539.9511571005655, 3857.0962210177604, 7574.718593751173, 2083.5001445890803, 1022.8013939042183,
             1035.257572285535, 137.96407792227836, 136.55154046644452, 272.1704377204597, 121.04163902026706,
             1.7249999999999999, 2.2222222222222223]
CA_FIRST_VALUE = [11909.47621303163, 19597.261276975205, 19121.272355798723, 12235.5917443553, 6652.349347446829,
                  3735.602164915967, 305.74325, 103.004, 412.30124285714277, 718.9779918300652, 6.119, 5.273]
# ChannelAttribution 2.2.5 markov_model, nsim_start=1e7 (simulated), total_conversions by order
CA_MARKOV = {
    1: [3326.096, 3888.48, 5353.75, 2526.893, 1972.986, 1282.218, 275.477, 380.231, 600.227, 171.75, 4.623, 2.269],
    2: [3389.478, 3817.803, 5616.701, 2423.858, 1904.525, 1198.777, 265.051, 374.572, 613.09, 173.768, 5.362, 2.016],
    3: [3392.223, 3798.405, 5743.463, 2395.877, 1855.128, 1148.383, 269.133, 366.51, 627.915, 180.843, 5.105, 2.014],
}


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return pd.read_csv(DATA)


def _by_tp(df, col="conversions"):
    return df.set_index("touchpoint")[col]


# ----------------------------------------------------------------------------- ChannelAttribution sample

def test_sample_data_is_the_published_one(sample):
    assert len(sample) == 10_000
    assert sample["total_conversions"].sum() == 19_785
    assert sorted(A._tokenise(sample, **KW).names) == sorted(CHANNELS)


@pytest.mark.parametrize("model,expected", [("first", CA_FIRST), ("last", CA_LAST), ("linear", CA_LINEAR)])
def test_heuristics_equal_channelattribution(sample, model, expected):
    ours = _by_tp(A.heuristic_attribution(sample, model, **KW))
    np.testing.assert_allclose(ours[CHANNELS].to_numpy(), expected, rtol=1e-12, atol=1e-9)


def test_heuristic_value_equal_channelattribution(sample):
    ours = _by_tp(A.heuristic_attribution(sample, "first", **KW), "value")
    np.testing.assert_allclose(ours[CHANNELS].to_numpy(), CA_FIRST_VALUE, rtol=1e-10)


def test_exact_markov_order1_published_numbers(sample):
    res = A.markov_model(sample, 1, **KW)
    assert round(res.p_conversion, 5) == 0.22385
    assert res.p_conversion == pytest.approx(19785 / (19785 + 68602), rel=1e-12)   # flow conservation
    assert round(_by_tp(res.attribution, "removal_effect")["alpha"], 4) == 0.5584
    assert res.attribution["conversions"].sum() == pytest.approx(19785)
    assert res.attribution["value"].sum() == pytest.approx(sample["total_conversion_value"].sum())


@pytest.mark.parametrize("order", [1, 2, 3])
def test_exact_markov_agrees_with_channelattribution_1e7(sample, order):
    ours = _by_tp(A.markov_attribution(sample, order, **KW))[CHANNELS].to_numpy()
    l1 = np.abs(ours - np.array(CA_MARKOV[order])).sum() / 19785
    assert l1 < 0.005


def test_markov_bootstrap_interval_brackets_estimate(sample):
    df = A.markov_attribution(sample, 1, bootstrap=30, seed=1, **KW)
    big = df[df["conversions"] > 1000]
    assert ((big["ci_low"] <= big["conversions"]) & (big["conversions"] <= big["ci_high"])).all()
    assert ((big["ci_high"] - big["ci_low"]) > 0).all()


def test_heuristic_bootstrap_width_is_poisson(sample):
    df = A.heuristic_attribution(sample, "first", bootstrap=400, seed=3, **KW).set_index("touchpoint")
    width = df.loc["alpha", "ci_high"] - df.loc["alpha", "ci_low"]
    assert width == pytest.approx(2 * 1.96 * math.sqrt(6308), rel=0.15)   # sum of Poisson counts


def test_order_selection_is_out_of_sample(sample):
    tab = A.select_markov_order(sample, orders=(1, 2, 3), folds=5, seed=0, **KW)
    assert list(tab["order"]) == [1, 2, 3] and tab["best"].sum() == 1
    # In the sample the outcome carries ~no information about the path: held-out log-likelihood is the
    # always-guess-the-rate entropy, and more states only overfit (in-sample fit would pick order 3).
    p = 19785 / (19785 + 68602)
    base = p * math.log(p) + (1 - p) * math.log(1 - p)
    assert tab.loc[tab["best"], "order"].item() == 1
    assert tab["loglik_per_journey"].iloc[0] == pytest.approx(base, abs=1e-3)
    assert tab["loglik_per_journey"].is_monotonic_decreasing


def test_order_selection_finds_second_order_signal():
    # outcome depends on the last TWO touches (a>b converts 90%, c>b 10%); the first touch is noise
    rng = np.random.default_rng(5)
    rows = []
    for first in "xyzw":
        for mid, rate in (("a", 0.9), ("c", 0.1)):
            n = 100
            conv = rng.binomial(n, rate)
            rows.append((f"{first} > {mid} > b", conv, n - conv))
    paths = pd.DataFrame(rows, columns=["path", "conversions", "nulls"])
    tab = A.select_markov_order(paths, orders=(1, 2, 3), folds=5, seed=1).set_index("order")
    assert tab.loc[2, "loglik_per_journey"] > tab.loc[1, "loglik_per_journey"] + 0.2
    assert tab.loc[2, "loglik_per_journey"] > tab.loc[3, "loglik_per_journey"]
    assert tab.loc[2, "best"]


# ----------------------------------------------------------------------------- Markov solvers

def _random_paths(rng, n_paths, channels, max_len, loop=0.0):
    rows = []
    for _ in range(n_paths):
        L = int(rng.integers(1, max_len + 1))
        toks = list(rng.choice(channels, L))
        if loop and rng.random() < loop:          # long back-and-forth journeys: slowly absorbing chain
            toks = toks[:2] * int(rng.integers(20, 60))
        rows.append(" > ".join(toks))
    df = pd.DataFrame({"path": rows}).drop_duplicates("path").reset_index(drop=True)
    df["conversions"] = rng.poisson(1.5, len(df)).astype(float) + rng.random(len(df)) * (rng.random(len(df)) < 0.2)
    df["nulls"] = rng.poisson(3.0, len(df)).astype(float)
    df["value"] = df["conversions"] * rng.gamma(2.0, 20.0, len(df))
    return df


def _solutions(paths, order, methods):
    tok = A._tokenise(paths)
    ch = A._build_chain(tok, order)
    contains = A._contains(ch)
    return ch, {m: A._solve_chain(ch, tok.conversions, tok.nulls, tok.value, contains, m) for m in methods}


def _assert_same_solution(got, ref, rtol=1e-10):
    p, ev = ref[0], ref[1]
    assert got[0] == pytest.approx(p, rel=rtol, abs=1e-300) and got[1] == pytest.approx(ev, rel=rtol, abs=1e-300)
    np.testing.assert_allclose(got[2], ref[2], rtol=0, atol=rtol * p)          # relative to P(conv)
    np.testing.assert_allclose(got[3], ref[3], rtol=0, atol=rtol * ev)         # relative to E[value]


@pytest.mark.parametrize("seed,order,n_channels,loop", [(0, 1, 6, 0.0), (1, 2, 6, 0.0), (2, 3, 7, 0.0),
                                                         (3, 2, 9, 0.3), (4, 3, 5, 0.2), (5, 1, 3, 0.5)])
def test_markov_solvers_agree_with_sparse_lu(seed, order, n_channels, loop):
    rng = np.random.default_rng(seed)
    paths = _random_paths(rng, 400, [f"c{i}" for i in range(n_channels)], 8, loop)
    ch, sol = _solutions(paths, order, ["lu", "iterative", "auto"] + (["dense"] if order < 3 else []))
    for m in sol:
        _assert_same_solution(sol[m], sol["lu"])


def test_markov_solvers_agree_on_the_sample(sample):
    for order in (1, 2, 3):
        ch, sol = _solutions(sample.rename(columns={"total_conversions": "conversions", "total_null": "nulls",
                                                    "total_conversion_value": "value"}), order,
                             ["lu", "iterative", "auto"])
        for m in sol:
            _assert_same_solution(sol[m], sol["lu"])
        assert (ch.n_states > A.DENSE_MAX_STATES) == (order > 1)                 # both solver paths covered


def test_iterative_solver_hands_slow_chains_to_lu(monkeypatch):
    # a two-state loop absorbed with probability 1e-4 per step: ~3e5 iterations -> no proof, LU decides
    paths = pd.DataFrame({"path": [" > ".join(["a", "b"] * 5000), "a", "c > b"], "conversions": [1.0, 2.0, 1.0],
                          "nulls": [1.0, 1.0, 3.0]})
    tok = A._tokenise(paths)
    ch = A._build_chain(tok, 1)
    contains = A._contains(ch)
    qdata, r = A._chain_system(ch, tok.conversions, tok.nulls, tok.value)
    x, ok = A._absorb_iterative(ch, qdata, r, A._keep_masks(contains), max_iter=500)
    assert not ok.all()
    auto = A._solve_chain(ch, tok.conversions, tok.nulls, tok.value, contains, "iterative")
    _assert_same_solution(auto, A._solve_chain(ch, tok.conversions, tok.nulls, tok.value, contains, "lu"))


@pytest.mark.parametrize("order", [1, 3])
def test_batched_replicates_equal_one_at_a_time(order):
    rng = np.random.default_rng(7)
    paths = _random_paths(rng, 300, list("abcdef"), 7)
    tok = A._tokenise(paths)
    ch = A._build_chain(tok, order)
    keep = A._keep_masks(A._contains(ch))
    cb = rng.poisson(tok.conversions[:, None], (len(tok.conversions), 5)).astype(float)
    nb = rng.poisson(tok.nulls[:, None], (len(tok.nulls), 5)).astype(float)
    qdata, r = A._chain_system(ch, cb, nb, cb * 3.0)
    batched = A._absorb(ch, qdata, r, keep)
    for i in range(5):
        q1, r1 = A._chain_system(ch, cb[:, i], nb[:, i], cb[:, i] * 3.0)
        ref = A._absorb(ch, q1, r1, keep, "lu")[0]
        np.testing.assert_allclose(batched[i], ref, rtol=1e-10, atol=1e-13)


def test_poisson_sampler_distribution():
    from scipy.stats import poisson
    rates = np.concatenate([np.full(3000, 0.5), np.full(3000, 3.0), np.full(3000, 40.0), np.zeros(500),
                            [2.5, 1000.0]])                          # tabled, zero, untabled rates
    s = A._PoissonSampler(rates)
    assert len(s.rows_o) == 2
    rng = np.random.default_rng(3)
    x = np.concatenate([s.draw(rng, 40).copy() for _ in range(3)], axis=1)
    assert (x[9000:9500] == 0).all() and (x == np.round(x)).all()
    for lam, rows in ((0.5, slice(0, 3000)), (3.0, slice(3000, 6000)), (40.0, slice(6000, 9000))):
        d = x[rows].ravel()
        k = np.arange(int(lam + 8 * math.sqrt(lam) + 8))
        freq = np.bincount(d.astype(int), minlength=len(k))[:len(k)]
        expected = poisson.pmf(k, lam) * d.size
        big = expected > 20
        chi2 = ((freq[big] - expected[big]) ** 2 / expected[big]).sum()
        assert chi2 < big.sum() + 6 * math.sqrt(2 * big.sum())                   # ~6 sd of chi2(df)
        assert d.mean() == pytest.approx(lam, rel=0.02) and d.var() == pytest.approx(lam, rel=0.05)
    assert abs(x[-1].mean() - 1000.0) < 20


# ----------------------------------------------------------------------------- hand-computed toy

TOY = pd.DataFrame({"path": ["a > b", "a", "b"], "conversions": [1.0, 0.0, 1.0], "nulls": [0.0, 1.0, 1.0],
                    "value": [10.0, 0.0, 4.0]})


def test_markov_toy_by_hand():
    # start->a 1/2, start->b 1/2; a->b 1/2, a->null 1/2; b->conv 2/3, b->null 1/3
    # P(conv) = 1/2*1/3 + 1/2*2/3 = 1/2; without a: 1/3 -> RE_a = 1/3; without b: 0 -> RE_b = 1
    res = A.markov_model(TOY, 1)
    assert res.p_conversion == pytest.approx(0.5)
    df = res.attribution.set_index("touchpoint")
    assert df.loc["a", "removal_effect"] == pytest.approx(1 / 3)
    assert df.loc["b", "removal_effect"] == pytest.approx(1.0)
    assert df.loc["a", "conversions"] == pytest.approx(0.5)
    assert df.loc["b", "conversions"] == pytest.approx(1.5)
    # every conversion absorbs from b, worth 14/2 = 7 -> value split like conversions
    assert res.expected_value == pytest.approx(3.5)
    assert df.loc["a", "value"] == pytest.approx(3.5)
    assert df.loc["b", "value"] == pytest.approx(10.5)


def test_transition_counts_and_matrix_by_hand():
    tc = A.transition_counts(TOY, 1)
    got = {(f, t): c for f, t, c in tc.itertuples(index=False)}
    assert got == {("(start)", "a"): 2, ("(start)", "b"): 2, ("a", "b"): 1, ("a", "(null)"): 1,
                   ("b", "(conversion)"): 2, ("b", "(null)"): 1}
    tm = A.transition_matrix(TOY, 1, wide=True)
    assert tm.loc["b", "(conversion)"] == pytest.approx(2 / 3)
    assert np.allclose(tm.sum(axis=1), 1.0)


def test_order2_states_collapse_states_not_touchpoints():
    p = pd.DataFrame({"path": ["a > a > a > b", "a > b > a > b"], "conversions": [1.0, 2.0], "nulls": [0.0, 0.0]})
    got = {(f, t): c for f, t, c in A.transition_counts(p, 2).itertuples(index=False)}
    assert got == {("(start)", "a,a"): 1, ("a,a", "a,b"): 1, ("a,b", "(conversion)"): 3,
                   ("(start)", "a,b"): 2, ("a,b", "b,a"): 2, ("b,a", "a,b"): 2}
    # shorter path than the order: one state of its touches
    short = A.transition_counts(pd.DataFrame({"path": ["x"], "conversions": [1.0]}), 3)
    assert set(short["state_from"]) == {"(start)", "x"}


def test_shapley_toy_by_hand():
    # rates: {a} 2/10, {b} 1/10, {a,b} 5/10. Journey game on {a,b}: phi_a = (0.2 + 0.4)/2 = 0.3,
    # phi_b = (0.1 + 0.3)/2 = 0.2 -> its 5 conversions split 3 : 2. Unseen {c} is worth 0 (its only
    # observed subset is the empty set): {a,c} rate 0.5 -> phi_a = (0.2 + 0.5)/2, phi_c = (0 + 0.3)/2.
    paths = pd.DataFrame({"path": ["a", "b", "a > b", "c > a"], "conversions": [2.0, 1.0, 5.0, 2.0],
                          "nulls": [8.0, 9.0, 5.0, 2.0]})
    df = _by_tp(A.shapley_attribution(paths))
    assert df["a"] == pytest.approx(2 + 3 + 2 * 0.35 / 0.5)
    assert df["b"] == pytest.approx(1 + 2)
    assert df["c"] == pytest.approx(2 * 0.15 / 0.5)
    # the same from the engine's coalitions table
    coal = pd.DataFrame({"coalition": ["a", "b", "a,b", "a,c"], "journeys": [10.0, 10, 10, 4],
                         "conversions": [2.0, 1, 5, 2], "value": [0.0] * 4})
    np.testing.assert_allclose(_by_tp(A.shapley_attribution(coalitions=coal))[["a", "b", "c"]], df[["a", "b", "c"]])


def test_zhao_simplified_shapley_is_linear_unique(sample):
    # global game v(T) = sum_{U subset T} conversions(U): its Shapley value = linear_unique
    coal, names = A._coalition_table(sample, A.DEFAULT_SEP, **KW)
    C = len(names)
    v = np.zeros(1 << C)
    np.add.at(v, coal["mask"].to_numpy(), coal["conversions"].to_numpy())
    for i in range(C):                      # zeta transform: sum over subsets
        idx = np.flatnonzero(np.arange(1 << C) & (1 << i))
        v[idx] += v[idx ^ (1 << i)]
    phi = A.shapley_values(v)
    lu = _by_tp(A.heuristic_attribution(sample, "linear_unique", **KW))
    np.testing.assert_allclose(phi, lu[list(names)].to_numpy(), rtol=1e-9)
    zhao = _by_tp(A.shapley_attribution(sample, characteristic="zhao", **KW))
    np.testing.assert_allclose(zhao[list(names)].to_numpy(), phi, rtol=1e-9)


def test_hazard_attribution_by_hand():
    journeys = pd.DataFrame({"converted": [True, True, False], "n_a": [1, 0, 3], "n_b": [2, 0, 1],
                             "n_c": [1, 0, 0], "revenue": [10.0, 5.0, 0.0]})
    hr = pd.DataFrame({"touchpoint": ["a", "b", "c"], "log_hr": [math.log(2), 0.5, -0.3], "se": [0.1, 0.1, 0.1]})
    df = A.hazard_attribution(journeys, hr).set_index("touchpoint")
    eta = math.log(2) + 2 * 0.5
    excess = 1 - math.exp(-eta)
    assert df.loc["a", "conversions"] == pytest.approx(excess * math.log(2) / eta)
    assert df.loc["b", "conversions"] == pytest.approx(excess * 1.0 / eta)
    assert df.loc["c", "conversions"] == 0.0                       # protective touch: no credit
    assert df.loc["a", "value"] == pytest.approx(10 * excess * math.log(2) / eta)
    inc = A.hazard_attribution(journeys, hr, baseline="include").set_index("touchpoint")
    assert inc["conversions"].sum() == pytest.approx(1.0)          # 2nd journey has no touches


# ----------------------------------------------------------------------------- Shapley properties

def _swap01(m: np.ndarray) -> np.ndarray:
    b0, b1 = (m & 1), (m >> 1) & 1
    return (m & ~3) | (b0 << 1) | b1


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 6), data=st.data())
def test_shapley_axioms(n, data):
    size = 1 << n
    v = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=size, max_size=size)))
    v[0] = 0.0
    phi = A.shapley_values(v)
    assert phi.sum() == pytest.approx(v[-1] - v[0], abs=1e-9)                      # efficiency
    m = np.arange(size)
    sym = (v + v[_swap01(m)]) / 2                                                 # players 0, 1 symmetric
    ps = A.shapley_values(sym)
    assert ps[0] == pytest.approx(ps[1], abs=1e-9)
    k = data.draw(st.integers(0, n - 1))                                          # null player k
    nul = v[m & ~(1 << k)]
    pn = A.shapley_values(nul)
    assert pn[k] == pytest.approx(0.0, abs=1e-9)
    assert pn.sum() == pytest.approx(nul[-1], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from("abcde"), min_size=1, max_size=6),
                          st.floats(0, 20), st.floats(0, 20)), min_size=1, max_size=12))
def test_attribution_on_random_paths_is_efficient_and_nonnegative(rows):
    paths = pd.DataFrame({"path": [" > ".join(p) for p, _, _ in rows], "conversions": [c for _, c, _ in rows],
                          "nulls": [n for _, _, n in rows]})
    total = paths["conversions"].sum()
    for df in (A.shapley_attribution(paths), A.markov_attribution(paths, 1), A.markov_attribution(paths, 2),
               A.heuristic_attribution(paths, "position_based")):
        assert (df["conversions"] >= 0).all()
        assert df["conversions"].sum() == pytest.approx(total, rel=1e-9, abs=1e-9)


# ----------------------------------------------------------------------------- awkward data

def test_single_touch_paths():
    p = pd.DataFrame({"path": ["a", "b"], "conversions": [1.0, 0.0], "nulls": [1.0, 2.0]})
    df = _by_tp(A.markov_attribution(p, 1))
    assert df["a"] == pytest.approx(1.0) and df["b"] == 0.0
    assert _by_tp(A.shapley_attribution(p))["b"] == 0.0


def test_channel_only_in_non_converting_paths():
    # d never converts: heuristics and Shapley give it 0. Markov (order 1) can still credit it through
    # the chain (d -> a -> conversion is a possible chain path): documented, non-negative.
    p = pd.DataFrame({"path": ["a", "d > a", "d"], "conversions": [3.0, 0.0, 0.0], "nulls": [1.0, 2.0, 2.0]})
    assert _by_tp(A.shapley_attribution(p))["d"] == 0.0
    assert _by_tp(A.heuristic_attribution(p, "linear"))["d"] == 0.0
    mk = _by_tp(A.markov_attribution(p, 1))
    assert mk["d"] >= 0 and mk.sum() == pytest.approx(3.0)


def test_channel_only_in_converting_paths_and_no_nulls_column():
    p = pd.DataFrame({"path": ["a > b", "b"], "conversions": [2.0, 1.0]})
    res = A.markov_model(p, 1)
    assert res.p_conversion == pytest.approx(1.0)        # without nulls every journey converts
    df = res.attribution.set_index("touchpoint")
    # RE = P(visit | conversion): a 2/3, b 1 -> credit 3 * (2/3) / (5/3) and 3 * 1 / (5/3)
    assert df.loc["a", "conversions"] == pytest.approx(1.2)
    assert df.loc["b", "conversions"] == pytest.approx(1.8)


def test_zero_conversions_is_defined():
    p = pd.DataFrame({"path": ["a > b", "b"], "conversions": [0.0, 0.0], "nulls": [3.0, 1.0]})
    for df in (A.markov_attribution(p, 2), A.shapley_attribution(p), A.heuristic_attribution(p, "last")):
        assert (df["conversions"] == 0).all() and df["share"].isna().all()


def test_fractional_conversions_not_truncated():
    p = pd.DataFrame({"path": ["a", "b > a"], "conversions": [0.5, 0.25], "nulls": [0.5, 0.0]})
    assert A.markov_attribution(p, 1)["conversions"].sum() == pytest.approx(0.75)
    assert _by_tp(A.heuristic_attribution(p, "first"))["b"] == pytest.approx(0.25)


def test_separators_inside_names():
    p = pd.DataFrame({"path": ["x > y|z", "z"], "conversions": [1.0, 1.0], "nulls": [0.0, 1.0]})
    df = A.markov_attribution(p, 1, sep="|")
    assert set(df["touchpoint"]) == {"x > y", "z"}
    comma = pd.DataFrame({"path": ["a,b > c"], "conversions": [1.0]})
    assert set(A.markov_attribution(comma, 2)["touchpoint"]) == {"a,b", "c"}      # results fine
    with pytest.raises(JourneylabError, match="ambiguous"):
        A.transition_counts(comma, 2)                                            # state names are not


def test_too_many_touchpoints_for_exact_shapley():
    p = pd.DataFrame({"path": [" > ".join(f"t{i}" for i in range(16))], "conversions": [1.0]})
    with pytest.raises(JourneylabError, match="more than 15 distinct"):
        A.shapley_attribution(p)


def test_bad_input_messages():
    with pytest.raises(JourneylabError, match="needs columns 'path'"):
        A.markov_attribution(pd.DataFrame({"p": ["a"], "conversions": [1]}))
    with pytest.raises(JourneylabError, match="negative"):
        A.heuristic_attribution(pd.DataFrame({"path": ["a"], "conversions": [-1.0]}), "first")
    with pytest.raises(JourneylabError, match="time_decay"):
        A.heuristic_attribution(TOY, "time_decay")


def test_costs_and_roas():
    att = pd.DataFrame({"touchpoint": ["a", "b"], "conversions": [4.0, 0.0], "value": [100.0, 0.0]})
    out = A.add_costs(att, pd.DataFrame({"touchpoint": ["a", "b"], "cost": [50.0, 10.0]})).set_index("touchpoint")
    assert out.loc["a", "cost_per_conversion"] == 12.5 and out.loc["a", "roas"] == 2.0
    assert np.isnan(out.loc["b", "cost_per_conversion"]) and out.loc["b", "roas"] == 0.0


def test_l1_to_truth():
    assert A.l1_to_truth({"a": 0.5, "b": 0.5}, {"a": 0.7, "c": 0.3}) == pytest.approx(0.2 + 0.5 + 0.3)


# ----------------------------------------------------------------------------- pipeline

def _engine_ready(params) -> bool:
    from journeylab.config import path
    return (path(params, "data/journeys/paths.parquet")).exists()


@pytest.mark.slow
@pytest.mark.xdist_group("default_data")
def test_ground_truth_on_default_simulation(request):
    try:
        default_project = request.getfixturevalue("default_project")
    except (ImportError, AttributeError) as exc:       # a pipeline stage has not landed yet
        pytest.skip(f"pipeline not complete: {exc}")
    if not _engine_ready(default_project):
        pytest.skip("engine paths table not built yet (engine issue)")
    metrics = A.run_stage(default_project)
    gt = metrics["ground_truth"]
    assert gt is not None and gt["best_data_driven"] is not None
    assert gt["best_data_driven_l1"] < gt["last_touch_l1"]
    from journeylab.config import path
    csv = pd.read_csv(path(default_project, default_project["attribution"]["output"]))
    assert {"model", "touchpoint", "conversions", "value", "share", "ci_low", "ci_high"} <= set(csv.columns)
    assert (csv["conversions"] >= 0).all()
    json.loads(path(default_project, default_project["attribution"]["metrics"]).read_text())
