"""The main job as one function: model + hardware -> ternarized, executed, timed, reported.

    frontend.import_model → quantize.quantize_graph → engine.execute (+ float reference)
    → engine.counts / timing → report DataFrames
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tersim.config import Accelerator, load_accelerator
from tersim.data import load_inputs, model_classes, synthetic_inputs
from tersim.engine.counts import layer_counts
from tersim.engine.checks import LayerSimulation, simulate_checked
from tersim.engine.execute import dequantize_output, execute
from tersim.errors import DataError
from tersim.frontend import Graph, execute_float, import_model
from tersim.options import RunOptions
from tersim.quantize.graph import QuantizedGraph, QuantizedLayer, calibration_batches, quantize_graph
from tersim.report.metrics import deviation
from tersim.timing.analytic import baseline_layer_timing, layer_timing
from tersim.timing.shapes import LayerShape
from tersim.timing.summary import model_summary, projected_speedup_at_eliminated

BASELINE_ENERGY = ("energy_pj_compute", "energy_pj_sram", "energy_pj_dram", "energy_pj_total")
SYNTHETIC_SAMPLES = 16


@dataclass
class RunResult:
    """`layers`: one row per conv/linear layer; `summary`: one row for the model; `qgraph` for further study."""

    layers: pd.DataFrame
    summary: pd.DataFrame
    qgraph: QuantizedGraph


def layer_shape(graph: Graph, layer: QuantizedLayer) -> LayerShape:
    """The timing model's view of one weighted layer (batch 1; linear = 1x1 conv on one pixel)."""
    node = layer.node
    src = graph.node(node.inputs[0]).shape
    if node.op == "linear":
        cin, h, w, cout, oh, ow, kh, kw, (sh, sw), groups = src[0], 1, 1, node.shape[0], 1, 1, 1, 1, (1, 1), 1
    else:
        cin, h, w = src
        cout, oh, ow = node.shape
        kh, kw = node.weight.shape[2:]
        sh, sw = node.attrs["stride"]
        groups = node.attrs["groups"]
    return LayerShape(
        name=node.name, batch=1, in_channels=cin, in_h=h, in_w=w, out_channels=cout, out_h=oh, out_w=ow,
        kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, groups=groups, weight_kind=layer.weight_kind,
        group_size=layer.group_size, zero_fraction=layer.stats["sparsity"],
        nonzero=LayerShape.nonzero_of(layer.codes, layer.group_layout), group_layout=layer.group_layout,
        scales=layer.scales,
    )


def _batches(x: np.ndarray, size: int):
    for start in range(0, len(x), size):
        yield x[start:start + size]


@dataclass
class Prepared:
    """The stages every command shares: validated hardware, lowered graph, inputs, quantized graph."""

    hw: Accelerator
    graph: Graph
    x: np.ndarray
    y: np.ndarray | None
    qgraph: QuantizedGraph


def prepare(hw: Accelerator | str | Path, model: Graph | str | Path, options: RunOptions | None = None,
            **changes) -> Prepared:
    """Load the hardware (with the options folded in), the model and the data, calibrate on the first batches
    and quantize. `options`/keywords as for `run`.

    `options.calib`: unlabelled calibration data for `quantization.correction: bn_reestimate` (a file or an
    (x, y) pair); it must differ from the evaluation data (see `calibration_inputs`)."""
    options = RunOptions.of(options, **changes)
    if not isinstance(hw, Accelerator):
        hw = load_accelerator(hw)
    hw = options.apply(hw)
    graph = model if isinstance(model, Graph) else import_model(model, input_shape=options.input_shape,
                                                                trust_pickle=options.trust_pickle)
    if options.data is None:
        x, y = synthetic_inputs(graph.input_shape, SYNTHETIC_SAMPLES), None
    else:
        x, y = load_inputs(options.data, graph.input_shape, model_classes(graph))
    if options.limit is not None:
        x, y = x[:options.limit], (y[:options.limit] if y is not None else None)
    calib_x, split = calibration_inputs(hw, graph, options.calib, x, options.data)
    qgraph = quantize_graph(graph, calibration_batches(x, hw), hw, calib=calib_x, calibration_split=split)
    return Prepared(hw, graph, x, y, qgraph)


def calibration_inputs(hw: Accelerator, graph: Graph, calib, x_eval: np.ndarray,
                       data) -> tuple[np.ndarray | None, str | None]:
    """The inputs bn_reestimate re-estimates BN statistics on, and the name of their split for the report.

    Refuses (DataError) to run without them, and to calibrate on the evaluation inputs themselves: the
    reported accuracy would then be measured on the data the statistics were fitted to."""
    if hw.quantization.correction != "bn_reestimate":
        return None, None
    if calib is None:
        raise DataError("quantization.correction: bn_reestimate needs unlabelled calibration data (--calib FILE), "
                        "separate from the evaluation data")
    cx, _ = load_inputs(calib, graph.input_shape)
    same_file = not isinstance(calib, tuple) and data is not None and not isinstance(data, tuple) and \
        Path(calib).resolve() == Path(data).resolve()
    if same_file or (cx.shape == x_eval.shape and np.array_equal(cx, x_eval)):
        raise DataError("--calib: the calibration data is the evaluation data; bn_reestimate must be calibrated "
                        "on a separate split (e.g. the training split)")
    if len(cx) == 0:
        raise DataError("--calib: the calibration data is empty")
    return cx, (Path(calib).name if not isinstance(calib, tuple) else "in-memory calibration inputs")


def run(
    hw: Accelerator | str | Path,
    model: Graph | str | Path,
    options: RunOptions | None = None,
    *,
    progress: bool = False,
    **changes,
) -> RunResult:
    """Ternarize `model` with FGQ, execute it bit-exactly on the integer engine and time it on `hw`.

    `options` (a RunOptions) and/or its fields as keywords (data, group_size, act_bits, method, first_last,
    limit, batch_size, timing, input_shape, trust_pickle); keywords win. timing="engine" steps the first
    input sample through the cycle-level array, layer by layer (outputs checked bit for bit against the
    integer kernels, cycles against the analytic model); "analytic" only evaluates the closed forms.
    """
    options = RunOptions.of(options, **changes)
    e = evaluate(hw, model, options, progress=progress)
    simulated = _simulate(e.graph, e.qgraph, e.hw, e.x) if options.timing == "engine" else None
    return tabulate(e.graph, e.qgraph, e.hw, samples=len(e.x), labelled=e.y is not None, overflow=e.overflow,
                    metrics=e.metrics, simulated=simulated)


@dataclass
class Evaluated(Prepared):
    """`prepare` plus the bit-exact execution of every input: overflow events per layer, deviation metrics."""

    overflow: dict[str, int]
    metrics: dict[str, float]


def evaluate(hw: Accelerator | str | Path, model: Graph | str | Path, options: RunOptions | None = None, *,
             progress: bool = False, **changes) -> Evaluated:
    """Quantize and execute every input (integer engine and float reference): everything a report needs that
    does not depend on the array, so sweep points that differ only in hardware share it. `options`/keywords
    as for `run` (`timing` is not used here)."""
    options = RunOptions.of(options, **changes)
    p = prepare(hw, model, options)
    graph, x, y, qgraph = p.graph, p.x, p.y, p.qgraph
    reference, quantized, overflow = [], [], {}
    batch_size = options.batch_size
    batches = _batches(x, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(x) // batch_size), desc="executing", unit="batch", leave=False)
    for xb in batches:
        reference.append(execute_float(graph, xb, dtype=np.float32))
        result = execute(qgraph, xb, keep_all=False)
        quantized.append(dequantize_output(qgraph, result.output(qgraph)))
        for name, events in result.overflow_events.items():
            overflow[name] = overflow.get(name, 0) + events
    metrics = deviation(np.concatenate(reference), np.concatenate(quantized), y)
    return Evaluated(p.hw, graph, x, y, qgraph, overflow, metrics)


def _simulate(graph: Graph, qgraph: QuantizedGraph, hw: Accelerator, x: np.ndarray) -> dict[str, LayerSimulation]:
    """Cycle-stepped timings of every weighted layer (first sample), checked against the references."""
    shapes = {name: layer_shape(graph, layer) for name, layer in qgraph.layers.items() if layer.weight_kind}
    return simulate_checked(qgraph, hw, x, shapes)


def tabulate(
    graph: Graph,
    qgraph: QuantizedGraph,
    hw: Accelerator,
    *,
    samples: int,
    labelled: bool,
    overflow: dict[str, int] | None = None,
    metrics: dict[str, float] | None = None,
    simulated: dict[str, LayerSimulation] | None = None,
    shapes: dict[str, LayerShape] | None = None,
) -> RunResult:
    """Report rows from a quantized graph: op counts, weight stats and analytic timing need no execution,
    so `run` (with the engine's overflow counts and deviation metrics) and timing-only sweeps share them.
    `simulated`: cycle-stepped timings by layer name (the `timing` column says which source each row used).
    `shapes`: layer_shape of the layers by name, when the caller tabulates one qgraph on many hardware points."""
    overflow, metrics = overflow or {}, metrics or {}
    rows, tern_timings, base_timings = [], [], []
    for layer in qgraph.layers.values():
        if layer.weight_kind is None:
            continue
        sim = (simulated or {}).get(layer.node.name)
        if sim is None:
            shape = (shapes or {}).get(layer.node.name) or layer_shape(graph, layer)
            sim = LayerSimulation(layer_timing(shape, hw), baseline_layer_timing(shape, hw), "analytic")
        tern, base = sim.ternary, sim.baseline
        tern_timings.append(tern)
        base_timings.append(base)
        node = layer.node
        rows.append({
            "layer": node.name, "op": node.op, "out_shape": "x".join(map(str, node.shape)),
            "weights": layer.weight_kind, "group_size": layer.group_size,
            **layer_counts(layer).as_dict(),
            "sparsity": layer.stats["sparsity"], "rel_error": layer.stats["rel_error"],
            "overflow_events": overflow.get(node.name, 0),
            **tern.as_dict(),
            "baseline_cycles": base.total_cycles,
            **{f"baseline_{k}": getattr(base, k) for k in BASELINE_ENERGY},
            "speedup": base.total_cycles / tern.total_cycles if tern.total_cycles else float("nan"),
            "timing": sim.source,
        })
    layers = pd.DataFrame(rows)
    effective_n = qgraph.group_size
    timing = model_summary(tern_timings, base_timings, hw, effective_n)
    ternary = layers[layers.weights == "ternary"]
    summary = {
        "model": graph.name, "hw": hw.name, "group_size": qgraph.group_size, "act_bits": qgraph.act_bits,
        "method": qgraph.method, "group_layout": qgraph.group_layout, "scales": qgraph.scales,
        "correction": qgraph.correction, "calibration_split": qgraph.calibration_split,
        "samples": samples, "labelled": labelled,
        "macs": int(layers.macs.sum()), "mults": int(layers.mults.sum()),
        "mults_eliminated": 1 - layers.mults.sum() / layers.macs.sum(),
        "mults_eliminated_ternary_layers": (1 - ternary.mults.sum() / ternary.macs.sum()) if len(ternary) else 0.0,
        "weight_sparsity": float((layers.sparsity * layers.macs).sum() / layers.macs.sum()),
        "weight_rel_error": float((layers.rel_error * layers.macs).sum() / layers.macs.sum()),
        "overflow_events": int(layers.overflow_events.sum()),
        **timing, **metrics,
    }
    # the reconstructed projection at this model's own fraction of eliminated multiplications (all layers)
    summary["projected_speedup_at_measured"] = projected_speedup_at_eliminated(summary["mults_eliminated"])
    return RunResult(layers=layers, summary=pd.DataFrame([summary]), qgraph=qgraph)
