"""`tersim verify`: the Numba engine against a torch implementation of the same integer arithmetic.

Every node's integer output must be identical in both; separately, each node's dequantized output is compared
with the FP32 model's (stage by stage, as FINN's verify steps do), and the final outputs with the labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tersim.config import Accelerator
from tersim.engine.checks import stepped_matches
from tersim.engine.execute import execute, numba_backend, torch_reference_backend
from tersim.frontend import Graph, execute_float
from tersim.options import RunOptions
from tersim.pipeline import prepare
from tersim.report.metrics import deviation

VERIFY_LIMIT = 256  # samples compared when no limit is given: the torch reference is slow


@dataclass
class VerifyResult:
    layers: pd.DataFrame   # one row per node: identical?, mismatches, deviation from FP32
    summary: pd.DataFrame  # final-output deviation from FP32 (+ accuracies with labels)

    @property
    def bit_exact(self) -> bool:
        return bool(self.layers.identical.all())


def verify(
    hw: Accelerator | str | Path,
    model: Graph | str | Path,
    options: RunOptions | None = None,
    **changes,
) -> VerifyResult:
    """Run both backends on the same quantized model and inputs and compare every node's integers.

    `options`/keywords as for `run` (`batch_size` and `timing` do not apply); without either, at most
    VERIFY_LIMIT samples."""
    if options is None and "limit" not in changes:
        changes["limit"] = VERIFY_LIMIT
    p = prepare(hw, model, RunOptions.of(options, **changes))
    graph, x, y, qgraph = p.graph, p.x, p.y, p.qgraph

    simulated = execute(qgraph, x, numba_backend())
    reference = execute(qgraph, x, torch_reference_backend())
    fp32 = execute_float(graph, x, dtype=np.float32, return_all=True)
    stepped = stepped_matches(qgraph, p.hw, simulated.outputs)   # the cycle-level array, first sample

    rows = []
    for node in graph.nodes:
        sim, ref = simulated.outputs[node.name], reference.outputs[node.name]
        same_shape = sim.shape == ref.shape
        mismatches = int(np.count_nonzero(sim != ref)) if same_shape else max(sim.size, ref.size)
        layer = qgraph.layers[node.name]
        dequantized = sim.astype(np.float64) * 2.0 ** -layer.out.frac
        # a conv with a fused relu/clamp outputs the activation's value: compare it with that
        dev = deviation(fp32[layer.fused_activation or node.name], dequantized)
        rows.append({
            "node": node.name, "op": node.op, "shape": "x".join(map(str, node.shape)),
            "format": f"{'s' if layer.out.signed else 'u'}{layer.out.bits}.{layer.out.frac}",
            "identical": same_shape and mismatches == 0, "mismatches": mismatches,
            "overflow_sim": simulated.overflow_events.get(node.name, 0),
            "overflow_ref": reference.overflow_events.get(node.name, 0),
            "engine_identical": stepped.get(node.name),
            "fp32_max_abs_err": dev["max_abs_err"], "fp32_cosine": dev["cosine"],
        })
    layers = pd.DataFrame(rows)
    layers["identical"] &= (layers.overflow_sim == layers.overflow_ref) & (layers.engine_identical != False)  # noqa: E712
    out = graph.output
    final = deviation(fp32[out], simulated.outputs[out].astype(np.float64) * 2.0 ** -qgraph.output_format.frac, y)
    summary = {"model": graph.name, "group_size": qgraph.group_size, "act_bits": qgraph.act_bits,
               "hw": p.hw.name, "samples": len(x), "nodes": len(layers), "nodes_identical": int(layers.identical.sum()), **final}
    return VerifyResult(layers=layers, summary=pd.DataFrame([summary]))
