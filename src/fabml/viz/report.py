"""A single-file HTML report: headed sections of text, tables and figures.

Images are linked by a path relative to the report's folder (move the folder as a
whole), or inlined as base64 data URIs with ``embed_images=True`` so the one file can
be mailed. All text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
import mimetypes
import os
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from numbers import Integral, Real
from pathlib import Path
from typing import Sequence

import pandas as pd

import fabml
from fabml.errors import DataError

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1280px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { margin-bottom: 0.1em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; margin-top: 0; }
nav ol { padding-left: 1.4em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; }
th { background: #f3f4f6; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #666; font-size: 0.85em; }
""".strip()


@dataclass
class ReportSection:
    """One part of the report, drawn in this order: heading, text, table, images.

    Attributes:
        heading: section title.
        text: plain text; a blank line starts a new paragraph, a newline a new line.
        table: rows as a list of dicts (columns = keys in first-seen order) or a DataFrame
            (a named or non-default index becomes the first column).
        images: figure files to show, full width.
    """

    heading: str
    text: str = ""
    table: list[dict] | pd.DataFrame | None = None
    images: Sequence[Path] = ()


def _format_cell(value: object) -> tuple[str, bool]:
    """Cell text and whether it is numeric (right-aligned). Floats: 4 decimals, or 1 when
    >= 1000, or scientific below 0.001; integral floats as integers; None / NaN empty."""
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, Integral):
        return str(int(value)), True
    if isinstance(value, Real):
        v = float(value)
        if math.isnan(v):
            return "", True
        if math.isinf(v) or (v.is_integer() and abs(v) < 1e15):
            return (str(int(v)) if not math.isinf(v) else str(v)), True
        if abs(v) >= 1000:
            return f"{v:.1f}", True
        return (f"{v:.4f}" if abs(v) >= 1e-3 else f"{v:.3e}"), True
    return str(value), False


def _table_html(table: list[dict] | pd.DataFrame) -> str:
    if isinstance(table, pd.DataFrame):
        frame = table
        default_index = isinstance(frame.index, pd.RangeIndex) and frame.index.name is None
        if not default_index:
            frame = frame.reset_index()
        columns = [str(c) for c in frame.columns]
        rows = [dict(zip(columns, rec)) for rec in frame.itertuples(index=False, name=None)]
    else:
        rows = [{str(k): v for k, v in row.items()} for row in table]
        columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text, numeric = _format_cell(row.get(c))
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    rows_html = "\n".join(body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows_html}\n</tbody>\n</table>"


def _text_html(text: str) -> str:
    paragraphs = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    return "\n".join(
        "<p>" + "<br>\n".join(html.escape(ln) for ln in p.splitlines()) + "</p>" for p in paragraphs
    )


def _image_src(image: Path, report_dir: Path, embed: bool) -> str:
    if not image.is_file():
        raise DataError(f"report image not found: {image}")
    if embed:
        mime = mimetypes.guess_type(image.name)[0] or "image/png"
        return f"data:{mime};base64," + base64.b64encode(image.read_bytes()).decode("ascii")
    try:
        rel = os.path.relpath(image.resolve(), report_dir.resolve())
    except ValueError:  # another drive on Windows: no relative path exists
        return image.resolve().as_uri()
    return urllib.parse.quote(Path(rel).as_posix())


def write_html_report(
    path: str | Path,
    title: str,
    sections: Sequence[ReportSection],
    embed_images: bool = False,
) -> Path:
    """Write the report to ``path`` (folder created) and return the path.

    The header shows the generation time and ``fabml.__version__``; with more than one
    section a table of contents links to each. Missing image files raise DataError.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_CSS}\n</style></head>",
        "<body>",
        f"<header><h1>{html.escape(title)}</h1>",
        f'<p class="meta">generated {html.escape(stamp)} &middot; '
        f"fabml {html.escape(fabml.__version__)}</p></header>",
    ]
    if len(sections) > 1:
        items = "".join(
            f'<li><a href="#s{i}">{html.escape(s.heading)}</a></li>'
            for i, s in enumerate(sections, 1)
        )
        parts.append(f"<nav><ol>{items}</ol></nav>")
    for i, section in enumerate(sections, 1):
        parts.append(f'<section id="s{i}">\n<h2>{html.escape(section.heading)}</h2>')
        if section.text:
            parts.append(_text_html(section.text))
        if section.table is not None and len(section.table) > 0:
            parts.append(_table_html(section.table))
        for image in section.images:
            img = Path(image)
            src = _image_src(img, out.parent, embed_images)
            img_tag = f'<img src="{src}" alt="{html.escape(img.name)}" loading="lazy">'
            if not embed_images:
                img_tag = f'<a href="{src}">{img_tag}</a>'
            parts.append(
                f"<figure>{img_tag}<figcaption>{html.escape(img.name)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)  # atomic: a reader never sees half a report
    return out
