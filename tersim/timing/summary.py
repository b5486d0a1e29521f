"""Whole-model timing: totals, latency, the two speedups, the reconstructed projection formula and energy.

The speedup is a ratio of two simulated designs (docs/TIMING.md, "Summary"):
  * equal PE: the ternary design vs the FP32 baseline exactly as configured (`hw.baseline`);
  * equal area: the baseline array resized to the silicon area of the ternary array (PEs plus
    group-scaling multipliers, from `hw.area`), keeping its aspect ratio, and re-timed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from tersim.config import Accelerator
from tersim.timing.analytic import LayerTiming, baseline_layer_timing, psum_bits
from tersim.timing.pe_kinds import array_pe_kind, codebook_area_um2, pe_area_um2
from tersim.timing.shapes import LayerShape

MAX_ARRAY_DIM = 4096  # ArrayConfig's limit


def projected_speedup_at_eliminated(eliminated: float, r_ternary: float = 16.0, r_int8: float = 4.0) -> float:
    """S = 1 / (e / r_t + (1 - e) / r_8): a fraction e of the work at the ternary rate r_t (multiplications
    eliminated), the rest at the 8-bit rate r_8."""
    return 1.0 / (eliminated / r_ternary + (1.0 - eliminated) / r_int8)


def projected_speedup_formula(group_size: int, r_ternary: float = 16.0, r_int8: float = 4.0) -> float:
    """S(N) = 1 / ((1 - 1/N)/r_t + (1/N)/r_8): a reconstruction, not a formula the FGQ paper states; with
    r_t = 16, r_8 = 4 it reproduces the abstract's ~9x (N = 4) and ~15x (N = 64). It assumes 1 - 1/N of the
    multiplications eliminated (one scale per group of N); `projected_speedup_at_eliminated` evaluates the same
    expression at a model's measured fraction."""
    return projected_speedup_at_eliminated(1.0 - 1.0 / group_size, r_ternary, r_int8)


def scales_per_group(hw: Accelerator) -> int:
    """1, or 2 with `quantization.scales: two` (alpha+ and alpha-)."""
    return 2 if hw.quantization.scales == "two" else 1


def ternary_pe_area_um2(hw: Accelerator, group_size: int | None = None) -> float:
    """One ternary PE: an accumulator-width adder plus the 2-bit stationary weight register. Two scales per
    group: the +1 lanes' and the -1 lanes' partial sums travel side by side, so the PE also holds a second
    partial-sum register (one group's width); it still adds into only one of them per cycle (one adder)."""
    adder = hw.area.int32_add_um2 if hw.accumulator.bits > 16 else hw.area.int16_add_um2
    area = adder + hw.pe.weight_bits * hw.area.register_bit_um2
    if scales_per_group(hw) == 2:
        n = hw.group_scaling.group_size if group_size is None else group_size
        area += psum_bits(hw.pe.act_bits, n, hw.accumulator.bits) * hw.area.register_bit_um2
    return area


def scale_multiplier_area_um2(hw: Accelerator, group_size: int) -> float:
    """One group-scaling multiplier: scale_bits x partial-sum bits, scaled from the 8x8 area."""
    width = psum_bits(hw.pe.act_bits, group_size, hw.accumulator.bits)
    return hw.area.int8_mult_um2 * hw.group_scaling.scale_bits * width / 64


def ternary_array_area_um2(hw: Accelerator, group_size: int, shapes: Sequence[LayerShape] = ()) -> float:
    """PEs of the kind the layers need (tersim.timing.pe_kinds; no shapes: ternary unless pe.kind says
    otherwise), a lut array's codebook registers, and the group-scaling multipliers."""
    pes = hw.array.rows * hw.array.cols
    mults = pes * scales_per_group(hw) if hw.group_scaling.placement == "per_pe" else hw.group_scaling.multipliers
    kind = array_pe_kind(hw, shapes)
    pe_area = pe_area_um2(hw, kind, ternary_pe_area_um2(hw, group_size), shapes)
    return pes * pe_area + codebook_area_um2(hw, kind, shapes) + mults * scale_multiplier_area_um2(hw, group_size)


def fp32_pe_area_um2(hw: Accelerator) -> float:
    """One FP32 PE: multiplier, adder and a 32-bit stationary operand register."""
    return hw.area.fp32_mult_um2 + hw.area.fp32_add_um2 + 32 * hw.area.register_bit_um2


def equal_area_array(area_um2: float, pe_area_um2: float, like_rows: int, like_cols: int) -> tuple[int, int]:
    """The largest array of `pe_area_um2` PEs within `area_um2`, with about the aspect ratio of
    like_rows x like_cols; never smaller than 1x1 (then the baseline gets more area than the ternary)."""
    pes = max(1, math.floor(area_um2 / pe_area_um2))
    rows = max(1, min(pes, math.floor(math.sqrt(pes * like_rows / like_cols))))
    cols = max(1, pes // rows)
    return min(rows, MAX_ARRAY_DIM), min(cols, MAX_ARRAY_DIM)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def model_summary(ternary: list[LayerTiming], baseline: list[LayerTiming], hw: Accelerator,
                  group_size: int) -> dict[str, float | int | str]:
    """One flat row for the model: cycles, latency, speedups (equal PE, equal area), projected speedup formula,
    energy. `ternary[i]` and `baseline[i]` time the same layer; `group_size` is the run's FGQ N."""
    tern_cycles = sum(t.total_cycles for t in ternary)
    base_cycles = sum(t.total_cycles for t in baseline)
    tern_latency = tern_cycles / (hw.clock_mhz * 1e6)
    base_latency = base_cycles / (hw.baseline.clock_mhz * 1e6)

    shapes = [t.shape for t in ternary]
    tern_area = ternary_array_area_um2(hw, group_size, shapes)
    eq_rows, eq_cols = equal_area_array(tern_area, fp32_pe_area_um2(hw), hw.baseline.array.rows, hw.baseline.array.cols)
    hw_eq = hw.with_overrides({"baseline.array.rows": eq_rows, "baseline.array.cols": eq_cols})
    eq_cycles = sum(baseline_layer_timing(t.shape, hw_eq).total_cycles for t in baseline)
    eq_latency = eq_cycles / (hw.baseline.clock_mhz * 1e6)

    tern_energy = sum(t.energy_pj_total for t in ternary)
    base_energy = sum(t.energy_pj_total for t in baseline)
    tern_pes, base_pes = hw.array.rows * hw.array.cols, hw.baseline.array.rows * hw.baseline.array.cols
    return {
        "ternary_cycles": tern_cycles,
        "baseline_cycles": base_cycles,
        "ternary_latency_s": tern_latency,
        "baseline_latency_s": base_latency,
        "speedup_equal_pe": _ratio(base_latency, tern_latency),
        "speedup_equal_area": _ratio(eq_latency, tern_latency),
        "projected_speedup_formula": projected_speedup_formula(group_size),
        "ternary_pes": tern_pes,
        "baseline_pes": base_pes,
        "pe_kind": array_pe_kind(hw, shapes),
        "ternary_area_um2": tern_area,
        "baseline_area_um2": base_pes * fp32_pe_area_um2(hw),
        "equal_area_baseline_array": f"{eq_rows}x{eq_cols}",
        "equal_area_baseline_cycles": eq_cycles,
        "group_scale_stall_cycles": sum(t.stall_group_scale_cycles for t in ternary),
        "tile_reload_cycles": sum(t.tile_reload_cycles for t in ternary),
        "memory_stall_cycles": sum(t.stall_memory_cycles for t in ternary),
        "ternary_pe_utilization": _ratio(sum(t.active_macs for t in ternary), tern_pes * tern_cycles),
        "baseline_pe_utilization": _ratio(sum(t.active_macs for t in baseline), base_pes * base_cycles),
        "ternary_dram_bytes": sum(t.dram_bytes for t in ternary),
        "baseline_dram_bytes": sum(t.dram_bytes for t in baseline),
        "ternary_energy_pj": tern_energy,
        "baseline_energy_pj": base_energy,
        "energy_ratio": _ratio(base_energy, tern_energy),
    }
