"""``vaesweep report SWEEP``: the study report of a sweep, as HTML and markdown."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from vaesweep.report import make_report
from vaesweep.report.data import DEFAULT_EXPERIMENT, DEFAULT_STORAGE, DEFAULT_URI

DESCRIPTION = """\
Read the runs of a sweep from MLflow (and its Optuna study, where it is one) and write the
study report: a self-contained HTML file (figures embedded), a markdown summary with the
figures as PNG files beside it, and the generated answer as markdown. The files are also
logged as artifacts of the sweep's MLflow parent run (under report/).

The report shows the rate-distortion plane (every run a point, Pareto fronts per head),
distortion, rate, active units and MIG (or probe accuracy) against the KL weight, the
sum/mean reduction-equivalence pairs, rate and KL per latent over training for schedules
and controllers, reconstructions and traversals of Pareto-optimal runs, and an answer
computed from the numbers. Sections that do not apply to a sweep say so."""

EPILOG = """\
examples:
  vaesweep report quick
  vaesweep report beta_norm_grid --out reports/grid --max-images 8
  vaesweep report pareto --tracking-uri http://127.0.0.1:5000 --storage postgresql://u@db/vaesweep

files written to OUT: report.html, report.md, answer.md, rate_distortion.png (the main
plot), vs_weight.png and the other figures."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaesweep report", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="the sweep's name (its study.name, e.g. quick, beta_norm_grid)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI,
                   help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"Optuna storage URL (default {DEFAULT_STORAGE}); a grid sweep needs none")
    p.add_argument("--out", default=None, help="output folder (default report_<sweep>)")
    p.add_argument("--parent", default=None, metavar="RUN_ID",
                   help="report the children of this parent run (default: the sweep's latest)")
    p.add_argument("--max-images", type=int, default=6,
                   help="Pareto-optimal runs to show pictures of (default 6; 0: none)")
    p.add_argument("--no-log", action="store_true",
                   help="do not log the report to the parent run")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def report_main(argv: Sequence[str]) -> int:
    a = parser().parse_args(list(argv))
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO,
                            format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                            stream=sys.stderr)
    paths = make_report(a.sweep, a.tracking_uri, storage=a.storage, out=a.out,
                        experiment=a.experiment, parent_run_id=a.parent,
                        max_images=a.max_images, log_to_mlflow=not a.no_log)
    print(f"report of sweep {a.sweep!r}:")
    for name in ("report.html", "report.md", "answer.md", "rate_distortion"):
        if name in paths:
            print(f"  {paths[name]}")
    return 0
