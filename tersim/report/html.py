"""A self-contained HTML report: the tables and every plot the data allows, plots inline as SVG.

One file, no external CSS, JS or images, so it can be mailed or archived beside the data it shows.
"""
from __future__ import annotations

import html
import io
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from tersim.report.plots import figures_for
from tersim.files import write_text_atomic
from tersim.report.tables import sweep_headline

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee}.scroll{overflow-x:auto}figure{margin:1em 0}svg{max-width:100%;height:auto}"""


def inline_svg(fig) -> str:
    """The figure as an <svg> element (the XML prologue dropped so it can sit inside HTML)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _table(frame: pd.DataFrame) -> str:
    return '<div class="scroll">' + frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0) + "</div>"


def render(title: str, points: pd.DataFrame | None = None, layers: pd.DataFrame | None = None,
           select: Mapping[str, object] | None = None) -> str:
    """The report as one HTML string: summary table, plots, then the full tables."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if points is not None and len(points):
        parts += ["<h2>Sweep points</h2>", _table(sweep_headline(points))]
    for name, fig in figures_for(points, layers, select).items():
        parts.append(f"<figure id='{name}'>{inline_svg(fig)}</figure>")
    if points is not None and len(points):
        parts += ["<h2>All point columns</h2>", _table(points)]
    if layers is not None and len(layers):
        parts += [f"<h2>Per-layer rows ({len(layers)})</h2>", _table(layers)]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(path: str | Path, points: pd.DataFrame | None = None, layers: pd.DataFrame | None = None,
                      *, title: str = "tersim report", select: Mapping[str, object] | None = None) -> Path:
    """Render and write atomically."""
    path = Path(path)
    text = render(title, points, layers, select)
    return write_text_atomic(path, text)
