"""Train the second shipped example model (DigitsMobileNet: depthwise + pointwise convs, ReLU6) on the shipped
digits data and write it next to the first.

    .venv/bin/python scripts/train_digits_mobilenet.py [--out examples] [--epochs 60]

Reads examples/digits_train.npz / digits_test.npz (made by scripts/train_digits.py; same preprocessing) and
writes <out>/digits_mobilenet.pt2 atomically: torch.export.save of the eval-mode model, batch dimension
dynamic. Deterministic: seed 0, deterministic algorithms, one CPU thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tersim.models.digits import DigitsMobileNet  # noqa: E402
from train_digits import _atomic_write, accuracy, deterministic, export_checked, fit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "examples")
    ap.add_argument("--data", type=Path, default=ROOT / "examples", help="folder with digits_train/test.npz")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-3)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    deterministic()
    with np.load(args.data / "digits_train.npz") as f:
        Xtr, Ytr = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    with np.load(args.data / "digits_test.npz") as f:
        Xte, Yte = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    n_train = len(Xtr)

    model = DigitsMobileNet()
    fit(model, Xtr, Ytr, Xte, Yte, args.epochs, args.batch_size, args.lr)
    ep = export_checked(model, Xte)
    path = args.out / "digits_mobilenet.pt2"
    _atomic_write(path, lambda f: torch.export.save(ep, f))
    print(f"train accuracy {accuracy(model, Xtr, Ytr):.4f} ({n_train} images)")
    print(f"test accuracy  {accuracy(model, Xte, Yte):.4f} ({len(Xte)} images)")
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
