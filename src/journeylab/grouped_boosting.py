"""Gradient boosting whose early stopping holds out whole customers (used by :mod:`journeylab.churn`)."""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils import _safe_indexing


class GroupedHistGradientBoostingClassifier(HistGradientBoostingClassifier):
    """``HistGradientBoostingClassifier`` whose early-stopping validation set holds whole customers.

    ``fit(X, y, groups=customer_ids)`` holds out ``validation_fraction`` of the *customers*
    (``GroupShuffleSplit`` seeded by ``random_state``) and passes their rows as ``X_val``/``y_val``.
    A stacked churn training table has one row per (cutoff, customer); the default row-level split
    puts other cutoffs of the same customer in the validation set, so the validation loss tracks the
    training fit and early stopping comes late or never.

    Predictions (``decision_function``, ``predict_proba``) run in blocks of ``PREDICT_BLOCK_ROWS`` rows:
    the parent walks one tree over all rows before the next, streaming a 350,000 x 75 float64 matrix
    (210 MB) from memory once per tree; a 5,000-row block (3 MB) stays in cache for all trees,
    ~3x faster on the 2-core benchmark machine. Row-wise, so the results are the same.

    Without ``groups``, with early stopping off, or when the grouped split leaves one class only on
    either side, this is the plain estimator (row-level split). Fitted: ``validation_customers_`` =
    customers held out (0 = row-level split or no early stopping), plus everything the parent has.
    """

    PREDICT_BLOCK_ROWS = 5000

    def _blocks(self, method, X):
        n = X.shape[0]
        b = self.PREDICT_BLOCK_ROWS
        if n <= b:
            return method(X)
        return np.concatenate([method(_safe_indexing(X, slice(i, i + b))) for i in range(0, n, b)])

    def decision_function(self, X):
        """Raw score (log-odds), computed in row blocks."""
        return self._blocks(super().decision_function, X)

    def predict_proba(self, X):
        """Class probabilities, computed in row blocks."""
        return self._blocks(super().predict_proba, X)

    def fit(self, X, y, sample_weight=None, groups=None, **fit_params):
        """Fit; ``groups`` (one id per row) makes the early-stopping validation split customer-grouped.
        An explicit ``X_val``/``y_val`` (``fit_params``) is used as given instead."""
        y = np.asarray(y)
        enabled = self.early_stopping is True or (self.early_stopping == "auto" and len(y) > 10000)
        if groups is not None and enabled and not fit_params:
            groups = np.asarray(groups)
            if len(groups) != len(y):
                raise ValueError(f"groups has {len(groups)} entries for {len(y)} rows")
            split = GroupShuffleSplit(n_splits=1, test_size=self.validation_fraction, random_state=self.random_state)
            fit_rows, val_rows = next(split.split(np.zeros(len(y)), y, groups))
            if len(np.unique(y[fit_rows])) >= 2 and len(np.unique(y[val_rows])) >= 2:
                sw = None if sample_weight is None else np.asarray(sample_weight)
                super().fit(_safe_indexing(X, fit_rows), y[fit_rows],
                            sample_weight=None if sw is None else sw[fit_rows],
                            X_val=_safe_indexing(X, val_rows), y_val=y[val_rows],
                            sample_weight_val=None if sw is None else sw[val_rows])
                self.validation_customers_ = int(len(np.unique(groups[val_rows])))
                return self
        super().fit(X, y, sample_weight=sample_weight, **fit_params)
        self.validation_customers_ = 0
        return self
