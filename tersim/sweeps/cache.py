"""The point cache: one JSON file per finished point, by key, written atomically (no pickle: a cache file
cannot run code)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tersim.files import ensure_dir, write_text_atomic


@dataclass
class PointResult:
    """One finished point: the model summary row and its per-layer rows, as a DataFrame (read from the cache)
    or as columns (lists, computed: the sweep's layers table is built from every point's columns at once)."""

    summary: dict
    rows: pd.DataFrame | dict[str, list]

    @property
    def layers(self) -> pd.DataFrame:
        return self.rows if isinstance(self.rows, pd.DataFrame) else pd.DataFrame(self.rows)


class PointCache:
    """Finished points by key in `directory` (JSON, no pickle: a cache file cannot run code)."""

    def __init__(self, directory: str | Path | None):
        self.directory = ensure_dir(directory, "cache folder") if directory is not None else None

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> PointResult | None:
        if self.directory is None or not self._path(key).is_file():
            return None
        try:
            blob = json.loads(self._path(key).read_text())
            summary, layers = blob["summary"], blob["layers"]
            if not isinstance(summary, dict) or not {"model", "hw"} <= set(summary):
                return None
            return PointResult(summary, pd.DataFrame(layers["data"], columns=layers["columns"]))
        except (ValueError, KeyError, TypeError, AssertionError, OSError):
            return None  # a damaged or foreign entry is recomputed

    def put(self, key: str, result: PointResult) -> None:
        if self.directory is None:
            return
        blob = {"summary": result.summary, "layers": result.layers.to_dict("split", index=False)}
        write_text_atomic(self._path(key), json.dumps(blob, default=native))


def native(value: object) -> object:
    """numpy scalars -> Python scalars for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot cache a {type(value).__name__}")
