"""Plots of sweep and per-layer DataFrames (matplotlib, no pyplot: figures are objects, safe off the main thread).

Which plots a frame allows follows from its columns (`figures_for`): a sweep's points frame gives accuracy and
speedup vs group size, the stall breakdown vs group size and the accuracy/speedup Pareto front; a per-layer
frame (of `run`, or one point of a sweep) gives the cycle and energy breakdowns per layer.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tersim.report.optional import require

POINT_KEYS = ("model", "hw", "group_size", "act_bits")
# (column, axis label, higher is better): the first one present measures quality
QUALITY = (("accuracy_quant", "top-1 accuracy (ternary)", True),
           ("top1_agreement", "top-1 agreement with FP32", True),
           ("weight_rel_error", "weight reconstruction error", False))
CYCLE_PARTS = {"compute_cycles": "compute", "stall_group_scale_cycles": "group-scale stall",
               "tile_reload_cycles": "tile reload", "stall_memory_cycles": "memory stall"}
MODEL_STALLS = {"group_scale_stall_cycles": "group-scale stall", "tile_reload_cycles": "tile reload",
                "memory_stall_cycles": "memory stall"}
ENERGY_PARTS = {"energy_pj_compute": "compute", "energy_pj_sram": "SRAM", "energy_pj_dram": "DRAM"}
FORMATS = ("png", "svg")


def _figure(width: float, height: float):
    require("matplotlib")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def override_columns(frame: pd.DataFrame) -> list[str]:
    """`--set` columns: field paths such as 'array.rows'."""
    return [c for c in frame.columns if "." in c]


def quality_metric(points: pd.DataFrame) -> tuple[str, str, bool] | None:
    for column, label, higher in QUALITY:
        if column in points and points[column].notna().any():
            return column, label, higher
    return None


def _series(points: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One line per act_bits and override combination, sorted by group size."""
    by = ["act_bits", *override_columns(points)]
    out = []
    for values, group in points.groupby(by, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        label = ", ".join([f"{values[0]}-bit act", *(f"{c}={v}" for c, v in zip(by[1:], values[1:]))])
        out.append((label, group.sort_values("group_size")))
    return out


def _group_size_axis(ax, points: pd.DataFrame) -> None:
    sizes = sorted(points.group_size.unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("FGQ group size N")
    ax.grid(alpha=0.3)


def accuracy_speedup_vs_group_size(points: pd.DataFrame):
    """The paper's trade-off: quality falls and speedup rises with N (one line per act_bits)."""
    quality = quality_metric(points)
    fig = _figure(11 if quality else 6, 4)
    axes = fig.subplots(1, 2 if quality else 1, squeeze=False)[0]
    if quality:
        column, label, _ = quality
        for name, s in _series(points):
            axes[0].plot(s.group_size, s[column], marker="o", label=name)
        if column == "accuracy_quant" and "accuracy_fp32" in points:
            axes[0].axhline(points.accuracy_fp32.max(), color="k", ls="--", lw=1, label="FP32")
        axes[0].set_ylabel(label)
        _group_size_axis(axes[0], points)
        axes[0].legend(fontsize=8)
    ax = axes[-1]
    for name, s in _series(points):
        line, = ax.plot(s.group_size, s.speedup_equal_pe, marker="o", label=f"{name} (equal PEs)")
        if "speedup_equal_area" in s:
            ax.plot(s.group_size, s.speedup_equal_area, marker="s", ls=":", color=line.get_color(),
                    label=f"{name} (equal area)")
    if "projected_speedup_formula" in points:
        proj = points.drop_duplicates("group_size").sort_values("group_size")
        ax.plot(proj.group_size, proj.projected_speedup_formula, color="k", ls="--", lw=1,
                label="projected speedup formula (reconstruction)")
    ax.set_yscale("log")
    ax.set_ylabel("speedup over FP32")
    _group_size_axis(ax, points)
    ax.legend(fontsize=8)
    fig.suptitle(f"{points.model.iloc[0]} on {points.hw.iloc[0]}")
    return fig


def stall_breakdown_vs_group_size(points: pd.DataFrame):
    """Whole-model cycles split into compute and each stall cause, one stacked bar per point."""
    labels, parts = _point_labels(points), {}
    stalls = {k: v for k, v in MODEL_STALLS.items() if k in points}
    parts["compute"] = points.ternary_cycles - sum(points[k] for k in stalls)
    parts.update({v: points[k] for k, v in stalls.items()})
    fig = _figure(max(6, 0.45 * len(points) + 2), 4)
    ax = fig.subplots()
    _stacked(ax, labels, parts, vertical=True)
    _categories(ax, labels, vertical=True)
    ax.set_ylabel("cycles")
    fig.suptitle("ternary cycles by cause")
    return fig


def _point_labels(points: pd.DataFrame) -> list[str]:
    extra = override_columns(points)
    return [", ".join([f"N={r.group_size} a{r.act_bits}", *(f"{c}={r[c]}" for c in extra)]) for _, r in points.iterrows()]


def _stacked(ax, labels: list[str], parts: Mapping[str, pd.Series], vertical: bool, offset: float = 0.0,
             width: float = 0.8, colors: list | None = None, **bar_kw) -> None:
    """One stacked bar per label, a segment per part."""
    pos, base = np.arange(len(labels)) + offset, np.zeros(len(labels))
    for i, (name, values) in enumerate(parts.items()):
        values = np.asarray(values, dtype=float)
        kw = dict(label=name, color=colors[i] if colors else None, **bar_kw)
        if vertical:
            ax.bar(pos, values, width, bottom=base, **kw)
        else:
            ax.barh(pos, values, width, left=base, **kw)
        base += values


def _categories(ax, labels: list[str], vertical: bool) -> None:
    """Category tick labels (top to bottom when horizontal) and the legend."""
    ticks = np.arange(len(labels))
    if vertical:
        ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
    else:
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.invert_yaxis()
    ax.legend(fontsize=7, ncols=2)


def layer_cycle_breakdown(layers: pd.DataFrame, title: str = ""):
    """Per layer: compute cycles and each stall cause (the LayerTiming columns), stacked."""
    fig = _figure(8, 1.5 + 0.22 * len(layers))
    ax = fig.subplots()
    labels = list(layers.layer)
    _stacked(ax, labels, {v: layers[k] for k, v in CYCLE_PARTS.items() if k in layers}, vertical=False)
    _categories(ax, labels, vertical=False)
    ax.set_xlabel("cycles")
    fig.suptitle(f"cycles per layer {title}".strip())
    return fig


def layer_energy_breakdown(layers: pd.DataFrame, title: str = ""):
    """Per layer: ternary (solid) vs FP32 baseline (hatched) energy, compute/SRAM/DRAM stacked."""
    fig = _figure(8, 1.5 + 0.35 * len(layers))
    ax = fig.subplots()
    labels, colors = list(layers.layer), [f"C{i}" for i in range(len(ENERGY_PARTS))]
    tern = {f"ternary {v}": layers[k] * 1e-6 for k, v in ENERGY_PARTS.items()}
    base = {f"FP32 {v}": layers[f"baseline_{k}"] * 1e-6 for k, v in ENERGY_PARTS.items()}
    _stacked(ax, labels, tern, vertical=False, offset=-0.2, width=0.4, colors=colors)
    _stacked(ax, labels, base, vertical=False, offset=0.2, width=0.4, colors=colors, alpha=0.45, hatch="//")
    _categories(ax, labels, vertical=False)
    ax.set_xlabel("energy per inference, uJ")
    fig.suptitle(f"energy per layer, ternary vs FP32 {title}".strip())
    return fig


def pareto_mask(quality: np.ndarray, speedup: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """True for points no other point beats in both quality and speedup (ties kept)."""
    q = np.asarray(quality, dtype=float) * (1 if higher_is_better else -1)
    s = np.asarray(speedup, dtype=float)
    dominated = ((q[None, :] >= q[:, None]) & (s[None, :] >= s[:, None])
                 & ((q[None, :] > q[:, None]) | (s[None, :] > s[:, None]))).any(axis=1)
    return ~dominated


def pareto_plot(points: pd.DataFrame):
    """Quality vs speedup over all points; the Pareto front joined and labelled."""
    column, label, higher = quality_metric(points)
    fig = _figure(7, 5)
    ax = fig.subplots()
    front = pareto_mask(points[column], points.speedup_equal_pe, higher)
    ax.scatter(points.speedup_equal_pe, points[column], color="0.6", label="sweep points")
    best = points[front].sort_values("speedup_equal_pe")
    ax.plot(best.speedup_equal_pe, best[column], "o-", color="C3", label="Pareto front")
    for text, (_, r) in zip(_point_labels(best), best.iterrows()):
        ax.annotate(text, (r.speedup_equal_pe, r[column]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("speedup over FP32 (equal PEs)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{points.model.iloc[0]}: {label} vs speedup")
    return fig


def layer_keys(layers: pd.DataFrame) -> list[str]:
    """Columns that tell one point's layers from another's in a sweep's layers frame."""
    return [c for c in layers.columns if c in POINT_KEYS or "." in c]


def one_point(layers: pd.DataFrame, select: Mapping[str, object] | None = None) -> tuple[pd.DataFrame, str]:
    """The layers of one point: `select` (column -> value), else N closest to 4 at the widest activations."""
    keys = layer_keys(layers)
    if not keys:
        return layers, ""
    if select:
        mask = np.ones(len(layers), dtype=bool)
        for column, value in select.items():
            mask &= layers[column].astype(str) == str(value)
        chosen = layers[mask]
    else:
        first = layers.assign(_d=(np.log2(layers.group_size) - 2).abs()).sort_values(
            ["_d", "act_bits"], ascending=[True, False], kind="stable").iloc[0]
        chosen = layers[(layers[keys] == first[keys]).all(axis=1)]
    if chosen.empty:
        raise ValueError(f"no layers match {dict(select or {})}")
    first = chosen.iloc[0]
    chosen = chosen[(chosen[keys] == first[keys]).all(axis=1)]
    label = ", ".join(f"{k}={first[k]}" for k in keys if k not in ("model", "hw"))
    return chosen, f"({label})"


def is_layers_frame(frame: pd.DataFrame) -> bool:
    return "layer" in frame.columns


def figures_for(points: pd.DataFrame | None = None, layers: pd.DataFrame | None = None,
                select: Mapping[str, object] | None = None) -> dict:
    """Every plot the given frames' columns allow, by short name."""
    figs = {}
    if points is not None and len(points) and {"group_size", "speedup_equal_pe"} <= set(points.columns):
        # N only shapes FGQ ternary points (a k-bit scheme's point has one N): the plots over N show those
        fgq = points[points.scheme == "fgq_ternary"] if "scheme" in points else points
        if len(fgq):
            figs["group_size"] = accuracy_speedup_vs_group_size(fgq)
            if "ternary_cycles" in fgq:
                figs["stalls"] = stall_breakdown_vs_group_size(fgq)
        if quality_metric(points) and len(points) > 1:
            figs["pareto"] = pareto_plot(points)
        from tersim.report.scheme_plots import scheme_figures

        figs.update(scheme_figures(points))
    if layers is not None and len(layers) and is_layers_frame(layers):
        chosen, label = one_point(layers, select)
        if set(CYCLE_PARTS) & set(chosen.columns):
            figs["layer_cycles"] = layer_cycle_breakdown(chosen, label)
        if {*ENERGY_PARTS, *(f"baseline_{k}" for k in ENERGY_PARTS)} <= set(chosen.columns):
            figs["layer_energy"] = layer_energy_breakdown(chosen, label)
    return figs


def save_figures(figures: Mapping[str, object], out_dir: str | Path, stem: str) -> list[Path]:
    """`<stem>_<name>.png` and `.svg` for every figure."""
    from tersim.files import atomic_file, ensure_dir

    out_dir = ensure_dir(out_dir)
    paths = []
    for name, fig in figures.items():
        for fmt in FORMATS:
            path = out_dir / f"{stem}_{name}.{fmt}"
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=120)
            paths.append(path)
    return paths
