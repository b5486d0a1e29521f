"""Command line: `python -m tersim {run,verify,sweep} HW.yaml MODEL [options]`, `python -m tersim finetune MODEL`.

Any TersimError (bad file, field, graph node) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tersim.errors import TersimError


def input_shape_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape wants comma-separated ints like 1,8,8, got '{text}'") from None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser, one_point: bool = True) -> None:
    p.add_argument("hw", help="hardware config YAML (see hw_configs/)")
    p.add_argument("model", help="model file: torch.export archive (.pt2), TorchScript, or pickle with --trust-pickle")
    p.add_argument("--data", help="labelled data: .npz or .pt with 'x' (preprocessed inputs) and 'y' (labels)")
    if one_point:
        p.add_argument("--group-size", "-N", type=positive_int, help="FGQ group size N (default: from the hw config)")
        p.add_argument("--act-bits", type=int, choices=(8, 4), help="activation bits (default: from the hw config)")
    p.add_argument("--method", choices=("exact", "twn", "twn_asym"), help="ternarization method (default: config)")
    p.add_argument("--first-last", choices=("int8", "ternary"), help="first/last layer weights (default: config)")
    p.add_argument("--limit", type=positive_int, help="evaluate at most this many samples")
    p.add_argument("--input-shape", type=input_shape_arg, help="C,H,W for TorchScript/pickled models")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (runs code from the file: only for files you trust)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tersim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="ternarize, execute and time a model; print and write the report")
    _add_model_args(run)
    run.add_argument("--batch-size", type=positive_int, default=64)
    run.add_argument("--out", default="reports", help="directory for the CSV reports (default: reports/)")

    verify = sub.add_parser("verify", help="check the simulator bit for bit against a PyTorch integer reference")
    _add_model_args(verify)
    verify.set_defaults(limit=256)

    sweep = sub.add_parser("sweep", help="accuracy, multiplications and cycles over group sizes x activation bits")
    _add_model_args(sweep, one_point=False)
    sweep.add_argument("--group-sizes", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    sweep.add_argument("--act-bits", type=int, nargs="+", choices=(8, 4), default=[8, 4])
    sweep.add_argument("--out", default="reports", help="directory for the CSV report (default: reports/)")

    from tersim.finetune.cli import add_parser as add_finetune

    add_finetune(sub)
    return parser


def _model_options(args: argparse.Namespace) -> dict:
    return dict(data=args.data, method=args.method,
                first_last=args.first_last, limit=args.limit, input_shape=args.input_shape,
                trust_pickle=args.trust_pickle)


def cmd_run(args: argparse.Namespace) -> int:
    from tersim.pipeline import run
    from tersim.report.tables import format_layers, format_summary, write_atomic

    result = run(args.hw, args.model, batch_size=args.batch_size, progress=sys.stderr.isatty(),
                 group_size=args.group_size, act_bits=args.act_bits, **_model_options(args))
    s = result.summary.iloc[0]
    stem = f"{s.model}_{s.hw}_N{s.group_size}_a{s.act_bits}"
    print(f"tersim run: {s.model} on {s.hw}, FGQ N={s.group_size}, {s.act_bits}-bit activations, {s.samples} samples\n")
    print(format_layers(result.layers))
    print("\nmodel summary:")
    print(format_summary(result.summary))
    layers_path = write_atomic(result.layers, Path(args.out) / f"{stem}_layers.csv")
    summary_path = write_atomic(result.summary, Path(args.out) / f"{stem}_summary.csv")
    print(f"\nwrote {layers_path} and {summary_path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from tersim.report.tables import format_summary
    from tersim.verify import verify

    result = verify(args.hw, args.model, group_size=args.group_size, act_bits=args.act_bits, **_model_options(args))
    print(result.layers.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nfinal output vs FP32:")
    print(format_summary(result.summary))
    n_bad = int((~result.layers.identical).sum())
    verdict = "PASS: every node is bit-identical" if n_bad == 0 else f"FAIL: {n_bad} node(s) differ"
    print(f"\n{verdict} (Numba engine vs PyTorch integer reference)")
    return 0 if n_bad == 0 else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from tersim.report.tables import write_atomic
    from tersim.sweep import sweep

    frame = sweep(args.hw, args.model, args.group_sizes, args.act_bits, progress=sys.stderr.isatty(),
                  **_model_options(args))
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    path = write_atomic(frame, Path(args.out) / f"{frame.model[0]}_{frame.hw[0]}_sweep.csv")
    print(f"\nwrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "finetune":
            return args.func(args)
        return {"run": cmd_run, "verify": cmd_verify, "sweep": cmd_sweep}[args.command](args)
    except TersimError as exc:
        print(f"tersim: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
