"""Labelled evaluation/calibration data: `.npz` (x, y) or a torch `.pt` dict of tensors (loaded weights_only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tersim.errors import DataError


def load_dataset(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (x float32 NCHW or (N, features), y int64 or None). Inputs must already be preprocessed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        else:
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise DataError(f"{path}: expected a dict with keys 'x' and 'y', got {type(obj).__name__}")
            arrays = {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in obj.items()}
    except DataError:
        raise
    except Exception as exc:  # a corrupt or foreign file
        raise DataError(f"{path}: cannot read data file: {exc}") from None
    if "x" not in arrays:
        raise DataError(f"{path}: missing array 'x' (inputs); found {sorted(arrays)}")
    x = np.asarray(arrays["x"], dtype=np.float32)
    y = arrays.get("y")
    if y is not None:
        y = np.asarray(y).astype(np.int64).reshape(-1)
        if len(y) != len(x):
            raise DataError(f"{path}: 'y' has {len(y)} labels but 'x' has {len(x)} samples")
    return x, y


def check_input_shape(x: np.ndarray, expected: tuple[int, ...], source: str) -> None:
    if tuple(x.shape[1:]) != tuple(expected):
        raise DataError(f"{source}: inputs have shape {tuple(x.shape[1:])} per sample, the model expects {tuple(expected)}")


def load_inputs(data: str | Path | tuple[np.ndarray, np.ndarray | None],
                expected: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) from a data file or an in-memory (x, y) pair, checked against the model's per-sample input shape."""
    x, y = data if isinstance(data, tuple) else load_dataset(data)
    check_input_shape(x, expected, "data" if isinstance(data, tuple) else str(data))
    return x, y


def synthetic_inputs(shape: tuple[int, ...], count: int, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs for models given without data (timing studies; accuracy is then not reported)."""
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
