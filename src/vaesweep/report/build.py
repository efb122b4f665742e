"""Assemble a sweep's report: sections of figures (PNG bytes), tables and text, plus the
generated answer; :mod:`~vaesweep.report.html` and :mod:`~vaesweep.report.markdown` write it.

A section that does not apply to a sweep (no sum/mean pairs, no moving weights, no Optuna
study) stays in the report with one line saying why, so a reader knows it was looked for.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vaesweep.report import analysis, plots, settings as by
from vaesweep.report.answer import Answer, answer
from vaesweep.report.analysis import complete_runs, structure_metric, weight_column
from vaesweep.report.data import SweepData

log = logging.getLogger(__name__)


@dataclass
class Picture:
    """A figure rendered to PNG: ``name`` is its file name without ``.png``."""

    name: str
    caption: str
    png: bytes


@dataclass
class Table:
    caption: str
    frame: pd.DataFrame


@dataclass
class Section:
    key: str
    title: str
    text: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    #: why the section does not apply to this sweep (then it has no pictures or tables)
    skipped: str | None = None


@dataclass
class Report:
    sweep: str
    meta: dict[str, Any]
    answer: Answer
    sections: list[Section]
    #: the runs the report was made from, with the convergence columns (``runs.csv``)
    runs: pd.DataFrame | None = None

    @property
    def main_picture(self) -> Picture | None:
        return next((p for s in self.sections for p in s.pictures if p.name == "rate_distortion"),
                    None)


def _picture(name: str, caption: str, fig: Any) -> Picture:
    png = plots.to_png(fig)
    fig.clear()
    return Picture(name, caption, png)


def _runs_table(df: pd.DataFrame, w: str) -> pd.DataFrame:
    cols = ["trial", "run_id", "state", "head", "reduction", "method", "seed", w, "beta_eff",
            "distortion", "rate", "active_units", "converged", "elbo_change",
            "schedule_unfinished"]
    metric = structure_metric(df)
    if metric:
        cols.append(metric)
    cols += ["pareto"] + (["optuna_state"] if "optuna_state" in df else [])
    t = df[[c for c in cols if c in df]].copy()
    t["run_id"] = t["run_id"].str[:8]
    return t


def rd_section(data: SweepData) -> Section:
    df, w = data.runs, weight_column(data.runs)
    s = Section("rate_distortion", "The rate–distortion plane")
    s.text.append(f"Every complete run is a point: distortion D = −log p(x|z) and rate R = "
                  f"KL(q(z|x) ‖ p(z)), both in nats per test example. Colour: log10 `{w}`; "
                  "marker: the likelihood head; the black step line is each head's Pareto "
                  "front and circled runs are on it. Distortions of different heads are "
                  "different likelihoods, so fronts are drawn per head.")
    s.pictures.append(_picture("rate_distortion", "rate–distortion plane",
                               plots.rate_distortion(df, w)))
    return s


def weight_section(data: SweepData) -> Section:
    c, w = complete_runs(data.runs), weight_column(data.runs)
    s = Section("vs_weight", f"Against the KL weight ({w})")
    if c.empty or c[w].nunique() < 2:
        s.skipped = f"the complete runs of this sweep do not vary {w}"
        return s
    metric = structure_metric(c) or "MIG / probe accuracy (not logged)"
    s.text.append(f"Distortion, rate, active units and {metric} against `{w}`: one line per "
                  "head (colour) and reduction (solid: sum, dashed: mean); the line is the "
                  "mean over seeds and the band their min–max.")
    s.pictures.append(_picture("vs_weight", f"metrics against {w}", plots.metrics_vs_weight(c, w)))
    return s


def pairs_section(pairs: pd.DataFrame) -> Section:
    s = Section("reduction_equivalence", "Reduction equivalence (sum vs mean)")
    if pairs.empty:
        s.skipped = ("no pair of runs in this sweep differs only in `kl.reduction` (and the "
                     "way its weight is written) at equal beta_eff")
        return s
    s.text.append("The loss contract: a run with `kl.reduction=sum` and one with `mean` that agree on "
                  "beta_eff and everything else must land on the same point (only the "
                  "gradient scale differs). Each row is such a pair; gaps are sum − mean.")
    t = pairs.copy()
    t["run_sum"], t["run_mean"] = t["run_sum"].str[:8], t["run_mean"].str[:8]
    s.tables.append(Table("sum/mean pairs at equal beta_eff", t))
    return s


def dynamics_section(data: SweepData) -> tuple[Section, pd.DataFrame | None]:
    s = Section("dynamics", "Schedules and controllers over training")
    runs = analysis.dynamics_runs(data.runs)
    if runs.empty:
        s.skipped = ("every run of this sweep trains at a constant KL weight (no schedule, "
                     "controller, capacity or free bits)")
        return s, None
    log.info("reading metric histories of %d run(s)", len(runs))
    hist = data.histories(list(runs["run_id"]))
    table = analysis.dynamics_table(runs, hist)
    s.text.append("Rate, KL weight and active units over optimiser steps for runs whose weight "
                  "moves (one per method, head, reduction and weight), and the KL of each "
                  "latent over steps. `collapse`: `full` when no unit is active at the end, "
                  "`k/M` when k of M latents end under 0.01 nats.")
    s.pictures.append(_picture("dynamics", "rate, beta_eff and active units over steps",
                               plots.dynamics(runs, hist)))
    s.pictures.append(_picture("kl_per_dim_steps", "KL per latent over steps",
                               plots.kl_per_dim_over_steps(runs, hist)))
    t = table.copy()
    t["run_id"] = t["run_id"].str[:8]
    s.tables.append(Table("at the end of training", t))
    return s, table


def pictures_section(data: SweepData, max_runs: int) -> Section:
    s = Section("pareto_runs", "Pareto-optimal runs: reconstructions and traversals")
    front = analysis.pareto_runs(data.runs, max_runs)
    if front.empty or max_runs <= 0:
        s.skipped = "no Pareto-optimal run" if front.empty else "pictures turned off"
        return s
    w = weight_column(data.runs)
    s.text.append(f"The pictures each training job logged, for {len(front)} runs spread along "
                  "the Pareto front(s), from low distortion (high rate) to high distortion.")
    with tempfile.TemporaryDirectory(prefix="vaesweep-report-") as tmp:
        for i, (_, row) in enumerate(front.iterrows()):
            d = Path(tmp) / row["run_id"]
            rec = data.artifact(row["run_id"], "reconstructions.png", d)
            trav = data.artifact(row["run_id"], "traversals.png", d)
            s.pictures.append(_picture(f"pareto_{i}", analysis.run_label(row, w),
                                       plots.run_pictures(row, rec, trav, w)))
    return s


#: columns of the by-setting table, when logged (means over seeds; ``_std`` beside the key ones)
_SETTING_COLUMNS = ["head", "schedule", "reduction", "beta_eff", "n", "converged", "distortion",
                    "distortion_std", "rate", "rate_std", "elbo", "elbo_std", "active_units",
                    "active_units_std", "test/mse", "test/mse_std", "test/psnr",
                    "test/recon_variance_ratio", "test/linear_probe_acc",
                    "test/linear_probe_acc_std", "test/knn_acc", "test/mig", "test/iwae_nll",
                    "val/sigma"]
#: a sweep with at most this many settings gets one reconstruction picture per setting
MAX_SETTING_PICTURES = 12


def settings_section(data: SweepData, settings: pd.DataFrame, max_images: int) -> Section:
    """Every setting (all trained params but the seed) with its means and seed spread, the
    sum/mean pairs at the same typed weight, and one reconstruction picture per setting."""
    s = Section("settings", "By setting (mean ± std over seeds)")
    if settings.empty:
        s.skipped = "no complete runs"
        return s
    s.text.append("Runs grouped by everything they train except the seed. `elbo` is −(D + R) "
                  "on the test images; `converged`: runs whose validation ELBO moved less than "
                  "1 % over the last 20 % of steps. Heads differ in their likelihood, so compare "
                  "heads on `test/mse`, `test/psnr`, the probes and active units only. "
                  "`test/recon_variance_ratio`: the reconstructions' variance across test images "
                  "over the images' own (0: every input gets the same picture).")
    t = settings[[c for c in _SETTING_COLUMNS if c in settings]].copy()
    s.tables.append(Table(f"{len(t)} settings", t))
    typed = by.typed_pairs(data.runs)
    if len(typed):
        tt = typed.copy()
        tt["run_sum"], tt["run_mean"] = tt["run_sum"].str[:8], tt["run_mean"].str[:8]
        s.tables.append(Table("the same typed kl.beta under sum and under mean (gaps: mean − sum)",
                              tt))
    if max_images <= 0 or len(settings) > MAX_SETTING_PICTURES or data.client is None:
        return s
    runs = data.runs.set_index("run_id")
    items = []
    with tempfile.TemporaryDirectory(prefix="vaesweep-report-") as tmp:
        for _, row in settings.iterrows():
            first = sorted(row["runs"], key=lambda i: (runs.loc[i, "seed"], str(i)))[0]
            rvr = row.get("test/recon_variance_ratio", float("nan"))
            label = (f"{by.setting_label(row, settings)}: run {first[:8]}, active units "
                     f"{runs.loc[first, 'active_units']:.0f}"
                     + (f", recon_variance_ratio {rvr:.2g} (mean over seeds)" if rvr == rvr else ""))
            items.append((label, data.artifact(first, "reconstructions.png", Path(tmp) / first)))
        s.pictures.append(_picture("reconstructions_by_setting",
                                   "reconstructions, one run per setting (top: inputs, bottom: "
                                   "reconstructions)", plots.reconstructions_by_setting(items)))
    return s


def study_section(data: SweepData) -> Section:
    s = Section("optuna", "Optuna study")
    st = data.study
    if st is None:
        s.skipped = "this sweep has no Optuna study (a grid, or the storage was not found)"
        return s
    s.text.append(f"Study `{st.name}` in `{st.storage}`: objectives "
                  + ", ".join(f"`{o}` ({d})" for o, d in zip(st.objectives, st.directions))
                  + f"; {st.n_trials} trials: "
                  + ", ".join(f"{v} {k}" for k, v in sorted(st.states.items()))
                  + ". Browse it with `optuna-dashboard " + st.storage + " --host 127.0.0.1`.")
    if data.deleted_note:
        s.text.append(data.deleted_note + "; the best trials are chosen among the others.")
    df = data.runs
    if "optuna_best" in df:
        best = df[df["optuna_best"]]
        cols = ["trial", "run_id", "head", "reduction", weight_column(df), "beta_eff",
                "optuna_values"]
        t = best[[c for c in cols if c in best]].copy()
        t["run_id"] = t["run_id"].str[:8]
        s.tables.append(Table("best trial" if len(st.directions) == 1 else "Pareto set", t))
    return s


def build_report(data: SweepData, *, max_images: int = 6) -> Report:
    """The report of a loaded sweep (see the module docstring)."""
    c = complete_runs(data.runs)
    if len(c) and data.client is not None:
        # the convergence rule: whether each run's validation ELBO has stopped moving
        log.info("reading the val/elbo histories of %d run(s)", len(c))
        hist = data.histories(list(c["run_id"]), ["val/elbo"])
        data = dataclasses.replace(data, runs=analysis.with_convergence(data.runs, hist))
    df = data.runs
    w = weight_column(df) if not df.empty else "beta_eff"
    log.info("building the report of sweep %r (%d runs)", data.sweep, len(df))
    pairs = analysis.reduction_pairs(df)
    sections = [rd_section(data), weight_section(data), pairs_section(pairs)]
    dyn_section, dyn_table = dynamics_section(data)
    settings = by.by_setting(df)
    sections += [dyn_section, settings_section(data, settings, max_images),
                 pictures_section(data, max_images), study_section(data)]
    runs = Section("runs", "All runs")
    if data.deleted_note:  # left out of every section, and of the study's best trials
        runs.text.append(data.deleted_note + ".")
    runs.tables.append(Table(f"{len(df)} runs", _runs_table(df, w)))
    sections.append(runs)
    ans = answer(df, sweep=data.sweep, study=data.study, pairs=pairs, dynamics=dyn_table,
                 settings=settings)
    meta = {"sweep": data.sweep, "tracking_uri": data.tracking_uri,
            "experiment": data.experiment, "parent_run_id": data.parent_run_id,
            "runs": len(df), "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    return Report(sweep=data.sweep, meta=meta, answer=ans, sections=sections, runs=df)


def format_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as display strings: numbers to 4 significant digits, booleans as yes/no, lists
    of floats shortened, missing values empty."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(cell(x) for x in v) + "]"
        return str(v)

    out = frame.astype(object).map(cell) if len(frame) else frame.astype(str)
    return out.reset_index(drop=True)
