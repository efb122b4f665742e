"""Trade-off plots and the study report (``vaesweep report SWEEP``).

    from vaesweep.report import load_sweep, plots
    data = load_sweep("quick", "sqlite:///mlflow.db")
    plots.rate_distortion(data.runs)          # a matplotlib Figure

:func:`make_report` loads a sweep, builds the report (:mod:`.build`), writes it as HTML and
markdown with every figure as a PNG file, and logs those files to the sweep's parent run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vaesweep.job.rundir import check_writable
from vaesweep.report.analysis import results_table
from vaesweep.report.build import build_report
from vaesweep.report.data import (DEFAULT_EXPERIMENT, DEFAULT_STORAGE, DEFAULT_URI, SweepData,
                                  load_sweep)
from vaesweep.report.html import render_html
from vaesweep.report.markdown import render_markdown
from vaesweep.tracking.run import set_note
from vaesweep.tracking.tags import file_part

log = logging.getLogger(__name__)
#: where the report's files go inside the parent run's artifacts
ARTIFACT_DIR = "report"

__all__ = ["SweepData", "load_sweep", "make_report", "write_report", "log_report"]


def write_report(report: Any, out: str | Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``answer.md``, ``runs.csv`` (one row per run:
    weights, D, R, active units, convergence) and every figure as ``NAME.png`` (the main one:
    ``rate_distortion.png``) into ``out``; returns the paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for s in report.sections:
        for p in s.pictures:
            paths[p.name] = out / f"{p.name}.png"
            paths[p.name].write_bytes(p.png)
    paths["report.html"] = out / "report.html"
    paths["report.html"].write_text(render_html(report), encoding="utf-8")
    paths["report.md"] = out / "report.md"
    paths["report.md"].write_text(render_markdown(report), encoding="utf-8")
    paths["answer.md"] = out / "answer.md"
    paths["answer.md"].write_text(report.answer.markdown(), encoding="utf-8")
    if getattr(report, "runs", None) is not None and len(report.runs):
        # the numbers behind the answer, one row per run: what `vaesweep convert` cites
        paths["runs.csv"] = out / "runs.csv"
        results_table(report.runs).to_csv(paths["runs.csv"], index=False)
    return paths


def log_report(data: SweepData, paths: dict[str, Path]) -> None:
    """Log the report's files as artifacts of the sweep's parent run (under ``report/``), and
    its answer as the parent run's description."""
    if data.client is None or data.parent_run_id is None:
        return
    for p in paths.values():
        data.client.log_artifact(data.parent_run_id, str(p), ARTIFACT_DIR)
    if "answer.md" in paths:
        set_note(data.client, data.parent_run_id, paths["answer.md"].read_text(encoding="utf-8"))
    log.info("logged %d file(s) to the parent run %s under %s/", len(paths),
             data.parent_run_id, ARTIFACT_DIR)


def make_report(sweep: str, tracking_uri: str = DEFAULT_URI, *,
                storage: str | None = DEFAULT_STORAGE, out: str | Path | None = None,
                experiment: str = DEFAULT_EXPERIMENT, parent_run_id: str | None = None,
                max_images: int = 6, log_to_mlflow: bool = True) -> dict[str, Path]:
    """Load ``sweep``, build and write its report into ``out`` (default ``report_<sweep>``),
    and log it to the parent run; returns the written paths. An ``out`` that cannot be
    written is a :class:`vaesweep.errors.ConfigError` naming ``--out``, before any reading."""
    out = Path(out or f"report_{file_part(sweep)}")
    check_writable("--out", str(out), out, "run vaesweep report from a writable folder, or "
                   "pass --out FOLDER")  # before the report is built
    data = load_sweep(sweep, tracking_uri, experiment=experiment, storage=storage,
                      parent_run_id=parent_run_id)
    report = build_report(data, max_images=max_images)
    paths = write_report(report, out)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    if log_to_mlflow:
        log_report(data, paths)
    return paths
