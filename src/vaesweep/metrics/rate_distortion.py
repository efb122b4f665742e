"""The reconstruction side of the trade-off: distortion and rate of a model on a batch, and
per-pixel MSE and PSNR of reconstructions (docs/pages/loss-contract.md)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vaesweep.contract import kl_per_dim

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def rate_distortion(encode: Encode, log_likelihood: LogLikelihood, x: torch.Tensor,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(distortion, rate), each (B,) nats per example: D = -log p(x|z) for one z ~ q(z|x)
    (seeded), summed over elements; R = KL(q(z|x) || N(0, I)) in closed form, summed over
    latent dimensions."""
    mu, logvar = encode(x)
    gen = torch.Generator(device=mu.device).manual_seed(int(seed))
    eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    return -log_likelihood(x, z), kl_per_dim(mu, logvar).sum(-1)


def _per_image_mse(x_hat: Any, x: Any) -> torch.Tensor:
    x_hat, x = torch.as_tensor(x_hat), torch.as_tensor(x)
    if x_hat.shape != x.shape:
        raise ValueError(f"reconstruction shape {tuple(x_hat.shape)} != data shape {tuple(x.shape)}")
    diff = (x_hat.to(torch.float64) - x.to(torch.float64)).reshape(len(x), -1)
    return diff.pow(2).mean(1)


def mse(x_hat: Any, x: Any, reduction: str = "mean") -> Any:
    """Per-pixel mean squared error of reconstructions ``x_hat`` against ``x`` (B, ...):
    per image (``reduction="none"``, a (B,) tensor) or its mean over images (a float)."""
    per_image = _per_image_mse(x_hat, x)
    return per_image if reduction == "none" else float(per_image.mean())


def psnr(x_hat: Any, x: Any, data_range: float = 1.0, reduction: str = "mean") -> Any:
    """Peak signal-to-noise ratio in dB, 10 log10(data_range^2 / MSE), per image, then
    averaged over images (``reduction="mean"``). Images are in [0, data_range]; the MSE is
    floored at 1e-10 so a perfect reconstruction scores 100 dB at data_range 1."""
    per_image = _per_image_mse(x_hat, x).clamp_min(1e-10)
    values = 10.0 * torch.log10(data_range**2 / per_image)
    return values if reduction == "none" else float(values.mean())


class ReconVariance:
    """How alike the reconstructions of different inputs are, accumulated over batches:
    Σ_p Var_i(x̂_ip) / Σ_p Var_i(x_ip), the variance across images of the reconstructions
    (summed over pixels) over that of the inputs. 0: every input gets the same reconstruction
    (the collapsed VAE's mean image, "all reconstructions look the same"); about 1: the
    reconstructions vary as much as the data. Unitless; float64 sums, so batches of any size
    give the same value. ``update(x_hat, x)`` takes (B, ...) tensors; ``value()`` raises
    ValueError before two images were seen or when the inputs do not vary."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: list[torch.Tensor] | None = None

    def update(self, x_hat: Any, x: Any) -> None:
        x_hat, x = torch.as_tensor(x_hat), torch.as_tensor(x)
        if x_hat.shape != x.shape:
            raise ValueError(f"reconstruction shape {tuple(x_hat.shape)} != data shape {tuple(x.shape)}")
        a = x_hat.detach().to("cpu", torch.float64).reshape(len(x), -1)
        b = x.detach().to("cpu", torch.float64).reshape(len(x), -1)
        parts = [a.sum(0), (a * a).sum(0), b.sum(0), (b * b).sum(0)]
        self.sums = parts if self.sums is None else [s + p for s, p in zip(self.sums, parts)]
        self.n += len(x)

    def value(self) -> float:
        if self.sums is None or self.n < 2:
            raise ValueError("ReconVariance: needs at least two images")
        sa, sa2, sb, sb2 = self.sums
        var_a = float((sa2 - sa * sa / self.n).clamp_min(0).sum())
        var_b = float((sb2 - sb * sb / self.n).clamp_min(0).sum())
        if var_b <= 0:
            raise ValueError("ReconVariance: the input images do not vary")
        return var_a / var_b


def recon_variance_ratio(x_hat: Any, x: Any) -> float:
    """:class:`ReconVariance` of one batch: reconstructions ``x_hat`` of ``x`` (B, ...), B ≥ 2."""
    acc = ReconVariance()
    acc.update(x_hat, x)
    return acc.value()


__all__ = ["ReconVariance", "mse", "psnr", "rate_distortion", "recon_variance_ratio"]
