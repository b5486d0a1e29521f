"""The accelerator description: one validated, typed object read from a YAML file.

Every field names its unit. Unknown keys are rejected; errors name the file and the field path.
Default energies/areas: M. Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tersim.errors import ConfigError

Dataflow = Literal["weight_stationary", "output_stationary", "input_stationary"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArrayConfig(_Strict):
    """2-D PE array; `dataflow` as in SCALE-Sim (ws/os/is)."""

    rows: int = Field(16, ge=1, le=4096, description="PE rows")
    cols: int = Field(16, ge=1, le=4096, description="PE columns")
    dataflow: Dataflow = "weight_stationary"


class TernaryPEConfig(_Strict):
    """A ternary PE adds, subtracts or skips one activation per cycle."""

    act_bits: Literal[8, 4] = 8
    weight_bits: Literal[2] = 2
    zero_weights: Literal["gate", "skip"] = Field(
        "gate", description="gate: a zero weight still takes its cycle; skip: K indices zero in every filter of a "
        "column fold are not stepped (docs/TIMING.md section 3)"
    )


class GroupScalingConfig(_Strict):
    """FGQ: after N adds a group's partial sum is multiplied by its fixed-point alpha."""

    group_size: int = Field(4, ge=1, description="FGQ group size N (weights per alpha); --group-size overrides")
    multipliers: int = Field(16, ge=1, description="number of group-scaling multipliers")
    placement: Literal["per_column", "per_pe", "shared"] = "per_column"
    scale_bits: int = Field(8, ge=2, le=16, description="bits of the unsigned fixed-point alpha")


class AccumulatorConfig(_Strict):
    bits: int = Field(32, ge=8, le=48, description="accumulator width in bits")
    overflow: Literal["saturate", "wrap"] = "saturate"


class MemoryConfig(_Strict):
    weight_buffer_kib: float = Field(64, gt=0, description="weight SRAM (2-bit codes + alpha table), KiB")
    activation_buffer_kib: float = Field(128, gt=0, description="input activation SRAM, KiB")
    output_buffer_kib: float = Field(64, gt=0, description="output/partial-sum SRAM, KiB")
    dram_bytes_per_cycle: float = Field(16, gt=0, description="DRAM bandwidth, bytes per clock cycle")
    double_buffering: bool = True


class QuantizationConfig(_Strict):
    method: Literal["exact", "twn", "twn_asym"] = Field(
        "exact", description="exact: optimal per-group support; twn: 0.7*mean|W| threshold"
    )
    first_last: Literal["int8", "ternary"] = Field(
        "int8", description="first and last weighted layers: keep 8-bit weights (default) or ternarize"
    )
    calibration_batches: int = Field(4, ge=1, description="input batches used to calibrate activation scales")


class BaselineConfig(_Strict):
    """The FP32 design the speedup is measured against, simulated with the same timing model."""

    array: ArrayConfig = ArrayConfig()
    clock_mhz: float = Field(1000, gt=0)
    memory: MemoryConfig = MemoryConfig(weight_buffer_kib=256, activation_buffer_kib=256, output_buffer_kib=128)


class AreaTable(_Strict):
    """Relative areas (um^2 at 45 nm, Horowitz ISSCC 2014)."""

    fp32_mult_um2: float = 7700
    fp32_add_um2: float = 4184
    int8_mult_um2: float = 282
    int8_add_um2: float = 36
    int16_add_um2: float = 67
    int32_add_um2: float = 137
    register_bit_um2: float = Field(
        4.52, description="one flip-flop (stationary operand register bit): NanGate 45 nm DFF_X1"
    )


class EnergyTable(_Strict):
    """Per-operation and per-byte energies in pJ (Horowitz ISSCC 2014, 45 nm)."""

    fp32_mult_pj: float = 3.7
    fp32_add_pj: float = 0.9
    int8_mult_pj: float = 0.2
    int8_add_pj: float = 0.03
    int16_add_pj: float = 0.05
    int32_add_pj: float = 0.1
    int32_mult_pj: float = 3.1
    sram_pj_per_byte: float = Field(2.5, description="32 KiB SRAM: 20 pJ per 64-bit access")
    dram_pj_per_byte: float = Field(162.5, description="DRAM: 1.3 nJ per 64-bit access")


class Accelerator(_Strict):
    """The whole hardware description (see hw_configs/*.yaml for commented examples)."""

    name: str = "tersim"
    clock_mhz: float = Field(1000, gt=0)
    array: ArrayConfig = ArrayConfig()
    pe: TernaryPEConfig = TernaryPEConfig()
    group_scaling: GroupScalingConfig = GroupScalingConfig()
    accumulator: AccumulatorConfig = AccumulatorConfig()
    memory: MemoryConfig = MemoryConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    baseline: BaselineConfig = BaselineConfig()
    area: AreaTable = AreaTable()
    energy: EnergyTable = EnergyTable()

    @model_validator(mode="after")
    def _check_multipliers(self) -> "Accelerator":
        if self.group_scaling.placement == "per_pe" and self.group_scaling.multipliers != self.array.rows * self.array.cols:
            raise ValueError(
                f"group_scaling.multipliers must equal array.rows*array.cols "
                f"({self.array.rows * self.array.cols}) when placement is per_pe"
            )
        if self.group_scaling.placement == "per_column" and self.group_scaling.multipliers % self.array.cols:
            raise ValueError(
                f"group_scaling.multipliers ({self.group_scaling.multipliers}) must be a multiple of "
                f"array.cols ({self.array.cols}) when placement is per_column"
            )
        return self

    def with_overrides(self, overrides: dict[str, object]) -> "Accelerator":
        """Return a copy with dotted-path fields replaced, e.g. {'array.rows': 32}; re-validated."""
        data = self.model_dump()
        for path, value in overrides.items():
            node = data
            keys = path.split(".")
            for key in keys[:-1]:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"override '{path}': no such section '{key}'")
                node = node[key]
            if keys[-1] not in node:
                raise ConfigError(f"override '{path}': no such field '{keys[-1]}'")
            node[keys[-1]] = value
        return _validate(data, f"overrides {overrides}")


def _validate(data: object, source: str) -> Accelerator:
    try:
        return Accelerator.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: field '{where}': {err['msg']}{more}") from None


def load_accelerator(path: str | Path) -> Accelerator:
    """Read and validate a hardware YAML file; raise ConfigError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: hardware config not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of fields")
    return _validate(data, str(path))
