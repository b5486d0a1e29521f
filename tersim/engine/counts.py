"""Per-layer operation counts of the integer datapath (docs/ARCHITECTURE.md, "Event counts").

Counts depend only on the weights and shapes, not on the data: a padded position still occupies its PE,
as it does on the array. They are per input sample (batch 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tersim.quantize.graph import QuantizedLayer
from tersim.quantize.layout import groups_per_filter


@dataclass(frozen=True)
class OpCounts:
    macs: int            # FP32-equivalent multiply-accumulates
    adds: int            # MACs with a non-zero weight code (an add/sub on a ternary PE)
    skips: int           # MACs with a zero weight code
    mults: int           # multiplications left: group scaling (+ every MAC of an int8-weight layer, except pow2's shifts)
    scale_mults: int     # group-scaling multiplies alone (two scales: two per group)

    @property
    def mults_eliminated(self) -> float:
        return 1.0 - self.mults / self.macs if self.macs else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"macs": self.macs, "adds": self.adds, "skips": self.skips, "mults": self.mults,
                "scale_mults": self.scale_mults, "mults_eliminated": self.mults_eliminated}


def layer_counts(layer: QuantizedLayer) -> OpCounts:
    """Counts for one conv/linear layer at batch 1."""
    node = layer.node
    codes = layer.codes
    cout, cin_g = codes.shape[0], codes.shape[1]
    kh, kw = (codes.shape[2], codes.shape[3]) if codes.ndim == 4 else (1, 1)
    pixels = int(np.prod(node.shape[1:])) if node.op == "conv2d" else 1
    macs = pixels * codes.size
    adds = pixels * int(np.count_nonzero(codes))
    if layer.weight_kind == "int8" and layer.scheme == "pow2":
        # power-of-two codes: every MAC is a shift, only the per-channel scale multiplies
        scale_mults = pixels * cout * kh * kw
        mults = scale_mults
    elif layer.weight_kind == "int8":
        # One group per kernel position: the contract clamps the accumulator after each kernel position's
        # scaled sum, so the scale is applied kh * kw times per output (as the array and the timing model do).
        scale_mults = pixels * cout * kh * kw
        mults = scale_mults + macs
    else:
        groups = groups_per_filter(cin_g, kh, kw, layer.group_size, layer.group_layout)
        scale_mults = pixels * cout * groups * layer.scales
        mults = scale_mults
    return OpCounts(macs=macs, adds=adds, skips=macs - adds, mults=mults, scale_mults=scale_mults)
