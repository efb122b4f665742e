"""The Keras tutorial's loss: without the ×N factor the KL term wins and the posterior
collapses ("all reconstructions look the same"); with it, the latents carry information.
Run on scikit-learn's digits (offline) with the sweep file's own settings otherwise."""
from __future__ import annotations

import pytest

from conftest import compose


@pytest.mark.slow
def test_keras_scaling_reproduces_the_collapse_and_logs_its_beta_eff(workdir):
    from vaesweep.train import run_job

    n = 8 * 8
    results = {}
    # the keras.io variant (KL averaged over the latents), with and without the ×N
    for name, rec_weight in (("scaled", n), ("unscaled", 1)):
        cfg = compose(["+sweep=keras_scaling", "data=digits", "model=mlp",
                       f"n_pixels={n}", f"rec_weight={rec_weight}", "keras_kl=mean",
                       "trainer.max_steps=600",
                       "trainer.val_check_interval=600", "trainer.enable_progress_bar=false",
                       "metrics.enabled=false", "optim.lr=2e-3"])
        results[name] = run_job(cfg)
    s, u = results["scaled"], results["unscaled"]
    # beta_eff = beta·N/M with M = 2 latents
    assert s["val/beta_eff"] == pytest.approx(0.5)
    assert u["val/beta_eff"] == pytest.approx(n / 2)
    assert u["val/active_units"] == 0 and u["val/rate"] < 0.1      # collapsed
    assert s["val/active_units"] == 2 and s["val/rate"] > 2.0      # informative latents
    assert s["val/distortion"] < u["val/distortion"] - 2.0
