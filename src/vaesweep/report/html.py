"""The report as one self-contained HTML file: figures embedded as base64 PNG, no script, no
external resource, so it opens from disk, from an MLflow artifact view or an e-mail."""
from __future__ import annotations

import base64
import html
import re

from vaesweep.report.build import Report, format_table
from vaesweep.report.markdown import anchor

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
.meta { color: #555; font-size: .92em; }
.answer { background: #f5f9ff; border-left: 4px solid #3a78c2; padding: .6em 1.2em; }
.skipped { color: #777; font-style: italic; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
table { border-collapse: collapse; font-size: .82em; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.tablewrap { overflow-x: auto; }
nav a { margin-right: 1em; }
"""


def inline(text: str) -> str:
    """The markdown the report's text uses (``code``, **bold**, _italic_) as escaped HTML."""
    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    return re.sub(r"(?<![\w/])_([^_]+)_(?![\w/])", r"<i>\1</i>", t)


def render_html(report: Report) -> str:
    m = report.meta
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>vaesweep report: {html.escape(report.sweep)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>vaesweep report: <code>{html.escape(report.sweep)}</code></h1>",
        f'<p class="meta">{m["runs"]} runs from <code>{html.escape(str(m["tracking_uri"]))}</code> '
        f'(experiment <code>{html.escape(str(m["experiment"]))}</code>, parent run '
        f'<code>{html.escape(str(m["parent_run_id"]))}</code>), generated '
        f'{html.escape(str(m["generated"]))} by <code>vaesweep report '
        f'{html.escape(report.sweep)}</code>.</p>',
        "<nav>" + "".join(f'<a href="#{anchor(s.title)}">{html.escape(s.title)}</a>'
                          for s in report.sections) + "</nav>",
        '<h2 id="answer">The answer (generated from the numbers)</h2>',
        '<div class="answer"><ul>' + "".join(f"<li>{inline(line)}</li>"
                                             for line in report.answer.lines) + "</ul>",
        f"<p><i>Generated from the logged metrics of {report.answer.facts.get('runs', 0)} "
        "run(s); not written by hand.</i></p></div>",
    ]
    for s in report.sections:
        parts.append(f'<h2 id="{anchor(s.title)}">{html.escape(s.title)}</h2>')
        if s.skipped:
            parts.append(f'<p class="skipped">Does not apply: {inline(s.skipped)}.</p>')
            continue
        parts += [f"<p>{inline(p)}</p>" for p in s.text]
        for p in s.pictures:
            b64 = base64.b64encode(p.png).decode("ascii")
            parts.append(f'<figure id="fig-{p.name}"><img alt="{html.escape(p.caption)}" '
                         f'src="data:image/png;base64,{b64}"><figcaption>'
                         f"{html.escape(p.caption)}</figcaption></figure>")
        for t in s.tables:
            table = format_table(t.frame).to_html(index=False, escape=True, border=0)
            parts.append(f"<p><b>{html.escape(t.caption)}</b></p>"
                         f'<div class="tablewrap">{table}</div>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
