"""Labelled evaluation/calibration data: `.npz` (x, y) or a torch `.pt` dict of tensors (loaded weights_only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tersim.errors import DataError, one_line
from tersim.options import DEFAULT_LOADER_WORKERS


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


# --- streamed evaluation data: arrays, image folders, torch Datasets and DataLoaders ------------------------
from tersim.quantize.graph import CALIBRATION_BATCH  # noqa: E402  (one calibration batch size)


class ArrayDataset:
    """(x, y) arrays as a map-style dataset; y None -> label -1 (unlabelled)."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], -1 if self.y is None else int(self.y[i])


def _collate(items: list) -> tuple[np.ndarray, np.ndarray]:
    """Stack a batch as numpy (the engine's input type), not torch tensors."""
    xs, ys = zip(*items)
    return np.stack([np.asarray(x, dtype=np.float32) for x in xs]), np.asarray(ys, dtype=np.int64)


def _as_numpy(batch: object) -> tuple[np.ndarray, np.ndarray | None]:
    """A user DataLoader's batch: (x, y) tensors/arrays, or x alone."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        y = np.asarray(y.numpy() if hasattr(y, "numpy") else y).astype(np.int64).reshape(-1)
    else:
        x, y = batch, None
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32), y


def _worker_error(exc: BaseException) -> BaseException:
    """A DataError raised in a DataLoader worker arrives wrapped in a traceback text: keep its one line."""
    for line in reversed(str(exc).splitlines()):
        if line.startswith("tersim.errors.DataError: "):
            return DataError(line.split(": ", 1)[1])
    return exc


class DataSource:
    """Labelled (or unlabelled) evaluation data, read in batches and never held whole in memory.

    `dataset` is map-style (len, [i] -> (x, label)), sliced by index for calibration and shards; a user's
    DataLoader is iterated as it is (no shards). `identity`: a content hash for caches, None if unknown.
    """

    def __init__(self, dataset=None, *, loader=None, labelled: bool = True, limit: int | None = None,
                 loader_workers: int = 0, identity=None, name: str = "data", path: str | Path | None = None):
        self.dataset, self.loader, self.labelled = dataset, loader, labelled
        self.loader_workers, self.name = loader_workers, name
        self.path = None if path is None else Path(path)  # the file or folder read, if any
        self._identity = identity  # a string, or a function computing it on first use
        size = len(dataset) if dataset is not None else len(loader.dataset)
        self.length = size if limit is None else min(size, limit)
        if self.length == 0:
            raise DataError(f"{name}: no samples")

    @property
    def identity(self) -> str | None:
        if callable(self._identity):
            self._identity = self._identity()
        return self._identity if self._identity is None else f"{self._identity}|limit={self.length}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["loader_workers"] = 0  # in a shard worker (maybe a daemon process) decode in-process
        if callable(state["_identity"]):
            state["_identity"] = None  # a closure does not pickle; workers need no cache identity
        return state

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None):
        """(x float32 NCHW, y int64 or None) batches of samples [start, stop)."""
        stop = self.length if stop is None else min(stop, self.length)
        if self.loader is not None:
            if start != 0:
                raise DataError("a DataLoader is read from its start only: pass its Dataset to shard it")
            yield from self._user_batches(stop)
            return
        if start >= stop:
            return
        if isinstance(self.dataset, ArrayDataset):  # already in memory: slices, no per-item collation
            for i in range(start, stop, batch_size):
                j = min(i + batch_size, stop)
                yield self.dataset.x[i:j], (self.dataset.y[i:j] if self.labelled else None)
            return
        import torch.utils.data as tud

        workers = self.loader_workers if stop - start > batch_size else 0
        loader = tud.DataLoader(tud.Subset(self.dataset, range(start, stop)), batch_size=batch_size,
                                shuffle=False, num_workers=workers, collate_fn=_collate,
                                prefetch_factor=2 if workers else None)
        try:
            for x, y in loader:
                yield x, (y if self.labelled else None)
        except Exception as exc:
            raise _worker_error(exc) from None

    def _user_batches(self, stop: int):
        seen = 0
        for batch in self.loader:
            x, y = _as_numpy(batch)
            take = min(len(x), stop - seen)
            yield x[:take], (y[:take] if (y is not None and self.labelled) else None)
            seen += take
            if seen >= stop:
                return

    def calibration(self, batches: int) -> list[np.ndarray]:
        """The first `batches` batches of CALIBRATION_BATCH samples (the activation-range calibration set)."""
        n = min(self.length, batches * CALIBRATION_BATCH)
        if self.loader is not None:
            xs = [x for x, _ in self._user_batches(n)]
            flat = np.concatenate(xs) if xs else np.zeros((0,), np.float32)
            return [flat[i:i + CALIBRATION_BATCH] for i in range(0, len(flat), CALIBRATION_BATCH)]
        return [x for x, _ in self.batches(CALIBRATION_BATCH, 0, n)]

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Every sample in memory (for `verify`, whose --limit keeps this small)."""
        parts = list(self.batches(256))
        x = np.concatenate([p[0] for p in parts])
        return x, (np.concatenate([p[1] for p in parts]) if self.labelled else None)


def open_data(data, expected: tuple[int, ...], *, limit: int | None = None, preprocess: str | None = None,
              class_map: str | Path | None = None, loader_workers: int = DEFAULT_LOADER_WORKERS,
              classes: int | None = None) -> DataSource:
    """A DataSource from: an .npz/.pt file, an image folder (ImageFolder layout), an (x, y) pair of arrays,
    a torch Dataset (items (x, label) or x) or a torch DataLoader (batches (x, y) or x)."""
    import torch.utils.data as tud

    if isinstance(data, tud.DataLoader):
        return DataSource(loader=data, labelled=True, limit=limit, name="DataLoader")
    if isinstance(data, tud.Dataset) and not isinstance(data, tud.IterableDataset):
        return DataSource(_LabelledItems(data), labelled=_has_labels(data), limit=limit, name="Dataset")
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        from tersim.images import ImageFolderDataset

        folder = ImageFolderDataset(data, preprocess, class_map, expected_shape=expected)
        if classes is not None and len(folder.classes) > classes:
            raise DataError(f"{data}: {len(folder.classes)} classes (folders or class map) but the model has "
                            f"{classes} outputs")
        return DataSource(folder, limit=limit, loader_workers=loader_workers,
                          identity=lambda: f"folder:{folder.digest()}", name=str(data), path=data)
    if preprocess not in (None, "none") or class_map is not None:
        raise DataError(f"{data if isinstance(data, (str, Path)) else 'data'}: --preprocess and --class-map apply "
                        "to image folders only (array data is already preprocessed)")
    x, y = load_inputs(data, expected, classes)
    if limit is not None:
        x, y = x[:limit], (y[:limit] if y is not None else None)
    return DataSource(ArrayDataset(x, y), labelled=y is not None, limit=limit,
                      identity=lambda: f"arrays:{array_digest(x, y)}",
                      name="data" if isinstance(data, tuple) else str(data),
                      path=None if isinstance(data, tuple) else data)


def update_array_hash(h, arr: np.ndarray | None) -> None:
    """Feed an array's dtype, shape and bytes (or a None marker) to the hash `h`."""
    if arr is None:
        h.update(b"none")
        return
    arr = np.ascontiguousarray(arr)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))


def array_digest(*arrays: np.ndarray | None) -> str:
    """Content hash of arrays (dtype, shape, bytes); None hashes as a marker."""
    import hashlib

    h = hashlib.sha256()
    for arr in arrays:
        update_array_hash(h, arr)
    return h.hexdigest()


class _LabelledItems:
    """A user's Dataset whose items may be x alone: always (x, label or -1)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        if isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item
            return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32), int(y)
        return np.asarray(item.numpy() if hasattr(item, "numpy") else item, dtype=np.float32), -1


def _has_labels(dataset) -> bool:
    item = dataset[0]
    return isinstance(item, (tuple, list)) and len(item) == 2
