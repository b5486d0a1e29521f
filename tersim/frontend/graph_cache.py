"""Lowered zoo models on disk, so `tersim run resnet50` does not spend seconds in torch.export every time.

Exporting and lowering a large model costs several seconds (torch.export's tracing and decompositions); the
result is a plain Graph. A zoo model's graph is a function of its content and of the code that lowers it, so
the key hashes exactly those: the architecture's repr, every parameter and buffer (random or loaded weights
alike), the example input shape, the frontend's and tersim.models' source files, and the tersim and torch versions. Any
change to one of them is a different key; a damaged or foreign entry is lowered again and rewritten. A zoo
model built from a seed alone also gets a small `<recipe key>.key` file naming its entry (`lower_zoo_recipe`),
so a warm run neither builds nor hashes the module.

An entry is one .npz (numpy arrays + the graph's structure as JSON, read with allow_pickle=False: a cache
file cannot run code), written atomically. Location: $TERSIM_CACHE_DIR/graphs, default
$XDG_CACHE_HOME/tersim/graphs (~/.cache/tersim/graphs); TERSIM_CACHE_DIR=off turns the cache off.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tersim import __version__
from tersim.frontend.ir import Graph, Node

ENV_VAR = "TERSIM_CACHE_DIR"
FORMAT = "tersim-graph-1"
_CODE = [folder / name for folder in (Path(__file__).parent, Path(__file__).parents[1] / "models")
         for name in sorted(os.listdir(folder)) if name.endswith(".py")]  # the frontend and the zoo's modules


def cache_dir() -> Path | None:
    """Where lowered graphs are kept, or None when the cache is off."""
    root = os.environ.get(ENV_VAR)
    if root is not None and root.strip().lower() in ("", "off", "0", "none"):
        return None
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tersim"
    return Path(root) / "graphs"


def module_key(module: torch.nn.Module, input_shape: tuple[int, ...], name: str) -> str:
    """Content hash of what lowering `module` for inputs of `input_shape` (batch excluded) depends on."""
    h = hashlib.sha256(f"{FORMAT}|{__version__}|torch {torch.__version__}|{name}|{tuple(input_shape)}".encode())
    for path in _CODE:
        h.update(path.read_bytes())
    h.update(repr(module).encode())
    for kind, named in (("param", module.named_parameters(remove_duplicate=False)),
                        ("buffer", module.named_buffers(remove_duplicate=False))):
        for key, tensor in named:
            t = tensor.detach().contiguous()
            h.update(f"{kind}|{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(memoryview(t.numpy()).cast("B") if t.numel() else b"")
    return h.hexdigest()[:32]


def load(key: str) -> Graph | None:
    """The cached graph of `key`, or None (no cache, no entry, or an entry that does not read back)."""
    root = cache_dir()
    path = None if root is None else root / f"{key}.npz"
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("format") != FORMAT:
                return None
            nodes = []
            for i, n in enumerate(meta["nodes"]):
                bn = None
                if n["bn"] is not None:
                    bn = {k: z[f"bn{i}_{k}"] for k in n["bn"]["arrays"]}
                    bn["eps"] = n["bn"]["eps"]
                nodes.append(Node(name=n["name"], op=n["op"], inputs=list(n["inputs"]), attrs=_decode(n["attrs"]),
                                  weight=z[f"w{i}"] if n["weight"] else None, bias=z[f"b{i}"] if n["bias"] else None,
                                  shape=tuple(n["shape"]), bn=bn))
            return Graph(meta["name"], nodes, meta["output"])
    except Exception:  # noqa: BLE001  a damaged entry fails in many ways (zip, zlib, JSON, keys): lower again
        return None


def store(key: str, graph: Graph) -> None:
    """Write `graph` under `key` (atomically); a cache that cannot be written is skipped, not an error."""
    from tersim.errors import TersimError
    from tersim.files import atomic_file

    root = cache_dir()
    if root is None:
        return
    arrays, nodes = {}, []
    for i, node in enumerate(graph.nodes):
        bn = None
        if node.bn is not None:
            bn = {"eps": node.bn["eps"], "arrays": [k for k in node.bn if k != "eps"]}
            arrays.update({f"bn{i}_{k}": node.bn[k] for k in bn["arrays"]})
        if node.weight is not None:
            arrays[f"w{i}"] = node.weight
        if node.bias is not None:
            arrays[f"b{i}"] = node.bias
        nodes.append({"name": node.name, "op": node.op, "inputs": list(node.inputs), "attrs": _encode(node.attrs),
                      "shape": list(node.shape), "weight": node.weight is not None, "bias": node.bias is not None,
                      "bn": bn})
    meta = json.dumps({"format": FORMAT, "name": graph.name, "output": graph.output, "nodes": nodes})
    arrays["meta"] = np.frombuffer(meta.encode(), np.uint8)
    try:
        with atomic_file(root / f"{key}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except (TersimError, OSError):
        pass


def _encode(value: object) -> object:
    """JSON with tuples kept apart from lists (IR attributes are ints, floats, bools, None and tuples)."""
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot cache an attribute of type {type(value).__name__}")


def _decode(value: object) -> object:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "tuple" in value:
            return tuple(_decode(v) for v in value["tuple"])
        return {k: _decode(v) for k, v in value["dict"].items()}
    return value


def lower_zoo_module(module: torch.nn.Module, example_input: torch.Tensor, name: str) -> Graph:
    """`lower_module(module, example_input, name)`, from the cache when this content was lowered before."""
    return _lower_cached(module, example_input, name)[1]


def _lower_cached(module: torch.nn.Module, example_input: torch.Tensor, name: str) -> tuple[str, Graph]:
    """(content key, graph) of lower_zoo_module."""
    from tersim.frontend.lower import lower_module

    key = module_key(module, tuple(example_input.shape[1:]), name)
    graph = load(key)
    if graph is None:
        graph = lower_module(module, example_input, name)
        try:
            store(key, graph)
        except TypeError:  # an attribute JSON cannot hold: lowered every time
            pass
    return key, graph


def recipe_key(name: str, seed: int, input_shape: tuple[int, ...]) -> str:
    """Key of a zoo model built from `seed` alone (no weights file). Its parameters are a function of this
    recipe, the zoo's code and torch's version and default dtype, all hashed here, so a later run finds the
    content key without building (random init) and hashing a module: 0.4 s of every warm ResNet-50 run."""
    h = hashlib.sha256(f"recipe|{FORMAT}|{__version__}|torch {torch.__version__}|{torch.get_default_dtype()}|"
                       f"{name}|{seed}|{tuple(input_shape)}".encode())
    for path in _CODE:
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


def lower_zoo_recipe(name: str, seed: int, input_shape: tuple[int, ...],
                     build: Callable[[], torch.nn.Module], example_input: Callable[[], torch.Tensor]) -> Graph:
    """lower_zoo_module of `build()` for a seeded zoo model: a `<recipe key>.key` file beside the entries names
    its content key, so a warm run reads the graph without calling `build` or `example_input`."""
    from tersim.errors import TersimError
    from tersim.files import write_text_atomic

    root = cache_dir()
    alias = None if root is None else root / f"{recipe_key(name, seed, input_shape)}.key"
    if alias is not None and alias.is_file():
        key = alias.read_text(encoding="ascii", errors="replace").strip()
        graph = load(key) if re.fullmatch(r"[0-9a-f]{32}", key) else None
        if graph is not None:
            return graph
    key, graph = _lower_cached(build(), example_input(), name)
    if alias is not None and (root / f"{key}.npz").is_file():   # only a stored entry gets a name
        try:
            write_text_atomic(alias, key)
        except (TersimError, OSError):
            pass
    return graph
