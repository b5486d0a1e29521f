"""Fine-tuning methods compared on the shipped digits model, every accuracy measured on tersim's integer engine.

    .venv/bin/python benchmarks/finetune_methods.py [--epochs 2 8] [--seeds 0 1 2] [--act-bits 8]

For each epoch budget, method and seed: `tersim.finetune` on examples/digits_train.npz, the model file
written, then `tersim.pipeline.run` on it with examples/digits_test.npz (FGQ N=64, the integer datapath:
accuracy_quant) and `tersim.verify.verify` (Numba engine vs torch integer reference, bit for bit).
Reference rows: the FP32 model and FGQ N=64 without training, through the same `run`.
Training time: wall (and CPU) seconds of the training epochs only, one torch thread, median over the
seeds after one untimed warm-up run per method, relative to plain STE at the same budget; the methods
run interleaved (seed by seed) so that other load on the machine affects them alike.

Writes reports/finetune_methods.csv (one row per run) and replaces the table between the
`<!-- finetune-table -->` markers in reports/finetune.md (printed too).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tersim.config import load_accelerator  # noqa: E402
from tersim.data import load_dataset  # noqa: E402
from tersim.files import write_text_atomic  # noqa: E402
from tersim.finetune import METHODS, FinetuneConfig, finetune, save_model  # noqa: E402
from tersim.frontend import import_model  # noqa: E402
from tersim.pipeline import run  # noqa: E402
from tersim.report.tables import write_atomic  # noqa: E402
from tersim.verify import verify  # noqa: E402

MODEL = ROOT / "examples/digits_resnet.pt2"
TRAIN = ROOT / "examples/digits_train.npz"
TEST = ROOT / "examples/digits_test.npz"
HW = ROOT / "hw_configs/default.yaml"
GROUP_SIZE = 64
MARK = "<!-- finetune-table -->"


def engine_accuracy(hw, model, act_bits: int) -> dict:
    s = run(hw, model, data=TEST, group_size=GROUP_SIZE, act_bits=act_bits).summary.iloc[0]
    return {"acc_engine": float(s.accuracy_quant), "acc_fp32": float(s.accuracy_fp32)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--act-bits", type=int, default=8, choices=(8, 4))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--csv", type=Path, default=ROOT / "reports/finetune_methods.csv")
    ap.add_argument("--report", type=Path, default=ROOT / "reports/finetune.md")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # stable timings on a shared 2-core machine
    hw = load_accelerator(HW)
    graph = import_model(MODEL)
    train = load_dataset(TRAIN)
    base = engine_accuracy(hw, MODEL, args.act_bits)
    for method in args.methods:  # warm-up (torch's first calls, kernel selection): not timed
        finetune(graph, train, FinetuneConfig(group_size=GROUP_SIZE, act_bits=args.act_bits, method=method, epochs=1,
                                              lr=args.lr), hw=hw)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in args.epochs:
            for seed in args.seeds:  # methods interleaved: load changes on a shared machine hit all alike
                for method in args.methods:
                    cfg = FinetuneConfig(group_size=GROUP_SIZE, act_bits=args.act_bits, method=method, epochs=epochs,
                                         lr=args.lr, seed=seed, fgq_method=hw.quantization.method,
                                         first_last=hw.quantization.first_last)
                    result = finetune(graph, train, cfg, hw=hw)
                    path = save_model(result, Path(tmp) / f"{method}_{epochs}_{seed}.pt2")
                    t0 = time.perf_counter()
                    acc = engine_accuracy(hw, path, args.act_bits)
                    exact = verify(hw, path, data=TEST, group_size=GROUP_SIZE, act_bits=args.act_bits, limit=None).bit_exact
                    rows.append({"epochs": epochs, "method": method, "seed": seed, **acc, "bit_exact": exact,
                                 "train_s": result.train_seconds, "train_cpu_s": result.train_cpu_seconds,
                                 "eval_s": time.perf_counter() - t0})
                    r = rows[-1]
                    print(f"E={epochs} {method:11s} seed {seed}: engine acc {r['acc_engine']:.3f}  "
                          f"train {r['train_s']:.1f}s  bit-exact {exact}", flush=True)
    frame = pd.DataFrame(rows)
    write_atomic(frame, args.csv)
    table = markdown_table(frame, base, args.act_bits, args.seeds)
    print("\n" + table)
    if args.report.is_file():
        text = args.report.read_text()
        if text.count(MARK) == 2:
            head, _, tail = text.split(MARK)
            write_text_atomic(args.report, f"{head}{MARK}\n{table}\n{MARK}{tail}")
            print(f"\nupdated the table in {args.report}")
    print(f"wrote {args.csv}")
    return 0


def markdown_table(frame: pd.DataFrame, base: dict, act_bits: int, seeds: list[int]) -> str:
    budgets = sorted(frame.epochs.unique())
    head = ["method"] + [f"test acc, {e} epochs" for e in budgets] + \
           [f"train time, {e} epochs (x STE)" for e in budgets] + ["bit-exact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    blank = ["–"] * (2 * len(budgets))
    lines.append("| FP32 (no quantization) | " + " | ".join([f"{base['acc_fp32']:.1%}"] * len(budgets) + blank[len(budgets):]) + " | – |")
    lines.append(f"| FGQ N={GROUP_SIZE}, {act_bits}-bit acts, no training | "
                 + " | ".join([f"{base['acc_engine']:.1%}"] * len(budgets) + blank[len(budgets):]) + " | – |")
    for method in frame.method.unique():
        m = frame[frame.method == method]
        accs, times = [], []
        for e in budgets:
            me = m[m.epochs == e]
            ste = frame[(frame.method == "ste") & (frame.epochs == e)]
            accs.append(f"{me.acc_engine.mean():.1%} ({me.acc_engine.min():.1%}–{me.acc_engine.max():.1%})")
            rel = me.train_s.median() / ste.train_s.median()
            rel_cpu = me.train_cpu_s.median() / ste.train_cpu_s.median()
            times.append(f"{me.train_s.median():.1f} s ({rel:.2f}x; CPU {rel_cpu:.2f}x)")
        exact = "yes" if m.bit_exact.all() else f"NO ({int((~m.bit_exact).sum())} runs)"
        lines.append(f"| {method} | " + " | ".join(accs + times) + f" | {exact} |")
    note = (f"Accuracy on the 500 test images through `tersim.pipeline.run` (integer engine, FGQ N={GROUP_SIZE}, "
            f"{act_bits}-bit activations, hw_configs/default.yaml): mean (min–max) over seeds {seeds}. "
            "Train time: median wall seconds of the training epochs (1 torch thread), ratio to plain STE "
            "at the same budget, CPU-time ratio in brackets. Bit-exact: `tersim.verify` on all 500 test images, every run.")
    return "\n".join(lines) + "\n\n" + note


if __name__ == "__main__":
    sys.exit(main())
