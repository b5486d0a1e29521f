"""tersim's analytic timing model vs SCALE-Sim 3.0.0 on the same ResNet-18 layers and array.

    .venv/bin/python benchmarks/vs_scalesim.py [--rows 16 --cols 16 --dataflow ws]

Prints, per layer, SCALE-Sim's compute cycles beside tersim's dense compute cycles, analytic and counted by
the cycle-stepped engine on random data (they must be equal for ws/is; os follows SCALE-Sim's formula), tersim's full ternary cycle count (FGQ N=4, stalls included)
and the FP32 baseline's, then both wall times and their ratio. SCALE-Sim runs in a subprocess with the
interpreter from $TERSIM_SCALESIM_PYTHON (or <repo>/.venv-scalesim); the default layers take it about
45 s on a 2-core machine.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tersim.config import Accelerator  # noqa: E402
from tersim.engine.cycle_engine import EngineResult, conv2d_engine, linear_engine  # noqa: E402
from tersim.timing.analytic import baseline_layer_timing, layer_timing  # noqa: E402
from tersim.timing.schedule import Dataflow  # noqa: E402
from tersim.timing.scalesim_bridge import ENV_VAR, run_scalesim, scalesim_python  # noqa: E402
from tersim.timing.shapes import LayerShape  # noqa: E402

FULL = {"ws": "weight_stationary", "is": "input_stationary", "os": "output_stationary"}

# A slice of ResNet-18 at 224x224 (batch 1): strided 3x3 convs, 1x1 downsamples, the classifier.
RESNET18_LAYERS = [
    LayerShape.conv2d("layer2.0.conv1", 64, 128, (56, 56), 3, stride=2, padding=1),
    LayerShape.conv2d("layer2.0.downsample", 64, 128, (56, 56), 1, stride=2),
    LayerShape.conv2d("layer3.0.conv1", 128, 256, (28, 28), 3, stride=2, padding=1),
    LayerShape.conv2d("layer3.0.downsample", 128, 256, (28, 28), 1, stride=2),
    LayerShape.conv2d("layer4.0.downsample", 256, 512, (14, 14), 1, stride=2),
    LayerShape.linear("fc", 512, 1000, weight_kind="int8", group_size=512),
]


def time_tersim(layers: list[LayerShape], hw: Accelerator, min_seconds: float = 1.0) -> float:
    """Mean wall time of one pass of layer_timing over `layers` (repeated for at least min_seconds)."""
    for shape in layers:  # warm up (imports, numpy)
        layer_timing(shape, hw)
    runs, start = 0, time.perf_counter()
    while True:
        for shape in layers:
            layer_timing(shape, hw)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / runs


def engine_run(shape: LayerShape, hw: Accelerator, seed: int = 0) -> EngineResult:
    """The layer stepped by the cycle engine on random ternary weights and uint8 activations."""
    rng = np.random.default_rng(seed)
    k, n = shape.kernel_h, shape.group_size
    x = rng.integers(0, 256, (1, shape.in_channels, shape.in_h, shape.in_w)).astype(np.int32)
    codes = rng.integers(-1, 2, (shape.out_channels, shape.in_channels, k, shape.kernel_w)).astype(np.int8)
    alpha = rng.integers(1, 256, (shape.out_channels, k, shape.kernel_w, math.ceil(shape.in_channels / n)))
    common = dict(group_size=n, acc_bits=32, saturate=True, shift=12, out_lo=0, out_hi=255, hw=hw,
                  weight_kind=shape.weight_kind, name=shape.name)
    bias = np.zeros(shape.out_channels, np.int64)
    if shape.in_h == shape.in_w == shape.out_h == shape.out_w == 1 and k == 1:
        return linear_engine(x[:, :, 0, 0], codes[:, :, 0, 0], alpha[:, 0, 0, :].astype(np.int32), bias, **common)
    pad = max(0, ((shape.out_h - 1) * shape.stride_h + k - shape.in_h + 1) // 2)
    r = conv2d_engine(x, codes, alpha.astype(np.int32), bias, stride=(shape.stride_h, shape.stride_w),
                      padding=(pad, pad), dilation=(1, 1), groups=1, **common)
    assert r.y.shape[2:] == (shape.out_h, shape.out_w), shape
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--cols", type=int, default=16)
    parser.add_argument("--dataflow", choices=sorted(FULL), default="ws")
    parser.add_argument("--group-size", type=int, default=4, help="FGQ N for the ternary column (default 4)")
    parser.add_argument("--scalesim-python", help=f"interpreter with scalesim (default: ${ENV_VAR} or .venv-scalesim)")
    parser.add_argument("--workdir", help="where SCALE-Sim writes (default: a temporary directory)")
    args = parser.parse_args(argv)

    python = args.scalesim_python or scalesim_python()
    if python is None:
        print(f"SCALE-Sim not found: pip install scalesim==3.0.0 'numpy<2.4' into a venv and set {ENV_VAR}",
              file=sys.stderr)
        return 2
    dataflow = FULL[args.dataflow]
    hw = Accelerator.model_validate({
        "array": {"rows": args.rows, "cols": args.cols, "dataflow": dataflow},
        "group_scaling": {"group_size": args.group_size, "multipliers": args.cols, "placement": "per_column"},
        "baseline": {"array": {"rows": args.rows, "cols": args.cols, "dataflow": dataflow}},
    })
    layers = [LayerShape(**{**s.__dict__, "group_size": args.group_size}) if s.weight_kind == "ternary" else s
              for s in RESNET18_LAYERS]

    with tempfile.TemporaryDirectory(prefix="tersim_vs_scalesim_") as tmp:
        workdir = Path(args.workdir or tmp)
        print(f"running SCALE-Sim 3.0.0 ({python}) on {len(layers)} layers, {args.rows}x{args.cols} "
              f"{Dataflow.of(dataflow).short} ...", flush=True)
        theirs = run_scalesim(layers, args.rows, args.cols, dataflow, workdir, python=python)
    ours_s = time_tersim(layers, hw)
    tern = [layer_timing(s, hw) for s in layers]
    base = [baseline_layer_timing(s, hw) for s in layers]
    engine_run(layers[0], hw)                          # load the JIT-compiled kernels (Numba cache) first
    start = time.perf_counter()
    engine = [engine_run(s, hw).cycles for s in layers]
    engine_s = time.perf_counter() - start

    header = (f"{'layer':<22}{'K':>6}{'N':>6}{'P':>7}{'SCALE-Sim':>12}{'analytic':>12}{'engine':>12}{'equal':>7}"
              f"{'ternary N=' + str(args.group_size):>15}{'FP32':>12}")
    print("\n" + header + "\n" + "-" * len(header))
    all_equal = True
    for s, sc, t, e, b in zip(layers, theirs.compute_cycles, tern, engine, base):
        equal = sc == t.compute_cycles == e.compute and t.stall_group_scale_cycles == e.group_stall
        all_equal &= equal
        print(f"{s.name:<22}{s.gemm_k:>6}{s.gemm_n:>6}{s.gemm_p:>7}{sc:>12,}{t.compute_cycles:>12,}{e.compute:>12,}"
              f"{'yes' if equal else 'NO':>7}{t.total_cycles:>15,}{b.total_cycles:>12,}")
    print("-" * len(header))
    print(f"{'total':<41}{sum(theirs.compute_cycles):>12,}{sum(t.compute_cycles for t in tern):>12,}"
          f"{sum(e.compute for e in engine):>12,}{'yes' if all_equal else 'NO':>7}"
          f"{sum(t.total_cycles for t in tern):>15,}{sum(b.total_cycles for b in base):>12,}")
    print("\n(SCALE-Sim, analytic, engine: dense stall-free compute cycles (engine: counted by stepping the array);"
          " ternary: tersim total incl. group-scale, tile and memory stalls; FP32: tersim baseline total)")

    print(f"\nwall time  SCALE-Sim: {theirs.wall_s:.2f} s (run_scale; {theirs.process_s:.2f} s with interpreter start)")
    print(f"           tersim:    {ours_s * 1e3:.3f} ms ({len(layers) / ours_s:,.0f} layers/s, full model incl. "
          "stalls, bytes, energy)")
    print(f"           ratio:     {theirs.wall_s / ours_s:,.0f}x faster")
    print(f"           engine:    {engine_s:.2f} s (cycle-stepped, data-carrying, kernels loaded; "
          f"{theirs.wall_s / engine_s:,.1f}x faster than SCALE-Sim)")
    return 0 if all_equal or dataflow == "output_stationary" else 1


if __name__ == "__main__":
    sys.exit(main())
