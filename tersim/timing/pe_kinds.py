"""PE kinds: what a PE must contain to execute a layer's weight codes, and what it costs in area and energy.

The design (docs/TIMING.md, "PE kinds") is a homogeneous array: every PE is of one kind, and `pe.kind: auto`
picks the most capable kind any weighted layer of the run needs (ternary < shift < lut < multiplier), so a
run with int8 first/last layers pays for multipliers in every PE. Costs are scaled from the same Horowitz
45 nm tables as the group multipliers (an a x b multiplier costs the 8x8 one times a*b/64):

* ternary: accumulator adder + 2-bit weight register (today's PE; tersim.timing.summary.ternary_pe_area_um2);
* multiplier: the ternary PE + a `w x act_bits` multiplier, its weight register w bits wide, w the widest
  multiplier operand any layer needs (uniform: k, uniform_asym: k+1 for q - z, int8 layers: 8);
* shift (pow2): the ternary PE + a barrel shifter of (act_bits + 6) bits x 3 stages of 2:1 muxes (int8 codes
  hold shifts 0..6), a k-bit sign/exponent register; a shift costs an add of the shifter's width;
* lut (kmeans): a multiplier PE with 8-bit operands (the PE holds the decoded 8-bit codebook level) plus,
  per column, the 2**k x 8-bit codebook registers the weights are decoded through on their way in.
"""
from __future__ import annotations

from collections.abc import Iterable

from tersim.config import Accelerator
from tersim.errors import ConfigError

KINDS = ("ternary", "shift", "lut", "multiplier")   # by capability: each can run the layers of the ones before
MUX_PER_REGISTER_BIT = 1.862 / 4.522                 # NanGate 45 nm: MUX2_X1 / DFF_X1 area
SHIFT_STAGES = 3                                     # shifts 0..6
SHIFT_EXTRA_BITS = 6


def layer_pe_kind(weight_kind: str, scheme: str) -> str:
    """The least capable PE kind that executes a layer: ternary codes add, pow2 codes shift, kmeans codes
    look up a level and multiply, any other multi-bit code multiplies."""
    if weight_kind == "ternary":
        return "ternary"
    return {"pow2": "shift", "kmeans": "lut"}.get(scheme, "multiplier")


def multiplier_bits(scheme: str, weight_bits: int) -> int:
    """The weight operand width a multiplier PE needs for these codes."""
    if scheme == "uniform_asym":
        return weight_bits + 1
    if scheme in ("kmeans", "pow2"):
        return 8
    return weight_bits


def array_pe_kind(hw: Accelerator, shapes: Iterable) -> str:
    """`pe.kind`, or for auto the most capable kind the layers (LayerShapes) need. A configured kind that
    cannot execute a layer (e.g. ternary PEs for 8-bit codes: no multiplier) is refused, naming the layer."""
    shapes = list(shapes)
    if hw.pe.kind == "auto":
        needed = [KINDS.index(layer_pe_kind(s.weight_kind, s.weight_scheme)) for s in shapes]
        return KINDS[max(needed, default=0)]
    for s in shapes:
        need = layer_pe_kind(s.weight_kind, s.weight_scheme)
        if KINDS.index(need) > KINDS.index(hw.pe.kind):
            raise ConfigError(f"pe.kind: {hw.pe.kind} PEs cannot execute layer '{s.name}' ({s.weight_bits}-bit "
                              f"{s.weight_scheme} codes need {need} PEs); use pe.kind: auto or {need}")
    return hw.pe.kind


def pe_area_um2(hw: Accelerator, kind: str, ternary_pe_um2: float, shapes: Iterable = ()) -> float:
    """One PE of `kind` able to run every layer in `shapes` (operand widths from the widest layer): the
    ternary PE (`ternary_pe_um2`: adder, 2-bit weight register, a second partial-sum register with two scales)
    with its weight register widened to the codes' bits plus the shifter or multiplier the kind adds."""
    reg, act = hw.area.register_bit_um2, hw.pe.act_bits
    shapes = [s for s in shapes if s.weight_kind != "ternary"]
    if kind == "ternary":
        return ternary_pe_um2
    if kind == "shift":
        k = max((s.weight_bits for s in shapes), default=4)
        shifter = (act + SHIFT_EXTRA_BITS) * SHIFT_STAGES * MUX_PER_REGISTER_BIT * reg
        return ternary_pe_um2 + shifter + (k - hw.pe.weight_bits) * reg
    w = 8 if kind == "lut" else max((multiplier_bits(s.weight_scheme, s.weight_bits) for s in shapes), default=8)
    return ternary_pe_um2 + hw.area.int8_mult_um2 * w * act / 64 + (w - hw.pe.weight_bits) * reg


def codebook_area_um2(hw: Accelerator, kind: str, shapes: Iterable = ()) -> float:
    """lut arrays: per column, the 2**k x 8-bit codebook registers; 0 for other kinds."""
    if kind != "lut":
        return 0.0
    k = max((s.weight_bits for s in shapes if s.weight_scheme == "kmeans"), default=0)
    return hw.array.cols * (2 ** k) * 8 * hw.area.register_bit_um2 if k else 0.0


def mac_extra_pj(hw: Accelerator, weight_kind: str, scheme: str, weight_bits: int) -> float:
    """Energy of one non-zero MAC beyond the accumulator add: 0 (ternary), a shift (pow2), or a
    multiply of the layer's operand widths."""
    kind = layer_pe_kind(weight_kind, scheme)
    act = hw.pe.act_bits
    if kind == "ternary":
        return 0.0
    if kind == "shift" and hw.pe.kind in ("auto", "shift"):
        return hw.energy.int8_add_pj * (act + SHIFT_EXTRA_BITS) / 8
    return hw.energy.int8_mult_pj * multiplier_bits(scheme, weight_bits) * act / 64
