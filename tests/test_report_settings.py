"""The report's comparisons across settings (questions 1, 3, 4, 5 of docs/pages/studies.md): settings grouped
over seeds, sum/mean pairs at the same typed weight, annealing against the constant weight,
and heads compared only on measures that do not depend on the head."""
from __future__ import annotations

import numpy as np
import pytest

from test_report import N_OVER_M, beta_norm_sweep, fake_run
from vaesweep.report.analysis import reduction_pairs
from vaesweep.report.answer import answer
from vaesweep.report.data import head_label, runs_frame
from vaesweep.report.settings import (by_setting, head_comparison, implied_beta,
                                      schedule_comparison, typed_pairs)


def with_metrics(run, params=None, **metrics):
    run.data.metrics.update({k.replace("__", "/"): v for k, v in metrics.items()})
    run.data.params.update(params or {})
    return run


def test_head_label_names_the_fixed_sigma_and_the_learned_scope():
    assert head_label({"likelihood.name": "gaussian", "likelihood.sigma": 0.1}) == "gaussian σ=0.1"
    assert head_label({"likelihood.name": "gaussian_learned", "likelihood.scope": "pixel"}) \
        == "gaussian_learned (pixel)"
    assert head_label({"likelihood.name": "bernoulli"}) == "bernoulli"
    assert head_label({"likelihood.name": "gaussian"}) == "gaussian"


def test_settings_pool_seeds_and_keep_weights_apart():
    s = by_setting(beta_norm_sweep(seeds=(0, 1, 2), reductions=("mean",)))
    assert len(s) == 5 and (s["n"] == 3).all()
    row = s[np.isclose(s["beta_eff"], 0.1 * N_OVER_M)].iloc[0]
    # d = 50 + 20 log10(b) + 2 s: mean over seeds 0, 1, 2 at b = 0.1 is 32, std 2
    assert row["distortion"] == pytest.approx(32.0) and row["distortion_std"] == pytest.approx(2.0)
    assert row["elbo"] == pytest.approx(-(row["distortion"] + row["rate"]))


def typed_sweep():
    """kl=beta: sum at beta 1 (beta_eff 1), its equal-beta_eff mean twin (beta M/N) and the
    same typed beta under mean (beta_eff N/M = 409.6), two seeds each."""
    runs, i = [], 0
    for seed in (0, 1):
        for red, beta, d, r, au in (("sum", 1.0, 100.0, 20.0, 8), ("mean", 1 / N_OVER_M, 100.5, 19.8, 8),
                                    ("mean", 1.0, 180.0, 0.01, 0)):
            runs.append(fake_run(i, reduction=red, beta=beta, seed=seed, d=d + seed, r=r, au=au))
            i += 1
    return runs_frame(runs)


def test_typed_pairs_are_the_same_number_under_both_reductions_and_report_the_gap():
    df = typed_sweep()
    t = typed_pairs(df)
    assert len(t) == 2 and (t["beta"] == 1.0).all()  # the equal-beta_eff twins are not typed pairs
    assert t["beta_eff_sum"].tolist() == pytest.approx([1.0, 1.0])
    assert t["beta_eff_mean"].tolist() == pytest.approx([N_OVER_M, N_OVER_M], rel=1e-6)
    assert t["gap_distortion"].tolist() == pytest.approx([80.0, 80.0])
    text = answer(df, pairs=reduction_pairs(df)).markdown()
    assert "Same typed weight, other reduction (2 pairs" in text
    assert "ΔD +80" in text and "active units 8 → 0" in text
    # the equal-beta_eff twins: D gap -0.5 within the seeds' std of D (0.707), but a rate gap
    # of +0.2 where both settings' rates do not vary at all: not below the spread
    line = next(x for x in text.splitlines() if "Sum vs mean at equal beta_eff" in x)
    assert "beta_eff 1 (2 seeds): ΔD -0.5 (std 0.707), ΔR +0.2 (std 0)" in line
    assert "below the spread in D and R at 0 of 1 weights" in line


def schedule_sweep(linear_au, linear_d):
    runs, i = [], 0
    for seed in (0, 1, 2):
        for schedule, au, d in (("constant", 3, 200.0), ("linear", linear_au, linear_d)):
            r = fake_run(i, reduction="sum", beta=20.0, seed=seed, d=d + 0.5 * seed, r=2.0,
                         au=au, schedule=schedule,
                         overrides=f"+method={schedule} seed={seed}")
            runs.append(r)
            i += 1
    return runs_frame(runs)


def test_annealing_is_judged_against_the_constant_weight_and_the_seed_noise():
    same = schedule_comparison(by_setting(schedule_sweep(3, 200.0)))
    assert set(same["metric"]) == {"active_units", "elbo"}
    assert not same["beyond_noise"].any()
    text = answer(schedule_sweep(3, 200.0)).markdown()
    assert "no schedule changes the final active units or ELBO beyond seed noise" in text
    better = schedule_comparison(by_setting(schedule_sweep(3, 180.0)))
    elbo = better[better["metric"] == "elbo"].iloc[0]
    assert elbo["diff"] == pytest.approx(20.0) and elbo["beyond_noise"]
    assert "Annealing changes the end point beyond seed noise in: linear at beta_eff 20 (ELBO +20)" \
        in answer(schedule_sweep(3, 180.0)).markdown()


def heads_sweep():
    runs, i = [], 0
    for seed in (0, 1):
        for head, params, mse, probe, sigma, d in (
                ("gaussian", {"likelihood.sigma": "0.1"}, 0.020, 0.70, 0.1, -1500.0),
                ("gaussian_optimal", {}, 0.015, 0.74, 0.12, -2000.0),
                ("bernoulli", {}, 0.019, 0.72, None, 240.0)):
            r = with_metrics(fake_run(i, head=head, reduction="sum", beta=1.0, seed=seed,
                                      d=d, r=20.0), params,
                             test__mse=mse + 0.0005 * seed, test__linear_probe_acc=probe + 0.005 * seed,
                             **({"val__sigma": sigma} if sigma else {}))
            runs.append(r)
            i += 1
    return runs_frame(runs)


def test_heads_are_compared_on_head_free_measures_with_the_learned_sigma_as_a_weight():
    df = heads_sweep()
    h = head_comparison(by_setting(df))
    assert set(h["head"]) == {"gaussian σ=0.1", "gaussian_optimal", "bernoulli"}
    sig = h.set_index("head")
    assert sig.loc["gaussian_optimal", "implied_beta"] == pytest.approx(implied_beta(0.12))
    assert implied_beta(0.12) == pytest.approx(2 * 0.0144)
    text = answer(df).markdown()
    line = next(x for x in text.splitlines() if x.startswith("* Heads on mse"))
    # ranked by MSE, best first; bernoulli (0.01925) is beyond 2 std (0.0007) of the best
    assert line.index("`gaussian_optimal`") < line.index("`bernoulli`") < line.index("`gaussian σ=0.1`")
    assert "best `gaussian_optimal`, beyond seed noise of the next" in line
    assert "`gaussian_optimal` σ = 0.12 → β = 0.0288" in text
    # no statement ranks heads on their distortions (different likelihoods)
    assert not any("Heads on distortion" in x for x in text.splitlines())


def test_the_folklore_weight_is_translated_to_beta_eff_from_the_config():
    text = answer(beta_norm_sweep(seeds=(0, 1), reductions=("mean",))).markdown()
    line = next(x for x in text.splitlines() if "the folklore's sweet spot" in x)
    assert f"beta_eff = 0.1·N/M = {0.1 * N_OVER_M:.3g}" in line


def test_collapsed_settings_show_how_alike_their_reconstructions_are():
    runs = []
    for i, (b, au, rvr) in enumerate(((0.01, 6, 0.8), (10.0, 0, 1e-4))):
        runs.append(with_metrics(fake_run(i, beta_norm=b, au=au), test__recon_variance_ratio=rvr))
    text = answer(runs_frame(runs)).markdown()
    line = next(x for x in text.splitlines() if "How alike the reconstructions" in x)
    assert "0.8 (active units 6" in line and "0.0001 (active units 0" in line


def test_a_peak_inside_the_range_is_not_said_to_lie_beyond_it():
    """structure_peaks' frame turns a missing ``edge`` into NaN; the answer must not read
    that as an edge ("the peak may lie above the range" for an interior peak)."""
    runs = []
    for i, (b, mig) in enumerate(((0.01, 0.2), (0.1, 0.5), (1.0, 0.3), (3.0, 0.1))):
        # a second metric that peaks at the edge: the frame's edge column mixes a string
        # with missing values
        runs.append(with_metrics(fake_run(i, beta_norm=b, mig=mig, d=50 + 10 * i, r=20 - 5 * i),
                                 test__linear_probe_acc=0.9 - 0.1 * i))
    text = answer(runs_frame(runs)).markdown()
    line = next(x for x in text.splitlines() if "mig peaks" in x)
    assert "mig peaks at beta_norm = 0.1" in line and "may lie" not in line
