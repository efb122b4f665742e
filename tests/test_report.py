"""`vaesweep report`: the analysis on hand-made runs (Pareto fronts, sum/mean pairs, seed
spread, collapse, the generated answer), the figures, and the whole command on a tiny real
sweep: files written, self-contained HTML, numbers that match MLflow, artifacts on the parent
run, and one-line errors."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from conftest import search_runs
from vaesweep.report import analysis, plots
from vaesweep.report.answer import answer
from vaesweep.report.data import complete_runs, parse_value, runs_frame, weight_column

PNG = b"\x89PNG\r\n\x1a\n"
N_OVER_M = 409.6  # dSprites 64x64 pixels over 10 latents


# -- hand-made runs, shaped as MLflow returns them ---------------------------------------------
def fake_run(i: int, *, head="bernoulli", reduction="mean", beta_norm=None, beta=None,
             seed=0, d=100.0, r=10.0, au=5, status="FINISHED", schedule="constant",
             weighting=None, overrides="", kl_dims=None, tags=None, mig=None):
    weighting = weighting or ("beta_norm" if beta_norm is not None else "beta")
    params = {"likelihood.name": head, "kl.name": weighting, "kl.reduction": reduction,
              "kl.schedule.name": schedule, "kl.free_bits": "0.0", "seed": str(seed),
              "model.latent_dim": "10", "data.name": "dsprites", "optim.lr": "0.0005",
              "tracking.uri": "sqlite:///mlflow.db", "b": "0.1", "threads": str(i % 2)}
    if beta_norm is not None:
        params["kl.beta_norm"] = str(beta_norm)
        beta_eff = beta_norm * N_OVER_M
    else:
        params["kl.beta"] = str(beta)
        beta_eff = beta if reduction == "sum" else beta * N_OVER_M
    metrics = {"test/beta_eff": np.float32(beta_eff).item()}
    if status == "FINISHED":
        metrics.update({"test/distortion": d, "test/rate": r, "test/active_units": au})
        if mig is not None:
            metrics["test/mig"] = mig
        for j, v in enumerate(kl_dims if kl_dims is not None else [r / 10] * 10):
            metrics[f"val/kl_dim_{j}"] = v
    return SimpleNamespace(
        info=SimpleNamespace(run_id=f"run{i:04d}" + "0" * 24, run_name=f"r{i}", status=status,
                             start_time=1_700_000_000_000 + i),
        data=SimpleNamespace(params=params, metrics=metrics,
                             tags={"vaesweep.trial": str(i), "vaesweep.overrides": overrides,
                                   "mlflow.parentRunId": "parent",
                                   "vaesweep.data_shape": "1,64,64", **(tags or {})}))


def beta_norm_sweep(seeds=(0, 1), heads=("bernoulli",), reductions=("sum", "mean")):
    """beta_norm 0.01..10: distortion rises and rate falls with the weight; collapse at >= 3."""
    runs, i = [], 0
    for head in heads:
        for red in reductions:
            for b in (0.01, 0.1, 1.0, 3.0, 10.0):
                for s in seeds:
                    d = 50 + 20 * np.log10(b) + 2 * s + (1000 if head == "gaussian" else 0)
                    r = max(0.0, 20 - 8 * np.log10(b) - 0.5 * s) if b < 3 else 0.001
                    runs.append(fake_run(i, head=head, reduction=red, beta_norm=b, seed=s,
                                         d=d, r=r, au=0 if b >= 3 else 6, mig=0.1 * np.log10(b) + 0.3))
                    i += 1
    return runs_frame(runs)


# -- loading -------------------------------------------------------------------------------------
def test_params_are_parsed_to_numbers_and_none():
    assert parse_value("0.1") == 0.1 and parse_value("10") == 10 and parse_value("None") is None
    assert parse_value("True") is True and parse_value("bernoulli") == "bernoulli"
    assert parse_value("[1, 2]") == "[1, 2]"


def test_runs_frame_derives_the_columns_the_report_uses():
    df = runs_frame([fake_run(0, beta_norm=0.1, d=80, r=12),
                     fake_run(1, beta=4.0, reduction="sum", d=70, r=15),
                     fake_run(2, beta_norm=1.0, status="FAILED"),
                     fake_run(3, beta_norm=1.0, status="KILLED", tags={"vaesweep.state": "PRUNED"}),
                     fake_run(4, beta_norm=0.1, overrides="+method=linear seed=0",
                              kl_dims=[0.0] * 8 + [2.0, 3.0])])
    assert list(df["state"]) == ["COMPLETE", "COMPLETE", "FAILED", "PRUNED", "COMPLETE"]
    assert df.loc[0, "beta_norm"] == 0.1 and np.isnan(df.loc[1, "beta_norm"])
    assert df.loc[1, "beta"] == 4.0 and df.loc[1, "beta_eff"] == pytest.approx(4.0)
    assert df.loc[0, "beta_eff"] == pytest.approx(0.1 * N_OVER_M, rel=1e-6)
    assert df.loc[0, "distortion"] == 80 and df.loc[0, "rate"] == 12
    assert df.loc[4, "method"] == "linear" and df.loc[0, "method"] == "beta_norm"
    assert df.loc[4, "collapsed_dims"] == 8 and df.loc[0, "collapsed_dims"] == 0
    assert df["trial"].tolist() == [0, 1, 2, 3, 4]
    assert len(complete_runs(df)) == 3
    # a mix of beta and beta_norm runs is placed by beta_eff; all beta_norm by beta_norm
    assert weight_column(df) == "beta_eff"
    assert weight_column(beta_norm_sweep()) == "beta_norm"


# -- Pareto fronts -------------------------------------------------------------------------------
def test_pareto_front_of_known_points():
    d = [1, 2, 3, 2, 4, 1]
    r = [5, 3, 1, 4, 1, 5]
    assert pareto_list(d, r) == [True, True, True, False, False, True]


def pareto_list(d, r):
    return analysis.pareto_mask(d, r).tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=40))
def test_pareto_front_is_exactly_the_non_dominated_points(points):
    d, r = np.array(points, float).T
    mask = analysis.pareto_mask(d, r)
    for i in range(len(d)):
        dominated = any(d[j] <= d[i] and r[j] <= r[i] and (d[j] < d[i] or r[j] < r[i])
                        for j in range(len(d)))
        assert mask[i] == (not dominated)


def test_pareto_is_marked_per_head_and_ignores_failed_runs():
    df = runs_frame([fake_run(0, head="bernoulli", beta_norm=0.1, d=100, r=5),
                     fake_run(1, head="bernoulli", beta_norm=1.0, d=110, r=6),  # dominated
                     fake_run(2, head="gaussian", beta_norm=1.0, d=-500, r=9),  # own head
                     fake_run(3, head="bernoulli", beta_norm=3.0, status="FAILED")])
    assert df["pareto"].tolist() == [True, False, True, False]
    picked = analysis.pareto_runs(df, max_runs=6)
    assert set(picked["run_id"]) == {df.loc[0, "run_id"], df.loc[2, "run_id"]}


# -- sum / mean pairs ----------------------------------------------------------------------------
def test_reduction_pairs_match_equal_beta_eff_and_flag_gaps():
    runs = [
        # the reduction_equivalence study: sum with beta = b N/M against mean with b
        fake_run(0, reduction="sum", beta=0.1 * N_OVER_M, d=100.0, r=10.0),
        fake_run(1, reduction="mean", beta=0.1, d=100.5, r=10.2),
        # a pair that lands apart
        fake_run(2, reduction="sum", beta=1.0 * N_OVER_M, d=100.0, r=10.0),
        fake_run(3, reduction="mean", beta=1.0, d=130.0, r=4.0),
        # no partner: another seed, another head, another weight
        fake_run(4, reduction="sum", beta=0.1 * N_OVER_M, seed=1, d=1, r=1),
        fake_run(5, reduction="mean", beta=0.1, head="gaussian", d=1, r=1),
        fake_run(6, reduction="mean", beta=0.3, d=1, r=1),
    ]
    pairs = analysis.reduction_pairs(runs_frame(runs))
    assert len(pairs) == 2
    first, second = pairs.iloc[0], pairs.iloc[1]
    assert first["beta_eff"] == pytest.approx(40.96, rel=1e-5)
    assert (first["run_sum"], first["run_mean"]) == (runs[0].info.run_id, runs[1].info.run_id)
    assert first["weight_sum"] == "beta=40.96" and first["weight_mean"] == "beta=0.1"
    assert first["gap_distortion"] == pytest.approx(-0.5) and bool(first["agree"])
    assert second["gap_distortion"] == pytest.approx(-30.0) and not bool(second["agree"])
    assert second["gap_rate"] == pytest.approx(6.0)


def test_no_pairs_in_a_sweep_with_one_reduction():
    assert analysis.reduction_pairs(beta_norm_sweep(reductions=("mean",))).empty


def test_seed_spread_and_over_seeds():
    df = beta_norm_sweep(seeds=(0, 1, 2))
    spread = analysis.seed_spread(df)
    assert len(spread) == 10 and (spread["n"] == 3).all()
    assert spread["std_distortion"].to_numpy() == pytest.approx(2.0)
    agg = analysis.over_seeds(df, "distortion")
    assert len(agg) == 10 and (agg["n"] == 3).all()
    row = agg[(agg["reduction"] == "sum") & (agg["beta_norm"] == 1.0)].iloc[0]
    assert (row["mean"], row["min"], row["max"]) == pytest.approx((52.0, 50.0, 54.0))
    assert analysis.elbo_weight(df) == pytest.approx(1 / N_OVER_M, rel=1e-5)


# -- the generated answer ------------------------------------------------------------------------
def test_answer_is_computed_from_the_numbers():
    df = beta_norm_sweep(heads=("bernoulli", "gaussian"))
    pairs = analysis.reduction_pairs(df)
    a = answer(df, sweep="grid", pairs=pairs)
    text = a.markdown()
    assert a.facts["complete"] == 40 and a.facts["weight"] == "beta_norm"
    for head in ("bernoulli", "gaussian"):
        front = df[(df["head"] == head) & df["pareto"]]
        assert a.facts["pareto"][head] == (front["beta_norm"].min(), front["beta_norm"].max())
        assert a.facts["collapse"][head] == 8  # beta_norm 3 and 10, both seeds and reductions
        assert a.facts["tradeoff"][head]["rho_distortion"] > 0.9
        assert a.facts["tradeoff"][head]["rho_rate"] < -0.9
    # weight by weight with counts, never a range of weights (docs/pages/studies.md, "What makes a result")
    assert ("posterior collapse (no active unit) in 8 of 20 runs, weight by weight: "
            "beta_norm 3 (4 of 4 runs), beta_norm 10 (4 of 4 runs)") in text
    assert "beta_norm 3–10" not in text
    assert a.facts["pairs"] == a.facts["pairs_agree"] == 20
    assert "all land on the same point" in text
    assert a.facts["structure"]["metric"] == "test/mig" and a.facts["structure"]["beta_norm"] == 10
    assert f"beta_norm = M/N = {1 / N_OVER_M:.3g}" in text
    # different numbers, different statements
    runs = [fake_run(i, reduction=red, beta_norm=b, d=100 + 10 * i, r=30 - i, au=3)
            for i, (red, b) in enumerate([("sum", 0.1), ("mean", 0.1), ("sum", 1.0), ("mean", 1.0)])]
    b = answer(runs_frame(runs), pairs=analysis.reduction_pairs(runs_frame(runs)))
    assert b.facts["pairs"] == 2 and b.facts["pairs_agree"] == 0
    assert "0 land on the same point, 2 do not" in b.markdown()
    assert "no run collapsed" in b.markdown()


def test_answer_says_so_when_a_sweep_has_no_runs_or_no_pairs():
    assert "has no runs yet" in answer(pd.DataFrame(), sweep="x").markdown()
    text = answer(beta_norm_sweep(reductions=("sum",)),
                  pairs=analysis.reduction_pairs(beta_norm_sweep(reductions=("sum",)))).markdown()
    assert "No sum/mean pairs" in text


# -- the answer's rules (docs/pages/studies.md, "What makes a result") on crafted sweeps ----------------------------------------------
def elbo_history(runs, curves):
    """val/elbo histories: ``curves[i]`` is a list of (step, value) for ``runs[i]``."""
    rows = [(r.info.run_id, "val/elbo", step, v) for r, curve in zip(runs, curves) for step, v in curve]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def test_the_elbo_weight_comes_from_the_config_not_the_logged_weight():
    # a linear warm-up that ended at 30 % of its weight: the logged beta_eff is 0.3x the config's
    runs = [fake_run(i, beta_norm=b, schedule="linear", d=90 + i, r=10 - i,
                     tags={"vaesweep.schedule_unfinished": "linear warm-up at 30 % of its weight"})
            for i, b in enumerate((0.001, 0.01, 0.1))]
    for r in runs:
        r.data.metrics["test/beta_eff"] *= 0.3
    df = runs_frame(runs)
    assert analysis.elbo_weight(df) == pytest.approx(10 / 4096)  # M/N, not 0.3·M/N
    assert df["beta_eff"].tolist() == pytest.approx([0.4096, 4.096, 40.96])  # the config's
    assert df["beta_eff_logged"].tolist() == pytest.approx([0.3 * 0.4096, 0.3 * 4.096, 0.3 * 40.96])
    text = answer(df).markdown()
    assert "beta_norm = M/N = 0.00244" in text and "M = 10 latents, N = 4096 elements" in text
    assert "1 run(s) train below it, 0 at it, 2 above it" in text
    # without the data shape the weight is not guessed from logged values
    for r in runs:
        del r.data.tags["vaesweep.data_shape"]
    df = runs_frame(runs)
    assert analysis.elbo_weight(df) is None
    assert "cannot be placed" in answer(df).markdown()


def test_unfinished_schedules_are_flagged_and_left_out_of_the_ordering():
    runs = [fake_run(0, beta_norm=0.01, schedule="linear", d=60, r=20),
            fake_run(1, beta_norm=0.1, schedule="linear", d=40, r=30,  # "better" only because
                     tags={"vaesweep.schedule_unfinished": "linear warm-up at 10 % of its weight"}),
            fake_run(2, beta_norm=1.0, schedule="linear", d=80, r=10)]
    df = runs_frame(runs)
    a = answer(df)
    text = a.markdown()
    assert a.facts["schedule_unfinished"] == [runs[1].info.run_id]
    assert "Schedules that finished: 2 of 3 runs" in text
    assert "not finished: bernoulli mean beta_norm=0.1" in text and "at 10 % of its weight" in text
    # run 1 would break the ordering against run 0 (lower D and higher R at a higher weight),
    # but it never trained at its weight: it is not compared, and statements about it are
    # provisional
    assert a.facts["ordering_breaks"] == 0 and analysis.ordering_breaks(df).empty
    assert "provisional" in text
    # with its schedule finished, the same numbers break the ordering
    del runs[1].data.tags["vaesweep.schedule_unfinished"]
    assert len(analysis.ordering_breaks(runs_frame(runs))) == 1
    # a run made before the tag existed: its final logged weight below the configured one
    runs[1].data.metrics["test/beta_eff"] *= 0.25
    df = runs_frame(runs)
    assert df.loc[1, "schedule_unfinished"] == ("its linear schedule ended at beta_eff 10.24, "
                                                "25 % of the configured 40.96")
    assert df.loc[[0, 2], "schedule_unfinished"].isna().all()
    assert "Schedules that finished: 2 of 3 runs" in answer(df).markdown()


def test_non_converged_runs_and_a_pair_that_breaks_the_ordering():
    # the quick study's committed result: beta_eff 0.041 (D 101, R 43.6) and 0.41 (D 55, R 18)
    runs = [fake_run(0, beta_norm=0.0001, d=101.0, r=43.6),
            fake_run(1, beta_norm=0.001, d=55.0, r=18.0),
            fake_run(2, beta_norm=0.01, d=70.0, r=9.0),
            fake_run(3, beta_norm=0.1, d=120.0, r=2.0)]
    flat = [(100, -150.0), (400, -146.0), (500, -145.5), (650, -145.2)]      # 0.2 % in the window
    moving = [(100, -300.0), (400, -200.0), (500, -160.0), (650, -144.6)]   # 10 % in the window
    hist = elbo_history(runs, [flat, flat, moving, [(650, -122.0)]])
    df = analysis.with_convergence(runs_frame(runs), hist)
    assert df["converged"].tolist() == [True, True, False, None]
    # from the last validation before 80 % of 650 steps (step 500) to the end
    assert df.loc[2, "elbo_change"] == pytest.approx((160.0 - 144.6) / 144.6)
    a = answer(df)
    text = a.markdown()
    assert a.facts["not_converged"] == [runs[2].info.run_id] and a.facts["converged"] == 2
    assert "2 of 4 runs converged; still moving: bernoulli mean beta_norm=0.01 seed 0 trial 2 (11 %)" in text
    assert "1 run(s) have too few validations to tell" in text
    # among the runs not flagged, 0.0001 and 0.001 break the order: D fell by 46 nats as the
    # weight rose tenfold (the non-converged run at 0.01 is not compared)
    breaks = analysis.ordering_breaks(df)
    assert len(breaks) == 1 and a.facts["ordering_breaks"] == 1
    b = breaks.iloc[0]
    assert (b["run_low"], b["run_high"]) == (runs[0].info.run_id, runs[1].info.run_id)
    assert b["broken"] == "distortion" and b["gap_distortion"] == pytest.approx(46.0)
    assert "D/R ordering: 1 pair(s) of runs break it beyond seed noise" in text
    assert "cannot say how D and R change with the weight between beta_eff 0.041 and 0.41" in text
    # the statements that use flagged runs say so
    assert "the rate–distortion Pareto front" in text and "(provisional:" in text
    # converged runs in the right order: no break, and the answer says the order holds
    good = runs_frame([fake_run(i, beta_norm=b, d=50 + 10 * i, r=30 - 5 * i)
                       for i, b in enumerate((0.001, 0.01, 0.1))])
    assert analysis.ordering_breaks(good).empty
    assert "no pair of comparable runs has the distortion fall" in answer(good).markdown()


def test_breaks_within_seed_noise_are_not_breaks():
    # two seeds per weight with a spread of 3 nats: a 2-nat dip in D is noise, a 30-nat one is not
    runs = [fake_run(0, beta_norm=0.01, seed=0, d=60.0, r=20), fake_run(1, beta_norm=0.01, seed=1, d=64.0, r=20),
            fake_run(2, beta_norm=0.1, seed=0, d=60.0, r=15), fake_run(3, beta_norm=0.1, seed=1, d=64.0, r=15),
            fake_run(4, beta_norm=1.0, seed=0, d=58.0, r=10), fake_run(5, beta_norm=1.0, seed=1, d=62.0, r=10)]
    noise = analysis.seed_noise(runs_frame(runs))
    assert noise.std_distortion == pytest.approx(np.std([60, 64], ddof=1)) and noise.settings == 3
    assert analysis.ordering_breaks(runs_frame(runs)).empty
    # compared as means over seeds (0.01: 62, 0.1: 62, 1: 60): a 2-nat dip is within the noise
    runs[4].data.metrics["test/distortion"] = 30.0  # 1.0 now averages 46: 16 nats below
    breaks = analysis.ordering_breaks(runs_frame(runs))
    assert breaks["beta_eff_low"].tolist() == pytest.approx([0.01 * N_OVER_M, 0.1 * N_OVER_M])
    assert (breaks["broken"] == "distortion").all()
    assert breaks["runs_high"].iloc[0] == [runs[4].info.run_id, runs[5].info.run_id]


def test_collapsed_duplicates_are_one_point_and_collapse_is_listed_run_by_run():
    # as in the quick study: four weights end on the mean image (D ≈ 277.6, R ≈ 0, no active
    # unit) and two use their latents
    runs = [fake_run(0, beta_norm=0.0001, d=101.2, r=43.6, au=6),
            fake_run(1, beta_norm=0.001, d=55.0, r=18.0, au=4),
            *(fake_run(i, beta_norm=b, d=d, r=r, au=0) for i, b, d, r in (
                (2, 0.00316, 277.62, 3.5e-5), (3, 0.01, 277.60, 3.6e-5),
                (4, 0.0316, 277.63, 3.4e-5), (5, 0.1, 277.61, 3.7e-5)))]
    df = runs_frame(runs)
    exact = analysis.pareto_mask(df["distortion"], df["rate"])
    assert exact.tolist() == [False, True, True, True, True, False]  # by hundredths of a nat
    # within seed noise (here the default tolerance: one seed) the four collapsed runs are one point
    assert df["pareto"].tolist() == [False, True, True, True, True, True]
    assert df["pareto_point"].tolist()[1:] == [0, 1, 1, 1, 1]
    a = answer(df)
    text = a.markdown()
    assert a.facts["pareto_points"]["bernoulli"] == [[0.001], [0.00316, 0.01, 0.0316, 0.1]]
    assert "as 2 distinct point(s)" in text
    assert "beta_norm 0.00316, 0.01, 0.0316, 0.1 (D 277.6, R 3.4e-05–3.7e-05, 4 runs)" in text
    assert a.facts["collapse_runs"]["bernoulli"] == [r.info.run_id for r in runs[2:]]
    assert ("posterior collapse (no active unit) in 4 of 6 runs, weight by weight: beta_norm "
            "0.00316 (1 of 1 run), beta_norm 0.01 (1 of 1 run), beta_norm 0.0316 (1 of 1 run), "
            "beta_norm 0.1 (1 of 1 run)") in text
    assert "0.00316–0.1" not in text.split("posterior collapse")[1]
    # a weight where only one of two seeds collapsed says so
    runs.append(fake_run(6, beta_norm=0.01, seed=1, d=80.0, r=6.0, au=2))
    assert "beta_norm 0.01 (1 of 2 runs)" in answer(runs_frame(runs)).markdown()


def test_pareto_with_noise_keeps_near_ties_together():
    noise = analysis.Noise(std_distortion=1.0, std_rate=0.5, settings=2)
    d, r = [100.0, 101.0, 90.0, 200.0], [10.0, 9.8, 30.0, 10.5]
    # 0 and 1 are one point; 3 is beaten beyond the noise by both; 2 is another trade-off
    assert analysis.pareto_mask(d, r, noise).tolist() == [True, True, True, False]
    assert analysis.pareto_mask(d, r).tolist() == [True, True, True, False]
    assert analysis.pareto_mask([100.0, 101.0], [10.0, 9.8]).tolist() == [True, True]
    assert analysis.pareto_mask([100.0, 100.5], [10.0, 10.2]).tolist() == [True, False]
    assert analysis.pareto_mask([100.0, 100.5], [10.0, 10.2], noise).tolist() == [True, True]
    assert analysis.same_point_groups([100.0, 100.5, 120.0], [10.0, 10.2, 1.0], noise).tolist() == [0, 0, 1]


def test_where_structure_peaks_and_what_happens_either_side():
    runs, i = [], 0
    for b, acc in ((0.0001, 0.80), (0.001, 0.86), (0.01, 0.90), (0.1, 0.70), (1.0, 0.11)):
        for s in (0, 1, 2):
            run = fake_run(i, beta_norm=b, seed=s, d=50 + 20 * np.log10(b) + s, r=max(0.0, 10 - 3 * np.log10(b)))
            run.data.metrics["test/linear_probe_acc"] = acc + 0.005 * s
            run.data.metrics["test/knn_acc"] = acc - 0.1 + 0.005 * s
            runs.append(run)
            i += 1
    df = runs_frame(runs)
    peaks = analysis.structure_peaks(df)
    assert set(peaks["metric"]) == {"test/linear_probe_acc", "test/knn_acc"}
    probe = peaks[peaks["metric"] == "test/linear_probe_acc"].iloc[0]
    assert probe["peak"] == 0.01 and probe["beta_eff"] == pytest.approx(0.01 * N_OVER_M)
    assert probe["edge"] is None and probe["within_noise"] == []
    text = answer(df).markdown()
    assert ("`bernoulli`: linear_probe_acc peaks at beta_norm = 0.01 (beta_eff = 4.1): 0.905 "
            "(mean of 3 runs); below it, 0.805 at beta_norm = 0.0001; above it, 0.115 at "
            "beta_norm = 1") in text
    # a peak at the end of the range is not called a peak inside it
    edge = runs_frame([r for r in runs if float(r.data.params["kl.beta_norm"]) >= 0.01])
    assert "peaks at the lowest weight searched, beta_norm = 0.01" in answer(edge).markdown()
    assert "the peak may lie below the range" in answer(edge).markdown()


def test_analysis_does_not_import_data():
    """report.data imports report.analysis; the reverse would be an import cycle."""
    import ast
    import vaesweep.report.analysis as mod
    tree = ast.parse(open(mod.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("vaesweep.report") for m in imported), imported


# -- figures -------------------------------------------------------------------------------------
def _points(fig: Figure) -> int:
    from matplotlib.collections import PathCollection
    return sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections
               if isinstance(c, PathCollection) and len(c.get_facecolors()))


def test_rate_distortion_plots_every_complete_run_once():
    df = beta_norm_sweep(heads=("bernoulli", "gaussian"))
    df.loc[3, "state"] = "FAILED"
    fig = plots.rate_distortion(df)
    assert isinstance(fig, Figure)
    heads = [ax for ax in fig.axes if ax.get_title() in ("bernoulli", "gaussian")]
    assert len(heads) == 2  # one panel per head when heads differ
    # filled markers: one per complete run (Pareto rings are hollow)
    assert _points(fig) == 39
    assert fig.axes[-1].get_ylabel() == "log10 beta_norm"  # the colour bar
    one = plots.rate_distortion(beta_norm_sweep())
    assert _points(one) == 20 and one.axes[0].get_yscale() == "log"
    assert PNG == plots.to_png(one)[:8]


def test_metrics_vs_weight_draws_one_line_per_head_and_reduction():
    df = beta_norm_sweep(heads=("bernoulli", "gaussian"))
    fig = plots.metrics_vs_weight(df)
    axes = fig.axes[:4]
    assert [len(ax.get_lines()) for ax in axes] == [4 + 1] * 4  # 4 lines + the ELBO marker
    assert axes[0].get_xscale() == "log"
    line = axes[1].get_lines()[0]
    assert list(line.get_xdata()) == [0.01, 0.1, 1.0, 3.0, 10.0]
    assert axes[3].get_ylabel() == "mig"
    assert len(axes[0].collections) == 4  # min-max bands over the two seeds


def test_figures_for_empty_or_unlogged_data_say_why():
    empty = runs_frame([fake_run(0, beta_norm=0.1, status="FAILED")])
    assert "no complete runs" in plots.rate_distortion(empty).axes[0].texts[0].get_text()
    fig = plots.metrics_vs_weight(beta_norm_sweep().drop(columns=["test/mig"]))
    assert "not logged" in fig.axes[3].texts[0].get_text()


def test_dynamics_tables_and_figures_from_histories():
    runs = runs_frame([fake_run(0, beta=4.0, reduction="sum", schedule="linear", d=90, r=8,
                                overrides="+method=linear"),
                       fake_run(1, beta=4.0, reduction="sum", d=95, r=0.001, au=0,
                                overrides="+method=constant")])
    assert analysis.is_dynamic(runs).tolist() == [True, False]
    moving = analysis.dynamics_runs(runs)
    assert len(moving) == 2  # the constant baseline is shown beside the schedule
    rows = []
    for rid, rates, dims in ((runs.loc[0, "run_id"], [1, 5, 8], [0.5] * 9 + [0.001]),
                             (runs.loc[1, "run_id"], [3, 0.1, 0.001], [0.001] * 10)):
        rows += [(rid, "val/rate", s, v) for s, v in zip((0, 5, 10), rates)]
        rows += [(rid, "train/beta_eff", s, 4.0 * min(1, s / 5)) for s in (0, 5, 10)]
        rows += [(rid, f"val/kl_dim_{j}", 10, v) for j, v in enumerate(dims)]
    hist = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    table = analysis.dynamics_table(moving, hist)
    assert table["collapse"].tolist() == ["1/10", "full"]
    assert table["rate_end"].tolist() == [8, 0.001] and table["rate_peak"].tolist() == [8, 3]
    assert len(plots.dynamics(moving, hist).axes) == 3
    assert len(plots.kl_per_dim_over_steps(moving, hist).axes) == 2
    a = answer(runs, dynamics=table)
    assert a.facts["dynamics"]["linear"]["collapse"] == "1/10"
    assert a.facts["dynamics"]["constant"]["collapse"] == "full"
    assert analysis.dynamics_runs(beta_norm_sweep()).empty


# -- the command on a tiny real sweep --------------------------------------------------------
def _mlflow_children(uri: str, sweep: str):
    runs = search_runs(uri)
    return [r for r in runs if r.data.tags.get("vaesweep.sweep") == sweep
            and r.data.tags.get("vaesweep.role") != "parent"]


@pytest.mark.slow
def test_report_command_on_the_quick_study(tiny_sweeps, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "vaesweep", "report", "quick",
                          "--tracking-uri", tiny_sweeps.uri, "--storage", tiny_sweeps.storage,
                          "--out", str(out), "--max-images", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{out}/report.html" in res.stdout
    for name in ("report.html", "report.md", "answer.md", "rate_distortion.png", "vs_weight.png",
                 "pareto_0.png"):
        assert (out / name).is_file(), name
    assert (out / "rate_distortion.png").read_bytes()[:8] == PNG
    html = (out / "report.html").read_text()
    # self-contained: every picture inline, nothing fetched from anywhere
    assert "<script" not in html and not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 4
    assert base64.b64decode(images[0])[:8] == PNG
    for title in ("The rate–distortion plane", "Against the KL weight", "Optuna study",
                  "Pareto-optimal runs", "All runs"):
        assert title in html
    # the sections that do not apply to this study say so
    assert html.count("Does not apply") == 2
    # the numbers in the answer are MLflow's numbers
    children = _mlflow_children(tiny_sweeps.uri, "quick")
    assert len(children) == 4
    d = [c.data.metrics["test/distortion"] for c in children]
    r = [c.data.metrics["test/rate"] for c in children]
    bn = np.array([float(c.data.params["kl.beta_norm"]) for c in children])
    # the front within seed noise: one seed per setting here, so the default tolerance
    front = bn[analysis.pareto_mask(d, r, analysis.Noise())]
    lo, hi = front.min(), front.max()
    span = f"{lo:.3g}" if lo == hi else f"{lo:.3g}–{hi:.3g}"
    answer_md = (out / "answer.md").read_text()
    assert f"Pareto front holds {len(front)} of 4 runs, beta_norm {span}" in answer_md
    assert "Optuna study `quick`" in answer_md and "4 trials (4 COMPLETE)" in answer_md
    assert answer_md in (out / "report.md").read_text()
    # the ELBO's weight from the config: N from the tag every run records, M = 10 latents
    assert all(c.data.tags["vaesweep.data_shape"] == "1,64,64" for c in children)
    assert "beta_norm = M/N = 0.00244" in answer_md and "Convergence (validation ELBO" in answer_md
    table = pd.read_csv(out / "runs.csv")
    assert sorted(table["run_id"]) == sorted(c.info.run_id for c in children)
    assert (table["n_elements"] == 4096).all() and (table["latent_dim"] == 10).all()
    assert table["distortion"].tolist() == pytest.approx(
        [next(c.data.metrics["test/distortion"] for c in children if c.info.run_id == rid)
         for rid in table["run_id"]])
    assert "converged" in table and "elbo_change" in table
    # and the report is on the parent run
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=tiny_sweeps.uri)
    parent = children[0].data.tags["mlflow.parentRunId"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/rate_distortion.png",
            "report/answer.md"} <= logged


@pytest.mark.slow
def test_report_of_the_grid_has_pairs_lines_per_head_and_dynamics(tiny_sweeps, tmp_path):
    from vaesweep.report import load_sweep
    from vaesweep.report.build import build_report

    data = load_sweep("beta_norm_grid", tiny_sweeps.uri, storage=tiny_sweeps.storage)
    assert data.study is None and len(data.runs) == 8
    rep = build_report(data, max_images=1)
    sections = {s.key: s for s in rep.sections}
    assert all(s.skipped is None for k, s in sections.items() if k != "optuna")
    assert len(sections["reduction_equivalence"].tables[0].frame) == 4
    pairs = analysis.reduction_pairs(data.runs)
    assert len(pairs) == 4  # 2 beta_norm x 2 heads, each a sum run and a mean run
    by_id = data.runs.set_index("run_id")
    for p in pairs.itertuples():
        assert p.weight_sum == p.weight_mean  # beta_norm: the same number under either reduction
        s, m = by_id.loc[p.run_sum], by_id.loc[p.run_mean]
        assert (s["reduction"], m["reduction"]) == ("sum", "mean") and s["head"] == m["head"]
        assert p.gap_distortion == pytest.approx(s["distortion"] - m["distortion"])
    lines = analysis.over_seeds(data.runs, "rate").groupby(["head", "reduction"]).ngroups
    assert lines == 4
    dyn = sections["dynamics"].tables[0].frame
    assert len(dyn) == 8 and set(dyn["method"]) == {"beta_norm/linear"}
    assert {p.name for p in sections["dynamics"].pictures} == {"dynamics", "kl_per_dim_steps"}
    assert rep.answer.facts["pairs"] == 4
    assert set(rep.answer.facts["pareto"]) == {"bernoulli", "gaussian_optimal"}


def test_a_bad_sweep_name_is_one_clear_error(tiny_sweeps, capsys):
    from vaesweep.cli import main
    with pytest.raises(SystemExit) as e:
        main(["report", "quikc", "--tracking-uri", tiny_sweeps.uri, "--no-log"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "sweep='quikc' is invalid" in err and "'beta_norm_grid', 'quick'" in err


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path, capsys):
    from vaesweep.cli import main
    with pytest.raises(SystemExit) as e:
        main(["report", "quick", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tracking-uri" in err and "run a sweep first" in err
    assert not (tmp_path / "none.db").exists()


def test_help_explains_the_command(capsys):
    from vaesweep.report.cli import report_main
    with pytest.raises(SystemExit) as e:
        report_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("rate-distortion", "--tracking-uri", "--storage", "--out", "rate_distortion.png",
                 "vaesweep report quick"):
        assert word in out
