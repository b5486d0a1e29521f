"""Shared test fixtures: the shipped example model, data and configs, found relative to the repository (not the
working directory), loaded once per session. Slow reference implementations are in tests/naive.py."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits_resnet.pt2"
DATA = ROOT / "examples" / "digits_test.npz"
TRAIN = ROOT / "examples" / "digits_train.npz"
HW = ROOT / "hw_configs" / "default.yaml"
HW_CONFIGS = sorted((ROOT / "hw_configs").glob("*.yaml"))

# Lowered zoo graphs are cached (tersim.frontend.graph_cache): the tests, and the CLI processes they start, use
# a cache of their own, never the user's.
os.environ["TERSIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tersim-test-cache-")
atexit.register(shutil.rmtree, os.environ["TERSIM_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def digits_graph():
    """The shipped example model, lowered (read it once; tests must not modify it)."""
    from tersim.frontend import import_model

    return import_model(MODEL)


@pytest.fixture(scope="session")
def digits_data():
    """(x, y) of the shipped test split."""
    from tersim.data import load_dataset

    return load_dataset(DATA)


@pytest.fixture(scope="session")
def digits_train():
    """(x, y) of the shipped training split."""
    from tersim.data import load_dataset

    return load_dataset(TRAIN)
