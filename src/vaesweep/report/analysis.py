"""The numbers behind the report: Pareto fronts, sum/mean pairs, seed spread, run dynamics,
convergence and the D/R ordering along the weight axis (docs/pages/studies.md, "What makes a result").

Plain functions of the runs DataFrame (:mod:`vaesweep.report.data`), shared by the report,
the notebook and the generated answer. This module imports nothing from ``data`` (which
imports it), so the two do not form an import cycle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from vaesweep.contract import COLLAPSE_THRESHOLD, CONVERGED_RTOL, CONVERGED_WINDOW, elbo_change


#: structure metrics in order of preference: factors (dSprites), then labels
STRUCTURE_METRICS = ("test/mig", "test/linear_probe_acc", "test/knn_acc")
#: weighting methods whose weight moves during training (besides non-constant schedules)
FEEDBACK_WEIGHTINGS = ("capacity", "geco", "controlvae")
#: runs closer than this many seed-to-seed standard deviations (in D and in R) are one point
NOISE_SIGMAS = 2.0


def complete_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with a finite distortion and rate."""
    if df.empty:
        return df
    ok = (df["state"] == "COMPLETE") & np.isfinite(df["distortion"]) & np.isfinite(df["rate"])
    return df[ok]


def structure_metric(df: pd.DataFrame) -> str | None:
    """The structure metric the sweep logged: MIG (data with factors), else a probe accuracy
    (data with labels); None when there is none."""
    return next((m for m in STRUCTURE_METRICS if m in df and df[m].notna().any()), None)


def structure_metrics(df: pd.DataFrame) -> list[str]:
    """Every structure metric the sweep logged, in :data:`STRUCTURE_METRICS` order."""
    return [m for m in STRUCTURE_METRICS if m in df and df[m].notna().any()]


def weight_column(df: pd.DataFrame) -> str:
    """``beta_norm`` when every complete run has one, else ``beta_eff``."""
    c = complete_runs(df)
    if len(c) and c["beta_norm"].notna().all() and (c["beta_norm"] > 0).all():
        return "beta_norm"
    return "beta_eff"


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
           "collapsed_dims", "pareto", "optuna_state", "optuna_values", "optuna_best",
           "beta_eff_logged", "n_elements", "elbo_beta_norm", "schedule_unfinished",
           "pareto_point", "elbo_change", "converged", "data"}
#: params that say how the weight is written, or that do not change what is trained:
#: a sum/mean pair may differ in these (and in sweep-local variables such as ``b``)
_PAIR_FREE = ("kl.reduction", "kl.beta", "kl.beta_norm", "kl.name")
#: weightings whose pairs are compared (a controller sets its own weight)
_PAIR_WEIGHTINGS = ("beta", "beta_norm")
_PAIR_FREE_PREFIX = ("tracking.", "metrics.", "study.", "hydra.")
#: top-level params that do not change what a run computes (``seed`` is the one varied)
_NOT_TRAINED = ("seed", "threads", "objective", "ckpt_path")


# -- seed noise -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Noise:
    """How far apart two runs' distortion and rate must be to count as different points.

    With repeated seeds (``std_*`` set): :data:`NOISE_SIGMAS` times the median seed-to-seed
    standard deviation (at least the absolute floors ``D_TOL_ABS``, ``R_TOL_ABS``). Without:
    the default tolerance of :func:`agree`, max(2 % of D, 1 nat) and max(10 % of R, 0.5 nats).
    """

    std_distortion: float | None = None
    std_rate: float | None = None
    settings: int = 0

    def tol_distortion(self, d1: float, d2: float, n1: int = 1, n2: int = 1) -> float:
        """The largest |d1 − d2| that is noise; ``n1``, ``n2``: seeds averaged in each (a
        difference of means over several seeds is less noisy than one of single runs)."""
        if self.std_distortion is None:
            return max(D_TOL_REL * abs((d1 + d2) / 2), D_TOL_ABS)
        return max(NOISE_SIGMAS * self.std_distortion * _means(n1, n2), D_TOL_ABS)

    def tol_rate(self, r1: float, r2: float, n1: int = 1, n2: int = 1) -> float:
        if self.std_rate is None:
            return max(R_TOL_REL * abs((r1 + r2) / 2), R_TOL_ABS)
        return max(NOISE_SIGMAS * self.std_rate * _means(n1, n2), R_TOL_ABS)

    def same(self, d1: float, r1: float, d2: float, r2: float) -> bool:
        """Whether two runs are one point within the noise."""
        return abs(d1 - d2) <= self.tol_distortion(d1, d2) and abs(r1 - r2) <= self.tol_rate(r1, r2)

    def dominates(self, d1: float, r1: float, d2: float, r2: float) -> bool:
        """Whether run 1 beats run 2 beyond the noise: no worse in D and R within the noise,
        and better by more than the noise in at least one."""
        td, tr = self.tol_distortion(d1, d2), self.tol_rate(r1, r2)
        return d1 <= d2 + td and r1 <= r2 + tr and (d1 < d2 - td or r1 < r2 - tr)

    def describe(self) -> str:
        if self.std_distortion is None:
            return (f"no repeated seeds, so the default tolerance: |ΔD| ≤ max({D_TOL_REL:.0%} of D, "
                    f"{D_TOL_ABS:g} nat), |ΔR| ≤ max({R_TOL_REL:.0%} of R, {R_TOL_ABS:g} nats)")
        return (f"{NOISE_SIGMAS:g}× the seed-to-seed spread: |ΔD| ≤ "
                f"{max(NOISE_SIGMAS * self.std_distortion, D_TOL_ABS):.3g} nats, |ΔR| ≤ "
                f"{max(NOISE_SIGMAS * self.std_rate, R_TOL_ABS):.3g} nats (median std over "
                f"{self.settings} setting(s) with several seeds)")


def _means(n1: int, n2: int) -> float:
    """The std of a difference of two means of n1 and n2 seeds, over the std of one run,
    relative to that of two single runs (1 for n1 = n2 = 1)."""
    return math.sqrt((1 / n1 + 1 / n2) / 2)


def seed_noise(df: pd.DataFrame) -> Noise:
    """The :class:`Noise` of a sweep (or one head's runs): from :func:`seed_spread` when some
    setting was run with several seeds, else the default tolerance."""
    spread = seed_spread(df)
    spread = spread[np.isfinite(spread["std_distortion"]) & np.isfinite(spread["std_rate"])] \
        if len(spread) else spread
    if spread.empty:
        return Noise()
    return Noise(float(spread["std_distortion"].median()), float(spread["std_rate"].median()),
                 int(len(spread)))


# -- Pareto ----------------------------------------------------------------------------------
def pareto_mask(distortion: Sequence[float], rate: Sequence[float],
                noise: Noise | None = None) -> np.ndarray:
    """True where no other point has lower-or-equal distortion and rate (one strictly lower):
    the rate–distortion Pareto front, both minimised. With ``noise``, a point is off the
    front only when another beats it beyond the noise (:meth:`Noise.dominates`), so runs
    within seed noise of each other are on or off the front together."""
    d, r = np.asarray(distortion, float), np.asarray(rate, float)
    if noise is not None:
        return np.array([not any(noise.dominates(d[j], r[j], d[i], r[i])
                                 for j in range(len(d)) if j != i) for i in range(len(d))],
                        dtype=bool)
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


def same_point_groups(distortion: Sequence[float], rate: Sequence[float],
                      noise: Noise) -> np.ndarray:
    """A group number per run: runs linked by chains of :meth:`Noise.same` share one, numbered
    0, 1, ... in order of increasing distortion."""
    d, r = np.asarray(distortion, float), np.asarray(rate, float)
    parent = list(range(len(d)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(d)):
        for j in range(i + 1, len(d)):
            if noise.same(d[i], r[i], d[j], r[j]):
                parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(d))]
    order = sorted(set(roots), key=lambda root: min(d[k] for k in range(len(d)) if roots[k] == root))
    number = {root: n for n, root in enumerate(order)}
    return np.array([number[root] for root in roots], dtype=int)


def mark_pareto(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a boolean ``pareto`` column (on the front of the complete runs of its head,
    within that head's seed noise: distortions of different likelihoods are not comparable)
    and ``pareto_point``: the point of the front a run belongs to, runs within seed noise of
    each other being one point (NaN off the front)."""
    df = df.copy()
    df["pareto"] = False
    df["pareto_point"] = np.nan
    c = complete_runs(df)
    for _, g in c.groupby("head", dropna=False):
        m = pareto_mask(g["distortion"], g["rate"], seed_noise(g))
        df.loc[g.index[m], "pareto"] = True
        front = g[m]
        df.loc[front.index, "pareto_point"] = same_point_groups(front["distortion"], front["rate"],
                                                                seed_noise(g))
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
    The loss contract says they must land on the same point. One row per pair, with both runs'
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
    for sums, means in sum_mean_groups(c, keys):
        sums = sums.sort_values("beta_eff")
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


def setting_keys(df: pd.DataFrame) -> list[str]:
    """The params that change what a run trains: every param but the seed, bookkeeping
    (threads, objective, ckpt_path) and the tracking/metrics/study/hydra keys. Runs equal in
    these are one setting repeated over seeds."""
    return [k for k in param_columns(df) if k not in _NOT_TRAINED
            and not k.startswith(_PAIR_FREE_PREFIX)]


def schedule_names(df: pd.DataFrame) -> pd.Series:
    """Each run's KL schedule (``kl.schedule.name``), ``constant`` where it has none."""
    return df.get("kl.schedule.name", pd.Series("constant", index=df.index)).fillna("constant")


def sum_mean_groups(c: pd.DataFrame, keys: Sequence[str]) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """For runs ``c`` grouped by ``keys`` (the params a pair must share): each group's
    ``kl.reduction=sum`` runs and its ``mean`` runs, as two frames."""
    grouped = c.astype({k: str for k in keys}).groupby(list(keys), dropna=False, sort=False) \
        if keys else [((), c)]
    for _, g in grouped:
        g = c.loc[g.index]
        yield g[g["reduction"] == "sum"], g[g["reduction"] == "mean"]


def seed_spread(df: pd.DataFrame) -> pd.DataFrame:
    """Standard deviation of distortion and rate over seeds of otherwise equal runs (groups
    with two or more seeds): the noise a gap between runs should be compared with."""
    c = complete_runs(df)
    keys = setting_keys(c)
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
    """The beta_norm at which beta_eff = 1 (the ELBO's own weight): M/N from the config, M
    being ``model.latent_dim`` and N = C·H·W the data's shape (``elbo_beta_norm``), never from
    logged beta_eff values (wrong while a schedule is unfinished). None when the complete runs
    do not record it or do not share one value."""
    c = complete_runs(df)
    if c.empty or "elbo_beta_norm" not in c:
        return None
    values = c["elbo_beta_norm"].astype(float)
    if values.isna().any():
        return None
    return float(values.iloc[0]) if np.ptp(values.to_numpy()) <= 1e-9 * values.iloc[0] else None


# -- convergence and the D/R ordering (docs/pages/studies.md, "What makes a result") ------------------------------------------
def convergence(runs: pd.DataFrame, hist: pd.DataFrame, key: str = "val/elbo",
                window: float = CONVERGED_WINDOW, rtol: float = CONVERGED_RTOL) -> pd.DataFrame:
    """Per run: its validation ELBO at the start of its last ``window`` of steps (the last
    validation at or before step (1 − window)·S, S its last validation step) and at the end,
    the relative change |end − start| / |end|, and ``converged`` (change < ``rtol``); None when
    the history cannot tell (no validation before the window, or none at all)."""
    rows = []
    h = hist[hist["key"] == key] if len(hist) else hist
    for rid in runs["run_id"]:
        s = h[h["run_id"] == rid].sort_values("step") if len(h) else h
        start = end = change = np.nan
        converged: bool | None = None
        window_ends = elbo_change(s["step"].tolist(), s["value"].tolist(), window) if len(s) else None
        if window_ends is not None:
            start, end, change = window_ends
            converged = bool(change < rtol)
        rows.append({"run_id": rid, "elbo_start": start, "elbo_end": end, "elbo_change": change,
                     "converged": converged})
    return pd.DataFrame(rows, columns=["run_id", "elbo_start", "elbo_end", "elbo_change",
                                       "converged"])


def with_convergence(df: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the ``elbo_change`` and ``converged`` columns of :func:`convergence`
    (``converged`` None for runs that are not complete or cannot be judged)."""
    out = df.drop(columns=[c for c in ("elbo_change", "converged") if c in df])
    conv = convergence(complete_runs(df), hist)[["run_id", "elbo_change", "converged"]]
    out = out.merge(conv, on="run_id", how="left")
    out["converged"] = out["converged"].astype(object).where(out["converged"].notna(), None)
    out.index = df.index
    return out


def _trusted(c: pd.DataFrame) -> pd.DataFrame:
    """Complete runs whose weight is the configured one at the end: fixed weightings, not
    flagged unconverged, schedule finished."""
    c = c[c["weighting"].isin(_PAIR_WEIGHTINGS) & np.isfinite(c["beta_eff"])]
    if "converged" in c:
        c = c[c["converged"].map(lambda v: v is not False)]
    if "schedule_unfinished" in c:
        c = c[c["schedule_unfinished"].isna()]
    return c


def ordering_breaks(df: pd.DataFrame) -> pd.DataFrame:
    """Pairs of weights at which runs break the order that converged minimisers of
    D + beta_eff·R obey (docs/pages/studies.md, "What makes a result"): of two settings that differ only in the weight (and how
    it is written), the one with the larger beta_eff has no lower distortion and no higher
    rate. Each setting is the mean over its seeds; only runs that are complete, not flagged
    unconverged and whose schedule finished count. A pair breaks the order when the gap
    exceeds its head's seed noise for means of that many seeds (:class:`Noise`). One row per
    pair: the lower and higher beta_eff, their mean D and R, ``broken`` ("distortion",
    "rate" or both), the gaps, and the runs on each side (``run_low``/``run_high``: the first
    of ``runs_low``/``runs_high``)."""
    cols = ["head", "beta_eff_low", "beta_eff_high", "distortion_low", "distortion_high",
            "rate_low", "rate_high", "broken", "gap_distortion", "gap_rate", "run_low",
            "run_high", "runs_low", "runs_high"]
    c = _trusted(complete_runs(df))
    if c.empty:
        return pd.DataFrame(columns=cols)
    keys = [k for k in _pair_key_columns(c) if k != "seed"]
    rows = []
    for head, hg in c.groupby("head", sort=False):
        noise = seed_noise(hg)
        grouped = hg.astype({k: str for k in keys}).groupby(keys, dropna=False, sort=False) \
            if keys else [((), hg)]
        for _, g in grouped:
            g = hg.loc[g.index]
            # one setting per beta_eff (equal within float32 logging), averaged over seeds
            levels: list[dict[str, Any]] = []
            for _, r in g.sort_values("beta_eff").iterrows():
                if levels and r["beta_eff"] <= levels[-1]["beta_eff"] * (1 + BETA_EFF_RTOL):
                    levels[-1]["runs"].append(r)
                else:
                    levels.append({"beta_eff": r["beta_eff"], "runs": [r]})
            for lv in levels:
                lv["d"] = float(np.mean([r["distortion"] for r in lv["runs"]]))
                lv["r"] = float(np.mean([r["rate"] for r in lv["runs"]]))
                lv["n"] = len(lv["runs"])
            for i, lo in enumerate(levels):
                for hi in levels[i + 1:]:
                    gap_d = lo["d"] - hi["d"]  # > 0: D fell as the weight rose
                    gap_r = hi["r"] - lo["r"]  # > 0: R rose as the weight rose
                    broken = [name for name, gap, tol in (
                        ("distortion", gap_d, noise.tol_distortion(lo["d"], hi["d"], lo["n"], hi["n"])),
                        ("rate", gap_r, noise.tol_rate(lo["r"], hi["r"], lo["n"], hi["n"])))
                        if gap > tol]
                    if broken:
                        ids_lo = [r["run_id"] for r in lo["runs"]]
                        ids_hi = [r["run_id"] for r in hi["runs"]]
                        rows.append({"head": head, "beta_eff_low": lo["beta_eff"],
                                     "beta_eff_high": hi["beta_eff"], "distortion_low": lo["d"],
                                     "distortion_high": hi["d"], "rate_low": lo["r"],
                                     "rate_high": hi["r"], "broken": " and ".join(broken),
                                     "gap_distortion": gap_d, "gap_rate": gap_r,
                                     "run_low": ids_lo[0], "run_high": ids_hi[0],
                                     "runs_low": ids_lo, "runs_high": ids_hi})
    return pd.DataFrame(rows, columns=cols)


# -- where structure peaks -------------------------------------------------------------------
def structure_peaks(df: pd.DataFrame, weight: str | None = None) -> pd.DataFrame:
    """Per head and structure metric (MIG, linear-probe and kNN accuracy): the weight at which
    its mean over seeds peaks, that weight as beta_eff and as beta_norm (through the config's
    M/N), the mean there, and the means at the lowest and highest weights searched.
    ``within_noise``: other weights whose mean is within :data:`NOISE_SIGMAS` standard
    deviations of the peak's (empty without repeated seeds); ``edge``: "lowest"/"highest"
    when the peak is at the end of the range searched (it may lie beyond)."""
    cols = ["head", "metric", "weight", "peak", "beta_eff", "beta_norm", "mean", "std", "n",
            "low", "mean_low", "high", "mean_high", "edge", "within_noise", "runs"]
    c = complete_runs(df)
    weight = weight or weight_column(df)
    rows = []
    for metric in structure_metrics(c):
        agg = over_seeds(c, metric, weight, by=("head",))
        for head, g in agg.groupby("head", sort=False):
            g = g[g[weight] > 0].sort_values(weight) if weight == "beta_norm" else g.sort_values(weight)
            if len(g) < 2:
                continue
            best = g.loc[g["mean"].idxmax()]
            x = float(best[weight])
            ref = c.loc[(c["head"] == head) & np.isclose(c[weight], x), "elbo_beta_norm"] \
                if "elbo_beta_norm" in c else pd.Series(dtype=float)
            m_over_n = float(ref.median()) if len(ref) and ref.notna().all() else float("nan")
            beta_eff = x if weight == "beta_eff" else x / m_over_n
            beta_norm = x if weight == "beta_norm" else x * m_over_n
            near = []
            if best["n"] > 1 and np.isfinite(best["std"]):
                floor = best["mean"] - NOISE_SIGMAS * best["std"]
                near = [float(v) for v, m in zip(g[weight], g["mean"]) if v != x and m >= floor]
            edge = "lowest" if x == g[weight].min() else "highest" if x == g[weight].max() else None
            runs = c.loc[(c["head"] == head) & np.isclose(c[weight], x), "run_id"].tolist()
            rows.append({"head": head, "metric": metric, "weight": weight, "peak": x,
                         "beta_eff": beta_eff, "beta_norm": beta_norm, "mean": float(best["mean"]),
                         "std": float(best["std"]), "n": int(best["n"]),
                         "low": float(g[weight].iloc[0]), "mean_low": float(g["mean"].iloc[0]),
                         "high": float(g[weight].iloc[-1]), "mean_high": float(g["mean"].iloc[-1]),
                         "edge": edge, "within_noise": near, "runs": runs})
    return pd.DataFrame(rows, columns=cols)


#: the columns of ``runs.csv`` beside a report: what ``vaesweep convert`` cites
RESULT_COLUMNS = ["run_id", "trial", "state", "data", "n_elements", "latent_dim", "head",
                  "reduction", "method", "seed", "beta_norm", "beta_eff", "beta_eff_logged",
                  "elbo_beta_norm", "distortion", "rate", "active_units", "converged",
                  "elbo_change", "schedule_unfinished", "pareto", "pareto_point",
                  *STRUCTURE_METRICS, "test/iwae_nll", "test/mse", "test/psnr",
                  "test/recon_variance_ratio", "val/sigma", "kl.schedule.name"]


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """The runs as the table a report writes to ``runs.csv`` (:data:`RESULT_COLUMNS` that
    the sweep has)."""
    return df[[c for c in RESULT_COLUMNS if c in df]].copy()


# -- schedules and controllers ---------------------------------------------------------------
def is_dynamic(df: pd.DataFrame) -> pd.Series:
    """Runs whose KL weight moves during training: a non-constant schedule, a controller or
    capacity annealing, or free bits."""
    if df.empty:
        return pd.Series(dtype=bool)
    sched = schedule_names(df)
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
        dead = sum(1 for v in kl_last if v < COLLAPSE_THRESHOLD)
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
