"""Comparisons across settings rather than along the weight: runs grouped by everything they
train except the seed (mean and spread over seeds), sum/mean pairs at the same *typed* weight,
annealing schedules against the constant weight, and likelihood heads against each other on
measures that do not depend on the head (docs/pages/studies.md, "What makes a result"; questions 1, 3, 4 and 5).

Plain functions of the runs DataFrame (:mod:`vaesweep.report.data`), like
:mod:`vaesweep.report.analysis`, whose seed-noise rule they share: a difference counts only
when it exceeds :data:`~vaesweep.report.analysis.NOISE_SIGMAS` times the seed-to-seed standard
deviation of the quantity (the larger of the two settings'), so one seed's luck is not called
an effect.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vaesweep.report.analysis import (BETA_EFF_RTOL, NOISE_SIGMAS, complete_runs,
                                      schedule_names, setting_keys, sum_mean_groups)

#: per-setting means (and standard deviations over seeds) of these columns, when logged;
#: ``elbo`` is −(D + R) on the test images (nats per example)
SETTING_METRICS = ("distortion", "rate", "elbo", "active_units", "test/mse", "test/psnr",
                   "test/recon_variance_ratio", "test/linear_probe_acc", "test/knn_acc",
                   "test/mig", "test/iwae_nll", "val/sigma")
#: measures that mean the same under every likelihood head (docs/pages/studies.md, "What makes a result"): heads are compared
#: on these, never on their distortions, ELBOs or IWAE bounds (different likelihoods)
HEAD_FREE = ("test/mse", "test/psnr", "test/linear_probe_acc", "test/knn_acc", "active_units")
#: the schedule of a run that trains at its weight from the first step
CONSTANT = "constant"


def by_setting(df: pd.DataFrame) -> pd.DataFrame:
    """Complete runs grouped by setting (every trained param but the seed): one row each with
    ``head``, ``schedule``, ``reduction``, ``beta_eff``, ``n`` (runs), ``converged`` (runs
    whose validation ELBO stopped moving, when known), the run ids, and ``<metric>`` /
    ``<metric>_std`` (mean and standard deviation over seeds) for each of
    :data:`SETTING_METRICS` the sweep logged. Sorted by head, schedule and beta_eff."""
    c = complete_runs(df)
    if c.empty:
        return pd.DataFrame(columns=["head", "schedule", "reduction", "beta_eff", "n"])
    keys = setting_keys(c)  # before the derived columns below, which are not params
    c = c.assign(elbo=-(c["distortion"] + c["rate"]), schedule=schedule_names(c))
    grouped = c.astype({k: str for k in keys}).groupby(keys, dropna=False, sort=False) \
        if keys else [((), c)]
    rows = []
    for _, g in grouped:
        g = c.loc[g.index]
        first = g.iloc[0]
        row: dict[str, Any] = {"head": first["head"], "schedule": first["schedule"],
                               "reduction": first["reduction"],
                               "beta_eff": float(g["beta_eff"].median()), "n": len(g)}
        if "converged" in g:
            row["converged"] = int(g["converged"].map(lambda v: v is True).sum())
        for m in SETTING_METRICS:
            if m in g and g[m].notna().any():
                row[m] = float(g[m].mean())
                row[f"{m}_std"] = float(g[m].std()) if g[m].notna().sum() > 1 else float("nan")
        row["runs"] = list(g["run_id"])
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["head", "schedule", "beta_eff"], kind="stable").reset_index(drop=True)


def setting_label(row: pd.Series | dict, settings: pd.DataFrame) -> str:
    """A setting's name within its sweep: beta_eff, with the head, schedule and reduction
    where the sweep varies them."""
    parts = [f"beta_eff {float(row['beta_eff']):.3g}"]
    for key in ("head", "schedule", "reduction"):
        if key in settings and settings[key].astype(str).nunique() > 1:
            parts.append(str(row[key]))
    return " ".join(parts)


def noise_floor(a: pd.Series | dict, b: pd.Series | dict, metric: str) -> float:
    """The largest difference of ``metric``'s means between settings ``a`` and ``b`` that is
    seed noise: :data:`NOISE_SIGMAS` × the larger seed-to-seed std of the two (nan when
    neither has repeated seeds)."""
    stds = [float(x.get(f"{metric}_std", float("nan"))) for x in (a, b)]
    stds = [s for s in stds if np.isfinite(s)]
    return NOISE_SIGMAS * max(stds) if stds else float("nan")


def beyond_noise(diff: float, floor: float) -> bool | None:
    """True / False when a difference is / is not beyond the noise floor; None when the
    floor is unknown (no repeated seeds)."""
    if not np.isfinite(floor):
        return None
    return bool(abs(diff) > floor)


# -- question 1: the same typed weight under both reductions ----------------------------
def typed_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Runs under ``kl=beta`` at the same typed ``kl.beta`` and seed, one with
    ``kl.reduction=sum`` (beta_eff = beta) and one with ``mean`` (beta_eff = beta·N/M),
    otherwise equal: what a user gets by switching the reduction and keeping the number.
    One row per pair: ``beta``, both beta_eff, both runs' distortion, rate and active units,
    and the gaps (mean − sum)."""
    cols = ["head", "seed", "beta", "beta_eff_sum", "beta_eff_mean", "distortion_sum",
            "distortion_mean", "gap_distortion", "rate_sum", "rate_mean", "gap_rate",
            "active_units_sum", "active_units_mean", "run_sum", "run_mean"]
    c = complete_runs(df)
    if c.empty or "kl.reduction" not in c:
        return pd.DataFrame(columns=cols)
    c = c[(c["weighting"] == "beta") & np.isfinite(c["beta"])]
    keys = [k for k in setting_keys(c) if k != "kl.reduction"] + ["seed"]
    rows = []
    for sums, means in sum_mean_groups(c, keys):
        for _, s in sums.iterrows():
            for _, m in means.iterrows():
                if abs(s["beta_eff"] - m["beta_eff"]) <= BETA_EFF_RTOL * max(s["beta_eff"], 1e-12):
                    continue  # an equal-beta_eff pair (reduction_pairs), not a typed one
                rows.append({"head": s["head"], "seed": s["seed"], "beta": s["beta"],
                             "beta_eff_sum": s["beta_eff"], "beta_eff_mean": m["beta_eff"],
                             "distortion_sum": s["distortion"], "distortion_mean": m["distortion"],
                             "gap_distortion": m["distortion"] - s["distortion"],
                             "rate_sum": s["rate"], "rate_mean": m["rate"],
                             "gap_rate": m["rate"] - s["rate"],
                             "active_units_sum": s["active_units"],
                             "active_units_mean": m["active_units"],
                             "run_sum": s["run_id"], "run_mean": m["run_id"]})
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["head", "beta", "seed"], kind="stable").reset_index(drop=True)


# -- question 4: annealing against the constant weight ---------------------------------
def schedule_comparison(settings: pd.DataFrame, metrics: tuple[str, ...] = ("active_units", "elbo"),
                        ) -> pd.DataFrame:
    """Each non-constant schedule against the constant weight at the same head, reduction and
    beta_eff (the target weight): the means of ``metrics``, their difference (schedule −
    constant), the seed-noise floor and whether the difference is beyond it."""
    cols = ["head", "beta_eff", "schedule", "metric", "constant", "value", "diff", "floor",
            "beyond_noise", "n_constant", "n"]
    rows = []
    if settings.empty or "schedule" not in settings:
        return pd.DataFrame(columns=cols)
    for _, s in settings[settings["schedule"] != CONSTANT].iterrows():
        ref = settings[(settings["schedule"] == CONSTANT) & (settings["head"] == s["head"])
                       & (settings["reduction"] == s["reduction"])
                       & np.isclose(settings["beta_eff"], s["beta_eff"], rtol=BETA_EFF_RTOL)]
        if ref.empty:
            continue
        r = ref.iloc[0]
        for m in metrics:
            if m not in settings or not np.isfinite(s.get(m, np.nan)):
                continue
            diff = float(s[m] - r[m])
            floor = noise_floor(s, r, m)
            rows.append({"head": s["head"], "beta_eff": s["beta_eff"], "schedule": s["schedule"],
                         "metric": m, "constant": float(r[m]), "value": float(s[m]),
                         "diff": diff, "floor": floor, "beyond_noise": beyond_noise(diff, floor),
                         "n_constant": int(r["n"]), "n": int(s["n"])})
    return pd.DataFrame(rows, columns=cols)


# -- question 5: heads on head-independent measures ------------------------------------
def implied_beta(sigma: float) -> float:
    """The KL weight β of the MSE-sum loss Σ(x − x̂)² + β·KL that has the same minimiser as
    a Gaussian head with standard deviation ``sigma`` at beta_eff = 1: β = 2σ² (docs/pages/loss-contract.md).
    σ in the data's units (pixels in [0, 1])."""
    return 2.0 * float(sigma) ** 2


def head_comparison(settings: pd.DataFrame) -> pd.DataFrame:
    """The settings of a sweep that varies the likelihood head at one beta_eff: per head, the
    head-independent measures (:data:`HEAD_FREE`) with their spread, the σ a Gaussian head
    trains with or settles on (``val/sigma``; its mean over pixels for a per-pixel σ) and
    that σ as an implied MSE-loss weight 2σ². Empty unless two or more heads share a
    beta_eff."""
    if settings.empty or settings["head"].nunique() < 2:
        return pd.DataFrame()
    counts = settings.groupby("beta_eff")["head"].nunique()
    shared = counts[counts >= 2].index
    s = settings[settings["beta_eff"].isin(shared)].copy()
    if "val/sigma" in s:
        s["implied_beta"] = [implied_beta(v) if np.isfinite(v) else float("nan")
                             for v in s["val/sigma"]]
    keep = ["head", "beta_eff", "n", "converged", *[m for m in HEAD_FREE if m in s],
            *[f"{m}_std" for m in HEAD_FREE if f"{m}_std" in s],
            *[c for c in ("val/sigma", "implied_beta") if c in s], "runs"]
    return s[[k for k in keep if k in s]].reset_index(drop=True)
