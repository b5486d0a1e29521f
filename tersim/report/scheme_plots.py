"""Plots of a weight-scheme sweep (`--set quantization.scheme=... --set quantization.weight_bits=...`):
accuracy vs weight bits per scheme, and accuracy vs energy with the Pareto front, FGQ ternary on the same axes."""
from __future__ import annotations

import pandas as pd

from tersim.report.plots import _figure, pareto_mask, quality_metric


def has_schemes(points: pd.DataFrame) -> bool:
    """A points frame that compares weight schemes or bit widths."""
    return {"scheme", "weight_bits", "ternary_energy_pj"} <= set(points.columns) and \
        (points.scheme.nunique() > 1 or points.weight_bits.nunique() > 1) and quality_metric(points) is not None


def _finish(fig, ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def _label(row) -> str:
    return "FGQ ternary" if row.scheme == "fgq_ternary" else f"{row.scheme} {row.weight_bits}b"


def accuracy_vs_bits(points: pd.DataFrame):
    """One line per (scheme, act_bits); FGQ ternary (2-bit codes, one point per N) as markers at 2 bits."""
    column, label, _ = quality_metric(points)
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    for (scheme, act), group in points.groupby(["scheme", "act_bits"], sort=True):
        if scheme == "fgq_ternary":
            ax.scatter(group.weight_bits, group[column], marker="*", s=80, zorder=3,
                       label=f"FGQ ternary, {act}-bit act (N={','.join(map(str, sorted(group.group_size)))})")
            continue
        g = group.sort_values("weight_bits")
        ax.plot(g.weight_bits, g[column], "o-" if act == 8 else "s--", label=f"{scheme}, {act}-bit act")
    return _finish(fig, ax, "weight bits", label, f"{points.model.iloc[0]}: {label} vs weight bits")


def accuracy_vs_energy(points: pd.DataFrame):
    """Every point's energy per inference against its accuracy; the Pareto front (lower energy, higher
    accuracy) joined and labelled."""
    column, label, higher = quality_metric(points)
    fig = _figure(7, 5)
    ax = fig.subplots()
    energy_uj = points.ternary_energy_pj * 1e-6
    for scheme, group in points.groupby("scheme", sort=True):
        ax.scatter(group.ternary_energy_pj * 1e-6, group[column], label=scheme,
                   marker="*" if scheme == "fgq_ternary" else "o", s=60 if scheme == "fgq_ternary" else 25)
    front = pareto_mask(points[column], -energy_uj, higher)
    best = points[front].assign(_e=energy_uj[front]).sort_values("_e")
    ax.plot(best._e, best[column], "-", color="k", lw=1, label="Pareto front")
    for _, r in best.iterrows():
        ax.annotate(f"{_label(r)}, N={r.group_size}, a{r.act_bits}" if r.scheme == "fgq_ternary"
                    else f"{_label(r)}, a{r.act_bits}", (r._e, r[column]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    return _finish(fig, ax, "energy per inference, uJ", label, f"{points.model.iloc[0]}: {label} vs energy")


def scheme_figures(points: pd.DataFrame) -> dict:
    if not has_schemes(points):
        return {}
    return {"scheme_bits": accuracy_vs_bits(points), "scheme_energy": accuracy_vs_energy(points)}
