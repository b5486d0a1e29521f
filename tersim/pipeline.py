"""The main job as one function: model + hardware -> ternarized, executed, timed, reported.

    frontend.import_model → quantize.quantize_graph → engine.execute (+ float reference)
    → engine.counts / timing → report DataFrames
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from tersim.config import Accelerator, load_accelerator
from tersim.data import DataSource, model_classes, open_data, synthetic_inputs
from tersim.engine.checks import LayerSimulation, simulate_checked
from tersim.engine.counts import layer_counts
from tersim.engine.execute import dequantize_output, execute
from tersim.errors import DataError
from tersim.frontend import Graph, execute_float, import_model
from tersim.frontend.float_exec import FloatOutputs
from tersim.options import RunOptions
from tersim.quantize.data_free import activation_ranges
from tersim.quantize.graph import QuantizedGraph, QuantizedLayer, calibrate_max_abs, quantize_graph
from tersim.quantize.schemes import layer_weight_bytes, scheme_summary
from tersim.report.metrics import StreamingDeviation
from tersim.timing.analytic import TIMING_ROW_FIELDS, baseline_layer_timing, layer_timing
from tersim.timing.shapes import LayerShape
from tersim.timing.summary import model_summary, projected_speedup_at_eliminated

BASELINE_ENERGY = ("energy_pj_compute", "energy_pj_sram", "energy_pj_dram", "energy_pj_total")
SYNTHETIC_SAMPLES = 16


@dataclass
class RunResult:
    """`layers`: one row per conv/linear layer; `summary`: one row for the model; `qgraph` for further study."""

    layers: pd.DataFrame
    summary: pd.DataFrame
    qgraph: QuantizedGraph


def layer_shape(graph: Graph, layer: QuantizedLayer, nonzero: bool = True) -> LayerShape:
    """The timing model's view of one weighted layer (batch 1; linear = 1x1 conv on one pixel). `nonzero`
    False leaves out the mask of non-zero codes, which only `zero_weights: skip` reads."""
    node = layer.node
    src = graph.node(node.inputs[0]).shape
    if node.op == "linear":
        cin, h, w, cout, oh, ow, kh, kw, (sh, sw), groups = src[0], 1, 1, node.shape[0], 1, 1, 1, 1, (1, 1), 1
    else:
        cin, h, w = src
        cout, oh, ow = node.shape
        kh, kw = node.weight.shape[2:]
        sh, sw = node.attrs["stride"]
        groups = node.attrs["groups"]
    return LayerShape(
        name=node.name, batch=1, in_channels=cin, in_h=h, in_w=w, out_channels=cout, out_h=oh, out_w=ow,
        kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, groups=groups, weight_kind=layer.weight_kind,
        group_size=layer.group_size, zero_fraction=layer.stats["sparsity"],
        nonzero=LayerShape.nonzero_of(layer.codes, layer.group_layout) if nonzero else None,
        group_layout=layer.group_layout,
        scales=layer.scales, weight_bits=layer.weight_bits or 8, weight_scheme=layer.scheme or "uniform",
    )


_REUSED: OrderedDict[tuple, tuple[Graph, object]] = OrderedDict()
REUSE_ENTRIES = 64


def reuse(kind: str, graph: Graph, x: np.ndarray, compute):
    """FP32 results that depend only on the lowered graph and the inputs (the calibrated activation ranges),
    kept for the points of a sweep that change only the quantization or the hardware. Keyed by the graph object
    (held, so its id stays unique) and a hash of the inputs' bytes; a bounded LRU."""
    x = np.ascontiguousarray(x)
    key = (kind, id(graph), x.dtype.str, x.shape, hashlib.sha256(memoryview(x).cast("B")).hexdigest())
    hit = _REUSED.get(key)
    if hit is not None and hit[0] is graph:
        _REUSED.move_to_end(key)
        return hit[1]
    value = compute()
    _REUSED[key] = (graph, value)
    while len(_REUSED) > REUSE_ENTRIES:
        _REUSED.popitem(last=False)
    return value


@dataclass
class Prepared:
    """The stages every command shares: validated hardware, lowered graph, data source, quantized graph."""

    hw: Accelerator
    graph: Graph
    source: DataSource
    qgraph: QuantizedGraph
    float_outputs: FloatOutputs | None   # the FP32 outputs calibration computed, by input batch

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self.source.arrays()

    @property
    def x(self) -> np.ndarray:
        """Every input in memory (verify and benchmarks; `run` streams instead)."""
        return self._arrays[0]

    @property
    def y(self) -> np.ndarray | None:
        return self._arrays[1]


def prepare(hw: Accelerator | str | Path, model: Graph | str | Path, options: RunOptions | None = None,
            **changes) -> Prepared:
    """Load the hardware (with the options folded in), the model and the data, calibrate on the first batches
    (or on `calib`) and quantize. `options`/keywords as for `run`.

    data / calib: an .npz/.pt file, an image folder (with `preprocess`, `class_map`), an (x, y) pair, a torch
    Dataset or DataLoader, or a DataSource; None = standard-normal inputs (no accuracy). `calib` (separate
    from the evaluation data) is also what `quantization.correction: bn_reestimate` re-estimates BN
    statistics on; it must then differ from the evaluation data (see `calibration_inputs`)."""
    return _prepare(hw, model, RunOptions.of(options, **changes))


def _prepare(hw: Accelerator | str | Path, model: Graph | str | Path, options: RunOptions,
             before_quantize: Callable[[Graph, DataSource, FloatOutputs | None], None] | None = None) -> Prepared:
    """`prepare`; `before_quantize(graph, source, float_outputs)` is called once the FP32 outputs calibration
    computes are in `float_outputs` and before the weights are quantized (`evaluate` starts its FP32 pass there)."""
    if not isinstance(hw, Accelerator):
        hw = load_accelerator(hw)
    hw = options.apply(hw)
    graph = model if isinstance(model, Graph) else import_model(model, input_shape=options.input_shape,
                                                                trust_pickle=options.trust_pickle,
                                                                weights=options.weights)
    source = open_source(options.data, graph, options, options.limit)
    calib_source = None if options.calib is None else open_source(options.calib, graph, options, None)
    calibration = (calib_source or source).calibration(hw.quantization.calibration_batches)
    calib_x, split = calibration_inputs(hw, calib_source, source)
    float_outputs = FloatOutputs() if calib_source is None else None  # calibrated on the evaluation data itself
    max_abs, range_source = activation_ranges(graph, hw, calibration,
                                              data_given=options.data is not None or calib_source is not None)
    if max_abs is None and hw.quantization.correction == "none" and calibration:   # the FP32 network's: reusable
        max_abs = reuse("ranges", graph, np.concatenate(calibration),
                        lambda: calibrate_max_abs(graph, calibration, float_outputs))
    # float_outputs is final here: quantize_graph only calibrates (on the corrected network) without filling it
    if before_quantize is not None:
        before_quantize(graph, source, float_outputs)
    return Prepared(hw, graph, source,
                    quantize_graph(graph, calibration, hw, calib=calib_x, calibration_split=split, max_abs=max_abs,
                                   act_range_source=range_source, float_outputs=float_outputs), float_outputs)


def calibration_inputs(hw: Accelerator, calib: DataSource | None,
                       source: DataSource | None) -> tuple[np.ndarray | None, str | None]:
    """The inputs bn_reestimate re-estimates BN statistics on (its first CALIB_MAX_SAMPLES), and the name of
    their split for the report.

    Refuses (DataError) to run without them, and to calibrate on the evaluation inputs themselves: the
    reported accuracy would then be measured on the data the statistics were fitted to."""
    from tersim.quantize.correction import CALIB_MAX_SAMPLES

    if hw.quantization.correction != "bn_reestimate":
        return None, None
    if calib is None:
        raise DataError("quantization.correction: bn_reestimate needs unlabelled calibration data (--calib DATA), "
                        "separate from the evaluation data")
    cx = np.concatenate([x for x, _ in calib.batches(CALIB_MAX_SAMPLES, 0, CALIB_MAX_SAMPLES)])
    same_file = calib.path is not None and source is not None and source.path is not None and \
        calib.path.resolve() == source.path.resolve()
    if same_file or (source is not None and calib.length == source.length and
                     np.array_equal(cx, next(source.batches(len(cx), 0, len(cx)))[0])):
        raise DataError("--calib: the calibration data is the evaluation data; bn_reestimate must be calibrated "
                        "on a separate split (e.g. the training split)")
    return cx, (calib.path.name if calib.path is not None else "in-memory calibration inputs")


def open_source(data: object, graph: Graph, options: RunOptions, limit: int | None) -> DataSource:
    """Any data kind `prepare` takes, as a DataSource checked against the model's input shape (image
    preprocessing from `options`)."""
    if isinstance(data, DataSource):
        return data
    if data is None:
        x = synthetic_inputs(graph.input_shape, SYNTHETIC_SAMPLES if limit is None else min(limit, SYNTHETIC_SAMPLES))
        return open_data((x, None), graph.input_shape)
    return open_data(data, graph.input_shape, limit=limit, preprocess=options.preprocess,
                     class_map=options.class_map, loader_workers=options.loader_workers,
                     classes=model_classes(graph))


# --- evaluation: streamed batches, shards merged exactly ------------------------------------------------------
FP32_PASSES = [0]  # FP32 passes over evaluation data in this process (tests assert sweeps make one)


@dataclass
class ShardResult:
    """Deviation metrics and overflow counts of samples [start, stop): merged exactly across shards."""

    metrics: StreamingDeviation
    overflow: dict[str, int]

    def merge(self, other: "ShardResult") -> None:
        self.metrics.merge(other.metrics)
        for name, events in other.overflow.items():
            self.overflow[name] = self.overflow.get(name, 0) + events


@dataclass(frozen=True)
class Shard:
    start: int
    stop: int
    batch_size: int


def shards(length: int, batch_size: int, count: int) -> list[Shard]:
    """`count` contiguous ranges cut at batch boundaries (so per-batch sums, hence totals, equal serial ones)."""
    n_batches = -(-length // batch_size)
    per = -(-n_batches // max(1, count))
    return [Shard(b * batch_size, min(length, (b + per) * batch_size), batch_size) for b in range(0, n_batches, per)]


def evaluate_shard(graph: Graph, qgraph: QuantizedGraph, source: DataSource, reference: "Fp32Reference | None",
                   shard: Shard, progress: bool = False, float_outputs: FloatOutputs | None = None,
                   ahead: "Fp32Ahead | None" = None) -> ShardResult:
    """Integer engine (and FP32 model, unless `reference` holds its outputs) on one shard, batch by batch; a
    batch calibration already ran through the FP32 model takes its output from `float_outputs`. `ahead`: the
    shard's batches with their FP32 outputs computed on a background thread (`reference` is then None)."""
    metrics, overflow = StreamingDeviation(), {}
    if reference is None:
        FP32_PASSES[0] += 1
    batches = ahead if ahead is not None else _with_reference(graph, source, reference, shard, float_outputs)
    with progress_bar(shard.stop - shard.start, "evaluating", progress) as bar:
        for xb, yb, ref in batches:
            try:
                result = execute(qgraph, xb, keep_all=False)
            except Exception:
                ref()   # run one batch at a time, this batch's FP32 error (if any) came first
                raise
            metrics.update(ref(), dequantize_output(qgraph, result.output(qgraph)), yb)
            for name, events in result.overflow_events.items():
                overflow[name] = overflow.get(name, 0) + events
            bar.update(len(xb))
    return ShardResult(metrics, overflow)


Batch = tuple[np.ndarray, "np.ndarray | None", Callable[[], np.ndarray]]   # x, labels, its FP32 output (waits)


def _fp32_output(graph: Graph, xb: np.ndarray, float_outputs: FloatOutputs | None,
                 each: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
    """The FP32 model's output of one batch: calibration's, if it ran this batch, else a float32 pass."""
    ref = float_outputs.get(xb) if float_outputs is not None else None
    return execute_float(graph, xb, dtype=np.float32, each=each) if ref is None else ref


def _with_reference(graph: Graph, source: DataSource, reference: "Fp32Reference | None", shard: Shard,
                    float_outputs: FloatOutputs | None) -> Iterator[Batch]:
    """A shard's batches with their FP32 outputs, computed here, batch by batch (or read from `reference`)."""
    at = shard.start
    for xb, yb in source.batches(shard.batch_size, shard.start, shard.stop):
        if reference is None:
            ref = _fp32_output(graph, xb, float_outputs)
        else:
            ref = reference.rows(at, at + len(xb))
        at += len(xb)
        yield xb, yb, (lambda ref=ref: ref)


class _Stopped(Exception):
    """Raised inside an FP32 pass that Fp32Ahead.close abandoned."""


class Fp32Ahead:
    """A shard's batches with their FP32 outputs computed on one background thread, so the FP32 model runs
    while this thread quantizes and runs the integer engine (torch releases the GIL in its kernels; much of
    quantization and the engine's first call is single-threaded, which left a core idle).

    Started before quantization: batch 0 is read and its FP32 pass begins at once. Iterating yields
    (x, y, output) in order, `output()` waiting for that batch's FP32 result; batch i+1 is read (and its pass
    queued) when batch i is handed out, so at most two batches and their outputs are held whatever the
    dataset's size. The outputs are the same arrays as a pass on the calling thread (same float32 ops on the
    same bytes), and errors keep their order: a read error of batch i+1 is raised after batch i is done, an FP32
    error of a batch when its output is asked for. `close` (always: use `with`) abandons the running pass
    after its current node and joins the thread, so an error or Ctrl-C elsewhere never waits for it."""

    def __init__(self, graph: Graph, source: DataSource, shard: Shard, float_outputs: FloatOutputs | None):
        self._graph, self._float_outputs = graph, float_outputs
        self._reader = source.batches(shard.batch_size, shard.start, shard.stop)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tersim-fp32")
        self._pending: deque[tuple[np.ndarray | None, np.ndarray | None, Future | BaseException]] = deque()
        self._read_next()

    def _read_next(self) -> None:
        try:
            xb, yb = next(self._reader)
        except StopIteration:
            return
        except Exception as exc:   # raised when the batches before it are done, as when read in turn
            self._pending.append((None, None, exc))
            return
        self._pending.append((xb, yb, self._pool.submit(_fp32_output, self._graph, xb, self._float_outputs,
                                                         self._check_stop)))

    def _check_stop(self, name: str, value: np.ndarray) -> None:
        if self._stop.is_set():
            raise _Stopped(name)

    def __iter__(self) -> Iterator[Batch]:
        while self._pending:
            xb, yb, job = self._pending.popleft()
            if isinstance(job, BaseException):
                raise job
            if not self._pending:
                self._read_next()
            yield xb, yb, job.result

    def close(self) -> None:
        self._stop.set()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reader.close()

    def __enter__(self) -> "Fp32Ahead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def in_process(source: DataSource, *, jobs: int | None = None, workers: int | None = None,
               dask: object = None) -> bool:
    """Does `evaluate_source` run `source` in this process, as one shard (no jobs/workers/dask, or a
    DataLoader, which is read from its start only)?"""
    return not ((jobs or 1) > 1 or workers or dask is not None) or source.loader is not None


def _evaluate_shard_task(graph: Graph, qgraph: QuantizedGraph, source: DataSource, reference,
                         float_outputs: FloatOutputs | None, shard: Shard):
    return evaluate_shard(graph, qgraph, source, reference, shard, float_outputs=float_outputs)


def evaluate_source(graph: Graph, qgraph: QuantizedGraph, source: DataSource, *, batch_size: int = 64,
                    reference: "Fp32Reference | None" = None, progress: bool = False, jobs: int | None = None,
                    workers: int | None = None, dask: object = None,
                    float_outputs: FloatOutputs | None = None, ahead: Fp32Ahead | None = None) -> ShardResult:
    """The whole source through the quantized graph (and the FP32 model, unless `reference` holds its
    outputs): in this process, or split into shards over processes / a dask cluster, counts merged exactly.
    `ahead` (from `in_process`): the FP32 outputs of an in-process evaluation, started earlier."""
    if in_process(source, jobs=jobs, workers=workers, dask=dask):
        return evaluate_shard(graph, qgraph, source, reference, Shard(0, source.length, batch_size), progress,
                              float_outputs, ahead)
    from tersim.parallel import spread

    count = 4 * (jobs or workers or 2)  # a few shards per worker balance uneven speeds
    parts = shards(source.length, batch_size, count)
    results: dict[int, ShardResult] = {}
    with progress_bar(source.length, "evaluating", progress) as bar:
        for index, result in spread(_evaluate_shard_task, parts, (graph, qgraph, source, reference, float_outputs),
                                    jobs=jobs, workers=workers, dask=dask):
            results[index] = result
            bar.update(parts[index].stop - parts[index].start)
    total = results[0]
    for index in range(1, len(parts)):
        total.merge(results[index])
    return total


class Fp32Reference:
    """The FP32 model's outputs for samples [0, n): in memory, or an .npy file read through a memory map (so a
    sweep over N ships a file name to workers, and the pages stay reclaimable)."""

    def __init__(self, array: np.ndarray | None = None, path: Path | None = None):
        self._array, self.path = array, path

    def __getstate__(self) -> dict:
        return {"_array": None if self.path is not None else self._array, "path": self.path}

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return np.asarray(self._array[start:stop])


def fp32_reference(graph: Graph, source: DataSource, batch_size: int = 64, cache_dir: str | Path | None = None,
                   progress: bool = False, key: str | None = None) -> Fp32Reference:
    """One FP32 pass over `source` (or its cached result): `key` names it by content (model, data, preprocessing)."""
    from tersim.files import atomic_file, ensure_dir

    if cache_dir is not None:
        ensure_dir(cache_dir, "cache folder")  # a file in the way: one line, before any work
    path = Path(cache_dir) / "fp32" / f"{key}.npy" if cache_dir is not None and key is not None else None
    if path is not None and path.is_file():
        return Fp32Reference(path=path)
    FP32_PASSES[0] += 1
    shape = (source.length, *graph.node(graph.output).shape)
    with progress_bar(source.length, "FP32 reference", progress) as bar:
        if path is None:
            out, at = np.empty(shape, np.float32), 0
            for xb, _ in source.batches(batch_size):
                out[at:at + len(xb)] = execute_float(graph, xb, dtype=np.float32)
                at += len(xb)
                bar.update(len(xb))
            return Fp32Reference(array=out)
        ensure_dir(path.parent, "cache folder")
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # appended batch by batch: memory stays bounded
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
            for xb, _ in source.batches(batch_size):
                fh.write(np.ascontiguousarray(execute_float(graph, xb, dtype=np.float32), dtype="<f4").tobytes())
                bar.update(len(xb))
    return Fp32Reference(path=path)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar in images (rate = images/s, with ETA), or a silent stand-in."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)


def run(
    hw: Accelerator | str | Path,
    model: Graph | str | Path,
    options: RunOptions | None = None,
    *,
    progress: bool = False,
    reference: Fp32Reference | None = None,
    **changes,
) -> RunResult:
    """Ternarize `model` with FGQ, execute it bit-exactly on the integer engine and time it on `hw`.

    `options` (a RunOptions) and/or its fields as keywords (data, group_size, act_bits, method, first_last,
    limit, batch_size, timing, input_shape, trust_pickle, weights, preprocess, class_map, calib,
    loader_workers, jobs, workers, dask); keywords win. The data streams through in batches (memory does not
    grow with the dataset); `jobs` (processes), `workers` (a dask LocalCluster) or `dask` (a Client or
    scheduler address) split it into shards whose counts merge exactly. `reference`: the FP32 outputs,
    computed once for a sweep (else computed here). timing="engine" steps the first input sample through the
    cycle-level array, layer by layer (outputs checked bit for bit against the integer kernels, cycles against
    the analytic model); "analytic" only evaluates the closed forms.
    """
    options = RunOptions.of(options, **changes)
    e = evaluate(hw, model, options, progress=progress, reference=reference)
    simulated = None
    if options.timing == "engine":
        first = next(iter(e.source.batches(1, 0, 1)))[0]
        simulated = _simulate(e.graph, e.qgraph, e.hw, first)
    return tabulate(e.graph, e.qgraph, e.hw, samples=e.source.length, labelled=e.source.labelled,
                    overflow=e.overflow, metrics=e.metrics, simulated=simulated)


@dataclass
class Evaluated(Prepared):
    """`prepare` plus the bit-exact execution of every input: overflow events per layer, deviation metrics."""

    overflow: dict[str, int]
    metrics: dict[str, float]


def evaluate(hw: Accelerator | str | Path, model: Graph | str | Path, options: RunOptions | None = None, *,
             progress: bool = False, reference: Fp32Reference | None = None, **changes) -> Evaluated:
    """Quantize and execute every input (integer engine and float reference, streamed; sharded over
    `jobs`/`workers`/`dask`): everything a report needs that does not depend on the array, so sweep points
    that differ only in hardware share it. `options`/keywords and `reference` as for `run` (`timing` is not
    used here)."""
    options = RunOptions.of(options, **changes)
    with ExitStack() as stack:
        ahead: list[Fp32Ahead] = []

        def start_fp32(graph: Graph, source: DataSource, float_outputs: FloatOutputs | None) -> None:
            """In this process without a given reference: the FP32 pass runs on a thread from here on."""
            if reference is None and source.loader is None and in_process(source, **options.where()):
                ahead.append(stack.enter_context(Fp32Ahead(graph, source, Shard(0, source.length,
                                                                                 options.batch_size),
                                                           float_outputs)))

        p = _prepare(hw, model, options, before_quantize=start_fp32)
        total = evaluate_source(p.graph, p.qgraph, p.source, batch_size=options.batch_size, reference=reference,
                                progress=progress and not options.quiet, float_outputs=p.float_outputs,
                                ahead=ahead[0] if ahead else None, **options.where())
    return Evaluated(p.hw, p.graph, p.source, p.qgraph, p.float_outputs, total.overflow, total.metrics.result())


def _simulate(graph: Graph, qgraph: QuantizedGraph, hw: Accelerator, x: np.ndarray) -> dict[str, LayerSimulation]:
    """Cycle-stepped timings of every weighted layer (first sample), checked against the references. The shapes'
    non-zero masks only `zero_weights: skip` reads (as in tabulate_points)."""
    skip = hw.pe.zero_weights == "skip"
    shapes = {name: layer_shape(graph, layer, nonzero=skip) for name, layer in qgraph.layers.items()
              if layer.weight_kind}
    return simulate_checked(qgraph, hw, x, shapes)


@dataclass
class PointTable:
    """One hardware point of `tabulate_points`: the per-layer report rows as columns (lists, in report order;
    `layers()` is the DataFrame) and the model's summary row."""

    columns: dict[str, list]
    summary: dict

    def layers(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)


def tabulate(
    graph: Graph,
    qgraph: QuantizedGraph,
    hw: Accelerator,
    *,
    samples: int,
    labelled: bool,
    overflow: dict[str, int] | None = None,
    metrics: dict[str, float] | None = None,
    simulated: dict[str, LayerSimulation] | None = None,
) -> RunResult:
    """Report rows from a quantized graph: op counts, weight stats and analytic timing need no execution,
    so `run` (with the engine's overflow counts and deviation metrics) and timing-only sweeps share them.
    `simulated`: cycle-stepped timings by layer name (the `timing` column says which source each row used).
    `tabulate_points` with one point."""
    point = tabulate_points(graph, qgraph, [hw], samples=samples, labelled=labelled, overflow=overflow,
                            metrics=metrics, simulated=simulated)[0]
    return RunResult(layers=point.layers(), summary=pd.DataFrame([point.summary]), qgraph=qgraph)


def tabulate_points(
    graph: Graph,
    qgraph: QuantizedGraph,
    hws: Sequence[Accelerator],
    *,
    samples: int,
    labelled: bool,
    overflow: dict[str, int] | None = None,
    metrics: dict[str, float] | None = None,
    simulated: dict[str, LayerSimulation] | None = None,
) -> list[PointTable]:
    """`tabulate` of one quantized graph on every hardware point of `hws` (a sweep's points that share their
    quantization): what depends only on the graph (shapes, counts, weight bytes and stats, their sums) is
    computed once, the timing per point (a layer shape repeated in the network is timed once per point)."""
    overflow, metrics, simulated = overflow or {}, metrics or {}, simulated or {}
    weighted = [layer for layer in qgraph.layers.values() if layer.weight_kind is not None]
    skip = any(hw.pe.zero_weights == "skip" for hw in hws)   # the only reader of the shapes' non-zero masks
    shapes = [None if layer.node.name in simulated else layer_shape(graph, layer, nonzero=skip)
              for layer in weighted]
    static_rows = [_static_row(layer, qgraph, overflow) for layer in weighted]
    static = pd.DataFrame(static_rows)
    static_columns = {name: [row[name] for row in static_rows] for name in (static_rows[0] if static_rows else ())}
    sums = _layer_sums(static)
    points = []
    for hw in hws:
        memo: dict = {}
        terns, bases, sources = [], [], []
        for layer, shape in zip(weighted, shapes):
            sim = simulated.get(layer.node.name)
            if sim is None:
                terns.append(layer_timing(shape, hw, memo=memo))
                bases.append(baseline_layer_timing(shape, hw))
                sources.append("analytic")
            else:
                terns.append(sim.ternary)
                bases.append(sim.baseline)
                sources.append(sim.source)
        columns = {**static_columns, **{name: [getattr(t, name) for t in terns] for name in TIMING_ROW_FIELDS},
                   "baseline_cycles": [b.total_cycles for b in bases],
                   **{f"baseline_{k}": [getattr(b, k) for b in bases] for k in BASELINE_ENERGY},
                   "speedup": [b.total_cycles / t.total_cycles if t.total_cycles else float("nan")
                               for t, b in zip(terns, bases)],
                   "timing": sources}
        summary = {
            "model": graph.name, "hw": hw.name, "group_size": qgraph.group_size, "act_bits": qgraph.act_bits,
            "method": qgraph.method, "group_layout": qgraph.group_layout, "scales": qgraph.scales,
            "correction": qgraph.correction, "calibration_split": qgraph.calibration_split,
            **scheme_summary(hw, qgraph), "samples": samples, "labelled": labelled,
            **sums, **model_summary(terns, bases, hw, qgraph.group_size), **metrics,
        }
        # the reconstructed projection at this model's own fraction of eliminated multiplications (all layers)
        summary["projected_speedup_at_measured"] = projected_speedup_at_eliminated(summary["mults_eliminated"])
        points.append(PointTable(columns, summary))
    return points


def _static_row(layer: QuantizedLayer, qgraph: QuantizedGraph, overflow: dict[str, int]) -> dict:
    """The report columns of one layer that do not depend on the hardware point (those before the timing)."""
    node = layer.node
    return {
        "layer": node.name, "op": node.op, "out_shape": "x".join(map(str, node.shape)),
        "weights": layer.weight_kind, "scheme": layer.scheme, "weight_bits": layer.weight_bits,
        "group_size": layer.group_size, "weight_bytes": layer_weight_bytes(layer, qgraph.scale_bits),
        **layer_counts(layer).as_dict(),
        "sparsity": layer.stats["sparsity"], "rel_error": layer.stats["rel_error"],
        "overflow_events": overflow.get(node.name, 0),
    }


def _layer_sums(layers: pd.DataFrame) -> dict:
    """The summary's whole-model columns that sum the per-layer ones (the hardware-independent columns)."""
    ternary = layers[layers.weights == "ternary"]
    return {
        "weight_bytes": int(layers.weight_bytes.sum()),
        "macs": int(layers.macs.sum()), "mults": int(layers.mults.sum()),
        "mults_eliminated": 1 - layers.mults.sum() / layers.macs.sum(),
        "mults_eliminated_ternary_layers": (1 - ternary.mults.sum() / ternary.macs.sum()) if len(ternary) else 0.0,
        "weight_sparsity": float((layers.sparsity * layers.macs).sum() / layers.macs.sum()),
        "weight_rel_error": float((layers.rel_error * layers.macs).sum() / layers.macs.sum()),
        "overflow_events": int(layers.overflow_events.sum()),
    }
