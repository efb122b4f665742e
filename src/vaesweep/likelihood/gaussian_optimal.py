"""σ-VAE head (Rybkin et al. 2021, "Simple and Effective VAE Training with Calibrated
Decoders"): a Gaussian whose σ is set analytically to its maximum-likelihood value for the
batch, σ² = the batch MSE, with log σ soft-clipped from below (their
``softclip``, floor −6).

In training σ depends on the whole batch, so :meth:`nll` stores it; :meth:`distribution` and
:meth:`sigma` use the σ of the last batch seen.

For evaluation σ is fixed first (:func:`fix_sigma_for_evaluation`, :meth:`GaussianOptimal.fix_sigma`):
a σ recomputed from each evaluated batch would make every example's likelihood depend on the
others in its batch, and inside the IWAE bound on the other importance samples of its k·B
chunk. The fixed σ is the maximum-likelihood σ of the **training data** as a whole: σ² = the
mean squared error between training images and the decoder's output at one posterior sample
each (up to 10,000 images), the same estimate Rybkin et al. make per batch, over more images
and with the same soft clip. Test and validation images do not enter it (only
:func:`~vaesweep.metrics.evaluate_model` called without ``train_idx`` falls back on the
evaluated images as a whole).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaesweep.likelihood.base import HEADS, LikelihoodHead
from vaesweep.likelihood.gaussian_learned import gaussian_nll, softclip
from vaesweep.schema import PartConfig, boolean, num


@HEADS.register("gaussian_optimal")
class GaussianOptimal(LikelihoodHead):
    """``detach_sigma: true`` stops the gradient through σ (the decoder then sees the
    fixed-σ gradient of this batch); Rybkin et al. keep it (false)."""

    @dataclass
    class Config(PartConfig):
        min_log_sigma: float = num(-6.0, -30.0, 30.0)
        detach_sigma: bool = boolean(False)

    def __init__(self, shape: tuple[int, int, int], **params: Any) -> None:
        super().__init__(shape, **params)
        self.floor, self.detach_sigma = self.config.min_log_sigma, self.config.detach_sigma
        # log σ of the last batch (σ = 1 before any)
        self.register_buffer("last_log_sigma", torch.zeros(()), persistent=False)
        # log σ fixed for evaluation (NaN: not fixed, σ comes from each batch)
        self.register_buffer("fixed_log_sigma", torch.full((), float("nan")), persistent=False)

    def log_sigma_of_mse(self, mse: torch.Tensor) -> torch.Tensor:
        """Rybkin et al. 2021: log σ* = ½·log MSE, soft-clipped from below."""
        # a perfect fit (mse = 0) stays finite, gradient included
        return softclip(0.5 * torch.log(mse.clamp_min(torch.finfo(mse.dtype).tiny)), self.floor)

    def log_sigma(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """σ* = √MSE over the batch, soft-clipped from below; the fixed σ when there is one."""
        if self.is_fixed:
            return self.fixed_log_sigma.to(out.dtype)
        mse = (x - out).pow(2).mean()
        if self.detach_sigma:
            mse = mse.detach()
        return self.log_sigma_of_mse(mse)

    @property
    def is_fixed(self) -> bool:
        return not bool(torch.isnan(self.fixed_log_sigma))

    def fix_sigma(self, mse: float | torch.Tensor | None) -> None:
        """Fixes σ² at ``mse`` (soft-clipped like the batch σ) for every later :meth:`nll`,
        so that examples no longer depend on their batch; ``None`` returns to the batch σ."""
        if mse is None:
            self.fixed_log_sigma = torch.full_like(self.fixed_log_sigma, float("nan"))
            return
        mse = torch.as_tensor(mse, dtype=torch.float64)
        self.fixed_log_sigma = self.log_sigma_of_mse(mse).to(self.fixed_log_sigma)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_sigma = self.log_sigma(out, x)
        self.last_log_sigma = log_sigma.detach()
        return gaussian_nll(x, out, log_sigma)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        log_sigma = self.fixed_log_sigma if self.is_fixed else self.last_log_sigma
        return torch.distributions.Normal(out, log_sigma.exp().expand_as(out))

    def sigma(self) -> torch.Tensor:
        return (self.fixed_log_sigma if self.is_fixed else self.last_log_sigma).exp()

    def implied_sigma(self, beta_eff: float) -> float | None:
        return float(self.sigma()) * math.sqrt(beta_eff) if beta_eff > 0 else None


@torch.no_grad()
def fix_sigma_for_evaluation(module: Any, imageset: Any, idx: Any, *, max_images: int = 10_000,
                             batch_size: int = 256, seed: int = 0) -> float | None:
    """Fixes a σ-VAE's σ before evaluation, from the images ``idx`` of ``imageset`` as a whole
    (the training images: see the module); returns σ, or None when ``module.head`` is not
    a σ-VAE head. A σ already fixed is kept. Up to ``max_images`` images (a seeded random
    choice), ``batch_size`` at a time, one posterior sample z ~ q(z|x) each:
    σ² = mean over images and elements of (x − decoder(z))². Runs in eval mode."""
    head = getattr(module, "head", None)
    if not isinstance(head, GaussianOptimal):
        return None
    if head.is_fixed:
        return float(head.sigma())
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(int(seed))
    idx = rng.permutation(idx)[:max_images]
    gen = torch.Generator().manual_seed(int(seed))
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        total, count = torch.zeros((), dtype=torch.float64), 0
        for i in range(0, len(idx), batch_size):
            x = imageset.batch(idx[i:i + batch_size]).to(device)
            mu, logvar = module.encode(x)
            eps = torch.randn(mu.shape, generator=gen).to(device=device, dtype=mu.dtype)
            out = module.decode(mu + eps * (0.5 * logvar).exp())
            total += (x - out).double().pow(2).sum().cpu()
            count += x.numel()
    finally:
        module.train(was_training)
    if count == 0:
        raise ValueError("fix_sigma_for_evaluation: no images to estimate σ from")
    head.fix_sigma(total / count)
    return float(head.sigma())
