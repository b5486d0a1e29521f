"""The accelerator description: one validated, typed object read from a YAML file.

Every field names its unit. Unknown keys are rejected; errors name the file and the field path. Types are strict
(`rows: true` is not 1, `clock_mhz: "fast"` is not a number; an int is fine where a float is wanted) and every
number is finite. The YAML is read defensively (see `read_yaml_mapping`): a size cap, UTF-8 only, no duplicate
keys, bounded nesting, safe tags only.
Default energies/areas: M. Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tersim.errors import ConfigError

Dataflow = Literal["weight_stationary", "output_stationary", "input_stationary"]


MAX_CONFIG_BYTES = 256 * 1024  # a hardware config is a few KB; a cap keeps a huge file from being parsed for minutes
MAX_NESTING = 32  # the schema is 3 levels deep; a 50,000-deep document must not reach Python's recursion limit
MAX_MAGNITUDE = 1e12  # areas, energies, clocks, buffer sizes: far beyond any real design, far below float overflow


def _positive(default: float, description: str | None = None):  # -> pydantic FieldInfo
    """A float field that is finite, > 0 and <= MAX_MAGNITUDE (a clock, area, energy or size)."""
    return Field(default, gt=0, le=MAX_MAGNITUDE, description=description)


def _nonnegative(default: float, description: str | None = None):  # -> pydantic FieldInfo
    """A float field that is finite, >= 0 and <= MAX_MAGNITUDE (an area or energy; 0 leaves a part out)."""
    return Field(default, ge=0, le=MAX_MAGNITUDE, description=description)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ArrayConfig(_Strict):
    """2-D PE array; `dataflow` as in SCALE-Sim (ws/os/is)."""

    rows: int = Field(16, ge=1, le=4096, description="PE rows")
    cols: int = Field(16, ge=1, le=4096, description="PE columns")
    dataflow: Dataflow = "weight_stationary"


class TernaryPEConfig(_Strict):
    """A ternary PE adds, subtracts or skips one activation per cycle."""

    act_bits: Literal[8, 4] = 8
    weight_bits: Literal[2] = 2
    kind: Literal["auto", "ternary", "shift", "lut", "multiplier"] = Field(
        "auto", description="PE kind of the (homogeneous) array: ternary (adder), shift (barrel shifter + adder, "
        "pow2), lut (codebook levels + 8-bit multiplier, kmeans), multiplier (weight x act multiplier + adder); "
        "auto: the most capable kind any weighted layer of the run needs (docs/TIMING.md, PE kinds)"
    )
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
    weight_buffer_kib: float = _positive(64, description="weight SRAM (2-bit codes + alpha table), KiB")
    activation_buffer_kib: float = _positive(128, description="input activation SRAM, KiB")
    output_buffer_kib: float = _positive(64, description="output/partial-sum SRAM, KiB")
    dram_bytes_per_cycle: float = _positive(16, description="DRAM bandwidth, bytes per clock cycle")
    double_buffering: bool = True


class QuantizationConfig(_Strict):
    method: Literal["exact", "twn"] = Field(
        "exact", description="exact: optimal per-group support; twn: 0.7*mean|W| threshold"
    )
    group_layout: Literal["channel", "kernel"] = Field(
        "channel", description="channel: N input channels at one kernel position share alpha (the paper); kernel: N "
        "consecutive weights of the flattened (Cin, kh, kw) filter share alpha"
    )
    scales: Literal["one", "two"] = Field(
        "one", description="one alpha per group (the paper), or two: alpha+ for the +1 codes and alpha- for the -1 "
        "codes (two multiplies per group)"
    )
    correction: Literal["none", "bn_reestimate", "bias_correction", "equalize_bias_correction"] = Field(
        "none", description="accuracy recovery without training, folded into weights/biases (zero hardware cost): "
        "bn_reestimate needs --calib data"
    )
    first_last: Literal["int8", "ternary"] = Field(
        "int8", description="first and last weighted layers: keep 8-bit weights (default) or ternarize"
    )
    calibration_batches: int = Field(4, ge=1, description="input batches used to calibrate activation scales")
    scheme: Literal["fgq_ternary", "uniform", "uniform_asym", "pow2", "kmeans"] = Field(
        "fgq_ternary", description="weight scheme of the layers first_last does not keep at int8 "
        "(tersim/quantize/schemes.py)"
    )
    weight_bits: int = Field(4, ge=2, le=8, description="code bits of the k-bit schemes (fgq_ternary: ignored)")
    granularity: Literal["tensor", "channel"] = Field(
        "channel", description="k-bit schemes: one scale/codebook per layer (tensor) or per output channel"
    )
    class_clusters: int = Field(
        0, ge=0, le=65536, description="k-bit schemes: C >= 1 puts the last layer on the scheme even when first_last "
        "is int8, its rows (classes) clustered into C clusters by k-means, each cluster its own scale/codebook (1: one "
        "for the layer; 0: off)"
    )
    act_ranges: Literal["auto", "calibration", "bn_stats"] = Field(
        "auto", description="activation ranges: calibration on the first input batches, or data-free from the "
        "FP32 model's BN statistics; auto: calibration with --data, bn_stats without"
    )
    act_range_std: float = Field(
        4.0, gt=0, le=100, description="data-free activation ranges: max |mean| + act_range_std * std over channels"
    )

    @model_validator(mode="after")
    def _check_scheme(self) -> "QuantizationConfig":
        from tersim.quantize.schemes import scheme_conflict

        conflict = scheme_conflict(self.scheme, self.weight_bits, self.group_layout, self.scales)
        if conflict:
            raise ValueError(conflict)
        return self


class BaselineConfig(_Strict):
    """The FP32 design the speedup is measured against, simulated with the same timing model."""

    array: ArrayConfig = ArrayConfig()
    clock_mhz: float = _positive(1000)
    memory: MemoryConfig = MemoryConfig(weight_buffer_kib=256, activation_buffer_kib=256, output_buffer_kib=128)


class AreaTable(_Strict):
    """Relative areas (um^2 at 45 nm, Horowitz ISSCC 2014); each finite and >= 0 (0 leaves a part out)."""

    fp32_mult_um2: float = _nonnegative(7700)
    fp32_add_um2: float = _nonnegative(4184)
    int8_mult_um2: float = _nonnegative(282)
    int8_add_um2: float = _nonnegative(36)
    int16_add_um2: float = _nonnegative(67)
    int32_add_um2: float = _nonnegative(137)
    register_bit_um2: float = _nonnegative(
        4.52, description="one flip-flop (stationary operand register bit): NanGate 45 nm DFF_X1")

    @model_validator(mode="after")
    def _fp32_pe_has_area(self) -> "AreaTable":
        if self.fp32_mult_um2 + self.fp32_add_um2 + 32 * self.register_bit_um2 <= 0:
            raise ValueError("the FP32 PE (fp32_mult_um2 + fp32_add_um2 + 32 * register_bit_um2) needs an area > 0: "
                             "the equal-area comparison divides by it")
        return self


class EnergyTable(_Strict):
    """Per-operation and per-byte energies in pJ (Horowitz ISSCC 2014, 45 nm); each finite and >= 0."""

    fp32_mult_pj: float = _nonnegative(3.7)
    fp32_add_pj: float = _nonnegative(0.9)
    int8_mult_pj: float = _nonnegative(0.2)
    int8_add_pj: float = _nonnegative(0.03)
    int16_add_pj: float = _nonnegative(0.05)
    int32_add_pj: float = _nonnegative(0.1)
    int32_mult_pj: float = _nonnegative(3.1)
    sram_pj_per_byte: float = _nonnegative(2.5, description="32 KiB SRAM: 20 pJ per 64-bit access")
    dram_pj_per_byte: float = _nonnegative(162.5, description="DRAM: 1.3 nJ per 64-bit access")

    @model_validator(mode="after")
    def _not_all_zero(self) -> "EnergyTable":
        if not any(self.model_dump().values()):
            raise ValueError("every energy is 0: the energy ratio would be 0/0")
        return self


class Accelerator(_Strict):
    """The whole hardware description (see hw_configs/*.yaml for commented examples)."""

    name: str = Field("tersim", min_length=1, max_length=200, description="used in report file names (sanitised)")
    clock_mhz: float = _positive(1000)
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


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys (naming key and line) and deep nesting, and reads `1e3` as a
    float (YAML 1.2; PyYAML's 1.1 rules would make it the string '1e3', which strict types then refuse)."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"nesting deeper than {MAX_NESTING} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if not isinstance(node, yaml.MappingNode):  # e.g. `!!set 0`: yaml's own check raises
            return super().construct_mapping(node, deep=deep)
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key (a list or mapping): yaml reports it below
                continue
            if first is not None:
                raise yaml.YAMLError(f"duplicate key '{key}' at line {key_node.start_mark.line + 1} "
                                     f"(first at line {first})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str) -> object:
    """One YAML document with tersim's rules (safe tags, no duplicate keys, bounded nesting); YAMLError if bad."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError(f"nesting too deep (more than {MAX_NESTING} levels)") from None
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, AttributeError) as exc:  # PyYAML bugs on odd tags
        raise yaml.YAMLError(f"{type(exc).__name__}: {exc}") from None


def read_yaml_mapping(path: str | Path, what: str = "hardware config") -> dict:
    """The top-level mapping of a small YAML file, read defensively; ConfigError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a {what} YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: {'not a regular file' if path.exists() else 'not found'}; expected a {what} "
                          "YAML file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a {what} is a small YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); a {what} is a YAML text file") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())[:300]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of fields")
    return data


def load_accelerator(path: str | Path) -> Accelerator:
    """Read and validate a hardware YAML file; raise ConfigError naming the file and field."""
    return _validate(read_yaml_mapping(path), str(path))
