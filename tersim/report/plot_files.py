"""`tersim plot FILE...`: read sweep/run result files, save every plot they allow and an HTML report."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tersim.errors import DataError
from tersim.report.html import write_html_report
from tersim.report.optional import require
from tersim.report.plots import figures_for, is_layers_frame, save_figures


def read_frame(path: str | Path) -> pd.DataFrame:
    """A result table from .parquet (needs pyarrow) or .csv."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".parquet":
        require("pyarrow")
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise DataError(f"{path}: expected a .parquet or .csv result file")


def parse_point(text: str | None) -> dict[str, str] | None:
    """'group_size=4,act_bits=8' -> {'group_size': '4', 'act_bits': '8'}."""
    if not text:
        return None
    pairs = [item.partition("=") for item in text.split(",")]
    if any(not sep or not key for key, sep, _ in pairs):
        raise DataError(f"--point '{text}': expected COLUMN=VALUE[,COLUMN=VALUE...], e.g. group_size=4,act_bits=8")
    return {key.strip(): value.strip() for key, _, value in pairs}


def plot_files(files: Sequence[str | Path], out: str | Path | None = None, point: str | None = None) -> list[Path]:
    """Figures (PNG + SVG) and `<stem>.html` in `out` (default: beside the first file)."""
    require("matplotlib")
    points = layers = None
    for path in files:
        frame = read_frame(path)
        if is_layers_frame(frame):
            layers = frame
        else:
            points = frame
    select = parse_point(point)
    if select and layers is not None:
        missing = sorted(set(select) - set(layers.columns))
        if missing:
            raise DataError(f"--point: no column(s) {', '.join(missing)} in the per-layer file")
    first = Path(files[0])
    out = Path(out) if out is not None else first.parent
    try:
        figures = figures_for(points, layers, select)
    except ValueError as exc:
        raise DataError(f"--point '{point}': {exc}") from None
    if not figures:
        raise DataError(f"{first}: no plottable columns (expected a sweep's points or a per-layer report)")
    paths = save_figures(figures, out, first.stem)
    paths.append(write_html_report(out / f"{first.stem}.html", points, layers, title=first.stem, select=select))
    return paths
