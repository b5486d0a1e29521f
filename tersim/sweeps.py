"""Design-space sweeps: group size N x activation bits x hardware overrides, one tidy DataFrame row per point.

    points = run_sweep(hw, model, [1, 4, 64], [8, 4], overrides={"array.rows": [8, 16]}).points

Every point is `pipeline.run` (or, in timing-only mode, quantization + analytic timing without executing the
network) on the hardware config with that point's overrides. Points are cached by content hash as they
finish, so a re-run (or a run after Ctrl-C) only computes what is missing. Points run serially by default,
on a local process pool (`jobs`), or on dask.distributed (`workers` for a LocalCluster, `dask` for a
scheduler address or Client); the lowered Graph is shipped to the workers once.

(The module is `sweeps`, not `sweep`: `tersim.sweep` is the function, exported lazily by tersim/__init__.py.)
"""
from __future__ import annotations

import hashlib
import itertools
import json
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tersim import __version__
from tersim.config import Accelerator, load_accelerator
from tersim.config.hardware import parse_yaml
from tersim.errors import ConfigError, TersimError, one_line
from tersim.report.optional import require
from tersim.files import ensure_dir, safe_name, write_text_atomic
from tersim.frontend import Graph
from tersim.options import OPTION_BY_PATH, RunOptions

KEY_COLUMNS = ("model", "hw", "group_size", "act_bits")
AXES = {"group_scaling.group_size": "group_sizes", "pe.act_bits": "act_bits"}  # swept by run_sweep's arguments
Combo = tuple[tuple[str, object], ...]  # the override values of one point, as (field path, value) pairs


# --- the plan: which points, on which hardware ---------------------------------------------------------
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
    return [(combo, hw.with_overrides(dict(combo))) for combo in combos]


@dataclass(frozen=True)
class Point:
    """One sweep point: `run(hw, model, options)` with `hw` the config plus the point's overrides."""

    group_size: int
    act_bits: int
    combo: Combo
    hw: Accelerator          # the config with the point's overrides, before `options` are folded in
    options: RunOptions      # the run's options with this point's group size and activation bits
    key: str


@dataclass(frozen=True)
class Task:
    """A unit of work for one worker: points sharing N and overrides (timing-only ternarizes them once)."""

    points: tuple[Point, ...]
    timing_only: bool = False


# --- content hashes ---------------------------------------------------------------------------------------
def _update_array(h: "hashlib._Hash", arr: np.ndarray | None) -> None:
    if arr is None:
        h.update(b"none")
        return
    arr = np.ascontiguousarray(arr)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))


def graph_digest(graph: Graph) -> str:
    """Hash of the lowered model's content (structure, attributes, weights), not of the file it came from."""
    h = hashlib.sha256(f"{graph.name}|{graph.output}".encode())
    for node in graph.nodes:
        h.update(repr((node.name, node.op, node.inputs, sorted(node.attrs.items()), node.shape)).encode())
        _update_array(h, node.weight)
        _update_array(h, node.bias)
    return h.hexdigest()


def data_digest(data: tuple[np.ndarray, np.ndarray | None] | None) -> str | None:
    if data is None:
        return None
    h = hashlib.sha256()
    for arr in data:
        _update_array(h, arr)
    return h.hexdigest()


def point_key(graph_hash: str, data_hash: str | None, hw: Accelerator, options: RunOptions, timing_only: bool) -> str:
    """Cache key: everything a point's result depends on (`hw` with the options folded in), and the version."""
    payload = {"graph": graph_hash, "data": None if timing_only else data_hash,
               "hw": hw.model_dump(mode="json"), "limit": None if timing_only else options.limit,
               "timing": options.timing, "timing_only": timing_only, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


# --- the cache: one JSON file per point, written atomically ---------------------------------------------
@dataclass
class PointResult:
    """One finished point: the model summary row and its per-layer rows."""

    summary: dict
    layers: pd.DataFrame


class PointCache:
    """Finished points by key in `directory` (JSON, no pickle: a cache file cannot run code)."""

    def __init__(self, directory: str | Path | None):
        self.directory = ensure_dir(directory, "cache folder") if directory is not None else None

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> PointResult | None:
        if self.directory is None or not self._path(key).is_file():
            return None
        try:
            blob = json.loads(self._path(key).read_text())
            summary, layers = blob["summary"], blob["layers"]
            if not isinstance(summary, dict) or not {"model", "hw"} <= set(summary):
                return None
            return PointResult(summary, pd.DataFrame(layers["data"], columns=layers["columns"]))
        except (ValueError, KeyError, TypeError, AssertionError, OSError):
            return None  # a damaged or foreign entry is recomputed

    def put(self, key: str, result: PointResult) -> None:
        if self.directory is None:
            return
        blob = {"summary": result.summary, "layers": result.layers.to_dict("split", index=False)}
        write_text_atomic(self._path(key), json.dumps(blob, default=_native))


def _native(value: object) -> object:
    """numpy scalars -> Python scalars for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot cache a {type(value).__name__}")


# --- evaluating points (runs on workers) -----------------------------------------------------------------
def evaluate_task(graph: Graph, data: tuple[np.ndarray, np.ndarray | None] | None,
                  task: Task) -> list[tuple[str, PointResult]]:
    """Compute the points of `task` (they share N and the hardware overrides): each is `pipeline.run`."""
    if task.timing_only:
        results = _timing_only(graph, task.points)
    else:
        from tersim.pipeline import run

        results = [run(p.hw, graph, p.options.replace(data=data)) for p in task.points]
    return [(p.key, PointResult(_plain(r.summary.iloc[0].to_dict()), r.layers))
            for p, r in zip(task.points, results)]


def _timing_only(graph: Graph, points: Sequence[Point]) -> list:
    """Quantization stats and analytic timing without executing the network: weights are ternarized once
    for all act_bits; activation formats come from one synthetic sample (timing does not depend on them)."""
    from tersim.data import synthetic_inputs
    from tersim.pipeline import tabulate
    from tersim.quantize.graph import quantize_graph, quantize_weights

    weights = quantize_weights(graph, points[0].options.apply(points[0].hw))
    calibration = [synthetic_inputs(graph.input_shape, 1)]
    results = []
    for p in points:
        hw = p.options.apply(p.hw)
        results.append(tabulate(graph, quantize_graph(graph, calibration, hw, weights=weights), hw,
                                samples=0, labelled=False))
    return results


def _plain(row: dict) -> dict:
    return {k: _native(v) if isinstance(v, np.generic) else v for k, v in row.items()}


# --- executors: each yields finished task results as they come ----------------------------------------------
Results = Iterator[list[tuple[str, PointResult]]]


def _serial(tasks: list[Task], graph: Graph, data) -> Results:
    for task in tasks:
        yield evaluate_task(graph, data, task)


_WORKER: dict = {}


def _init_worker(graph: Graph, data) -> None:
    """Process-pool initializer: the graph and data arrive once per process; Ctrl-C is the parent's job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(graph=graph, data=data)


def _pool_task(task: Task) -> list[tuple[str, PointResult]]:
    return evaluate_task(_WORKER["graph"], _WORKER["data"], task)


def _processes(tasks: list[Task], graph: Graph, data, jobs: int) -> Results:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child inherits torch's/numba's thread pools mid-state and can deadlock
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(graph, data))
    try:
        for future in as_completed([pool.submit(_pool_task, t) for t in tasks]):
            yield future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _dask(tasks: list[Task], graph: Graph, data, dask: object, workers: int | None) -> Results:
    """On a dask.distributed cluster: `dask` is a Client or a scheduler address; else a LocalCluster of `workers`."""
    distributed = require("distributed", extra="dask")
    Client, LocalCluster, as_completed = distributed.Client, distributed.LocalCluster, distributed.as_completed
    owned = []
    if isinstance(dask, Client):
        client = dask
    else:
        if dask is None:
            owned.append(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None))
        try:
            client = Client(dask if dask is not None else owned[0], timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            raise TersimError(f"dask={dask!r}: cannot reach the scheduler: {one_line(exc)}") from None
        owned.insert(0, client)
    futures = []
    try:
        graph_f = client.scatter(graph, broadcast=True)
        data_f = client.scatter(data, broadcast=True) if data is not None else None
        futures = [client.submit(evaluate_task, graph_f, data_f, t, pure=False) for t in tasks]
        for future in as_completed(futures):
            yield future.result()
    finally:
        if futures:
            client.cancel(futures)
        for obj in owned:
            obj.close()


# --- the driver --------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """`points`: one row per point; `layers`: per-layer rows of every point with the point's key columns."""

    points: pd.DataFrame
    layers: pd.DataFrame
    interrupted: bool = False
    computed: int = 0
    cached: int = 0
    key_columns: list[str] = field(default_factory=list)


def is_zoo_name(model: object) -> bool:
    """A zoo name given instead of a file: random weights, so accuracy means nothing."""
    from tersim.models.zoo import ZOO

    return isinstance(model, (str, Path)) and str(model) in ZOO and not Path(model).is_file()


def run_sweep(
    hw: Accelerator | str | Path,
    model: Graph | str | Path,
    group_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    act_bits: Sequence[int] = (8, 4),
    options: RunOptions | None = None,
    *,
    overrides: Mapping[str, Sequence] | None = None,
    timing_only: bool | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    jobs: int | None = None,
    workers: int | None = None,
    dask: object = None,
    **changes,
) -> SweepResult:
    """Evaluate every (overrides, N, act_bits) point; Ctrl-C returns the finished points with interrupted=True.

    Each point is `pipeline.run(hw + overrides, model, options + (N, act_bits))`: `options` (a RunOptions)
    and/or its fields as keywords (data, limit, method, first_last, input_shape, trust_pickle, ...);
    timing is analytic unless `timing` is given.
    overrides: field path -> values, e.g. {"array.rows": [8, 16, 32]}; every combination is a hardware point.
    timing_only: skip execution and accuracy (quantization stats + analytic timing); None = only for a zoo
      name without data (random weights). cache_dir: None = no cache. progress: None = when stderr is a tty.
    jobs: local worker processes; workers: a dask LocalCluster of that many; dask: a Client or scheduler address.
    """
    from tersim.data import load_inputs
    from tersim.frontend import import_model

    options = RunOptions.of(options, **changes)
    if "timing" not in options.model_fields_set:
        options = options.replace(timing="analytic")
    hw = hw if isinstance(hw, Accelerator) else load_accelerator(hw)
    hw_points = hardware_points(hw, overrides or {}, options)
    if timing_only is None:
        timing_only = options.data is None and is_zoo_name(model)
    graph = model if isinstance(model, Graph) else import_model(model, input_shape=options.input_shape,
                                                                trust_pickle=options.trust_pickle)
    dataset = None if timing_only or options.data is None else load_inputs(options.data, graph.input_shape)
    if timing_only:
        options = options.replace(limit=None)

    graph_hash, data_hash = graph_digest(graph), data_digest(dataset)
    tasks: list[Task] = []
    for combo, hw_combo in hw_points:
        for n in group_sizes:
            points = []
            for bits in act_bits:
                point_options = options.replace(group_size=n, act_bits=bits, data=None)
                key = point_key(graph_hash, data_hash, point_options.apply(hw_combo), point_options, timing_only)
                points.append(Point(n, bits, combo, hw_combo, point_options, key))
            tasks += [Task(tuple(points), True)] if timing_only else [Task((p,)) for p in points]
    return _collect(tasks, graph, dataset, PointCache(cache_dir), progress, jobs, workers, dask,
                    [path for path in (overrides or {})])


def _collect(tasks: list[Task], graph: Graph, data, cache: PointCache, progress: bool | None,
             jobs: int | None, workers: int | None, dask: object, paths: list[str]) -> SweepResult:
    """Serve cached points, compute the rest with the chosen executor, cache each as it finishes."""
    from tqdm import tqdm

    all_points = [p for t in tasks for p in t.points]
    done = {p.key: r for p in all_points if (r := cache.get(p.key)) is not None}
    cached = len(done)
    todo = [Task(rest, t.timing_only) for t in tasks if (rest := tuple(p for p in t.points if p.key not in done))]
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(all_points), initial=cached, desc="sweep", unit="point", disable=not progress)
    if not todo:
        results: Results = iter(())
    elif dask is not None or workers:
        results = _dask(todo, graph, data, dask, workers)
    elif jobs and jobs > 1:
        results = _processes(todo, graph, data, jobs)
    else:
        results = _serial(todo, graph, data)
    interrupted = False
    try:
        for finished in results:
            for key, result in finished:
                cache.put(key, result)
                done[key] = result
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()
    finished_points = [p for p in all_points if p.key in done]
    return SweepResult(*_frames(finished_points, done, paths), interrupted=interrupted,
                       computed=len(done) - cached, cached=cached,
                       key_columns=["model", "hw", *paths, "group_size", "act_bits"])


def _frames(points: list[Point], done: dict[str, PointResult], paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy points and layers DataFrames in sweep order, key columns first."""
    rows, layer_frames = [], []
    for p in points:
        result = done[p.key]
        keys = {"model": result.summary["model"], "hw": result.summary["hw"], **dict(p.combo),
                "group_size": p.group_size, "act_bits": p.act_bits}
        rows.append({**keys, **{k: v for k, v in result.summary.items() if k not in keys}})
        layers = result.layers.rename(columns={"group_size": "effective_group_size"})
        layer_frames.append(pd.concat([pd.DataFrame([keys] * len(layers)), layers], axis=1))
    points_frame = pd.DataFrame(rows)
    layers_frame = pd.concat(layer_frames, ignore_index=True) if layer_frames else pd.DataFrame()
    return points_frame, layers_frame


def sweep(hw: Accelerator | str | Path, model: Graph | str | Path, group_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
          act_bits: Sequence[int] = (8, 4), options: RunOptions | None = None, **kwargs) -> pd.DataFrame:
    """One DataFrame row per point (arguments as for `run_sweep`); Ctrl-C raises KeyboardInterrupt, the finished
    points stay in the cache."""
    result = run_sweep(hw, model, group_sizes, act_bits, options, **kwargs)
    if result.interrupted:
        raise KeyboardInterrupt
    return result.points


# --- writing ------------------------------------------------------------------------------------------------
def report_stem(points: pd.DataFrame) -> str:
    """`<model>_<hw>_sweep`, safe as a file name."""
    return safe_name(f"{points.model.iloc[0]}_{points.hw.iloc[0]}_sweep")


def write_reports(result: SweepResult, out: str | Path) -> list[Path]:
    """CSV always; Parquet and the HTML report when the `report` extra is installed (else a note on stderr)."""
    from tersim.report.optional import MissingExtraError
    from tersim.report.tables import write_atomic

    out, stem = Path(out), report_stem(result.points)
    frames = {f"{stem}": result.points, f"{stem}_layers": result.layers}
    written = [write_atomic(frame, out / f"{name}.csv") for name, frame in frames.items()]
    try:
        require("pyarrow")
        written += [write_atomic(frame, out / f"{name}.parquet") for name, frame in frames.items()]
        from tersim.report.html import write_html_report

        written.append(write_html_report(out / f"{stem}.html", result.points, result.layers, title=stem))
    except MissingExtraError as exc:
        print(f"tersim: note: no Parquet/HTML report: {exc}", file=sys.stderr)
    return written
