"""Every option a run takes, declared once: `RunOptions`.

`run`, `verify`, `sweep` (each point), `finetune`, the CLI and the Python API all take a `RunOptions`.
Two kinds of fields:

* hardware options (`hardware_option(...)`): a value that also lives in the hardware config, such as the FGQ
  group size (`group_scaling.group_size`). None keeps the config's value. `RunOptions.apply(hw)` folds them
  into the `Accelerator` once, through `Accelerator.with_overrides`, so the quantizer, the kernels, the
  engine and the timing all read the same numbers from the one object (no second copy to disagree with).
* run options: what to evaluate and how (data, limit, batch size, timing source, model loading).

Adding a hardware option is one field here, next to its field in tersim/config/hardware.py: the CLI flag
(`add_hardware_flags`), the override and the sweep's cache key follow from the declaration.
"""
from __future__ import annotations

import argparse
import math
import typing
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tersim.config import Accelerator
from tersim.errors import OptionError

Timing = Literal["engine", "analytic"]
# a data file or image folder, an (x, y) pair, a torch Dataset/DataLoader or a tersim.data.DataSource
Data = str | Path | tuple[np.ndarray, np.ndarray | None] | Any | None
DEFAULT_LOADER_WORKERS = 2  # DataLoader processes decoding images (tersim.data re-exports it)


class HardwareOption(NamedTuple):
    """Where a hardware option lives: its RunOptions field, config path and CLI flag(s)."""

    name: str              # RunOptions field and Python keyword, e.g. "group_size"
    path: str              # dotted Accelerator field, e.g. "group_scaling.group_size"
    flags: tuple[str, ...]  # CLI flags, e.g. ("--group-size", "-N")
    help: str


def hardware_option(path: str, *flags: str, help: str, **constraints: Any) -> Any:
    """Declare a RunOptions field that overrides the Accelerator field `path` (None: the config's value)."""
    return Field(None, description=help, json_schema_extra={"path": path, "flags": list(flags)}, **constraints)


def cli_option(default: Any, *flags: str, help: str, metavar: str | None = None, **constraints: Any) -> Any:
    """Declare a run option with its CLI flag(s): `add_option_flags` generates the flag (type from the field)."""
    return Field(default, description=help, json_schema_extra={"cli_flags": list(flags), "metavar": metavar},
                 **constraints)


class RunOptions(BaseModel):
    """The options of one run (frozen, validated). Hardware options left None come from the config."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    # --- hardware options: folded into the Accelerator by `apply` ---
    group_size: int | None = hardware_option("group_scaling.group_size", "--group-size", "-N", ge=1,
                                             help="FGQ group size N")
    act_bits: Literal[8, 4] | None = hardware_option("pe.act_bits", "--act-bits", help="activation bits")
    method: Literal["exact", "twn"] | None = hardware_option(
        "quantization.method", "--method", help="ternarization method")
    first_last: Literal["int8", "ternary"] | None = hardware_option(
        "quantization.first_last", "--first-last", help="first/last layer weights")
    # FGQ variants (sweep them with --set quantization.X=...)
    group_layout: Literal["channel", "kernel"] | None = hardware_option(
        "quantization.group_layout", "--group-layout",
        help="which weights share alpha: channel (the paper) or kernel")
    scales: Literal["one", "two"] | None = hardware_option(
        "quantization.scales", "--scales", help="alphas per group: one, or two (alpha+/alpha-)")
    correction: Literal["none", "bn_reestimate", "bias_correction", "equalize_bias_correction"] | None = \
        hardware_option("quantization.correction", "--correction",
                        help="accuracy recovery without training, folded into weights/biases")
    # weight schemes beside FGQ ternary (tersim.quantize.schemes; sweep them with --set quantization.X=...)
    scheme: Literal["fgq_ternary", "uniform", "uniform_asym", "pow2", "kmeans"] | None = hardware_option(
        "quantization.scheme", "--scheme", help="weight scheme of the layers first_last does not keep at int8")
    weight_bits: Literal[2, 3, 4, 5, 6, 7, 8] | None = hardware_option(
        "quantization.weight_bits", "--weight-bits", help="code bits of the k-bit schemes (fgq_ternary: 2)")
    granularity: Literal["tensor", "channel"] | None = hardware_option(
        "quantization.granularity", "--granularity", help="k-bit schemes: one scale per layer or per output channel")
    class_clusters: int | None = hardware_option(
        "quantization.class_clusters", "--class-clusters", ge=0, le=65536,
        help="k-bit schemes: C >= 1 clusters the classifier's rows into C clusters, each its own scale/codebook")
    act_ranges: Literal["auto", "calibration", "bn_stats"] | None = hardware_option(
        "quantization.act_ranges", "--act-ranges",
        help="activation ranges: calibration, or data-free from BN statistics (auto: bn_stats without --data)")
    pe_kind: Literal["auto", "ternary", "shift", "lut", "multiplier"] | None = hardware_option(
        "pe.kind", "--pe-kind", help="PE kind of the array (auto: the most capable kind a layer needs)")

    # --- what to evaluate and how ---
    data: Data = Field(None, description="labelled data: a file (.npz/.pt with x, y), an image folder, an (x, y) "
                                         "pair, a torch Dataset/DataLoader; None: synthetic inputs, no accuracy")
    limit: int | None = Field(None, ge=1, description="evaluate at most this many samples")
    batch_size: int = Field(64, ge=1, description="samples per execution batch")
    timing: Timing = Field("engine", description="engine: step the first sample through the cycle-level array; "
                                                 "analytic: closed forms only")
    input_shape: tuple[int, ...] | None = Field(None, description="C,H,W for TorchScript/pickled models")
    trust_pickle: bool = Field(False, description="allow loading a pickled nn.Module (runs code from the file)")

    # --- real models and data (CLI flags from the declarations: `add_option_flags`) ---
    weights: str | Path | None = cli_option(None, "--weights", metavar="FILE", help=(
        "state_dict (.pth via torch.load(weights_only=True), or .safetensors) for a zoo architecture name, "
        "strict key match"))
    preprocess: str | None = cli_option(None, "--preprocess", metavar="RECIPE", help=(
        "image folders: imagenet (default: shorter side 256 bilinear, center crop 224, ImageNet mean/std), "
        "none, or resize=H,W (to [0,1], no normalization)"))
    class_map: str | Path | None = cli_option(None, "--class-map", metavar="FILE", help=(
        "image folders: class folder names in index order (one per line, e.g. ImageNet wnids) or JSON "
        "{name: index}; default: sorted folder names"))
    calib: Data = cli_option(None, "--calib", metavar="DATA", help=(
        "calibration data, separate from --data (file or image folder; in Python also arrays, a Dataset...): "
        "activation ranges are calibrated on its first batches (default: the first batches of --data) and "
        "correction bn_reestimate re-estimates BN statistics on it (required there, must not be --data)"))
    loader_workers: int = cli_option(DEFAULT_LOADER_WORKERS, "--loader-workers", metavar="N", ge=0, help=(
        "DataLoader worker processes decoding images (default: 2; 0 = in this process)"))
    quiet: bool = cli_option(False, "--quiet", "-q", help="no progress bars (they are off when not a TTY)")

    # --- where the evaluation runs (dataset shards for run, points for sweep): at most one ---
    jobs: int | None = cli_option(None, "--jobs", ge=1, help="local worker processes (default: 1, serial)")
    workers: int | None = cli_option(None, "--workers", ge=1,
                                     help="start a dask LocalCluster with this many workers")
    dask: Any = cli_option(None, "--dask", metavar="ADDRESS",
                           help="run on a dask.distributed scheduler (a Client in Python), e.g. tcp://host:8786")

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or any(d < 1 for d in value)):
            raise ValueError(f"every dimension must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _one_place(self) -> "RunOptions":
        given = [name for name in WHERE_FIELDS if getattr(self, name) not in (None, 1 if name == "jobs" else None)]
        if len(given) > 1:
            raise ValueError(f"give at most one of jobs, workers, dask (got {', '.join(given)})")
        return self

    @classmethod
    def of(cls, options: "RunOptions | None" = None, /, **changes: Any) -> "RunOptions":
        """`options` (or the defaults) with `changes` applied, validated; errors name the Python keyword.
        The fields given explicitly stay marked as such (`model_fields_set`)."""
        base = {k: getattr(options, k) for k in options.model_fields_set} if options is not None else {}
        try:
            return cls(**{**base, **changes})
        except ValidationError as exc:
            raise OptionError(_describe(exc)) from None

    def replace(self, **changes: Any) -> "RunOptions":
        return RunOptions.of(self, **changes)

    def hardware_overrides(self) -> dict[str, object]:
        """The hardware options that are set, as {config path: value}."""
        return {o.path: getattr(self, o.name) for o in HARDWARE_OPTIONS if getattr(self, o.name) is not None}

    def apply(self, hw: Accelerator) -> Accelerator:
        """`hw` with the hardware options folded in (the one override path; re-validated)."""
        overrides = self.hardware_overrides()
        return hw.with_overrides(overrides) if overrides else hw

    def settings(self) -> dict[str, object]:
        """The run options that shape results (not hardware, not data, not where or how verbosely it runs)."""
        return {k: v for k, v in dict(self).items() if k not in HARDWARE_FIELDS and k not in NOT_RESULT_FIELDS}

    def where(self) -> dict[str, object]:
        """jobs/workers/dask as keywords for `tersim.parallel.spread`."""
        return {name: getattr(self, name) for name in WHERE_FIELDS}


def _hardware_options() -> tuple[HardwareOption, ...]:
    out = []
    for name, info in RunOptions.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "path" in extra:
            out.append(HardwareOption(name, str(extra["path"]), tuple(extra["flags"]), info.description or ""))
    return tuple(out)


HARDWARE_OPTIONS: tuple[HardwareOption, ...] = _hardware_options()
HARDWARE_FIELDS = frozenset(o.name for o in HARDWARE_OPTIONS)
WHERE_FIELDS = ("jobs", "workers", "dask")
NOT_RESULT_FIELDS = frozenset({"data", "calib", "loader_workers", "quiet", *WHERE_FIELDS})
OPTION_BY_PATH = {o.path: o for o in HARDWARE_OPTIONS}


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(options)"
    if err["type"] == "extra_forbidden":
        return f"unknown option '{where}'; options are {', '.join(RunOptions.model_fields)}"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"option '{where}': {err['msg']}{more}"


def choices(name: str) -> tuple | None:
    """The allowed values of a Literal-typed option (None for free-form ones)."""
    for arg in typing.get_args(RunOptions.model_fields[name].annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


# --- command-line parsing of option values (shared by every sub-command) ---
def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def input_shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape wants comma-separated ints like 1,8,8, got '{text}'") from None
    if any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"--input-shape wants positive ints like 3,32,32, got '{text}'")
    return shape


def finite_float(text: str) -> float:
    """A float that is a number (no inf or nan): a learning rate or weight of inf trains to NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value


def add_hardware_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = (),
                       rename: dict[str, tuple[str, ...]] | None = None) -> None:
    """One CLI flag per hardware option (dest = the RunOptions field), help and choices from its declaration.
    `skip`: options the command sets another way (a sweep's axes); `rename`: other flags for an option."""
    for opt in HARDWARE_OPTIONS:
        if opt.name in skip:
            continue
        allowed = choices(opt.name)
        kind = type(allowed[0]) if allowed else _flag_type(opt.name)
        flags = (rename or {}).get(opt.name, opt.flags)
        parser.add_argument(*flags, dest=opt.name, type=kind, choices=allowed, default=None,
                            help=f"{opt.help} (default: the config's {opt.path})")


def add_option_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The CLI flags of the run options `names` (declared with `cli_option`; dest = the field): booleans are
    switches, counts positive (or non-negative) ints, the rest strings; jobs/workers/dask exclude each other."""
    where = parser.add_mutually_exclusive_group() if any(n in WHERE_FIELDS for n in names) else None
    for name in names:
        info = RunOptions.model_fields[name]
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and "cli_flags" in extra, name
        target = where if name in WHERE_FIELDS else parser
        if info.annotation is bool:
            target.add_argument(*extra["cli_flags"], dest=name, action="store_true", help=info.description)
            continue
        kind = str
        if int in typing.get_args(info.annotation) or info.annotation is int:
            bound = next((m.ge for m in info.metadata if hasattr(m, "ge")), 1)
            kind = nonnegative_int if bound == 0 else positive_int
        target.add_argument(*extra["cli_flags"], dest=name, type=kind, default=info.default, metavar=extra["metavar"],
                            help=info.description)


def option_args(args: argparse.Namespace) -> dict[str, object]:
    """The run options parsed by `add_option_flags`, by RunOptions field."""
    return {name: getattr(args, name) for name, info in RunOptions.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and "cli_flags" in info.json_schema_extra
            and hasattr(args, name)}


def _flag_type(name: str):
    """The argparse type of a free-form hardware option: ints >= 1 unless its declaration allows 0."""
    lower = [getattr(m, "ge", None) for m in RunOptions.model_fields[name].metadata]
    return nonnegative_int if 0 in lower else positive_int


def hardware_args(args: argparse.Namespace) -> dict[str, object]:
    """The hardware options parsed by `add_hardware_flags`, by RunOptions field."""
    return {o.name: getattr(args, o.name) for o in HARDWARE_OPTIONS if hasattr(args, o.name)}
