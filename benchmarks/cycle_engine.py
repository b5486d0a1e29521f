"""Cycle-stepped engine throughput vs the analytic model, side by side in one run (one core).

    .venv/bin/python benchmarks/cycle_engine.py [--repeats 3] [--out reports/cycle_engine.txt]

Prints PE-cycles per second (rows * cols * stepped cycles / wall time, median of --repeats) of the engine
on representative ResNet-50 layers and on the whole ResNet-50 (224x224, batch 1, hw_configs/default.yaml:
16x16 weight-stationary, FGQ N=4), `zero_weights: skip` vs gate on one layer (with and without pruned
channels), the ResNet-50 engine wall time, the analytic model's layers per second
on the same layers, and their ratio. NUMBA_NUM_THREADS=1: per-core figures (the engine is serial anyway).
"""
from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tersim.config import load_accelerator  # noqa: E402
from tersim.engine.cycle_engine import conv2d_engine, linear_engine  # noqa: E402
from tersim.engine.execute import execute  # noqa: E402
from tersim.files import write_text_atomic  # noqa: E402
from tersim.pipeline import layer_shape, prepare  # noqa: E402
from tersim.timing.analytic import layer_timing  # noqa: E402

LAYERS = {  # (Cin, Cout, H, kernel, stride): ResNet-50 shapes
    "3x3 64->64 @56": (64, 64, 56, 3, 1),
    "1x1 256->64 @56": (256, 64, 56, 1, 1),
    "3x3 128->128 @28": (128, 128, 28, 3, 1),
    "3x3 512->512 @7": (512, 512, 7, 3, 1),
}


def _median_run(fn, repeats: int) -> tuple[float, object]:
    fn()                                               # compile / warm up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def representative_layers(hw, repeats: int, dataflow: str) -> list[str]:
    rng = np.random.default_rng(0)
    hw = hw.with_overrides({"array.dataflow": dataflow})
    lines = []
    for name, (cin, cout, h, k, s) in LAYERS.items():
        x = rng.integers(0, 256, (1, cin, h, h)).astype(np.int32)
        codes = rng.integers(-1, 2, (cout, cin, k, k)).astype(np.int8)
        alpha = rng.integers(1, 256, (cout, k, k, cin // 4)).astype(np.int32)
        kw = dict(group_size=4, stride=(s, s), padding=(k // 2, k // 2), dilation=(1, 1), groups=1, acc_bits=32,
                  saturate=True, shift=10, out_lo=0, out_hi=255, hw=hw)
        seconds, r = _median_run(lambda: conv2d_engine(x, codes, alpha, np.zeros(cout, np.int64), **kw), repeats)
        lines.append(f"  {name:<18} {dataflow[:6]:<7} {r.stepped_cycles:>10,} cycles {seconds * 1e3:8.1f} ms "
                     f"{r.pe_cycles / seconds:10.3g} PE-cycles/s")
    return lines


def skip_vs_gate(hw) -> list[str]:
    """`zero_weights: skip` on the 3x3 64->64 @56 layer: unstructured ternary zeros vs half the input
    channels pruned (zero in every filter), stepped cycles gate vs skip, checked against the analytic model."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (1, 64, 56, 56)).astype(np.int32)
    alpha = rng.integers(1, 256, (64, 3, 3, 16)).astype(np.int32)
    kw = dict(group_size=4, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, acc_bits=32, saturate=True,
              shift=10, out_lo=0, out_hi=255)
    lines = []
    for label, pruned in (("ternary zeros (~1/3)", 0), ("32 of 64 channels pruned", 32)):
        codes = rng.integers(-1, 2, (64, 64, 3, 3)).astype(np.int8)
        codes[:, 64 - pruned:] = 0
        cycles = {}
        for mode in ("gate", "skip"):
            h = hw.with_overrides({"pe.zero_weights": mode})
            r = conv2d_engine(x, codes, alpha, np.zeros(64, np.int64), hw=h, **kw)
            assert r.cycles.compute == layer_timing(r.shape, h).compute_cycles
            cycles[mode] = r.stepped_cycles
        lines.append(f"  {label:<26} gate {cycles['gate']:>9,}  skip {cycles['skip']:>9,} cycles stepped "
                     f"({cycles['gate'] / cycles['skip']:.2f}x)")
    return lines


def resnet50(hw, repeats: int) -> tuple[list[str], list, float]:
    """The whole ResNet-50 through the engine: each layer gets its real integer input (one sample)."""
    p = prepare(hw, "resnet50", limit=1)
    qgraph = p.qgraph
    values = execute(qgraph, p.x[:1], keep_all=True).outputs
    layers = [layer for layer in qgraph.layers.values() if layer.weight_kind and not layer.is_fused_away]

    def run_all():
        pe_cycles = cycles = 0
        for layer in layers:
            node = layer.node
            common = dict(group_size=layer.group_size, acc_bits=qgraph.acc_bits, saturate=qgraph.saturate,
                          shift=layer.shift, out_lo=layer.out_lo, out_hi=layer.out_hi, hw=hw,
                          weight_kind=layer.weight_kind, name=node.name)
            x = values[node.inputs[0]]
            if node.op == "linear":
                r = linear_engine(x, layer.codes, layer.alpha_q, layer.bias_q, **common)
            else:
                a = node.attrs
                r = conv2d_engine(x, layer.codes, layer.alpha_q, layer.bias_q, stride=tuple(a["stride"]),
                                  padding=tuple(a["padding"]), dilation=tuple(a["dilation"]), groups=a["groups"],
                                  **common)
            assert np.array_equal(r.y, values[node.name]), node.name
            pe_cycles += r.pe_cycles
            cycles += r.stepped_cycles
        return pe_cycles, cycles

    seconds, (pe_cycles, cycles) = _median_run(run_all, repeats)
    shapes = [layer_shape(p.graph, layer) for layer in layers]
    lines = [f"  ResNet-50 (224x224, batch 1, {len(layers)} conv/linear layers, N=4): {cycles:,} cycles stepped, "
             f"outputs bit-identical to the integer kernels",
             f"  engine wall time          {seconds:8.2f} s   ({pe_cycles / seconds:.3g} PE-cycles/s)"]
    return lines, shapes, seconds


def analytic_rate(hw, shapes, min_seconds: float = 2.0) -> float:
    for s in shapes:
        layer_timing(s, hw)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for s in shapes:
            layer_timing(s, hw)
        n += len(shapes)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "reports" / "cycle_engine.txt"))
    args = parser.parse_args(argv)
    hw = load_accelerator(ROOT / "hw_configs" / "default.yaml")
    out = [f"tersim cycle-stepped engine, {hw.array.rows}x{hw.array.cols} array, {os.cpu_count()} cores, "
           f"NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}, median of {args.repeats}",
           "", "representative layers (random data, N=4, 4 group-scaling multipliers per column):"]
    for df in ("weight_stationary", "input_stationary", "output_stationary"):
        out += representative_layers(hw, args.repeats, df)
    out += ["", "zero_weights skip vs gate (3x3 64->64 @56, weight stationary; engine == analytic):"] + skip_vs_gate(hw)
    lines, shapes, engine_s = resnet50(hw, args.repeats)
    out += ["", "whole network (weight stationary):"] + lines
    rate = analytic_rate(hw, shapes)
    engine_rate = len(shapes) / engine_s
    out += [f"  analytic model            {rate:8.0f} layers/s ({len(shapes) / rate * 1e3:.1f} ms for ResNet-50)",
            f"  engine                    {engine_rate:8.2f} layers/s",
            f"  ratio analytic / engine   {rate / engine_rate:8.0f}x"]
    text = "\n".join(out)
    print(text)
    write_text_atomic(args.out, text + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
