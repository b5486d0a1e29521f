"""Labelled evaluation/calibration data: `.npz` (x, y) or a torch `.pt` dict of tensors (loaded weights_only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tersim.errors import DataError, one_line


ACCEPTED = ("tersim reads an .npz with arrays 'x' (inputs) and 'y' (labels), np.savez(path, x=x, y=y), or a .pt "
            "dict of tensors, torch.save({'x': x, 'y': y}, path)")
MAX_TORCH_DATA_BYTES = 8 << 30  # torch.load reads a .pt whole; an .npz is read array by array


def _kind(path: Path) -> str:
    """'npz' | 'torch' from the content, or a DataError saying what the file is and what tersim accepts."""
    from tersim.frontend.pt2_guard import LEGACY_TORCH_SAVE, refuse_zip_bombs

    with open(path, "rb") as fh:
        head = fh.read(len(LEGACY_TORCH_SAVE))
    if head == LEGACY_TORCH_SAVE:
        return "torch"
    if head.startswith(b"PK"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                infos = zf.infolist()
        except Exception as exc:  # BadZipFile, EOFError, ...
            raise DataError(f"{path}: a damaged zip file ({type(exc).__name__}); {ACCEPTED}") from None
        refuse_zip_bombs(infos, str(path), DataError)
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if any(n.endswith("archive_format") for n in names):
            raise DataError(f"{path}: a torch.export model archive, not data; {ACCEPTED}")
        raise DataError(f"{path}: a zip file but neither an .npz nor a torch.save file; {ACCEPTED}")
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: a single NumPy .npy array; {ACCEPTED}")
    what = "an empty file" if not head else "a text file (CSV?)" if _is_text(head) else "not a data file"
    raise DataError(f"{path}: {what}; {ACCEPTED}")


def _is_text(head: bytes) -> bool:
    try:
        return head.decode("utf-8").isprintable() or "\n" in head.decode("utf-8")
    except UnicodeDecodeError:
        return False


def load_dataset(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (x float32 NCHW or (N, features), y int64 or None), checked by `check_arrays`. Inputs must already be
    preprocessed. Never unpickles: .npz with allow_pickle=False, .pt with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file; {ACCEPTED}")
    if not path.is_file():
        raise DataError(f"{path}: {'not a regular file' if path.exists() else 'data file not found'}; {ACCEPTED}")
    kind = _kind(path)
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        else:
            import torch

            from tersim.frontend.pt2_guard import quiet_torch

            if path.stat().st_size > MAX_TORCH_DATA_BYTES:
                raise DataError(f"{path}: larger than {MAX_TORCH_DATA_BYTES >> 30} GiB; use an .npz")
            with quiet_torch():
                obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise DataError(f"{path}: holds a {type(obj).__name__}; {ACCEPTED}")
            arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in obj.items()}
    except DataError:
        raise
    except Exception as exc:  # a corrupt file, or pickled objects a weights-only load refuses
        raise DataError(f"{path}: cannot read the {'.npz' if kind == 'npz' else 'torch.save'} data file "
                        f"({type(exc).__name__}: {one_line(exc)[:200]}); {ACCEPTED}") from None
    if "x" not in arrays:
        raise DataError(f"{path}: missing array 'x' (inputs); found {sorted(map(str, arrays))}")
    return check_arrays(arrays["x"], arrays.get("y"), str(path))


def check_arrays(x: object, y: object, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """x: real numbers, finite in float32, a batch of >= 1 samples; y: one whole-number label >= 0 per sample."""
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise DataError(f"{source}: 'x' has dtype {x.dtype}; tersim wants real numbers (float32, preprocessed)")
    if x.ndim < 2:
        raise DataError(f"{source}: 'x' has shape {x.shape}; tersim wants a batch of samples (N, C, H, W) or (N, features)")
    if len(x) == 0:
        raise DataError(f"{source}: 'x' holds no samples")
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{source}: 'x' holds NaN or infinite values (or values beyond float32's range)")
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.dtype.kind not in "iuf" or y.size != len(x):
        what = f"dtype {y.dtype}" if y.dtype.kind not in "iuf" else f"{y.size} labels for {len(x)} samples"
        raise DataError(f"{source}: 'y' has {what}; tersim wants one integer class label per sample")
    y = y.reshape(-1)
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{source}: 'y' holds non-integer labels; tersim wants integer class labels")
    if (y < 0).any() or (y > np.iinfo(np.int64).max / 2).any():
        raise DataError(f"{source}: 'y' holds negative or huge labels (min {y.min()}); class labels are 0..classes-1")
    return x, y.astype(np.int64)


def check_input_shape(x: np.ndarray, expected: tuple[int, ...], source: str) -> None:
    if tuple(x.shape[1:]) != tuple(expected):
        raise DataError(f"{source}: inputs have shape {tuple(x.shape[1:])} per sample, the model expects {tuple(expected)}")


def check_labels(y: np.ndarray | None, classes: int | None, source: str) -> None:
    """Labels must index the model's outputs: a label >= classes would silently count as wrong (0% accuracy)."""
    if y is not None and classes is not None and len(y) and int(y.max()) >= classes:
        raise DataError(f"{source}: label {int(y.max())} is outside the model's {classes} classes (0..{classes - 1})")


def model_classes(graph) -> int | None:  # graph: tersim.frontend.Graph
    """The number of classes of a model whose output is one score per class, else None."""
    shape = graph.node(graph.output).shape
    return int(shape[0]) if len(shape) == 1 else None


def load_inputs(data: str | Path | tuple[np.ndarray, np.ndarray | None],
                expected: tuple[int, ...], classes: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) from a data file or an in-memory (x, y) pair, checked against the model's per-sample input shape and
    (given `classes`) its class count."""
    source = "data" if isinstance(data, tuple) else str(data)
    x, y = check_arrays(*data, source) if isinstance(data, tuple) else load_dataset(data)
    check_input_shape(x, expected, source)
    check_labels(y, classes, source)
    return x, y


def synthetic_inputs(shape: tuple[int, ...], count: int, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs for models given without data (timing studies; accuracy is then not reported)."""
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
