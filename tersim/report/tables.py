"""Turn result DataFrames into what a person reads (terminal tables) and what tools read (CSV), atomically."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tersim.files import atomic_file

LAYER_COLUMNS = {
    "layer": "layer", "out_shape": "out", "weights": "w", "group_size": "N", "macs": "MACs",
    "mults_eliminated": "mult elim", "sparsity": "zeros", "rel_error": "w err", "overflow_events": "ovf",
    "total_cycles": "cycles", "stall_group_scale_cycles": "scale stall", "stall_memory_cycles": "mem stall",
    "pe_utilization": "util", "speedup": "speedup",
}
PERCENT = ("mult elim", "zeros", "util")


def format_layers(layers: pd.DataFrame) -> str:
    cols = [c for c in LAYER_COLUMNS if c in layers.columns]
    table = layers[cols].rename(columns=LAYER_COLUMNS)
    for col in PERCENT:
        if col in table:
            table[col] = table[col].map(lambda v: f"{100 * v:.1f}%")
    if "w err" in table:
        table["w err"] = table["w err"].map(lambda v: f"{v:.3f}")
    if "speedup" in table:
        table["speedup"] = table["speedup"].map(lambda v: f"{v:.2f}x")
    return table.to_string(index=False)


def _fmt(key: str, value: object) -> str:
    if isinstance(value, float):
        if "accuracy" in key or "eliminated" in key or "agreement" in key or "sparsity" in key:
            return f"{100 * value:.2f}%"
        if "speedup" in key or "projection" in key or key.endswith("_ratio"):
            return f"{value:.2f}x"
        return f"{value:.6g}"
    return str(value)


# The headline columns of a sweep's points (terminal table, HTML summary); --set columns go after "hw".
SWEEP_HEADLINE = ("model", "hw", "group_size", "act_bits", "accuracy_fp32", "accuracy_quant", "top1_agreement",
                  "weight_rel_error", "weight_sparsity", "mults_eliminated", "ternary_cycles", "ternary_latency_s",
                  "speedup_equal_pe", "speedup_equal_area", "projected_speedup_formula",
                  "projected_speedup_at_measured", "ternary_energy_pj", "energy_ratio")


def sweep_headline(points: pd.DataFrame) -> pd.DataFrame:
    """The points' key and headline columns, for people (the files keep every column)."""
    extra = [c for c in points.columns if "." in c]
    return points[[c for c in (*SWEEP_HEADLINE[:2], *extra, *SWEEP_HEADLINE[2:]) if c in points]]


def format_summary(summary: pd.DataFrame) -> str:
    row = summary.iloc[0].to_dict()
    width = max(len(k) for k in row)
    return "\n".join(f"  {k:<{width}}  {_fmt(k, v)}" for k, v in row.items())


def write_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV (or Parquet by suffix) atomically: never a half-written report."""
    path = Path(path)
    with atomic_file(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path
