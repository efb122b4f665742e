"""Every registered head, schedule and weighting trains with a real ``lightning.Trainer``, and
the reduction equivalence of the loss contract holds end to end on a tiny problem."""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vaesweep.kl import SCHEDULES, WEIGHTINGS, kl_per_dim
from vaesweep.likelihood import HEADS
from vaesweep.module import VAEModule

SHAPE = (1, 8, 8)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def digits(n: int | None = None) -> torch.Tensor:
    """scikit-learn's 8x8 digits in [0, 1], shaped (n, 1, 8, 8) (shipped with scikit-learn)."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:n], dtype=torch.float32) / 16.0
    return x.view(-1, *SHAPE)


def config(likelihood: dict[str, Any] | None = None, kl: dict[str, Any] | None = None,
           latent_dim: int = 2, hidden: tuple[int, ...] = (32,), lr: float = 1e-3) -> dict:
    return {"model": {"name": "mlp", "latent_dim": latent_dim, "hidden": list(hidden)},
            "likelihood": likelihood or {"name": "bernoulli"},
            "kl": kl or {"name": "beta"}, "optim": {"name": "adam", "lr": lr}}


def trainer(max_steps: int, root=None, **kw: Any) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=root is not None, default_root_dir=root,
                     enable_progress_bar=False, enable_model_summary=False,
                     limit_val_batches=0, num_sanity_val_steps=0, **kw)


def fit(cfg: dict, data: torch.Tensor, max_steps: int, batch_size: int = 16, root=None,
        ckpt_path=None, shuffle_seed: int | None = None, module: VAEModule | None = None,
        **kw: Any) -> tuple[VAEModule, L.Trainer]:
    """Train ``VAEModule(cfg)`` on ``data`` with a plain DataLoader of tensors."""
    module = module or VAEModule(cfg, SHAPE)
    gen = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=gen is not None, generator=gen)
    t = trainer(max_steps, root, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and log intervals
        t.fit(module, loader, ckpt_path=ckpt_path)
    return module, t


# short settings so that 3 steps cross a schedule's interesting part; new entries run with
# their defaults until someone adds a line here
FAST_SCHEDULE = {"linear": {"steps": 2}, "cosine": {"steps": 2}, "sigmoid": {"k": 1.0, "midpoint": 1},
                 "cyclical": {"total_steps": 3, "n_cycles": 1, "ratio": 0.5}}
FAST_KL = {"capacity": {"c_steps": 2, "c_max": 5.0}, "geco": {"nu": 1.0},
           "controlvae": {"target": 0.1, "ki": 0.01}}
PARTS = ([("schedule", n) for n in sorted(SCHEDULES)] + [("kl", n) for n in sorted(WEIGHTINGS)])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return digits(48)


@pytest.mark.parametrize("part", PARTS, ids=[f"{k}={n}" for k, n in PARTS])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_with_every_schedule_and_weighting_trains(head, part, data):
    kind, name = part
    if kind == "schedule":
        kl = {"name": "beta", "schedule": {"name": name, **FAST_SCHEDULE.get(name, {})}}
    else:
        kl = {"name": name, **FAST_KL.get(name, {})}
    torch.manual_seed(0)
    module, t = fit(config({"name": head}, kl), data, max_steps=3)
    assert t.global_step == 3 and module.loss_terms.step == 3
    trace = module.pop_beta_trace()
    assert [s for s, _ in trace] == [0, 1, 2]
    assert all(math.isfinite(b) for _, b in trace)
    assert math.isfinite(float(t.callback_metrics["train/loss"]))
    for p in module.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_logs_its_sigma_at_validation(head, data):
    torch.manual_seed(0)
    module, _ = fit(config({"name": head}), data, max_steps=2)
    t = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.validate(module, DataLoader(data, batch_size=16), verbose=False)
    has_sigma = module.head.sigma() is not None
    assert ("val/sigma" in t.callback_metrics) == has_sigma
    if has_sigma:
        assert float(t.callback_metrics["val/sigma"]) > 0


# -- the loss contract: `sum` with beta = b·N/M and `mean` with beta = b are the same run ---------
B, LATENTS, STEPS = 0.02, 4, 300
#: Measured on 2 CPU cores, seed 0: R 4.936 vs 4.918 nats (gap 3.5e-3), D 21.373 vs 21.367
#: (gap 3e-4). Adam sees the 1/N gradient scale only through its eps, but training amplifies
#: that difference chaotically: over seeds 1-6 the gap was 4e-5..1.1% on R and 3e-5..0.5% on
#: D (5.5% on R in a batch-128 variant). The tolerances allow for that on other machines and
#: stay far below the gap of a wrong conversion (the same b on `sum`: R ≈ 17.7 nats, +260%).
REL_TOL_R, REL_TOL_D = 0.10, 0.03


@torch.no_grad()
def rate_distortion(module: VAEModule, x: torch.Tensor) -> tuple[float, float]:
    """Mean R and D over ``x`` with a fixed draw of the posterior noise."""
    g = torch.Generator().manual_seed(123)
    mu, logvar = module.encode(x)
    z = mu + torch.randn(mu.shape, generator=g) * (0.5 * logvar).exp()
    d = module.head.nll(module.decode(z), x).flatten(1).sum(1).mean()
    return float(kl_per_dim(mu, logvar).sum(1).mean()), float(d)


def _run(kl: dict, x: torch.Tensor) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = config({"name": "bernoulli"}, kl, latent_dim=LATENTS, hidden=(64,), lr=2e-3)
    module, _ = fit(cfg, x, max_steps=STEPS, batch_size=64, shuffle_seed=0)
    module.eval()
    return rate_distortion(module, x)


def test_sum_and_mean_reductions_land_on_the_same_rate_and_distortion():
    x = digits()
    n = math.prod(SHAPE)
    r_sum, d_sum = _run({"name": "beta", "beta": B * n / LATENTS, "reduction": "sum"}, x)
    r_mean, d_mean = _run({"name": "beta", "beta": B, "reduction": "mean"}, x)
    gap_r, gap_d = abs(r_sum - r_mean) / r_sum, abs(d_sum - d_mean) / d_sum
    print(f"sum: R={r_sum:.4f} D={d_sum:.4f}; mean: R={r_mean:.4f} D={d_mean:.4f}; "
          f"relative gap R {gap_r:.2e}, D {gap_d:.2e}")
    assert gap_r < REL_TOL_R and gap_d < REL_TOL_D
    # the check can fail: the same b on `sum` (beta_eff = b instead of b·N/M) lands elsewhere
    r_wrong, _ = _run({"name": "beta", "beta": B, "reduction": "sum"}, x)
    assert abs(r_wrong - r_mean) / r_mean > 10 * REL_TOL_R


def test_two_validations_of_the_same_weights_give_the_same_val_elbo(data):
    """The convergence test (the convergence rule: val ELBO changes < 1 % over the last 20 % of steps)
    compares validations: with fresh z noise each time, a one-sample ELBO differs between two
    validations of the same weights by about the size of the test. Validation draws its noise
    from a generator seeded at each start, and leaves the training's (global) noise alone."""
    module, _ = fit(config(), data, max_steps=3)
    loader = DataLoader(data, batch_size=16)
    t = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = t.validate(module, loader, verbose=False)[0]["val/elbo"]
        torch.manual_seed(123)  # a different global state: validation must not depend on it
        second = t.validate(module, loader, verbose=False)[0]["val/elbo"]
        third = t.test(module, loader, verbose=False)[0]["test/elbo"]
    assert first == second
    assert third == first  # the test split draws the same noise for the same images
    # the noise is still a sample: a second draw of the training noise gives another ELBO
    x = data[:16]
    with torch.no_grad():
        a, b = module.terms(x)[0].elbo.mean(), module.terms(x)[0].elbo.mean()
    assert a != b
