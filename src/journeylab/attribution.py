"""Touchpoint attribution: heuristics, exact Markov removal effects, Shapley, hazard-based.

All models take a **paths table** (ChannelAttribution format), one row per distinct path:

* ``path``: touchpoints in time order joined by ``sep`` (default ``" > "``); blanks around
  names are stripped, empty tokens dropped.
* ``conversions``: conversions of journeys with this path (float; fractional counts are kept,
  never truncated as ChannelAttribution does).
* ``nulls`` (optional, default 0): journeys with this path that did not convert.
* ``value`` (optional, default 0): revenue of those conversions.

Every model returns a DataFrame with one row per touchpoint: ``touchpoint, conversions, value,
share`` (share = conversions / attributed conversions) and, with ``bootstrap=B``, 95% percentile
intervals ``ci_low, ci_high`` of the attributed conversions. Bootstrap = resampling journeys:
each row's conversions and nulls are redrawn as Poisson(conversions) and Poisson(nulls)
(the aggregate of Poisson(1) journey weights; mean and variance preserved for fractional counts
too), value scales with the redrawn conversions (value per conversion kept).

Markov states (the contract with engine.transitions, see docs/DESIGN.md "Markov states"):
tokens are split on ``sep`` without collapsing repeated touchpoints; order-k states are the
sliding windows of k consecutive touchpoints (one shorter state when the path has < k touches),
named by joining with ``","``; consecutive identical *states* are collapsed; every path row adds
``(start) -> s1 -> ... -> sm`` with weight conversions + nulls, ``sm -> (conversion)`` with
weight conversions and ``sm -> (null)`` with weight nulls. ``(conversion)``/``(null)`` absorb.
Removal of channel c sends every state containing c to ``(null)``:
RE_c = 1 - P(conv | c removed) / P(conv) = P(visit c | conversion). Attributed conversions
= RE_c / sum(RE) * total conversions (ChannelAttribution's definition), solved exactly (not by
simulation) on the transient block: (I - Q_KK) x = r_K for the kept states K of the full chain and
of every removal. Chains of <= DENSE_MAX_STATES states: all C + 1 systems (and all bootstrap
replicates) in one batched dense LU. Larger chains: the expected visits y = (I - Q_KK^T)^-1 e_start
of every system and replicate by one Jacobi iteration y <- D_K (e_start + Q^T y) (a block-diagonal
sparse x dense product per step), x_start = y . r, stopped only when an a posteriori bound proves
|error| <= ITER_RTOL (1e-12) * P(conv) (and * E[value]): the error is x_K . residual with x_K a
probability <= 1 (a value <= the largest mean value per conversion of a state), so
|error| <= ||residual||_1 (* that value). Systems without such a proof within ITER_MAX steps (nearly
closed loops) go to a sparse LU of I - Q_KK, the reference solver. Revenue: a conversion from last state s is worth the mean value per
conversion of paths ending in s; value removal effects are computed on that expected value at
absorption. Bootstrap Poisson draws of rates shared by many rows (integer counts) are exact
inversions of the Poisson CDF started from a guide table; replicates are solved in blocks.

Shapley (``shapley_attribution``): for each converting coalition S (its set of distinct
touchpoints) the players are S and the characteristic function is v(T) = max over observed
subsets U of T of the conversion rate p(U) = conversions(U) / journeys(U), v(empty) = 0.
Treatment of unseen sets: a set never observed is worth its best observed subset (adding a
touchpoint is never assumed to hurt). v is monotone, so Shapley values are >= 0; each
coalition's conversions are split in proportion to its Shapley values (efficient: credits sum
to conversions). Exact (2^n subsets) up to ``max_exact`` = 15 distinct touchpoints per journey.
Relation to Zhao et al. (2018), "Shapley value methods for attribution modeling in online
advertising": their simplified Shapley is one global game v(T) = sum over U subset of T of conversions(U) (counts,
not rates, non-converting journeys ignored): a sum of unanimity games, so its Shapley value is
equal credit per distinct touchpoint of each converting journey, i.e. ``linear_unique``
(``characteristic="zhao"`` gives it; tests check it against shapley_values on the global game).
Ours differs by using conversion *rates* of sets, so a touchpoint whose presence raises the
conversion rate earns more than one that merely co-occurs.

Hazard (``hazard_attribution``): with the time-varying proportional hazards fit
h(t) = h0(t) exp(sum_tp beta_tp N_tp(t)), a converting journey with touch counts n_tp has
excess hazard share 1 - exp(-eta+), eta+ = sum_tp max(beta_tp, 0) n_tp; that share of its
conversions is credited to touchpoints in proportion to max(beta_tp, 0) n_tp (the rest is
baseline, reported as unattributed). Touchpoints with beta <= 0 get no credit.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from .errors import JourneylabError

DEFAULT_SEP = " > "
START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"
STATE_JOIN = ","
HEURISTIC_MODELS = ("first", "last", "last_non_direct", "linear", "linear_unique", "position_based", "time_decay")
DATA_DRIVEN = ("markov", "shapley", "hazard")
MAX_EXACT_SHAPLEY = 15


class AttributionError(JourneylabError):
    """Attribution input cannot be used as it is (columns, negative counts, too many touchpoints...)."""


# ----------------------------------------------------------------------------- paths parsing

def _prepare(paths: pd.DataFrame, conversions: str = "conversions", nulls: str | None = "nulls",
             value: str | None = "value") -> pd.DataFrame:
    """Validate a paths table and return columns path, conversions, nulls, value (float64)."""
    if not isinstance(paths, pd.DataFrame):
        raise AttributionError("attribution: paths must be a pandas DataFrame with columns path, conversions "
                               "[, nulls, value].")
    if "path" not in paths.columns or conversions not in paths.columns:
        raise AttributionError(f"attribution: the paths table needs columns 'path' and '{conversions}' "
                               f"(found {list(paths.columns)}). Rename your columns or pass conversions=...")
    out = pd.DataFrame({"path": paths["path"].astype("string").fillna("").astype(object)})
    for name, col in (("conversions", conversions), ("nulls", nulls), ("value", value)):
        if col is not None and col in paths.columns:
            vals = pd.to_numeric(paths[col], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(vals) | (vals < 0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise AttributionError(f"attribution: column '{col}' has {int(bad.sum())} missing, non-numeric or "
                                       f"negative value(s) (first at row {i}: {paths[col].iloc[i]!r}). Counts and "
                                       f"values must be finite and >= 0; fix or drop those rows.")
            out[name] = vals
        else:
            out[name] = 0.0
    return out.reset_index(drop=True)


@dataclass
class _Tokens:
    """Paths as integer codes: tokens[offsets[i]:offsets[i+1]] are path i's touchpoint codes."""
    codes: np.ndarray          # int64, flat
    offsets: np.ndarray        # int64, len n_paths + 1
    names: np.ndarray          # touchpoint name per code
    conversions: np.ndarray
    nulls: np.ndarray
    value: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def path_index(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.lengths)), self.lengths)


def _tokenise(paths: pd.DataFrame, sep: str = DEFAULT_SEP, **cols) -> _Tokens:
    df = _prepare(paths, **cols)
    if not sep:
        raise AttributionError("attribution: the path separator is empty; set sep (default ' > ').")
    arr = pa.array(df["path"].to_numpy(dtype=object), type=pa.large_string())
    lists = pc.split_pattern(arr, pattern=sep)
    lengths_raw = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    owner = None
    if not keep.all():
        owner = np.repeat(np.arange(len(df)), lengths_raw)[keep]
        flat = flat.filter(pa.array(keep))
    enc = pc.dictionary_encode(flat) if len(flat) else None
    if enc is None or len(enc) == 0:
        codes, names = np.zeros(0, np.int64), np.array([], dtype=object)
    else:
        raw_codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        raw_names = np.asarray(enc.dictionary.to_pylist(), dtype=object)
        order = np.argsort(raw_names, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        codes, names = rank[raw_codes], raw_names[order]
    lengths = lengths_raw if keep.all() else np.bincount(owner, minlength=len(df))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return _Tokens(codes.astype(np.int64, copy=False), offsets, np.asarray(names, dtype=object),
                   df["conversions"].to_numpy(), df["nulls"].to_numpy(), df["value"].to_numpy())


def _poisson(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return rng.poisson(x).astype(float)


class _PoissonSampler:
    """Independent Poisson(lam_i) draws for fixed rates lam (n,), ``b`` replicates at a time -> (n, b).

    Rates shared by many rows (integer counts repeat: a paths table of 10^6 rows has a few dozen
    distinct counts) are drawn by inversion, k = min{k: F(k) > u} with u ~ U[0, 1) and F the Poisson
    CDF in double precision, started from a guide table (2^10 cells of u per rate) so that only the
    ~1% of draws that fall in a cell holding a CDF step need a comparison or two. The mass beyond
    lam + 12 sqrt(lam) + 24 (< 1e-20) is folded into that last value. Other rates: rng.poisson.
    """
    BITS = 10

    def __init__(self, lam: np.ndarray, min_rows: int = 64, max_rate: float = 256.0, max_tables: int = 512):
        from scipy.special import gammaln
        lam = np.asarray(lam, dtype=float)
        self.n = len(lam)
        pos = np.flatnonzero(lam > 0)
        uniq, inv, cnt = np.unique(lam[pos], return_inverse=True, return_counts=True)
        use = (cnt >= min_rows) & (uniq <= max_rate)
        if use.sum() > max_tables:
            use &= cnt >= np.sort(cnt[use])[-max_tables]
        tab = np.full(len(uniq), -1, np.int64)
        tab[use] = np.arange(int(use.sum()))
        g = tab[inv.ravel()]
        self.rows_t, g = pos[g >= 0], g[g >= 0]
        self.rows_o = pos[tab[inv.ravel()] < 0]
        self.lam_o = lam[self.rows_o]
        rates = uniq[use]
        L = int(math.ceil(rates.max() + 12 * math.sqrt(rates.max()) + 24)) if len(rates) else 1
        k = np.arange(L)
        with np.errstate(divide="ignore"):
            logp = k[None, :] * np.log(rates)[:, None] - rates[:, None] - gammaln(k + 1)[None, :]
        F = np.cumsum(np.exp(logp), axis=1)
        F[:, -1] = np.inf                                            # sentinel: the loop below stops
        cells = np.arange(1 << self.BITS) / (1 << self.BITS)
        G = np.stack([np.searchsorted(F[i], cells, side="right") for i in range(len(rates))]) if len(rates) \
            else np.zeros((0, 1 << self.BITS), np.int64)
        scale = float(1 << self.BITS)                               # u scaled by 2^BITS (exact): cell = floor
        self.G = (G + (np.arange(len(rates)) * L)[:, None]).ravel().astype(np.intp)   # -> flat index into F
        self.F = (F * scale).ravel()
        self.value = (np.arange(len(rates) * L) % L).astype(float)  # flat index -> k
        self.g_guide = (g << self.BITS).astype(np.intp)
        self._bufs: dict = {}

    def draw(self, rng: np.random.Generator, b: int) -> np.ndarray:
        """(n, b) float draws; the array is reused (overwritten) by the next draw with the same b."""
        nt = len(self.rows_t)
        if b not in self._bufs:
            self._bufs = {b: (np.zeros((self.n, b)), np.empty((nt, b)), np.empty((nt, b), np.intp),
                              np.empty((nt, b), np.intp), np.empty((nt, b)))}
        out, u, cell, k, th = self._bufs[b]
        if nt:
            rng.random(out=u)
            u *= float(1 << self.BITS)
            np.copyto(cell, u, casting="unsafe")                     # floor (u >= 0)
            cell += self.g_guide[:, None]
            np.take(self.G, cell, out=k, mode="clip")             # smallest k with F(k) > cell start
            np.take(self.F, k, out=th, mode="clip")
            kf, uf = k.reshape(-1), u.reshape(-1)
            sel = np.flatnonzero(np.greater_equal(u, th).reshape(-1))
            while sel.size:                                          # ~1%: the cell holds a CDF step
                kf[sel] += 1
                sel = sel[uf[sel] >= self.F[kf[sel]]]
            np.take(self.value, k, out=th, mode="clip")
            out[self.rows_t] = th
        if len(self.rows_o):
            out[self.rows_o] = rng.poisson(self.lam_o[:, None], (len(self.rows_o), b))
        return out


def _ci(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval over axis 0 of a (B, n) array."""
    return np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)


def _result(names: Sequence[str], conv: np.ndarray, value: np.ndarray, draws: np.ndarray | None = None,
            **extra) -> pd.DataFrame:
    conv = np.clip(np.asarray(conv, dtype=float), 0, None)
    total = conv.sum()
    df = pd.DataFrame({"touchpoint": list(names), **{k: np.asarray(v) for k, v in extra.items()},
                       "conversions": conv, "value": np.asarray(value, dtype=float),
                       "share": conv / total if total > 0 else np.full(len(conv), np.nan)})
    if draws is not None:
        lo, hi = _ci(draws)
        df["ci_low"], df["ci_high"] = lo, hi
    return df.sort_values("touchpoint", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- heuristics

def _heuristic_weights(tok: _Tokens, model: str, direct: Iterable[str], position_weights: Sequence[float]) -> np.ndarray:
    """Credit weight of every token (flat, aligned with tok.codes); each non-empty path's weights sum to 1."""
    n = tok.lengths
    pos = np.arange(len(tok.codes)) - np.repeat(tok.offsets[:-1], n)
    npath = np.repeat(n, n).astype(float)
    if model == "first":
        return (pos == 0).astype(float)
    if model == "last":
        return (pos == npath - 1).astype(float)
    if model == "linear":
        return 1.0 / npath
    if model == "linear_unique":
        pidx = tok.path_index
        key = pidx * (len(tok.names) + 1) + tok.codes
        _, first_idx = np.unique(key, return_index=True)
        first = np.zeros(len(key), bool)
        first[first_idx] = True
        n_unique = np.bincount(pidx[first], minlength=len(n))
        return first / np.repeat(np.maximum(n_unique, 1), n)
    if model == "last_non_direct":
        direct_codes = np.flatnonzero(np.isin(tok.names, list(direct)))
        nondirect = ~np.isin(tok.codes, direct_codes)
        pidx = tok.path_index
        # last non-direct position per path (-1 if none): max over positions of nondirect tokens
        last_nd = np.full(len(n), -1)
        np.maximum.at(last_nd, pidx[nondirect], pos[nondirect])
        target = np.where(last_nd >= 0, last_nd, n - 1)   # all-direct path: its last (direct) touch
        return (pos == np.repeat(target, n)).astype(float)
    if model == "position_based":
        w_first, w_mid, w_last = (float(x) for x in position_weights)
        if min(w_first, w_mid, w_last) < 0 or not math.isclose(w_first + w_mid + w_last, 1.0, abs_tol=1e-9):
            raise AttributionError(f"attribution: position_based weights {list(position_weights)} must be >= 0 "
                                   f"and sum to 1 (e.g. [0.4, 0.2, 0.4]).")
        w = np.zeros(len(pos))
        one, two, many = npath == 1, npath == 2, npath >= 3
        w[one] = 1.0
        ends = w_first + w_last
        w[two & (pos == 0)] = w_first / ends if ends > 0 else 0.5
        w[two & (pos == 1)] = w_last / ends if ends > 0 else 0.5
        w[many & (pos == 0)] = w_first
        w[many & (pos == npath - 1)] = w_last
        mid = many & (pos > 0) & (pos < npath - 1)
        w[mid] = w_mid / (npath[mid] - 2)
        return w
    if model == "time_decay":
        raise AttributionError("attribution: time_decay needs touch timestamps, which a paths table does not "
                               "have. Use the engine's heuristics table (data/journeys/heuristics.parquet, "
                               "model == 'time_decay') or read_engine_heuristics().")
    raise AttributionError(f"attribution: unknown heuristic model '{model}'. Choose one of {HEURISTIC_MODELS}.")


def heuristic_attribution(paths: pd.DataFrame, model: str = "last", sep: str = DEFAULT_SEP, *,
                          direct_touchpoints: Iterable[str] = ("direct",),
                          position_weights: Sequence[float] = (0.4, 0.2, 0.4),
                          bootstrap: int = 0, seed: int = 0, **cols) -> pd.DataFrame:
    """Rule-based credit: each path's conversions (and value) split over its touches by ``model``.

    first / last: all to the first / last touch; last_non_direct: last touch not in
    ``direct_touchpoints`` (a path of only direct touches keeps its last touch); linear:
    1/n per occurrence (n touches, ChannelAttribution's ``linear_touch``); linear_unique: 1/d per
    distinct touchpoint; position_based: first/middle/last weights (n = 2: first and last in ratio
    w_first : w_last; n = 1: all to it). Paths without touches are not attributed.
    """
    tok = _tokenise(paths, sep, **cols)
    w = _heuristic_weights(tok, model, direct_touchpoints, position_weights)
    pidx = tok.path_index
    C = len(tok.names)
    A = sp.csr_matrix((w, (tok.codes, pidx)), shape=(C, len(tok.lengths)))   # touchpoint x path
    conv = A @ tok.conversions
    value = A @ tok.value
    draws = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        W = np.stack([_poisson(rng, tok.conversions) for _ in range(bootstrap)], axis=1)
        draws = np.asarray((A @ W).T)
    return _result(tok.names, conv, value, draws)


# ----------------------------------------------------------------------------- Markov

@dataclass
class _Chain:
    """Order-k state structure of a paths table, reusable across count re-weightings (bootstrap)."""
    order: int
    names: np.ndarray               # touchpoint names
    state_tokens: np.ndarray        # (S, k) touchpoint codes of each state, -1 padded; row 0 = (start)
    incidence: sp.csc_matrix        # (pairs used) x paths: internal transitions per path (counts; CSC so that
                                    # incidence @ (paths x b) weights streams the weights once)
    pair_from: np.ndarray           # pairs sorted by (from, to), unique
    pair_to: np.ndarray
    last_state: np.ndarray          # per path, -1 for empty path -> (start)
    tok: _Tokens
    last_matrix: sp.csc_matrix = None   # S x paths: 1 at (last state, path) -> per-state sums of path weights
    from_matrix: sp.csr_matrix = None   # S x pairs: 1 at (pair_from, pair) -> out-flow of internal pairs

    @property
    def n_states(self) -> int:
        return len(self.state_tokens)

    def state_names(self) -> list[str]:
        if self.order > 1 and any(STATE_JOIN in str(n) for n in self.names):
            raise AttributionError(f"attribution: touchpoint names contain '{STATE_JOIN}', which joins the "
                                   f"touchpoints of an order-{self.order} state; the state names would be "
                                   f"ambiguous. Rename those touchpoints.")
        out = [START]
        for row in self.state_tokens[1:]:
            out.append(STATE_JOIN.join(str(self.names[c]) for c in row if c >= 0))
        return out


def _build_chain(tok: _Tokens, order: int) -> _Chain:
    if int(order) != order or order < 1:
        raise AttributionError(f"attribution: Markov order must be an integer >= 1, got {order!r}.")
    order = int(order)
    n = tok.lengths
    keep_path = (tok.conversions + tok.nulls) > 0
    C = len(tok.names)
    base = C + 1
    if order * math.log2(base) >= 62:
        raise AttributionError(f"attribution: order {order} with {C} touchpoints is too large to encode "
                               f"states; use a lower order.")
    # windows: for path of length L, starts 0..max(L-k,0); window length min(k, L)
    n_win = np.where(n >= order, n - order + 1, np.minimum(n, 1))
    n_win = np.where(keep_path, n_win, 0)
    W = int(n_win.sum())
    win_path = np.repeat(np.arange(len(n), dtype=np.int64), n_win)
    win_start = np.arange(W, dtype=np.int64) - np.repeat(np.cumsum(n_win) - n_win - tok.offsets[:-1], n_win)
    # state key: touchpoint codes + 1 (0 = none, for paths shorter than the order) in base C + 1
    key = tok.codes[win_start] + 1 if W else np.zeros(0, np.int64)
    short = order > 1 and bool(((n < order) & keep_path).any())
    win_len = np.minimum(order, n[win_path]) if short else None
    for j in range(1, order):
        if short:
            cj1 = np.where(j < win_len, tok.codes[np.minimum(win_start + j, len(tok.codes) - 1)] + 1, 0)
        else:
            cj1 = tok.codes[win_start + j] + 1
        key = key * base + cj1
    # collapse consecutive identical states within a path
    if W > 1:
        same_prev = np.zeros(W, bool)
        same_prev[1:] = (key[1:] == key[:-1]) & (win_path[1:] == win_path[:-1])
        if same_prev.any():
            key, win_path = key[~same_prev], win_path[~same_prev]
    ukey, sid = _unique_inverse(key, base ** order)
    sid = sid + 1                                       # 0 is (start)
    digits = (ukey[:, None] // (base ** np.arange(order - 1, -1, -1, dtype=np.int64))[None, :]) % base - 1
    state_tokens = np.vstack([np.full((1, order), -1, np.int64), digits.astype(np.int64)])
    S = len(state_tokens)
    # previous state in path (start for the first window)
    is_first = np.ones(len(sid), bool)
    if len(sid) > 1:
        is_first[1:] = win_path[1:] != win_path[:-1]
    prev = np.empty_like(sid)
    prev[0:] = 0
    if len(sid) > 1:
        prev[1:] = sid[:-1]
    prev[is_first] = 0
    pair = prev * S + sid
    upair, pinv = _unique_inverse(pair, S * S)
    # windows are in path order, so the (pair, path) entries are already column-sorted: CSC directly
    # (a pair repeated within a path stays as duplicate entries; products sum them)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(win_path, minlength=len(n)))]).astype(np.int64)
    incidence = sp.csc_matrix((np.ones(len(pair)), pinv, indptr), shape=(len(upair), len(n)))
    last_state = np.full(len(n), -1, dtype=np.int64)
    is_last = np.ones(len(sid), bool)
    if len(sid) > 1:
        is_last[:-1] = win_path[:-1] != win_path[1:]
    last_state[win_path[is_last]] = sid[is_last]
    last_state[(n == 0) & keep_path] = 0
    has = last_state >= 0
    lptr = np.concatenate([[0], np.cumsum(has)]).astype(np.int64)
    last_matrix = sp.csc_matrix((np.ones(int(has.sum())), last_state[has], lptr), shape=(S, len(n)))
    pair_from, pair_to = upair // S, upair % S
    from_matrix = sp.csr_matrix((np.ones(len(upair)), (pair_from, np.arange(len(upair)))), shape=(S, len(upair)))
    return _Chain(order, tok.names, state_tokens, incidence, pair_from, pair_to, last_state, tok,
                  last_matrix, from_matrix)


def _unique_inverse(key: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(key, return_inverse=True) for keys in [0, space): a presence table when that is small."""
    if space <= max(4 * len(key), 1 << 16) and space <= 1 << 26:
        present = np.zeros(space, bool)
        present[key] = True
        ukey = np.flatnonzero(present)
        lookup = np.zeros(space, np.int64)
        lookup[ukey] = np.arange(len(ukey))
        return ukey, lookup[key]
    ukey, inv = np.unique(key, return_inverse=True)
    return ukey, inv.astype(np.int64)


def _chain_counts(ch: _Chain, conv: np.ndarray, nulls: np.ndarray, value: np.ndarray):
    """Transition counts for given per-path weights: (internal sparse SxS, to_conv, to_null, value_to_conv)."""
    S = ch.n_states
    w = ch.incidence @ (conv + nulls)
    internal = sp.csr_matrix((w, (ch.pair_from, ch.pair_to)), shape=(S, S))
    to_conv, to_null, val = (ch.last_matrix @ x for x in (conv, nulls, value))
    return internal, to_conv, to_null, val


def _chain_system(ch: _Chain, conv: np.ndarray, nulls: np.ndarray, value: np.ndarray | None = None, *,
                  value_by_state: np.ndarray | None = None):
    """Absorbing-chain systems of b re-weightings at once (weights: (n_paths, b) arrays).

    Returns qdata (b, P): transition probability of every stored pair (pair_from -> pair_to), and
    r (b, S, 2): one-step P(-> conversion) and expected value at absorption of each state
    (a conversion from s is worth the mean value per conversion of paths ending in s).
    ``value_by_state`` (S, b): the value sums by last state, instead of ``value``."""
    if conv.ndim == 1:
        conv, nulls = conv[:, None], nulls[:, None]
        value = None if value is None else value[:, None]
    w = ch.incidence @ (conv + nulls)                                    # (P, b)
    to_conv, to_null = ch.last_matrix @ conv, ch.last_matrix @ nulls     # (S, b)
    val = ch.last_matrix @ value if value_by_state is None else value_by_state
    out = ch.from_matrix @ w + to_conv + to_null
    safe = np.where(out > 0, out, 1.0)
    qdata = (w / safe[ch.pair_from]).T                                   # row-normalised, no 1/out overflow
    r = np.stack([to_conv / safe, np.divide(val, safe, out=np.zeros_like(val), where=to_conv > 0)], axis=-1)
    return np.ascontiguousarray(qdata), np.ascontiguousarray(r.transpose(1, 0, 2))


_SINGULAR = ("attribution: the Markov transition matrix is numerically singular (path counts differ by more "
             "than ~1e15 in scale, so some states never reach (conversion)/(null) in floating point). Rescale "
             "or round the conversions/nulls columns.")
DENSE_MAX_STATES = 64          # chains up to this size: batched dense LU of every removal system
ITER_RTOL = 1e-12              # guaranteed bound on |error| / P(conv) (and / E[value]) of the iterative solver
ITER_MAX = 3000


def _keep_masks(contains: np.ndarray) -> np.ndarray:
    """(S, C+1) bool: column 0 keeps every state (the full chain), column c+1 drops the states containing c."""
    return np.column_stack([np.ones(len(contains), bool), ~contains])


def _absorb_lu(ch: _Chain, qdata: np.ndarray, r: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Reference solver: one sparse LU of the kept principal block of I - Q per (replicate, mask).

    qdata (b, P), r (b, S, 2), keep (S, m) -> x (b, m, 2): P(conv) and E[value] from (start)."""
    S = ch.n_states
    b, m = len(qdata), keep.shape[1]
    x = np.zeros((b, m, 2))
    eye = sp.identity(S, format="csr")
    for i in range(b):
        Q = sp.csr_matrix((qdata[i], (ch.pair_from, ch.pair_to)), shape=(S, S))
        A = (eye - Q).tocsc()
        alive = (np.asarray(Q.sum(axis=1)).ravel() + r[i, :, 0] > 0) | (np.arange(S) == 0)
        base = None
        for j in range(m):
            k = keep[:, j] & alive
            if base is not None and k.sum() == alive.sum():
                x[i, j] = base
                continue
            idx = np.flatnonzero(k)
            sub = A[idx][:, idx].tocsc()
            # I - Q is row diagonally dominant: no pivoting needed
            try:
                sol = splu(sub, diag_pivot_thresh=0.0, options=dict(SymmetricMode=True)).solve(r[i, idx])
            except RuntimeError:
                try:
                    sol = splu(sub).solve(r[i, idx])        # partial pivoting
                except RuntimeError:
                    raise AttributionError(_SINGULAR) from None
            x[i, j] = sol[0]                              # (start) is idx 0 (always kept)
            if j == 0:
                base = x[i, 0].copy()
    return x


def _absorb_dense(ch: _Chain, qdata: np.ndarray, r: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Small chains: every (replicate, mask) system I - Q_KK as one batched dense LU (LAPACK gesv).

    A dropped state keeps an identity row with right-hand side 0 (it is sent to (null))."""
    S = ch.n_states
    b, m = len(qdata), keep.shape[1]
    K = keep.T.astype(float)                                   # (m, S)
    KK = K[:, :, None] * K[:, None, :]                         # (m, S, S)
    x = np.empty((b, m, 2))
    step = max(1, int(2 ** 23 // max(m * S * S, 1)))          # <= 64 MB of matrices per batch
    diag = np.arange(S)
    for s in range(0, b, step):
        q = qdata[s:s + step]
        Qd = np.zeros((len(q), S, S))
        Qd[:, ch.pair_from, ch.pair_to] = q
        M = Qd[:, None] * -KK[None]                            # (bc, m, S, S)
        M[..., diag, diag] += 1.0
        rhs = r[s:s + step, None] * K[None, :, :, None]        # (bc, m, S, 2)
        try:
            sol = np.linalg.solve(M, rhs)
        except np.linalg.LinAlgError:
            raise AttributionError(_SINGULAR) from None
        x[s:s + step] = sol[:, :, 0, :]
    if not np.isfinite(x).all():
        raise AttributionError(_SINGULAR)
    return x


def _absorb_iterative(ch: _Chain, qdata: np.ndarray, r: np.ndarray, keep: np.ndarray,
                      rtol: float = ITER_RTOL, max_iter: int = ITER_MAX):
    """Expected visits by Jacobi iteration, all (replicate, mask) systems at once, with a proof of accuracy.

    For a mask D (kept states K) and B = D Q D, y = (I - B^T)^-1 e_start are the expected visits to
    each kept state from (start), and x_start = y . r (conversion and value columns of r alike, so
    one column per mask). Iteration y <- D (e_start + Q^T y) from 0 increases monotonically to y;
    all replicates of a batch form one block-diagonal sparse Q^T and all masks the columns of one
    dense block, so a step is one sparse x dense product. Error bound: with the residual
    rho = D (e_start + Q^T y~) - y~, the error of x_start is x_K . rho, where x_K (the masked solution
    from every state) is a probability <= 1 for conversions and <= vmax = the largest mean value per
    conversion of any state for value; so |error| <= ||rho||_1 (* vmax). A (replicate, mask) is done
    when that is <= rtol * the full chain's P(conv) (E[value]); returns x (b, m, 2) and ok (b, m)
    (not ok: no proof within max_iter, e.g. a nearly closed loop; use the LU solver)."""
    S, P = ch.n_states, len(ch.pair_from)
    b, m = len(qdata), keep.shape[1]
    perm = np.lexsort((ch.pair_from, ch.pair_to))                      # Q^T in CSR: rows = pair_to
    indptr1 = np.concatenate([[0], np.cumsum(np.bincount(ch.pair_to, minlength=S))])
    idx1 = ch.pair_from[perm]
    Kf = keep.astype(float)
    x = np.zeros((b, m, 2))
    ok = np.zeros((b, m), bool)
    step = max(1, int(2 ** 20 // (S * m)))
    check = 4
    for s in range(0, b, step):
        bc = min(step, b - s)
        off = np.arange(bc)
        indptr = np.concatenate([(indptr1[None, :-1] + P * off[:, None]).ravel(), [bc * P]])
        indices = (idx1[None, :] + S * off[:, None]).ravel()
        Qt = sp.csr_matrix((qdata[s:s + bc][:, perm].ravel(), indices, indptr), shape=(bc * S, bc * S))
        Kb = np.tile(Kf, (bc, 1))
        E = np.zeros((bc * S, m))
        E[off * S] = 1.0                                                   # (start) is always kept
        rc, rv = r[s:s + bc, :, 0], r[s:s + bc, :, 1]                      # (bc, S)
        with np.errstate(divide="ignore", invalid="ignore"):
            vmax = np.where(rc > 0, rv / np.where(rc > 0, rc, 1.0), 0.0).max(axis=1)
        cmax = (rc > 0).any(axis=1).astype(float)                          # 0: nothing converts, x = 0
        X = np.zeros((bc * S, m))
        done = np.zeros((bc, m), bool)
        hist = []
        for it in range(1, max_iter + 1):
            Y = Qt @ X
            Y *= Kb
            Y += E
            if it % check == 0 or it == max_iter:
                Y3 = Y.reshape(bc, S, m)
                rho = np.abs(Y3 - X.reshape(bc, S, m)).sum(axis=1)            # (bc, m)
                base_c = np.einsum("bs,bs->b", Y3[:, :, 0], rc)             # full chain, lower bounds
                base_v = np.einsum("bs,bs->b", Y3[:, :, 0], rv)
                err_c, err_v = rho * cmax[:, None], rho * vmax[:, None]
                good = (err_c <= rtol * base_c[:, None]) & (err_v <= rtol * base_v[:, None])
                done = good
                if done.all():
                    X = Y
                    break
                # give up early if the observed contraction cannot reach the tolerance within max_iter
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = float(np.where(good, 0.0, np.maximum(err_c / (rtol * base_c[:, None]),
                                                                 err_v / (rtol * base_v[:, None]))).max())
                hist.append(ratio)
                if len(hist) > 4 and np.isfinite(ratio) and np.isfinite(hist[-5]) and hist[-5] > 0:
                    rate = (ratio / hist[-5]) ** (1.0 / (4 * check))
                    if rate >= 1.0 or (rate > 0 and it + math.log(ratio) / -math.log(rate) > max_iter):
                        X = Y
                        break
            X = Y
        X3 = X.reshape(bc, S, m)
        x[s:s + bc, :, 0] = np.einsum("bsm,bs->bm", X3, rc)
        x[s:s + bc, :, 1] = np.einsum("bsm,bs->bm", X3, rv)
        ok[s:s + bc] = done
    return x, ok


def _absorb(ch: _Chain, qdata: np.ndarray, r: np.ndarray, keep: np.ndarray, method: str = "auto") -> np.ndarray:
    """x (b, m, 2) = (P(conversion), E[value]) from (start) for every replicate and removal mask.

    method: auto (dense for <= DENSE_MAX_STATES states, else iterative), dense, iterative (with LU
    for any system it cannot prove accurate), lu (one sparse LU per system; the reference)."""
    if method == "auto":
        method = "dense" if ch.n_states <= DENSE_MAX_STATES else "iterative"
    if method == "dense":
        return _absorb_dense(ch, qdata, r, keep)
    if method == "lu":
        return _absorb_lu(ch, qdata, r, keep)
    if method != "iterative":
        raise AttributionError(f"attribution: unknown Markov solver '{method}' (auto | dense | iterative | lu).")
    x, ok = _absorb_iterative(ch, qdata, r, keep)
    for i in np.flatnonzero(~ok.all(axis=1)):
        cols = np.flatnonzero(~ok[i])
        x[i, cols] = _absorb_lu(ch, qdata[i:i + 1], r[i:i + 1], keep[:, cols])[0]
    return x


def _solve_chain(ch: _Chain, conv: np.ndarray, nulls: np.ndarray, value: np.ndarray, contains: np.ndarray,
                 method: str = "auto"):
    """Exact P(conv), E[value] from (start), and the same with each channel removed.

    Returns p_conv, e_value, p_removed (C,), v_removed (C,)."""
    qdata, r = _chain_system(ch, conv, nulls, value)
    x = _absorb(ch, qdata, r, _keep_masks(contains), method)[0]
    return x[0, 0], x[0, 1], x[1:, 0], x[1:, 1]


def _contains(ch: _Chain) -> np.ndarray:
    C = len(ch.names)
    m = np.zeros((ch.n_states, C), bool)
    for j in range(ch.order):
        col = ch.state_tokens[:, j]
        ok = col >= 0
        m[np.flatnonzero(ok), col[ok]] = True
    return m


@dataclass
class MarkovResult:
    """Exact absorbing-chain Markov attribution of one order."""
    order: int
    p_conversion: float                 # P(absorb in (conversion) from (start))
    expected_value: float               # E[value at absorption] from (start)
    attribution: pd.DataFrame           # touchpoint, removal_effect, removal_effect_value, conversions, value, share[, ci]
    n_states: int
    transition_matrix: pd.DataFrame = field(repr=False, default=None)


def _markov_credit(p, ev, p_rem, v_rem, total_conv, total_value):
    re_c = np.clip(1.0 - p_rem / p, 0, 1) if p > 0 else np.zeros_like(p_rem)
    re_v = np.clip(1.0 - v_rem / ev, 0, 1) if ev > 0 else np.zeros_like(v_rem)
    conv = re_c / re_c.sum() * total_conv if re_c.sum() > 0 else np.zeros_like(re_c)
    value = re_v / re_v.sum() * total_value if re_v.sum() > 0 else np.zeros_like(re_v)
    return re_c, re_v, conv, value


def markov_model(paths: pd.DataFrame, order: int = 1, sep: str = DEFAULT_SEP, *, bootstrap: int = 0,
                 seed: int = 0, transition_matrix: bool = False, **cols) -> MarkovResult:
    """Exact order-k Markov attribution (semantics in the module docstring); see markov_attribution."""
    tok = _tokenise(paths, sep, **cols)
    return _markov_from_tokens(tok, order, bootstrap=bootstrap, seed=seed, with_matrix=transition_matrix)


def _markov_from_tokens(tok: _Tokens, order: int, bootstrap: int = 0, seed: int = 0,
                        with_matrix: bool = False, method: str = "auto") -> MarkovResult:
    ch = _build_chain(tok, order)
    contains = _contains(ch)
    total_conv, total_value = tok.conversions.sum(), tok.value.sum()
    p, ev, p_rem, v_rem = _solve_chain(ch, tok.conversions, tok.nulls, tok.value, contains, method)
    re_c, re_v, conv, value = _markov_credit(p, ev, p_rem, v_rem, total_conv, total_value)
    draws = _markov_bootstrap(ch, contains, bootstrap, seed, method) if bootstrap else None
    att = _result(tok.names, conv, value, draws, removal_effect=re_c, removal_effect_value=re_v)
    tm = _transition_frame(ch, probabilities=True) if with_matrix else None
    return MarkovResult(order, float(p), float(ev), att, ch.n_states, tm)


def _markov_bootstrap(ch: _Chain, contains: np.ndarray, B: int, seed: int, method: str = "auto") -> np.ndarray:
    """(B, C) attributed conversions of B Poisson re-weightings, solved a block of replicates at a time."""
    tok = ch.tok
    rng = np.random.default_rng(seed)
    vpc = np.divide(tok.value, tok.conversions, out=np.zeros_like(tok.value), where=tok.conversions > 0)
    draw_c, draw_n = _PoissonSampler(tok.conversions), _PoissonSampler(tok.nulls)
    keep = _keep_masks(contains)
    draws = np.empty((B, len(tok.names)))
    block = int(min(B, max(1, 8_000_000 // max(len(vpc), 1))))       # ~64 MB per (paths x block) array
    last_value = ch.last_matrix.multiply(vpc[None, :]).tocsc()       # value of a path's conversions by last state
    ones = np.ones(len(vpc))
    for s in range(0, B, block):
        b = min(block, B - s)
        cb, nb = draw_c.draw(rng, b), draw_n.draw(rng, b)
        qdata, r = _chain_system(ch, cb, nb, value_by_state=last_value @ cb)
        x = _absorb(ch, qdata, r, keep, method)
        tc, tv = ones @ cb, vpc @ cb
        for i in range(b):
            draws[s + i] = _markov_credit(x[i, 0, 0], x[i, 0, 1], x[i, 1:, 0], x[i, 1:, 1], tc[i], tv[i])[2]
    return draws


def markov_attribution(paths: pd.DataFrame, order: int = 1, sep: str = DEFAULT_SEP, *, bootstrap: int = 0,
                       seed: int = 0, **cols) -> pd.DataFrame:
    """Removal-effect attribution of an order-``order`` absorbing Markov chain, solved exactly.

    Returns touchpoint, removal_effect (conversions), removal_effect_value, conversions
    (= RE_c / sum RE * total conversions), value, share[, ci_low, ci_high]; ``.attrs`` holds
    p_conversion, expected_value, n_states, order.
    """
    res = markov_model(paths, order, sep, bootstrap=bootstrap, seed=seed, **cols)
    df = res.attribution
    df.attrs.update(p_conversion=res.p_conversion, expected_value=res.expected_value,
                    n_states=res.n_states, order=res.order)
    return df


def _transition_frame(ch: _Chain, probabilities: bool) -> pd.DataFrame:
    internal, to_conv, to_null, _ = _chain_counts(ch, ch.tok.conversions, ch.tok.nulls, ch.tok.value)
    names = np.asarray(ch.state_names() + [CONVERSION, NULL], dtype=object)
    S = ch.n_states
    coo = internal.tocoo()
    f = np.concatenate([coo.row, np.arange(S), np.arange(S)])
    t = np.concatenate([coo.col, np.full(S, S), np.full(S, S + 1)])
    c = np.concatenate([coo.data, to_conv, to_null])
    keep = c > 0
    df = pd.DataFrame({"state_from": names[f[keep]], "state_to": names[t[keep]], "count": c[keep]})
    if probabilities:
        df["probability"] = df["count"] / df.groupby("state_from")["count"].transform("sum")
    return df.sort_values(["state_from", "state_to"]).reset_index(drop=True)


def transition_counts(paths: pd.DataFrame, order: int = 1, sep: str = DEFAULT_SEP, **cols) -> pd.DataFrame:
    """DataFrame[state_from, state_to, count]: weighted order-k transitions (the engine's ``transitions``)."""
    ch = _build_chain(_tokenise(paths, sep, **cols), order)
    return _transition_frame(ch, probabilities=False)


def transition_matrix(paths: pd.DataFrame, order: int = 1, sep: str = DEFAULT_SEP, wide: bool = False,
                      **cols) -> pd.DataFrame:
    """Transition probabilities with state names: long (state_from, state_to, count, probability) or wide."""
    ch = _build_chain(_tokenise(paths, sep, **cols), order)
    df = _transition_frame(ch, probabilities=True)
    if wide:
        return df.pivot(index="state_from", columns="state_to", values="probability").fillna(0.0)
    return df


def select_markov_order(paths: pd.DataFrame, orders: Sequence[int] = (1, 2, 3, 4), folds: int = 5,
                        sep: str = DEFAULT_SEP, seed: int = 0, prior_strength: float = 1.0, **cols) -> pd.DataFrame:
    """Out-of-sample order choice: held-out log-likelihood of each journey's outcome by fold.

    Journeys are split at random into ``folds`` (multinomial thinning of each row's conversions and
    nulls). An order-k chain fitted on the other folds predicts a held-out journey's outcome by its
    last state s: p_s = P(s -> conversion | absorb from s) = conv_s / (conv_s + null_s), shrunk towards
    the training conversion rate with ``prior_strength`` pseudo-journeys (unseen states get the rate).
    Criterion: mean held-out Bernoulli log-likelihood per journey (higher is better); ``best`` marks
    the highest mean. (ChannelAttribution's choose_order ranks the same last-state predictions by
    penalised in-sample ROC AUC.) Returns order, loglik_per_journey, se (across folds), best.
    """
    tok = _tokenise(paths, sep, **cols)
    rng = np.random.default_rng(seed)

    def thin(x):
        whole = np.floor(x).astype(np.int64)
        parts = rng.multinomial(whole, [1.0 / folds] * folds) if len(x) else np.zeros((0, folds))
        frac = x - whole
        extra = rng.integers(0, folds, len(x))
        parts = parts.astype(float)
        parts[np.arange(len(x)), extra] += frac
        return parts                           # (n_paths, folds)

    cf, nf = thin(tok.conversions), thin(tok.nulls)
    rows = []
    for k in orders:
        ch = _build_chain(tok, k)
        S = ch.n_states
        ll = np.zeros(folds)
        nj = np.zeros(folds)
        has = ch.last_state >= 0
        ls = ch.last_state[has]
        for f in range(folds):
            ctr = cf[:, np.arange(folds) != f].sum(axis=1)
            ntr = nf[:, np.arange(folds) != f].sum(axis=1)
            c_s = np.bincount(ls, ctr[has], minlength=S)
            n_s = np.bincount(ls, ntr[has], minlength=S)
            rate = ctr.sum() / max(ctr.sum() + ntr.sum(), 1e-300)
            p_s = (c_s + prior_strength * rate) / (c_s + n_s + prior_strength)
            p_s = np.clip(p_s, 1e-12, 1 - 1e-12)
            ch_te, nu_te = cf[has, f], nf[has, f]
            ll[f] = (ch_te * np.log(p_s[ls]) + nu_te * np.log1p(-p_s[ls])).sum()
            nj[f] = ch_te.sum() + nu_te.sum()
        per = ll / np.maximum(nj, 1e-300)
        rows.append({"order": int(k), "loglik_per_journey": float(ll.sum() / max(nj.sum(), 1e-300)),
                     "se": float(per.std(ddof=1) / math.sqrt(folds)) if folds > 1 else float("nan")})
    out = pd.DataFrame(rows)
    out["best"] = out["loglik_per_journey"] == out["loglik_per_journey"].max()
    return out


# ----------------------------------------------------------------------------- Shapley

def shapley_values(v: np.ndarray) -> np.ndarray:
    """Exact Shapley values of a game on n players given as v[mask] for all 2^n masks (bit i = player i).

    phi_i = sum_{T not containing i} |T|! (n-|T|-1)! / n! * (v(T+i) - v(T)). Works row-wise on a
    (m, 2^n) array too (m games at once).
    """
    v = np.asarray(v, dtype=float)
    squeeze = v.ndim == 1
    V = v[None, :] if squeeze else v
    size = V.shape[1]
    n = int(round(math.log2(size))) if size > 0 else 0
    if 2 ** n != size:
        raise AttributionError(f"attribution: a game needs 2^n values, got {size}.")
    masks = np.arange(size)
    pc = np.zeros(size, dtype=np.int64)
    for i in range(n):
        pc += (masks >> i) & 1
    w = np.array([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]) if n else np.zeros(0)
    phi = np.empty((V.shape[0], n))
    for i in range(n):
        T = masks[((masks >> i) & 1) == 0]
        phi[:, i] = ((V[:, T | (1 << i)] - V[:, T]) * w[pc[T]]).sum(axis=1)
    return phi[0] if squeeze else phi


def _coalition_table(paths: pd.DataFrame, sep: str, **cols) -> tuple[pd.DataFrame, np.ndarray]:
    """Coalitions (sets of distinct touchpoints) with journeys, conversions, value from a paths table."""
    tok = _tokenise(paths, sep, **cols)
    pidx = tok.path_index
    C = len(tok.names)
    if C > 62:
        raise AttributionError(f"attribution: Shapley supports at most 62 distinct touchpoints overall, found {C}. "
                               f"Group rare touchpoints (e.g. into 'other').")
    bits = np.zeros(len(tok.lengths), dtype=np.int64)
    np.bitwise_or.at(bits, pidx, np.left_shift(np.int64(1), tok.codes))
    df = pd.DataFrame({"mask": bits, "journeys": tok.conversions + tok.nulls,
                       "conversions": tok.conversions, "value": tok.value})
    return df.groupby("mask", as_index=False).sum(), tok.names


def coalitions_from_table(coalitions: pd.DataFrame, sep: str = ",") -> tuple[pd.DataFrame, np.ndarray]:
    """Engine ``coalitions`` table (coalition, journeys, conversions, value) -> bitmask form."""
    for col in ("coalition", "journeys", "conversions"):
        if col not in coalitions.columns:
            raise AttributionError(f"attribution: the coalitions table needs column '{col}' "
                                   f"(found {list(coalitions.columns)}).")
    sets = coalitions["coalition"].fillna("").astype(str).str.split(sep)
    names = sorted({t.strip() for s in sets for t in s if t.strip()})
    code = {n: i for i, n in enumerate(names)}
    if len(names) > 62:
        raise AttributionError(f"attribution: Shapley supports at most 62 distinct touchpoints, found {len(names)}.")
    masks = np.array([sum(1 << code[t.strip()] for t in set(s) if t.strip()) for s in sets], dtype=np.int64)
    df = pd.DataFrame({"mask": masks, "journeys": coalitions["journeys"].astype(float),
                       "conversions": coalitions["conversions"].astype(float),
                       "value": coalitions["value"].astype(float) if "value" in coalitions else 0.0})
    return df.groupby("mask", as_index=False).sum(), np.asarray(names, dtype=object)


def _shapley_credit(masks: np.ndarray, journeys: np.ndarray, conversions: np.ndarray, value: np.ndarray,
                    C: int, characteristic: str, max_exact: int, chunk_cells: int = 2 ** 22):
    """Per-touchpoint conversions and value credited by journey-level Shapley over coalitions."""
    rate = np.divide(conversions, journeys, out=np.zeros_like(conversions), where=journeys > 0)
    order = np.argsort(masks)
    obs_mask, obs_rate, obs_conv = masks[order], rate[order], conversions[order]
    credit_c, credit_v = np.zeros(C), np.zeros(C)
    conv_rows = np.flatnonzero((conversions > 0) & (masks != 0))
    if not len(conv_rows):
        return credit_c, credit_v
    popc = np.array([bin(int(m)).count("1") for m in masks[conv_rows]])
    too_big = popc > max_exact
    if too_big.any():
        raise AttributionError(f"attribution: {int(too_big.sum())} converting coalition(s) have more than "
                               f"{max_exact} distinct touchpoints (max {int(popc.max())}); exact Shapley needs "
                               f"2^n subsets. Group touchpoints (channel_group) or limit paths "
                               f"(engine.max_path_length), or raise max_exact (cost doubles per touchpoint).")
    dense = None
    if C <= 22 and characteristic in ("rate", "rate_zero"):
        # global lattice: v(T) for every subset of all touchpoints, closure computed once
        dense = np.zeros(1 << C)
        dense[obs_mask] = obs_rate
        dense[0] = 0.0
        if characteristic == "rate":
            allm = np.arange(1 << C)
            for i in range(C):
                bit = 1 << i
                idx = allm[(allm & bit) != 0]
                dense[idx] = np.maximum(dense[idx], dense[idx ^ bit])
    for n in np.unique(popc):
        rows = conv_rows[popc == n]
        size = 1 << n
        step = max(1, chunk_cells // size)
        for s in range(0, len(rows), step):
            r = rows[s:s + step]
            m = masks[r]
            # global bit of each local player: positions of set bits, ascending
            players = np.zeros((len(r), n), dtype=np.int64)
            rem = m.copy()
            for j in range(n):
                low = rem & -rem
                players[:, j] = np.log2(low).astype(np.int64)
                rem = rem ^ low
            local = np.arange(size)
            glob = np.zeros((len(r), size), dtype=np.int64)       # global mask of each local subset
            for j in range(n):
                h = 1 << j
                glob[:, h:2 * h] = glob[:, :h] | np.left_shift(np.int64(1), players[:, j])[:, None]
            if characteristic == "zhao":
                # journey-level unanimity game: only the journey's own set converts -> equal split
                V = np.zeros((len(r), size))
                V[:, -1] = 1.0
            elif characteristic in ("rate", "rate_zero"):
                if dense is not None:
                    V = dense[glob]
                else:
                    pos = np.minimum(np.searchsorted(obs_mask, glob), len(obs_mask) - 1)
                    V = np.where(obs_mask[pos] == glob, obs_rate[pos], 0.0)
                    V[:, 0] = 0.0
                    if characteristic == "rate":
                        for i in range(n):   # monotone closure: best observed subset
                            bit = 1 << i
                            idx = local[(local & bit) != 0]
                            V[:, idx] = np.maximum(V[:, idx], V[:, idx ^ bit])
            else:
                raise AttributionError(f"attribution: unknown Shapley characteristic '{characteristic}' "
                                       f"(rate | rate_zero | zhao).")
            phi = shapley_values(V)
            phi = np.clip(phi, 0, None)           # rate_zero can give negative marginals; never negative credit
            tot = phi.sum(axis=1, keepdims=True)
            frac = np.where(tot > 0, phi / np.where(tot > 0, tot, 1), 1.0 / n)
            np.add.at(credit_c, players, frac * conversions[r][:, None])
            np.add.at(credit_v, players, frac * value[r][:, None])
    return credit_c, credit_v


def shapley_attribution(paths: pd.DataFrame | None = None, sep: str = DEFAULT_SEP, *,
                        coalitions: pd.DataFrame | None = None, characteristic: str = "rate",
                        max_exact: int = MAX_EXACT_SHAPLEY, bootstrap: int = 0, seed: int = 0, **cols) -> pd.DataFrame:
    """Journey-level Shapley attribution (definition in the module docstring).

    Give a paths table, or the engine's ``coalitions`` table (coalition, journeys, conversions,
    value). ``characteristic``: ``rate`` (default; unseen sets = best observed subset), ``rate_zero``
    (unseen sets worth 0; negative marginal credit clipped to 0), ``zhao`` (Zhao et al. 2018
    simplified Shapley = linear_unique). Credits of a coalition sum to its conversions.
    Conversions of journeys with no touchpoint are not attributed (``.attrs['unattributed']``).
    """
    if coalitions is not None:
        tab, names = coalitions_from_table(coalitions)
    elif paths is not None:
        tab, names = _coalition_table(paths, sep, **cols)
    else:
        raise AttributionError("attribution: shapley_attribution needs a paths table or a coalitions table.")
    m, j, c, v = (tab[k].to_numpy() for k in ("mask", "journeys", "conversions", "value"))
    j = np.maximum(j, c)      # no-nulls input: every journey converted
    C = len(names)
    credit_c, credit_v = _shapley_credit(m, j, c, v, C, characteristic, max_exact)
    draws = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        nulls = j - c
        vpc = np.divide(v, c, out=np.zeros_like(v), where=c > 0)
        draws = np.empty((bootstrap, C))
        for b in range(bootstrap):
            cb, nb = _poisson(rng, c), _poisson(rng, nulls)
            draws[b] = _shapley_credit(m, cb + nb, cb, cb * vpc, C, characteristic, max_exact)[0]
    out = _result(names, credit_c, credit_v, draws)
    out.attrs["unattributed"] = float(c[m == 0].sum())
    return out


# ----------------------------------------------------------------------------- hazard-based

def safe_name(touchpoint: str) -> str:
    """Column suffix of a touchpoint in engine tables: lowercase, [a-z0-9_] (n_<tp>)."""
    return re.sub(r"[^a-z0-9_]", "_", str(touchpoint).lower())


def hazard_attribution(journeys: pd.DataFrame, hazard_ratios: pd.DataFrame, *, baseline: str = "exclude",
                       bootstrap: int = 0, seed: int = 0, value_column: str = "revenue") -> pd.DataFrame:
    """Credit from a time-varying proportional hazards fit (module docstring).

    ``journeys``: engine journeys table (converted, n_<tp> columns, revenue); ``hazard_ratios``:
    touchpoint, log_hr[, se]. With baseline='exclude' a journey's credited conversions are
    1 - exp(-eta+) (its excess-hazard share); 'include' credits the whole conversion. Bootstrap:
    Poisson journey weights and log_hr ~ Normal(log_hr, se) per replicate.
    """
    if not {"touchpoint", "log_hr"} <= set(hazard_ratios.columns):
        raise AttributionError("attribution: hazard_ratios needs columns touchpoint, log_hr[, se] "
                               "(data/results/survival/hazard_ratios.csv from `journeylab survival`).")
    if "converted" not in journeys.columns:
        raise AttributionError("attribution: the journeys table needs a 'converted' column (engine journeys).")
    hr = hazard_ratios.drop_duplicates("touchpoint")
    hr = hr[[f"n_{safe_name(t)}" in journeys.columns for t in hr["touchpoint"]]]
    if hr.empty:
        raise AttributionError("attribution: no touchpoint of hazard_ratios has an n_<touchpoint> column in the "
                               "journeys table; check that both come from the same engine run.")
    conv = journeys["converted"].astype(float).to_numpy()
    keep = conv > 0
    N = journeys.loc[keep, [f"n_{safe_name(t)}" for t in hr["touchpoint"]]].fillna(0).to_numpy(float)
    val = journeys.loc[keep, value_column].fillna(0).to_numpy(float) if value_column in journeys else np.zeros(keep.sum())
    beta = hr["log_hr"].to_numpy(float)
    se = hr["se"].fillna(0).to_numpy(float) if "se" in hr else np.zeros(len(beta))

    def credit(b, w):
        contrib = N * np.clip(b, 0, None)[None, :]
        eta = contrib.sum(axis=1)
        share = (1 - np.exp(-eta)) if baseline == "exclude" else (eta > 0).astype(float)
        frac = np.divide(contrib, eta[:, None], out=np.zeros_like(contrib), where=eta[:, None] > 0)
        return (frac * (w * share)[:, None]).sum(axis=0), (frac * (w * share * val)[:, None]).sum(axis=0)

    if baseline not in ("exclude", "include"):
        raise AttributionError(f"attribution: hazard baseline must be 'exclude' or 'include', got {baseline!r}.")
    w0 = np.ones(len(N))
    c, v = credit(beta, w0)
    draws = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = np.stack([credit(rng.normal(beta, se), _poisson(rng, w0))[0] for _ in range(bootstrap)])
    out = _result(hr["touchpoint"].to_numpy(), c, v, draws, log_hr=beta)
    out.attrs["unattributed"] = float(len(N) - c.sum())
    return out


# ----------------------------------------------------------------------------- costs, truth

def add_costs(attribution: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Join cost per touchpoint: cost, cost_per_conversion = cost / conversions, roas = value / cost."""
    if not {"touchpoint", "cost"} <= set(costs.columns):
        raise AttributionError("attribution: the costs table needs columns touchpoint, cost.")
    out = attribution.merge(costs[["touchpoint", "cost"]].groupby("touchpoint", as_index=False).sum(),
                            on="touchpoint", how="left")
    out["cost_per_conversion"] = np.where(out["conversions"] > 0, out["cost"] / out["conversions"].where(out["conversions"] > 0), np.nan)
    out["roas"] = np.where(out["cost"] > 0, out["value"] / out["cost"].where(out["cost"] > 0), np.nan)
    return out


def l1_to_truth(shares: pd.Series | dict, truth_share: dict) -> float:
    """L1 distance sum_tp |share_tp - truth_tp| over the union of touchpoints (missing = 0)."""
    s = dict(shares)
    keys = set(s) | set(truth_share)
    return float(sum(abs(float(s.get(k, 0.0) or 0.0) - float(truth_share.get(k, 0.0) or 0.0)) for k in keys))


# ----------------------------------------------------------------------------- stage

def _params(params: dict) -> dict:
    a = dict(params.get("attribution") or {})
    e = params.get("engine") or {}
    a.setdefault("output", "data/results/attribution.csv")
    a.setdefault("metrics", "metrics/attribution.json")
    a.setdefault("journey_type", "all")
    a.setdefault("models", list(HEURISTIC_MODELS) + list(DATA_DRIVEN))
    a.setdefault("markov_orders", [1, 2, 3])
    a.setdefault("bootstrap_replicates", 200)
    a.setdefault("seed", 11)
    a.setdefault("costs", None)
    a.setdefault("journeys_dir", e.get("output_dir", "data/journeys"))
    a.setdefault("hazard_ratios", "data/results/survival/hazard_ratios.csv")
    a.setdefault("truth", (params.get("simulate") or {}).get("truth", "data/raw/truth.json"))
    a.setdefault("direct_touchpoints", e.get("direct_touchpoints", ["direct"]))
    a.setdefault("position_based_weights", e.get("position_based_weights", [0.4, 0.2, 0.4]))
    a.setdefault("shapley_max_exact", MAX_EXACT_SHAPLEY)
    return a


def _filter_type(df: pd.DataFrame, journey_type: str) -> pd.DataFrame:
    if journey_type in (None, "all") or "journey_type" not in df.columns:
        return df
    return df[df["journey_type"] == journey_type]


def attribute_all(paths: pd.DataFrame, a: dict, *, heuristics: pd.DataFrame | None = None,
                  journeys: pd.DataFrame | None = None, hazard_ratios: pd.DataFrame | None = None,
                  bootstrap: int = 0, notes: dict | None = None) -> pd.DataFrame:
    """Every configured model on one paths table -> long DataFrame with a ``model`` column."""
    notes = notes if notes is not None else {}
    seed = int(a["seed"])
    frames = []
    tok = None
    for model in a["models"]:
        if model == "time_decay":
            if heuristics is None or heuristics.empty:
                notes["time_decay"] = "no engine heuristics table: time_decay needs touch timestamps"
                continue
            h = heuristics[heuristics["model"] == "time_decay"].groupby("touchpoint", as_index=False)[["conversions", "value"]].sum()
            df = _result(h["touchpoint"], h["conversions"].to_numpy(), h["value"].to_numpy())
            df["ci_low"] = df["ci_high"] = np.nan
            notes["time_decay_ci"] = "no bootstrap: time_decay comes from the engine's event-level sums"
            frames.append(df.assign(model="time_decay"))
        elif model in HEURISTIC_MODELS:
            df = heuristic_attribution(paths, model, direct_touchpoints=a["direct_touchpoints"],
                                       position_weights=a["position_based_weights"], bootstrap=bootstrap, seed=seed)
            frames.append(df.assign(model=model))
        elif model == "markov":
            tok = tok or _tokenise(paths, DEFAULT_SEP)
            for k in a["markov_orders"]:
                res = _markov_from_tokens(tok, int(k), bootstrap=bootstrap, seed=seed)
                frames.append(res.attribution.assign(model=f"markov_{int(k)}"))
        elif model == "shapley":
            try:
                df = shapley_attribution(paths, bootstrap=bootstrap, seed=seed, max_exact=int(a["shapley_max_exact"]))
                frames.append(df.assign(model="shapley"))
            except AttributionError as exc:
                notes["shapley"] = str(exc)
        elif model == "hazard":
            if journeys is None or hazard_ratios is None:
                notes["hazard"] = "no hazard_ratios.csv from the survival stage (or no journeys table)"
                continue
            df = hazard_attribution(journeys, hazard_ratios, bootstrap=bootstrap, seed=seed)
            frames.append(df.drop(columns=["log_hr"]).assign(model="hazard"))
        else:
            raise AttributionError(f"params.yaml attribution.models: unknown model '{model}'. Choose from "
                                   f"{list(HEURISTIC_MODELS) + list(DATA_DRIVEN)}.")
    if not frames:
        return pd.DataFrame(columns=["model", "touchpoint", "conversions", "value", "share", "ci_low", "ci_high"])
    out = pd.concat(frames, ignore_index=True)
    cols = ["model", "touchpoint", "conversions", "value", "share", "ci_low", "ci_high"]
    extra = [c for c in out.columns if c not in cols]
    return out[cols + extra]


def run_stage(params: dict) -> dict:
    """DVC stage ``attribute``: every model -> data/results/attribution.csv, metrics/attribution.json."""
    from . import config
    from .config import path as ppath
    a = _params(params)
    jdir = ppath(params, a["journeys_dir"])
    paths_file = jdir / "paths.parquet"
    if not paths_file.exists():
        raise AttributionError(f"{paths_file}: not found. Run `journeylab build` first (it writes the paths table).")
    paths_all = pd.read_parquet(paths_file)
    heur_file, jour_file = jdir / "heuristics.parquet", jdir / "journeys.parquet"
    heur_all = pd.read_parquet(heur_file) if heur_file.exists() else None
    jour_all = pd.read_parquet(jour_file) if jour_file.exists() else None
    hz_file = ppath(params, a["hazard_ratios"])
    hazard_ratios = pd.read_csv(hz_file) if hz_file.exists() else None
    notes: dict = {}
    jt = a["journey_type"]

    def sel(df, t):
        return None if df is None else _filter_type(df, t)

    B = int(a["bootstrap_replicates"])
    result = attribute_all(_filter_type(paths_all, jt), a, heuristics=sel(heur_all, jt), journeys=sel(jour_all, jt),
                           hazard_ratios=hazard_ratios, bootstrap=B, notes=notes)
    costs = a.get("costs")
    if str(costs).lower() == "auto":   # the simulator's media costs, only for the simulator's own data
        costs = config.get(params, "simulate.costs", None) if config.simulated_input(params) else None
        if costs and not ppath(params, costs).exists():
            costs = None
    if costs:
        cfile = ppath(params, costs)
        if not cfile.exists():
            raise AttributionError(f"{cfile}: costs file named in params.yaml attribution.costs not found "
                                   f"(CSV with columns touchpoint, cost), or set attribution.costs: null.")
        result = add_costs(result, pd.read_csv(cfile))
    out_file = ppath(params, a["output"])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(out_file, index=False)

    metrics: dict = {"journey_type": jt, "bootstrap_replicates": B,
                     "total_conversions": float(_filter_type(paths_all, jt)["conversions"].sum()),
                     "models": sorted(result["model"].unique().tolist())}
    # Markov order selection (honest held-out criterion)
    try:
        sel_tab = select_markov_order(_filter_type(paths_all, jt), orders=a["markov_orders"], seed=int(a["seed"]))
        metrics["markov_order_selection"] = sel_tab.to_dict(orient="records")
    except AttributionError as exc:
        metrics["markov_order_selection"] = None
        metrics["markov_order_selection_note"] = str(exc)
    # engine heuristics consistency (same definitions computed twice)
    if heur_all is not None:
        h = _filter_type(heur_all, jt).groupby(["model", "touchpoint"])["conversions"].sum()
        ours = result.set_index(["model", "touchpoint"])["conversions"]
        common = h.index.intersection(ours.index)
        common = [i for i in common if i[0] != "time_decay"]
        metrics["engine_heuristics_max_abs_diff"] = float((h[common] - ours[common]).abs().max()) if common else None
    # ground truth on acquisition journeys
    truth_file = ppath(params, a["truth"])
    gt = None
    if truth_file.exists() and config.simulated_input(params):   # the simulator's truth describes only its own data
        truth = json.loads(truth_file.read_text())
        tshare = truth.get("incremental_share") or {}
        acq = attribute_all(_filter_type(paths_all, "acquisition"), a, heuristics=sel(heur_all, "acquisition"),
                            journeys=sel(jour_all, "acquisition"), hazard_ratios=hazard_ratios, bootstrap=0, notes={})
        gt = ground_truth_table(acq, tshare)
    metrics["ground_truth"] = gt
    if gt is None:
        metrics["ground_truth_note"] = (f"{truth_file} not found" if not truth_file.exists() else
                                        "the input is not the simulator's output") + " (not simulated data): no ground truth."
    metrics["notes"] = notes
    mfile = ppath(params, a["metrics"])
    mfile.parent.mkdir(parents=True, exist_ok=True)
    mfile.write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


def ground_truth_table(result: pd.DataFrame, truth_share: dict) -> dict:
    """Each model's shares vs true incremental shares: L1 per model, best data-driven vs last touch."""
    rows = []
    for model, g in result.groupby("model"):
        shares = dict(zip(g["touchpoint"], g["share"].fillna(0.0)))
        rows.append({"model": model, "l1": l1_to_truth(shares, truth_share),
                     "shares": {k: float(v) for k, v in shares.items()}})
    by = {r["model"]: r["l1"] for r in rows}
    dd = {m: v for m, v in by.items() if m.split("_")[0] in DATA_DRIVEN}
    best = min(dd, key=dd.get) if dd else None
    return {"truth_share": {k: float(v) for k, v in truth_share.items()}, "models": rows,
            "best_data_driven": best, "best_data_driven_l1": dd.get(best) if best else None,
            "last_touch_l1": by.get("last"),
            "best_beats_last_touch": (bool(dd[best] < by["last"]) if best and "last" in by else None)}
