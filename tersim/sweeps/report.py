"""Sweep results as tables and files: the tidy points/layers DataFrames and the CSV/Parquet/HTML reports."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tersim.files import safe_name
from tersim.report.optional import MissingExtraError, require
from tersim.sweeps.cache import PointResult
from tersim.sweeps.plan import Point

if TYPE_CHECKING:
    from tersim.sweeps.driver import SweepResult


def frames(points: list[Point], done: dict[str, PointResult], paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy points and layers DataFrames in sweep order, key columns first."""
    rows, keyed = [], []
    for p in points:
        result = done[p.key]
        keys = {"model": result.summary["model"], "hw": result.summary["hw"], **dict(p.combo),
                "group_size": p.group_size, "act_bits": p.act_bits}
        rows.append({**keys, **{k: v for k, v in result.summary.items() if k not in keys}})
        keyed.append((keys, result))
    points_frame = pd.DataFrame(rows)
    layers_frame = _layers_from_columns(keyed)
    if layers_frame is None:
        layer_frames = [pd.concat([pd.DataFrame([keys] * len(layers)), layers], axis=1)
                        for keys, result in keyed
                        for layers in [result.layers.rename(columns={"group_size": "effective_group_size"})]]
        layers_frame = pd.concat(layer_frames, ignore_index=True) if layer_frames else pd.DataFrame()
    return points_frame, layers_frame


# Column value types for which one DataFrame of all points' values has the dtype and values that concatenating
# the points' own frames gives (ints of some points and floats of others: float64 either way).
_UNIFORM_TYPES = ({str}, {bool}, {int}, {float}, {int, float})


def _layers_from_columns(keyed: list[tuple[dict, PointResult]]) -> pd.DataFrame | None:
    """The layers table built once from the points' columns, or None where that could differ from
    concatenating the points' frames (`frames` then does that): a point read from the cache (a DataFrame), no
    layers, differing or repeated column names, or a column with mixed or other value types (None, numpy
    scalars: pandas infers those per frame)."""
    if not keyed or not all(isinstance(result.rows, dict) for _, result in keyed):
        return None
    names = None
    columns: dict[str, list] = {}
    for keys, result in keyed:
        layer_columns = {("effective_group_size" if k == "group_size" else k): v for k, v in result.rows.items()}
        n = len(next(iter(layer_columns.values()), ()))
        point_names = [*keys, *layer_columns]
        if n == 0 or len(set(point_names)) != len(point_names) or len(layer_columns) != len(result.rows) \
                or names not in (None, point_names):
            return None
        names = point_names
        for k, v in keys.items():
            columns.setdefault(k, []).extend([v] * n)
        for k, v in layer_columns.items():
            columns.setdefault(k, []).extend(v)
    for name, values in columns.items():
        types = set(map(type, values))
        if types not in _UNIFORM_TYPES:
            return None
        if str in types:
            continue
        # numbers as the arrays pandas infers (int64, float64, bool), without its inference pass; ints beyond
        # int64 (uint64 or object in pandas, per point) are left to `frames`
        if int in types:
            ints = np.array(values if float not in types else [v for v in values if type(v) is int])
            if ints.dtype != np.int64:
                return None
            if float not in types:
                columns[name] = ints
                continue
        columns[name] = np.array(values, dtype=np.float64 if float in types else np.bool_)
    return pd.DataFrame(columns)


def report_stem(points: pd.DataFrame) -> str:
    """`<model>_<hw>_sweep`, safe as a file name."""
    return safe_name(f"{points.model.iloc[0]}_{points.hw.iloc[0]}_sweep")


def available_formats() -> tuple[tuple[str, ...], str | None]:
    """The report formats this installation can write, and why the others cannot (None: all can).
    CSV always; Parquet and HTML need the `report` extra (pyarrow)."""
    try:
        require("pyarrow")
    except MissingExtraError as exc:
        return ("csv",), f"no Parquet/HTML report: {exc}"
    return ("csv", "parquet", "html"), None


def write_reports(result: SweepResult, out: str | Path) -> list[Path]:
    """The points and per-layer tables of `result` in every format `available_formats` allows, atomically;
    returns the files written."""
    from tersim.report.tables import write_atomic

    formats, _ = available_formats()
    out, stem = Path(out), report_stem(result.points)
    tables = {f"{stem}": result.points, f"{stem}_layers": result.layers}
    written = [write_atomic(frame, out / f"{name}.csv") for name, frame in tables.items()]
    if "parquet" in formats:
        written += [write_atomic(frame, out / f"{name}.parquet") for name, frame in tables.items()]
    if "html" in formats:
        from tersim.report.html import write_html_report

        written.append(write_html_report(out / f"{stem}.html", result.points, result.layers, title=stem))
    written += write_scheme_figures(result.points, out, stem)
    return written


def write_scheme_figures(points: pd.DataFrame, out: Path, stem: str) -> list[Path]:
    """A weight-scheme sweep's plots (accuracy vs bits, accuracy vs energy) as PNG/SVG beside the tables;
    nothing without matplotlib (the HTML report then has no figures either) or without a scheme axis."""
    try:
        from tersim.report.plots import save_figures
        from tersim.report.scheme_plots import scheme_figures

        return save_figures(scheme_figures(points), out, stem)
    except MissingExtraError:
        return []
