"""Analytic timing model: hand-computed cases per dataflow, properties, equal-area logic, summary."""
import math

import numpy as np

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tersim.config import Accelerator
from tersim.timing.analytic import baseline_layer_timing, layer_timing, mult_pj
from tersim.timing.schedule import (Dataflow, FoldClass, _group_scale, compute_cycles, fold_sizes, gemm_dims,
                                    num_folds, queue_stall, unit_queue_stall)
from tersim.timing.shapes import LayerShape
from tersim.timing.summary import equal_area_array, model_summary, projected_speedup_formula

DATAFLOWS = ["weight_stationary", "input_stationary", "output_stationary"]


def make_hw(rows=4, cols=2, dataflow="weight_stationary", multipliers=None, placement="per_column",
            zero_weights="gate", double_buffering=True, **sections) -> Accelerator:
    if multipliers is None:
        multipliers = rows * cols if placement == "per_pe" else cols
    data = {
        "array": {"rows": rows, "cols": cols, "dataflow": dataflow},
        "pe": {"zero_weights": zero_weights},
        "group_scaling": {"multipliers": multipliers, "placement": placement},
        "memory": {"double_buffering": double_buffering},
        "baseline": {"array": {"rows": rows, "cols": cols, "dataflow": dataflow}},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return Accelerator.model_validate(data)


def small_layer(group_size=2, zero_fraction=0.0, **kw) -> LayerShape:
    """1x1 conv, Cin=8, Cout=2 on a 5x2 image: K=8, N=2, P=10."""
    args = dict(name="small", batch=1, in_channels=8, in_h=5, in_w=2, out_channels=2, out_h=5, out_w=2,
                group_size=group_size, zero_fraction=zero_fraction)
    args.update(kw)
    return LayerShape(**args)


# --- shapes -----------------------------------------------------------------------------------------
def test_shape_gemm_view_and_helpers():
    conv = LayerShape.conv2d("c", 64, 128, (56, 56), 3, stride=2, padding=1, groups=2, group_size=4)
    assert (conv.out_h, conv.out_w) == (28, 28)
    assert (conv.gemm_k, conv.gemm_n, conv.gemm_p) == (3 * 3 * 32, 64, 28 * 28)
    assert conv.macs == 2 * conv.gemm_k * conv.gemm_n * conv.gemm_p
    assert conv.scale_segments == 9 * 8 and conv.num_alphas == 128 * 9 * 8
    fc = LayerShape.linear("fc", 512, 1000, batch=4, weight_kind="int8", group_size=512)
    assert (fc.gemm_k, fc.gemm_n, fc.gemm_p) == (512, 1000, 4) and fc.num_alphas == 1000


@pytest.mark.parametrize("bad", [dict(groups=3), dict(zero_fraction=1.5), dict(weight_kind="int4"),
                                 dict(batch=0), dict(group_size=0)])
def test_shape_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        small_layer(**bad)


# --- compute: hand-computed SCALE-Sim cycles --------------------------------------------------------
# Layer: 3x3 conv, Cin=4, Cout=12, 8x8 output -> K=36, N=12, P=64, on an 8x8 array.
@pytest.mark.parametrize("dataflow, expected", [
    ("weight_stationary", 859),    # (36,12,64): folds 5*2=10, per fold 2*8+8+64-2=86 -> 859
    ("input_stationary", 1359),    # (36,64,12): folds 5*8=40, per fold 2*8+8+12-2=34 -> 1359
    ("output_stationary", 799),    # (64,12,36): folds 8*2=16, per fold 8+8+36-2=50 -> 799
])
def test_compute_cycles_hand_computed(dataflow, expected):
    assert compute_cycles(36, 12, 64, 8, 8, dataflow) == expected
    layer = LayerShape.conv2d("c", 4, 12, (8, 8), 3, padding=1)
    hw = make_hw(rows=8, cols=8, dataflow=dataflow, multipliers=64, placement="shared")
    assert layer_timing(layer, hw).compute_cycles == expected
    assert baseline_layer_timing(layer, hw).compute_cycles == expected


def test_os_paper_formula_differs_by_rows_per_fold():
    # SCALE-Sim 3.0.0: rows + cols + T - 2; its paper: 2*rows + cols + T - 2 (16 folds of 8 rows more).
    assert compute_cycles(36, 12, 64, 8, 8, "output_stationary", "paper") == 799 + 16 * 8
    layer = LayerShape.conv2d("c", 4, 12, (8, 8), 3, padding=1)
    hw = make_hw(rows=8, cols=8, dataflow="output_stationary", multipliers=64, placement="shared")
    assert layer_timing(layer, hw, os_formula="paper").compute_cycles == 927
    for df in ("weight_stationary", "input_stationary"):  # the option only concerns os
        assert compute_cycles(36, 12, 64, 8, 8, df, "paper") == compute_cycles(36, 12, 64, 8, 8, df)


def test_grouped_conv_is_groups_gemms_back_to_back():
    dw = LayerShape.conv2d("dw", 32, 32, (10, 10), 3, padding=1, groups=32, group_size=1)
    hw = make_hw(rows=4, cols=4, multipliers=16, placement="shared")
    # per group: K=9, N=1, P=100 -> folds 3*1, per fold 2*4+4+100-2 = 110; 32 groups back to back.
    assert layer_timing(dw, hw).compute_cycles == 32 * 3 * 110 - 1


# --- group-scaling stalls: hand-computed -------------------------------------------------------------
# small_layer on a 4x2 ws array, one multiplier (FIFO) per column: 2 row folds of K=4, T=P=10; per fold
# 4 load cycles + a stream phase of 10+4+2-2 = 14 cycles. A group ending at row e sends column c one sum per
# cycle during [e + c, e + c + 10); the last column (c=1) must empty its FIFO by stream cycle 13.
@pytest.mark.parametrize("group_size, multiplies, stall", [
    (4, 1 * 10 * 2 * 2, 0),                  # 1 group per fold: one sum per cycle per column, no queue
    (2, 2 * 10 * 2 * 2, 2 * 8),              # rows 1, 3: 20 sums arrive in 12 cycles [2, 14): 8 left over
    (1, 4 * 10 * 2 * 2, 2 * 27),             # rows 0-3: 40 sums in 13 cycles [1, 14): 27 left over
    (3, 3 * 10 * 2, 8),                      # groups [0-2][3-5][6-7]: fold 0 ends row 2, fold 1 rows 1, 3;
])                                           # group 3-5 is carried across the fold boundary: one multiply
def test_group_scale_ws_hand_computed(group_size, multiplies, stall):
    t = layer_timing(small_layer(group_size), make_hw())
    assert t.compute_cycles == 2 * 18 - 1
    assert (t.group_multiplies, t.stall_group_scale_cycles) == (multiplies, stall)


def test_queue_stall_lindley():
    # Two sources of 10 items from cycles 1 and 3, one server: 20 items, served from cycle 1 to 12 -> 8 left.
    assert queue_stall(np.array([1, 3]), 10, 12, 1) == 8
    assert queue_stall(np.array([1, 3]), 10, 12, 2) == 0
    assert queue_stall(np.array([0, 0, 0]), 1, 0, 2) == 1       # 3 items in one cycle, 2 served
    assert queue_stall(np.array([], dtype=np.int64), 5, 9, 1) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=40), st.integers(0, 80), st.integers(1, 9))
def test_unit_queue_stall_equals_queue_stall_of_the_items(starts, last, rate):
    """The arrival-histogram form of a width-1 queue gives queue_stall's cycles (bursts, gaps, empty)."""
    starts = np.array(starts, np.int64)
    assert unit_queue_stall(np.bincount(starts), last, rate) == queue_stall(starts, 1, last, rate)


def os_group_scale_per_item(rows, cols, placement, multipliers, sr, scales, classes):
    """The os branch of the group-scale stall one item per PE and group end (queue_stall of every arrival)."""
    per_column = placement == "per_column"
    rate = multipliers // cols if per_column else multipliers
    stall = 0
    for fc in classes:
        ends, cu = np.repeat(fc.ends, scales), fc.cols_used
        last = fc.k + rows + cols - 3
        for ru, rc in zip(*fold_sizes(sr, rows)):
            if ends.size * ru * (1 if per_column else cols) <= rate:
                continue
            pes = (ends[:, None] + np.arange(ru)).ravel()
            if per_column:
                stall += rc * fc.count * queue_stall(pes, 1, last - (cu - 1), rate)
            else:
                stall += rc * fc.count * queue_stall((pes[:, None] + np.arange(cu)).ravel(), 1, last, rate)
    return stall


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.sampled_from(["per_column", "shared"]), st.integers(1, 12),
       st.integers(1, 30), st.sampled_from([1, 2]), st.integers(1, 40), st.data())
def test_os_group_scale_equals_the_per_item_queue(rows, cols, placement, multipliers, sr, scales, k, data):
    """_group_scale's os stall (arrival histograms) equals queuing every PE's group-end item one by one."""
    multipliers = max(multipliers, cols) if placement == "per_column" else multipliers
    classes = []
    for _ in range(data.draw(st.integers(1, 2))):
        ends = np.array(sorted(data.draw(st.sets(st.integers(0, k - 1), min_size=1))), np.int64)
        classes.append(FoldClass(ends, k, data.draw(st.integers(1, cols)), data.draw(st.integers(1, 3))))
    _, stall = _group_scale(rows, cols, Dataflow.OS, placement, multipliers, sr, k, k, scales, classes)
    assert stall == os_group_scale_per_item(rows, cols, placement, multipliers, sr, scales, classes)


def ws_group_scale_per_fold(rows, cols, placement, multipliers, t, t_tile, scales, classes):
    """The ws/is branch of the group-scale stall with every row fold's ends cut out one by one (np.split)."""
    per_column = placement == "per_column"
    rate = multipliers // cols if per_column else multipliers
    stall = 0
    for fc in classes:
        ends, cu = np.repeat(fc.ends, scales), fc.cols_used
        for w in np.split(ends % rows, np.searchsorted(ends, np.arange(rows, fc.k, rows))):
            if w.size * (1 if per_column else cols) <= rate:
                continue
            for tn, tc in zip(*fold_sizes(t, t_tile)):
                last = tn + rows + cols - 3
                if per_column:
                    stall += tc * fc.count * queue_stall(w, tn, last - (cu - 1), rate)
                else:
                    stall += tc * fc.count * queue_stall((w[:, None] + np.arange(cu)).ravel(), tn, last, rate)
    return stall


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.sampled_from(["per_column", "shared"]), st.integers(1, 12),
       st.integers(1, 30), st.integers(1, 12), st.sampled_from([1, 2]), st.integers(1, 40),
       st.sampled_from([Dataflow.WS, Dataflow.IS]), st.data())
def test_ws_is_group_scale_equals_the_fold_by_fold_queue(rows, cols, placement, multipliers, t, t_tile, scales, k,
                                                         df, data):
    """_group_scale's ws/is stall (distinct row folds counted from one table) equals queuing every fold."""
    multipliers = max(multipliers, cols) if placement == "per_column" else multipliers
    classes = []
    for _ in range(data.draw(st.integers(1, 2))):
        ends = np.array(sorted(data.draw(st.sets(st.integers(0, k - 1), min_size=1))), np.int64)
        classes.append(FoldClass(ends, k, data.draw(st.integers(1, cols)), data.draw(st.integers(1, 3))))
    _, stall = _group_scale(rows, cols, df, placement, multipliers, k, t, t_tile, scales, classes)
    assert stall == ws_group_scale_per_fold(rows, cols, placement, multipliers, t, t_tile, scales, classes)


def test_group_scale_os_hand_computed():
    # os on 4x2: (Sr,Sc,T) = (P=10, N=2, K=8): row folds of 4,4,2 pixels, per fold 4+2+8-2 = 12 cycles.
    # N=2 -> groups end at k = 1, 3, 5, 7; PE (r, c) ends group e at stream cycle e + r + c. Column 0 of a
    # 4-pixel fold: 16 sums over cycles 1..10 (the last column's share must be done by cycle 11): 6 left
    # over; a 2-pixel fold: 8 sums over cycles 1..8, none left.
    t = layer_timing(small_layer(2), make_hw(dataflow="output_stationary"))
    assert t.compute_cycles == 3 * 12 - 1
    assert t.group_multiplies == 10 * 2 * 4
    assert t.stall_group_scale_cycles == 6 + 6 + 0


def test_group_scale_is_hand_computed():
    # is on 4x2: (Sr,Sc,T) = (K=8, P=10, N=2): 2 row folds x 5 column folds, stream 2+4+2-2 = 6 cycles.
    # N=1: rows 0-3 end groups, 2 sums each from cycle e (+c): column 0 gets 8 sums in cycles 0..4, 3 left.
    t = layer_timing(small_layer(1), make_hw(dataflow="input_stationary"))
    assert (t.group_multiplies, t.stall_group_scale_cycles) == (10 * 2 * 8, 10 * 3)
    # one shared multiplier: 16 sums over cycles 0..5 -> 10 left per fold
    t = layer_timing(small_layer(1), make_hw(dataflow="input_stationary", placement="shared", multipliers=1))
    assert t.stall_group_scale_cycles == 10 * 10


def test_int8_layer_scales_once_per_kernel_position():
    # The numerics contract clamps the accumulator after every kernel position's scaled sum, so an int8
    # layer is one group per kernel position: a 1x1 layer scales once per output, a 3x3 one nine times.
    layer = small_layer(group_size=8, weight_kind="int8")
    t = layer_timing(layer, make_hw())
    assert t.group_multiplies == 10 * 2 and t.stall_group_scale_cycles == 0
    hw = make_hw()
    per_mac = hw.energy.int32_add_pj + mult_pj(hw.energy, 8, 8)
    per_scale = mult_pj(hw.energy, 8, 32) + hw.energy.int32_add_pj
    assert t.energy_pj_compute == pytest.approx(160 * per_mac + 20 * per_scale)
    conv = LayerShape.conv2d("c", 3, 4, (6, 6), 3, padding=1, weight_kind="int8", group_size=3)
    assert layer_timing(conv, make_hw()).group_multiplies == 36 * 4 * 9


def test_few_multipliers_make_small_n_slower_on_a_real_layer():
    layer = LayerShape.conv2d("l1", 64, 64, (56, 56), 3, padding=1)
    hw = make_hw(rows=16, cols=16, multipliers=16)
    cycles = {n: layer_timing(LayerShape.conv2d("l1", 64, 64, (56, 56), 3, padding=1, group_size=n), hw)
              for n in (1, 4, 16, 64)}
    assert cycles[1].stall_group_scale_cycles > cycles[4].stall_group_scale_cycles > 0
    assert cycles[16].stall_group_scale_cycles == cycles[64].stall_group_scale_cycles == 0
    assert cycles[1].total_cycles > cycles[4].total_cycles > cycles[64].total_cycles
    per_pe = make_hw(rows=16, cols=16, placement="per_pe")
    assert layer_timing(LayerShape(**{**layer.__dict__, "group_size": 1}), per_pe).stall_group_scale_cycles == 0


# --- skip mode -------------------------------------------------------------------------------------
def test_skip_compresses_k_in_ws_and_os_not_is():
    pruned = np.ones((2, 8), bool)
    pruned[:, 4:] = False                               # channels 4..7 zero in both filters: K 8 -> 4
    layer = small_layer(2, zero_fraction=0.5, nonzero=pruned)
    ws = layer_timing(layer, make_hw(zero_weights="skip"))
    assert ws.compute_cycles == 1 * 18 - 1 and ws.active_macs == 4 * 2 * 10
    assert ws.group_multiplies == 2 * 2 * 10            # the two all-zero groups lost their multiplies
    os_ = layer_timing(layer, make_hw(dataflow="output_stationary", zero_weights="skip"))
    assert os_.compute_cycles == 3 * (4 + 2 + 4 - 2) - 1
    is_gate = layer_timing(layer, make_hw(dataflow="input_stationary"))
    is_skip = layer_timing(layer, make_hw(dataflow="input_stationary", zero_weights="skip"))
    assert is_skip.total_cycles == is_gate.total_cycles


def test_skip_drops_only_what_a_whole_fold_can_drop():
    # As many zeros, but not in the same K indices of the fold's two filters: every row is needed.
    staggered = np.ones((2, 8), bool)
    staggered[0, :4] = staggered[1, 4:] = False
    layer = small_layer(2, zero_fraction=0.5, nonzero=staggered)
    gate = layer_timing(layer, make_hw())
    assert layer_timing(layer, make_hw(zero_weights="skip")).as_dict() == gate.as_dict()
    # One filter per column fold (cols=1): each fold drops its own zeros.
    one_col = layer_timing(layer, make_hw(cols=1, zero_weights="skip"))
    assert one_col.compute_cycles < layer_timing(layer, make_hw(cols=1)).compute_cycles
    # No weights known (a bare shape): nothing is known to be zero, skip = gate.
    bare = small_layer(2, zero_fraction=0.5)
    assert layer_timing(bare, make_hw(zero_weights="skip")).as_dict() == layer_timing(bare, make_hw()).as_dict()


def test_nonzero_mask_shape_is_checked():
    with pytest.raises(ValueError, match="nonzero must be"):
        small_layer(2, nonzero=np.ones((2, 7), bool))


# --- memory ----------------------------------------------------------------------------------------
def test_memory_hand_computed():
    # weights 16 codes * 2 bit = 4 B + 8 alphas * 8 bit = 8 B; input 80 B; output 20 B -> 112 B DRAM.
    t = layer_timing(small_layer(2), make_hw())
    assert t.dram_bytes == 112 and t.dram_cycles == math.ceil(112 / 16)
    assert t.stall_memory_cycles == 0                       # hidden behind 35+ compute cycles
    t = layer_timing(small_layer(2), make_hw(double_buffering=False))
    assert t.stall_memory_cycles == 7
    assert t.total_cycles == t.compute_cycles + t.stall_group_scale_cycles + t.tile_reload_cycles + 7
    fp32 = baseline_layer_timing(small_layer(2), make_hw())
    assert fp32.dram_bytes == 16 * 4 + 80 * 4 + 20 * 4


def test_small_buffers_refetch_and_tile():
    layer = LayerShape.conv2d("c", 64, 64, (28, 28), 3, padding=1)
    big = layer_timing(layer, make_hw(rows=16, cols=16, multipliers=16, memory={"output_buffer_kib": 1024}))
    tiny = {"weight_buffer_kib": 0.5, "activation_buffer_kib": 0.5, "output_buffer_kib": 0.5}
    small = layer_timing(layer, make_hw(rows=16, cols=16, multipliers=16, memory=tiny))
    assert small.dram_bytes > big.dram_bytes
    # ws: psums of 16 columns * 4 B in 256 B (half of 0.5 KiB) -> T tiles of 4 pixels: 196 tiles.
    folds = num_folds(*gemm_dims(576, 64, 784, "ws")[:2], 16, 16)
    assert small.tile_reload_cycles == (196 - 1) * folds * (2 * 16 + 16 - 2)
    assert big.tile_reload_cycles == 0


# --- energy ----------------------------------------------------------------------------------------
def test_energy_hand_computed():
    hw = make_hw()
    t = layer_timing(small_layer(2, zero_fraction=0.25), hw)
    # 160 MACs, 120 non-zero adds at int32; 80 group multiplies of 8 x (8+1+1) bits plus an int32 add.
    assert t.group_multiplies == 80
    assert t.energy_pj_compute == pytest.approx(120 * 0.1 + 80 * (0.2 * 80 / 64 + 0.1))
    assert t.energy_pj_sram == pytest.approx(t.sram_bytes * 2.5)
    assert t.energy_pj_dram == pytest.approx(t.dram_bytes * 162.5)
    assert t.energy_pj_total == pytest.approx(t.energy_pj_compute + t.energy_pj_sram + t.energy_pj_dram)
    fp32 = baseline_layer_timing(small_layer(2), hw)
    assert fp32.energy_pj_compute == pytest.approx(160 * (3.7 + 0.9))
    narrow = layer_timing(small_layer(2), make_hw(accumulator={"bits": 16}))
    assert narrow.energy_pj_compute == pytest.approx(160 * 0.05 + 80 * (0.2 * 80 / 64 + 0.05))


def test_as_dict_has_the_report_fields():
    row = layer_timing(small_layer(), make_hw()).as_dict()
    for key in ("compute_cycles", "stall_group_scale_cycles", "stall_memory_cycles", "total_cycles",
                "pe_utilization", "multiplier_utilization", "sram_bytes", "dram_bytes", "energy_pj_compute",
                "energy_pj_sram", "energy_pj_dram", "energy_pj_total"):
        assert key in row
    assert "name" not in row and "macs" not in row  # these come from the layer counts in the report


# --- properties ------------------------------------------------------------------------------------
dims = st.integers(1, 300)
arr = st.integers(1, 32)
dataflows = st.sampled_from(DATAFLOWS)


@given(dims, dims, arr, arr)
def test_folds_formula_counts_tiles(sr, sc, rows, cols):
    tiles = sum(1 for _ in range(0, sr, rows) for _ in range(0, sc, cols))
    assert num_folds(sr, sc, rows, cols) == tiles


@given(dims, dims, dims, arr, arr, dataflows)
def test_cycles_grow_with_the_workload(k, n, p, rows, cols, df):
    base = compute_cycles(k, n, p, rows, cols, df)
    assert base >= (rows if df != "output_stationary" else 0)
    assert compute_cycles(k + 1, n, p, rows, cols, df) >= base
    assert compute_cycles(k, n + 1, p, rows, cols, df) >= base
    assert compute_cycles(k, n, p + 1, rows, cols, df) >= base


@given(st.integers(1, 20), st.integers(1, 20), dims, arr, arr, dataflows)
def test_doubling_the_array_never_hurts_when_it_divides(a, b, t, rows, cols, df):
    # Sr, Sc multiples of 2*rows, 2*cols: halving the folds always pays for the longer fold.
    sr, sc = a * 2 * rows, b * 2 * cols
    k, n, p = {"weight_stationary": (sr, sc, t), "input_stationary": (sr, t, sc),
               "output_stationary": (t, sc, sr)}[df]
    assert gemm_dims(k, n, p, df) == (sr, sc, t)
    base = compute_cycles(k, n, p, rows, cols, df)
    assert compute_cycles(k, n, p, 2 * rows, cols, df) <= base
    assert compute_cycles(k, n, p, rows, 2 * cols, df) <= base


layer_shapes = st.builds(
    lambda cin, cout, hw_, k, s, n, z, kind, seed: LayerShape.conv2d(
        "h", cin, cout, (hw_ + k, hw_ + k), k, stride=s, group_size=cin if kind == "int8" else min(n, cin),
        zero_fraction=z, weight_kind=kind, nonzero=np.random.default_rng(seed).random((cout, k * k * cin)) >= z),
    st.integers(1, 48), st.integers(1, 48), st.integers(0, 12), st.integers(1, 3), st.integers(1, 2),
    st.sampled_from([1, 2, 3, 4, 8, 16, 64]), st.floats(0, 1), st.sampled_from(["ternary", "ternary", "int8"]),
    st.integers(0, 2**16),
)
designs = st.builds(
    lambda rows, cols, df, placement, m, skip, db, kib: make_hw(
        rows=rows, cols=cols, dataflow=df, placement=placement,
        multipliers=rows * cols if placement == "per_pe" else (cols * m if placement == "per_column" else m),
        zero_weights=skip, double_buffering=db,
        memory={"weight_buffer_kib": kib, "activation_buffer_kib": kib, "output_buffer_kib": kib}),
    st.integers(1, 16), st.integers(1, 16), dataflows, st.sampled_from(["per_column", "per_pe", "shared"]),
    st.integers(1, 4), st.sampled_from(["gate", "skip"]), st.booleans(), st.sampled_from([0.25, 4, 64]),
)


@settings(max_examples=300, deadline=None)
@given(layer_shapes, designs)
def test_layer_timing_invariants(layer, hw):
    t = layer_timing(layer, hw)
    assert 0.0 <= t.pe_utilization <= 1.0
    assert 0.0 <= t.multiplier_utilization <= 1.0
    assert t.total_cycles == (t.compute_cycles + t.stall_group_scale_cycles + t.tile_reload_cycles
                              + t.stall_memory_cycles)
    assert min(t.stall_group_scale_cycles, t.tile_reload_cycles, t.stall_memory_cycles) >= 0
    outputs = layer.gemm_p * layer.out_channels
    if layer.weight_kind == "int8" or hw.pe.zero_weights == "skip":  # skip drops all-zero groups' multiplies
        assert t.group_multiplies >= outputs
    else:
        assert t.group_multiplies >= outputs * layer.scale_segments
    if hw.group_scaling.placement == "per_pe":
        assert t.stall_group_scale_cycles == 0
    b = baseline_layer_timing(layer, hw)
    assert 0.0 <= b.pe_utilization <= 1.0 and b.stall_group_scale_cycles == 0


@settings(max_examples=300, deadline=None)
@given(layer_shapes, designs)
def test_skip_is_never_slower_than_gate(layer, hw):
    gate = layer_timing(layer, hw.with_overrides({"pe.zero_weights": "gate"}))
    skip = layer_timing(layer, hw.with_overrides({"pe.zero_weights": "skip"}))
    assert skip.compute_cycles <= gate.compute_cycles
    assert skip.total_cycles <= gate.total_cycles


@settings(max_examples=200, deadline=None)
@given(layer_shapes, designs)
def test_doubling_group_size_never_slows_down(layer, hw):
    # Groups of 2N are unions of two groups of N: never more multiplies in any fold, a smaller alpha table.
    assume(layer.weight_kind == "ternary" and 2 * layer.group_size <= layer.cin_per_group)
    narrow = layer_timing(layer, hw)
    wide = layer_timing(LayerShape(**{**layer.__dict__, "group_size": 2 * layer.group_size}), hw)
    assert wide.total_cycles <= narrow.total_cycles
    assert wide.group_multiplies <= narrow.group_multiplies or hw.pe.zero_weights == "skip"
    if hw.pe.zero_weights == "gate":
        assert wide.stall_group_scale_cycles <= narrow.stall_group_scale_cycles


@settings(max_examples=200, deadline=None)
@given(layer_shapes, designs)
def test_n1_on_one_shared_multiplier_stalls_at_least_the_excess(layer, hw):
    # Every MAC is its own group: one multiplier must do all of them; stall >= multiplies - compute.
    assume(layer.weight_kind == "ternary")
    n1 = LayerShape(**{**layer.__dict__, "group_size": 1})
    t = layer_timing(n1, hw.with_overrides({"group_scaling.placement": "shared", "group_scaling.multipliers": 1}))
    assert t.group_multiplies >= t.active_macs
    # one multiplier works at most one sum per array cycle (tile reloads included)
    assert t.stall_group_scale_cycles + t.tile_reload_cycles >= t.group_multiplies - t.compute_cycles - 1
    if t.active_macs > 2 * (t.compute_cycles + 1):
        assert t.stall_group_scale_cycles > 0


# --- equal area and the summary ----------------------------------------------------------------------
def test_equal_area_array():
    assert equal_area_array(10.0, 1.0, 16, 16) == (3, 3)
    assert equal_area_array(256.0, 1.0, 16, 16) == (16, 16)
    assert equal_area_array(0.5, 1.0, 16, 16) == (1, 1)         # never below one PE
    rows, cols = equal_area_array(128.0, 1.0, 8, 32)             # keeps the 1:4 aspect ratio
    assert (rows, cols) == (5, 25) and rows * cols <= 128


def test_equal_area_equals_equal_pe_when_the_pes_cost_the_same():
    layers = [LayerShape.conv2d("a", 16, 32, (14, 14), 3, padding=1), LayerShape.linear("fc", 64, 10)]
    area = {"int32_add_um2": 100, "register_bit_um2": 0, "int8_mult_um2": 0, "fp32_mult_um2": 60, "fp32_add_um2": 40}
    hw = make_hw(rows=8, cols=8, multipliers=8, area=area)
    tern = [layer_timing(s, hw) for s in layers]
    base = [baseline_layer_timing(s, hw) for s in layers]
    s = model_summary(tern, base, hw, 4)
    assert s["equal_area_baseline_array"] == "8x8"
    assert s["speedup_equal_area"] == pytest.approx(s["speedup_equal_pe"])


def test_summary_fields_and_values():
    hw = make_hw(rows=16, cols=16, multipliers=16)
    layers = [LayerShape.conv2d("a", 32, 64, (28, 28), 3, padding=1, zero_fraction=0.4),
              LayerShape.linear("fc", 256, 10, weight_kind="int8", group_size=256)]
    tern = [layer_timing(s, hw) for s in layers]
    base = [baseline_layer_timing(s, hw) for s in layers]
    s = model_summary(tern, base, hw, 4)
    assert s["ternary_cycles"] == sum(t.total_cycles for t in tern)
    assert s["baseline_cycles"] == sum(t.total_cycles for t in base)
    assert s["ternary_latency_s"] == pytest.approx(s["ternary_cycles"] / 1e9)
    assert s["speedup_equal_pe"] == pytest.approx(s["baseline_latency_s"] / s["ternary_latency_s"])
    assert s["projected_speedup_formula"] == pytest.approx(9.142857, rel=1e-5)
    # FP32 PEs are much bigger than ternary ones: at equal area the baseline array is far smaller.
    rows, cols = map(int, s["equal_area_baseline_array"].split("x"))
    assert rows * cols < 256 and s["speedup_equal_area"] > s["speedup_equal_pe"]
    assert s["energy_ratio"] == pytest.approx(s["baseline_energy_pj"] / s["ternary_energy_pj"])
    assert s["ternary_energy_pj"] == pytest.approx(sum(t.energy_pj_total for t in tern))
    assert 0 < s["ternary_pe_utilization"] <= 1


@pytest.mark.parametrize("n, expected", [(1, 4.0), (4, 9.142857), (64, 15.283582)])
def test_projected_speedup_formula(n, expected):
    assert projected_speedup_formula(n) == pytest.approx(expected, rel=1e-6)
    assert projected_speedup_formula(10**9) == pytest.approx(16.0, rel=1e-6)


def test_projected_speedup_at_measured_elimination_matches_the_formula_at_one_minus_inverse_n():
    from tersim.timing.summary import projected_speedup_at_eliminated

    assert projected_speedup_at_eliminated(0.75) == pytest.approx(projected_speedup_formula(4))
    assert projected_speedup_at_eliminated(0.5) == pytest.approx(1 / (0.5 / 16 + 0.5 / 4))   # two scales at N=4
    assert projected_speedup_at_eliminated(0.0) == pytest.approx(4.0)


@pytest.mark.parametrize("name, short", [("weight_stationary", "ws"), ("output_stationary", "os"),
                                         ("input_stationary", "is")])
def test_dataflow_names(name, short):
    assert Dataflow.of(name) is Dataflow.of(short) is Dataflow(name)
    assert Dataflow.of(name).short == short
    with pytest.raises(ValueError, match="unknown dataflow"):
        Dataflow.of("row_stationary")


# --- the per-point memo of repeated layer geometries (tabulate_points) ------------------------------------
_GEOMETRY_CHANGES = [dict(batch=2), dict(in_channels=16, out_channels=4, groups=2), dict(in_h=6), dict(in_w=3),
                     dict(out_channels=3), dict(out_h=4), dict(out_w=1), dict(kernel_h=3), dict(kernel_w=3),
                     dict(stride_h=2), dict(stride_w=2), dict(groups=2), dict(weight_kind="int8", group_size=8),
                     dict(group_size=3), dict(group_layout="kernel"), dict(scales=2),
                     dict(weight_kind="int8", group_size=8, weight_bits=4)]
_SAME_GEOMETRY = [dict(name="other"), dict(zero_fraction=0.5), dict(weight_kind="int8", group_size=8,
                                                                      weight_scheme="pow2")]


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("placement", ["per_column", "shared", "per_pe"])
def test_layers_timed_with_one_memo_equal_layers_timed_alone(dataflow, placement):
    """A memo shared by a model's layers on one design gives every layer its own timing: layers differing in
    any geometry field do not share an entry (each field changed alone, in both orders), layers differing
    only in name, zero fraction or scheme share the array's work but keep their own name, shape and energy."""
    hw = make_hw(rows=4, cols=2, dataflow=dataflow, placement=placement,
                 multipliers=None if placement == "per_pe" else 2)
    shapes = [small_layer()] + [small_layer(**c) for c in _GEOMETRY_CHANGES + _SAME_GEOMETRY]
    for order in (shapes, shapes[::-1]):
        memo: dict = {}
        for shape in order:
            alone = layer_timing(shape, hw)
            shared = layer_timing(shape, hw, memo=memo)
            assert shared == alone and shared.name == shape.name and shared.shape is shape
        assert len(memo) == 1 + len(_GEOMETRY_CHANGES)   # int8 pow2 shares the int8 (group_size=8) entry
