"""`vaesweep convert`: a loss as practitioners write it, translated into beta_eff and beta_norm
(the arithmetic, the Keras tutorials' numbers, the overrides, the regime, the cited results,
and one-line errors for bad input)."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaesweep.cli import main
from vaesweep.convert import convert, regime
from vaesweep.kl.loss import beta_norm_of, loss_beta_eff
from vaesweep.kl.weighting import build_weighting

KERAS = ["--shape", "1,28,28", "--latents", "2", "--rec", "mean"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["convert", *args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def value(out: str, name: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith(f"{name} = "))
    return float(line.split("=")[1].split()[0])


@pytest.mark.parametrize("extra,beta_eff,beta_norm", [
    # keras.io: BCE averaged over pixels times 28*28, KL averaged over the 2 latents
    (["--rec-weight", "784", "--kl", "mean"], 0.5, 0.5 * 2 / 784),
    (["--kl", "mean"], 392, 1.0),                                  # without the x784
    (["--rec-weight", "28*28", "--kl", "sum"], 1.0, 2 / 784),      # the older example: KL summed
    (["--kl", "sum"], 784, 2.0),                                   # ... without the x784
])
def test_the_keras_tutorials(capsys, extra, beta_eff, beta_norm):
    code, out, err = run(capsys, *KERAS, *extra)
    assert code == 0, err
    assert value(out, "beta_eff") == pytest.approx(beta_eff, rel=1e-6)
    assert value(out, "beta_norm") == pytest.approx(beta_norm, rel=1e-5)


def test_regime_and_overrides_in_the_output(capsys):
    _, out, _ = run(capsys, *KERAS, "--rec-weight", "784", "--kl", "mean")
    assert "regime: below the ELBO's weight" in out
    assert "model.latent_dim=2 kl=beta kl.reduction=sum kl.beta=0.5" in out
    assert "kl=beta_norm kl.beta_norm=0.00127551" in out
    assert "is kl.reduction=sum's" in out  # 784 * mean over 784 pixels: the sum's gradient scale
    _, out, _ = run(capsys, *KERAS, "--kl", "mean")
    assert "regime: far above the ELBO's weight" in out and "collapse is likely" in out
    assert "is kl.reduction=mean's" in out  # a plain mean over pixels: 1/N


def test_regimes():
    assert regime(1.0).startswith("at the ELBO") and regime(1.05).startswith("at the ELBO")
    assert regime(0.5).startswith("below") and regime(0.0).startswith("no KL term")
    assert regime(4.0).startswith("above") and regime(392).startswith("far above")


finite = st.floats(1e-3, 1e3)


@settings(max_examples=200, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(1, 64), w=st.integers(1, 64), m=st.integers(1, 64),
       rec=st.sampled_from(["sum", "mean"]), kl=st.sampled_from(["sum", "mean"]),
       a=finite, b=finite, d=finite, r=finite)
def test_the_formula_is_the_loss_rewritten(c, h, w, m, rec, kl, a, b, d, r):
    """A·rec_red + B·kl_red = (A/rec_div)·(D + beta_eff·R) for any D, R; and the overrides
    printed for it make vaesweep's weightings train on that beta_eff."""
    n = c * h * w
    beta_eff = loss_beta_eff(n, m, rec, kl, a, b)
    rec_red = d / n if rec == "mean" else d
    kl_red = r / m if kl == "mean" else r
    scale = a / (n if rec == "mean" else 1)
    assert a * rec_red + b * kl_red == pytest.approx(scale * (d + beta_eff * r), rel=1e-9)
    bn = beta_norm_of(beta_eff, n, m)
    for cfg in ({"name": "beta_norm", "beta_norm": bn, "reduction": "mean"},
                {"name": "beta_norm", "beta_norm": bn, "reduction": "sum"},
                {"name": "beta", "beta": beta_eff, "reduction": "sum"},
                {"name": "beta", "beta": bn, "reduction": "mean"}):
        assert build_weighting(cfg, n, m).beta_eff() == pytest.approx(beta_eff, rel=1e-9)


def test_the_formula_on_hand_computed_cases():
    assert loss_beta_eff(4096, 10, "sum", "sum", 1, 4) == 4  # beta-VAE, both summed: beta itself
    assert loss_beta_eff(4096, 10, "mean", "mean", 1, 0.1) == pytest.approx(40.96)  # beta_norm 0.1
    assert loss_beta_eff(4096, 10, "sum", "mean", 2, 1) == pytest.approx(0.05)
    assert loss_beta_eff(784, 2, "mean", "sum", 1, 0) == 0
    with pytest.raises(ValueError):
        loss_beta_eff(784, 2, "avg", "sum")
    with pytest.raises(ValueError):
        loss_beta_eff(784, 2, "sum", "sum", rec_weight=0)


@pytest.mark.parametrize("args,flag", [
    (["--shape", "28,28", "--latents", "2", "--rec", "mean", "--kl", "sum"], "--shape='28,28'"),
    (["--shape", "1,0,28", "--latents", "2", "--rec", "mean", "--kl", "sum"], "--shape='1,0,28'"),
    (["--shape", "a,b,c", "--latents", "2", "--rec", "mean", "--kl", "sum"], "--shape='a,b,c'"),
    ([*KERAS[:2], "--latents", "0", "--rec", "mean", "--kl", "sum"], "--latents='0'"),
    ([*KERAS[:2], "--latents", "2.5", "--rec", "mean", "--kl", "sum"], "--latents='2.5'"),
    ([*KERAS[:4], "--rec", "avg", "--kl", "sum"], "--rec='avg'"),
    ([*KERAS, "--kl", "batch"], "--kl='batch'"),
    ([*KERAS, "--kl", "sum", "--rec-weight", "0"], "--rec-weight='0'"),
    ([*KERAS, "--kl", "sum", "--rec-weight", "nan"], "--rec-weight='nan'"),
    ([*KERAS, "--kl", "sum", "--kl-weight", "-1"], "--kl-weight='-1'"),
    ([*KERAS, "--kl", "sum", "--kl-weight", "1/0"], "--kl-weight='1/0'"),
    ([*KERAS, "--kl", "sum", "--kl-weight", "1e999"], "--kl-weight='1e999'"),
    (KERAS, "--kl"),  # missing
    ([*KERAS, "--kl", "sum", "--beta", "3"], "--beta"),  # unknown
])
def test_bad_input_is_one_line_naming_the_flag(capsys, args, flag):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaesweep convert: error: ") and flag in lines[0]


def test_results_are_cited_only_where_they_apply(tmp_path):
    results = tmp_path / "results"
    (results / "quick").mkdir(parents=True)  # a study without a runs.csv
    lines = convert((1, 28, 28), 2, "mean", "mean", 784, 1, results)
    text = "\n".join(lines)
    assert "no committed study has N = 784 and M = 2" in text and "without one: quick" in text
    (results / "keras").mkdir()
    pd.DataFrame({
        "state": ["COMPLETE"] * 4 + ["FAILED"], "data": ["mnist_5k"] * 5,
        "head": ["bernoulli"] * 5, "n_elements": [784, 784, 784, 4096, 784],
        "latent_dim": [2, 2, 2, 2, 2], "beta_eff": [0.5, 0.5, 392.0, 0.5, 0.6],
        "active_units": [2, 2, 0, 2, 0], "distortion": [140.0, 142.0, 206.0, 1.0, 1.0],
        "rate": [7.0, 7.5, 0.0, 1.0, 1.0], "converged": [True, False, True, True, True],
        "schedule_unfinished": [None, None, "linear at 10 %", None, None],
    }).to_csv(results / "keras" / "runs.csv", index=False)
    text = "\n".join(convert((1, 28, 28), 2, "mean", "mean", 784, 1, results))
    assert "keras (mnist_5k, bernoulli): at beta_eff = 0.5, 2 run(s): active units 2 of 2, " \
           "collapsed in 0, distortion 140 to 142 nats, rate 7 to 7.5 nats; 1 of 2 converged" in text
    assert "392" not in text.split("measured")[1]  # not near 0.5; the FAILED run is not cited
    text = "\n".join(convert((1, 28, 28), 2, "mean", "mean", 1, 1, results))
    assert "at beta_eff = 392, 1 run(s): active units 0 of 2, collapsed in 1" in text
    assert "1 of 1 converged; 1 schedule(s) unfinished" in text
    assert "no committed study" in "\n".join(convert((1, 28, 28), 3, "mean", "mean", 1, 1, results))


def test_the_repository_results_are_not_invented(capsys):
    """Whatever sweeps/results holds, convert cites only rows with the same N and M."""
    code, out, _ = run(capsys, "--shape", "7,7,7", "--latents", "97", "--rec", "sum", "--kl", "sum")
    assert code == 0 and "no committed study has N = 343 and M = 97" in out


def test_help_explains_the_formula(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("A * rec_red + B * kl_red", "--rec-weight", "--kl-weight", "beta_norm = beta_eff * M / N",
                 "kl_div", "28*28", "collapse"):
        assert word in out, word


def test_a_reader_that_stops_early_ends_convert_quietly(monkeypatch, capsys):
    """`vaesweep convert ... | head -1`: the pipe closes while convert writes; it exits 0
    without a BrokenPipeError traceback."""
    import os
    import sys

    from vaesweep.cli import main

    r, w = os.pipe()
    os.close(r)  # the reader has gone
    saved = os.dup(1)
    try:
        with capsys.disabled():
            monkeypatch.setattr(sys, "stdout", os.fdopen(w, "w", buffering=1))
            with pytest.raises(SystemExit) as e:
                main(["convert", "--shape", "1,28,28", "--latents", "2", "--rec", "mean",
                      "--rec-weight", "784", "--kl", "mean"])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert e.value.code == 0


def test_cited_results_are_constant_weights_one_head_a_line_and_near_the_weight(tmp_path):
    """A typed loss is a constant weight: warm-up runs are not cited for it; heads are
    different likelihoods, one line each; a study with nothing within a factor 4 of the
    weight is not cited at all."""
    (tmp_path / "s").mkdir()
    pd.DataFrame({
        "state": ["COMPLETE"] * 5, "data": ["fashion_mnist"] * 5,
        "head": ["bernoulli", "bernoulli", "gaussian σ=0.1", "bernoulli", "bernoulli"],
        "n_elements": [784] * 5, "latent_dim": [10] * 5,
        "beta_eff": [1.0, 1.0, 1.0, 1.0, 20.0], "active_units": [5, 8, 10, 5, 2],
        "distortion": [230.0, 229.0, -500.0, 231.0, 280.0], "rate": [10.0, 12.0, 30.0, 11.0, 2.0],
        "kl.schedule.name": ["constant", "linear", "constant", None, "constant"],
    }).to_csv(tmp_path / "s" / "runs.csv", index=False)
    text = "\n".join(convert((1, 28, 28), 10, "sum", "sum", 1, 1, tmp_path))
    assert "s (fashion_mnist, bernoulli): at beta_eff = 1, 2 run(s): active units 5 of 10" in text
    assert "s (fashion_mnist, gaussian σ=0.1): at beta_eff = 1, 1 run(s)" in text
    assert "229" not in text  # the linear warm-up
    far = "\n".join(convert((1, 28, 28), 10, "sum", "sum", 1, 200, tmp_path))  # beta_eff 200
    assert "s (fashion_mnist" not in far and "no committed study has N = 784 and M = 10" in far
    near = "\n".join(convert((1, 28, 28), 10, "sum", "sum", 1, 60, tmp_path))  # beta_eff 60
    assert "nearest measured, at beta_eff = 20" in near
