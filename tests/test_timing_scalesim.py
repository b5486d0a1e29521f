"""Cross-check against SCALE-Sim 3.0.0: tersim's dense compute cycles equal SCALE-Sim's.

Skipped unless a SCALE-Sim interpreter is found ($TERSIM_SCALESIM_PYTHON, <repo>/.venv-scalesim, or this
one if it imports scalesim with numpy < 2.4). SCALE-Sim runs in a subprocess into pytest's tmp dir.
ws and is must match exactly; os matches SCALE-Sim's own count (rows + cols + T - 2 per fold), which is
`rows` per fold less than its paper's 2*rows + cols + T - 2 (the known difference, see docs/TIMING.md).
"""
import pytest

from tersim.config import Accelerator
from tersim.timing.analytic import layer_timing
from tersim.timing.schedule import compute_cycles, gemm_dims, num_folds
from tersim.timing.scalesim_bridge import run_scalesim, scalesim_python
from tersim.timing.shapes import LayerShape

PYTHON = scalesim_python()
pytestmark = pytest.mark.skipif(PYTHON is None, reason="SCALE-Sim interpreter not available")

LAYERS = [
    LayerShape.conv2d("conv3x3_pad", 4, 12, (8, 8), 3, padding=1),
    LayerShape.conv2d("conv3x3_s2", 20, 5, (9, 9), 3, stride=2),
    LayerShape.conv2d("conv5x5_s3_pad", 3, 7, (11, 11), 5, stride=3, padding=2),
    LayerShape.conv2d("conv1x1_s2", 16, 24, (10, 10), 1, stride=2),
    LayerShape.conv2d("conv_wide", 2, 3, (6, 12), (1, 3)),
    LayerShape.linear("fc", 40, 10),
]


@pytest.mark.parametrize("rows, cols", [(8, 8), (4, 8), (5, 3)])
@pytest.mark.parametrize("dataflow", ["weight_stationary", "input_stationary", "output_stationary"])
def test_dense_compute_cycles_equal_scalesim(tmp_path, dataflow, rows, cols):
    result = run_scalesim(LAYERS, rows, cols, dataflow, tmp_path, python=PYTHON)
    hw = Accelerator.model_validate({
        "array": {"rows": rows, "cols": cols, "dataflow": dataflow},
        "group_scaling": {"placement": "per_pe", "multipliers": rows * cols},
    })
    for shape, theirs in zip(LAYERS, result.compute_cycles):
        k, n, p = shape.gemm_k, shape.gemm_n, shape.gemm_p
        ours = layer_timing(shape, hw).compute_cycles
        assert ours == compute_cycles(k, n, p, rows, cols, dataflow) == theirs, shape.name
        if dataflow == "output_stationary":
            paper = compute_cycles(k, n, p, rows, cols, dataflow, os_formula="paper")
            assert paper - theirs == num_folds(*gemm_dims(k, n, p, dataflow)[:2], rows, cols) * rows
