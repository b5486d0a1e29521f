"""Hostile and careless input: every bad input is one line `tersim: error: ...` (or `tersim CMD: error: ...` for
usage errors), exit code 2, nothing executed, nothing written outside --out, nothing half-written.

Most tests call `tersim.cli.main` in-process (the model load is memoised by the `fast_models` fixture: the CLI
path is otherwise unchanged); the evil-archive and Ctrl-C tests run a real subprocess.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import tersim.frontend
import tersim.pipeline
from tersim.cli import main
from tersim.frontend import import_model

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA, HW = ROOT / "examples/digits_resnet.pt2", ROOT / "examples/digits_test.npz", ROOT / "hw_configs/default.yaml"
SMALL = ["--limit", "8"]


# --- helpers ------------------------------------------------------------------------------------------------
def one_error(capsys, argv: list[str], expect: str = "", prefix: str = "tersim") -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line `<prefix>...: error: ...` containing `expect`."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix) and ": error: " in lines[0], err
    assert expect.lower() in lines[0].lower(), err
    return lines[0]


@pytest.fixture(scope="module")
def digits_graph():
    return import_model(MODEL)


@pytest.fixture
def fast_models(monkeypatch, digits_graph):
    """The shipped model is lowered once per module (it takes seconds); every other path is imported normally."""
    real = tersim.frontend.import_model

    def cached(path, **kwargs):
        if Path(str(path)).resolve() == MODEL and not kwargs.get("input_shape"):
            return digits_graph
        return real(path, **kwargs)

    monkeypatch.setattr(tersim.frontend, "import_model", cached)
    monkeypatch.setattr(tersim.pipeline, "import_model", cached)
    return cached


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def rewrite_zip(src: Path, dst: Path, edit) -> Path:
    """Copy a zip, letting `edit(members: dict[name, bytes])` change it on the way."""
    with zipfile.ZipFile(src) as zin:
        members = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    edit(members)
    with zipfile.ZipFile(dst, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return dst


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def torch_pickle(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


WEIGHTS_CFG = "archive/data/weights/model_weights_config.json"
CONSTANTS_CFG = "archive/data/constants/model_constants_config.json"


def pickled_weight(marker):
    def edit(m):
        cfg = json.loads(m[WEIGHTS_CFG])
        cfg["config"]["stem.0.weight"]["use_pickle"] = True
        m[WEIGHTS_CFG] = json.dumps(cfg).encode()
        m["archive/data/weights/weight_0"] = torch_pickle(Payload(marker))
    return edit


def pickled_constant(prefix):
    def make(marker):
        def edit(m):
            cfg = {"config": {"c": {"path_name": f"{prefix}0", "is_param": False, "use_pickle": prefix == "tensor_",
                                    "tensor_meta": None}}}
            m[CONSTANTS_CFG] = json.dumps(cfg).encode()
            m[f"archive/data/constants/{prefix}0"] = torch_pickle(Payload(marker))
        return edit
    return make


def legacy_weights(marker):
    def edit(m):
        m["archive/data/weights/model.pt"] = torch_pickle(Payload(marker))
    return edit


def pickled_sample_inputs(marker):
    def edit(m):
        m["archive/data/sample_inputs/model.pt"] = torch_pickle(((Payload(marker),), {}))
    return edit


def aoti_library(marker):
    def edit(m):
        m["archive/data/aotinductor/model/model.so"] = b"\x7fELF" + b"\0" * 64
    return edit


def sympy_injection(marker):
    def edit(m):
        text = m["archive/models/model.json"].decode()
        evil = f"__import__('builtins').exec(\\\"open({str(marker)!r}, 'w')\\\")"
        m["archive/models/model.json"] = text.replace("Symbol('s77', positive=True, integer=True)", evil).encode()
    return edit


def shadowed_config(marker):
    """A second weights config under a look-alike name: torch's reader may pick it, the check must not differ."""
    def edit(m):
        clean = m[WEIGHTS_CFG]
        pickled_weight(marker)(m)
        m[WEIGHTS_CFG.replace("model_weights", "MODEL_weights")] = m[WEIGHTS_CFG]  # the evil one, looking alike
        m[WEIGHTS_CFG] = clean
    return edit


EVIL_ARCHIVES = {"shadowed weights config": shadowed_config, "pickled weight": pickled_weight, "pickled tensor constant": pickled_constant("tensor_"),
                 "torchbind constant": pickled_constant("custom_obj_"), "opaque constant": pickled_constant("opaque_obj_"),
                 "legacy weights file": legacy_weights, "pickled sample inputs": pickled_sample_inputs,
                 "AOTInductor library": aoti_library, "sympy expression": sympy_injection}


# --- 1. a .pt2 never runs code without --trust-pickle ------------------------------------------------------------
def test_evil_pt2_runs_no_code_in_a_real_process(tmp_path):
    marker = tmp_path / "marker"
    evil = rewrite_zip(MODEL, tmp_path / "evil.pt2", pickled_weight(marker))
    cmd = [sys.executable, "-m", "tersim", "run", str(HW), str(evil), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "weight_0" in proc.stderr
    assert "stem.0.weight" in proc.stderr and "--trust-pickle" in proc.stderr
    assert not marker.exists()
    # the explicit opt-in keeps the old behaviour: torch unpickles the member (so the payload runs)
    proc = subprocess.run(cmd + ["--trust-pickle"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert marker.exists(), proc.stderr


@pytest.mark.parametrize("kind", EVIL_ARCHIVES)
def test_every_code_path_in_a_pt2_is_refused(kind, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = rewrite_zip(MODEL, tmp_path / "evil.pt2", EVIL_ARCHIVES[kind](marker))
    line = one_error(capsys, ["run", HW, evil, "--out", tmp_path / "out"])
    assert not marker.exists(), line
    assert not (tmp_path / "out").exists() or not files_under(tmp_path / "out")


def test_archive_guards_code_is_never_executed(tmp_path):
    from tersim.frontend.pt2_guard import guarded_load

    ep = guarded_load(MODEL)
    assert ep._guards_code == []


# --- 2. names from input never escape --out ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../../x/evil", "/etc/evil", "..", "a/../../b", "\x00nul", "x" * 400])
def test_hw_name_cannot_escape_out(name, tmp_path, capsys, fast_models):
    hw = tmp_path / "hw.yaml"
    hw.write_text(json.dumps({"name": name[:200]}))
    out = tmp_path / "a" / "b" / "out"
    before = files_under(tmp_path)
    code = main(["run", str(hw), str(MODEL), "--data", str(DATA), *SMALL, "--timing", "analytic", "--out", str(out)])
    capsys.readouterr()
    assert code == 0
    written = files_under(tmp_path) - before
    assert len(written) == 2 and all(p.parent == out for p in written), written


def test_sweep_names_cannot_escape_out(tmp_path, capsys, fast_models):
    hw = tmp_path / "hw.yaml"
    hw.write_text('name: "../../../../x/evil"\n')
    out = tmp_path / "a" / "out"
    code = main(["sweep", str(hw), str(MODEL), "--data", str(DATA), *SMALL, "--group-sizes", "4", "--act-bits", "8",
                 "--out", str(out), "--no-cache"])
    capsys.readouterr()
    assert code == 0
    assert all(out in p.parents for p in files_under(tmp_path) - {hw})


# --- 3. resource exhaustion ---------------------------------------------------------------------------------------
def bomb(tmp_path: Path, member: str, size: int, base: Path | None = MODEL) -> Path:
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        if base is not None:
            with zipfile.ZipFile(base) as zin:
                for info in zin.infolist():
                    if info.filename != member:
                        zout.writestr(info.filename, zin.read(info.filename))
        with zout.open(member, "w", force_zip64=True) as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                fh.write(chunk)
    return path


@pytest.mark.parametrize("member", ["archive/archive_format", "archive/data/weights/weight_0",
                                    "archive/models/model.json"])
def test_zip_bomb_is_refused_without_inflating(member, tmp_path, capsys):
    import resource

    path = bomb(tmp_path, member, 300 << 20)
    assert path.stat().st_size < 2 << 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    one_error(capsys, ["run", HW, path])
    assert time.perf_counter() - start < 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 * 1024  # KiB: never the 300 MB


def test_npz_bomb_is_refused_without_inflating(tmp_path, capsys):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((40, 1, 1024, 1024), np.float32), y=np.zeros(40, np.int64))
    assert path.stat().st_size < 2 << 20
    one_error(capsys, ["run", HW, MODEL, "--data", path], "zip bomb")


def test_huge_yaml_is_refused_before_parsing(tmp_path, capsys):
    hw = tmp_path / "hw.yaml"
    with open(hw, "w") as fh:
        fh.write("name: x\n")
        fh.write("# padding\n" * 10_000_000)  # 100 MB
    start = time.perf_counter()
    one_error(capsys, ["run", hw, MODEL], "KiB")
    assert time.perf_counter() - start < 5


# --- 4. every class of bad input: one line, exit 2 -----------------------------------------------------------------
BAD_X = {
    "nan": np.full((4, 1, 8, 8), np.nan, np.float32),
    "inf": np.full((4, 1, 8, 8), np.inf, np.float32),
    "1e300": np.full((4, 1, 8, 8), 1e300),
    "string": np.array([["a"] * 64] * 4).reshape(4, 1, 8, 8),
    "structured": np.zeros((4, 1, 8, 8), dtype=[("a", "f4"), ("b", "i4")]),
    "scalar": np.array(3.0),
    "complex": np.zeros((4, 1, 8, 8), np.complex64),
    "zero samples": np.zeros((0, 1, 8, 8), np.float32),
    "wrong shape": np.zeros((4, 3, 8, 8), np.float32),
}


def npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def command_options(command: str, tmp_path: Path) -> list:
    return {"run": ["--out", tmp_path / "o"], "verify": [],
            "sweep": ["--out", tmp_path / "o", "--group-sizes", "4", "--act-bits", "8", "--no-cache"]}[command]


@pytest.mark.parametrize("command", ["run", "verify", "sweep"])
@pytest.mark.parametrize("kind", BAD_X)
def test_bad_x(command, kind, tmp_path, capsys, fast_models):
    x = BAD_X[kind]
    y = np.zeros(len(x) if x.ndim else 1, np.int64)
    one_error(capsys, [command, HW, MODEL, "--data", npz(tmp_path, x=x, y=y), *command_options(command, tmp_path)],
              "'x'" if kind != "wrong shape" else "shape")
    assert not files_under(tmp_path) - {tmp_path / "data.npz"}


@pytest.mark.parametrize("command", ["run", "verify", "sweep"])
@pytest.mark.parametrize("y, expect", [(np.array(["a"] * 4), "'y'"), (np.array([0, 1, 2, 10]), "outside the model's 10 classes"),
                                       (np.array([0, -1, 2, 3]), "negative"), (np.array([0.5, 1, 2, 3]), "integer"),
                                       (np.array([0, 1, 2]), "3 labels for 4 samples")])
def test_bad_labels(command, y, expect, tmp_path, capsys, fast_models):
    x = np.zeros((4, 1, 8, 8), np.float32)
    one_error(capsys, [command, HW, MODEL, "--data", npz(tmp_path, x=x, y=y), *command_options(command, tmp_path)],
              expect)


def test_legacy_torch_save_data_still_loads(tmp_path):
    from tersim.data import load_dataset

    path = tmp_path / "legacy.pt"
    torch.save({"x": torch.zeros(2, 1, 8, 8), "y": torch.tensor([0, 9])}, path, _use_new_zipfile_serialization=False)
    x, y = load_dataset(path)
    assert x.shape == (2, 1, 8, 8) and y.tolist() == [0, 9]


def test_bad_pt_data_and_python_api(tmp_path):
    from tersim.data import load_inputs
    from tersim.errors import DataError

    path = tmp_path / "d.pt"
    torch.save({"x": torch.full((2, 1, 8, 8), float("nan")), "y": torch.zeros(2)}, path)
    with pytest.raises(DataError, match="NaN"):
        load_inputs(path, (1, 8, 8))
    with pytest.raises(DataError, match="outside"):
        load_inputs((np.zeros((2, 1, 8, 8), np.float32), np.array([0, 12])), (1, 8, 8), classes=10)


HW_BAD = {
    "invalid utf-8": (b"name: \xff\xfe\n", "UTF-8"),
    "deep nesting": (b"a: " + b"[" * 50_000 + b"]" * 50_000, "nesting"),
    "duplicate key": (b"array:\n  rows: 8\n  rows: 16\n", "duplicate key 'rows' at line 3"),
    "rows: true": (b"array: {rows: true}\n", "array.rows"),
    "clock inf": (b"clock_mhz: .inf\n", "clock_mhz"),
    "clock nan": (b"clock_mhz: .nan\n", "clock_mhz"),
    "baseline clock inf": (b"baseline: {clock_mhz: .inf}\n", "baseline.clock_mhz"),
    "area nan": (b"area: {int8_add_um2: .nan}\n", "area.int8_add_um2"),
    "area negative": (b"area: {fp32_mult_um2: -5}\n", "area.fp32_mult_um2"),
    "area string": (b"area: {fp32_mult_um2: big}\n", "area.fp32_mult_um2"),
    "energy negative": (b"energy: {dram_pj_per_byte: -1}\n", "energy.dram_pj_per_byte"),
    "energy nan": (b"energy: {fp32_add_pj: .nan}\n", "energy.fp32_add_pj"),
    "energy huge": (b"energy: {fp32_add_pj: 1.0e300}\n", "energy.fp32_add_pj"),
    "fp32 PE without area": (b"area: {fp32_mult_um2: 0, fp32_add_um2: 0, register_bit_um2: 0}\n", "FP32 PE"),
    "python tag": (b"name: !!python/object/apply:os.system ['touch /tmp/x']\n", "invalid YAML"),
    "not a mapping": (b"- 1\n- 2\n", "mapping"),
    "unknown key": (b"rowz: 3\n", "rowz"),
    "newline in key": (b'"a\\nb": 1\n', "field"),
    "binary": (bytes(range(256)), "UTF-8"),
}


@pytest.mark.parametrize("kind", HW_BAD)
def test_bad_hardware_config(kind, tmp_path, capsys):
    text, expect = HW_BAD[kind]
    hw = tmp_path / "hw.yaml"
    hw.write_bytes(text)
    one_error(capsys, ["run", hw, MODEL, "--out", tmp_path / "o"], expect)
    assert not (tmp_path / "o").exists()


def test_config_accepts_what_it_used_to(tmp_path):
    from tersim.config import load_accelerator

    hw = tmp_path / "hw.yaml"
    hw.write_text("clock_mhz: 1e3\nbaseline: {clock_mhz: 500}\narea: {fp32_mult_um2: 7700}\nmemory: {dram_bytes_per_cycle: 8}\n")
    acc = load_accelerator(hw)
    assert acc.clock_mhz == 1000.0 and acc.baseline.clock_mhz == 500.0 and acc.memory.dram_bytes_per_cycle == 8.0
    for path in sorted((ROOT / "hw_configs").glob("*.yaml")):
        load_accelerator(path)


def tiny_export(tmp_path: Path, module: torch.nn.Module, name: str) -> Path:
    path = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(module.eval(), (torch.randn(2, 1, 8, 8),)), path)
    return path


def test_model_without_weighted_layers(tmp_path, capsys):
    path = tiny_export(tmp_path, torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten()), "relu")
    one_error(capsys, ["run", HW, path], "no conv2d or linear layer")


def test_model_with_nan_weight(tmp_path, capsys):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    with torch.no_grad():
        net[2].weight[3, 7] = float("nan")
    path = tiny_export(tmp_path, net, "nan")
    one_error(capsys, ["run", HW, path], "NaN")


@pytest.mark.parametrize("argv", [["run", HW, "resnet18", "--input-shape", "3,-4,4"],
                                  ["export-zoo", "resnet18", "-o", "x.pt2", "--input-shape", "3,-4,4"],
                                  ["export-zoo", "resnet18", "-o", "x.pt2", "--input-shape", "3,x,4"],
                                  ["run", HW], ["run", HW, MODEL, "--bogus"], ["run", HW, MODEL, "--limit", "0"],
                                  ["run", HW, MODEL, "--act-bits", "5"], ["nonsense"], [],
                                  ["finetune", MODEL, "-o", "x.pt2", "--lr", "inf"],
                                  ["finetune", MODEL, "-o", "x.pt2", "--kd-temperature", "nan"]])
def test_usage_errors_are_one_line(argv, capsys):
    one_error(capsys, argv, prefix="tersim")


def test_input_shape_python_api():
    from tersim.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="invalid input shape"):
        import_model("resnet18", input_shape=(3, -4, 4))


def test_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    one_error(capsys, ["run", HW, MODEL, "--out", out], "is a file")
    one_error(capsys, ["sweep", HW, MODEL, "--out", out], "is a file")
    assert out.read_text() == "not a folder"


def test_out_unwritable(tmp_path, capsys, fast_models):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root may write into a 0o500 folder, but not create folders in /proc: either way one line, exit 2
    out = "/proc/tersim-cannot-write-here" if os.geteuid() == 0 else locked / "out"
    one_error(capsys, ["run", HW, MODEL, *SMALL, "--timing", "analytic", "--out", out], "cannot create")


def test_full_disk_leaves_no_partial_file(tmp_path, capsys, fast_models, monkeypatch):
    import pandas as pd

    def full(self, path, *args, **kwargs):
        Path(path).write_text("half a rep")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "out"
    one_error(capsys, ["run", HW, MODEL, *SMALL, "--timing", "analytic", "--out", out], "No space left")
    assert list(out.iterdir()) == []


def test_plot_full_disk_leaves_no_truncated_svg(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    points = pd_points(tmp_path)
    real = matplotlib.figure.Figure.savefig

    def full(self, fname, *args, **kwargs):
        if kwargs.get("format") == "svg" and not isinstance(fname, io.IOBase):
            Path(fname).write_text("<svg trunc")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    out = tmp_path / "plots"
    one_error(capsys, ["plot", points, "--out", out], "No space left")
    assert not [p for p in out.iterdir() if p.suffix == ".svg" or ".tmp" in p.name]


def pd_points(tmp_path: Path) -> Path:
    import pandas as pd

    path = tmp_path / "points.csv"
    pd.DataFrame({"model": ["m"] * 2, "hw": ["h"] * 2, "group_size": [1, 4], "act_bits": [8, 8],
                  "accuracy_quant": [0.9, 0.8], "speedup_equal_pe": [1.0, 1.2]}).to_csv(path, index=False)
    return path


def test_writes_are_atomic_with_a_normal_mode(tmp_path):
    from tersim.files import write_text_atomic

    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a" / "r.txt", "x")
    finally:
        os.umask(old)
    assert path.read_text() == "x" and (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["r.txt"]


def test_cache_dir_is_a_file(tmp_path, capsys, fast_models):
    cache = tmp_path / "cache"
    cache.write_text("")
    one_error(capsys, ["sweep", HW, MODEL, "--data", DATA, *SMALL, "--group-sizes", "4", "--act-bits", "8",
                       "--out", tmp_path / "o", "--cache-dir", cache], "cache folder is a file")


def test_cache_entry_of_the_wrong_schema_is_recomputed(tmp_path, capsys, fast_models):
    argv = ["sweep", HW, MODEL, "--data", DATA, *SMALL, "--group-sizes", "4", "--act-bits", "8", "--timing-only",
            "--out", tmp_path / "o", "--cache-dir", tmp_path / "c"]
    assert main([str(a) for a in argv]) == 0
    entries = list((tmp_path / "c").glob("*.json"))
    assert entries
    for bad in ['{"summary": 1, "layers": {"data": [], "columns": []}}', "[1, 2]", "\xff"]:
        for entry in entries:
            entry.write_text(bad)
        assert main([str(a) for a in argv]) == 0
        assert "1 computed, 0 from the cache" in capsys.readouterr().out


def test_dask_not_a_url(tmp_path, capsys, fast_models):
    pytest.importorskip("distributed")
    one_error(capsys, ["sweep", HW, MODEL, "--data", DATA, *SMALL, "--group-sizes", "4", "--act-bits", "8",
                       "--out", tmp_path / "o", "--dask", "not a url"], "--dask")


@pytest.mark.parametrize("content, suffix, expect", [
    (b"", ".csv", "not a readable csv"), (bytes(range(256)) * 8, ".csv", "csv"), (b"a,b\n", ".csv", "no rows"),
    (b"foo,bar\n1,2\n", ".csv", "no plottable columns"), (b"PAR1" + bytes(200), ".parquet", "not a readable parquet"),
    (b"a,b\n1,2\n", ".parquet", "parquet"), (b"x", ".txt", "expected a .parquet or .csv"),
    (b"model,hw,group_size,accuracy_quant\nm,h,x,y\n", ".csv", ""),
])
def test_plot_bad_files(content, suffix, expect, tmp_path, capsys):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(content)
    one_error(capsys, ["plot", path, "--out", tmp_path / "p"], expect)
    assert not (tmp_path / "p").exists() or not files_under(tmp_path / "p")


def test_plot_truncated_parquet(tmp_path, capsys):
    import pandas as pd

    full = tmp_path / "full.parquet"
    pd.read_csv(pd_points(tmp_path)).to_parquet(full)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    one_error(capsys, ["plot", cut], "not a readable parquet")


def test_resume_checkpoint_missing_keys(tmp_path, capsys):
    from tersim.finetune.train import CKPT_FORMAT

    ckpt = tmp_path / "epoch_001.pt"
    torch.save({"format": CKPT_FORMAT, "epoch": 1}, ckpt)
    one_error(capsys, ["finetune", MODEL, "-o", tmp_path / "ft.pt2", "--epochs", "1", "--resume", ckpt,
                       "--val", "none", "--no-checkpoints"], "damaged")
    assert not (tmp_path / "ft.pt2").exists()


# --- misleading messages: say what the file is and what tersim accepts ----------------------------------------------
def test_misleading_messages(tmp_path, capsys):
    rand = tmp_path / "random.bin"
    rand.write_bytes(b"\x80" + os.urandom(4000))
    line = one_error(capsys, ["run", HW, rand], "not a model file")
    assert "trust-pickle" not in line and "torch.export" in line
    line = one_error(capsys, ["run", HW, MODEL, "--data", rand], "not a data file")
    assert ".npz" in line
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n1,2\n")
    line = one_error(capsys, ["run", HW, MODEL, "--data", csv], "text file")
    assert "weights_only" not in line and ".npz" in line
    npy = tmp_path / "d.npy"
    np.save(npy, np.zeros((2, 1, 8, 8)))
    one_error(capsys, ["run", HW, MODEL, "--data", npy], "single NumPy .npy array")
    one_error(capsys, ["run", HW, tmp_path], "is a folder")
    one_error(capsys, ["run", HW, MODEL, "--data", tmp_path], "is a folder")
    fake = rewrite_zip(MODEL, tmp_path / "fake.pt2", lambda m: m.update({"archive/models/model.json": b"{}"}))
    line = one_error(capsys, ["run", HW, fake], "torch.export")
    assert "warnings above" not in line
    one_error(capsys, ["run", HW, DATA], "NumPy .npz archive (data, not a model)")


# --- Ctrl-C ----------------------------------------------------------------------------------------------------------
def _wait_for_library(pid: int, name: str, timeout: float = 120) -> None:
    """Until the process has mapped `name` (so it is importing it): a start-up moment, not a guess of a delay."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if name in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            return
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the start-up progress")
@pytest.mark.parametrize("when", ["libtorch", "numba", 1.0, 3.0])
def test_ctrl_c_during_start_up_is_quiet(when, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tersim", "run", str(HW), str(MODEL), "--out", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if isinstance(when, str):
        _wait_for_library(proc.pid, when)  # while Python imports torch (or numba, later)
    else:
        time.sleep(when)  # somewhere in the imports, the model load or the lowering
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "tersim: interrupted", err


_HELD_CTRL_C = """
import os, signal, time
from tersim.interrupt import ctrl_c_held
try:
    with ctrl_c_held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print("held", flush=True)
except KeyboardInterrupt:
    print("raised at the end")
signal.raise_signal(signal.SIGINT)  # after the block: Ctrl-C raises at once again
"""


def test_ctrl_c_during_the_imports_is_held_then_raised():
    """Raised inside an import, the interrupt can abort the process (torch's pybind11 start-up) or be lost (a C
    extension's initialisation, an import-lock weakref callback): held, it arrives when the block ends."""
    out = subprocess.run([sys.executable, "-c", _HELD_CTRL_C], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["held", "raised at the end"], out.stderr
    assert out.returncode == -signal.SIGINT and out.stderr.strip().endswith("KeyboardInterrupt"), out.stderr


def test_an_ignored_ctrl_c_stays_ignored():
    """`nohup` and background jobs start tersim with SIGINT ignored; tersim must not take Ctrl-C back."""
    code = ("import os, signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "from tersim.interrupt import ctrl_c_held\n"
            "with ctrl_c_held(): os.kill(os.getpid(), signal.SIGINT)\n"
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["verify"], ["sweep"], ["plot"], ["export-zoo"], ["finetune"]])
def test_every_help_still_works(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: tersim" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["run", "/dev/zero", MODEL], ["run", HW, "/dev/zero"],
                                  ["run", HW, MODEL, "--data", "/dev/zero"], ["run", HW, "no-such-model.pt2"],
                                  ["run", "no-such.yaml", MODEL]])
def test_devices_and_missing_files(argv, capsys, fast_models):
    one_error(capsys, argv)
