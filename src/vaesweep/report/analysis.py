"""The numbers behind the report: Pareto fronts, sum/mean pairs, seed spread, run dynamics.

Plain functions of the runs DataFrame (:mod:`vaesweep.report.data`), shared by the report,
the notebook and the generated answer.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from vaesweep.report.data import (COLLAPSE_NATS, FEEDBACK_WEIGHTINGS, complete_runs,
                                  weight_column)

#: a sum run and a mean run "agree" when their distortions differ by at most
#: max(2 % of |D|, 1 nat) and their rates by at most max(10 % of R, 0.5 nats)
D_TOL_REL, D_TOL_ABS = 0.02, 1.0
R_TOL_REL, R_TOL_ABS = 0.10, 0.5
#: relative difference under which two runs' beta_eff count as equal (float32 logging)
BETA_EFF_RTOL = 1e-4
#: columns that are not params (row metadata and derived values)
DERIVED = {"run_id", "run_name", "status", "state", "trial", "parent_run_id", "overrides",
           "error", "start_time", "head", "reduction", "weighting", "method", "beta_norm",
           "beta", "beta_eff", "distortion", "rate", "active_units", "latent_dim",
           "collapsed_dims", "pareto", "optuna_state", "optuna_values", "optuna_best"}
#: params that say how the weight is written, or that do not change what is trained:
#: a sum/mean pair may differ in these (and in sweep-local variables such as ``b``)
_PAIR_FREE = ("kl.reduction", "kl.beta", "kl.beta_norm", "kl.name")
#: weightings whose pairs are compared (a controller sets its own weight)
_PAIR_WEIGHTINGS = ("beta", "beta_norm")
_PAIR_FREE_PREFIX = ("tracking.", "metrics.", "study.", "hydra.")
#: top-level params that do not change what a run computes (``seed`` is the one varied)
_NOT_TRAINED = ("seed", "threads", "objective", "ckpt_path")


# -- Pareto ----------------------------------------------------------------------------------
def pareto_mask(distortion: Sequence[float], rate: Sequence[float]) -> np.ndarray:
    """True where no other point has lower-or-equal distortion and rate (one strictly lower):
    the rate–distortion Pareto front, both minimised."""
    d, r = np.asarray(distortion, float), np.asarray(rate, float)
    order = np.lexsort((r, d))  # by distortion, ties by rate
    mask = np.zeros(len(d), bool)
    best_r = math.inf
    last: tuple[float, float] | None = None
    for i in order:
        if r[i] < best_r:
            mask[i], best_r, last = True, r[i], (d[i], r[i])
        elif last is not None and (d[i], r[i]) == last:
            mask[i] = True  # an exact duplicate of a front point is on the front too
    return mask


def mark_pareto(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a boolean ``pareto`` column: on the front of the complete runs of its head
    (distortions of different likelihoods are not comparable)."""
    df = df.copy()
    df["pareto"] = False
    c = complete_runs(df)
    for _, g in c.groupby("head", dropna=False):
        m = pareto_mask(g["distortion"], g["rate"])
        df.loc[g.index[m], "pareto"] = True
    return df


def pareto_runs(df: pd.DataFrame, max_runs: int = 6) -> pd.DataFrame:
    """Pareto-optimal runs to show pictures of: at most ``max_runs``, spread along each head's
    front (lowest distortion, highest distortion and between)."""
    front = complete_runs(df)
    front = front[front["pareto"]]
    if front.empty:
        return front
    heads = list(front["head"].drop_duplicates())
    per_head = max(1, math.ceil(max_runs / len(heads)))
    picked = []
    for h in heads:
        g = front[front["head"] == h].sort_values("distortion")
        idx = np.unique(np.linspace(0, len(g) - 1, min(per_head, len(g))).round().astype(int))
        picked.append(g.iloc[idx])
    return pd.concat(picked).head(max_runs)


# -- sum / mean pairs ------------------------------------------------------------------------
def param_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if "/" not in str(c) and c not in DERIVED]


def _pair_key_columns(df: pd.DataFrame) -> list[str]:
    cols = []
    for c in param_columns(df):
        if c in _PAIR_FREE or c.startswith(_PAIR_FREE_PREFIX):
            continue
        if "." not in c and c != "seed":  # sweep-local variables (`b`), threads, objective
            continue
        cols.append(c)
    return cols


def _weight_text(row: pd.Series) -> str:
    if row.get("weighting") == "beta_norm":
        return f"beta_norm={row['beta_norm']:.4g}"
    if row.get("weighting") == "beta":
        return f"beta={row['beta']:.4g}"
    return str(row.get("weighting"))


def agree(d_sum: float, d_mean: float, r_sum: float, r_mean: float) -> bool:
    """Whether two runs land on the same point, within the module's tolerances."""
    d_tol = max(D_TOL_REL * abs((d_sum + d_mean) / 2), D_TOL_ABS)
    r_tol = max(R_TOL_REL * abs((r_sum + r_mean) / 2), R_TOL_ABS)
    return abs(d_sum - d_mean) <= d_tol and abs(r_sum - r_mean) <= r_tol


def reduction_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Pairs of complete runs, one with ``kl.reduction=sum`` and one with ``mean``, that agree
    on everything that is trained (head, model, data, schedule, seed, ...) and on beta_eff:
    DESIGN §1 says they must land on the same point. One row per pair, with both runs'
    weights as typed, their beta_eff, distortion and rate, the gaps and ``agree``."""
    cols = ["head", "seed", "beta_eff", "weight_sum", "weight_mean", "distortion_sum",
            "distortion_mean", "gap_distortion", "gap_distortion_pct", "rate_sum", "rate_mean",
            "gap_rate", "agree", "run_sum", "run_mean"]
    c = complete_runs(df)
    if c.empty or "kl.reduction" not in c:
        return pd.DataFrame(columns=cols)
    c = c[c["weighting"].isin(_PAIR_WEIGHTINGS)]
    keys = _pair_key_columns(c)
    rows: list[dict[str, Any]] = []
    grouped = c.astype({k: str for k in keys}).groupby(keys, dropna=False, sort=False) \
        if keys else [((), c)]
    for _, g in grouped:
        sums = c.loc[g.index[g["reduction"] == "sum"]].sort_values("beta_eff")
        means = c.loc[g.index[g["reduction"] == "mean"]]
        used: set[Any] = set()
        for _, s in sums.iterrows():
            for j, m in means.iterrows():
                if j in used:
                    continue
                be_s, be_m = s["beta_eff"], m["beta_eff"]
                if not (np.isfinite(be_s) and np.isfinite(be_m)):
                    continue
                if abs(be_s - be_m) > BETA_EFF_RTOL * max(abs(be_s), abs(be_m), 1e-12):
                    continue
                used.add(j)
                dd, dr = s["distortion"] - m["distortion"], s["rate"] - m["rate"]
                scale = abs((s["distortion"] + m["distortion"]) / 2)
                rows.append({
                    "head": s["head"], "seed": s["seed"], "beta_eff": (be_s + be_m) / 2,
                    "weight_sum": _weight_text(s), "weight_mean": _weight_text(m),
                    "distortion_sum": s["distortion"], "distortion_mean": m["distortion"],
                    "gap_distortion": dd,
                    "gap_distortion_pct": 100 * abs(dd) / scale if scale > 0 else float("nan"),
                    "rate_sum": s["rate"], "rate_mean": m["rate"], "gap_rate": dr,
                    "agree": agree(s["distortion"], m["distortion"], s["rate"], m["rate"]),
                    "run_sum": s["run_id"], "run_mean": m["run_id"],
                })
                break
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["head", "beta_eff", "seed"], kind="stable").reset_index(drop=True)


def seed_spread(df: pd.DataFrame) -> pd.DataFrame:
    """Standard deviation of distortion and rate over seeds of otherwise equal runs (groups
    with two or more seeds): the noise a gap between runs should be compared with."""
    c = complete_runs(df)
    keys = [k for k in param_columns(c) if k not in _NOT_TRAINED
            and not k.startswith(_PAIR_FREE_PREFIX)]
    if c.empty or "seed" not in c or c["seed"].nunique() < 2:
        return pd.DataFrame(columns=["n", "std_distortion", "std_rate"])
    g = c.astype({k: str for k in keys}).groupby(keys, dropna=False)
    out = pd.DataFrame({"n": g["seed"].nunique(), "std_distortion": g["distortion"].std(),
                        "std_rate": g["rate"].std()})
    return out[out["n"] >= 2].reset_index(drop=True)


# -- weight sweeps ---------------------------------------------------------------------------
def over_seeds(df: pd.DataFrame, y: str, x: str | None = None,
               by: Sequence[str] = ("head", "reduction")) -> pd.DataFrame:
    """Mean, standard deviation, min, max and count of ``y`` over seeds, per ``by`` and x
    (the KL weight column by default): one line per head and reduction."""
    c = complete_runs(df)
    x = x or weight_column(df)
    c = c[np.isfinite(c[x]) & c[y].notna()] if y in c else c.iloc[0:0]
    if c.empty:
        return pd.DataFrame(columns=[*by, x, "mean", "std", "min", "max", "n"])
    g = c.groupby([*by, x], dropna=False)[y]
    out = g.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"})
    return out.reset_index().sort_values([*by, x], kind="stable").reset_index(drop=True)


def elbo_weight(df: pd.DataFrame) -> float | None:
    """The beta_norm at which beta_eff = 1 (the ELBO's own weight, M/N): beta_norm/beta_eff,
    when the sweep's beta_norm runs agree on it."""
    c = complete_runs(df)
    c = c[(c["beta_norm"] > 0) & (c["beta_eff"] > 0)]
    if c.empty:
        return None
    ratio = (c["beta_norm"] / c["beta_eff"]).to_numpy()
    return float(np.median(ratio)) if np.ptp(ratio) <= 1e-3 * np.median(ratio) else None


# -- schedules and controllers ---------------------------------------------------------------
def is_dynamic(df: pd.DataFrame) -> pd.Series:
    """Runs whose KL weight moves during training: a non-constant schedule, a controller or
    capacity annealing, or free bits."""
    if df.empty:
        return pd.Series(dtype=bool)
    sched = df.get("kl.schedule.name", pd.Series("constant", index=df.index)).fillna("constant")
    fb = pd.to_numeric(df.get("kl.free_bits", pd.Series(0.0, index=df.index)), errors="coerce")
    return (sched != "constant") | df["weighting"].isin(FEEDBACK_WEIGHTINGS) | (fb.fillna(0) > 0)


def dynamics_runs(df: pd.DataFrame, max_runs: int = 12) -> pd.DataFrame:
    """Runs to show over training steps when the sweep has moving weights: every method
    with a finished run, one per method, head, reduction and weight (lowest seed first),
    at most ``max_runs``; empty when no run's weight moves."""
    if df.empty or not is_dynamic(df).any():
        return df.iloc[0:0]
    done = df[df["state"].isin(("COMPLETE", "FAILED", "PRUNED", "KILLED"))]
    w = weight_column(df)
    keys = ["method", "head", "reduction", w]
    first = done.sort_values(["seed", "trial"], kind="stable").drop_duplicates(keys)
    # round-robin over methods so that every method is shown before any repeats
    first = first.assign(_k=first.groupby("method", sort=False).cumcount())
    return first.sort_values(["_k"], kind="stable").head(max_runs).drop(columns="_k")


def dynamics_table(runs: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """Per run: the weight at the end, the rate at the end and its peak, the active units at
    the end, and the collapse flag (``full``: no active unit; ``k/M``: k latents under
    0.01 nats; ``none``)."""
    rows = []
    for _, r in runs.iterrows():
        h = hist[hist["run_id"] == r["run_id"]] if not hist.empty else hist

        def last(key: str, h=h) -> float:
            s = h[h["key"] == key] if not h.empty else h
            return float(s.sort_values("step")["value"].iloc[-1]) if len(s) else float("nan")

        def peak(key: str, h=h) -> float:
            s = h[h["key"] == key] if not h.empty else h
            return float(s["value"].max()) if len(s) else float("nan")

        kl_keys = sorted({k for k in (h["key"] if not h.empty else []) if k.startswith("val/kl_dim_")})
        kl_last = [last(k) for k in kl_keys]
        m = len(kl_last) or (r.get("latent_dim") or 0)
        dead = sum(1 for v in kl_last if v < COLLAPSE_NATS)
        au = last("val/active_units")
        if not np.isfinite(au):
            au = r.get("active_units", float("nan"))
        if (np.isfinite(au) and au == 0) or (kl_last and dead == len(kl_last)):
            flag = "full"
        elif dead:
            flag = f"{dead}/{m}"
        else:
            flag = "none" if kl_last or np.isfinite(au) else "?"
        rows.append({"method": r["method"], "head": r["head"], "reduction": r["reduction"],
                     "seed": r["seed"], "state": r["state"],
                     "beta_eff_end": last("train/beta_eff"), "rate_end": last("val/rate"),
                     "rate_peak": peak("val/rate"), "active_units_end": au,
                     "latent_dim": m or None, "collapse": flag, "run_id": r["run_id"]})
    return pd.DataFrame(rows, columns=["method", "head", "reduction", "seed", "state",
                                       "beta_eff_end", "rate_end", "rate_peak",
                                       "active_units_end", "latent_dim", "collapse", "run_id"])


def run_label(row: pd.Series | dict, weight: str | None = None) -> str:
    """A short label for a run: head, reduction, weight, seed (and trial)."""
    parts = [str(row.get("head")), str(row.get("reduction"))]
    w = weight or ("beta_norm" if np.isfinite(row.get("beta_norm", np.nan)) else "beta_eff")
    v = row.get(w)
    if v is not None and np.isfinite(v):
        parts.append(f"{w}={v:.3g}")
    if row.get("method") and is_dynamic(pd.DataFrame([row])).any():
        parts.append(str(row["method"]))
    if row.get("seed") is not None:
        parts.append(f"seed {row['seed']}")
    t = row.get("trial")
    if t is not None and not (isinstance(t, float) and math.isnan(t)):
        parts.append(f"trial {int(t)}")
    return " ".join(parts)
