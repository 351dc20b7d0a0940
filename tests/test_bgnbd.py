"""BG/NBD: reproduces Fader, Hardie & Lee (2005) on the CDNOW sample; closed forms checked by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from journeylab.bgnbd import BetaGeoFitter, bgnbd_inputs, log_likelihood_individual
from journeylab.errors import InputError

CDNOW = Path(__file__).parent / "data" / "cdnow_customers_summary.csv"


@pytest.fixture(scope="module")
def cdnow_fit():
    d = pd.read_csv(CDNOW)
    assert len(d) == 2357
    return BetaGeoFitter().fit(d["frequency"], d["recency"], d["T"]), d


def test_reproduces_published_cdnow_estimates(cdnow_fit):
    m, _ = cdnow_fit
    # FHL 2005 section 5: r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4 (weeks)
    for name, published in {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}.items():
        assert m.params_[name] == pytest.approx(published, rel=5e-3), name
        assert float(f"{m.params_[name]:.3g}") == float(f"{published:.3g}"), name
    assert m.log_likelihood_ == pytest.approx(-9582.4, abs=0.1)
    fresh = BetaGeoFitter()
    assert fresh.fit(pd.Series([1, 0]), [1.0, 0.0], [2.0, 3.0]) is fresh  # fit returns self


def test_published_conditional_expectation(cdnow_fit):
    m, _ = cdnow_fit
    # FHL 2005 section 5: customer with x=2, t_x=30.43, T=38.86 expects 1.226 purchases in the next 39 weeks
    got = m.conditional_expected_number_of_purchases_up_to_time(39, [2], [30.43], [38.86])
    assert got[0] == pytest.approx(1.226, abs=1e-3)


def test_probability_alive_closed_form_and_one_purchase_trap(cdnow_fit):
    m, _ = cdnow_fit
    r, alpha, a, b = m.params_[["r", "alpha", "a", "b"]]
    x, tx, T = 2, 5.0, 38.86
    hand = 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))
    assert m.conditional_probability_alive([x], [tx], [T])[0] == pytest.approx(hand)
    # the trap: x = 0 gives P(alive) = 1 whatever T ...
    assert np.all(m.conditional_probability_alive([0, 0], [0, 0], [1.0, 300.0]) == 1.0)
    # ... while the fallback score P(no purchase in t) ranks them: older one-purchase customers score higher
    p0 = m.conditional_probability_no_purchases_up_to_time(10, [0, 0], [0, 0], [1.0, 300.0])
    assert p0[0] < p0[1]
    assert p0[0] == pytest.approx(((alpha + 1) / (alpha + 11)) ** r)


def test_likelihood_single_customer_by_hand():
    r, alpha, a, b = 0.5, 2.0, 1.5, 3.0
    from math import gamma, log
    from scipy.special import beta as B
    x, tx, T = 1, 3.0, 5.0
    L = (B(a, b + x) / B(a, b) * gamma(r + x) * alpha ** r / (gamma(r) * (alpha + T) ** (r + x))
         + B(a + 1, b + x - 1) / B(a, b) * gamma(r + x) * alpha ** r / (gamma(r) * (alpha + tx) ** (r + x)))
    got = log_likelihood_individual((r, alpha, a, b), np.array([x]), np.array([tx]), np.array([T]))
    assert got[0] == pytest.approx(log(L))


def test_weights_equal_repeated_rows(cdnow_fit):
    _, d = cdnow_fit
    g = d.groupby(["frequency", "recency", "T"]).size().reset_index(name="n")
    m = BetaGeoFitter().fit(g["frequency"], g["recency"], g["T"], weights=g["n"])
    assert m.params_["r"] == pytest.approx(0.243, rel=5e-3)
    assert m.log_likelihood_ == pytest.approx(-9582.4, abs=0.1)


def test_bad_input_messages():
    with pytest.raises(InputError, match="recency"):
        BetaGeoFitter().fit([1], [5.0], [2.0])
    with pytest.raises(InputError, match="missing"):
        BetaGeoFitter().fit([1], [np.nan], [2.0])
    with pytest.raises(InputError, match="empty"):
        BetaGeoFitter().fit([], [], [])
    with pytest.raises(InputError, match="fit"):
        BetaGeoFitter().conditional_probability_alive([1], [1], [2])


def test_inputs_from_engine_features():
    f = pd.DataFrame({"frequency": [0, 1, 3], "recency_days": [np.nan, 10.0, 4.0],
                      "days_since_first_purchase": [np.nan, 10.0, 50.0]})
    got = bgnbd_inputs(f)
    assert np.isnan(got.loc[0, "x"]) and np.isnan(got.loc[0, "T"])
    assert got.loc[1].tolist() == [0.0, 0.0, 10.0]      # one purchase: x=0, t_x=0
    assert got.loc[2].tolist() == [2.0, 46.0, 50.0]     # x = 3-1, t_x = 50-4, T = 50
