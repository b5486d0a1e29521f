"""`tersim plot FILE...`: read sweep/run result files, save every plot they allow and an HTML report."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tersim.errors import DataError, one_line
from tersim.report.html import write_html_report
from tersim.report.optional import require
from tersim.report.plots import figures_for, is_layers_frame, save_figures


def read_frame(path: str | Path) -> pd.DataFrame:
    """A result table from .parquet (needs pyarrow) or .csv."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a .parquet or .csv result file of `tersim sweep` or `run`")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix not in (".parquet", ".csv"):
        raise DataError(f"{path}: expected a .parquet or .csv result file of `tersim sweep` or `run`")
    if path.suffix == ".parquet":
        require("pyarrow")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # empty, binary, truncated: pandas/pyarrow raise many types
        raise DataError(f"{path}: not a readable {path.suffix[1:]} result file ({type(exc).__name__}: "
                        f"{one_line(exc)[:200]})") from None
    if frame.empty:
        raise DataError(f"{path}: holds no rows; expected a result file of `tersim sweep` or `run`")
    return frame


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
        raise DataError(f"--point '{point}': {exc}" if select else f"{first}: cannot plot: {one_line(exc)}") from None
    except (TypeError, KeyError, IndexError) as exc:  # columns of the right names but wrong contents
        raise DataError(f"{first}: cannot plot these columns ({type(exc).__name__}: {one_line(exc)[:200]}); "
                        "expected the files `tersim sweep` or `run` write") from None
    if not figures:
        raise DataError(f"{first}: no plottable columns (expected a sweep's points or a per-layer report)")
    paths = save_figures(figures, out, first.stem)
    paths.append(write_html_report(out / f"{first.stem}.html", points, layers, title=first.stem, select=select))
    return paths
