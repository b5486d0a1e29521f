"""docs/PYTHON_API.md and README.md must run: their ```python blocks are executed in order in one namespace."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/PYTHON_API.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_python_api_doc_runs(monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(ROOT)  # the examples use repository-relative paths
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[block {i}]", "exec"), namespace)
    assert len(namespace["points"]) == 12
    assert {"group_size", "layer_cycles", "layer_energy", "pareto"} <= set(namespace["figures"])


def test_readme_python_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = [b for b in python_blocks((ROOT / "README.md").read_text()) if "import tersim" in b or "tersim." in b]
    assert len(blocks) >= 2
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[block {i}]", "exec"), namespace)
    assert len(namespace["points"]) == 12 and namespace["result"].layers.shape[0] > 0
