"""`tersim finetune MODEL [--data TRAIN] [--val VAL] -o OUT.pt2 ...`: quantization-aware fine-tuning.

Parses only; the work is tersim.finetune.train. tersim/cli.py adds the sub-command with `add_parser`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tersim.options import (RunOptions, add_hardware_flags, finite_float, hardware_args, input_shape_arg,
                            positive_int)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_TRAIN = EXAMPLES / "digits_train.npz"
DEFAULT_VAL = EXAMPLES / "digits_test.npz"


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `finetune` sub-command to tersim's argument parser."""
    from tersim.finetune import METHODS

    p = subparsers.add_parser(
        "finetune", help="quantization-aware fine-tuning (FGQ ternary weights, DFP activations) -> new model file",
        description="Fine-tune a model with the FGQ/DFP quantizers of `tersim run` in the loop (straight-through "
                    "estimators) and write a torch.export archive of the float shadow weights (BN folded) that "
                    "`tersim run`/`verify` ternarize to the trained codes and alphas.")
    p.add_argument("model", help="model file (torch.export archive .pt2; TorchScript/pickle as for `run`)")
    p.add_argument("-o", "--output", required=True, help="fine-tuned model file to write (.pt2)")
    p.add_argument("--data", help=f"labelled training data .npz/.pt with x, y (default: {DEFAULT_TRAIN.name})")
    p.add_argument("--val", help=f"labelled data for the per-epoch accuracy (default: {DEFAULT_VAL.name} when its "
                                 "shape fits the model); 'none' to skip")
    p.add_argument("--hw", help="hardware config YAML: group size, activation bits, ternarization method, "
                                "first/last policy, calibration batches (default: built-in defaults)")
    p.add_argument("--method", dest="finetune_method", choices=METHODS, default="ste",
                   help="fine-tuning method (default: ste)")
    add_hardware_flags(p, rename={"method": ("--fgq-method",)})  # `run --method` is --fgq-method here
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default: 10)")
    p.add_argument("--lr", type=finite_float, default=1e-3, help="Adam learning rate, cosine-decayed to 0 (default: 1e-3)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="(default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    p.add_argument("--checkpoint-dir", help="write DIR/epoch_NNN.pt after each epoch, keeping the newest 2 "
                                            "(default: OUTPUT's name + '_checkpoints' beside it)")
    p.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints")
    p.add_argument("--resume", help="checkpoint file (or checkpoint directory: its newest) to continue from; "
                                    "all other options must be the same as in the interrupted run")
    g = p.add_argument_group("method options (see `reports/finetune.md`)")
    g.add_argument("--schedule", help="progressive: stages, e.g. w8,w4,wt,wt+a8 (default; +a4 stage for 4-bit acts)")
    g.add_argument("--sp-start", type=finite_float, default=0.5, help="stochastic: fraction of layers quantized at first")
    g.add_argument("--sp-full", type=finite_float, default=0.2, help="stochastic: final fraction of steps fully quantized")
    g.add_argument("--kd-lambda", type=finite_float, default=1.0, help="kd: weight of the distillation term")
    g.add_argument("--kd-temperature", type=finite_float, default=2.0, help="kd: softmax temperature")
    g.add_argument("--kd-features", type=_names, default=(), help="kd: IR node names to match, comma-separated")
    g.add_argument("--kd-feature-weight", type=finite_float, default=1.0, help="kd: weight of the feature term")
    g.add_argument("--kd-teacher", choices=("joint", "frozen"), default="joint",
                   help="kd: train the FP32 teacher alongside (default) or keep it frozen")
    p.add_argument("--no-engine-eval", action="store_true",
                   help="skip the final accuracy check of the written model on tersim's integer engine")
    p.add_argument("--input-shape", type=input_shape_arg, help="C,H,W for TorchScript/pickled models")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickled nn.Module (only files you trust)")


def _load(path: Path, graph, what: str):
    from tersim.data import check_input_shape, check_labels, load_dataset, model_classes
    from tersim.errors import DataError

    x, y = load_dataset(path)
    check_input_shape(x, graph.input_shape, f"{what} {path}")
    check_labels(y, model_classes(graph), f"{what} {path}")
    if y is None:
        raise DataError(f"{path}: no array 'y' (labels): fine-tuning needs labelled data")
    return x, y


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run `tersim finetune`; TersimErrors propagate to tersim.cli.main (one line, exit 2)."""
    from tersim.config import Accelerator, load_accelerator
    from tersim.data import load_dataset
    from tersim.finetune.train import FinetuneConfig, finetune, save_model
    from tersim.frontend import import_model

    options = RunOptions.of(input_shape=args.input_shape, trust_pickle=args.trust_pickle, **hardware_args(args))
    hw = options.apply(load_accelerator(args.hw) if args.hw else Accelerator())
    if hw.quantization.scheme != "fgq_ternary":
        from tersim.errors import ConfigError

        raise ConfigError(f"quantization.scheme: finetune trains FGQ ternary weights; {hw.quantization.scheme} is a "
                          "post-training scheme (evaluate it with tersim run or sweep)")
    graph = import_model(args.model, input_shape=options.input_shape, trust_pickle=options.trust_pickle)
    train_path = Path(args.data) if args.data else DEFAULT_TRAIN
    train = _load(train_path, graph, "data")
    val, val_path = None, None
    if args.val is None:
        if DEFAULT_VAL.is_file():
            x, y = load_dataset(DEFAULT_VAL)
            if tuple(x.shape[1:]) == tuple(graph.input_shape):
                val, val_path = (x, y), DEFAULT_VAL
    elif args.val.lower() != "none":
        val_path = Path(args.val)
        val = _load(val_path, graph, "val")
    output = Path(args.output)
    ckpt_dir = None if args.no_checkpoints else Path(args.checkpoint_dir or output.with_name(output.stem + "_checkpoints"))

    cfg = FinetuneConfig(
        group_size=hw.group_scaling.group_size, act_bits=hw.pe.act_bits,
        method=args.finetune_method, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        fgq_method=hw.quantization.method, first_last=hw.quantization.first_last,
        schedule=args.schedule, sp_start=args.sp_start, sp_full=args.sp_full, kd_lambda=args.kd_lambda,
        kd_temperature=args.kd_temperature, kd_features=tuple(args.kd_features),
        kd_feature_weight=args.kd_feature_weight, kd_teacher=args.kd_teacher)
    print(f"tersim finetune: {graph.name}, method {cfg.method}, FGQ N={cfg.group_size} ({cfg.fgq_method}), "
          f"{cfg.act_bits}-bit activations, {cfg.epochs} epochs, train {train_path} ({len(train[0])} samples)"
          + (f", val {val_path}" if val_path else ", no validation data"))
    try:
        from tqdm import tqdm

        log = tqdm.write
    except ImportError:  # pragma: no cover
        log = print
    result = finetune(graph, train, cfg, hw=hw, val=val, checkpoint_dir=ckpt_dir, resume=args.resume,
                      progress=sys.stderr.isatty(), log=log, train_name=str(train_path), val_name=str(val_path))
    if result.initial:
        print(f"before fine-tuning: val acc FP32 {result.initial['val_acc_fp32']:.2%}, "
              f"fake-quant {result.initial['val_acc_fakequant']:.2%}")
    save_model(result, output)
    print(f"wrote {output} (re-imported: FGQ codes and alphas equal the trained ones)")
    if val is not None and not args.no_engine_eval:
        from tersim.pipeline import run

        ran = run(hw, output, cfg.quantization().replace(data=val))
        s = ran.summary.iloc[0]
        print(f"integer engine (tersim run) on {val_path}: accuracy {s.accuracy_quant:.2%} "
              f"(FP32 of the fine-tuned weights {s.accuracy_fp32:.2%})")
        trained = result.net.qgraphs[cfg.act_bits].layers.values()
        differ = [f"{a.node.name} ({a.out.frac} -> {b.out.frac})" for a, b in zip(trained, ran.qgraph.layers.values())
                  if a.out.frac != b.out.frac]
        if differ:
            print(f"note: `run` calibrated on {val_path.name} picks other activation fracs than training used "
                  f"for {len(differ)} tensor(s): {', '.join(differ)}")
    return 0
