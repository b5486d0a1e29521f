"""Train the shipped example model (DigitsResNet on scikit-learn's 8x8 digits) and write the example assets.

    .venv/bin/python scripts/train_digits.py [--out examples] [--epochs 40]

Deterministic: seed 0, torch.use_deterministic_algorithms(True), one CPU thread. Writes atomically
(temporary file in the same folder, then os.replace):

    <out>/digits_resnet.pt2   torch.export.save of the eval-mode model, input (batch, 1, 8, 8) with
                              the batch dimension dynamic (Dim("batch", min=1): any batch size runs)
    <out>/digits_test.npz     x float32 (500, 1, 8, 8) preprocessed, y int64 (500,)
    <out>/digits_train.npz    x float32 (1297, 1, 8, 8) preprocessed, y int64 (1297,)

The npz files also hold `mean` and `std` (float32 scalars): the preprocessing constants below.
Preprocessing: x = (pixels / 16.0 - MEAN) / STD, with MEAN/STD the scalar mean/std of the
training split's pixels / 16.0 (recomputed and checked against the constants on every run).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tersim.files import atomic_file  # noqa: E402
from tersim.models.digits import DigitsResNet  # noqa: E402

SEED = 0
N_TRAIN, N_TEST = 1297, 500
# Scalar mean / std (population, ddof=0) of pixels / 16.0 over the 1297-image training split.
MEAN = 0.30535611
STD = 0.37592094


def split_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw (pixels / 16) train/test split of sklearn digits with a fixed permutation (seed 0)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float64) / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    assert len(x) == N_TRAIN + N_TEST, len(x)
    perm = np.random.default_rng(SEED).permutation(len(x))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    return x[tr], y[tr], x[te], y[te]


def preprocess(x: np.ndarray) -> np.ndarray:
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def _atomic_write(path: Path, write) -> None:
    """`write(binary file)` into `path` through tersim's one atomic writer (never a half-written asset)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        write(f)


def deterministic() -> None:
    """Seed torch and make training reproducible bit for bit (deterministic kernels, one thread)."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def fit(model: nn.Module, Xtr: torch.Tensor, Ytr: torch.Tensor, Xte: torch.Tensor, Yte: torch.Tensor, epochs: int,
        batch_size: int, lr: float) -> None:
    """Adam + one-cycle schedule, seeded shuffles; prints the test accuracy every 10 epochs; leaves model in eval."""
    n_train = len(Xtr)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (n_train + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        total = 0.0
        for i in range(0, n_train, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(Xtr[idx]), Ytr[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
            model.eval()
            print(f"epoch {epoch + 1:3d}  loss {total / n_train:.4f}  test acc {accuracy(model, Xte, Yte):.4f}", flush=True)
    model.eval()


def export_checked(model: nn.Module, Xte: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension, checked against the eager model."""
    # A (1, 1, 8, 8) example cannot carry a dynamic batch dim: export specialises size-1 dims
    # ("marked batch as dynamic but your code specialized it to be a constant (1)"), and a static
    # export rejects any other batch size (guard x.size()[0] == 1). So trace with a batch of 2
    # and declare the batch dim dynamic with min=1: the archive then runs batches of 1, 2, ... n.
    example = Xte[:2].clone()
    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    # The archive must reproduce the eager model (batch 1 and the full test batch) before it is written.
    with torch.no_grad():
        diff = max((ep.module()(x) - model(x)).abs().max().item() for x in (Xte[:1], Xte))
    if diff > 1e-5:
        raise SystemExit(f"exported program differs from the eager model by {diff}")
    return ep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "examples")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    deterministic()

    xtr_raw, ytr, xte_raw, yte = split_digits()
    mean, std = float(xtr_raw.mean(dtype=np.float64)), float(xtr_raw.std(dtype=np.float64))
    if abs(mean - MEAN) > 1e-6 or abs(std - STD) > 1e-6:
        raise SystemExit(f"preprocessing constants drifted: mean {mean:.8f} (MEAN={MEAN}), std {std:.8f} (STD={STD})")
    xtr, xte = preprocess(xtr_raw), preprocess(xte_raw)
    Xtr, Ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    Xte, Yte = torch.from_numpy(xte), torch.from_numpy(yte)

    model = DigitsResNet()
    fit(model, Xtr, Ytr, Xte, Yte, args.epochs, args.batch_size, args.lr)
    train_acc, test_acc = accuracy(model, Xtr, Ytr), accuracy(model, Xte, Yte)
    ep = export_checked(model, Xte)

    out: Path = args.out
    _atomic_write(out / "digits_resnet.pt2", lambda f: torch.export.save(ep, f))
    consts = {"mean": np.float32(MEAN), "std": np.float32(STD)}
    _atomic_write(out / "digits_test.npz", lambda f: np.savez_compressed(f, x=xte, y=yte, **consts))
    _atomic_write(out / "digits_train.npz", lambda f: np.savez_compressed(f, x=xtr, y=ytr, **consts))

    size_kb = (out / "digits_resnet.pt2").stat().st_size / 1024
    print(f"train accuracy {train_acc:.4f} ({N_TRAIN} images)")
    print(f"test accuracy  {test_acc:.4f} ({N_TEST} images)")
    print(f"wrote {out / 'digits_resnet.pt2'} ({size_kb:.0f} KiB), digits_test.npz, digits_train.npz "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
