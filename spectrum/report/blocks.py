"""The report's rendering: ``report/report.md`` and a self-contained ``report/index.html``.

The document is assembled once as a list of blocks (headings, paragraphs, tables, figures;
:mod:`spectrum.report.sections`) and rendered twice: Markdown with figures linked from ``report/figures/*.png``, and HTML with the same
PNGs embedded as base64 data URIs, so the HTML file alone carries everything.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from spectrum.store import write_bytes, write_text


@dataclass(frozen=True)
class Block:
    kind: str  # h2 | h3 | p | table | figure | pre | html
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    png: bytes = b""
    name: str = ""
    html: str = ""  # kind html: a fragment for index.html; ``text`` stands in for it in Markdown


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            out += [("## " if b.kind == "h2" else "### ") + b.text, ""]
        elif b.kind in ("p", "html"):
            out += [b.text, ""]
        elif b.kind == "pre":
            out += ["```", b.text, "```", ""]
        elif b.kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif b.kind == "figure":
            out += [f"![{_md_cell(b.name)}](figures/{b.name}.png)", "", f"*{b.text}*", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%}
figcaption{font-size:0.9em;color:#444}"""


def render_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            out.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "pre":
            out.append(f"<pre>{e(b.text)}</pre>")
        elif b.kind == "html":
            out.append(b.html)
        elif b.kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                    for row in b.rows]
            out.append("</table>")
        elif b.kind == "figure":
            data = base64.b64encode(b.png).decode()
            out.append(f"<figure><img alt=\"{e(b.name)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{e(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(folder: Path, blocks: list[Block], *,
                 title: str = "Learning-time spectra and held-out reconstruction") -> list[Path]:
    """Write report.md, index.html and figures/*.png under ``folder``; returns the paths."""
    folder = Path(folder)
    paths = []
    for b in blocks:
        if b.kind == "figure":
            paths.append(write_bytes(b.png, folder / "figures" / f"{b.name}.png"))
    paths.append(write_text(render_markdown(title, blocks), folder / "report.md"))
    paths.append(write_text(render_html(title, blocks), folder / "index.html"))
    return paths
