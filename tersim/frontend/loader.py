"""Read a model file and lower it to the tersim IR.

Formats, detected from the content (not the extension), or a name from tersim.models.zoo:
  * torch.export archive (`torch.export.save`, a zip holding `archive_format` = "pt2"): the primary format.
    `torch.export.load` still unpickles some parts, so only load files you made or trust.
  * TorchScript (`torch.jit.save`, a zip holding `constants.pkl` and `code/`): legacy, converted with
    `torch._export.converter.TS2EPConverter`; needs `input_shape`.
  * `torch.save` files: loaded with `weights_only=True` first. A state_dict is refused (no architecture);
    a pickled `nn.Module` needs `trust_pickle=True` (arbitrary code execution) and `input_shape`.
"""
from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from tersim.errors import ModelLoadError
from tersim.frontend.ir import Graph
from tersim.frontend.lower import _first_line, export_and_lower, lower_exported, lower_module

EXAMPLE_BATCH = 2  # batch used to export/convert; > 1 so torch does not specialise the batch size to 1
STATE_DICT_HINT = ("tersim needs the architecture, not only the weights: build the model in Python, load the "
                   "weights and save it with torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2')")


def import_model(path: str | Path, *, input_shape: tuple[int, ...] | None = None,
                 trust_pickle: bool = False) -> Graph:
    """Load the model at `path` (or a zoo name such as 'resnet50') and lower it.

    `input_shape` excludes the batch, e.g. (3, 32, 32). Zoo models get random weights (timing studies).
    """
    path = Path(path)
    name = path.stem
    if not path.is_file():
        from tersim.models.zoo import ZOO, build

        if str(path) in ZOO:
            shape = input_shape or ZOO[str(path)].input_shape
            return lower_module(build(str(path)), torch.randn(EXAMPLE_BATCH, *shape), str(path))
        raise ModelLoadError(f"{path}: model file not found (and not a zoo name: {', '.join(ZOO)})")
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d <= 0 for d in input_shape):
            raise ModelLoadError(f"{path}: invalid input shape {input_shape}")
    kind = _detect(path)
    if kind == "export":
        return _load_exported(path, name, input_shape)
    if kind == "torchscript":
        return _load_torchscript(path, name, input_shape)
    return _load_torch_save(path, name, input_shape, trust_pickle)


def _detect(path: Path) -> str:
    """'export' | 'torchscript' | 'torch_save' from the file's content."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                fmt = [n for n in names if n == "archive_format" or n.endswith("/archive_format")]
                if fmt and zf.read(fmt[0]).strip() == b"pt2":
                    return "export"
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelLoadError(f"{path}: unreadable zip archive: {exc}") from exc
        if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_save"
        raise ModelLoadError(f"{path}: a zip file but not a PyTorch model (torch.export / TorchScript / torch.save)")
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80":  # pickle protocol marker: legacy (non-zip) torch.save
        return "torch_save"
    raise ModelLoadError(f"{path}: not a recognised model file (expected a torch.export archive, "
                         "TorchScript or a torch.save file)")


def _example(input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn((EXAMPLE_BATCH, *input_shape), generator=torch.Generator().manual_seed(0))


def _load_exported(path: Path, name: str, input_shape: tuple[int, ...] | None) -> Graph:
    """torch.export archive; with an input_shape different from the exported one, re-export."""
    try:
        with open(path, "rb") as fh:  # a file object: torch.export.load insists on '.pt2' for paths
            ep = torch.export.load(io.BytesIO(fh.read()))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the torch.export archive: {_first_line(exc)}") from exc
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
