"""A small self-contained HTML report (figures referenced as PNG files beside it)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd


def write_report(
    path: str | Path,
    title: str,
    summary: dict,
    metrics: dict,
    figures: list[tuple[str, str]],
    tables: list[tuple[str, pd.DataFrame]] | None = None,
) -> Path:
    """``figures``: (caption, relative PNG path) pairs; ``tables``: (heading, DataFrame)
    pairs shown before the figures."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    mrows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in metrics.items())
    figs = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
        for cap, src in figures
    )
    tabs = "".join(
        f"<h2>{html.escape(cap)}</h2>{df.to_html(float_format=lambda v: f'{v:.2f}', na_rep='', border=0)}"
        for cap, df in tables or []
    )
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Run</h2><table>{rows}</table>
<h2>Metrics</h2><table>{mrows or '<tr><td>no labels given: no label metrics</td></tr>'}</table>
{tabs}<h2>Figures</h2>{figs}
</body></html>
"""
    Path(path).write_text(doc)
    return Path(path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)
