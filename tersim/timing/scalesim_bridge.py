"""Run SCALE-Sim 3.0.0 on LayerShapes, for the cross-check test and benchmarks/vs_scalesim.py.

SCALE-Sim needs numpy < 2.4, so it usually lives in its own virtualenv and runs in a subprocess:
the interpreter is $TERSIM_SCALESIM_PYTHON, else <repo>/.venv-scalesim/bin/python, else this one if it
can import scalesim. Its gotchas are handled here: no padding (we pass padded ifmap
sizes), a trailing comma on every CSV line, a mandatory layout file, errors that still exit 0 (we check
COMPUTE_REPORT.csv exists), "DP" in a layer name means depthwise (we name layers L0, L1, ...).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tersim.timing.schedule import Dataflow
from tersim.timing.shapes import LayerShape

ENV_VAR = "TERSIM_SCALESIM_PYTHON"
REPO_VENV = Path(__file__).resolve().parents[2] / ".venv-scalesim" / "bin" / "python"
_MARK = "TERSIM_SCALESIM_RESULT "

_RUNNER = f"""
import json, sys, time
from scalesim.scale_sim import scalesim
a = json.loads(sys.argv[1])
sim = scalesim(save_disk_space=True, verbose=False, config=a["config"], topology=a["topology"], layout=a["layout"])
t0 = time.perf_counter()
sim.run_scale(top_path=a["out"])
print("{_MARK}" + json.dumps({{"wall_s": time.perf_counter() - t0}}))
"""

_CONFIG = """[general]
run_name = {run_name}

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {sram_kib}
FilterSramSzkB: {sram_kib}
OfmapSramSzkB: {sram_kib}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: 10
Dataflow: {dataflow}
MemoryBanks: 1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""

_LAYOUT_HEADER = (
    "Layer name, IFMAP Height Intraline Factor, IFMAP Width Intraline Factor, Filter Height Intraline Factor, "
    "Filter Width Intraline Factor, Channel Intraline Factor, Num Filter Intraline Factor, IFMAP Height Intraline "
    "Order, IFMAP Width Intraline Order, Channel Intraline Order, IFMAP Height Interline Order, IFMAP Width Interline "
    "Order, Channel Interline Order, Num Filter Intraline Order, Channel Intraline Order, Filter Height Intraline "
    "Order, Filter Width Intraline Order, Num Filter Interline Order, Channel Interline Order, Filter Height "
    "Interline Order, Filter Width Interline Order,"
)
_LAYOUT_ROW = "1, 1, 1, 1, 1, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3,"


def scalesim_python() -> str | None:
    """The interpreter that can run SCALE-Sim, or None (then callers skip)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env if Path(env).is_file() else None
    if REPO_VENV.is_file():
        return str(REPO_VENV)
    if importlib.util.find_spec("scalesim") is not None:
        import numpy as np

        if tuple(int(v) for v in np.__version__.split(".")[:2]) < (2, 4):
            return sys.executable
    return None


def topology_row(name: str, shape: LayerShape) -> str:
    """One SCALE-Sim conv row, padded ifmap so that its output size equals ours: ih = (OH-1)*s + kh."""
    if shape.groups != 1 or shape.batch != 1 or shape.stride_h != shape.stride_w:
        raise ValueError(f"{shape.name}: SCALE-Sim cross-check needs groups=1, batch=1 and a square stride")
    ih = (shape.out_h - 1) * shape.stride_h + shape.kernel_h
    iw = (shape.out_w - 1) * shape.stride_w + shape.kernel_w
    return (f"{name}, {ih}, {iw}, {shape.kernel_h}, {shape.kernel_w}, {shape.in_channels}, "
            f"{shape.out_channels}, {shape.stride_h},")


@dataclass(frozen=True)
class ScaleSimResult:
    compute_cycles: list[int]   # per layer: SCALE-Sim "Total Cycles" - "Stall Cycles"
    total_cycles: list[int]     # per layer: "Total Cycles" (compute incl. its memory stalls)
    wall_s: float               # time inside scalesim.run_scale
    process_s: float            # whole subprocess, interpreter start included


def run_scalesim(shapes: list[LayerShape], rows: int, cols: int, dataflow: str, workdir: str | Path,
                 *, python: str | None = None, sram_kib: int = 1024, timeout_s: float = 1800) -> ScaleSimResult:
    """Write config/topology/layout into `workdir`, run SCALE-Sim, parse COMPUTE_REPORT.csv."""
    python = python or scalesim_python()
    if python is None:
        raise RuntimeError(f"SCALE-Sim not available: set {ENV_VAR} to a python with scalesim installed")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_name = f"tersim_{Dataflow.of(dataflow).short}_{rows}x{cols}"
    (workdir / "scale.cfg").write_text(_CONFIG.format(run_name=run_name, rows=rows, cols=cols, sram_kib=sram_kib,
                                                      dataflow=Dataflow.of(dataflow).short))
    names = [f"L{i}" for i in range(len(shapes))]
    topo = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"]
    topo += [topology_row(name, s) for name, s in zip(names, shapes)]
    (workdir / "topology.csv").write_text("\n".join(topo) + "\n")
    (workdir / "layout.csv").write_text("\n".join([_LAYOUT_HEADER] + [f"{n}, {_LAYOUT_ROW}" for n in names]) + "\n")
    out = workdir / "out"
    args = {"config": str(workdir / "scale.cfg"), "topology": str(workdir / "topology.csv"),
            "layout": str(workdir / "layout.csv"), "out": str(out)}

    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", _RUNNER, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout_s, cwd=workdir)
    process_s = time.perf_counter() - t0
    report = out / run_name / "COMPUTE_REPORT.csv"
    marks = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode != 0 or not report.is_file() or not marks:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"SCALE-Sim run failed (exit {proc.returncode}, report exists: {report.is_file()}):\n{tail}")
    compute, total = [], []
    for line in report.read_text().splitlines()[1:]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) > 3 and cells[0]:
            total.append(int(float(cells[2])))
            compute.append(int(float(cells[2])) - int(float(cells[3])))
    if len(compute) != len(shapes):
        raise RuntimeError(f"SCALE-Sim reported {len(compute)} layers, expected {len(shapes)}")
    wall_s = json.loads(marks[-1][len(_MARK):])["wall_s"]
    return ScaleSimResult(compute_cycles=compute, total_cycles=total, wall_s=wall_s, process_s=process_s)
