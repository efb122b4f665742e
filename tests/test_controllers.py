"""Capacity annealing and the controllers (GECO, ControlVAE): their update rules by hand,
their bounds, and — for every weighting — optimiser-step stepping, frozen validation, and a
checkpoint/resume with a real ``lightning.Trainer`` that reproduces the uninterrupted run."""
from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from hypothesis import given, settings, strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from test_catalogue_training import SHAPE, config, digits, fit
from vaesweep.errors import ConfigError
from vaesweep.kl import WEIGHTINGS, build_weighting
from vaesweep.module import VAEModule


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(element_nll: float, rates: list[float], n: int = 10, m: int = 2):
    """nll with D/N = ``element_nll`` for every example, and KL (B, M) with the given rates."""
    b = len(rates)
    nll = torch.full((b, n), float(element_nll))
    kl = torch.tensor(rates, dtype=torch.float32).view(b, 1).repeat(1, m) / m
    return nll, kl.requires_grad_()


def step(w, element_nll: float, rates: list[float]):
    """One training step as the module takes it: forward, observe, advance."""
    t = w(*batch(element_nll, rates, w.n_elements, w.n_latents))
    w.observe(t)
    w.advance()
    return t


# -- capacity (Burgess et al. 2018) -------------------------------------------------------
def test_capacity_rises_linearly_and_penalises_the_gap():
    w = build_weighting({"name": "capacity", "gamma": 10.0, "c_max": 4.0, "c_steps": 4}, 10, 2)
    assert [w.capacity(t) for t in (0, 1, 2, 4, 100)] == [0.0, 1.0, 2.0, 4.0, 4.0]
    w.step = 2  # C = 2
    nll, kl = batch(0.5, [1.0, 5.0])  # R̄ = 3
    t = w(nll, kl)
    assert float(t.loss.detach()) == pytest.approx(5.0 + 10.0 * 1.0)
    assert t.beta_eff == 10.0  # γ·sign(R − C)
    (g,) = torch.autograd.grad(t.loss, kl)
    torch.testing.assert_close(g, torch.full_like(g, 10.0 / 2))  # γ·sign/B per dim
    w.step = 4  # C = 4 > R̄: the term pushes the rate up
    t = w(nll, kl)
    assert t.beta_eff == -10.0 and float(t.loss.detach()) == pytest.approx(5.0 + 10.0)
    assert t.rate.tolist() == pytest.approx([1.0, 5.0])  # the logged rate stays R


def test_capacity_mean_reduction_and_free_bits():
    w = build_weighting({"name": "capacity", "gamma": 2.0, "c_max": 1.0, "c_steps": 0,
                         "reduction": "mean"}, 10, 2)
    nll, kl = batch(0.5, [3.0, 3.0])
    t = w(nll, kl)
    # γ·N/M in sum units, then the 1/N scale: mean_elements(nll) + γ/M·|R̄ − C|
    assert t.beta_eff == pytest.approx(2.0 * 10 / 2)
    assert float(t.loss.detach()) == pytest.approx(0.5 + 2.0 / 2 * (3.0 - 1.0))
    fb = build_weighting({"name": "capacity", "gamma": 1.0, "c_max": 0.0, "c_steps": 0,
                          "free_bits": 2.0}, 10, 2)
    t = fb(*batch(0.0, [1.0, 1.0]))  # each dim 0.5 -> floored at 2
    assert float(t.loss.detach()) == pytest.approx(4.0)


# -- GECO (Rezende & Viola 2018) ----------------------------------------------------------
def test_geco_update_rule_by_hand():
    w = build_weighting({"name": "geco", "kappa": 0.1, "nu": 0.5, "alpha": 0.9}, 10, 2)
    assert w.beta_eff() == 10.0  # λ_0 = 1: beta_eff = N/λ (the ELBO is λ = N)
    step(w, 0.3, [1.0, 2.0])  # C = 0.2, C_ma = C at the first step
    lam = math.exp(0.5 * 0.2)
    assert w.lam == pytest.approx(lam) and w.beta_eff() == pytest.approx(10 / lam)
    step(w, 0.0, [1.0, 2.0])  # C = −0.1
    c_ma = 0.9 * 0.2 + 0.1 * -0.1
    lam *= math.exp(0.5 * c_ma)
    assert w.c_ma == pytest.approx(c_ma) and w.lam == pytest.approx(lam)
    # distortion above target raises λ, i.e. lowers the KL weight
    assert w.beta_eff() < 10.0
    # the reduction sets the gradient scale only (issue 12.1: it was N/(M·λ) under mean)
    mean = build_weighting({"name": "geco", "reduction": "mean", "lambda_init": 2.0}, 10, 2)
    assert mean.beta_eff() == pytest.approx(10 / 2.0) and mean.scale == pytest.approx(0.1)


def test_geco_lambda_is_clamped_and_never_overflows():
    w = build_weighting({"name": "geco", "kappa": 0.0, "nu": 1e3, "lambda_min": 0.01,
                         "lambda_max": 100.0}, 10, 2)
    step(w, 1e6, [1.0])
    assert w.lam == pytest.approx(100.0) and w.beta_eff() == pytest.approx(10 / 100.0)
    for _ in range(2000):  # the moving average turns negative after a while
        step(w, -1e6, [1.0])
    assert w.lam == pytest.approx(0.01) and w.beta_eff() == pytest.approx(10 / 0.01)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("lam", [0.5, 3.0, 400.0])
def test_geco_beta_eff_is_the_weight_its_gradients_see(reduction, lam):
    """Issue 12.1. Rezende & Viola's Lagrangian R + λ·(D/N − κ): the gradient on R relative
    to D is N/λ. GECO's loss must weigh R by exactly that (whatever the reduction), and log
    it as beta_eff."""
    n, m = 12, 3
    w = build_weighting({"name": "geco", "reduction": reduction, "lambda_init": lam}, n, m)
    nll = torch.rand(4, n, requires_grad=True)
    kl = torch.rand(4, m, requires_grad=True)
    t = w(nll, kl)
    g_nll, g_kl = torch.autograd.grad(t.loss, (nll, kl))
    # the paper's Lagrangian on the same batch, by autograd
    nll2, kl2 = nll.detach().requires_grad_(), kl.detach().requires_grad_()
    lagrangian = kl2.sum(1).mean() + lam * (nll2.sum(1).mean() / n - w.kappa)
    p_nll, p_kl = torch.autograd.grad(lagrangian, (nll2, kl2))
    paper = float(p_kl[0, 0] / p_nll[0, 0])
    assert paper == pytest.approx(n / lam)
    seen = g_kl / g_nll[:, :1]  # every element of D has the same gradient
    assert torch.allclose(seen, torch.full_like(seen, paper), rtol=1e-5)
    assert t.beta_eff == pytest.approx(paper) and w.beta_eff() == pytest.approx(paper)


def test_geco_beta_eff_init_starts_at_that_weight_and_is_checked():
    w = build_weighting({"name": "geco", "beta_eff_init": 4.0}, 4096, 10)
    assert w.beta_eff() == pytest.approx(4.0) and w.lam == pytest.approx(1024.0)
    with pytest.raises(ConfigError, match="kl.beta_eff_init"):
        build_weighting({"name": "geco", "beta_eff_init": 1e-6}, 4096, 10)  # λ > λ_max


def test_geco_lambda_falls_at_most_nu_kappa_a_step():
    """With the defaults (ν·κ = 0.001) λ needs at least ln(100)/0.001 = 4,605 steps to fall
    from 100 to 1, whatever the distortion (D ≥ 0)."""
    w = build_weighting({"name": "geco", "lambda_init": 100.0}, 10, 2)
    steps = 0
    while w.lam > 1.0:
        step(w, 0.0, [1.0])
        steps += 1
    assert steps == math.ceil(math.log(100) / (w.nu * w.kappa))


def test_geco_averages_the_batches_of_one_optimiser_step():
    w = build_weighting({"name": "geco", "kappa": 0.0, "nu": 1.0}, 10, 2)
    for d in (0.1, 0.3):  # two accumulated batches
        w.observe(w(*batch(d, [1.0])))
    assert w.lam == 1.0  # nothing moves before the optimiser step
    w.advance()
    assert w.lam == pytest.approx(math.exp(0.2)) and w.step == 1


# -- ControlVAE (Shao et al. 2020) --------------------------------------------------------
def test_controlvae_pi_update_by_hand():
    w = build_weighting({"name": "controlvae", "target": 5.0, "kp": 0.5, "ki": 0.1,
                         "beta_min": 0.2, "beta_max": 3.0}, 10, 2)
    assert w.beta_eff() == 0.2  # starts at β_min
    step(w, 0.0, [7.0, 7.0])  # e = 5 − 7 = −2
    p, i = 0.5 / (1 + math.exp(-2.0)), 0.1 * 2.0
    assert w.beta == pytest.approx(p + i + 0.2) and w.integral == pytest.approx(i)
    step(w, 0.0, [4.0, 4.0])  # e = 1
    p, i = 0.5 / (1 + math.exp(1.0)), i - 0.1
    assert w.beta == pytest.approx(p + i + 0.2)


def test_controlvae_set_point_rises_linearly():
    w = build_weighting({"name": "controlvae", "target": 5.0, "target_start": 1.0,
                         "target_steps": 4}, 10, 2)
    assert [w.set_point(t) for t in (0, 2, 4, 10)] == [1.0, 3.0, 5.0, 5.0]


def test_controlvae_anti_windup_and_floor():
    w = build_weighting({"name": "controlvae", "target": 5.0, "kp": 0.0, "ki": 0.1,
                         "beta_min": 0.0, "beta_max": 1.0}, 10, 2)
    for _ in range(100):  # rate far above the set point (e = −10): β saturates at β_max
        step(w, 0.0, [15.0])
    assert w.beta == 1.0
    # the integrator stops one step (Ki·|e| = 1) past the cap instead of winding up to 100
    assert w.integral <= 2.0 + 1e-9
    for _ in range(3):  # rate below the set point (e = 5): β leaves the cap within 3 steps
        step(w, 0.0, [0.0])
    assert w.beta < 1.0
    for _ in range(100):
        step(w, 0.0, [0.0])
    assert w.beta == 0.0 and w.integral >= -0.5 - 1e-9  # floored, without winding down
    for _ in range(2):
        step(w, 0.0, [15.0])
    assert w.beta > 0.0  # and not locked at the floor


@settings(max_examples=50, deadline=None)
@given(rates=st.lists(st.floats(0.0, 1e4), min_size=1, max_size=60),
       kp=st.floats(0.0, 10.0), ki=st.floats(0.0, 1.0), beta_min=st.floats(0.0, 2.0),
       width=st.floats(0.0, 100.0))
def test_controlvae_beta_stays_in_its_bounds(rates, kp, ki, beta_min, width):
    w = build_weighting({"name": "controlvae", "target": 10.0, "kp": kp, "ki": ki,
                         "beta_min": beta_min, "beta_max": beta_min + width}, 10, 2)
    for r in rates:
        step(w, 0.0, [r])
        assert beta_min <= w.beta <= beta_min + width and math.isfinite(w.integral)


# -- every weighting: state, stepping, validation, resume --------------------------------
#: settings that make every part move within a few steps (defaults for new entries)
MOVING = {"geco": {"nu": 1.0, "kappa": 0.01}, "controlvae": {"target": 0.1, "ki": 0.01},
          "capacity": {"c_max": 5.0, "c_steps": 10, "gamma": 2.0}}
#: 12 steps in 2 cycles of 6, rising over 4.5 steps: the resume at step 8 is mid-rise
CYCLICAL = {"name": "cyclical", "total_steps": 12, "n_cycles": 2, "ratio": 0.75}


def kl_cfg(name: str, schedule: dict | None = None) -> dict:
    return {"name": name, **MOVING.get(name, {}), **({"schedule": schedule} if schedule else {})}


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_extra_state_round_trips_through_state_dict(name):
    w = build_weighting(kl_cfg(name), 10, 2)
    for r in (1.0, 9.0, 3.0):
        step(w, 0.7, [r, r + 1])
    fresh = build_weighting(kl_cfg(name), 10, 2)
    fresh.load_state_dict(w.state_dict())
    assert fresh.get_extra_state() == w.get_extra_state() and fresh.step == 3
    assert fresh.beta_eff() == w.beta_eff()


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_weight_steps_on_optimiser_steps_and_freezes_in_validation(name):
    data = digits(64)
    torch.manual_seed(0)
    module, _ = fit(config(kl=kl_cfg(name)), data, max_steps=3, accumulate_grad_batches=2)
    assert module.loss_terms.step == 3
    trace = module.pop_beta_trace()
    assert [s for s, _ in trace] == [0, 0, 1, 1, 2, 2]  # two batches per optimiser step
    assert all(trace[2 * k][1] == trace[2 * k + 1][1] for k in range(3))
    before, weight = module.loss_terms.get_extra_state(), module.loss_terms.beta_eff()
    t = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.validate(module, DataLoader(data, batch_size=16), verbose=False)
    assert "val/loss" in t.callback_metrics
    assert module.loss_terms.get_extra_state() == before and module.loss_terms.beta_eff() == weight


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_resume_mid_run_continues_with_the_same_weight(name, tmp_path):
    """Resume at step 8 of 16 (mid-rise of the second cyclical cycle, mid-run of the
    controllers) with a new module and Trainer: the weight of every step and the final
    controller state equal those of the uninterrupted run.

    The checkpoint is the one Lightning's checkpointing writes during training (as the
    training job's last.ckpt): one written by ``trainer.save_checkpoint`` after ``fit`` has
    returned at an epoch boundary resumes with a repeated batch in Lightning 2.6, which
    changes the data a controller sees (the weight state itself is restored either way)."""
    data, cfg = digits(64), config(kl=kl_cfg(name, CYCLICAL))  # 4 steps per epoch
    torch.manual_seed(0)
    full, _ = fit(cfg, data, max_steps=16)
    full_trace, full_state = full.pop_beta_trace(), full.loss_terms.get_extra_state()

    torch.manual_seed(0)
    every8 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    first, t1 = fit(cfg, data, max_steps=8, root=tmp_path, callbacks=[every8])
    rng = torch.get_rng_state()  # the posterior noise continues where it was
    (ckpt,) = tmp_path.glob("*step=8.ckpt")
    t1.save_checkpoint(tmp_path / "after_fit.ckpt")
    for path in (ckpt, tmp_path / "after_fit.ckpt"):
        saved = torch.load(path, weights_only=True)["state_dict"]["loss_terms._extra_state"]
        assert saved == first.loss_terms.get_extra_state() and saved["step"] == 8

    second = VAEModule(cfg, SHAPE)
    assert second.loss_terms.get_extra_state() != saved  # a fresh module starts elsewhere
    torch.set_rng_state(rng)
    second, _ = fit(cfg, data, max_steps=16, root=tmp_path, ckpt_path=str(ckpt), module=second)
    resumed = first.pop_beta_trace() + second.pop_beta_trace()

    assert [s for s, _ in resumed] == [s for s, _ in full_trace] == list(range(16))
    assert full_trace[8][1] != full_trace[0][1]  # the resume point is not a fresh start
    assert [b for _, b in resumed] == pytest.approx([b for _, b in full_trace], rel=1e-6, abs=1e-9)
    state = second.loss_terms.get_extra_state()
    assert state.keys() == full_state.keys() and state["step"] == 16
    for k, v in full_state.items():
        assert state[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


# -- config errors --------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,key", [
    ({"name": "capacity", "gamma": -1.0}, "kl.gamma"),
    ({"name": "capacity", "c_max": -5.0}, "kl.c_max"),
    ({"name": "capacity", "c_steps": 2.5}, "kl.c_steps"),
    ({"name": "capacity", "capacity": 25}, "kl.capacity"),
    ({"name": "geco", "kappa": "low"}, "kl.kappa"),
    ({"name": "geco", "alpha": 1.0}, "kl.alpha"),
    ({"name": "geco", "alpha": -0.1}, "kl.alpha"),
    ({"name": "geco", "nu": 0.0}, "kl.nu"),
    ({"name": "geco", "lambda_min": 0.0}, "kl.lambda_min"),
    ({"name": "geco", "lambda_min": 2.0, "lambda_max": 1.0}, "kl.lambda_max"),
    ({"name": "geco", "lambda_init": 1e6}, "kl.lambda_init"),
    ({"name": "controlvae", "kp": -0.01}, "kl.kp"),
    ({"name": "controlvae", "ki": -1e-4}, "kl.ki"),
    ({"name": "controlvae", "beta_min": -1.0}, "kl.beta_min"),
    ({"name": "controlvae", "beta_min": 2.0, "beta_max": 1.0}, "kl.beta_max"),
    ({"name": "controlvae", "target": -1.0}, "kl.target"),
    ({"name": "controlvae", "target_steps": -1}, "kl.target_steps"),
    ({"name": "controlvae", "reduction": "avg"}, "kl.reduction"),
])
def test_bad_controller_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        build_weighting(cfg, 10, 2)
    assert e.value.key == key and key in str(e.value)
