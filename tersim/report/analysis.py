"""Range and local-sparsity analysis of quantized weights, per layer and scheme (`tersim analyze`).

For every weighted layer under every (scheme, bits) asked for:
* levels: the code values the scheme can produce and the ones the layer actually uses -- per output channel
  (the most any channel uses: channels have their own scale, zero point or codebook) and over the layer --
  with the layer's histogram;
* dynamic range: log2 of the largest over the smallest non-zero dequantized magnitude (what a narrower
  fixed-point datapath would have to hold);
* global zero fraction;
* local sparsity: the zero fraction of every window of three kinds -- an FGQ group (N consecutive input
  channels at one kernel position, N = the hardware's group size), a kernel (one (output, input) channel's
  kh x kw taps), a filter (one output channel) -- summarised by quantiles and by the share of windows that are
  all zero (what zero-skipping can drop whole) or dense.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tersim.config import Accelerator
from tersim.frontend import Graph
from tersim.options import RunOptions
from tersim.quantize.fgq import dequantize_variant
from tersim.quantize.graph import quantize_weights
from tersim.quantize.schemes import levels

WINDOWS = ("group", "kernel", "filter")
QUANTILES = (0.1, 0.5, 0.9)


def window_zero_fractions(codes: np.ndarray, group_size: int) -> dict[str, np.ndarray]:
    """Zero fraction of every window: FGQ group (Cout, kh, kw, ceil(Cin/N)), kernel (Cout, Cin), filter (Cout)."""
    c4 = codes if codes.ndim == 4 else codes[:, :, None, None]
    zero = (c4 == 0)
    cout, cin, kh, kw = zero.shape
    n = max(1, min(group_size, cin))
    g = -(-cin // n)
    padded = np.zeros((cout, g * n, kh, kw), np.float64)
    counts = np.zeros((g * n,), np.float64)
    padded[:, :cin] = zero
    counts[:cin] = 1
    group = padded.reshape(cout, g, n, kh, kw).sum(2) / counts.reshape(g, n).sum(1)[None, :, None, None]
    return {"group": group.ravel(), "kernel": zero.mean((2, 3)).ravel(), "filter": zero.mean((1, 2, 3))}


def _layer_row(name: str, q: dict, group_size: int) -> dict:
    codes = np.asarray(q["codes"])
    values, counts = np.unique(codes, return_counts=True)
    deq = np.abs(np.asarray(dequantize_variant(codes, np.asarray(q["alpha"], np.float64), q["group_size"],
                                               q["group_layout"], "two" if q["scales"] == 2 else "one"), np.float64))
    nz, mags = deq[deq > 0], np.abs(codes[codes != 0]).astype(np.float64)
    row = {"layer": name, "scheme": q["scheme"], "weight_bits": q["weight_bits"], "weights": codes.size,
           "levels_available": 3 if q["scheme"] == "fgq_ternary" else levels(q["scheme"], q["weight_bits"]),
           "levels_used": max((np.unique(row).size for row in codes.reshape(codes.shape[0], -1)), default=0),
           "levels_used_layer": int(values.size),
           "histogram": json.dumps({int(v): int(c) for v, c in zip(values, counts)}),
           "dynamic_range_bits": float(np.log2(nz.max() / nz.min())) if nz.size else 0.0,
           "code_range_bits": float(np.log2(mags.max() / mags.min())) if mags.size else 0.0,
           "zero_fraction": float(np.mean(codes == 0))}
    for kind, fr in window_zero_fractions(codes, group_size).items():
        for p in QUANTILES:
            row[f"{kind}_zero_p{int(p * 100)}"] = float(np.quantile(fr, p)) if fr.size else 0.0
        row[f"{kind}_all_zero"] = float(np.mean(fr == 1.0)) if fr.size else 0.0
        row[f"{kind}_dense"] = float(np.mean(fr == 0.0)) if fr.size else 0.0
    return row


DEFAULT_POINTS = (("fgq_ternary", 2), ("uniform", 3), ("uniform_asym", 3), ("pow2", 3), ("kmeans", 3))


def analyze(hw: Accelerator | str | Path, model: Graph | str | Path,
            schemes: Sequence[tuple[str, int]] = DEFAULT_POINTS) -> pd.DataFrame:
    """One row per (scheme, bits, layer); weights only (no data needed). `schemes`: (scheme, weight_bits)
    pairs, e.g. [("fgq_ternary", 2), ("uniform", 3), ("pow2", 3), ("kmeans", 3)]."""
    from tersim.config import load_accelerator
    from tersim.frontend import import_model

    hw = hw if isinstance(hw, Accelerator) else load_accelerator(hw)
    graph = model if isinstance(model, Graph) else import_model(model)
    rows = []
    for scheme, bits in schemes:
        point = RunOptions.of(scheme=scheme, weight_bits=int(bits)).apply(hw)
        for name, q in quantize_weights(graph, point).items():
            rows.append({"point": f"{scheme}" if scheme == "fgq_ternary" else f"{scheme} {bits}b",
                         **_layer_row(name, q, point.group_scaling.group_size)})
    return pd.DataFrame(rows)


def analysis_figure(frame: pd.DataFrame, graph: Graph | None = None):
    """Per point: the dynamic range and zero fraction per layer, and the share of all-zero windows."""
    from tersim.report.plots import _figure

    fig = _figure(11, 7)
    axes = fig.subplots(2, 2)
    layers = list(dict.fromkeys(frame.layer))
    x = np.arange(len(layers))
    points = list(dict.fromkeys(frame.point))
    width = 0.8 / max(1, len(points))
    for i, point in enumerate(points):
        f = frame[frame.point == point].set_index("layer").reindex(layers)
        off = (i - (len(points) - 1) / 2) * width
        axes[0, 0].bar(x + off, f.dynamic_range_bits, width, label=point)
        axes[0, 1].bar(x + off, f.zero_fraction, width, label=point)
        axes[1, 0].bar(x + off, f.levels_used, width, label=point)
        axes[1, 1].plot([w for w in WINDOWS], [float((frame[frame.point == point][f"{w}_all_zero"] *
                                                     frame[frame.point == point].weights).sum()
                                                    / frame[frame.point == point].weights.sum()) for w in WINDOWS],
                        "o-", label=point)
    for ax, title in ((axes[0, 0], "dynamic range, bits (max/min non-zero |w|)"), (axes[0, 1], "zero fraction"),
                      (axes[1, 0], "code levels used")):
        ax.set_xticks(x, layers, rotation=60, fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[1, 1].set_title("all-zero windows (weight-weighted share)", fontsize=9)
    axes[1, 1].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    return fig
