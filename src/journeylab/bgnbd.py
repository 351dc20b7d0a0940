"""BG/NBD "buy till you die" model (Fader, Hardie & Lee 2005, Marketing Science 24(2):275-284).

While alive a customer buys as a Poisson process with rate lambda ~ Gamma(r, alpha); after each
purchase she drops out with probability p ~ Beta(a, b). Per customer the data are
``x`` = number of repeat purchases, ``t_x`` = time of the last purchase and ``T`` = age, both
measured from the first purchase (any time unit; the fitted ``alpha`` carries that unit).

Log-likelihood of one customer (paper eq. 6)::

    L = B(a, b+x)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+T)^(r+x))
      + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))

P(alive | x, t_x, T) = 1 / (1 + [x > 0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))   (eq. 11)

**The one-purchase trap.** Under BG/NBD a customer can only drop out right after a purchase, so
anybody with x = 0 (one purchase, no repeat) has P(alive) = 1 whatever her age T: P(alive) cannot
rank one-purchase customers. :meth:`BetaGeoFitter.conditional_probability_no_purchases_up_to_time`
is the documented fallback used as the churn baseline score: the probability of no purchase in
the next t time units, 1 - P(alive) + P(alive) ((alpha+T)/(alpha+T+t))^(r+x) (posterior of
lambda given alive is Gamma(r+x, alpha+T)), which does decrease with the purchase rate for x = 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, special

from .errors import InputError

ArrayLike = "np.ndarray | pd.Series | list[float]"


def _arrays(frequency, recency, T, weights=None) -> tuple[np.ndarray, ...]:
    x = np.asarray(frequency, dtype=float)
    tx = np.asarray(recency, dtype=float)
    T_ = np.asarray(T, dtype=float)
    if not (x.shape == tx.shape == T_.shape):
        raise InputError("BG/NBD: frequency, recency and T must have the same length.")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    return x, tx, T_, w


def _validate(x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> None:
    if x.size == 0:
        raise InputError("BG/NBD: no customers to fit (empty frequency/recency/T).")
    if not (np.isfinite(x).all() and np.isfinite(tx).all() and np.isfinite(T).all()):
        raise InputError("BG/NBD: frequency, recency and T must not contain missing or infinite values; "
                         "drop customers without a first purchase before fitting.")
    if (x < 0).any() or (np.abs(x - np.round(x)) > 1e-9).any():
        raise InputError("BG/NBD: frequency (repeat purchases) must be a non-negative integer.")
    if (tx < 0).any() or (tx > T + 1e-9).any():
        raise InputError("BG/NBD: recency (time of last purchase since the first) must satisfy 0 <= recency <= T.")


def log_likelihood_individual(params, x, tx, T) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood for params (r, alpha, a, b)."""
    r, alpha, a, b = params
    A1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    A2 = special.betaln(a, b + x) - special.betaln(a, b)
    A3 = -(r + x) * np.log(alpha + T)
    # second term only when x > 0: log[a/(b+x-1)] - (r+x) log(alpha+t_x)
    with np.errstate(divide="ignore", invalid="ignore"):
        A4 = np.where(x > 0, np.log(a) - np.log(np.where(x > 0, b + x - 1, 1.0)) - (r + x) * np.log(alpha + tx), -np.inf)
    return A1 + A2 + np.logaddexp(A3, A4)


class BetaGeoFitter:
    """BG/NBD fitter (maximum likelihood), lifelines style: ``fit`` returns self.

    Parameters
    ----------
    penalizer : float
        L2 penalty on the parameters added to the negative mean log-likelihood (0 = plain MLE).

    Fitted attributes: ``params_`` (pd.Series r, alpha, a, b), ``log_likelihood_`` (total),
    ``n_customers_``, ``converged_``.
    """

    def __init__(self, penalizer: float = 0.0):
        self.penalizer = penalizer

    def fit(self, frequency, recency, T, weights=None, initial_params=None) -> "BetaGeoFitter":
        """Fit on repeat purchases ``frequency`` (x), ``recency`` (t_x) and age ``T``; ``weights`` counts identical rows."""
        x, tx, T_, w = _arrays(frequency, recency, T, weights)
        _validate(x, tx, T_)
        if self.penalizer < 0:
            raise InputError("BG/NBD: penalizer must be >= 0.")
        scale = float(np.max(T_)) or 1.0  # time rescaled to [0, 1] for conditioning; alpha rescaled back
        xs, txs, Ts = x, tx / scale, T_ / scale
        wsum = w.sum()

        def nll(logp):
            p = np.exp(logp)
            ll = log_likelihood_individual(p, xs, txs, Ts)
            return -(w * ll).sum() / wsum + self.penalizer * (p ** 2).sum()

        if initial_params is None:
            start = np.log([1.0, 1.0, 1.0, 1.0])
        else:
            r0, al0, a0, b0 = initial_params
            start = np.log([r0, al0 / scale, a0, b0])
        best = None
        for method in ("L-BFGS-B", "Nelder-Mead"):
            res = optimize.minimize(nll, start, method=method,
                                    options={"maxiter": 5000} if method == "Nelder-Mead" else {"maxiter": 2000})
            if best is None or res.fun < best.fun:
                best = res
            start = best.x
        p = np.exp(best.x)
        self.params_ = pd.Series({"r": p[0], "alpha": p[1] * scale, "a": p[2], "b": p[3]})
        self.log_likelihood_ = float((w * log_likelihood_individual(self._p(), x, tx, T_)).sum())
        self.n_customers_ = float(wsum)
        self.converged_ = bool(best.success) or np.isfinite(best.fun)
        return self

    def _p(self) -> tuple[float, float, float, float]:
        if not hasattr(self, "params_"):
            raise InputError("BG/NBD: call fit() before asking for predictions.")
        return tuple(float(v) for v in self.params_[["r", "alpha", "a", "b"]])

    def conditional_probability_alive(self, frequency, recency, T) -> np.ndarray:
        """P(alive at T | x, t_x, T) (eq. 11). Equals 1 for x = 0: see the module note on the one-purchase trap."""
        r, alpha, a, b = self._p()
        x, tx, T_, _ = _arrays(frequency, recency, T)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.log(a) - np.log(np.where(x > 0, b + x - 1, 1.0)) + (r + x) * (np.log(alpha + T_) - np.log(alpha + tx))
        odds = np.where(x > 0, np.exp(log_ratio), 0.0)
        return 1.0 / (1.0 + odds)

    def conditional_expected_number_of_purchases_up_to_time(self, t, frequency, recency, T) -> np.ndarray:
        """E[Y(t) | x, t_x, T]: expected purchases in (T, T+t] (eq. 10), t in the fit's time unit."""
        r, alpha, a, b = self._p()
        x, tx, T_, _ = _arrays(frequency, recency, T)
        t = np.asarray(t, dtype=float)
        z = t / (alpha + T_ + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        first = (a + b + x - 1) / (a - 1) if a != 1 else np.inf
        num = first * (1.0 - ((alpha + T_) / (alpha + T_ + t)) ** (r + x) * hyp)
        return num * self.conditional_probability_alive(x, tx, T_)

    def conditional_probability_no_purchases_up_to_time(self, t, frequency, recency, T) -> np.ndarray:
        """P(no purchase in (T, T+t] | x, t_x, T) = 1 - P(alive) + P(alive) ((alpha+T)/(alpha+T+t))^(r+x).

        The churn baseline score: unlike P(alive) it ranks one-purchase customers (x = 0).
        """
        r, alpha, _, _ = self._p()
        x, tx, T_, _ = _arrays(frequency, recency, T)
        pa = self.conditional_probability_alive(x, tx, T_)
        return 1.0 - pa + pa * ((alpha + T_) / (alpha + T_ + np.asarray(t, dtype=float))) ** (r + x)

    def expected_number_of_purchases_up_to_time(self, t) -> np.ndarray:
        """E[X(t)] for a new customer (eq. 9): (a+b-1)/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b; a+b-1; t/(alpha+t))]."""
        r, alpha, a, b = self._p()
        t = np.asarray(t, dtype=float)
        return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * special.hyp2f1(r, b, a + b - 1, t / (alpha + t)))

    def __repr__(self) -> str:
        if hasattr(self, "params_"):
            p = ", ".join(f"{k}={v:.3f}" for k, v in self.params_.items())
            return f"<BetaGeoFitter: {p}, log_likelihood={self.log_likelihood_:.1f}>"
        return "<BetaGeoFitter: not fitted>"


def bgnbd_inputs(features: pd.DataFrame) -> pd.DataFrame:
    """Engine customer features -> BG/NBD inputs in days: x = frequency-1, t_x = days_since_first_purchase - recency_days,
    T = days_since_first_purchase. Rows without a purchase get NaN (not BG/NBD customers)."""
    freq = pd.to_numeric(features["frequency"], errors="coerce").astype(float)
    T = pd.to_numeric(features["days_since_first_purchase"], errors="coerce").astype(float)
    rec = pd.to_numeric(features["recency_days"], errors="coerce").astype(float)
    x = (freq - 1).where(freq >= 1)
    tx = (T - rec).clip(lower=0.0)
    tx = tx.where(x > 0, 0.0).where(x.notna())
    tx = np.minimum(tx, T)
    return pd.DataFrame({"x": x, "t_x": tx, "T": T.where(x.notna())}, index=features.index)
