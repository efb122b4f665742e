"""The report as markdown: the answer, the figures as PNG files beside it, and the tables."""
from __future__ import annotations

import re

import pandas as pd

from vaesweep.report.build import Report, format_table


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table of ``frame`` (cells formatted by :func:`format_table`)."""
    t = format_table(frame)
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    head = "| " + " | ".join(esc(c) for c in t.columns) + " |"
    rule = "|" + "|".join("---" for _ in t.columns) + "|"
    rows = ["| " + " | ".join(esc(v) for v in r) + " |" for r in t.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).strip().replace(" ", "-")


def render_markdown(report: Report, *, with_runs: bool = False) -> str:
    """The summary: meta, the answer, every section's figures (``NAME.png`` beside the file)
    and tables; the table of all runs only with ``with_runs`` (it is in the HTML report)."""
    m = report.meta
    out = [f"# vaesweep report: `{report.sweep}`", "",
           f"{m['runs']} runs from `{m['tracking_uri']}` (experiment `{m['experiment']}`, "
           f"parent run `{m['parent_run_id']}`), generated {m['generated']} by "
           f"`vaesweep report {report.sweep}`. The full report with every run: `report.html`.",
           "", report.answer.markdown(), ""]
    for s in report.sections:
        if s.key == "runs" and not with_runs:
            continue
        out += [f"## {s.title}", ""]
        if s.skipped:
            out += [f"_Does not apply: {s.skipped}._", ""]
            continue
        out += [*(t for p in s.text for t in (p, ""))]
        for p in s.pictures:
            out += [f"![{p.caption}]({p.name}.png)", ""]
        for t in s.tables:
            out += [f"**{t.caption}**", "", markdown_table(t.frame), ""]
    return "\n".join(out).rstrip() + "\n"
