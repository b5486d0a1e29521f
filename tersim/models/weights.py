"""Pretrained weights for a zoo architecture from a local state_dict file (`--weights FILE`).

Read without running code from the file: `torch.load(weights_only=True)` for `torch.save` files (.pth/.pt),
or the safetensors layout (8-byte header length, JSON tensor table, raw little-endian data) parsed here, so
the `safetensors` package is not needed. Keys must match the architecture exactly (torchvision's names);
common wrappers are unwrapped: {"state_dict": ...} / {"model": ...} and a "module." prefix (DataParallel).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

from tersim.errors import ModelLoadError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_LISTED = 5  # keys named in an error message
# BN's batch counter only matters in training; old torchvision checkpoints do not carry it
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= length <= path.stat().st_size - 8


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (format: huggingface/safetensors README), checked against the file size."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + length])
    except ValueError as exc:
        raise ModelLoadError(f"{path}: bad safetensors header: {exc}") from None
    body = memoryview(data)[8 + length:]
    tensors = {}
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[spec["dtype"]]
            start, end = (int(v) for v in spec["data_offsets"])
            shape = [int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{path}: tensor '{key}': unsupported or malformed entry {spec!r}") from None
        count = 1
        for d in shape:
            count *= d
        if not 0 <= start <= end <= len(body) or end - start != count * torch.empty((), dtype=dtype).element_size():
            raise ModelLoadError(f"{path}: tensor '{key}': data offsets {start}..{end} do not fit shape {shape}")
        raw = bytes(body[start:end])
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[key] = flat.reshape(shape).clone()
    return tensors


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file, unwrapped; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    if is_safetensors(path):
        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt, foreign, or holding pickled objects beyond tensors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path}: not a state_dict readable with torch.load(weights_only=True) or "
                                 f"safetensors: {first}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"{path}: expected a state_dict (parameter name -> tensor), got "
                             f"{'an empty dict' if isinstance(state, dict) else type(state).__name__}")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{path}: entry '{bad[0]}' is a {type(state[bad[0]]).__name__}, not a tensor")
    return state


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def load_weights(model: nn.Module, path: str | Path, name: str) -> nn.Module:
    """Load the state_dict at `path` into `model` with strict key and shape matching; one error naming the
    first missing / unexpected / mis-shaped keys otherwise."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (file != {name}): {_listed(shapes)}")
    if problems:
        raise ModelLoadError(f"{path}: does not fit zoo architecture '{name}': " + "; ".join(problems))
    with torch.no_grad():
        for key, value in expected.items():
            if key in state:
                value.copy_(state[key].to(value.dtype))
    return model.eval()
