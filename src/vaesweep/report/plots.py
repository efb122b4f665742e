"""The trade-off figures: functions of the runs DataFrame (and metric histories) returning
matplotlib figures. The report, the notebook and the parent run's artifacts all call these.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state), so a
report with many figures leaks none and any backend (Agg, the notebook's inline) shows them.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vaesweep.contract import COLLAPSE_THRESHOLD
from vaesweep.report.analysis import (complete_runs, elbo_weight, over_seeds, pareto_mask,
                                      run_label, structure_metric, structure_metrics,
                                      weight_column)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = {"sum": "-", "mean": "--"}
HEAD_COLORS = colormaps["tab10"].colors
AXIS_LABEL = {"distortion": "distortion D (nats / example)",
              "rate": "rate R (nats / example)", "active_units": "active units",
              "beta_norm": "beta_norm", "beta_eff": "beta_eff"}


def _empty(title: str, why: str) -> Figure:
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True)
    ax.set_title(title)
    return fig


def _head_styles(heads: Sequence[str]) -> dict[str, tuple[str, tuple]]:
    return {h: (MARKERS[i % len(MARKERS)], HEAD_COLORS[i % len(HEAD_COLORS)])
            for i, h in enumerate(heads)}


def _wide(values: pd.Series, ratio: float = 30.0) -> bool:
    v = values[np.isfinite(values)]
    return bool(len(v)) and bool((v > 0).all()) and v.max() / v.min() > ratio


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding and for files)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def rate_distortion(df: pd.DataFrame, weight: str | None = None,
                    per_head: bool | None = None) -> Figure:
    """The rate–distortion plane (Alemi et al. 2018, Fig. 1): every complete run a point,
    coloured by log10 of the KL weight (beta_norm, or beta_eff when runs have none), marker
    by likelihood head, each head's Pareto front drawn (lowest D for its R). Distortions of
    different heads are different likelihoods: with ``per_head`` (default: when there are
    several heads) each head gets its own panel, on one colour scale."""
    c = complete_runs(df)
    if c.empty:
        return _empty("rate–distortion plane", "no complete runs with a distortion and a rate")
    weight = weight or weight_column(df)
    w = c[weight].astype(float)
    logw = np.log10(w.where(w > 0))
    finite = logw[np.isfinite(logw)]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    norm = mcolors.Normalize(lo - 0.5, hi + 0.5) if lo == hi else mcolors.Normalize(lo, hi)
    cmap = colormaps["viridis"]
    heads = list(c["head"].drop_duplicates())
    styles = _head_styles(heads)
    per_head = len(heads) > 1 if per_head is None else per_head
    groups = [[h] for h in heads] if per_head else [heads]
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(6.2 * cols + 1.2, 4.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, group in zip(axes, groups):
        handles = []
        for h in group:
            g = c[c["head"] == h]
            marker, _ = styles[h]
            colours = [cmap(norm(v)) if np.isfinite(v) else (0.6, 0.6, 0.6, 1.0)
                       for v in logw.loc[g.index]]
            ax.scatter(g["distortion"], g["rate"], c=colours, marker=marker, s=46,
                       edgecolors="k", linewidths=0.5, zorder=3)
            # the front within seed noise (``pareto``, analysis.mark_pareto) where it is marked
            on = g["pareto"].astype(bool) if "pareto" in g else pareto_mask(g["distortion"], g["rate"])
            front = g[on].sort_values("distortion")
            ax.plot(front["distortion"], front["rate"], drawstyle="steps-post", color="k",
                    lw=1.0, alpha=0.7, zorder=2)
            ax.scatter(front["distortion"], front["rate"], s=130, facecolors="none",
                       edgecolors="crimson", linewidths=1.2, zorder=4)
            handles.append(Line2D([], [], marker=marker, color="w", markerfacecolor="0.6",
                                  markeredgecolor="k", markersize=8, label=f"{h} ({len(g)} runs)"))
        handles.append(Line2D([], [], color="k", lw=1, label="Pareto front"))
        handles.append(Line2D([], [], marker="o", color="w", markerfacecolor="none",
                              markeredgecolor="crimson", markersize=10, label="Pareto-optimal run"))
        if _wide(c.loc[c["head"].isin(group), "rate"]):
            ax.set_yscale("log")
        ax.set_xlabel(AXIS_LABEL["distortion"])
        ax.set_ylabel(AXIS_LABEL["rate"])
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="best")
        if per_head:
            ax.set_title(group[0], fontsize=10)
    for ax in axes[len(groups):]:
        ax.axis("off")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(groups)]),
                 label=f"log10 {weight}")
    fig.suptitle(f"rate–distortion plane: {len(c)} runs", fontsize=11)
    return fig


def metrics_vs_weight(df: pd.DataFrame, weight: str | None = None) -> Figure:
    """Distortion, rate, active units and the structure metric (MIG, or a probe accuracy)
    against the KL weight: one line per head (colour) and reduction (line style), the mean
    over seeds with the min–max band."""
    c = complete_runs(df)
    if c.empty:
        return _empty("against the KL weight", "no complete runs")
    weight = weight or weight_column(df)
    structure = structure_metrics(c)
    panels = [("distortion", AXIS_LABEL["distortion"]), ("rate", AXIS_LABEL["rate"]),
              ("active_units", AXIS_LABEL["active_units"])]
    if "test/iwae_nll" in c and c["test/iwae_nll"].notna().any():
        panels.append(("test/iwae_nll", "IWAE NLL (nats / example)"))
    panels += [(m, m.split("/")[-1]) for m in structure] or [(None, "MIG / probe accuracy")]
    heads = list(c["head"].drop_duplicates())
    styles = _head_styles(heads)
    if len(heads) > 1:
        # heads' distortions are different likelihoods (offsets of thousands of nats):
        # compare their shapes, each from its head's lowest distortion
        c = c.assign(distortion=c["distortion"] - c.groupby("head")["distortion"].transform("min"))
        panels[0] = ("distortion", "D − the head's lowest D (nats / example)")
    cols = 2 if len(panels) <= 4 else 3
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5 * cols, 3.5 * rows))
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes = axes[:len(panels)]
    ref = elbo_weight(c) if weight == "beta_norm" else 1.0
    xs = c[weight][c[weight] > 0]
    # the ELBO's weight, drawn when it is near the swept range (else it only squeezes it)
    show_ref = bool(ref is not None and len(xs) and xs.min() / 10 <= ref <= xs.max() * 10)
    for ax, (y, label) in zip(axes, panels):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if y is None or y not in c or c[y].notna().sum() == 0:
            ax.text(0.5, 0.5, "not logged by this sweep", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
            continue
        agg = over_seeds(c, y, weight)
        for (h, red), g in agg.groupby(["head", "reduction"], dropna=False, sort=False):
            marker, colour = styles.get(h, ("o", "k"))
            ls = LINESTYLES.get(red, ":")
            ax.plot(g[weight], g["mean"], ls=ls, marker=marker, color=colour, ms=5,
                    label=f"{h} / {red}")
            if (g["n"] > 1).any():
                ax.fill_between(g[weight], g["min"], g["max"], color=colour, alpha=0.15,
                                lw=0)
        if y == "rate" and _wide(agg["mean"]):
            ax.set_yscale("log")
        if show_ref:
            ax.axvline(ref, color="0.5", ls=":", lw=1)
    for ax in axes:
        if (c[weight] > 0).all():
            ax.set_xscale("log")
    for ax in axes[-cols:]:
        ax.set_xlabel(AXIS_LABEL.get(weight, weight))
    if weight == "beta_norm" and ref and (c[weight] > 0).all():
        # the same axis as beta_eff = beta_norm·N/M (from the config's M/N)
        for ax in axes[:cols]:
            top = ax.secondary_xaxis("top", functions=(lambda x: x / ref, lambda x: x * ref))
            top.set_xlabel("beta_eff", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if show_ref:
        handles.append(Line2D([], [], color="0.5", ls=":", lw=1))
        labels.append("beta_eff = 1 (the ELBO)")
    fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels) or 1), fontsize=8,
               bbox_to_anchor=(0.5, 1.0))
    seeds = c["seed"].nunique() if "seed" in c else 1
    fig.suptitle(f"against {weight}: mean over seeds"
                 + (f" (band: min–max of {seeds} seeds)" if seeds > 1 else " (one seed)"),
                 y=1.04, fontsize=11)
    fig.tight_layout()
    return fig


def _method_colours(runs: pd.DataFrame) -> dict[str, tuple]:
    return {m: HEAD_COLORS[i % len(HEAD_COLORS)]
            for i, m in enumerate(runs["method"].drop_duplicates())}


def dynamics(runs: pd.DataFrame, hist: pd.DataFrame) -> Figure:
    """Over training steps, per run: the rate (val), the KL weight beta_eff (train) and the
    active units (val); colour by method (schedule, controller)."""
    if runs.empty or hist.empty:
        return _empty("over training steps", "no metric histories")
    colours = _method_colours(runs)
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    panels = [("val/rate", "rate R (val, nats)"), ("train/beta_eff", "beta_eff (train)"),
              ("val/active_units", "active units (val)")]
    seen: set[str] = set()
    for _, r in runs.iterrows():
        h = hist[hist["run_id"] == r["run_id"]]
        for ax, (key, label) in zip(axes, panels):
            s = h[h["key"] == key].sort_values("step")
            if s.empty:
                continue
            lab = r["method"] if r["method"] not in seen else None
            ax.plot(s["step"], s["value"], color=colours[r["method"]], lw=1.3, alpha=0.85,
                    label=lab, marker="." if len(s) < 20 else None)
        seen.add(r["method"])
    for ax, (key, label) in zip(axes, panels):
        v = hist.loc[hist["key"] == key, "value"]
        if key != "val/active_units" and _wide(v[v > 0]):
            ax.set_yscale("symlog", linthresh=float(v[v > 0].min()))
        ax.set_xlabel("optimiser step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def kl_per_dim_over_steps(runs: pd.DataFrame, hist: pd.DataFrame, max_runs: int = 8) -> Figure:
    """Small multiples, one panel per run: the KL of each latent dimension (val) over
    training steps; the dotted line is the 0.01-nat collapse threshold."""
    runs = runs.head(max_runs)
    if runs.empty or hist.empty or not hist["key"].str.startswith("val/kl_dim_").any():
        return _empty("KL per dimension over training", "no val/kl_dim_<j> histories")
    n = len(runs)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    cmap = colormaps["tab10"]
    for ax, (_, r) in zip(axes, runs.iterrows()):
        h = hist[(hist["run_id"] == r["run_id"]) & hist["key"].str.startswith("val/kl_dim_")]
        for key, s in h.groupby("key"):
            j = int(str(key).rsplit("_", 1)[1])
            s = s.sort_values("step")
            ax.plot(s["step"], s["value"], color=cmap(j % 10), lw=1,
                    marker="." if len(s) < 20 else None)
        ax.axhline(COLLAPSE_THRESHOLD, color="0.4", ls=":", lw=1)
        ax.set_title(f"{r['method']} · {r['head']} · seed {r['seed']}", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("KL (nats)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(f"KL per latent dimension over training (dotted: {COLLAPSE_THRESHOLD:g} nats)", fontsize=10)
    fig.tight_layout()
    return fig


def run_pictures(row: pd.Series | dict, reconstructions: str | Path | None,
                 traversals: str | Path | None, weight: str | None = None) -> Figure:
    """One run's logged pictures side by side: reconstructions and latent traversals (the
    PNG artifacts every training job writes), titled with the run's weight and point."""
    import matplotlib.image as mpimg

    imgs = [(p, t) for p, t in ((reconstructions, "reconstructions"),
                                (traversals, "latent traversals")) if p is not None]
    if not imgs:
        return _empty(run_label(row, weight), "the run logged no pictures")
    arrays = [mpimg.imread(str(p)) for p, _ in imgs]
    # stacked: the wide reconstruction grid above the tall traversal grid, one width
    width = 9.0
    heights = [min(width * a.shape[0] / a.shape[1], 6.5) for a in arrays]
    fig = Figure(figsize=(width, sum(heights) + 0.5))
    axes = fig.subplots(len(arrays), 1, height_ratios=heights, squeeze=False).ravel()
    for ax, a in zip(axes, arrays):
        ax.imshow(a, interpolation="lanczos")
        ax.axis("off")
    d, r = row.get("distortion", np.nan), row.get("rate", np.nan)
    fig.suptitle(f"{run_label(row, weight)}: D = {d:.4g}, R = {r:.4g} nats "
                 f"(run {str(row.get('run_id'))[:8]})", fontsize=10)
    fig.tight_layout()
    return fig


def reconstructions_by_setting(items: Sequence[tuple[str, str | Path | None]]) -> Figure:
    """The reconstructions each setting's first-seed run logged (``reconstructions.png``:
    inputs above, reconstructions below), one row per setting, titled with ``label``:
    whether different inputs get different pictures is seen at a glance."""
    import matplotlib.image as mpimg

    shown = [(label, mpimg.imread(str(p))) for label, p in items if p is not None]
    if not shown:
        return _empty("reconstructions by setting", "the runs logged no pictures")
    width = 9.0
    heights = [min(width * a.shape[0] / a.shape[1], 4.0) for _, a in shown]
    fig = Figure(figsize=(width, sum(heights) + 0.4 * len(shown)))
    axes = fig.subplots(len(shown), 1, height_ratios=heights, squeeze=False).ravel()
    for ax, (label, a) in zip(axes, shown):
        ax.imshow(a, interpolation="lanczos")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
