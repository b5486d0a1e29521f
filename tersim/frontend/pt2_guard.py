"""Check a torch.export archive before `torch.export.load` sees it: nothing in a model file may run code.

Why: `torch.export.load` (torch 2.13) runs code from the archive in several places. It unpickles with
`weights_only=False` every weight or constant its payload config marks `use_pickle`, the legacy
`data/weights/<model>.pt` / `data/constants/<model>.pt` files, torchbind (`custom_obj_*`) and opaque
(`opaque_obj_*`) constants, and the sample inputs when a weights-only load of them fails; it loads native
libraries from `data/aotinductor/`; it `sympy.sympify`s (i.e. `eval`s) the symbolic-shape strings of the graph
JSON; and `ExportedProgram.module()` `exec`s the archive's `guards_code`. A crafted archive therefore runs its
payload before any error could be reported.

What this module does:
  * `inspect_archive` reads only the zip directory and bounded prefixes of small JSON members, refuses every
    member torch would unpickle (naming it) unless `trust_pickle`, refuses compiled code and members a
    `torch.export.save` archive does not have, and refuses absurd sizes (zip bombs) before anything is inflated.
  * `guarded_load` then calls `torch.export.load` with `torch.load` forced to `weights_only=True` (a second wall
    for anything the inspection missed), `sympy.sympify` restricted to plain arithmetic expressions, torch's
    warnings and log messages silenced (the caller reports one line), and the archive's `guards_code` dropped
    (tersim checks input shapes itself).
"""
from __future__ import annotations

import ast
import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tersim.errors import ModelLoadError

MAX_MEMBERS = 100_000  # a torch.export archive has a few files per weight tensor
MAX_TOTAL_BYTES = 16 << 30  # declared uncompressed size of the whole archive (16 GiB: VGG16 is 0.55 GB)
MAX_JSON_BYTES = 256 << 20  # graph JSON, payload configs, extra files, sample inputs (ResNet-50's graph: ~6 MB)
MAX_RATIO = 200  # torch stores members uncompressed; a deflated member > 1 MiB inflating > 200x is a zip bomb
RATIO_MIN_BYTES = 1 << 20
# legacy (pre-zip) torch.save files start with torch's magic number, pickled with protocol 2
LEGACY_TORCH_SAVE = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
SMALL_MEMBERS = ("archive_format", "archive_version", "byteorder")  # a few bytes each

PICKLE_HINT = ("loading it runs code from the file. Pass --trust-pickle (trust_pickle=True) only if you trust "
               "the file, or re-save the model with torch.export.save from torch 2.13")


def read_prefix(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """At most `limit` bytes of member `name` (never inflates more, whatever its header claims)."""
    with zf.open(name) as fh:
        return fh.read(limit)


def refuse_zip_bombs(infos: list[zipfile.ZipInfo], where: str, error: type[Exception]) -> None:
    """A compressed member over 1 MiB that inflates more than MAX_RATIO times is refused before it is read."""
    for info in infos:
        if (info.compress_type != zipfile.ZIP_STORED and info.file_size > RATIO_MIN_BYTES
                and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
            raise error(f"{where}: member '{info.filename}' inflates {info.compress_size} bytes to "
                        f"{info.file_size} (more than {MAX_RATIO}x): refusing a zip bomb")


def _root(names: list[str]) -> str:
    """The archive's top folder (`archive/` for torch.export.save); every member must sit under it."""
    first = names[0]
    return first.split("/", 1)[0] + "/" if "/" in first else ""


def _json_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> object:
    if info.file_size > MAX_JSON_BYTES:
        raise ModelLoadError(f"{where}: member '{info.filename}' declares {info.file_size} bytes, more than the "
                             f"{MAX_JSON_BYTES >> 20} MiB tersim reads for metadata")
    try:
        return json.loads(read_prefix(zf, info.filename, MAX_JSON_BYTES))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{where}: member '{info.filename}' is not valid JSON: {exc}") from None


def _payload_entries(config: object, member: str, where: str) -> dict:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise ModelLoadError(f"{where}: member '{member}' is not a torch.export payload config")
    return entries


def inspect_archive(path: str | Path, trust_pickle: bool = False) -> None:
    """Refuse an archive torch would unpickle, run native code from, or inflate absurdly; ModelLoadError if so."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            _inspect(zf, where, trust_pickle)
    except ModelLoadError:
        raise
    except Exception as exc:  # BadZipFile, NotImplementedError (compression), EOFError, zlib.error, ...
        raise ModelLoadError(f"{where}: unreadable zip archive: {type(exc).__name__}: {exc}") from None


def _inspect(zf: zipfile.ZipFile, where: str, trust_pickle: bool) -> None:
    infos = zf.infolist()
    if not infos or len(infos) > MAX_MEMBERS:
        raise ModelLoadError(f"{where}: {len(infos)} members: not a torch.export archive")
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise ModelLoadError(f"{where}: members declare {total} bytes uncompressed, more than the "
                             f"{MAX_TOTAL_BYTES >> 30} GiB tersim accepts")
    refuse_zip_bombs(infos, where, ModelLoadError)
    lowered = [i.filename.lower() for i in infos]
    if len(set(lowered)) != len(lowered):  # torch's zip reader matches names case-insensitively: no look-alikes
        twice = sorted({n for n in lowered if lowered.count(n) > 1})
        raise ModelLoadError(f"{where}: member name '{twice[0]}' appears more than once (ignoring case): "
                             "refusing an ambiguous archive")
    root = _root([i.filename for i in infos])
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.startswith(root):
            raise ModelLoadError(f"{where}: member '{info.filename}' lies outside the archive folder '{root}'")
        members[info.filename[len(root):]] = info

    def refuse_pickled(member: str, what: str) -> None:
        if not trust_pickle:
            raise ModelLoadError(f"{where}: member '{root}{member}' is {what}: {PICKLE_HINT}")

    models = [m[len("models/"):-len(".json")] for m in members if re.fullmatch(r"models/[^/]+\.json", m)]
    if not models:
        raise ModelLoadError(f"{where}: no models/<name>.json member: not a torch.export archive")
    expected = {*SMALL_MEMBERS}
    for model in models:
        expected.add(f"models/{model}.json")
        if members[f"models/{model}.json"].file_size > MAX_JSON_BYTES:
            _json_member(zf, members[f"models/{model}.json"], where)  # raises: too large
        for kind, prefix in (("weights", "weight"), ("constants", "constant")):
            legacy = f"data/{kind}/{model}.pt"
            if legacy in members:
                refuse_pickled(legacy, f"a pickled {prefix} file (legacy format, unpickled with weights_only=False)")
                expected.add(legacy)
                continue
            config_name = f"data/{kind}/{model}_{kind}_config.json"
            if config_name not in members:
                raise ModelLoadError(f"{where}: missing member '{root}{config_name}': not a torch.export archive")
            expected.add(config_name)
            for fqn, entry in _payload_entries(_json_member(zf, members[config_name], where), config_name,
                                               where).items():
                member = f"data/{kind}/{entry.get('path_name')}"
                name = str(entry.get("path_name"))
                if entry.get("use_pickle"):
                    refuse_pickled(member, f"{prefix} '{fqn}' stored as a pickle")
                elif kind == "constants" and name.startswith("custom_obj_"):
                    refuse_pickled(member, f"constant '{fqn}', a pickled TorchScript object")
                elif kind == "constants" and name.startswith("opaque_obj_"):
                    refuse_pickled(member, f"constant '{fqn}', a pickled Python object")
                elif kind == "constants" and not name.startswith("tensor_"):
                    raise ModelLoadError(f"{where}: constant '{fqn}' has an unknown payload '{name}'")
                if "/" in name or name in ("", ".", ".."):
                    raise ModelLoadError(f"{where}: {prefix} '{fqn}' names an invalid member '{name}'")
                expected.add(member)
        sample = f"data/sample_inputs/{model}.pt"
        if sample in members:
            expected.add(sample)
            _check_sample_inputs(zf, members[sample], sample, where, refuse_pickled)
    for member, info in members.items():
        if member.startswith("data/aotinductor/"):
            raise ModelLoadError(f"{where}: member '{info.filename}' is AOTInductor compiled code; tersim never loads "
                                 "native code from a model file (save the model with torch.export.save)")
        if (member in SMALL_MEMBERS or member.startswith(".data/")) and info.file_size > 1024:
            raise ModelLoadError(f"{where}: member '{info.filename}' declares {info.file_size} bytes; "
                                 "torch.export.save writes a few bytes there")
        if member in expected or member.startswith((".data/", "extra/")) or member.endswith("/"):
            if member.startswith("extra/") and info.file_size > MAX_JSON_BYTES:
                _json_member(zf, info, where)  # raises: too large
            continue
        if re.fullmatch(r"data/(weights|constants)/[^/]+\.json", member):
            continue  # other payload configs (XL weights): JSON, not read by torch.export.load
        raise ModelLoadError(f"{where}: unexpected member '{info.filename}'; tersim reads archives written by "
                             "torch.export.save (models/, data/weights/, data/constants/, data/sample_inputs/, extra/)")
    fmt = read_prefix(zf, members["archive_format"].filename, 16).strip() if "archive_format" in members else b""
    if fmt != b"pt2":
        raise ModelLoadError(f"{where}: archive_format is not 'pt2': not a torch.export archive")


def _check_sample_inputs(zf: zipfile.ZipFile, info: zipfile.ZipInfo, member: str, where: str, refuse_pickled) -> None:
    """torch reads the sample inputs weights-only and, if that fails, unpickles them fully: try weights-only here."""
    import torch

    if info.file_size > MAX_JSON_BYTES:
        raise ModelLoadError(f"{where}: member '{info.filename}' declares {info.file_size} bytes of sample inputs, "
                             f"more than {MAX_JSON_BYTES >> 20} MiB")
    if info.file_size == 0:
        return
    try:
        with quiet_torch():
            torch.load(io.BytesIO(read_prefix(zf, info.filename, MAX_JSON_BYTES)), weights_only=True)
    except Exception:
        refuse_pickled(member, "sample inputs that need a full unpickle")


# --- the load itself -------------------------------------------------------------------------------------
_SAFE_STRING = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SAFE_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.Name, ast.Constant,
               ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)


def is_plain_expression(text: str) -> bool:
    """Arithmetic on names and numbers, calls of plain names (`Max(s0, 2)`, `Symbol('s77', integer=True)`):
    no attributes, subscripts, dunders, lambdas or strings other than identifiers."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            return False
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            return False
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            return False
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            return False
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _SAFE_STRING.fullmatch(node.value):
            return False
        if isinstance(node, ast.Constant) and not isinstance(node.value, (str, int, float, bool, type(None))):
            return False
    return True


@contextmanager
def quiet_torch() -> Iterator[None]:
    """No torch warnings or log lines (some with tracebacks): the caller turns failures into one line."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


@contextmanager
def _no_code_execution(trust_pickle: bool) -> Iterator[None]:
    """While torch.export.load runs: torch.load weights-only (unless trust_pickle), sympify on plain expressions."""
    import sympy
    import torch

    original_load, original_sympify = torch.load, sympy.sympify

    def weights_only_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    def plain_sympify(a, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(a, str) and not is_plain_expression(a):
            raise ModelLoadError(f"a symbolic shape expression is not plain arithmetic: {a[:80]!r}")
        return original_sympify(a, *args, **kwargs)

    if not trust_pickle:
        torch.load = weights_only_load
    sympy.sympify = plain_sympify
    try:
        yield
    finally:
        torch.load, sympy.sympify = original_load, original_sympify


def guarded_load(path: str | Path, trust_pickle: bool = False):  # -> torch.export.ExportedProgram
    """`inspect_archive`, then torch.export.load with the walls above; its guards_code dropped (never exec'd)."""
    import torch

    inspect_archive(path, trust_pickle)
    try:
        with open(path, "rb") as fh, quiet_torch(), _no_code_execution(trust_pickle):
            ep = torch.export.load(fh)  # a file object: torch.export.load insists on '.pt2' for paths
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except Exception as exc:
        from tersim.errors import one_line

        raise ModelLoadError(f"{path}: not a loadable torch.export archive ({type(exc).__name__}: {one_line(exc)}); "
                             "tersim reads archives written by torch.export.save") from None
    if hasattr(ep, "_guards_code"):
        ep._guards_code = []  # exec'd by ExportedProgram.module(); tersim checks input shapes itself
    return ep
