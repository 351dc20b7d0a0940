"""Consistent report styling: seaborn theme and one fixed colour per touchpoint across all reports.

Plot functions take data (aggregates) and ``ax=``; they label axes with units and return the axes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

OTHER_COLOR = "#9aa5b1"
PHASE_COLORS = {"pre_purchase": "#1f77b4", "purchase": "#2ca02c", "post_purchase": "#9467bd", "unknown": OTHER_COLOR}
PHASE_LABELS = {"pre_purchase": "before purchase", "purchase": "purchase", "post_purchase": "after purchase",
                "unknown": "unknown"}
RATING_COLORS = {"positive": "#2ca02c", "neutral": "#9aa5b1", "negative": "#d62728"}

_TAXONOMY: list[str] = []


def taxonomy_order(params: dict | None) -> list[str]:
    """Touchpoints in params taxonomy order (the order behind the fixed palette)."""
    tax = ((params or {}).get("ingest") or {}).get("taxonomy") or {}
    return list(tax)


def touchpoint_palette(touchpoints: Sequence[str] | None = None) -> dict[str, str]:
    """Colour per touchpoint, fixed by its position in the taxonomy (same in every report)."""
    import seaborn as sns
    order = list(touchpoints) if touchpoints is not None else list(_TAXONOMY)
    colors = sns.color_palette("tab20", 20).as_hex()
    # tab20 interleaves dark/light pairs; take darks first so neighbours differ strongly
    colors = colors[0::2] + colors[1::2]
    pal = {tp: colors[i % len(colors)] for i, tp in enumerate(order)}
    pal.setdefault("other", OTHER_COLOR)
    return pal


def color(touchpoint: str) -> str:
    """The report colour of a touchpoint (grey when outside the taxonomy)."""
    return touchpoint_palette().get(touchpoint, OTHER_COLOR)


def set_style(params: dict | None = None) -> None:
    """Seaborn theme, readable sizes, and the palette bound to the params taxonomy."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import seaborn as sns
    global _TAXONOMY
    _TAXONOMY = taxonomy_order(params)
    sns.set_theme(style="whitegrid", context="notebook", font_scale=1.0)
    matplotlib.rcParams.update({"figure.figsize": (9, 4.2), "figure.dpi": 100, "axes.titleweight": "bold",
                                "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
                                "savefig.bbox": "tight"})


def new_ax(width: float = 9, height: float = 4.2):
    """A fresh (fig, ax)."""
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(width, height))


def _ax(ax):
    if ax is None:
        _, ax = new_ax()
    return ax


def volumes(df: pd.DataFrame, ax=None, unit: str = "week"):
    """Events per period by kind (df: period, kind, events)."""
    ax = _ax(ax)
    kinds = {"touch": "#1f77b4", "conversion": "#2ca02c", "dissolution": "#d62728", "survey": "#ff7f0e"}
    for kind, g in df.groupby("kind"):
        ax.plot(g["period"], g["events"], label=kind, color=kinds.get(kind, OTHER_COLOR), lw=1.8)
    ax.set_yscale("log")
    ax.set_xlabel(f"{unit} starting")
    ax.set_ylabel(f"events per {unit} (log scale)")
    ax.set_title(f"Event volumes per {unit}")
    ax.legend(title="event kind", ncol=4, loc="lower center")
    return ax


def touchpoint_bars(df: pd.DataFrame, value: str, ax=None, xlabel: str = "", title: str = "",
                    err: tuple[str, str] | None = None, pct: bool = False):
    """Horizontal bars per touchpoint in the report colours; optional CI columns ``err=(low, high)``."""
    ax = _ax(ax)
    d = df.reset_index(drop=True)
    y = np.arange(len(d))[::-1]
    scale = 100.0 if pct else 1.0
    vals = d[value].astype(float).to_numpy() * scale
    ax.barh(y, vals, color=[color(t) for t in d["touchpoint"]])
    if err is not None:
        lo = d[err[0]].astype(float).to_numpy() * scale
        hi = d[err[1]].astype(float).to_numpy() * scale
        ax.errorbar(vals, y, xerr=[np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)], fmt="none",
                    ecolor="#323f4b", capsize=3, lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(d["touchpoint"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("touchpoint")
    if title:
        ax.set_title(title)
    return ax


def funnel(df: pd.DataFrame, ax=None):
    """Customers reaching each stage (df: stage, customers, conversion_from_previous)."""
    ax = _ax(ax)
    d = df.reset_index(drop=True)
    y = np.arange(len(d))[::-1]
    ax.barh(y, d["customers"].astype(float), color="#1f5f8b")
    for yi, (_, r) in zip(y, d.iterrows()):
        conv = r.get("conversion_from_previous")
        label = f"{int(r['customers']):,}" + (f"  ({100 * conv:.0f}% of previous)" if conv == conv and conv is not None else "")
        ax.text(float(r["customers"]), yi, "  " + label, va="center", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels(d["stage"])
    ax.set_xlabel("customers reaching the stage")
    ax.set_ylabel("funnel stage")
    ax.set_xlim(0, float(d["customers"].max()) * 1.35 if len(d) else 1)
    ax.set_title("Stage funnel")
    return ax


def lorenz(curve: pd.DataFrame, ax=None):
    """Pareto/Lorenz curve (curve: customer_share, revenue_share; customers sorted by revenue, largest first)."""
    ax = _ax(ax)
    ax.plot(100 * curve["customer_share"], 100 * curve["revenue_share"], color="#1f5f8b", lw=2,
            label="actual revenue")
    ax.plot([0, 100], [0, 100], ls="--", color=OTHER_COLOR, label="equal revenue per customer")
    ax.axvline(20, color="#d62728", lw=1, ls=":")
    ax.set_xlabel("top customers by revenue (% of paying customers)")
    ax.set_ylabel("share of total revenue (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_title("Revenue concentration (Pareto curve)")
    ax.legend(loc="lower right")
    return ax


def rate_ratios(df: pd.DataFrame, ax=None, outcome: str = "conversion"):
    """Rate ratio with 95% CI per touchpoint on a log axis (df: touchpoint, rr, ci_low, ci_high, rating)."""
    ax = _ax(ax)
    d = df.reset_index(drop=True)
    y = np.arange(len(d))[::-1]
    for yi, (_, r) in zip(y, d.iterrows()):
        c = RATING_COLORS.get(r.get("rating"), OTHER_COLOR)
        ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=c, lw=2)
        ax.plot([r["rr"]], [yi], "o", color=color(r["touchpoint"]), mec="#323f4b")
    ax.axvline(1, color="#323f4b", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(d["touchpoint"])
    ax.set_xlabel(f"{outcome} rate ratio, touched vs not touched (log scale, 95% CI)")
    ax.set_ylabel("touchpoint")
    return ax


def curves(df: pd.DataFrame, x: str, y: str, group: str | None = None, ax=None, lo: str | None = None,
           hi: str | None = None, xlabel: str = "days", ylabel: str = "", title: str = "", step: bool = True):
    """Step/line curves by group with optional bands; touchpoint groups use the touchpoint palette."""
    ax = _ax(ax)
    groups = [(None, df)] if group is None or group not in df else list(df.groupby(group, sort=False))
    for name, g in groups:
        g = g.sort_values(x)
        c = color(str(name)) if name is not None and str(name) in touchpoint_palette() else None
        label = None if name is None else str(name)
        if step:
            line, = ax.step(g[x], g[y], where="post", label=label, color=c, lw=1.8)
        else:
            line, = ax.plot(g[x], g[y], label=label, color=c, lw=1.8)
        if lo and hi and lo in g and hi in g:
            ax.fill_between(g[x], g[lo], g[hi], step="post" if step else None, alpha=0.15, color=line.get_color())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if group is not None and len(groups) > 1:
        ax.legend(fontsize=8, ncol=2)
    return ax


def model_comparison(df: pd.DataFrame, ax=None, value: str = "share", models: Sequence[str] | None = None,
                     title: str = ""):
    """Grouped bars: attribution share per touchpoint (y) by model (hue)."""
    import seaborn as sns
    ax = _ax(ax)
    d = df.copy()
    if models is not None:
        d = d[d["model"].isin(models)]
    d = d.assign(**{value: 100 * d[value].astype(float)})
    sns.barplot(data=d, y="touchpoint", x=value, hue="model", ax=ax, orient="h", errorbar=None)
    ax.set_xlabel("share of attributed conversions (%)")
    ax.set_ylabel("touchpoint")
    if title:
        ax.set_title(title)
    ax.legend(title="model", fontsize=8, ncol=2)
    return ax


def calibration(cal: pd.DataFrame, ax=None):
    """Reliability diagram (cal: model, mean_predicted, observed_rate)."""
    ax = _ax(ax)
    for model, g in cal.groupby("model"):
        ax.plot(100 * g["mean_predicted"], 100 * g["observed_rate"], "o-", label=str(model), lw=1.5)
    ax.plot([0, 100], [0, 100], ls="--", color=OTHER_COLOR, label="perfect calibration")
    ax.set_xlabel("predicted risk of leaving (%)")
    ax.set_ylabel("observed share who left (%)")
    ax.set_title("Calibration on the evaluation cutoff")
    ax.legend(fontsize=8)
    return ax


def importance(imp: pd.DataFrame, ax=None, top: int = 12):
    """Permutation importance bars (first text column = driver, first numeric 'importance*' column = value)."""
    ax = _ax(ax)
    label = "driver" if "driver" in imp else imp.select_dtypes("object").columns[0]
    num = [c for c in imp.columns if "importance" in c and pd.api.types.is_numeric_dtype(imp[c])]
    value = num[0] if num else imp.select_dtypes("number").columns[0]
    d = imp.sort_values(value, ascending=False).head(top)
    y = np.arange(len(d))[::-1]
    ax.barh(y, d[value], color="#1f5f8b")
    ax.set_yticks(y)
    ax.set_yticklabels(d[label])
    ax.set_xlabel("drop in ROC-AUC when the factor is scrambled")
    ax.set_ylabel("driver")
    ax.set_title("Top drivers of dissolution")
    return ax


def lifecycle(life: pd.DataFrame, ax=None):
    """Stacked shares of customers by lifecycle stage per cutoff (life: cutoff, stage, customers)."""
    ax = _ax(ax)
    from .schema import LIFECYCLE_STAGES
    w = life.pivot_table(index="cutoff", columns="stage", values="customers", aggfunc="sum").fillna(0)
    order = [c for c in LIFECYCLE_STAGES if c in w.columns] + [c for c in w.columns if c not in LIFECYCLE_STAGES]
    w = w[order]   # stages in lifecycle order (awareness -> ... -> dissolution), not alphabetically
    w = w.div(w.sum(axis=1).replace(0, np.nan), axis=0) * 100
    w.index = [str(i)[:10] for i in w.index]
    w.plot(kind="bar", stacked=True, ax=ax, colormap="viridis", width=0.8)
    ax.set_xlabel("cutoff date")
    ax.set_ylabel("customers (%)")
    ax.set_title("Customers by lifecycle stage")
    ax.legend(title="stage", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=0)
    return ax
