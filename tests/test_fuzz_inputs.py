"""Fuzzing the input boundaries: hypothesis-generated YAML through the hardware-config loader, random bytes and
truncations of the shipped model and data through their loaders. Every input either loads (and then holds only
finite numbers) or is refused with a TersimError, whose message is one line; never another exception.
Budgets keep the whole file well under a minute."""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tersim.cli import one_line_text
from tersim.config import Accelerator, load_accelerator
from tersim.data import load_dataset
from tersim.errors import TersimError
from tersim.frontend import import_model

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = ROOT / "examples/digits_resnet.pt2", ROOT / "examples/digits_test.npz"
FIELDS = ["name", "clock_mhz", "array", "rows", "cols", "dataflow", "pe", "act_bits", "group_scaling", "group_size",
          "multipliers", "placement", "memory", "baseline", "area", "energy", "fp32_mult_um2", "sram_pj_per_byte",
          "accumulator", "bits", "overflow", "quantization", "method", "x"]
NUMBERS = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, 4, 8, 16, 1e300, -1e300, 2**63]))
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=12),
                    st.sampled_from(["gate", "skip", "weight_stationary", "exact", ".inf", ".nan", "1e3", "~"]))
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), inner,
                                                 max_size=5)), max_leaves=25)
TAGS = ["", "!!str ", "!!int ", "!!float ", "!!binary ", "!!python/object:os.system ", "!!set ", "!!timestamp ",
        "!custom ", "&a ", "*a "]


def assert_one_line_error(exc: TersimError) -> None:
    assert one_line_text(exc) and "\n" not in one_line_text(exc)


def assert_finite(acc: Accelerator) -> None:
    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, float):
            assert math.isfinite(value)
    walk(acc.model_dump())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCS)
def test_yaml_documents_through_the_config_loader(doc, tmp_path):
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        assert_finite(load_accelerator(path))
    except TersimError as exc:
        assert_one_line_error(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(TAGS), st.text(max_size=10),
                                st.integers(0, 3)), max_size=8),
       raw=st.binary(max_size=64))
def test_raw_yaml_text_with_tags_and_garbage(lines, raw, tmp_path):
    text = "".join(f"{'  ' * indent}{key}: {tag}{value}\n" for key, tag, value, indent in lines)
    path = tmp_path / "hw.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") + raw)
    try:
        assert_finite(load_accelerator(path))
    except TersimError as exc:
        assert_one_line_error(exc)


def mutate(blob: bytes, data) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        return blob[: data.draw(st.integers(0, len(blob) - 1))]
    if how == "flip":
        out = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 8))):
            out[data.draw(st.integers(0, len(out) - 1))] ^= data.draw(st.integers(1, 255))
        return bytes(out)
    return data.draw(st.binary(max_size=2048))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_data_files_through_the_data_loader(data, tmp_path):
    path = tmp_path / data.draw(st.sampled_from(["d.npz", "d.pt", "d.csv"]))
    path.write_bytes(mutate(DATA.read_bytes(), data))
    try:
        x, y = load_dataset(path)
    except TersimError as exc:
        assert_one_line_error(exc)
        return
    assert np.isfinite(x).all() and len(x) > 0 and (y is None or (y >= 0).all())


def model_members() -> list[str]:
    with zipfile.ZipFile(MODEL) as zf:
        return [i.filename for i in zf.infolist()]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_model_files_through_the_model_loader(data, tmp_path):
    """Whole-file truncations and flips (mostly caught by the zip layer), plus one member rewritten at a time
    (what reaches torch.export.load and the lowering)."""
    blob = MODEL.read_bytes()
    path = tmp_path / "m.pt2"
    if data.draw(st.booleans()):
        path.write_bytes(mutate(blob, data))
    else:
        member = data.draw(st.sampled_from(model_members()))
        with zipfile.ZipFile(MODEL) as zin, zipfile.ZipFile(path, "w") as zout:
            for info in zin.infolist():
                content = zin.read(info.filename)
                if info.filename == member:
                    content = mutate(content, data) if content else data.draw(st.binary(max_size=16))
                zout.writestr(info.filename, content)
    try:
        graph = import_model(path)
    except TersimError as exc:
        assert_one_line_error(exc)
        return
    for node in graph.weighted():
        assert np.isfinite(node.weight).all()


@pytest.mark.parametrize("cut", [0, 1, 2, 100, 1000, 30_000, 300_000, 600_000])
def test_truncated_model_files(cut, tmp_path):
    path = tmp_path / "m.pt2"
    path.write_bytes(MODEL.read_bytes()[:cut])
    with pytest.raises(TersimError) as info:
        import_model(path)
    assert_one_line_error(info.value)
