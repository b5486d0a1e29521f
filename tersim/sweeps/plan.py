"""The plan of a sweep: which points, on which hardware, under which cache key, in which units of work.

A point is `pipeline.run(hw + overrides, model, options + (N, act_bits))`; its key hashes everything the
result depends on (the graph's and the data's content, the hardware with the options folded in)."""
from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import yaml

from tersim import __version__
from tersim.config import Accelerator
from tersim.config.hardware import parse_yaml
from tersim.data import array_digest, update_array_hash
from tersim.errors import ConfigError
from tersim.frontend import Graph
from tersim.options import OPTION_BY_PATH, RunOptions

KEY_COLUMNS = ("model", "hw", "group_size", "act_bits")
AXES = {"group_scaling.group_size": "group_sizes", "pe.act_bits": "act_bits"}  # swept by run_sweep's arguments
Combo = tuple[tuple[str, object], ...]  # the override values of one point, as (field path, value) pairs


def parse_set(items: Sequence[str]) -> dict[str, list]:
    """`["array.rows=8,16", "pe.zero_weights=gate,skip"]` -> {"array.rows": [8, 16], ...} (YAML scalars)."""
    overrides: dict[str, list] = {}
    for item in items:
        path, sep, values = item.partition("=")
        if not sep or not path.strip() or not values.strip():
            raise ConfigError(f"--set '{item}': expected FIELD.PATH=VALUE[,VALUE...], e.g. array.rows=8,16")
        try:
            overrides[path.strip()] = [parse_yaml(v) for v in values.split(",")]
        except yaml.YAMLError:
            raise ConfigError(f"--set '{item}': field '{path.strip()}': values are not YAML scalars") from None
    return overrides


def hardware_points(hw: Accelerator, overrides: Mapping[str, Sequence],
                    options: RunOptions) -> list[tuple[Combo, Accelerator]]:
    """Every combination of override values, each validated now: a bad field fails before any work.
    A swept field may be neither a sweep axis nor a hardware option the run fixes (`options`)."""
    fixed = options.hardware_overrides()
    for path in overrides:
        if path in AXES:
            raise ConfigError(f"overrides: '{path}' is a sweep axis: give its values as {AXES[path]}")
        if path in fixed:
            raise ConfigError(f"overrides: '{path}' is swept and also fixed by the option "
                              f"{OPTION_BY_PATH[path].name}={fixed[path]!r}: give one of them")
    paths = list(overrides)
    combos = [tuple(zip(paths, values)) for values in itertools.product(*(overrides[p] for p in paths))]
    reasons = {combo: ignored_by_scheme(hw, combo, fixed, overrides) for combo in combos}
    kept = [combo for combo in combos if reasons[combo] is None]
    left_out = sorted({r for r in reasons.values() if r is not None})
    if left_out and not kept:
        raise ConfigError(f"overrides: every point is left out: {left_out[0]}")
    if left_out:
        warnings.warn(f"sweep: {len(combos) - len(kept)} of {len(combos)} hardware point(s) left out: "
                      + "; ".join(left_out), stacklevel=3)
    return [(combo, hw.with_overrides(dict(combo))) for combo in kept]


KBIT_ONLY = ("quantization.weight_bits", "quantization.granularity", "quantization.class_clusters")


def ignored_by_scheme(hw: Accelerator, combo: Combo, fixed: Mapping[str, object],
                      overrides: Mapping[str, Sequence]) -> str | None:
    """Why a point of a scheme sweep is left out (None: it is kept). fgq_ternary ignores the k-bit options
    (weight_bits, granularity, class_clusters): it keeps only the points at their first swept value, one
    fgq_ternary point where a bits sweep would repeat it. A k-bit scheme cannot take the FGQ variants
    (group_layout, scales; `QuantizationConfig` refuses them) and uniform_asym holds at most 7 bits: such
    combinations are dropped rather than failing the sweep."""
    from tersim.quantize.schemes import scheme_conflict

    values = {**fixed, **dict(combo)}

    def value(path: str):
        if path in values:
            return values[path]
        section, name = path.split(".")
        return getattr(getattr(hw, section), name)

    scheme = value("quantization.scheme")
    if scheme == "fgq_ternary":
        for path in KBIT_ONLY:
            if path in dict(combo) and dict(combo)[path] != overrides[path][0]:
                return f"fgq_ternary ignores {path}"
        return None
    return scheme_conflict(scheme, value("quantization.weight_bits"), value("quantization.group_layout"),
                           value("quantization.scales"))


@dataclass(frozen=True)


class Point:
    """One sweep point: `run(hw, model, options)` with `hw` the config plus the point's overrides."""

    group_size: int
    act_bits: int
    combo: Combo
    hw: Accelerator          # the config with the point's overrides, before `options` are folded in
    options: RunOptions      # the run's options with this point's group size and activation bits
    key: str
    order: int = 0           # position in the sweep (rows come out in this order whatever the tasks' grouping)


@dataclass(frozen=True)


class Task:
    """A unit of work for one worker: points that share their quantization (see `quantization_key`), so the
    ternarized weights (and, with data, the execution) are computed once and only the timing per point."""

    points: tuple[Point, ...]
    timing_only: bool = False


def quantization_key(hw: Accelerator, with_act_bits: bool = True) -> str:
    """Every hardware field (options folded in) the quantized graph and its execution depend on: N, alpha
    width, the quantization options (method, first_last, ...) and, unless `with_act_bits` is False, the
    activation width and the accumulator. Points equal here differ only in what the timing model sees
    (array, memory, PE costs) and share all numerics."""
    fields = {"group_size": hw.group_scaling.group_size, "scale_bits": hw.group_scaling.scale_bits,
              "quantization": hw.quantization.model_dump(mode="json")}
    if with_act_bits:
        fields.update(act_bits=hw.pe.act_bits, accumulator=hw.accumulator.model_dump(mode="json"))
    return json.dumps(fields, sort_keys=True)


# --- content hashes ---------------------------------------------------------------------------------------
def graph_digest(graph: Graph) -> str:
    """Hash of the lowered model's content (structure, attributes, weights), not of the file it came from."""
    h = hashlib.sha256(f"{graph.name}|{graph.output}".encode())
    for node in graph.nodes:
        h.update(repr((node.name, node.op, node.inputs, sorted(node.attrs.items()), node.shape)).encode())
        update_array_hash(h, node.weight)
        update_array_hash(h, node.bias)
        for name in sorted(node.bn or {}):   # the folded BN: data-free ranges and the corrections read it
            h.update(name.encode())
            value = node.bn[name]
            update_array_hash(h, value) if isinstance(value, np.ndarray) else h.update(repr(value).encode())
    return h.hexdigest()


def data_digest(data: tuple[np.ndarray, np.ndarray | None] | None) -> str | None:
    return None if data is None else array_digest(*data)


def point_key(graph_hash: str, data_hash: str | None, hw: Accelerator, options: RunOptions, timing_only: bool,
              calib_hash: str | None = None) -> str:
    """Cache key: everything a point's result depends on (`hw` with the options folded in, the calibration
    data's content when the point's correction uses it), and the version."""
    uses_calib = hw.quantization.correction == "bn_reestimate"
    payload = {"graph": graph_hash, "data": None if timing_only else data_hash,
               "calib": calib_hash if uses_calib else None,
               "hw": hw.model_dump(mode="json"), "limit": None if timing_only else options.limit,
               "timing": options.timing, "timing_only": timing_only, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def plan_tasks(hw_points: list[tuple[Combo, Accelerator]], group_sizes: Sequence[int], act_bits: Sequence[int],
               options: RunOptions, graph_hash: str, data_hash: str | None, timing_only: bool,
               calib_hash: str | None = None) -> list[Task]:
    """Every (hardware point, N, act_bits) point with its cache key, grouped into units of work by the work
    they share: executed, the points of one `quantization_key` (one quantization and execution, the timing per
    point); timing-only, those of one key without act_bits (weights ternarized once, the graph once per key)."""
    shared: dict[str, list[Point]] = {}  # points by the work they share (one task each), in sweep order
    order = 0
    for combo, hw_combo in hw_points:
        # k-bit schemes have no FGQ groups (one alpha group of Cin channels per kernel position): one N is enough
        kbit = options.apply(hw_combo).quantization.scheme != "fgq_ternary"
        for n in list(group_sizes)[:1] if kbit else group_sizes:
            for bits in act_bits:
                # the data travel once beside the graph; a point runs serially on its worker
                point_options = options.replace(group_size=n, act_bits=bits, data=None, calib=None, jobs=None,
                                                workers=None, dask=None, quiet=True)
                hw_point = point_options.apply(hw_combo)
                key = point_key(graph_hash, data_hash, hw_point, point_options, timing_only, calib_hash)
                shared.setdefault(quantization_key(hw_point, with_act_bits=not timing_only), []).append(
                    Point(n, bits, combo, hw_combo, point_options, key, order))
                order += 1
    return [Task(tuple(points), timing_only) for points in shared.values()]
