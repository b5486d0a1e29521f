"""Command line: `python -m tersim {run,verify,sweep} HW.yaml MODEL [options]`, `python -m tersim finetune MODEL`,
`python -m tersim plot FILE...`, `python -m tersim zoo`, `python -m tersim export-zoo NAME -o FILE.pt2`.

Any TersimError (bad file, field, graph node) and any usage error becomes one line on stderr and exit code 2;
Ctrl-C, even during start-up, one line and exit code 130.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import os
import re
import sys
import warnings
from pathlib import Path

from tersim.errors import TersimError
from tersim.interrupt import ctrl_c_held
from tersim.options import (WHERE_FIELDS, RunOptions, add_hardware_flags, add_option_flags,  # noqa: F401
                            choices, finite_float, hardware_args, input_shape_arg, option_args, positive_int)

MODEL_DATA_OPTIONS = ("weights", "preprocess", "class_map", "calib", "loader_workers", "quiet")

_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line `tersim CMD: error: ...` and exit code 2 (argparse prints a usage block)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line_text(message)} (see {self.prog} --help)\n")


def one_line_text(text: str) -> str:
    """`text` with any line break replaced by a space: an error message must stay one line."""
    return _LINE_BREAKS.sub(" ", str(text)).strip()


def _add_model_args(p: argparse.ArgumentParser, sweep_axes: tuple[str, ...] = ()) -> None:
    """HW and MODEL, the hardware options (generated from RunOptions; `sweep_axes` are swept instead) and
    the options that say what to evaluate."""
    p.add_argument("hw", help="hardware config YAML (see hw_configs/)")
    p.add_argument("model", help="model file: torch.export archive (.pt2), TorchScript, or pickle with --trust-pickle")
    p.add_argument("--data", help="labelled data: .npz or .pt with 'x' (preprocessed inputs) and 'y' (labels), or an "
                                  "image folder DIR/<class>/<image> (streamed in batches)")
    add_option_flags(p, MODEL_DATA_OPTIONS)
    add_hardware_flags(p, skip=sweep_axes)
    p.add_argument("--limit", type=positive_int, help="evaluate at most this many samples")
    p.add_argument("--input-shape", type=input_shape_arg, help="C,H,W for TorchScript/pickled models")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (runs code from the file: only for files you trust)")


def run_options(args: argparse.Namespace) -> RunOptions:
    """The RunOptions of a parsed run/verify/sweep command line."""
    fields = {name: getattr(args, name) for name in ("batch_size", "timing") if hasattr(args, name)}
    return RunOptions.of(data=args.data, limit=args.limit, input_shape=args.input_shape,
                         trust_pickle=args.trust_pickle, **hardware_args(args), **option_args(args), **fields)


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() and not args.quiet


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tersim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="ternarize, execute and time a model; print and write the report")
    _add_model_args(run)
    run.add_argument("--batch-size", type=positive_int, default=64)
    run.add_argument("--out", default="reports", help="directory for the CSV reports (default: reports/)")
    run.add_argument("--timing", choices=("engine", "analytic"), default="engine",
                     help="engine: step the first sample through the cycle-level array (checked against the analytic "
                          "model); analytic: closed forms only (default: engine)")
    add_option_flags(run, WHERE_FIELDS)  # dataset shards

    verify = sub.add_parser("verify", help="check the simulator bit for bit against a PyTorch integer reference")
    _add_model_args(verify)
    verify.set_defaults(limit=256)

    _add_sweep_parsers(sub)
    _add_analyze_parser(sub)

    from tersim.finetune.cli import add_parser as add_finetune

    add_finetune(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from tersim.files import check_output_dir, safe_name
    from tersim.pipeline import run
    from tersim.report.tables import format_layers, format_summary, write_atomic

    check_output_dir(args.out)  # a bad --out fails now, not after the work

    result = run(args.hw, args.model, run_options(args), progress=_progress(args))
    s = result.summary.iloc[0]
    stem = f"{s.model}_{s.hw}_N{s.group_size}_a{s.act_bits}"
    if s.scheme != "fgq_ternary":
        stem += f"_{s.scheme}_w{s.weight_bits}"
    stem = safe_name(stem)  # model and hw names come from input
    weights = f"FGQ N={s.group_size}" if s.scheme == "fgq_ternary" else f"{s.scheme} {s.weight_bits}-bit weights"
    print(f"tersim run: {s.model} on {s.hw}, {weights}, {s.act_bits}-bit activations, {s.samples} samples\n")
    print(format_layers(result.layers))
    sources = ", ".join(f"{n} layer(s) {src}" for src, n in result.layers.timing.value_counts().items())
    print(f"timing: {sources}")
    print("\nmodel summary:")
    print(format_summary(result.summary))
    layers_path = write_atomic(result.layers, Path(args.out) / f"{stem}_layers.csv")
    summary_path = write_atomic(result.summary, Path(args.out) / f"{stem}_summary.csv")
    print(f"\nwrote {layers_path} and {summary_path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from tersim.report.tables import format_summary
    from tersim.verify import verify

    result = verify(args.hw, args.model, run_options(args))
    print(result.layers.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nfinal output vs FP32:")
    print(format_summary(result.summary))
    n_bad = int((~result.layers.identical).sum())
    verdict = "PASS: every node is bit-identical" if n_bad == 0 else f"FAIL: {n_bad} node(s) differ"
    print(f"\n{verdict} (Numba engine vs PyTorch integer reference)")
    return 0 if n_bad == 0 else 1


def _add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="range and local sparsity of the quantized weights, per layer and scheme "
                                       "(no data needed): CSV + figure")
    p.add_argument("hw", help="hardware config YAML (group size N for the FGQ-group windows, first_last)")
    p.add_argument("model", help="model file (.pt2, TorchScript, or pickle with --trust-pickle)")
    p.add_argument("--schemes", default="fgq_ternary,uniform,uniform_asym,pow2,kmeans",
                   help="comma-separated schemes (default: all five)")
    p.add_argument("--bits", default="3", help="comma-separated weight bits of the k-bit schemes (default: 3)")
    add_hardware_flags(p, skip=("scheme", "weight_bits"))
    p.add_argument("--out", default="reports", help="directory for the CSV and figure (default: reports/)")
    p.add_argument("--input-shape", type=input_shape_arg, help="C,H,W for TorchScript/pickled models")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a pickled nn.Module")


def cmd_analyze(args: argparse.Namespace) -> int:
    from tersim.config import load_accelerator
    from tersim.errors import ConfigError
    from tersim.files import check_output_dir, safe_name
    from tersim.frontend import import_model
    from tersim.quantize.schemes import SCHEMES
    from tersim.report.analysis import analysis_figure, analyze
    from tersim.report.optional import MissingExtraError
    from tersim.report.tables import write_atomic

    schemes = [v.strip() for v in args.schemes.split(",") if v.strip()]
    bad = [v for v in schemes if v not in SCHEMES]
    if bad or not schemes:
        raise ConfigError(f"--schemes: unknown scheme '{bad[0] if bad else ''}' (choose from {', '.join(SCHEMES)})")
    try:
        bits = [int(v) for v in args.bits.split(",")]
    except ValueError:
        raise ConfigError(f"--bits: expected comma-separated ints, got '{args.bits}'") from None
    check_output_dir(args.out)  # a bad --out fails now, not after the work
    hw = RunOptions.of(**hardware_args(args)).apply(load_accelerator(args.hw))
    points = [(s, b) for s in schemes for b in ([2] if s == "fgq_ternary" else bits)]
    for s, b in points:   # every (scheme, bits) validated before any work
        RunOptions.of(scheme=s, weight_bits=b).apply(hw)
    graph = import_model(args.model, input_shape=args.input_shape, trust_pickle=args.trust_pickle)
    frame = analyze(hw, graph, points)
    cols = ["point", "layer", "levels_used", "levels_available", "dynamic_range_bits", "zero_fraction",
            "group_all_zero", "kernel_all_zero", "filter_zero_p50"]
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    stem = safe_name(f"{graph.name}_{hw.name}_analysis")  # model and hw names come from input
    written = [write_atomic(frame, Path(args.out) / f"{stem}.csv")]
    try:
        from tersim.report.plots import save_figures

        written += save_figures({"weights": analysis_figure(frame)}, args.out, stem)
    except MissingExtraError as exc:
        print(f"tersim: note: no figure: {exc}", file=sys.stderr)
    print("\nwrote " + ", ".join(map(str, written)))
    return 0


def _add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    """`sweep` (design-space sweeps), `plot` (figures + HTML from a sweep/run file), `export-zoo`."""
    sweep = sub.add_parser("sweep", help="accuracy, multiplications and cycles over group sizes x activation bits "
                                         "x hardware overrides (CSV, Parquet, HTML report)")
    _add_model_args(sweep, sweep_axes=("group_size", "act_bits"))
    sweep.add_argument("--group-sizes", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    sweep.add_argument("--act-bits", dest="act_bits_axis", type=int, nargs="+", choices=choices("act_bits"),
                       default=[8, 4])
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=V1,V2",
                       help="sweep a hardware field too, e.g. --set array.rows=8,16,32 (repeatable: all combinations)")
    sweep.add_argument("--timing-only", action="store_true", default=None,
                       help="skip execution and accuracy: quantization stats + analytic timing only, --data and "
                            "--limit ignored (the default for a zoo model name without --data)")
    sweep.add_argument("--out", default="reports", help="directory for the reports (default: reports/)")
    sweep.add_argument("--cache-dir", help="cache of finished points (default: OUT/.cache)")
    sweep.add_argument("--no-cache", action="store_true", help="neither read nor write the point cache")
    add_option_flags(sweep, WHERE_FIELDS)  # points

    plot = sub.add_parser("plot", help="every plot a sweep/run CSV or Parquet file allows, plus an HTML report")
    plot.add_argument("files", nargs="+", help="points and/or per-layer files (.parquet or .csv)")
    plot.add_argument("--out", help="directory for the figures (default: beside the first file)")
    plot.add_argument("--point", help="point for the per-layer plots, e.g. group_size=4,act_bits=8 "
                                      "(default: N closest to 4, widest activations)")

    sub.add_parser("zoo", help="list the zoo architectures (usable as MODEL) with MACs, parameters and input shape")

    export = sub.add_parser("export-zoo", help="write a zoo model (random weights) as a torch.export archive")
    export.add_argument("name", help="zoo model name (see `tersim zoo`)")
    export.add_argument("-o", "--output", required=True, help="archive to write (.pt2)")
    export.add_argument("--input-shape", type=input_shape_arg, help="C,H,W (default: 3,224,224)")
    export.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from tersim.report.tables import sweep_headline
    from tersim.errors import ConfigError
    from tersim.files import check_output_dir
    from tersim.sweeps import AXES, available_formats, parse_set, run_sweep, write_reports

    check_output_dir(args.out)  # a bad --out fails now, not after the work
    overrides = parse_set(args.overrides)
    for path in overrides.keys() & AXES.keys():
        raise ConfigError(f"--set '{path}': sweep it with --{AXES[path].replace('_', '-')} instead")
    cache_dir = None if args.no_cache else (args.cache_dir or Path(args.out) / ".cache")
    result = run_sweep(args.hw, args.model, args.group_sizes, args.act_bits_axis, run_options(args),
                       overrides=overrides, timing_only=args.timing_only, cache_dir=cache_dir,
                       progress=_progress(args))
    if result.points.empty:
        print("tersim: sweep interrupted before any point finished; nothing written", file=sys.stderr)
        return 130
    print(sweep_headline(result.points).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    _, note = available_formats()
    if note:
        print(f"tersim: note: {note}", file=sys.stderr)
    paths = write_reports(result, args.out)
    print(f"\n{len(result.points)} point(s): {result.computed} computed, {result.cached} from the cache")
    print("wrote " + ", ".join(map(str, paths)))
    if result.interrupted:
        print(f"tersim: interrupted: wrote the {len(result.points)} finished point(s); run again to finish "
              "(finished points come from the cache)", file=sys.stderr)
        return 130
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from tersim.report.plot_files import plot_files

    for path in plot_files(args.files, args.out, args.point):
        print(f"wrote {path}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from tersim.models.zoo import zoo_table

    table = zoo_table()
    table["macs"] = [f"{m / 1e9:.3f} G" for m in table.macs]
    table["params"] = [f"{p / 1e6:.2f} M" for p in table.params]
    print(table.rename(columns={"input_shape": "input", "macs": "MACs/image"}).to_string(index=False))
    print("\nMACs: conv + linear multiply-accumulates per image (torchvision's '_ops' convention); "
          "use a name as MODEL (random weights, or --weights FILE.pth)")
    return 0


def cmd_export_zoo(args: argparse.Namespace) -> int:
    from tersim.models.zoo import export

    path = export(args.name, args.output, seed=args.seed, input_shape=args.input_shape)
    print(f"wrote {path}")
    return 0


MMAP_THRESHOLD = 8 << 20  # bytes; glibc's M_MMAP_THRESHOLD


def _tune_memory() -> None:
    """Large buffers (activations, im2col, weight copies) in their own mappings, handed back to the OS when
    freed: glibc otherwise raises its mmap threshold after the first large free and keeps later ones in a
    heap that never shrinks, so a network's freed activations stay in the peak RSS. 8 MiB, not lower: every
    mapping is faulted in page by page again, and at 1 MiB those faults (1.3 M in `run resnet50`) cost more
    CPU time than the arithmetic of whole layers. The same reason asks torch (read before its first
    allocation) to back its >= 2 MiB tensors with transparent huge pages, as NumPy already does from 4 MiB:
    one fault per 2 MiB instead of per 4 KiB. A value the user set wins. Linux/glibc only."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD (fixes it: no adaptation)
        libc.mallopt(-1, 2 * MMAP_THRESHOLD)  # -1: M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        pass


# Commands whose work runs on torch, Numba and pandas (the pipeline); `plot` and `--help` stay light.
PIPELINE_COMMANDS = frozenset({"run", "verify", "sweep", "analyze", "finetune"})
TORCH_COMMANDS = frozenset({"zoo", "export-zoo"})  # torch only


def _import_pipeline_frozen() -> None:
    """Import the pipeline (torch, Numba, pandas, the kernels) with the cyclic garbage collector paused, then
    freeze what the imports built: ~250 k container objects that live until exit, yet every full collection
    walked them again (0.55 s of `run resnet50`, 0.06 s frozen). The imports' own reference cycles (~140 k
    objects, under 1 MB of RSS) are frozen with them instead of collected: collecting them first costs 0.2 s.
    Frozen objects are skipped by the collector and still freed by reference counting. Only in a process that
    has not imported torch yet (a fresh `tersim`): a process that calls main() after its own imports keeps its
    collector as it is."""
    if "torch" in sys.modules:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        import tersim.pipeline  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _fast_teardown() -> None:
    """At exit, freeze every object before the interpreter's teardown: teardown runs several full collections,
    which walk torch's and Numba's objects each time (0.85 -> 0.25 s after `run resnet50` wrote its report). The
    objects are still destroyed as their modules are cleared; only the cycle search is skipped. Registered
    before the command imports anything, so it runs after the handlers torch, Numba and tqdm register."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def main(argv: list[str] | None = None) -> int:
    _tune_memory()
    _fast_teardown()
    try:
        args = build_parser().parse_args(argv)
        with ctrl_c_held():  # Ctrl-C inside torch's import would abort the process (tersim.interrupt)
            if args.command in PIPELINE_COMMANDS:
                _import_pipeline_frozen()
            elif args.command in TORCH_COMMANDS:
                import torch  # noqa: F401
        from tersim.finetune.cli import cmd_finetune

        command = {"run": cmd_run, "verify": cmd_verify, "sweep": cmd_sweep, "plot": cmd_plot,
                   "export-zoo": cmd_export_zoo, "zoo": cmd_zoo, "analyze": cmd_analyze,
                   "finetune": cmd_finetune}[args.command]
        with warnings.catch_warnings(record=True) as caught:
            code = command(args)
        for w in caught:  # shown after success; an error is one line, without torch's warnings
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return code
    except TersimError as exc:
        print(f"tersim: error: {one_line_text(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tersim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
