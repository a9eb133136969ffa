"""Write the report's sections as ``report.md`` and a self-contained ``report.html``.

The HTML embeds its PNGs as base64 data URIs and uses inline CSS, so it opens offline and survives
being mailed or attached as an MLflow artifact; the Markdown references the PNGs next to it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    """One report section: a heading, a table as strings (``headers`` + ``rows``), notes and images."""

    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(path: Path, *, title: str, meta: list[tuple[str, str]], sections: list[Section]) -> Path:
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in meta]
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        if s.headers:
            lines.append("| " + " | ".join(_md_cell(h) for h in s.headers) + " |")
            lines.append("|" + "|".join("---" for _ in s.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
            lines.append("")
        lines += [f"_{_md_cell(n)}_  " for n in s.notes]
        lines += ["", *(f"![{img.stem}]({img.name})" for img in s.images)] if s.images else []
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #2b6cb0; padding-bottom: .3em; }
h2 { margin-top: 2em; color: #2b6cb0; }
table { border-collapse: collapse; margin: .5em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #edf2f7; }
tr:nth-child(even) td { background: #f7fafc; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
p.note { color: #555; font-style: italic; margin: .3em 0; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
"""


def write_html(path: Path, *, title: str, meta: list[tuple[str, str]], sections: list[Section]) -> Path:
    e = html.escape
    parts = [
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<dl class='meta'>",
    ]
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in meta]
    parts.append("</dl>")
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        if s.headers:
            parts.append(
                "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.headers) + "</tr></thead><tbody>"
            )
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in s.rows]
            parts.append("</tbody></table>")
        parts += [f"<p class='note'>{e(n)}</p>" for n in s.notes]
        for img in s.images:
            data = base64.b64encode(img.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{e(img.stem)}' src='data:image/png;base64,{data}'></figure>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
