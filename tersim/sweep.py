"""Group-size x activation-bits sweeps: one tidy DataFrame row per point (the paper's central study)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from tersim.config import Accelerator, load_accelerator
from tersim.frontend import Graph, import_model
from tersim.pipeline import run

SWEEP_COLUMNS = (
    "model", "hw", "group_size", "act_bits", "accuracy_fp32", "accuracy_quant", "top1_agreement", "cosine",
    "weight_rel_error", "weight_sparsity", "mults_eliminated", "mults_eliminated_ternary_layers",
    "ternary_cycles", "latency_s", "speedup_equal_pe", "speedup_equal_area", "paper_projection",
)


def sweep(
    hw: Accelerator | str | Path,
    model: Graph | str | Path,
    group_sizes: list[int],
    act_bits: list[int],
    *,
    progress: bool = False,
    **options,
) -> pd.DataFrame:
    """Run every (N, act_bits) point on the same model, hardware and data; `options` as for tersim.run."""
    hw = hw if isinstance(hw, Accelerator) else load_accelerator(hw)
    graph = model if isinstance(model, Graph) else import_model(
        model, input_shape=options.pop("input_shape", None), trust_pickle=options.pop("trust_pickle", False))
    points = list(itertools.product(group_sizes, act_bits))
    if progress:
        from tqdm import tqdm

        points = tqdm(points, desc="sweep", unit="point")
    rows = []
    for n, bits in points:
        result = run(hw, graph, group_size=n, act_bits=bits, **options)
        row = result.summary.iloc[0].to_dict()
        layers = result.layers
        row["weight_rel_error"] = float((layers.rel_error * layers.macs).sum() / layers.macs.sum())
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame[[c for c in SWEEP_COLUMNS if c in frame.columns]]
