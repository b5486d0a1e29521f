"""Hardware YAML validation: every shipped config loads; bad input names the file and the field."""
import pytest

from conftest import HW_CONFIGS
from tersim.config import Accelerator, load_accelerator
from tersim.errors import ConfigError

CONFIGS = HW_CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    hw = load_accelerator(path)
    assert hw.array.rows >= 1 and hw.clock_mhz > 0


def test_defaults_are_a_valid_design():
    hw = Accelerator()
    assert hw.pe.weight_bits == 2 and hw.accumulator.bits == 32


@pytest.mark.parametrize(
    "text, field",
    [
        ("array: {rows: 0}", "array.rows"),
        ("array: {dataflow: diagonal}", "array.dataflow"),
        ("pe: {act_bits: 6}", "pe.act_bits"),
        ("accumulator: {overflow: explode}", "accumulator.overflow"),
        ("memory: {colour: blue}", "memory.colour"),
        ("group_scaling: {placement: per_column, multipliers: 5}", "multipliers"),
    ],
)
def test_bad_fields_are_named(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_accelerator(path)
    message = str(err.value)
    assert str(path) in message and field in message and "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_accelerator(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("array: [rows: 1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_accelerator(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="mapping"):
        load_accelerator(scalar)


def test_overrides_are_validated():
    hw = Accelerator().with_overrides({"array.rows": 32, "accumulator.bits": 16})
    assert hw.array.rows == 32 and hw.accumulator.bits == 16
    with pytest.raises(ConfigError, match="array.rows"):
        Accelerator().with_overrides({"array.rows": -1})
    with pytest.raises(ConfigError, match="no such field"):
        Accelerator().with_overrides({"array.depth": 3})
