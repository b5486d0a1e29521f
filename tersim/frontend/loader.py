"""Read a model file and lower it to the tersim IR.

Formats, detected from the content (not the extension), or a name from tersim.models.zoo:
  * torch.export archive (`torch.export.save`, a zip holding `archive_format` = "pt2"): the primary format.
    Checked by tersim.frontend.pt2_guard before torch.export.load runs: members torch would unpickle are refused
    without `trust_pickle`, and the load runs with torch.load forced weights-only.
  * TorchScript (`torch.jit.save`, a zip holding `constants.pkl` and `code/`): legacy, converted with
    `torch._export.converter.TS2EPConverter`; needs `input_shape`.
  * `torch.save` files: loaded with `weights_only=True` first. A state_dict is refused (no architecture);
    a pickled `nn.Module` needs `trust_pickle=True` (arbitrary code execution) and `input_shape`.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from tersim.errors import ModelLoadError
from tersim.frontend.ir import Graph
from tersim.frontend.lower import _first_line, export_and_lower, lower_exported, lower_module
from tersim.frontend.pt2_guard import LEGACY_TORCH_SAVE, guarded_load, quiet_torch, read_prefix

MAX_INPUT_ELEMENTS = 1 << 28  # per-sample input elements (C*H*W) accepted for a re-export: 1 GiB of float32
ACCEPTED = ("tersim reads a torch.export archive (torch.export.save, .pt2), TorchScript (torch.jit.save, with "
            "--input-shape) or a zoo name")

EXAMPLE_BATCH = 2  # batch used to export/convert; > 1 so torch does not specialise the batch size to 1
STATE_DICT_HINT = ("tersim needs the architecture, not only the weights: build the model in Python, load the "
                   "weights and save it with torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2')")


def import_model(path: str | Path, *, input_shape: tuple[int, ...] | None = None,
                 trust_pickle: bool = False, weights: str | Path | None = None) -> Graph:
    """Load the model at `path` (or a zoo name such as 'resnet50') and lower it.

    `input_shape` excludes the batch, e.g. (3, 32, 32). Zoo models get random weights (timing studies), or
    those of the state_dict file `weights` (torchvision key names, strict; see tersim.models.weights); their
    lowered graphs are cached by content (tersim.frontend.graph_cache).
    """
    path = Path(path)
    name = path.stem
    if input_shape is not None:
        input_shape = check_input_shape_arg(input_shape, str(path))
    if path.is_dir() or (path.exists() and not path.is_file()):
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ModelLoadError(f"{path}: is {what}, not a model file; {ACCEPTED}")
    if not path.is_file():
        from tersim.models.zoo import ZOO, build

        if str(path) in ZOO:
            from tersim.frontend.graph_cache import lower_zoo_module, lower_zoo_recipe

            shape = input_shape or ZOO[str(path)].input_shape
            if weights is None:
                graph = lower_zoo_recipe(str(path), 0, shape, lambda: build(str(path)),
                                         lambda: torch.randn(EXAMPLE_BATCH, *shape))
                return _checked(graph, path)
            from tersim.models.weights import load_weights

            module = build(str(path))
            load_weights(module, weights, str(path))
            return _checked(lower_zoo_module(module, torch.randn(EXAMPLE_BATCH, *shape), str(path)), path)
        raise ModelLoadError(f"{path}: model file not found (and not a zoo name: {', '.join(ZOO)})")
    if weights is not None:
        raise ModelLoadError(f"{path}: --weights goes with a zoo architecture name (see `tersim zoo`), not a "
                             "model file, which carries its own weights")
    kind = _detect(path)
    if kind == "export":
        graph = _load_exported(path, name, input_shape, trust_pickle)
    elif kind == "torchscript":
        graph = _load_torchscript(path, name, input_shape)
    else:
        graph = _load_torch_save(path, name, input_shape, trust_pickle)
    return _checked(graph, path)


def check_input_shape_arg(input_shape: tuple, source: str) -> tuple[int, ...]:
    """A per-sample input shape: positive ints, not absurdly large."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{source}: invalid input shape {input_shape!r}: expected positive ints C,H,W") from None
    if not shape or any(d <= 0 for d in shape) or any(d != v for d, v in zip(shape, input_shape)):
        raise ModelLoadError(f"{source}: invalid input shape {input_shape}: expected positive ints like 3,32,32")
    if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
        raise ModelLoadError(f"{source}: input shape {shape} has more than {MAX_INPUT_ELEMENTS} elements per sample")
    return shape


def _checked(graph: Graph, path: Path) -> Graph:
    """A lowered model tersim can ternarize: at least one conv/linear layer, finite weights and biases."""
    weighted = graph.weighted()
    if not weighted:
        raise ModelLoadError(f"{path}: the model has no conv2d or linear layer: nothing to ternarize")
    for node in weighted:
        for what, arr in (("weight", node.weight), ("bias", node.bias)):
            if arr is not None and not np.isfinite(arr).all():
                raise ModelLoadError(f"{path}: node '{node.name}': {what} holds NaN or infinite values")
    return graph


def _detect(path: Path) -> str:
    """'export' | 'torchscript' | 'torch_save' from the file's content (member names and a few bytes only)."""
    with open(path, "rb") as fh:
        head = fh.read(len(LEGACY_TORCH_SAVE))
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                fmt = [n for n in names if n == "archive_format" or n.endswith("/archive_format")]
                if fmt and read_prefix(zf, fmt[0], 16).strip() == b"pt2":
                    return "export"
        except Exception as exc:  # BadZipFile, EOFError, zlib.error, NotImplementedError, ...
            raise ModelLoadError(f"{path}: a damaged zip file ({type(exc).__name__}: {_first_line(exc)}); "
                                 f"{ACCEPTED}") from None
        if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_save"
        if any(n.endswith(".npy") for n in names):
            raise ModelLoadError(f"{path}: a NumPy .npz archive (data, not a model); {ACCEPTED}")
        raise ModelLoadError(f"{path}: a zip file but not a PyTorch model; {ACCEPTED}")
    if head == LEGACY_TORCH_SAVE:
        return "torch_save"
    what = "an empty file" if not head else "a NumPy .npy array" if head.startswith(b"\x93NUMPY") else \
        "not a model file"
    raise ModelLoadError(f"{path}: {what}; {ACCEPTED}")


def _example(input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn((EXAMPLE_BATCH, *input_shape), generator=torch.Generator().manual_seed(0))


def _load_exported(path: Path, name: str, input_shape: tuple[int, ...] | None, trust_pickle: bool) -> Graph:
    """torch.export archive (checked by pt2_guard first); with an input_shape different from the exported one,
    re-export."""
    ep = guarded_load(path, trust_pickle)
    exported = _exported_input_shape(ep)
    static = exported is not None and all(isinstance(d, int) for d in exported)
    if input_shape is not None and static and input_shape != exported:
        raise ModelLoadError(f"{path}: the model was exported for input shape {exported}, not {input_shape}; "
                             "export it again with the shape you want (or omit the input shape)")
    if input_shape is not None and not static:
        # dynamic H/W (or C): re-export the unlifted module with a concrete example
        return export_and_lower(ep.module(), _example(input_shape), name)
    return lower_exported(ep, name)


def _exported_input_shape(ep: torch.export.ExportedProgram) -> tuple | None:
    user = set(ep.graph_signature.user_inputs)
    for n in ep.graph.nodes:
        if n.op == "placeholder" and n.name in user:
            val = n.meta.get("val")
            return tuple(val.shape[1:]) if isinstance(val, torch.Tensor) else None
    return None


def _load_torchscript(path: Path, name: str, input_shape: tuple[int, ...] | None) -> Graph:
    """Legacy TorchScript: torch.jit.load, then TS2EPConverter (torch.export refuses ScriptModules)."""
    if input_shape is None:
        raise ModelLoadError(f"{path}: TorchScript files do not record the input shape; pass --input-shape C,H,W "
                             "(or re-save the model with torch.export.save)")
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError as exc:
        raise ModelLoadError(f"{path}: this torch build cannot convert TorchScript; "
                             "re-save the model with torch.export.save") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated and says so on every call
            module = torch.jit.load(str(path), map_location="cpu")
            module.eval()
            ep = TS2EPConverter(module, (_example(input_shape),)).convert()
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot convert the TorchScript model with input shape {input_shape}: "
                             f"{_first_line(exc)}") from exc
    # the converter marks every input dim dynamic (Dim.AUTO); re-export to fix the shape
    return export_and_lower(ep.module(), _example(input_shape), name)


def _load_torch_save(path: Path, name: str, input_shape: tuple[int, ...] | None, trust_pickle: bool) -> Graph:
    """torch.save file: weights-only first; a full pickle only with trust_pickle."""
    try:
        with quiet_torch():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc).lower() and "weights only" not in str(exc).lower():
            raise ModelLoadError(f"{path}: not a readable torch.save file: {_first_line(exc)}") from exc
        return _load_pickled_module(path, name, input_shape, trust_pickle)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable torch.save file: {_first_line(exc)}") from exc
    if isinstance(obj, dict):
        raise ModelLoadError(f"{path}: holds a state_dict (weights only). {STATE_DICT_HINT}")
    raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a model. {STATE_DICT_HINT}")


def _load_pickled_module(path: Path, name: str, input_shape: tuple[int, ...] | None, trust_pickle: bool) -> Graph:
    """A pickled nn.Module: unpickling runs arbitrary code, so it needs the explicit opt-in."""
    if not trust_pickle:
        raise ModelLoadError(f"{path}: holds pickled Python objects (e.g. a whole nn.Module); loading it can run "
                             "arbitrary code. Pass --trust-pickle (trust_pickle=True) only if you trust the file, "
                             "or save the model with torch.export.save")
    if input_shape is None:
        raise ModelLoadError(f"{path}: a pickled module does not record its input shape; pass --input-shape C,H,W")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot unpickle: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not an nn.Module. {STATE_DICT_HINT}")
    return lower_module(obj, _example(input_shape), name)
